"""Concurrent writers of one folder: two world builders (one builds, the other waits and reuses) and two
`stage_a-train` on one run folder (the second exits 2 at once; killing the first frees the folder)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.locks import LOCK_FILE, folder_lock
from shared.world.build import read_record
from stage_a.train import main as train_main

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict[str, str]:
    """The worktree's code, and no world built in the user's cache by accident."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "SAFE_WORLD_DIR": str(tmp_path / "default_world")}


def _wait_for(condition, what: str, timeout: float = 120.0) -> None:
    start = time.perf_counter()
    while not condition():
        assert time.perf_counter() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_two_world_builders_build_once(tmp_path: Path) -> None:
    """Both builders start while the folder is locked, so both must wait; once it is free one builds and the
    other, waiting on the lock meanwhile, finds the world up to date."""
    world = tmp_path / "world"
    logs = [tmp_path / f"builder{i}.log" for i in range(2)]
    with folder_lock(world, "the test", wait=False):
        builders = [subprocess.Popen([sys.executable, "-m", "shared.world.cli", "build", "--preset", "world_micro",
                                      "--dir", str(world)], stderr=log.open("w"), env=_env(tmp_path)) for log in logs]
        _wait_for(lambda: all("waiting for" in log.read_text() for log in logs)
                  or any(b.poll() is not None for b in builders), "both builders to wait")
        assert all("waiting for" in log.read_text() for log in logs), [log.read_text() for log in logs]
    assert [b.wait(timeout=300) for b in builders] == [0, 0]
    texts = [log.read_text() for log in logs]
    assert sum(t.count("building world parts") for t in texts) == 1, texts
    assert sum("is up to date" in t for t in texts) == 1, texts
    assert set(read_record(world)["parts"]) == {"data", "vl", "clap", "whisper"}


def test_a_second_trainer_on_a_busy_run_folder_exits_2_at_once(tmp_path: Path, micro_paths: dict[str, str],
                                                              capsys: pytest.CaptureFixture) -> None:
    """The first is a real `stage_a-train` process, the second runs in this one."""
    args = ["--preset", "stage_a_micro", "--out_dir", str(tmp_path), "--steps", "100000",
            *[x for k, v in micro_paths.items() for x in (f"--{k}", v)]]
    run_dir = tmp_path / "stage_a_micro"
    first = subprocess.Popen([sys.executable, "-m", "stage_a.train", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=_env(tmp_path))
    try:
        def holds() -> bool:
            try:
                return json.loads((run_dir / LOCK_FILE).read_text())["pid"] == first.pid
            except (OSError, ValueError):
                return False
        _wait_for(holds, "the first trainer to take the run folder")
        capsys.readouterr()
        start = time.perf_counter()
        assert train_main(args) == 2
        assert time.perf_counter() - start < 5  # refused before loading any model or data
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"stage_a-train: {run_dir} is in use by stage_a-train "
                                                       f"(pid {first.pid} "), err
        assert "choose another --out_dir or --name" in err and not (run_dir / "checkpoint").exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with folder_lock(run_dir, "the test", wait=False):  # a killed trainer does not keep the folder
        pass
