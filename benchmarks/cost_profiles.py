"""Benchmark: what each cost profile charges per action, and how much TOTAL compute a learned policy saves under it.

Run: python benchmarks/cost_profiles.py [--table runs/stage_a/outcomes_test.npz] [--profiles all] [--seeds 0,1,2]
     [--timesteps 100000] [--workers 2] [--runs runs/cost_profiles] [--out benchmarks/results/cost_profiles.json]
The table must have the `text_tokens` column (stage_b-outcomes writes it). For each profile (stage_b.cost_profiles):
- the mean GFLOPs per action over all the table's rows, split into the no-audio call (base prefill + LoRA branches;
  analytic profiles also give them apart), the bridge and the encoder. For `embedded` the split comes from the table:
  the no-audio column, the encoder's count in its provenance, and the rest of each audio action as the bridge;
- a `stage_b-pareto` sweep (alpha component only, no non-RL baselines; `--runs`/<profile>/) of PPO policies over
  seeds and the alpha grid stage_b-pareto derives from the profiled table (stage_b.weight_grid: nine weights from 0
  to one at which the oracle skips audio on every training question), evaluated on its held-out rows;
- per seed, the cheapest of that seed's policies within one accuracy point of always-k_max, and the share of TOTAL
  compute it saves against always-k_max (stage_b.frontier.matched_accuracy_saving's total_saving; its audio-compute
  saving too), with the mean and a 95 % t-interval over seeds; and the same for the outcome-knowing oracle frontier,
  the bound no policy observing only pre-decision features can pass.
`seconds` is this run's wall time per profile (finished policies in `--runs` are reused: `train_seconds` keeps their
training time). The grid is derived per profile because no fixed grid fits them all: the audio increment is about
0.1 % of an action's compute under LLaVA-1.5 + CLAP and a quarter under Whisper-large-v3, so the weights that
separate the actions differ by orders of magnitude.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from envs.outcome_table import DEFAULT_TABLE, OutcomeTable
from shared.benchmark import save_result
from shared.cli import number_list
from shared.logs import setup_logging
from shared.stats import t_interval
from stage_b.cost_profiles import (EMBEDDED, apply_cost_profile, check_profile_name, load_profile, profile_names,
                                   table_parts)
from stage_b.frontier import matched_accuracy_saving
from stage_b.pareto import read_csv, run_sweep
from stage_b.sweep_config import ParetoConfig

log = logging.getLogger(__name__)


def action_means(table: OutcomeTable, name: str) -> dict[str, dict[str, float]]:
    """Per action ("never", "k4", ...): mean GFLOPs over all rows and their split under profile `name`."""
    profiled = apply_cost_profile(table, name)
    if load_profile(name).kind == "analytic":
        parts = table_parts(table, name)
        parts["no_audio_call"] = parts["base"] + parts["lora"]
    else:
        encoder = float(table.provenance["encoder_gflops"])
        audio = np.broadcast_to(table.actions > 0, table.gflops.shape)
        no_audio = np.broadcast_to(table.gflops[:, :1], table.gflops.shape)
        parts = {"no_audio_call": no_audio, "encoder": np.where(audio, encoder, 0.0),
                 "bridge": np.where(audio, table.gflops - no_audio - encoder, 0.0)}
    out = {}
    for a, k in enumerate(table.actions):
        split = {part: float(values[:, a].mean()) for part, values in parts.items()}
        out["never" if k == 0 else f"k{k}"] = {"gflops": float(profiled.gflops[:, a].mean(dtype=np.float64)), **split}
    return out


def savings_per_seed(rows: list[dict]) -> dict:
    """Per seed, the matched-accuracy saving (total and audio compute) of that seed's alpha policies vs always-k_max."""
    static = {r["method"]: r for r in rows if r["method"] == "never" or r["method"].startswith("always-")}
    full = max(static.values(), key=lambda r: r["gflops_per_query"])
    per_seed = {}
    for seed in sorted({r["seed"] for r in rows if r["method"] == "ppo-alpha"}):
        points = [r for r in rows if r["method"] == "ppo-alpha" and r["seed"] == seed]
        per_seed[seed] = matched_accuracy_saving(np.array([p["gflops_per_query"] for p in points]),
                                                 np.array([p["accuracy"] for p in points]), full["accuracy"],
                                                 full["gflops_per_query"], static["never"]["gflops_per_query"])
    matched = [s for s in per_seed.values() if s is not None]
    frontier = [r for r in rows if r["method"] == "oracle-frontier"]
    oracle = matched_accuracy_saving(np.array([r["gflops_per_query"] for r in frontier]),
                                     np.array([r["accuracy"] for r in frontier]), full["accuracy"],
                                     full["gflops_per_query"], static["never"]["gflops_per_query"])
    return {"reference": {"method": full["method"], "accuracy": full["accuracy"],
                          "gflops_per_query": full["gflops_per_query"]},
            "oracle_frontier": oracle,
            "never": {"accuracy": static["never"]["accuracy"], "gflops_per_query": static["never"]["gflops_per_query"]},
            "per_seed": per_seed, "seeds_matched": f"{len(matched)}/{len(per_seed)}",
            "total_saving": t_interval([s["total_saving"] for s in matched]) if matched else None,
            "audio_saving": t_interval([s["saving"] for s in matched]) if matched else None}


