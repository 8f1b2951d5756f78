"""Benchmark: `stage_b-train --alpha 0.1` time to converge, its held-out evaluation, and live-mode agreement.

Run: python benchmarks/policy_train.py --table outcomes_test.npz [--alpha 0.1] [--timesteps 100000] [--threads 2]
     [--questions 200] [--out benchmarks/results/policy_train.json]
Trains one policy exactly as `stage_b-train` does, with a callback that every `--every` steps scores
the current deterministic policy on *all* held-out rows, each played once as `stage_b-eval` plays
it (mean reward and accuracy, from the table), and notes the training time so far (the curve's
own evaluations excluded, also from `learn_seconds`). Converged = the first point whose held-out
reward is within 0.005 of the best point's; the target is 60 s on 2 cores. Then `stage_b-eval`'s summary of the saved policy, and,
unless `--questions 0`, `stage_b-live`'s comparison of live and table mode on that many questions.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from envs.audio_budget import AudioBudgetEnv
from envs.outcome_table import OutcomeTable
from shared.benchmark import save_result
from shared.config import load_config
from shared.logs import setup_logging
from stage_a.config import TrainConfig
from stage_b.evaluate import SavedPolicy, evaluate_policy
from stage_b.live import compare_live
from stage_b.playback import play
from stage_b.runner import SafeRunner
from stage_b.train import PolicyConfig, train_policy

TARGET_SECONDS = 60.0
CONVERGED_WITHIN = 0.005

log = logging.getLogger(__name__)


class HeldOutCurve(BaseCallback):
    """Every `every` steps: held-out mean reward and accuracy of the deterministic policy, each question played
    once as `stage_b-eval` plays it; `seconds` is training time only (these evaluations are not counted)."""

    def __init__(self, config: PolicyConfig, rows: np.ndarray, every: int) -> None:
        super().__init__()
        self.config, self.rows, self.every = config, rows, every
        self.points: list[dict] = []
        self._next = 0
        self._start = self.evaluating_seconds = 0.0
        self._env: AudioBudgetEnv | None = None

    def _on_training_start(self) -> None:
        train_env = self.training_env.envs[0].unwrapped
        self._env = AudioBudgetEnv(train_env.table, rows=self.rows, scaler=train_env.scaler, scale=train_env.scale,
                                   **self.config.env_kwargs())
        self._start = time.perf_counter()

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            began = time.perf_counter()
            self._next += self.every
            steps = play(self.model, self._env, self.rows)
            self.points.append({"timesteps": int(self.num_timesteps),
                                "seconds": round(began - self._start - self.evaluating_seconds, 2),
                                "reward": round(float(steps["reward"].mean()), 4),
                                "accuracy": round(float(steps["score"].mean()), 4)})
            self.evaluating_seconds += time.perf_counter() - began
        return True


def convergence(points: list[dict]) -> dict:
    """The first point within CONVERGED_WITHIN of the best held-out reward."""
    best = max(p["reward"] for p in points)
    first = next(p for p in points if p["reward"] >= best - CONVERGED_WITHIN)
    return {"best_reward": best, "converged_at_timesteps": first["timesteps"], "converged_at_seconds": first["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, required=True)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=5_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--questions", type=int, default=200, help="live-mode questions (0 skips live mode)")
    parser.add_argument("--policy-dir", type=Path, default=None, help="where the policy goes (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "policy_train.json")
    args = parser.parse_args()
    setup_logging()
    torch.set_num_threads(args.threads)
    folder = args.policy_dir or Path(tempfile.mkdtemp(prefix="stage_b_bench_")) / f"alpha{args.alpha:g}"
    config = PolicyConfig(str(args.table), alpha=args.alpha, timesteps=args.timesteps)
    table = OutcomeTable.load(args.table)
    curve = HeldOutCurve(config, config.rows(table).test, args.every)
    start = time.perf_counter()
    record = train_policy(config, folder, tensorboard=False, extra_callbacks=[curve])
    wall = time.perf_counter() - start
    converged = convergence(curve.points)
    result = {"benchmark": "policy_train", "table": str(args.table), "policy": str(folder), "alpha": args.alpha,
              "train": {"timesteps": args.timesteps,
                        "learn_seconds": round(record["train_seconds"] - curve.evaluating_seconds, 2),
                        "wall_seconds": round(wall, 2), **converged, "target_seconds": TARGET_SECONDS,
                        "ratio_converged_to_target": round(converged["converged_at_seconds"] / TARGET_SECONDS, 3),
                        "curve": curve.points},
              "eval": evaluate_policy(folder)}
    if args.questions:
        provenance = table.provenance
        runner = SafeRunner(load_config(TrainConfig, provenance["preset"], provenance.get("overrides", {})),
                            Path(provenance["checkpoint"]), provenance["split"])
        result["live"] = compare_live(SavedPolicy.load(folder), runner, args.questions)
    save_result(result, args.out)


if __name__ == "__main__":
    main()
