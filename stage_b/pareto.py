"""`stage_b-pareto --table T`: sweep the reward's cost weights, and place PPO policies against baselines and the oracle.

For each reward component (`alpha`: compute, alpha = w, gamma = 0; `gamma`: latency, alpha = 0,
gamma = w; `both`: alpha = gamma = w), weight w and seed, one policy trains with `train_policy` in
a pool of spawned processes, in OUT/policies/<component>-w<w>-seed<s>/. The weights are `--alphas`
for every component if given, else each component's grid derived from the policies' training rows
(`PolicyConfig.rows(...).train`) and reward scale (stage_b.weight_grid: nine weights from 0 up to one
at which the oracle skips audio on every training question), recorded in pareto.json (`weight_grid`).
A folder whose policy.json exists is reused (its config must match) when the SHA-256 of the table it
trained on (`table_sha256` in policy.json) is that of the table now at `--table` and its reward scale
(`reward_scale`) is the one the sweep trains with, so an interrupted sweep resumes where it stopped; a
policy of a table since replaced (or of one not recorded), or of another scale, is retrained, and the log
says why.

Every policy acts on the same questions (`SavedPolicy.evaluation_rows`: the training table's
held-out rows, or all of `outcomes_<split>.npz`), and so do the baselines: `never` (no audio),
`always-<action>` (always-k<k>, or always-<encoder>-k<k> on a table joining bridges: stage_b.join),
`random-<component>` (each policy's own actions permuted across the questions,
seeded by the policy's seed: the same action mix and expected compute, blind to the question;
with `--confidence` both pay for the no-audio run the policies observe),
`oracle` (the cheapest correct action per question) and `oracle-frontier` (per question the action
maximising score - w * gflops / scale.gflops, the policies' reward scale, at every weight w where that
choice changes).

`--baselines` (default: all three) adds the non-RL competitors of stage_b.baselines, trained on the
policies' training rows (`PolicyConfig.rows(...).train`) and evaluated on the same questions:
`supervised-<component>` (per-action ridge regression of the score, then argmax of predicted score
minus the env's cost term; seeds: bootstraps of the training rows), `bandit-<component>` (LinUCB
trained online on the env's reward; seeds: the order of the stream), both at every weight of
every component's grid, rewarded with the policies' reward scale and, with `--confidence`, observing
and paying for the confidence as the policies do; and `cascade` (audio with one k only when the
no-audio confidence is below tau, at as many thresholds as the longest component grid has weights;
charged for the no-audio run on every audio question; deterministic). By default the cascade is
skipped, with a logged warning and `baselines.skipped` in pareto.json, on a table without the
`confidence` column; requested by name there it is an error before any training. Baselines are
refitted on every run (seconds), never saved.

With `--cost-profile NAME` (stage_b.cost_profiles) the table's compute is recounted for real models first
(`ParetoConfig.profiled`): the recounted copy (OUT/tables/<table file>, and the `--split` table beside it) is
the sweep's table, so the derived weight grids, the reward scale, every policy, baseline and budget, and
`gflops_per_query` are the profile's; it is rewritten with the same bytes on a rerun, so finished policies are
reused as above. Its latency stays the embedded machine's measurement, so a non-embedded profile takes only the
alpha component (the default there; gamma and both are refused). pareto.json names the profile (`cost_profile`).

With `--conditioned` each component and seed trains ONE weight-conditioned policy instead
(`<component>-conditioned-seed<s>`, `stage_b-train --weight-max`: the weight is drawn per training
episode and observed), with weight_max the top of the component's grid (its last weight, BEYOND x the
derived top; with `--alphas` the largest given) and `--timesteps` steps. Each is played on the evaluation
rows at `--eval-weights` N weights evenly spaced from 0 to weight_max (default 40), one `ppo-<component>`
and one `random-<component>` row per weight and seed (alpha, gamma = w x the component's units), and
`supervised-*` and `bandit-*` are evaluated at the same N weights and the cascade at N thresholds, so every
hypervolume counts the same number of points; `never`, `always-*`, `oracle` and `oracle-frontier` are as
above. pareto.json records `policy` ("conditioned" or "per-weight"), `evaluation_grid` and each policy's
train seconds (`train_seconds.per_policy`). A reused policy whose config differs only in
`RETRAINED_FIELDS` (timesteps, weight_max, weight_draw) is retrained, with a log line; any other
difference is an error.

In both modes pareto.json's `oracle_at_grid` gives, per component, the hypervolume of the oracle played only
at that component's evaluation weights (`oracle_choice` per weight on the evaluation rows, its cost in the
policies' units as for `oracle-frontier`) and its share of the whole oracle frontier's: a hypervolume is a
staircase over a method's points, so even the oracle loses area between the weights of a coarse grid. It is a
diagnostic of the grid, not a bound: the oracle's frontier moves in jumps at a few weights (many questions gain
the same score for nearly the same cost), so its share depends on where the grid's weights fall, and a method
whose choices change smoothly with the weight can exceed it.

OUT/pareto.csv has the columns in `COLUMNS`. `alpha`, `gamma`, `seed` are the reward weights and
seed for `ppo-*`, `random-*`, `supervised-*` and `bandit-*` rows, and the weight (alpha = w,
gamma = 0) for `oracle-frontier` rows; a field that does not apply (static, oracle and cascade
rows) is left empty. The cascade's rows come in the order of its thresholds tau, which
pareto.json lists (`baselines.cascade.thresholds`). `latency_p50_ms` and `latency_p95_ms` (appended
after the original eight columns) are the percentiles of the chosen actions' latency, for every
method (stage_b.latency; pareto.json's `latency` says over which samples). OUT/pareto.json holds the
frontier analysis (`stage_b.frontier.summarize_sweep`: hypervolumes per method with intervals over
seeds, ratios to the oracle frontier, PPO minus each baseline) and what each baseline fitted;
OUT/pareto.png the plot against GFLOPs; with `--axis latency_p95` OUT/pareto_latency_p95.png also
plots accuracy against p95 latency. With `--budget B[,B...]` PPO policies also train under each
episode compute budget (with the reward scale of every other policy), and OUT/budget.csv,
OUT/budget.png and pareto.json's `budget` block compare them with the best static policy played
through the same budget (stage_b.budget; pareto.csv is unchanged).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from envs.outcome_table import OutcomeTable
from envs.reward_scale import RewardScale
from shared.benchmark import machine_info
from shared.checkpoint import atomic_write_text
from shared.cli import console
from shared.loading import file_sha256, load_json
from shared.logs import setup_logging
from stage_b.baselines import select_baselines, sweep_baselines
from stage_b.budget import BUDGET_COLUMNS, budget_policies, run_budgets
from stage_b.cost_profiles import EMBEDDED
from stage_b.evaluate import SavedPolicy, point
from stage_b.frontier import (
    hypervolume,
    oracle_at_weights,
    oracle_choice,
    oracle_frontier,
    static_methods,
    summarize_sweep,
)
from stage_b.latency import PERCENTILES, frontier_percentiles, latency_source
from stage_b.plot import AXES, plot_pareto
from stage_b.sweep_config import COMPONENTS, ParetoConfig, parse_sweep, weighted
from stage_b.train import PolicyConfig, train_policy

log = logging.getLogger(__name__)

COLUMNS = ("method", "alpha", "gamma", "seed", "accuracy", "gflops_per_query", "latency_ms", "audio_rate",
           *PERCENTILES)
# a reused policy whose config differs from the sweep's only in these fields is retrained
RETRAINED_FIELDS = ("timesteps", "weight_max", "weight_draw")


def _init_worker() -> None:
    """One torch thread per worker process: the pool, not torch, uses the cores."""
    import torch

    torch.set_num_threads(1)


def _train_and_play(config: PolicyConfig, folder: Path, train: bool, split: str | None,
                    weights: list[float | None]) -> dict:
    """In a worker: train the policy unless reused, then its actions on the evaluation rows at each of `weights`
    (a conditioned policy's evaluation grid, or [None]: its own weight)."""
    if train:
        train_policy(config, folder, tensorboard=False)
    policy = SavedPolicy.load(folder)
    table, rows = policy.evaluation_rows(split)
    plays = [(w, policy.play(table, rows, weight=w)) for w in weights]
    return {"rows": plays[0][1]["row"], "train_seconds": policy.record["train_seconds"],
            "plays": [{"weight": w, "actions": steps["action"], "forced": steps["forced"]} for w, steps in plays]}


def _needs_training(folder: Path, config: PolicyConfig, table_sha256: str, table: OutcomeTable) -> bool:
    """False when `folder` holds a finished policy with this config, trained on the table whose file has
    `table_sha256` (loaded as `table`) with the reward scale this config has on it. A config differing only in
    RETRAINED_FIELDS (PPO steps, a conditioned policy's weight_max and weight draw) is retrained; any other
    difference is an error."""
    record_path = folder / "policy.json"
    if not record_path.is_file():
        return True
    record = load_json(record_path, "a policy record written by stage_b-train", keys=("config",))
    saved = {"weight_max": None, "weight_draw": "uniform"} | record["config"]  # records from before those fields
    if "val_fraction" not in saved:
        log.info("retraining %s: it was trained before the validation split (its best/ was selected on the "
                 "held-out rows)", folder)
        return True
    wanted = asdict(config)
    if saved["weight_max"] is None and not config.conditioned:  # a per-weight policy draws no weight
        saved["weight_draw"] = wanted["weight_draw"]
    changed = sorted(key for key in saved.keys() | wanted.keys() if saved.get(key) != wanted.get(key))
    if changed and set(changed) <= set(RETRAINED_FIELDS):
        log.info("retraining %s: it was trained with %s, the sweep's are %s", folder,
                 {key: saved.get(key) for key in changed}, {key: wanted.get(key) for key in changed})
        return True
    if changed:
        raise ValueError(f"{folder} holds a policy trained with {saved}, not {wanted}; "
                         "delete it or choose another --out")
    trained_on = record.get("table_sha256")
    if trained_on != table_sha256:
        log.info("retraining %s: it was trained on a table with sha256 %s, %s now has %s", folder,
                 trained_on[:12] if trained_on else "(not recorded)", config.table, table_sha256[:12])
        return True
    scale = config.reward_scale(table).to_json()
    if record.get("reward_scale") != scale:
        log.info("retraining %s: it was trained with reward scale %s, the sweep's is %s", folder,
                 record.get("reward_scale", "(not recorded: the table maxima)"), scale)
        return True
    log.info("reusing %s (policy.json exists, same table and reward scale)", folder)
    return False


def run_policies(sweep: ParetoConfig, configs: dict[str, PolicyConfig], table: OutcomeTable) -> dict[str, dict]:
    """Train (or reuse) the policies `configs` names (folder name -> config) in a process pool, `table` being the
    sweep's table already loaded; name -> {rows, plays: [{weight, actions, forced}], train_seconds, reused}."""
    folders = {name: sweep.out / "policies" / name for name in configs}
    table_sha256 = file_sha256(sweep.table)
    train = {name: _needs_training(folders[name], config, table_sha256, table) for name, config in configs.items()}
    log.info("%d policies: %d to train, %d reused; %d workers", len(train), sum(train.values()),
             len(train) - sum(train.values()), sweep.workers)
    results = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(sweep.workers, mp_context=context, initializer=_init_worker) as pool:
        futures = {pool.submit(_train_and_play, config, folders[name], train[name], sweep.split,
                               sweep.play_weights(config)): name for name, config in configs.items()}
        for future in tqdm(as_completed(futures), total=len(futures), desc="policies"):
            name = futures[future]
            try:
                results[name] = future.result() | {"reused": not train[name]}
            except Exception as err:
                for pending in futures:
                    pending.cancel()
                raise RuntimeError(f"policy {folders[name]} failed: {err!r}") from err
    return results


def _row(method: str, figures: dict, alpha: float | None = None, gamma: float | None = None,
         seed: int | None = None) -> dict:
    """One pareto.csv row from a `point` result (latency percentiles included)."""
    return {"method": method, "alpha": alpha, "gamma": gamma, "seed": seed, **figures}


def evaluate_sweep(sweep: ParetoConfig, results: dict[str, dict]) -> tuple[list[dict], OutcomeTable, np.ndarray]:
    """pareto.csv rows for every policy and baseline, all on the same questions; also returns (table, rows)."""
    configs = sweep.policies()
    first = next(iter(configs))
    policy = SavedPolicy.load(sweep.out / "policies" / first)
    table, rows = policy.evaluation_rows(sweep.split)
    out = []
    for name, config in tqdm(configs.items(), desc="evaluate"):
        result = results[name]
        if not np.array_equal(result["rows"], rows):
            raise ValueError(f"policy {name} was evaluated on other rows than {first}; the sweep's policies must "
                             "share the table and split_seed")
        component = name.split("-", 1)[0]
        for played in result["plays"]:
            alpha, gamma = ((config.alpha, config.gamma) if played["weight"] is None
                            else weighted(component, played["weight"]))
            weights = {"alpha": alpha, "gamma": gamma, "seed": config.seed}
            shuffled = np.random.default_rng(config.seed).permutation(played["actions"])
            out.append(_row(f"ppo-{component}", point(table, rows, played["actions"], sweep.confidence), **weights))
            out.append(_row(f"random-{component}", point(table, rows, shuffled, sweep.confidence), **weights))
    for index, method in enumerate(static_methods(table.action_labels)):
        out.append(_row(method, point(table, rows, np.full(len(rows), index, dtype=np.int64))))
    out.append(_row("oracle", point(table, rows, table.oracle_actions()[rows])))
    sub = table.subset(rows)
    audio = np.broadcast_to((table.actions > 0).astype(np.float64), sub.score.shape)
    cost = oracle_cost(sub, policy.reward_scale(table), COMPONENTS["alpha"])
    frontier = oracle_frontier(sub.score, cost, {"gflops": sub.gflops, "latency_ms": sub.latency_ms, "audio": audio})
    spread = frontier_percentiles(sub.charged_latency_samples(), oracle_choice(sub.score, cost, 0.0),
                                  frontier["switch_row"], frontier["switch_action"])
    out += [{"method": "oracle-frontier", "alpha": float(w), "gamma": 0.0, "seed": None, "accuracy": float(acc),
             "gflops_per_query": float(g), "latency_ms": float(lat), "audio_rate": float(rate),
             **{column: float(spread[column][i]) for column in PERCENTILES}}
            for i, (w, acc, g, lat, rate) in enumerate(zip(frontier["weight"], frontier["accuracy"], frontier["gflops"],
                                                           frontier["latency_ms"], frontier["audio"]))]
    return out, table, rows


def oracle_cost(sub: OutcomeTable, scale: RewardScale, units: tuple[float, float]) -> np.ndarray:
    """(N, A) cost at weight 1 that the oracle weighs, in the policies' units: alpha_unit * gflops / scale.gflops +
    gamma_unit * latency_ms / scale.latency_ms of the table's own (uncharged) columns."""
    return units[0] * sub.gflops / scale.gflops + units[1] * sub.latency_ms / scale.latency_ms


def oracle_at_grid(sweep: ParetoConfig, table: OutcomeTable, rows: np.ndarray, scale: RewardScale, g_ref: float,
                   full: float) -> dict[str, dict]:
    """Per component, the oracle played only at that component's evaluation weights on `rows` (its cost in the
    policies' units): hypervolume and share of the whole oracle frontier's (`full`), i.e. how much of the frontier
    a staircase over that grid's points keeps for the oracle itself (not a bound on other methods: their points at
    the same weights fall elsewhere on the plane)."""
    sub = table.subset(rows)
    out = {}
    for component in sweep.components:
        weights = sweep.evaluation_weights(component)
        cost = oracle_cost(sub, scale, COMPONENTS[component])
        hv = hypervolume(*oracle_at_weights(sub.score, cost, sub.gflops, weights), g_ref)
        out[component] = {"weights": len(weights), "hypervolume": hv,
                          "ratio_to_oracle": hv / full if full > 0 else None}
    return out


def write_csv(rows: list[dict], path: Path, columns: tuple[str, ...] = COLUMNS) -> Path:
    """pareto.csv (or budget.csv) with exactly `columns`, None written as an empty field, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if row[k] is None else row[k] for k in columns} for row in rows)
    return atomic_write_text(path, buffer.getvalue())


def read_csv(path: Path) -> list[dict]:
    """pareto.csv (or budget.csv) back as row dicts: numbers as float (seed as int), empty fields as None."""
    def parse(key: str, value: str) -> str | float | int | None:
        if key == "method" or value == "":
            return value if key == "method" else None
        return int(value) if key == "seed" else float(value)

    with path.open(encoding="utf-8", newline="") as handle:
        return [{k: parse(k, v) for k, v in row.items()} for row in csv.DictReader(handle)]


def run_sweep(sweep: ParetoConfig) -> dict:
    """Train, evaluate, analyse and plot; writes pareto.csv, pareto.json and the plot(s) (with budgets also
    budget.csv and budget.png) and returns the JSON."""
    start = time.perf_counter()
    sweep = sweep.profiled()  # under a cost profile, everything below sees the recounted table
    train_table = OutcomeTable.load(sweep.table)  # a missing table, or a cascade it cannot run, fails before training
    baselines, skipped = select_baselines(sweep.baselines, train_table, sweep.table)
    budgeted = budget_policies(sweep)
    results = run_policies(sweep, sweep.policies() | budgeted, train_table)
    rows, table, eval_rows = evaluate_sweep(sweep, results)
    baseline_rows, baseline_report = sweep_baselines(sweep, train_table, baselines, table, eval_rows)
    rows += baseline_rows
    write_csv(rows, sweep.out / "pareto.csv")
    split, kind = table.provenance.get("split"), "held-out" if sweep.split is None else "all"
    profile = "" if sweep.cost_profile == EMBEDDED else f", cost profile {sweep.cost_profile}"
    where = f"split {split}, {len(eval_rows)} questions ({kind} rows){profile}"
    for axis in dict.fromkeys(("gflops", sweep.axis)):
        plot_pareto(rows, sweep.out / AXES[axis][3], f"Stage B Pareto frontier: {where}", axis)
    budget = {}
    if budgeted:
        budget_rows, budget["budget"] = run_budgets(sweep, budgeted, results, table, eval_rows,
                                                    f"Stage B under a compute budget: {where}")
        write_csv(budget_rows, sweep.out / "budget.csv", BUDGET_COLUMNS)
    seconds = [r["train_seconds"] for r in results.values()]
    summary = summarize_sweep(rows, sweep.components)
    scale = next(iter(sweep.policies().values())).reward_scale(train_table)  # every policy's (see _needs_training)
    report = {
        "out": str(sweep.out), "table": str(sweep.table), "cost_profile": sweep.cost_profile, "split": split,
        "rows": kind, "n": len(eval_rows), "policy": "conditioned" if sweep.conditioned else "per-weight",
        "evaluation_grid": {c: sweep.evaluation_weights(c) for c in sweep.components},
        **summary,
        "oracle_at_grid": oracle_at_grid(sweep, table, eval_rows, scale, summary["reference"]["gflops_per_query"],
                                         summary["hypervolume"]["oracle-frontier"]),
        "baselines": {"run": list(baselines), "skipped": skipped, **baseline_report},
        "train_seconds": {"median": statistics.median(seconds), "sum": round(sum(seconds), 1),
                          "policies": len(seconds), "trained": sum(not r["reused"] for r in results.values()),
                          "per_policy": {name: r["train_seconds"] for name, r in sorted(results.items())}},
        "latency": {"source": latency_source(table), "percentiles": PERCENTILES,
                    "repeats": table.charged_latency_samples().shape[2]},
        "weight_grid": sweep.weight_grids,
        "sweep": {"weights": {c: grid["weights"] for c, grid in sweep.weight_grids.items()},
                  "seeds": sorted(set(sweep.seeds)), "components": list(sweep.components),
                  "budgets": sorted(set(sweep.budgets)), "timesteps": sweep.timesteps, "n_envs": sweep.n_envs,
                  "conditioned": sweep.conditioned, "eval_weights": sweep.eval_weights,
                  "workers": sweep.workers, "wall_seconds": round(time.perf_counter() - start, 1)},
        "machine": machine_info(), "table_provenance": table.provenance, **budget,
    }
    atomic_write_text(sweep.out / "pareto.json", json.dumps(report, indent=1))
    return report


def headline(report: dict) -> dict:
    """The short summary the CLI prints: hypervolumes, ratios, PPO minus baselines, dominance counts, saving, timing."""
    saving = report["matched_accuracy_saving"]["any"]
    budget = {"budget": [{key: p[key] for key in ("budget", "ppo_accuracy", "ppo_accuracy_std", "best_static")}
                         for p in report["budget"]["points"]]} if "budget" in report else {}
    return {"out": report["out"], "cost_profile": report["cost_profile"], "n": report["n"], "policy": report["policy"],
            "hypervolume": report["hypervolume"],
            "hypervolume_ratio_to_oracle": report["hypervolume_ratio_to_oracle"],
            "oracle_at_grid": {c: grid["ratio_to_oracle"] for c, grid in report["oracle_at_grid"].items()},
            "ppo_minus_baseline_hypervolume": {b: {p: {k: d[k] for k in ("mean_diff", "ci95")} for p, d in ppo.items()}
                                               for b, ppo in report["ppo_minus_baseline_hypervolume"].items()},
            "dominated": report["dominated"],
            "matched_accuracy_saving": saving and {k: saving[k] for k in ("saving", "total_saving", "gflops",
                                                                          "accuracy")},
            "train_seconds_median": report["train_seconds"]["median"],
            "wall_seconds": report["sweep"]["wall_seconds"], **budget}


@console("stage_b-pareto")
def main(argv: list[str] | None = None) -> int:
    sweep = parse_sweep(argv, __doc__.splitlines()[0])
    setup_logging()
    report = run_sweep(sweep)
    print(json.dumps(headline(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
