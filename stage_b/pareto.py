"""`stage_b-pareto --table T`: sweep the reward's cost weights, and place PPO policies against baselines and the oracle.

For each reward component (`alpha`: compute, alpha = w, gamma = 0; `gamma`: latency, alpha = 0,
gamma = w; `both`: alpha = gamma = w), weight w and seed, one policy trains with `train_policy` in
a pool of spawned processes, in OUT/policies/<component>-w<w>-seed<s>/. A folder whose policy.json
exists is reused (its config must match) when the SHA-256 of the table it trained on (`table_sha256`
in policy.json) is that of the table now at `--table`, so an interrupted sweep resumes where it
stopped; a policy of a table since replaced (or of one not recorded) is retrained, and the log says why.

Every policy acts on the same questions (`SavedPolicy.evaluation_rows`: the training table's
held-out rows, or all of `outcomes_<split>.npz`), and so do the baselines: `never` (no audio),
`always-k<k>`, `random-<component>` (each policy's own actions permuted across the questions,
seeded by the policy's seed: the same action mix and expected compute, blind to the question;
with `--confidence` both pay for the no-audio run the policies observe),
`oracle` (the cheapest correct action per question) and `oracle-frontier` (per question the action
maximising score - w * gflops / max_gflops, at every weight w where that choice changes).

With `--cost-profile NAME` (stage_b.cost_profiles) the table's compute is recounted for real models first: the
profiled copy (OUT/tables/<table file>, and the `--split` table beside it) is what every policy trains and is
evaluated on, so `gflops_per_query` are the profile's. Its latency stays the embedded machine's measurement, so a
non-embedded profile takes only the alpha component (the default there; gamma and both are refused).

OUT/pareto.csv has the columns in `COLUMNS`. `alpha`, `gamma`, `seed` are the policy's reward
weights and seed for `ppo-*` and `random-*` rows, and the weight (alpha = w, gamma = 0) for
`oracle-frontier` rows; a field that does not apply (static and oracle rows) is left empty.
OUT/pareto.json holds the frontier analysis (`stage_b.frontier.summarize_sweep`) and OUT/pareto.png
the plot.
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from envs.outcome_table import DEFAULT_TABLE, OutcomeTable
from shared.benchmark import machine_info
from shared.checkpoint import atomic_write_text
from shared.cli import ArgumentParser, check_number, console, number_list
from shared.loading import file_sha256, load_json
from shared.logs import setup_logging
from stage_b.cost_profiles import EMBEDDED, apply_cost_profile, check_profile_name
from stage_b.evaluate import SavedPolicy, summarize
from stage_b.frontier import oracle_frontier, summarize_sweep
from stage_b.plot import plot_pareto
from stage_b.train import PolicyConfig, train_policy

log = logging.getLogger(__name__)

COMPONENTS = {"alpha": (1.0, 0.0), "gamma": (0.0, 1.0), "both": (1.0, 1.0)}  # (alpha, gamma) per unit weight
COLUMNS = ("method", "alpha", "gamma", "seed", "accuracy", "gflops_per_query", "latency_ms", "audio_rate")
DEFAULT_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9, 1.2)


@dataclass
class ParetoConfig:
    """One `stage_b-pareto` sweep: table, output folder, weight grid, seeds, components and PPO budget."""

    table: Path
    out: Path
    weights: tuple[float, ...] = DEFAULT_WEIGHTS
    seeds: tuple[int, ...] = (0, 1, 2)
    components: tuple[str, ...] = tuple(COMPONENTS)
    timesteps: int = 100_000
    n_envs: int = 8
    workers: int = 2
    split: str | None = None
    confidence: bool = False
    cost_profile: str = EMBEDDED

    def __post_init__(self) -> None:
        if not self.weights or not self.seeds:
            raise ValueError(f"--alphas is {list(self.weights)} and --seeds {list(self.seeds)}; expected values in both")
        for weight in self.weights:
            check_number("--alphas item", weight, ge=0)
        for seed in self.seeds:
            check_number("--seeds item", seed, ge=0, integer=True)
        unknown = [c for c in self.components if c not in COMPONENTS]
        if not self.components or unknown:
            raise ValueError(f"--components has {unknown or 'no values'}; expected a subset of {list(COMPONENTS)}")
        for flag, value in (("--timesteps", self.timesteps), ("--n-envs", self.n_envs), ("--workers", self.workers)):
            check_number(flag, value, ge=1, integer=True)
        check_profile_name(self.cost_profile)
        latency = [c for c in self.components if COMPONENTS[c][1] > 0]
        if self.cost_profile != EMBEDDED and latency:
            raise ValueError(f"--components has {latency} with --cost-profile {self.cost_profile}: the profile "
                             "recounts compute only, latency_ms stays the embedded machine's measurement; "
                             "expected alpha")
        self.table = self.table.resolve()

    def policies(self) -> dict[str, PolicyConfig]:
        """Folder name (<component>-w<weight>-seed<seed>) -> training config, for every policy of the sweep."""
        return {f"{c}-w{w:g}-seed{s}": PolicyConfig(str(self.table), alpha=COMPONENTS[c][0] * w,
                                                    gamma=COMPONENTS[c][1] * w, confidence=self.confidence, seed=s,
                                                    timesteps=self.timesteps, n_envs=self.n_envs)
                for c in self.components for w in sorted(set(self.weights)) for s in sorted(set(self.seeds))}


def _init_worker() -> None:
    """One torch thread per worker process: the pool, not torch, uses the cores."""
    import torch

    torch.set_num_threads(1)


def _train_and_play(config: PolicyConfig, folder: Path, train: bool, split: str | None) -> dict:
    """In a worker: train the policy unless reused, then its actions on the evaluation rows."""
    if train:
        train_policy(config, folder, tensorboard=False)
    policy = SavedPolicy.load(folder)
    table, rows = policy.evaluation_rows(split)
    steps = policy.play(table, rows)
    return {"rows": steps["row"], "actions": steps["action"], "train_seconds": policy.record["train_seconds"]}


def _needs_training(folder: Path, config: PolicyConfig, table_sha256: str) -> bool:
    """False when `folder` holds a finished policy with this config, trained on the table whose file has
    `table_sha256`; a different config is an error."""
    record_path = folder / "policy.json"
    if not record_path.is_file():
        return True
    record = load_json(record_path, "a policy record written by stage_b-train", keys=("config",))
    saved = record["config"]
    if saved != asdict(config):
        raise ValueError(f"{folder} holds a policy trained with {saved}, not {asdict(config)}; "
                         "delete it or choose another --out")
    trained_on = record.get("table_sha256")
    if trained_on != table_sha256:
        log.info("retraining %s: it was trained on a table with sha256 %s, %s now has %s", folder,
                 trained_on[:12] if trained_on else "(not recorded)", config.table, table_sha256[:12])
        return True
    log.info("reusing %s (policy.json exists, same table)", folder)
    return False


def run_policies(sweep: ParetoConfig) -> dict[str, dict]:
    """Train (or reuse) every policy of the sweep in a process pool; name -> {rows, actions, train_seconds, reused}."""
    configs = sweep.policies()
    folders = {name: sweep.out / "policies" / name for name in configs}
    table_sha256 = file_sha256(sweep.table)
    train = {name: _needs_training(folders[name], config, table_sha256) for name, config in configs.items()}
    log.info("%d policies: %d to train, %d reused; %d workers", len(train), sum(train.values()),
             len(train) - sum(train.values()), sweep.workers)
    results = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(sweep.workers, mp_context=context, initializer=_init_worker) as pool:
        futures = {pool.submit(_train_and_play, config, folders[name], train[name], sweep.split): name
                   for name, config in configs.items()}
        for future in tqdm(as_completed(futures), total=len(futures), desc="policies"):
            name = futures[future]
            try:
                results[name] = future.result() | {"reused": not train[name]}
            except Exception as err:
                for pending in futures:
                    pending.cancel()
                raise RuntimeError(f"policy {folders[name]} failed: {err!r}") from err
    return results


def _row(method: str, summary: dict, alpha: float | None = None, gamma: float | None = None,
         seed: int | None = None) -> dict:
    """One pareto.csv row from a `summarize` result."""
    return {"method": method, "alpha": alpha, "gamma": gamma, "seed": seed, "accuracy": summary["accuracy"]["mean"],
            "gflops_per_query": summary["gflops_per_query"], "latency_ms": summary["latency_ms"],
            "audio_rate": summary["audio_rate"]}


def evaluate_sweep(sweep: ParetoConfig, results: dict[str, dict]) -> tuple[list[dict], OutcomeTable, np.ndarray]:
    """pareto.csv rows for every policy and baseline, all on the same questions; also returns (table, rows)."""
    configs = sweep.policies()
    first = next(iter(configs))
    table, rows = SavedPolicy.load(sweep.out / "policies" / first).evaluation_rows(sweep.split)
    out = []
    for name, config in tqdm(configs.items(), desc="evaluate"):
        result = results[name]
        if not np.array_equal(result["rows"], rows):
            raise ValueError(f"policy {name} was evaluated on other rows than {first}; the sweep's policies must "
                             "share the table and split_seed")
        component = name.split("-w")[0]
        weights = {"alpha": config.alpha, "gamma": config.gamma, "seed": config.seed}
        shuffled = np.random.default_rng(config.seed).permutation(result["actions"])
        out.append(_row(f"ppo-{component}", summarize(table, rows, result["actions"], sweep.confidence), **weights))
        out.append(_row(f"random-{component}", summarize(table, rows, shuffled, sweep.confidence), **weights))
    for index, k in enumerate(table.actions):
        method = "never" if k == 0 else f"always-k{k}"
        out.append(_row(method, summarize(table, rows, np.full(len(rows), index, dtype=np.int64))))
    out.append(_row("oracle", summarize(table, rows, table.oracle_actions()[rows])))
    sub = table.subset(rows)
    audio = np.broadcast_to((table.actions > 0).astype(np.float64), sub.score.shape)
    frontier = oracle_frontier(sub.score, sub.gflops / table.gflops.max(),
                               {"gflops": sub.gflops, "latency_ms": sub.latency_ms, "audio": audio})
    out += [{"method": "oracle-frontier", "alpha": float(w), "gamma": 0.0, "seed": None, "accuracy": float(acc),
             "gflops_per_query": float(g), "latency_ms": float(lat), "audio_rate": float(rate)}
            for w, acc, g, lat, rate in zip(frontier["weight"], frontier["accuracy"], frontier["gflops"],
                                            frontier["latency_ms"], frontier["audio"])]
    return out, table, rows


def write_csv(rows: list[dict], path: Path) -> Path:
    """pareto.csv with exactly `COLUMNS`, None written as an empty field, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if row[k] is None else row[k] for k in COLUMNS} for row in rows)
    return atomic_write_text(path, buffer.getvalue())


