"""Benchmark: the default `stage_a-train` on the embedded world, against issue 13's per-run targets.

Run: python benchmarks/stage_a_train.py [--out-dir DIR] [--out benchmarks/results/stage_a_train.json]
Trains the default preset from scratch into a fresh run folder (the world and the feature cache
are reused when present, as a user's second run would) and records the wall time including
evaluation, with the test split's audio + AV accuracy, VL degradation, gate-0 exactness and each
audio question type against its no-audio floor. One run, one seed: the 3-seed, 2-world targets
(mean accuracy, the gap to full fine-tuning and LoRA-only) are measured by `stage_a-sweep --preset default`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from shared.benchmark import save_result
from shared.config import load_config
from shared.logs import setup_logging
from stage_a.config import TrainConfig
from stage_a.sweep_tables import (SUCCESS_ABOVE_FLOOR_PTS, SUCCESS_AUDIO_ACC, SUCCESS_ORDER_ACC,
                                  SUCCESS_VL_TOLERANCE_PTS)
from stage_a.train import StageATrainer

# Issue 13's targets, shared with the sweep tables' success criteria (there in points, here as fractions).
TARGET_SECONDS = 300.0
TARGET_AUDIO_ACC = SUCCESS_AUDIO_ACC / 100
TARGET_DEGRADATION_PTS = SUCCESS_VL_TOLERANCE_PTS
TARGET_ORDER_ACC = SUCCESS_ORDER_ACC / 100
TARGET_ABOVE_FLOOR_PTS = SUCCESS_ABOVE_FLOOR_PTS
ORDER = "audio.order"


def per_type(summary: dict) -> dict[str, dict]:
    """Each audio question type's accuracy, its no-audio floor and the margin over the floor, in points."""
    out = {}
    for qtype, stats in sorted(summary["per_qtype"].items()):
        if qtype.startswith("visual."):
            continue
        floor = summary["per_qtype_base"][qtype]["mean"]
        out[qtype] = {"acc": round(stats["mean"], 4), "floor": round(floor, 4),
                      "above_floor_pts": round(100 * (stats["mean"] - floor), 2)}
    return out


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
    types = per_type(summary)
    audio = summary["audio_acc"]["mean"]
    result = {
        "benchmark": "stage_a_train",
        "wall_seconds": round(wall, 1),
        "train_seconds": summary["train_seconds"],
        "steps": summary["steps"],
        "audio_acc": summary["audio_acc"],
        "audio_acc_base": summary["audio_acc_base"],
        "vl_degradation_pts": summary["vl_degradation_pts"],
        "gate0_max_abs_logit_diff": summary["gate0_max_abs_logit_diff"],
        "per_type": types,
        "targets": {
            "wall_seconds": {"target": TARGET_SECONDS, "ratio": round(wall / TARGET_SECONDS, 3),
                             "met": wall <= TARGET_SECONDS},
            "audio_acc": {"target": TARGET_AUDIO_ACC, "ratio": round(audio / TARGET_AUDIO_ACC, 3),
                          "met": audio >= TARGET_AUDIO_ACC},
            "vl_degradation_pts": {"target": TARGET_DEGRADATION_PTS,
                                   "met": summary["vl_degradation_pts"] <= TARGET_DEGRADATION_PTS},
            "gate0_exact": {"met": summary["gate0_max_abs_logit_diff"] == 0},
            "order_acc": {"target": TARGET_ORDER_ACC, "value": types[ORDER]["acc"],
                          "met": types[ORDER]["acc"] >= TARGET_ORDER_ACC},
            "every_type_above_floor_pts": {"target": TARGET_ABOVE_FLOOR_PTS,
                                           "value": min(t["above_floor_pts"] for t in types.values()),
                                           "met": all(t["above_floor_pts"] >= TARGET_ABOVE_FLOOR_PTS
                                                      for t in types.values())},
        },
    }
    save_result(result, args.out)


if __name__ == "__main__":
    main()
