"""Live mode: the AudioBudget env running SAFE on each question instead of looking the outcome up.

`LiveOutcome` is the env's outcome function: for (row, action) it runs the frozen encoder on the
question's audio now (no feature cache), generates the answer with batch size 1, scores it, counts
its GFLOPs with the same analytic formula as the table, and measures the wall time. For a policy
that observes the no-audio confidence, `LiveOutcome.confidence` runs the base model's no-audio pass
when the question is shown (its first-token probability is what the policy observes), and the
outcome is charged as `OutcomeTable.charged_costs(confidence=True)` charges it: no audio reuses that
run's answer at its cost, an audio action pays its own run plus that one. `compare_live`
plays n held-out questions with the same policy in the same episodes, once in live mode and once
in table mode, and reports whether the two agree (with the confidence feature, also how far the
live confidence is from the table's): the check that table mode is faithful.
`stage_b-live --policy DIR` runs it (exit 1 if live accuracy falls outside table mode's 95% CI),
rebuilding the model from the preset and overrides recorded in the table's provenance; like
`stage_b-eval`, it refuses a table of another Stage A checkpoint than the policy's unless
`--allow-other-table`, before any model is loaded, a table recounted under a cost profile
(stage_b.cost_profiles): its GFLOPs are another model's, not those of the models live mode runs, and a table
joining several bridges (stage_b.join): live mode loads one. A weight-conditioned policy (`stage_b-train
--weight-max`) is refused by name: live mode does not play one at a chosen weight.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Run:
    """One answer of one question, measured live: score, GFLOPs, wall time (ms) and first-token probability."""

    score: float
    gflops: float
    latency_ms: float
    confidence: float


class LiveOutcome:
    """(row, action index) -> (score, gflops, latency_ms), measured by running SAFE on that question.

    With `charge_confidence` (a policy observing the no-audio confidence), `confidence(row)` runs the
    no-audio pass first, and the outcome of that row is charged on top of it (see the module docstring)."""

    def __init__(self, runner: SafeRunner, table: OutcomeTable, charge_confidence: bool = False) -> None:
        missing = [i for i in table.ids.tolist() if i not in runner.row_of]
        if missing:
            raise ValueError(f"{len(missing)} outcome-table ids are not in the {runner.data.name} split "
                             f"(first: {missing[0]!r}); expected the table built from this split")
        self.runner, self.table, self.charge_confidence = runner, table, charge_confidence
        self.rows = [runner.row_of[i] for i in table.ids.tolist()]
        self._base: tuple[int, Run] | None = None  # the last no-audio pass run for the confidence: (row, run)

    def run(self, row: int, k: int) -> Run:
        """Answer table row `row` with k audio tokens now (k = 0: the base path), batch size 1, encoder included."""
        i = self.rows[row]
        start = time.perf_counter()
        batch = self.runner.batch([i])
        frames = self.runner.encode([i]) if k else (None, None)
        answers, confidence = self.runner.answer(batch, k, *frames)
        latency_ms = 1000 * (time.perf_counter() - start)
        return Run(self.runner.scores([i], answers)[0], self.runner.gflops(batch, k)[0], latency_ms,
                   float(confidence[0]))

    def confidence(self, row: int) -> float:
        """The no-audio confidence of table row `row`, from a no-audio pass run now (kept for its outcome)."""
        if not self.charge_confidence:
            raise ValueError("LiveOutcome.confidence needs charge_confidence=True: the no-audio pass it runs is "
                             "charged to the question's outcome")
        self._base = (row, self.run(row, 0))
        return self._base[1].confidence

    def __call__(self, row: int, action: int) -> tuple[float, float, float]:
        k = int(self.table.actions[action])
        if not self.charge_confidence:
            run = self.run(row, k)
            return run.score, run.gflops, run.latency_ms
        if self._base is None or self._base[0] != row:
            raise RuntimeError(f"row {row} is answered before its no-audio confidence was measured; the env calls "
                               "LiveOutcome.confidence when it shows a question")
        base = self._base[1]
        if k == 0:
            return base.score, base.gflops, base.latency_ms
        run = self.run(row, k)
        return run.score, run.gflops + base.gflops, run.latency_ms + base.latency_ms


def compare_live(policy: SavedPolicy, runner: SafeRunner, n: int = 200, seed: int = 0,
                 evaluation: tuple[OutcomeTable, np.ndarray] | None = None) -> dict:
    """Live vs table mode on n held-out questions (a sample drawn with `seed`), played in the same episodes:
    accuracy with CIs, agreement, costs, and for a policy observing it the live and table no-audio confidence.
    `evaluation` is `policy.evaluation_rows(None)` when already made."""
    table, rows = evaluation or policy.evaluation_rows(None)
    rows = np.sort(np.random.default_rng(seed).choice(rows, size=min(n, len(rows)), replace=False))
    tabled = policy.play(table, rows, seed)
    outcome = LiveOutcome(runner, table, policy.confidence)
    live = policy.play(table, rows, seed, outcome=outcome, live_confidence=outcome.confidence if policy.confidence
                       else None)
    table_ci, live_ci = mean_ci(tabled["score"]), mean_ci(live["score"])
    lo, hi = table_ci["ci95"]
    result = {"policy": str(policy.folder), "questions": len(rows),
              "same_actions": float((tabled["action"] == live["action"]).mean()),
              "same_score": float(np.isclose(tabled["score"], live["score"], rtol=0, atol=1e-6).mean()),  # float32
              "accuracy_table": table_ci, "accuracy_live": live_ci,
              "live_within_table_ci": bool(lo <= live_ci["mean"] <= hi),
              "gflops_table": float(tabled["gflops"].mean()), "gflops_live": float(live["gflops"].mean()),
              "latency_ms_table": float(tabled["latency_ms"].mean()),
              "latency_ms_live": float(live["latency_ms"].mean()),
              "reward_table": float(tabled["reward"].mean()), "reward_live": float(live["reward"].mean())}
    if policy.confidence:
        gap = np.abs(tabled["confidence"] - live["confidence"])
        result["confidence"] = {"table_mean": float(tabled["confidence"].mean()),
                                "live_mean": float(live["confidence"].mean()),
                                "max_abs_difference": float(gap.max()), "mean_abs_difference": float(gap.mean())}
    return result


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
    if policy.config.conditioned:
        raise InputError(f"{args.policy} is a weight-conditioned policy (weight_max {policy.config.weight_max:g}); "
                         "live mode plays policies trained at one weight, expected a policy trained without "
                         "--weight-max (stage_b-eval --weight plays a conditioned one on the table)")
    evaluation = policy.evaluation_rows(None, args.allow_other_table)  # checked before SAFE is loaded
    provenance = evaluation[0].provenance
    if evaluation[0].action_names is not None:
        raise InputError(f"outcome table {policy.config.table} joins several bridges (actions "
                         f"{evaluation[0].action_labels}, stage_b.join); live mode runs one bridge, so it needs a table "
                         "stage_b-outcomes wrote for one checkpoint")
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
