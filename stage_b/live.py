"""Live mode: the AudioBudget env running SAFE on each question instead of looking the outcome up.

`LiveOutcome` is the env's outcome function: for (row, action) it runs the frozen encoder on the
question's audio now (no feature cache), generates the answer with batch size 1, scores it, counts
its GFLOPs with the same analytic formula as the table, and measures the wall time. `compare_live`
plays n held-out questions with the same policy in the same episodes, once in live mode and once
in table mode, and reports whether the two agree: the check that table mode is faithful.
`stage_b-live --policy DIR` runs it (exit 1 if live accuracy falls outside table mode's 95% CI),
rebuilding the model from the preset and overrides recorded in the table's provenance; like
`stage_b-eval`, it refuses a table of another Stage A checkpoint than the policy's unless
`--allow-other-table`, before any model is loaded, and a table recounted under a cost profile
(stage_b.cost_profiles): its GFLOPs are another model's, not those of the models live mode runs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from envs.outcome_table import OutcomeTable
from shared.cli import ArgumentParser, InputError, check_keys, check_number, console
from shared.config import load_config
from shared.logs import setup_logging
from shared.stats import mean_ci
from stage_a.checkpointing import bridge_folder
from stage_a.config import TrainConfig
from stage_b.cost_profiles import EMBEDDED
from stage_b.evaluate import SavedPolicy, add_allow_other_table, add_trust_pickle
from stage_b.runner import SafeRunner


PROVENANCE_KEYS = ("preset", "checkpoint", "split")  # what the table's provenance must record to rebuild the model


class LiveOutcome:
    """(row, action index) -> (score, gflops, latency_ms), measured by running SAFE on that question."""

    def __init__(self, runner: SafeRunner, table: OutcomeTable) -> None:
        missing = [i for i in table.ids.tolist() if i not in runner.row_of]
        if missing:
            raise ValueError(f"{len(missing)} outcome-table ids are not in the {runner.data.name} split "
                             f"(first: {missing[0]!r}); expected the table built from this split")
        self.runner, self.table = runner, table
        self.rows = [runner.row_of[i] for i in table.ids.tolist()]

    def __call__(self, row: int, action: int) -> tuple[float, float, float]:
        i, k = self.rows[row], int(self.table.actions[action])
        start = time.perf_counter()
        batch = self.runner.batch([i])
        frames = self.runner.encode([i]) if k else (None, None)
        answers, _ = self.runner.answer(batch, k, *frames)
        latency_ms = 1000 * (time.perf_counter() - start)
        return self.runner.scores([i], answers)[0], self.runner.gflops(batch, k)[0], latency_ms


def compare_live(policy: SavedPolicy, runner: SafeRunner, n: int = 200, seed: int = 0,
                 evaluation: tuple[OutcomeTable, np.ndarray] | None = None) -> dict:
    """Live vs table mode on n held-out questions (a sample drawn with `seed`), played in the same episodes:
    accuracy with CIs, agreement, costs. `evaluation` is `policy.evaluation_rows(None)` when already made."""
    table, rows = evaluation or policy.evaluation_rows(None)
    if policy.confidence:
        raise ValueError(f"policy {policy.folder} observes the no-audio confidence; live mode does not support it yet")
    rows = np.sort(np.random.default_rng(seed).choice(rows, size=min(n, len(rows)), replace=False))
    tabled = policy.play(table, rows, seed)
    live = policy.play(table, rows, seed, outcome=LiveOutcome(runner, table))
    table_ci, live_ci = mean_ci(tabled["score"]), mean_ci(live["score"])
    lo, hi = table_ci["ci95"]
    return {"policy": str(policy.folder), "questions": int(len(rows)),
            "same_actions": float((tabled["action"] == live["action"]).mean()),
            "same_score": float(np.isclose(tabled["score"], live["score"], rtol=0, atol=1e-6).mean()),  # float32 table
            "accuracy_table": table_ci, "accuracy_live": live_ci,
            "live_within_table_ci": bool(lo <= live_ci["mean"] <= hi),
            "gflops_table": float(tabled["gflops"].mean()), "gflops_live": float(live["gflops"].mean()),
            "latency_ms_table": float(tabled["latency_ms"].mean()), "latency_ms_live": float(live["latency_ms"].mean()),
            "reward_table": float(tabled["reward"].mean()), "reward_live": float(live["reward"].mean())}


@console("stage_b-live")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="stage_b-live", description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, required=True, help="folder written by stage_b-train")
    parser.add_argument("--questions", type=int, default=200, help="held-out questions to run live")
    parser.add_argument("--seed", type=int, default=0, help="episode seed (the question order)")
    add_trust_pickle(parser)
    add_allow_other_table(parser)
    args = parser.parse_args(argv)
    check_number("--questions", args.questions, ge=1, integer=True)
    check_number("--seed", args.seed, ge=0, integer=True)
    setup_logging()
    policy = SavedPolicy.load(args.policy, args.trust_pickle)
    evaluation = policy.evaluation_rows(None, args.allow_other_table)  # checked before SAFE is loaded
    provenance = evaluation[0].provenance
    check_keys(f"the provenance of outcome table {policy.config.table}", provenance, PROVENANCE_KEYS)
    profile = provenance.get("cost_profile", {}).get("name", EMBEDDED)
    if profile != EMBEDDED:
        raise InputError(f"outcome table {policy.config.table} carries cost profile {profile!r} (another model's "
                         "GFLOPs); live mode runs the table's own models, so it needs the table stage_b-outcomes wrote")
    cfg = load_config(TrainConfig, provenance["preset"], provenance.get("overrides", {}))
    bridge = bridge_folder(Path(provenance["checkpoint"]))  # checked before the model loads
    runner = SafeRunner(cfg, bridge, provenance["split"])
    result = compare_live(policy, runner, args.questions, args.seed, evaluation)
    print(json.dumps(result, indent=2))
    return 0 if result["live_within_table_ci"] else 1


if __name__ == "__main__":
    sys.exit(main())
