"""One writer per folder: an OS-level file lock (filelock's flock on Unix) on a world folder or a run folder.

The lock is the file `.lock` inside the folder; while held, it names its holder (what, pid, host, start time).
The kernel releases the lock when the holding process exits, crashes or is killed, so a lock left by a dead
process never blocks the next one: the file stays, unlocked, naming its last holder.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from shared.cli import InputError

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"


class FolderBusy(InputError):
    """Another live process holds the folder's lock (an input error: the command was pointed at a folder in use)."""


def _record_holder(owner: str) -> Callable[[int], None]:
    """The on_acquired callback: write who holds the lock into the (locked, open) lock file."""

    def write(fd: int) -> None:
        text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "owner": owner,
                           "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)

    return write


def holder(folder: str | os.PathLike) -> str:
    """Who holds (or last held) the lock of `folder`, in words."""
    try:
        info = json.loads((Path(folder) / LOCK_FILE).read_text(encoding="utf-8"))
        return f"{info['owner']} (pid {info['pid']} on {info['host']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def folder_lock(folder: str | os.PathLike, owner: str, wait: bool, busy_hint: str = "") -> Iterator[Path]:
    """Hold the lock of `folder` (created if missing) as `owner` (e.g. "stage_a-train") for the block; released on
    exit, on error, and by the kernel if the process dies. When another process holds it: wait (logged) if `wait`,
    else raise FolderBusy naming the folder and the holder, with `busy_hint` saying what to do."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK_FILE, on_acquired=_record_holder(owner))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise FolderBusy(f"{folder} is in use by {holder(folder)}; expected no other process writing it"
                             + (f" ({busy_hint})" if busy_hint else "")) from None
        log.info("waiting for %s: it is in use by %s", folder, holder(folder))
        lock.acquire()
    try:
        yield folder
    finally:
        lock.release()
