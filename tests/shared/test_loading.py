"""Checked loaders: a missing, empty, truncated or other-format file is one InputError naming it and what was expected."""

import hashlib
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from stable_baselines3 import PPO

from shared.cli import InputError
from shared.loading import (file_sha256, load_json, load_jsonl, load_npz, load_safetensors, load_sb3,
                            load_torch)

EXPECTED = "a file written by the test"


def _safetensors(path: Path) -> None:
    save_file({"a": torch.randn(64, 64), "b": torch.arange(10)}, str(path))


def _torch(path: Path) -> None:
    torch.save({"optimizer": {"state": {0: {"exp_avg": torch.randn(64, 64)}}}, "scheduler": {"last_epoch": 3}}, path)


def _npz(path: Path) -> None:
    np.savez(path, score=np.random.default_rng(0).random((50, 4)), provenance=np.array('{"split": "toy"}'))


def _json(path: Path) -> None:
    path.write_text(json.dumps({"step": 3, "history": [{"step": i, "loss": 0.5} for i in range(20)]}))


def _sb3(path: Path) -> None:
    PPO("MlpPolicy", gym.make("CartPole-v1"), n_steps=64, batch_size=64, seed=0, device="cpu").save(path)


KINDS: dict[str, tuple[Callable[[Path], None], Callable[[Path], object], str]] = {
    "safetensors": (_safetensors, lambda p: load_safetensors(p, EXPECTED), "safetensors"),
    "pt": (_torch, lambda p: load_torch(p, EXPECTED), "torch.save"),
    "npz": (_npz, lambda p: load_npz(p, EXPECTED), ".npz"),
    "json": (_json, lambda p: load_json(p, EXPECTED), "JSON"),
    "zip": (_sb3, lambda p: load_sb3(PPO, p, EXPECTED, device="cpu"), "SB3 .zip"),
}


def _message(load: Callable[[Path], object], path: Path) -> str:
    with pytest.raises(InputError) as err:
        load(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and message.endswith(f"; expected {EXPECTED}")
    return message


@pytest.mark.parametrize("ext", KINDS)
def test_a_good_file_loads(ext: str, tmp_path: Path) -> None:
    write, load, _ = KINDS[ext]
    path = tmp_path / f"good.{ext}"
    write(path)
    assert load(path) is not None


@pytest.mark.parametrize("ext", KINDS)
@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_a_broken_file_is_named_with_what_was_expected(ext: str, damage: str, tmp_path: Path) -> None:
    write, load, kind = KINDS[ext]
    path = tmp_path / f"broken.{ext}"
    write(path)
    content = path.read_bytes()
    path.write_bytes({"truncated": content[: len(content) // 2], "empty": b"",
                      "text": b"this is a text file, not data\n"}[damage])
    message = _message(load, path)
    assert f"not a readable {kind} file" in message
    if damage == "empty":
        assert "(empty file (0 bytes))" in message
    elif damage == "text" and ext in ("pt", "npz", "zip"):  # formats told apart by their first bytes
        assert "it starts with b'this'" in message
    else:
        assert "truncated or corrupt" in message


@pytest.mark.parametrize("ext", KINDS)
def test_a_missing_file_is_named_as_given(ext: str, tmp_path: Path) -> None:
    """SB3 itself reports a missing policy.zip as policy.zip.zip; the loader names the path it was given."""
    path = tmp_path / f"policy.{ext}"
    message = _message(KINDS[ext][1], path)
    assert message == f"{path}: no such file; expected {EXPECTED}" and f"{ext}.zip" not in message


def test_a_folder_is_named_as_one(tmp_path: Path) -> None:
    assert _message(lambda p: load_json(p, EXPECTED), tmp_path) == f"{tmp_path}: a folder; expected {EXPECTED}"


def test_a_text_file_named_npz_is_not_called_pickled(tmp_path: Path) -> None:
    path = tmp_path / "features.npz"
    path.write_text("id,score\nq1,0.5\n")
    message = _message(lambda p: load_npz(p, EXPECTED), path)
    assert "not a zip archive: it starts with b'id,s'" in message and "pickle" not in message


def test_object_arrays_are_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, ids=np.array([{"id": 1}], dtype=object))
    assert "holds pickled (object) arrays, which are never loaded" in _message(lambda p: load_npz(p, EXPECTED), path)


def test_a_corrupt_zip_member_is_named(tmp_path: Path) -> None:
    """A flipped byte inside a member (the archive's directory intact) fails its CRC check."""
    path = tmp_path / "table.npz"
    np.savez(path, score=np.zeros((50, 4)))
    content = bytearray(path.read_bytes())
    content[200] ^= 0xFF
    path.write_bytes(bytes(content))
    assert "member 'score.npy' fails its CRC check" in _message(lambda p: load_npz(p, EXPECTED), path)


def test_a_zip_without_sb3_members_is_named(tmp_path: Path) -> None:
    """What half of an SB3 zip can be: the zip stored inside it (a torch.save file), without the outer members."""
    path = tmp_path / "policy.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("policy.pth", b"weights")
    message = _message(lambda p: load_sb3(PPO, p, EXPECTED), path)
    assert "(truncated or corrupt: no member 'data')" in message


def test_json_keys_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"config": {}}))
    assert load_json(path, EXPECTED, keys=("config",)) == {"config": {}}
    assert "holds keys ['config'], missing ['scaler']" in _message(lambda p: load_json(p, EXPECTED, ("scaler",)), path)
    path.write_text("[1, 2]")
    assert "holds a JSON list, missing ['config']" in _message(lambda p: load_json(p, EXPECTED, ("config",)), path)
    path.write_bytes(b"\xff\xfe{}")
    assert "not UTF-8 text" in _message(lambda p: load_json(p, EXPECTED), path)


def test_jsonl_records_keep_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": "b"}\n')
    assert load_jsonl(path, EXPECTED) == [(1, {"id": "a"}), (3, {"id": "b"})]
    path.write_text('{"id": "a"}\n{"id": "b", "ans\n')
    assert "(line 2, column" in _message(lambda p: load_jsonl(p, EXPECTED), path)


def test_file_sha256_is_the_bytes_hash(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(bytes(range(256)) * 1000)
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
