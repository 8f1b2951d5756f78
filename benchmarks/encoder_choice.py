"""Benchmark: does choosing the encoder per question (no audio, CLAP with k tokens, Whisper with k) move the frontier?

Run: python benchmarks/encoder_choice.py --clap CLAP_TABLE --joined JOINED_TABLE [--runs /tmp/h_encoder_pareto]
     [--pairs embedded=embedded,llava-1.5-7b+clap-htsat=llava-1.5-7b+clap-or-whisper] [--seeds 0,1,2]
     [--alphas W,W,...] [--timesteps 100000] [--workers 1] [--out benchmarks/results/encoder_choice.json]
CLAP_TABLE is a stage_b-outcomes table of the CLAP bridge; JOINED_TABLE joins it (as its first input, which gives the
no-audio column) with the Whisper bridge's table of the same split (stage_b-join), so both action spaces answer the
same questions with the same frozen base. For each pair CLAP_PROFILE=JOINED_PROFILE two stage_b-pareto sweeps run
(alpha component, every baseline, the given seeds, each sweep's derived weight grid or `--alphas` for both;
finished policies are reused): the CLAP
table under CLAP_PROFILE in <runs>_clap_<CLAP_PROFILE>/ (the k-only action space) and the joined table under
JOINED_PROFILE in <runs>_<JOINED_PROFILE>/ (encoder choice). Both evaluate on the same held-out rows (the tables have
the same rows and every policy the same split seed). Reported per pair:
- per action of the joined table under its profile, the mean score and GFLOPs over all rows;
- each sweep's own summary (pareto.json: reference point, hypervolume share of its own oracle frontier);
- on ONE reference point for both (GFLOPs: the larger of the two sweeps' references, i.e. the most expensive static
  policy of either action space; accuracy 0), the hypervolume of each method (PPO, supervised, bandit, cascade, the
  static policies, the oracle frontier): per seed with a 95 % t-interval, the share of the action space's own oracle
  frontier there, and joined minus k-only with a Welch interval over seeds;
- at matched accuracy, the cheapest point (seed means per weight) within one accuracy point of the k-only space's
  always-k<max> (today's full-audio deployment) of PPO and of the oracle frontier, and its compute saving against
  that deployment; and the best accuracy each space's PPO reaches;
- the verdict: "moves the frontier" when joined minus k-only PPO hypervolume has a 95 % interval above 0,
  "moves it back" when below 0, else "no measurable change".
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from envs.outcome_table import OutcomeTable
from shared.benchmark import save_result
from shared.cli import number_list
from shared.loading import file_sha256
from shared.logs import setup_logging
from shared.stats import t_interval, welch_interval
from stage_b.cost_profiles import apply_cost_profile, check_profile_name
from stage_b.frontier import (
    hypervolume,
    is_static,
    matched_accuracy_saving,
    seed_hypervolumes,
    seed_means,
    xy,
)
from stage_b.pareto import read_csv, run_sweep
from stage_b.sweep_config import ParetoConfig

log = logging.getLogger(__name__)

METHODS = ("ppo-alpha", "supervised-alpha", "bandit-alpha", "cascade")  # learned or tuned, compared per seed
FIXED = ("static", "oracle-frontier")  # one set of points each


def sweep(table: Path, out: Path, profile: str, settings: dict) -> tuple[dict, list]:
    """One alpha sweep with every baseline (stage_b.pareto.run_sweep): its pareto.json report and pareto.csv rows;
    `settings`: weights (None: derived), seeds, timesteps, workers."""
    report = run_sweep(ParetoConfig(table, out, settings["weights"], tuple(settings["seeds"]), ("alpha",),
                                    settings["timesteps"], workers=settings["workers"], cost_profile=profile))
    return report, read_csv(out / "pareto.csv")


def fixed_points(rows: list[dict], name: str) -> list[dict]:
    """The static policies' rows, or the oracle frontier's."""
    if name == "static":
        return [r for r in rows if is_static(r["method"])]
    return [r for r in rows if r["method"] == name]


def common_hypervolumes(rows: list[dict], g_ref: float) -> dict:
    """Per method, the hypervolume at reference (g_ref, 0): per seed with an interval, or exact for fixed points;
    each as a share of the same space's oracle frontier."""
    oracle = hypervolume(*xy(fixed_points(rows, "oracle-frontier")), g_ref)
    out = {name: {"hypervolume": hypervolume(*xy(fixed_points(rows, name)), g_ref)} for name in FIXED}
    for method in METHODS:
        values = seed_hypervolumes(rows, method, g_ref)
        out[method] = {"per_seed": values, **t_interval(values)}
    for summary in out.values():
        value = summary.get("hypervolume", summary.get("mean"))
        summary["share_of_own_oracle_frontier"] = value / oracle
    return out


def matched(rows: list[dict], target: float, g_full: float, g_never: float) -> dict:
    """The cheapest PPO point (seed means) and oracle-frontier vertex within one point of `target` accuracy, with
    their savings against g_full, and the best accuracy PPO reaches."""
    ppo = seed_means(rows, "ppo-alpha")
    return {"ppo": matched_accuracy_saving(*xy(ppo), target, g_full, g_never),
            "oracle_frontier": matched_accuracy_saving(*xy(fixed_points(rows, "oracle-frontier")), target, g_full,
                                                        g_never),
            "ppo_best_accuracy": max(p["accuracy"] for p in ppo)}


def action_means(table: OutcomeTable, profile: str) -> dict:
    """Per action label, mean score and GFLOPs over all rows under `profile`."""
    profiled = apply_cost_profile(table, profile)
    return {label: {"score": float(profiled.score[:, a].mean(dtype=np.float64)),
                    "gflops": float(profiled.gflops[:, a].mean(dtype=np.float64))}
            for a, label in enumerate(profiled.action_labels)}