def profile_result(table_path: Path, name: str, seeds: list[int], timesteps: int, workers: int, runs: Path) -> dict:
    """Per-action GFLOPs, the sweep under profile `name` and its per-seed savings."""
    start = time.perf_counter()
    table = OutcomeTable.load(table_path)
    means = action_means(table, name)
    sweep = ParetoConfig(table_path, runs / name, None, tuple(seeds), ("alpha",), timesteps, workers=workers,
                         baselines=(), cost_profile=name)
    report = run_sweep(sweep)
    rows = read_csv(runs / name / "pareto.csv")
    never, full = means["never"], means[f"k{int(table.actions[-1])}"]
    result = {"profile": load_profile(name).describe(), "per_action": means,
              "encoder_over_no_audio_call": full["encoder"] / never["no_audio_call"],
              "full_over_never": full["gflops"] / never["gflops"],
              "weight_grid": report["weight_grid"]["alpha"], "n_eval": report["n"],
              "hypervolume_ratio_to_oracle": report["hypervolume_ratio_to_oracle"]["ppo-alpha"],
              "matched_accuracy": savings_per_seed(rows), "train_seconds": report["train_seconds"],
              "seconds": round(time.perf_counter() - start, 1)}
    log.info("%s: never %.4g, k_max %.4g GFLOPs; total saving %s", name, never["gflops"], full["gflops"],
             result["matched_accuracy"]["total_saving"])
    return result


def _pct(interval: dict | None) -> str:
    """A seed interval as "mean % [low, high]" (percent of compute), or "-" when no seed matched."""
    if interval is None:
        return "-"
    ci = interval["ci95"]
    return f"{100 * interval['mean']:.3g} %" + ("" if ci is None else f" [{100 * ci[0]:.3g}, {100 * ci[1]:.3g}]")


def summary_table(results: dict) -> str:
    """One markdown row per profile: GFLOPs per action, the k_max split, and the savings at matched accuracy."""
    header = ("| profile | never | k4 | k8 | k16 | k16: no-audio call / bridge / encoder | total saved, PPO (95 % CI) "
              "| total saved, oracle |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        per_action, matched = result["per_action"], result["matched_accuracy"]
        full = per_action[list(per_action)[-1]]
        oracle = matched["oracle_frontier"]
        bound = "-" if oracle is None else f"{100 * oracle['total_saving']:.3g} %"
        lines.append(f"| {name} | " + " | ".join(f"{per_action[a]['gflops']:.4g}" for a in per_action)
                     + f" | {full['no_audio_call']:.4g} / {full['bridge']:.3g} / {full['encoder']:.4g} | "
                     f"{_pct(matched['total_saving'])} ({matched['seeds_matched']} seeds) | {bound} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=Path(DEFAULT_TABLE))
    parser.add_argument("--profiles", default="all", help="comma-separated profile names, or all")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=Path("runs") / "cost_profiles",
                        help="one stage_b-pareto folder per profile (finished policies are reused)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks") / "results" / "cost_profiles.json")
    args = parser.parse_args()
    setup_logging()
    # "all": every profile of a one-bridge table; per-encoder profiles charge joined tables (benchmarks/encoder_choice.py)
    every = [n for n in profile_names() if load_profile(n).kind != "per_encoder"]
    names = every if args.profiles == "all" else [p.strip() for p in args.profiles.split(",") if p.strip()]
    names = sorted((check_profile_name(n) for n in names), key=lambda n: (n != EMBEDDED, n))
    seeds = number_list("--seeds", args.seeds, int, ge=0)
    start = time.perf_counter()
    results = {name: profile_result(args.table, name, list(seeds), args.timesteps, args.workers, args.runs)
               for name in names}
    save_result({"table": str(args.table), "table_provenance": OutcomeTable.load(args.table).provenance,
                 "settings": {"profiles": names, "weights": "derived per profile (stage_b.weight_grid)",
                              "seeds": list(seeds),
                              "timesteps": args.timesteps, "workers": args.workers, "runs": str(args.runs)},
                 "profiles": results, "runtime_seconds": round(time.perf_counter() - start, 1)}, args.out)
    print(summary_table(results))


if __name__ == "__main__":
    main()
