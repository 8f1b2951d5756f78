"""`stage_b-robust --policy DIR [...]`: trained Stage B policies on corrupted audio, against fixed baselines.

For each condition (a corruption name of shared.corruptions, or "mismatched") a corrupted outcome table is made
over each policy's held-out rows (stage_b.robust_tables: audio actions re-answered by SAFE on the corrupted
features, audio-preview columns recomputed from the corrupted wave; no-audio scores and costs unchanged) and cached
in <out>/tables, so a rerun resumes. Each policy then plays it, and per condition the report gives the policy's
accuracy (95 % bootstrap CI), GFLOPs per query, audio rate (overall, on audio + audio-visual, on VL) and "no gain"
(of the questions it gave audio, the share where the chosen action scored no higher than no audio), beside
always-k<max>, never (k0) and the outcome-knowing oracle on the same rows, each with its accuracy drop vs clean
(paired bootstrap CI over the same questions).
Writes <out>/robust.json and <out>/robust.md atomically; an existing report is refused unless --overwrite.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from envs.outcome_table import OutcomeTable
from shared.checkpoint import atomic_write_text
from shared.cli import (
    ArgumentParser,
    InputError,
    add_overwrite_flag,
    check_number,
    console,
    refuse_overwrite,
)
from shared.logs import setup_logging
from shared.stats import mean_ci, paired_diff_ci
from stage_b.evaluate import SavedPolicy, point
from stage_b.robust_tables import CorruptedTables, check_condition, table_runner

DEFAULT_CONDITIONS = ("clean", "noise-white-0dB", "noise-babble-0dB", "noise-pink--10dB", "mask-contiguous-75",
                      "mismatched")
AUDIO_FAMILIES = ("audio", "audio_visual")


def strategy(table: OutcomeTable, actions: np.ndarray, confidence: bool = False) -> dict:
    """Accuracy (mean, CI), GFLOPs per query, and audio rate overall, on audio + audio-visual and on the other rows."""
    rows = np.arange(table.n_rows)
    audio_rows = np.isin(table.family, AUDIO_FAMILIES)
    uses = table.actions[actions] > 0
    out = point(table, rows, actions, confidence)
    chosen = table.score[rows, actions]
    return {"scores": chosen, "accuracy": mean_ci(chosen), "gflops_per_query": out["gflops_per_query"],
            "audio_rate": out["audio_rate"],
            "audio_no_gain": float((chosen[uses] <= table.score[uses, 0]).mean()) if uses.any() else None,
            "audio_rate_audio_av": float(uses[audio_rows].mean()) if audio_rows.any() else None,
            "audio_rate_vl": float(uses[~audio_rows].mean()) if (~audio_rows).any() else None}


def evaluate(policy: SavedPolicy, table: OutcomeTable) -> dict[str, dict]:
    """The policy and the baselines (always the largest k, never, oracle) on every row of `table`."""
    steps = policy.play(table, np.arange(table.n_rows))
    if not np.array_equal(steps["row"], np.arange(table.n_rows)):
        raise ValueError(f"policy {policy.folder} played rows {steps['row'][:5]}...; expected every row once")
    top = int(np.argmax(table.actions))
    n = table.n_rows
    return {"policy": strategy(table, steps["action"], policy.confidence),
            f"always-{table.action_labels[top]}": strategy(table, np.full(n, top)),
            "never": strategy(table, np.zeros(n, dtype=np.int64)),
            "oracle": strategy(table, table.oracle_actions())}


def with_drops(results: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """Each strategy's accuracy drop vs its clean accuracy on the same rows (clean minus corrupted, with a paired
    bootstrap CI), when clean is among the conditions; the per-row scores are dropped from the result."""
    clean = results.get("clean")
    for condition in results.values():
        for name, figures in condition.items():
            figures["drop_vs_clean"] = None if clean is None else paired_diff_ci(clean[name]["scores"],
                                                                                 figures["scores"])
    for condition in results.values():
        for figures in condition.values():
            del figures["scores"]
    return results


def format_markdown(report: dict) -> str:
    """One table per policy: a row per condition and strategy."""
    lines = ["# Stage B under corrupted audio", ""]
    for entry in report["policies"]:
        lines += [(f"## {entry['policy']} (alpha {entry['alpha']:g}, gamma {entry['gamma']:g}), {entry['n']} "
                  "held-out questions"), "",
                  ("| condition | strategy | accuracy % [95 % CI] | drop vs clean | GFLOPs/q | audio % | audio % "
                  "(A+AV) | audio % (VL) | no gain % |"), "|---|---|---|---|---|---|---|---|---|"]
        for condition, strategies in entry["conditions"].items():
            for name, f in strategies.items():
                lo, hi = f["accuracy"]["ci95"]
                drop = "" if f["drop_vs_clean"] is None else (
                    f"{100 * f['drop_vs_clean']['mean_diff']:+.2f} [{100 * f['drop_vs_clean']['ci95'][0]:+.2f}, "
                    f"{100 * f['drop_vs_clean']['ci95'][1]:+.2f}]")
                rates = [("-" if r is None else f"{100 * r:.1f}")
                         for r in (f["audio_rate"], f["audio_rate_audio_av"], f["audio_rate_vl"], f["audio_no_gain"])]
                lines.append(f"| {condition} | {name} | {100 * f['accuracy']['mean']:.2f} [{100 * lo:.2f}, "
                             f"{100 * hi:.2f}] | {drop} | {f['gflops_per_query']:.4f} | {' | '.join(rates)} |")
        lines.append("")
    return "\n".join(lines)


def run(policy_dirs: list[Path], conditions: list[str], out: Path, root: Path, seed: int = 0,
        batch_size: int = 64) -> dict:
    """Every policy on every condition's corrupted table (built once per training table and rows, cached)."""
    policies = [SavedPolicy.load(d) for d in policy_dirs]
    for policy in policies:
        policy.checked_weight(None, "--policy")
    makers: dict[str, CorruptedTables] = {}
    report = {"conditions": conditions, "seed": seed, "policies": []}
    for policy in policies:
        table, rows = policy.evaluation_rows()  # the held-out rows of a table of the policy's own checkpoint
        table_path = str(Path(policy.config.table).resolve())
        if table_path not in makers:
            runner, cache_root = table_runner(table, root)
            makers[table_path] = CorruptedTables(table, runner, cache_root, out / "tables", seed, batch_size)
        maker = makers[table_path]
        results = {name: evaluate(policy, maker.get(name, rows)) for name in conditions}
        report["policies"].append({"policy": str(policy.folder), "alpha": policy.config.alpha,
                                   "gamma": policy.config.gamma, "table": table_path, "n": len(rows),
                                   "conditions": with_drops(results)})
    return report


