"""Folder locks: one holder at a time, named when busy, released on exit, on error and when the holder is killed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.locks import FolderBusy, folder_lock, holder

ROOT = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from shared.locks import folder_lock
with folder_lock(sys.argv[1], "a test holder", wait=False):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder_process(folder: Path) -> subprocess.Popen:
    """A separate process that takes the lock of `folder` and sleeps; returns once it holds it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_busy_folder_is_refused_naming_folder_and_holder(tmp_path: Path) -> None:
    with folder_lock(tmp_path, "the first writer", wait=False):
        with pytest.raises(FolderBusy) as busy:
            with folder_lock(tmp_path, "the second writer", wait=False, busy_hint="choose another folder"):
                pass
    message = str(busy.value)
    assert str(tmp_path) in message and f"the first writer (pid {os.getpid()}" in message
    assert message.endswith("(choose another folder)") and "\n" not in message


def test_the_lock_is_released_on_exit_and_on_error(tmp_path: Path) -> None:
    with folder_lock(tmp_path, "a", wait=False):
        pass
    with pytest.raises(RuntimeError):
        with folder_lock(tmp_path, "b", wait=False):
            raise RuntimeError("the body fails")
    with folder_lock(tmp_path, "c", wait=False):
        assert holder(tmp_path).startswith("c (pid")


def test_a_killed_holder_does_not_block(tmp_path: Path) -> None:
    """The kernel drops a flock when its process dies: SIGKILL leaves the lock file, not the lock."""
    process = _holder_process(tmp_path)
    try:
        with pytest.raises(FolderBusy, match=f"a test holder \\(pid {process.pid} "):
            with folder_lock(tmp_path, "me", wait=False):
                pass
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    start = time.perf_counter()
    with folder_lock(tmp_path, "me", wait=False):
        assert holder(tmp_path).startswith("me (pid")
    assert time.perf_counter() - start < 1.0
