"""Atomic checkpoint folders and files: a failed write leaves the old version untouched."""

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from shared.checkpoint import atomic_directory, atomic_write_npz, atomic_write_text


def test_success_replaces_folder(tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_directory(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_failure_keeps_old_folder_and_leaves_no_temp(tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_directory(out) as tmp:
            (tmp / "partial.bin").write_bytes(b"\0" * 10)
            raise RuntimeError("disk full")
    assert (out / "old.txt").read_text() == "old" and not (out / "partial.bin").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_atomic_files_get_plain_permissions(tmp_path: Path) -> None:
    """mkstemp creates 0600 files; written results must be readable like any other file."""
    umask = os.umask(0o022)
    try:
        text, arrays = atomic_write_text(tmp_path / "a.json", "{}"), atomic_write_npz(tmp_path / "a.npz", {"x": np.zeros(2)})
    finally:
        os.umask(umask)
    assert stat.S_IMODE(text.stat().st_mode) == stat.S_IMODE(arrays.stat().st_mode) == 0o644
    assert np.load(arrays)["x"].tolist() == [0.0, 0.0]
