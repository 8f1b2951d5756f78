"""`stage_b-eval --policy DIR`: a saved policy's choices on its held-out questions, scored from the outcome table.

Reports accuracy with a 95% bootstrap CI, mean GFLOPs and latency per question, the audio usage
rate, and the action histogram per question family and type, as JSON or a table. The held-out
rows are those recorded in policy.json at training time, so evaluation never sees training rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from stable_baselines3 import PPO

from envs.audio_budget import standardized
from envs.outcome_table import OutcomeTable
from shared.stats import mean_ci


def choose(policy: PPO, table: OutcomeTable, rows: np.ndarray) -> np.ndarray:
    """Deterministic actions for `rows`, observed as the env shows them at the start of an unbudgeted episode."""
    obs = np.concatenate([standardized(table.features)[rows], np.ones((len(rows), 2), np.float32)], axis=1)
    actions, _ = policy.predict(obs, deterministic=True)
    return np.asarray(actions)


def summarize(table: OutcomeTable, rows: np.ndarray, actions: np.ndarray) -> dict:
    """Accuracy (with CI), cost, audio rate and action histograms of one set of choices."""
    ks = table.actions[actions]
    histogram: dict[str, Counter] = defaultdict(Counter)
    for row, k in zip(rows, ks):
        histogram[str(table.family[row])][f"k{k}"] += 1
        histogram[f"{table.family[row]}.{table.qtype[row]}"][f"k{k}"] += 1
    return {"n": int(len(rows)), "accuracy": mean_ci(table.score[rows, actions]),
            "gflops_per_query": float(table.gflops[rows, actions].mean()),
            "latency_ms": float(table.latency_ms[rows, actions].mean()),
            "audio_rate": float((ks > 0).mean()),
            "actions": {name: dict(sorted(c.items())) for name, c in sorted(histogram.items())}}


def evaluate_policy(policy_dir: Path) -> dict:
    """Load policy.zip and policy.json from `policy_dir` and summarise its held-out choices."""
    record_path = policy_dir / "policy.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path} does not exist; expected a folder written by stage_b-train")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    table = OutcomeTable.load(record["config"]["table"])
    rows = np.asarray(record["test_rows"], dtype=np.int64)
    actions = choose(PPO.load(policy_dir / "policy.zip", device="cpu"), table, rows)
    return {"policy": str(policy_dir), "alpha": record["config"]["alpha"], "gamma": record["config"]["gamma"],
            **summarize(table, rows, actions)}


def format_table(result: dict) -> str:
    """A readable summary: headline figures, then the action histogram per family and type."""
    lo, hi = result["accuracy"]["ci95"]
    lines = [f"policy {result['policy']} (alpha {result['alpha']}, gamma {result['gamma']}), {result['n']} held-out questions",
             f"accuracy {100 * result['accuracy']['mean']:.2f} % [{100 * lo:.2f}, {100 * hi:.2f}]; "
             f"{result['gflops_per_query']:.4f} GFLOPs and {result['latency_ms']:.2f} ms per question; "
             f"audio on {100 * result['audio_rate']:.1f} %", "", f"{'family / type':<28} actions"]
    lines += [f"{name:<28} {counts}" for name, counts in result["actions"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stage_b-eval", description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, required=True, help="folder written by stage_b-train")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    result = evaluate_policy(args.policy)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