@console("stage_b-robust")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="stage_b-robust", description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, action="append", required=True,
                        help="folder written by stage_b-train (repeatable)")
    parser.add_argument("--corruptions", default=",".join(DEFAULT_CONDITIONS),
                        help="comma-separated conditions: 'clean', stage_a corruption names (noise-<type>-<snr>dB, "
                             "mask-<layout>-<percent>) or 'mismatched'")
    parser.add_argument("--out", type=Path, default=Path("runs/stage_b/robust"))
    parser.add_argument("--root", type=Path, default=Path("."),
                        help="folder a table's relative provenance checkpoint is resolved from (default: cwd)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corruptions and the mismatch derangement")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add_overwrite_flag(parser, "robust.json and robust.md (cached tables are always reused)")
    args = parser.parse_args(argv)
    setup_logging()
    conditions = [c.strip() for c in args.corruptions.split(",") if c.strip()]
    for name in conditions:
        try:
            check_condition(name)
        except ValueError as err:
            raise InputError(f"--corruptions: {name!r}: {err}; or 'mismatched'") from err
    if len(set(conditions)) < len(conditions) or not conditions:
        raise InputError(f"--corruptions is {args.corruptions!r}; expected distinct, non-empty condition names")
    check_number("--batch-size", args.batch_size, ge=1, integer=True)
    if args.threads is not None:
        torch.set_num_threads(check_number("--threads", args.threads, ge=1, integer=True))
    refuse_overwrite(args.out / "robust.json", args.overwrite)
    report = run(args.policy, conditions, args.out, args.root, args.seed, args.batch_size)
    text = format_markdown(report)
    atomic_write_text(args.out / "robust.json", json.dumps(report, indent=2))
    atomic_write_text(args.out / "robust.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