def read_csv(path: Path) -> list[dict]:
    """pareto.csv back as row dicts: numbers as float (seed as int), empty fields as None."""
    def parse(key: str, value: str) -> str | float | int | None:
        if key == "method" or value == "":
            return value if key == "method" else None
        return int(value) if key == "seed" else float(value)

    with path.open(encoding="utf-8", newline="") as handle:
        return [{k: parse(k, v) for k, v in row.items()} for row in csv.DictReader(handle)]


def profiled_tables(sweep: ParetoConfig) -> ParetoConfig:
    """The sweep on its table recounted under `sweep.cost_profile` (OUT/tables/, with the --split table if any)."""
    if sweep.cost_profile == EMBEDDED:
        return sweep
    names = [sweep.table.name] + ([f"outcomes_{sweep.split}.npz"] if sweep.split else [])
    for name in dict.fromkeys(names):
        source = sweep.table.parent / name
        if not source.is_file():
            raise ValueError(f"no outcome table {source} to recount under --cost-profile {sweep.cost_profile}; "
                             f"build it with `stage_b-outcomes --split {sweep.split}`")
        apply_cost_profile(OutcomeTable.load(source), sweep.cost_profile).save(sweep.out / "tables" / name)
    return replace(sweep, table=sweep.out / "tables" / sweep.table.name)


