"""Atomic checkpoint folders and files: a failed write leaves the old version untouched, a replaced folder is swapped
in whole (renameat2 exchange, or two renames that readers and the next write recover from), permissions follow the
umask. Kills mid-write: tests/reliability/test_kill_durability.py."""

import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from shared import checkpoint
from shared.checkpoint import atomic_directory, atomic_file, atomic_write_npz, atomic_write_text, readable_folder


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


def test_atomic_folders_follow_the_umask(tmp_path: Path) -> None:
    """No fixed mode: a new folder gets 0777 minus the umask, like os.mkdir, and the umask is left as it was."""
    umask = os.umask(0o027)
    try:
        with atomic_directory(tmp_path / "ckpt") as tmp:
            (tmp / "a.txt").write_text("a")
        with atomic_file(tmp_path / "b.txt") as handle:
            handle.write("b")
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o640


def test_failed_file_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "t.json", "old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_file(tmp_path / "t.json") as handle:
            handle.write("half")
            raise RuntimeError("disk full")
    assert (tmp_path / "t.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_exchange_swaps_two_folders_in_one_step(tmp_path: Path) -> None:
    """The window-free path atomic_directory takes on Linux is available here and swaps both names."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.txt").write_text(name)
    assert checkpoint._exchange(tmp_path / "a", tmp_path / "b")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.txt"]
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["a.txt"]


def test_without_exchange_two_renames_replace_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where renameat2 is missing (another OS, a file system refusing it) the fallback replaces the folder too."""
    monkeypatch.setattr(checkpoint, "_RENAMEAT2", None)
    out = tmp_path / "ckpt"
    for version in ("old", "new"):
        with atomic_directory(out) as tmp:
            (tmp / "v.txt").write_text(version)
    assert (out / "v.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_a_write_cut_between_the_two_renames_is_read_and_then_restored(tmp_path: Path) -> None:
    """The fallback's window (NAME gone, .NAME.old complete), also left by older versions: readers use .NAME.old,
    the next write restores it before replacing it."""
    out, old = tmp_path / "ckpt", tmp_path / ".ckpt.old"
    old.mkdir()
    (old / "v.txt").write_text("old")
    assert readable_folder(out) == old
    assert readable_folder(tmp_path / "other") == tmp_path / "other"  # nothing to fall back to: the path itself
    with pytest.raises(RuntimeError):
        with atomic_directory(out):
            raise RuntimeError("the write after the crash fails too")
    assert (out / "v.txt").read_text() == "old" and not old.exists() and readable_folder(out) == out
