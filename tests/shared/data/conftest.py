"""Fixture writers for the data tests: tiny images and WAV files made at test time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import soundfile as sf
from PIL import Image


def _image(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), color).save(path)
    return path


def _wav(path: Path, wave: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(wave, dtype=np.float32), rate, subtype=subtype, format="WAV")
    return path


def _tone(seconds: float, rate: int = 16000, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


@pytest.fixture
def make_image() -> Callable[..., Path]:
    """Write a small RGB image (format from the suffix)."""
    return _image


@pytest.fixture
def make_wav() -> Callable[..., Path]:
    """Write a WAV file from a float wave (1-D mono or (frames, channels))."""
    return _wav


@pytest.fixture
def tone() -> Callable[..., np.ndarray]:
    """A sine wave of the given length, rate, frequency and amplitude."""
    return _tone


def _truncated_wav(path: Path, seconds: float = 2.0, keep: int = 10652, rate: int = 16000) -> Path:
    """A 16-bit mono WAV whose header declares `seconds` of audio, cut after its first `keep` frames."""
    _wav(path, _tone(seconds, rate), rate)
    path.write_bytes(path.read_bytes()[: 44 + 2 * keep])  # 44-byte canonical header, 2 bytes per frame
    return path


@pytest.fixture
def truncated_wav() -> Callable[..., Path]:
    """Write a truncated WAV (`path`, `seconds` declared, `keep` frames present)."""
    return _truncated_wav


@pytest.fixture
def make_json() -> Callable[[Path, Any], Path]:
    """Write an object as a JSON file."""
    return _json


def _edited(record: dict, change: dict) -> dict:
    out = dict(record)
    for key, value in change.items():
        if value is None:
            del out[key]
        else:
            out[key] = value
    return out


@pytest.fixture
def edited() -> Callable[[dict, dict], dict]:
    """A copy of a record with `change` applied; a None value deletes the field."""
    return _edited