def compare(clap_table: Path, joined_table: Path, profiles: tuple[str, str], runs: str, settings: dict) -> dict:
    """Both sweeps of one profile pair and their comparison on one reference point (module docstring)."""
    start = time.perf_counter()
    clap_profile, joined_profile = profiles
    spaces = {"k_only": sweep(clap_table, Path(f"{runs}_clap_{clap_profile}"), clap_profile, settings),
              "encoder_choice": sweep(joined_table, Path(f"{runs}_{joined_profile}"), joined_profile, settings)}
    reports, rows = {k: v[0] for k, v in spaces.items()}, {k: v[1] for k, v in spaces.items()}
    g_ref = max(r["reference"]["gflops_per_query"] for r in reports.values())
    static = {r["method"]: r for r in rows["k_only"] if is_static(r["method"])}
    full = max(static.values(), key=lambda r: r["gflops_per_query"])
    hv = {space: common_hypervolumes(space_rows, g_ref) for space, space_rows in rows.items()}
    difference = {m: welch_interval(hv["encoder_choice"][m]["per_seed"], hv["k_only"][m]["per_seed"],
                                    b_exact=m == "cascade")  # deterministic: one exact value each, no interval
                  for m in METHODS}
    ppo = difference["ppo-alpha"]
    ci = ppo["ci95"]
    verdict = ("moves the frontier" if ci and ci[0] > 0 else "moves it back" if ci and ci[1] < 0
               else "no measurable change")
    target = (full["accuracy"], full["gflops_per_query"], static["never"]["gflops_per_query"])
    return {"profiles": {"k_only": clap_profile, "encoder_choice": joined_profile},
            "sweeps": {space: report["out"] for space, report in reports.items()},
            "n_eval": {space: report["n"] for space, report in reports.items()},
            "joined_actions": action_means(OutcomeTable.load(joined_table), joined_profile),
            "own": {space: {"reference": report["reference"],
                            "hypervolume_ratio_to_oracle": report["hypervolume_ratio_to_oracle"],
                            "matched_accuracy_saving": report["matched_accuracy_saving"]["any"],
                            "weights": report["weight_grid"]["alpha"]["weights"]}
                    for space, report in reports.items()},
            "common_reference": {"gflops_per_query": g_ref, "accuracy": 0.0},
            "hypervolume": hv, "encoder_choice_minus_k_only": difference,
            "matched_accuracy": {"target": {"method": full["method"], "accuracy": full["accuracy"],
                                            "gflops_per_query": full["gflops_per_query"]},
                                 **{space: matched(space_rows, *target) for space, space_rows in rows.items()}},
            "verdict": verdict, "seconds": round(time.perf_counter() - start, 1)}


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """`CLAP_PROFILE=JOINED_PROFILE,...` as checked profile-name pairs."""
    pairs = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        clap, sep, joined = item.partition("=")
        if not sep:
            raise ValueError(f"--pairs item {item!r}; expected CLAP_PROFILE=JOINED_PROFILE")
        pairs.append((check_profile_name(clap), check_profile_name(joined)))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clap", type=Path, required=True, help="the CLAP bridge's stage_b-outcomes table")
    parser.add_argument("--joined", type=Path, required=True, help="stage_b-join of --clap (first) and the Whisper one")
    parser.add_argument("--pairs", default="embedded=embedded,llava-1.5-7b+clap-htsat=llava-1.5-7b+clap-or-whisper")
    parser.add_argument("--runs", default="/tmp/h_encoder_pareto", help="prefix of the sweeps' folders")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--alphas", default=None, help="reward weights of both sweeps (default: each one's derived)")
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks") / "results" / "encoder_choice.json")
    args = parser.parse_args()
    setup_logging()
    joined = OutcomeTable.load(args.joined)
    first = joined.provenance.get("joined", [{}])[0]
    if first.get("table_sha256") != file_sha256(args.clap):
        raise ValueError(f"{args.joined} does not join {args.clap} as its first table (its first input has SHA-256 "
                         f"{first.get('table_sha256')}); expected `stage_b-join {args.clap} WHISPER_TABLE`")
    settings = {"seeds": list(number_list("--seeds", args.seeds, int, ge=0)), "timesteps": args.timesteps,
                "workers": args.workers,
                "weights": None if args.alphas is None else tuple(number_list("--alphas", args.alphas, float, ge=0))}
    start = time.perf_counter()
    results = {f"{clap}|{joined_name}": compare(args.clap, args.joined, (clap, joined_name), args.runs, settings)
               for clap, joined_name in parse_pairs(args.pairs)}
    for name, result in results.items():
        ppo = result["encoder_choice_minus_k_only"]["ppo-alpha"]
        log.info("%s: PPO hypervolume, encoder choice minus k-only %.4g %s: %s", name, ppo["mean_diff"], ppo["ci95"],
                 result["verdict"])
    save_result({"tables": {"k_only": str(args.clap), "encoder_choice": str(args.joined),
                            "joined_provenance": {key: joined.provenance[key] for key in
                                                  ("checkpoint_hash", "split", "action_names", "no_audio_from")}},
                 "settings": {**settings, "components": ["alpha"], "runs": args.runs,
                              "weights": settings["weights"] or "derived per sweep (stage_b.weight_grid)"},
                 "comparisons": results, "runtime_seconds": round(time.perf_counter() - start, 1)}, args.out)


if __name__ == "__main__":
    main()
