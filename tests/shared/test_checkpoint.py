"""Atomic checkpoint folders: a failed write leaves the old folder untouched."""

from pathlib import Path

import pytest

from shared.checkpoint import atomic_directory


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
