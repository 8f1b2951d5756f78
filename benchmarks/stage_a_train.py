"""Benchmark: the default `stage_a-train` on the embedded world, against its time and quality targets.

Run: python benchmarks/stage_a_train.py [--out-dir DIR] [--out benchmarks/results/stage_a_train.json]
Trains the default preset from scratch into a fresh run folder (the world and the feature cache
are reused when present, as a user's second run would) and records the wall time including
evaluation, with the summary's audio gain, VL degradation and gate-0 exactness.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from shared.config import load_config
from shared.logs import setup_logging
from shared.benchmark import save_result
from stage_a.config import TrainConfig
from stage_a.train import StageATrainer

TARGET_SECONDS = 600.0
TARGET_GAIN_PTS = 30.0
TARGET_DEGRADATION_PTS = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=None, help="runs folder (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stage_a_train.json")
    args = parser.parse_args()
    setup_logging()
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="safe-stage-a-bench-"))
    start = time.perf_counter()
    summary = StageATrainer(load_config(TrainConfig, "stage_a", {"out_dir": str(out_dir)})).run()
    wall = time.perf_counter() - start
    gain = 100 * (summary["audio_acc"]["mean"] - summary["audio_acc_base"])
    result = {
        "benchmark": "stage_a_train",
        "wall_seconds": round(wall, 1),
        "train_seconds": summary["train_seconds"],
        "target_seconds": TARGET_SECONDS,
        "ratio_to_target": round(wall / TARGET_SECONDS, 3),
        "audio_acc": summary["audio_acc"],
        "audio_acc_base": summary["audio_acc_base"],
        "audio_gain_pts": round(gain, 2),
        "gain_over_target": round(gain / TARGET_GAIN_PTS, 3),
        "vl_degradation_pts": summary["vl_degradation_pts"],
        "degradation_target_pts": TARGET_DEGRADATION_PTS,
        "gate0_max_abs_logit_diff": summary["gate0_max_abs_logit_diff"],
        "steps": summary["steps"],
    }
    save_result(result, args.out)


if __name__ == "__main__":
    main()
