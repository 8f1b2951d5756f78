"""Durable atomic writes of files and folders: a reader sees the old version or the new one, never half, never none.

Files (`atomic_file`): written to a unique temp file beside the target (created with mode 0o666, so the umask and
default ACLs apply as for a plain open()), fsynced, renamed over the target with os.replace (atomic on POSIX and
Windows), and the folder is fsynced so the rename itself survives a power cut.

Folders (`atomic_directory`): written into a temp folder beside the target; every file and folder in it is
fsynced, then it takes the target's place:
- target absent: one rename;
- target present, on Linux: `renameat2(RENAME_EXCHANGE)` swaps the two names in one step, so the target path
  always holds a complete folder; the temp name then holds the old version, which is removed;
- where the exchange is unavailable (another OS, or a file system that refuses it): the old folder is renamed to
  `.NAME.old`, the new one to NAME, then `.NAME.old` is removed. Between those two renames NAME is missing, but
  `.NAME.old` is complete, so readers go through `readable_folder(NAME)`, which falls back to it, and the next
  write to NAME restores it first if a crash left it there. Earlier versions of this module wrote the same
  `.NAME.old`, so folders they left behind are read the same way.
A symlink to versioned folders would also avoid the window, but run folders are copied, archived and uploaded as
plain folders; the exchange keeps every target a plain folder. A write killed mid-way can leave its temp folder
(`.NAME.*.tmp`) behind, never a partial target; it is not removed automatically, since another writer may own it.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TypeVar

import numpy as np

log = logging.getLogger(__name__)
T = TypeVar("T")
_RENAME_EXCHANGE = 2  # linux/fs.h
# Errors meaning "this file system or kernel cannot exchange": fall back to two renames.
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP}


def _load_renameat2() -> Callable[..., int] | None:
    """glibc's renameat2 (2.28 and later), or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_renameat2()
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names `a` and `b` atomically; False when the platform or file system cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _fsync_path(path: Path, directory: bool = False) -> None:
    """Flush a file's or a folder's data and metadata to disk (folders: not possible on Windows, skipped)."""
    if directory and os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder`, deepest first, `folder` last."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                _fsync_path(Path(root, name))
        _fsync_path(Path(root), directory=True)


def _create_beside(target: Path, create: Callable[[Path], T]) -> tuple[Path, T]:
    """Create a hidden temp entry beside `target` with `create` (failing if the name exists); its path, result."""
    while True:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, create(tmp)
        except FileExistsError:
            continue


def _old_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def readable_folder(path: str | os.PathLike) -> Path:
    """`path`, or its complete previous version `.NAME.old` when a replace was cut between its two renames
    (only where the atomic exchange is unavailable, or by an older version of this module)."""
    path = Path(path)
    old = _old_path(path)
    if not path.exists() and old.is_dir():
        log.warning("%s is missing but %s holds its previous version (a write was cut short); reading it", path, old)
        return old
    return path


def _rename_over(new: Path, target: Path) -> None:
    """Put folder `new` at `target` with plain renames; `.NAME.old` holds the old version in between."""
    old = _old_path(target)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    _fsync_path(target.parent, directory=True)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_directory(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside out_dir; on success it replaces out_dir durably, on error it is removed."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    old = _old_path(out_dir)
    if not out_dir.exists() and old.is_dir():
        log.warning("restoring %s from %s (a write was interrupted between its two renames)", out_dir, old)
        os.replace(old, out_dir)
    tmp, _ = _create_beside(out_dir, lambda p: p.mkdir(0o777))  # the umask applies, as for any new folder
    try:
        yield tmp
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists() and _exchange(tmp, out_dir):
        _fsync_path(out_dir.parent, directory=True)
        shutil.rmtree(tmp)  # it now holds the old version
    else:
        _rename_over(tmp, out_dir)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", encoding: str | None = None) -> Iterator[IO]:
    """A handle on a unique temp file beside `path`: on success fsynced and renamed to `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    tmp, fd = _create_beside(path, lambda p: os.open(p, flags, 0o666))  # the umask applies, as for a plain open()
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(path.parent, directory=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file through a unique temp file and a rename, so readers never see half of it."""
    with atomic_file(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def atomic_write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays as an .npz (no pickled objects) through a temp file in the same folder and a rename."""
    with atomic_file(path, "wb") as handle:
        np.savez(handle, **arrays)
    return Path(path)