def run_sweep(sweep: ParetoConfig) -> dict:
    """Train, evaluate, analyse and plot; writes pareto.csv, pareto.json and pareto.png and returns the JSON."""
    start = time.perf_counter()
    sweep = profiled_tables(sweep)
    results = run_policies(sweep)
    rows, table, eval_rows = evaluate_sweep(sweep, results)
    write_csv(rows, sweep.out / "pareto.csv")
    split, kind = table.provenance.get("split"), "held-out" if sweep.split is None else "all"
    profile = "" if sweep.cost_profile == EMBEDDED else f", cost profile {sweep.cost_profile}"
    plot_pareto(rows, sweep.out / "pareto.png",
                f"Stage B Pareto frontier: split {split}, {len(eval_rows)} questions ({kind} rows){profile}")
    seconds = [r["train_seconds"] for r in results.values()]
    report = {
        "out": str(sweep.out), "table": str(sweep.table), "cost_profile": sweep.cost_profile, "split": split,
        "rows": kind, "n": int(len(eval_rows)),
        **summarize_sweep(rows, sweep.components),
        "train_seconds": {"median": statistics.median(seconds), "sum": round(sum(seconds), 1),
                          "policies": len(seconds), "trained": sum(not r["reused"] for r in results.values())},
        "sweep": {"weights": sorted(set(sweep.weights)), "seeds": sorted(set(sweep.seeds)),
                  "components": list(sweep.components), "timesteps": sweep.timesteps, "n_envs": sweep.n_envs,
                  "workers": sweep.workers, "wall_seconds": round(time.perf_counter() - start, 1)},
        "machine": machine_info(), "table_provenance": table.provenance,
    }
    atomic_write_text(sweep.out / "pareto.json", json.dumps(report, indent=1))
    return report


