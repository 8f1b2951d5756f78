"""Benchmark: wall time of a full `safe-world build` of the default world, against its target.

Run: python benchmarks/world_build.py [--dir DIR] [--out benchmarks/results/world_build.json]
Builds from nothing (forced) into DIR (a temp folder by default) and records the build's
own timings and quality figures with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from shared.logs import setup_logging
from shared.benchmark import save_result
from shared.world.build import WorldConfig, build_world, read_record

TARGET_SECONDS = 600.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="world folder (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "world_build.json")
    args = parser.parse_args()
    setup_logging()
    world_dir = args.dir or Path(tempfile.mkdtemp(prefix="safe-world-bench-"))
    start = time.perf_counter()
    build_world(WorldConfig(), world_dir, force=True)
    wall = time.perf_counter() - start
    parts = read_record(world_dir)["parts"]
    result = {
        "benchmark": "world_build",
        "wall_seconds": round(wall, 1),
        "target_seconds": TARGET_SECONDS,
        "ratio_to_target": round(wall / TARGET_SECONDS, 3),
        "data_seconds": parts["data"]["seconds"],
        "vl_wall_seconds": parts["vl"]["wall_seconds"],
        "clap_wall_seconds": parts["clap"]["wall_seconds"],
        "whisper_wall_seconds": parts["whisper"]["wall_seconds"],
        "vl_visual_test_accuracy": parts["vl"]["test_accuracy"],
        "clap_test_retrieval_top1": parts["clap"]["retrieval"]["top1"],
        "whisper_test_caption_top1": parts["whisper"]["captions"]["top1"],
    }
    save_result(result, args.out)


if __name__ == "__main__":
    main()
