"""kill -9 mid-write: a child process rewrites a checkpoint folder, an .npz table and a JSON file in a loop with the
atomic helpers; the parent SIGKILLs it at seeded random moments, until 10 kills have landed inside a write, and after
each kill reads every target back whole, as the version on disk before the child started or a later one, never missing
and never a mix."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shared.checkpoint import readable_folder

ROOT = Path(__file__).resolve().parents[2]
INSIDE = 10  # kills that must land inside a write (they leave a temp file or folder behind)
MAX_KILLS = 60  # about half of all kills land inside a write, so 60 reach 10 on any machine load
BLOB = 256 * 1024  # bytes of the folder's big file: large enough that kills land inside writes
# The writer: continues from the version on disk, each version's files all derived from its number.
WRITER = """
import hashlib, json, sys
from pathlib import Path
import numpy as np
from shared import checkpoint
from shared.checkpoint import atomic_directory, atomic_file, atomic_write_npz, readable_folder

root, blob, exchange = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "exchange"
if not exchange:
    checkpoint._RENAMEAT2 = None  # the two-rename fallback of platforms without renameat2


def write(version):
    data = bytes([version % 256]) * blob
    with atomic_directory(root / "ckpt") as tmp:
        (tmp / "weights.bin").write_bytes(data)
        (tmp / "nested").mkdir()
        (tmp / "nested" / "version.txt").write_text(str(version))
        (tmp / "state.json").write_text(json.dumps({"version": version, "sha256": hashlib.sha256(data).hexdigest()}))
    atomic_write_npz(root / "table.npz", {"version": np.array(version), "score": np.full(blob // 8, version)})
    with atomic_file(root / "summary.json") as handle:  # written in 64 pieces, as a streaming writer would
        handle.write('{"version": %d, "pad": "' % version)
        for _ in range(64):
            handle.write("x" * (blob // 64))
            handle.flush()
        handle.write('"}')


record = readable_folder(root / "ckpt") / "state.json"
if record.is_file():
    version = json.loads(record.read_text())["version"]
else:  # the first life writes version 0 of every target before the kills start
    version = 0
    write(version)
print("ready", flush=True)
while True:
    version += 1
    write(version)
"""


def _read_back(root: Path, exchange: bool) -> dict[str, int]:
    """Each target's version, after checking it is whole and self-consistent."""
    folder = readable_folder(root / "ckpt")
    if exchange:  # the window-free path: the folder itself is always there
        assert folder == root / "ckpt"
    state = json.loads((folder / "state.json").read_text())
    data = (folder / "weights.bin").read_bytes()
    assert hashlib.sha256(data).hexdigest() == state["sha256"] and data == bytes([state["version"] % 256]) * BLOB
    assert int((folder / "nested" / "version.txt").read_text()) == state["version"]
    with np.load(root / "table.npz") as table:
        assert (table["score"] == table["version"]).all() and table["score"].shape == (BLOB // 8,)
        table_version = int(table["version"])
    summary = json.loads((root / "summary.json").read_text())
    assert summary["pad"] == "x" * BLOB
    return {"ckpt": state["version"], "table": table_version, "summary": summary["version"]}


@pytest.mark.parametrize("mode", ["exchange", "renames"])
def test_sigkill_mid_write_leaves_old_or_new_never_half(tmp_path: Path, mode: str) -> None:
    if mode == "exchange" and not sys.platform.startswith("linux"):
        pytest.skip("renameat2 is Linux's")
    rng = random.Random(14)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    versions = {"ckpt": 0, "table": 0, "summary": 0}
    cut_short = 0  # kills that left a temp file or folder (or .ckpt.old) behind: they landed inside a write
    kills = 0
    while cut_short < INSIDE and kills < MAX_KILLS:
        kills += 1
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(BLOB), mode],
                                 stdout=subprocess.PIPE, text=True, env=env)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.02, 0.2))
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
        child.stdout.close()
        now = _read_back(tmp_path, mode == "exchange")
        assert all(now[k] >= versions[k] for k in versions), (versions, now)  # never an older version
        versions = now
        litter = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        cut_short += bool(litter) or (tmp_path / ".ckpt.old").exists()
        for path in litter:  # the writer is dead: what it left is garbage
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert versions["ckpt"] > kills  # the writer did write, several versions per life
    assert cut_short >= INSIDE, (cut_short, kills)  # the kills did land inside writes, not only between them
