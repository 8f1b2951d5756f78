"""Benchmark: table-mode `SAFE/AudioBudget-v0` steps per second in one process, against its target.

Run: python benchmarks/env_speed.py [--table outcomes.npz] [--steps 200000] [--out benchmarks/results/env_speed.json]
PPO's sample budget is only affordable if the environment is never the bottleneck, so the target is
50,000 steps/s. Without `--table` the env replays a synthetic table the size of the embedded world's
(5429 rows x 4 actions x 32 features); actions are uniform random, drawn before timing so only
`step` (and `reset` at episode ends) is measured. A budget is set so the budget path is exercised.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from envs.audio_budget import AudioBudgetEnv
from envs.outcome_table import OutcomeTable
from shared.benchmark import save_result
from shared.logs import setup_logging

TARGET_STEPS_PER_SECOND = 50_000
ROWS, ACTIONS, FEATURES = 5429, 4, 32

log = logging.getLogger(__name__)


def synthetic_table(rows: int = ROWS, actions: int = ACTIONS, features: int = FEATURES, seed: int = 0) -> OutcomeTable:
    """Random scores, costs growing with the action, Gaussian features: the shape of a real table."""
    rng = np.random.default_rng(seed)
    growth = np.arange(1, actions + 1, dtype=np.float32)
    return OutcomeTable(
        ids=np.array([f"q{i}" for i in range(rows)]), family=np.array(["visual", "audio", "audio_visual"])[np.arange(rows) % 3],
        qtype=np.array(["color"] * rows), actions=np.array([0, 4, 8, 16][:actions], dtype=np.int64),
        score=rng.random((rows, actions), dtype=np.float32),
        gflops=(10 + rng.random((rows, actions), dtype=np.float32)) * growth,
        latency_ms=(50 + rng.random((rows, actions), dtype=np.float32)) * growth,
        features=rng.normal(size=(rows, features)).astype(np.float32), provenance={"split": "synthetic"})


def measure(env: AudioBudgetEnv, steps: int, seed: int = 0) -> float:
    """Steps per second over `steps` random-action steps, resetting at episode ends."""
    actions = np.random.default_rng(seed).integers(0, env.action_space.n, size=steps).tolist()
    env.reset(seed=seed)
    step, reset = env.step, env.reset
    start = time.perf_counter()
    for action in actions:
        if step(action)[2]:
            reset()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=None, help="outcome table .npz (default: synthetic)")
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "env_speed.json")
    args = parser.parse_args()
    if args.steps < 1:
        raise ValueError(f"--steps = {args.steps}, expected >= 1")
    setup_logging()
    torch.set_num_threads(1)  # the env never uses torch; recorded so the machine block says one thread
    table = OutcomeTable.load(args.table) if args.table else synthetic_table()
    env = AudioBudgetEnv(table, episode_length=32, alpha=0.1, gamma=0.05, budget=0.5)
    measure(env, min(args.steps, 10_000), seed=1)  # warm-up
    rate = measure(env, args.steps)
    log.info("%d steps on %d rows x %d actions x %d features", args.steps, table.n_rows, table.n_actions,
             table.features.shape[1])
    result = {
        "benchmark": "env_speed",
        "table": str(args.table) if args.table else "synthetic",
        "shape": [table.n_rows, table.n_actions, int(table.features.shape[1])],
        "steps": args.steps,
        "steps_per_second": round(rate),
        "target": TARGET_STEPS_PER_SECOND,
        "ratio": round(rate / TARGET_STEPS_PER_SECOND, 2),
    }
    save_result(result, args.out)


if __name__ == "__main__":
    main()
