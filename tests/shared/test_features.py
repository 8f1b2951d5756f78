"""Frozen-feature cache: hits, misses and invalidation by encoder, weights, file content and window."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.data.audio_io import load_audio, write_audio
from shared.features import AudioRef, FeatureCache, weights_hash


class Counting:
    """A real (tiny) encoder: mean-pooled frames of the waveform, counting the clips it sees."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, refs: list[AudioRef]) -> torch.Tensor:
        self.calls += len(refs)
        waves = [load_audio(r.path, 8000, r.start, r.end)[:800] for r in refs]
        return torch.from_numpy(np.stack([w.reshape(10, 80) for w in waves])).float()


def _clip(path: Path, seed: int) -> str:
    write_audio(path, np.random.default_rng(seed).uniform(-0.5, 0.5, 16000).astype(np.float32), 8000)
    return str(path)


def test_second_pass_is_all_hits(tmp_path: Path) -> None:
    refs = [AudioRef(_clip(tmp_path / f"{i}.wav", i)) for i in range(5)]
    enc = Counting()
    first = FeatureCache(tmp_path / "cache", "toy", "w0").features(refs, enc, batch_size=2)
    cache = FeatureCache(tmp_path / "cache", "toy", "w0")
    second = cache.features(refs, enc, batch_size=2)
    assert enc.calls == 5
    assert (cache.hits, cache.misses) == (5, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert first[0].shape == (10, 80)


def test_changed_file_window_encoder_or_weights_miss(tmp_path: Path) -> None:
    path = _clip(tmp_path / "a.wav", 0)
    enc = Counting()
    FeatureCache(tmp_path / "c", "toy", "w0").features([AudioRef(path)], enc)
    assert enc.calls == 1
    FeatureCache(tmp_path / "c", "toy", "w0").features([AudioRef(path, 0.5, 1.5)], enc)
    assert enc.calls == 2
    FeatureCache(tmp_path / "c", "other-encoder", "w0").features([AudioRef(path)], enc)
    assert enc.calls == 3
    FeatureCache(tmp_path / "c", "toy", "w1").features([AudioRef(path)], enc)
    assert enc.calls == 4
    _clip(tmp_path / "a.wav", 99)  # same path, new content
    cache = FeatureCache(tmp_path / "c", "toy", "w0")
    cache.features([AudioRef(path)], enc)
    assert enc.calls == 5 and cache.misses == 1


def test_weights_hash_tracks_parameters() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    before = weights_hash(layer)
    assert weights_hash(layer) == before
    with torch.no_grad():
        layer.weight[0, 0] += 1e-3
    assert weights_hash(layer) != before


def test_an_unreadable_entry_is_encoded_again_and_rewritten(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A truncated entry (e.g. a full disk before atomic writes) is logged, counted as a miss and replaced."""
    refs = [AudioRef(_clip(tmp_path / f"{i}.wav", i)) for i in range(2)]
    enc = Counting()
    first = FeatureCache(tmp_path / "cache", "toy", "w0").features(refs, enc)
    cache = FeatureCache(tmp_path / "cache", "toy", "w0")
    entry = cache.entry_path(refs[1])
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="shared.features"):
        again = cache.features(refs, enc)
    assert (cache.hits, cache.misses, enc.calls) == (1, 1, 3) and torch.equal(again[1], first[1])
    assert f"feature cache entry {entry} is unreadable" in caplog.text and "truncated or corrupt" in caplog.text
    assert torch.equal(FeatureCache(tmp_path / "cache", "toy", "w0").get(refs[1]), first[1])  # rewritten