def headline(report: dict) -> dict:
    """The short summary the CLI prints: hypervolumes, ratios, dominance counts, saving, timing."""
    saving = report["matched_accuracy_saving"]["any"]
    return {"out": report["out"], "cost_profile": report["cost_profile"], "n": report["n"],
            "hypervolume": report["hypervolume"],
            "hypervolume_ratio_to_oracle": report["hypervolume_ratio_to_oracle"], "dominated": report["dominated"],
            "matched_accuracy_saving": saving and {k: saving[k] for k in ("saving", "gflops", "accuracy")},
            "train_seconds_median": report["train_seconds"]["median"],
            "wall_seconds": report["sweep"]["wall_seconds"]}


@console("stage_b-pareto")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="stage_b-pareto", description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=Path(DEFAULT_TABLE),
                        help=f"outcome table (.npz) from stage_b-outcomes (default: {DEFAULT_TABLE})")
    parser.add_argument("--out", type=Path, default=Path("runs") / "stage_b" / "pareto")
    parser.add_argument("--alphas", default=",".join(f"{w:g}" for w in DEFAULT_WEIGHTS),
                        help="comma-separated reward weights w, used by every component")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--components", default=None,
                        help="alpha (compute), gamma (latency), both (alpha = gamma = w); default: all three, "
                             "or alpha alone under a non-embedded --cost-profile")
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="training processes")
    parser.add_argument("--confidence", action="store_true",
                        help="policies observe the no-audio confidence and pay for it (so do their random twins)")
    parser.add_argument("--split", default=None,
                        help="evaluate on all of outcomes_<split>.npz beside the table (default: held-out rows)")
    parser.add_argument("--cost-profile", default=EMBEDDED,
                        help="recount the table's GFLOPs for real models (configs/cost_profiles; default: embedded, "
                             "the table's own)")
    args = parser.parse_args(argv)
    setup_logging()
    components = args.components or (",".join(COMPONENTS) if args.cost_profile == EMBEDDED else "alpha")
    sweep = ParetoConfig(args.table, args.out, number_list("--alphas", args.alphas, float),
                        number_list("--seeds", args.seeds, int),
                        tuple(c.strip() for c in components.split(",") if c.strip()), args.timesteps,
                        args.n_envs, args.workers, args.split, args.confidence, args.cost_profile)
    OutcomeTable.load(sweep.table)
    report = run_sweep(sweep)
    print(json.dumps(headline(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
