"""Benchmark: time of the two-level (seed, question) bootstrap on a sweep cell's shape, against the pooled one.

Run: python benchmarks/stats_bootstrap.py [--seeds 3] [--questions 2500] [--repeats 5]
     [--out benchmarks/results/stats_bootstrap.json]
Synthetic right/wrong scores with a seed effect (seed accuracies spread over 10 points), the shape
of one sweep cell's audio + AV test questions. Each figure is the median of `repeats` calls after
a warm-up call: `hierarchical_bootstrap` and `paired_hierarchical_bootstrap` with equal rows and
with one seed a question short (the ragged path), and the pooled `mean_ci` / `paired_diff_ci` on
the same scores; the CI widths show how much the pooled interval misses.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shared.benchmark import save_result
from shared.logs import setup_logging
from shared.stats import hierarchical_bootstrap, mean_ci, paired_diff_ci, paired_hierarchical_bootstrap

log = logging.getLogger(__name__)


def _seconds(call: Callable[[], dict], repeats: int) -> tuple[float, dict]:
    """Median wall time of `repeats` calls after one warm-up, and the last result."""
    result = call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--questions", type=int, default=2500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stats_bootstrap.json")
    args = parser.parse_args()
    for name in ("seeds", "questions", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} = {getattr(args, name)}, expected >= 1")
    setup_logging()
    rng = np.random.default_rng(0)
    accuracy = np.linspace(0.45, 0.55, args.seeds)[:, None]
    a = (rng.random((args.seeds, args.questions)) < accuracy).astype(float)
    b = (rng.random((args.seeds, args.questions)) < 0.5).astype(float)
    ragged_a, ragged_b = [*a[:-1], a[-1, :-1]], [*b[:-1], b[-1, :-1]]
    result: dict = {"benchmark": "stats_bootstrap", "seeds": args.seeds, "questions": args.questions,
                    "repeats": args.repeats, "seconds": {}, "ci95_width_pts": {}}
    for n_boot in (2000, 5000):
        calls = {
            "hierarchical": lambda: hierarchical_bootstrap(a, n_boot=n_boot),
            "hierarchical_ragged": lambda: hierarchical_bootstrap(ragged_a, n_boot=n_boot),
            "paired_hierarchical": lambda: paired_hierarchical_bootstrap(a, b, n_boot=n_boot),
            "paired_hierarchical_ragged": lambda: paired_hierarchical_bootstrap(ragged_a, ragged_b, n_boot=n_boot),
            "pooled_mean_ci": lambda: mean_ci(a.ravel(), n_boot=n_boot),
            "pooled_paired_diff_ci": lambda: paired_diff_ci(a.ravel(), b.ravel(), n_boot=n_boot),
        }
        for name, call in calls.items():
            seconds, out = _seconds(call, args.repeats)
            result["seconds"][f"{name}_nboot{n_boot}"] = round(seconds, 4)
            if n_boot == 2000:
                result["ci95_width_pts"][name] = round(100 * (out["ci95"][1] - out["ci95"][0]), 3)
            log.info("%s, %d resamples: %.3f s", name, n_boot, seconds)
    widths = result["ci95_width_pts"]
    result["width_ratio_hierarchical_to_pooled"] = round(widths["hierarchical"] / widths["pooled_mean_ci"], 2)
    result["width_ratio_paired_hierarchical_to_pooled"] = round(
        widths["paired_hierarchical"] / widths["pooled_paired_diff_ci"], 2)
    save_result(result, args.out)


if __name__ == "__main__":
    main()
