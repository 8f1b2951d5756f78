"""Pareto-frontier arithmetic for Stage B: hypervolume, non-dominated points, dominance, saving, oracle frontier.

Every point is (GFLOPs per query, accuracy): less compute and more accuracy are both better. The
functions take numpy arrays and know nothing of PPO, so they are unit-tested on hand-made points;
`summarize_sweep` applies them to the rows of `pareto.csv` (dicts with the csv's columns, missing
values as None) and builds the analysis that `stage_b-pareto` writes to `pareto.json`.

Learned points are compared as the mean over seeds per reward weight (`seed_means`), the same
points the plot draws; hypervolumes use one reference point for every method: the most
expensive static policy's GFLOPs per query and accuracy 0. The non-RL baselines (stage_b.baselines)
are methods like the PPO components: `supervised-<c>` and `bandit-<c>` by seed means per weight,
`cascade` (deterministic, no seed) by its rows, one per threshold (`method_points`). Per method the
hypervolume of each seed's own points gives a mean, std and Student-t 95% interval over seeds, also
as a share of the oracle frontier's hypervolume (`hypervolume_per_seed`), and the mean of PPO's
per-seed hypervolumes minus a baseline's a Welch interval (`ppo_minus_baseline_hypervolume`; against
the same component, and every component for `cascade`, whose single hypervolume counts as exact).
A hypervolume rewards the span of a method's points as well as their height: the cascade's thresholds
always reach `never` (the cheapest point), a weight grid only if its top weight is high enough (the
grids stage_b.weight_grid derives are, by construction; an `--alphas` grid stopping too low is not), so
compare methods on grids that span both ends.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from shared.stats import mean_std, t_interval, welch_interval
from stage_b.latency import PERCENTILES

STATIC_PREFIXES = ("never", "always-")
BASELINE_PREFIXES = ("supervised-", "bandit-", "cascade")
MATCH_TOLERANCE = 0.01  # "matched accuracy": within one accuracy point of always-k<max>
# Compute within 0.01 % counts as equal: a budget-matched random policy has its PPO policy's action mix,
# but per-question costs vary with prompt length, so its mean compute differs by ~1e-5 relative.
GFLOPS_TIE_RTOL = 1e-4


def hypervolume(gflops: np.ndarray, accuracy: np.ndarray, g_ref: float) -> float:
    """Area of the union of rectangles [g, g_ref] x [0, acc]; points at or beyond g_ref add nothing."""
    g, acc = np.asarray(gflops, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)
    if g.shape != acc.shape or g.ndim != 1:
        raise ValueError(f"gflops {g.shape} and accuracy {acc.shape} must be 1-D arrays of the same length")
    keep = g < g_ref
    if not keep.any():
        return 0.0
    order = np.argsort(g[keep], kind="stable")
    g, acc = g[keep][order], np.maximum.accumulate(np.clip(acc[keep][order], 0.0, None))
    widths = np.diff(np.append(g, g_ref))
    return float(np.sum(widths * acc))


def pareto_mask(gflops: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """True for points no other point dominates (no more compute, no less accuracy, better in one)."""
    g, acc = np.asarray(gflops, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)
    no_worse = (g[None, :] <= g[:, None]) & (acc[None, :] >= acc[:, None])
    better = (g[None, :] < g[:, None]) | (acc[None, :] > acc[:, None])
    return ~(no_worse & better).any(axis=1)


def dominance(g: float, acc: float, learned_g: np.ndarray, learned_acc: np.ndarray) -> dict:
    """Whether some learned point has gflops <= g and accuracy >= acc, with the best margins.

    `dominated`: some learned point is no worse on both axes (an identical point counts);
    `strictly`: one of those is also better on one axis. `accuracy_margin`: the most accuracy a
    learned point at no more compute adds over (g, acc); `gflops_margin`: the most compute a learned
    point at no less accuracy saves. Either is None when no learned point qualifies. Compute within
    a relative GFLOPS_TIE_RTOL counts as equal.
    """
    learned_g, learned_acc = np.asarray(learned_g, dtype=np.float64), np.asarray(learned_acc, dtype=np.float64)
    same_g = np.isclose(learned_g, g, rtol=GFLOPS_TIE_RTOL, atol=0)
    same_acc = np.isclose(learned_acc, acc, rtol=1e-12, atol=0)
    cheaper, better = (learned_g <= g) | same_g, (learned_acc >= acc) | same_acc
    accuracy_margin = float(learned_acc[cheaper].max() - acc) if cheaper.any() else None
    gflops_margin = float(g - learned_g[better].min()) if better.any() else None
    strictly = cheaper & better & ~(same_g & same_acc)
    return {"dominated": bool((cheaper & better).any()), "strictly": bool(strictly.any()),
            "accuracy_margin": accuracy_margin, "gflops_margin": gflops_margin}


def matched_accuracy_saving(learned_g: np.ndarray, learned_acc: np.ndarray, target_acc: float, g_full: float,
                            g_never: float, tolerance: float = MATCH_TOLERANCE) -> dict | None:
    """The cheapest learned point with accuracy >= target - tolerance, and its audio and total compute savings.

    saving = 1 - (g - g_never) / (g_full - g_never): the share of the audio compute of the full
    policy (always the most tokens) that the learned point does without; total_saving = 1 - g / g_full:
    the share of all its compute (base model included). None if no point qualifies.
    """
    learned_g, learned_acc = np.asarray(learned_g, dtype=np.float64), np.asarray(learned_acc, dtype=np.float64)
    ok = np.flatnonzero(learned_acc >= target_acc - tolerance)
    if ok.size == 0:
        return None
    best = ok[np.argmin(learned_g[ok])]
    return {"gflops": float(learned_g[best]), "accuracy": float(learned_acc[best]),
            "target_accuracy": float(target_acc), "tolerance": tolerance,
            "saving": float(1.0 - (learned_g[best] - g_never) / (g_full - g_never)) if g_full > g_never else None,
            "total_saving": float(1.0 - learned_g[best] / g_full)}


def oracle_choice(score: np.ndarray, cost: np.ndarray, weight: float) -> np.ndarray:
    """Per question, the action maximising score - weight * cost, ties to the cheapest action."""
    value = score - weight * cost
    candidates = value == value.max(axis=1, keepdims=True)
    return np.argmin(np.where(candidates, cost, np.inf), axis=1)


def oracle_at_weights(score: np.ndarray, cost: np.ndarray, gflops: np.ndarray,
                      weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(GFLOPs per query, accuracy) of the oracle played only at `weights` (`oracle_choice` at each): what a method
    evaluated at those weights would reach if it knew every outcome."""
    rows = np.arange(score.shape[0])
    choices = [oracle_choice(score, cost, w) for w in weights]
    return (np.array([gflops[rows, c].mean(dtype=np.float64) for c in choices]),
            np.array([score[rows, c].mean(dtype=np.float64) for c in choices]))


def oracle_frontier(score: np.ndarray, cost: np.ndarray, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outcome-knowing oracle at every weight where its choice changes: {"weight", "accuracy", <column> means}.

    The oracle answers each question with `oracle_choice(score, cost, w)`. As w grows from 0, each
    question steps down its own sequence of cheaper actions, switching at weights (score drop) /
    (cost drop); sorting all switches of all questions traces the whole frontier exactly, one vertex
    per switch (vertex 0 is w = 0: the best score on every question). `columns` are further (N, A)
    arrays (e.g. GFLOPs, latency, audio use) whose per-question mean is tracked along the way.
    `switch_row` and `switch_action` name the question each vertex moves and its new action (-1 at vertex 0),
    so a statistic that is not a mean (stage_b.latency.frontier_percentiles) can replay the frontier.
    """
    n, a = score.shape
    rows = np.arange(n)
    tracked = {"accuracy": np.asarray(score, dtype=np.float64),
               **{name: np.asarray(col, dtype=np.float64) for name, col in columns.items()}}
    current = oracle_choice(score, cost, 0.0)
    start = {name: col[rows, current].sum() for name, col in tracked.items()}
    weights = [np.zeros(0)]
    steps = {name: [np.zeros(0)] for name in tracked}
    switches: dict[str, list[np.ndarray]] = {name: [np.zeros(0, np.int64)] for name in ("switch_row", "switch_action")}
    for _ in range(a - 1):
        drop_score = score[rows, current][:, None] - score
        drop_cost = cost[rows, current][:, None] - cost
        with np.errstate(divide="ignore", invalid="ignore"):
            switch = np.where(drop_cost > 0, drop_score / drop_cost, np.inf)
        first = switch.min(axis=1)
        moving = np.flatnonzero(np.isfinite(first))
        nxt = np.argmin(np.where(switch == first[:, None], cost, np.inf), axis=1)
        weights.append(first[moving])
        for name, col in tracked.items():
            steps[name].append(col[moving, nxt[moving]] - col[moving, current[moving]])
        switches["switch_row"].append(moving)
        switches["switch_action"].append(nxt[moving])
        current[moving] = nxt[moving]
    order = np.argsort(np.concatenate(weights), kind="stable")
    out = {"weight": np.concatenate([[0.0], np.concatenate(weights)[order]])}
    for name in tracked:
        deltas = np.concatenate(steps[name])[order]
        out[name] = np.concatenate([[start[name]], start[name] + np.cumsum(deltas)]) / n
    for name, parts in switches.items():
        out[name] = np.concatenate([[-1], np.concatenate(parts)[order]])
    return out


def is_static(method: str) -> bool:
    return method.startswith(STATIC_PREFIXES)


def static_methods(labels: Sequence[str]) -> list[str]:
    """The static policy of each action (`OutcomeTable.action_labels`): `never` for action 0 (no audio), then
    `always-<label>`, e.g. always-k16, or always-whisper-k16 in a table joining two bridges."""
    return ["never", *(f"{STATIC_PREFIXES[1]}{label}" for label in labels[1:])]


def seed_means(rows: Sequence[dict], method: str) -> list[dict]:
    """Rows of one method grouped by (alpha, gamma): mean and std over seeds of accuracy and GFLOPs, and of the
    latency percentiles when the rows have them (`<column>` and `<column>_std`), by GFLOPs."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row["method"] == method:
            groups[(row["alpha"], row["gamma"])].append(row)
    points = []
    for (alpha, gamma), group in groups.items():
        acc = mean_std([r["accuracy"] for r in group])
        g = mean_std([r["gflops_per_query"] for r in group])
        point = {"alpha": alpha, "gamma": gamma, "n_seeds": acc["n"], "accuracy": acc["mean"],
                 "accuracy_std": acc["std"], "gflops_per_query": g["mean"], "gflops_std": g["std"]}
        for column in PERCENTILES:
            if all(r.get(column) is not None for r in group):
                spread = mean_std([r[column] for r in group])
                point |= {column: spread["mean"], f"{column}_std": spread["std"]}
        points.append(point)
    return sorted(points, key=lambda p: p["gflops_per_query"])


def method_points(rows: Sequence[dict], method: str) -> list[dict]:
    """A method's points by GFLOPs: `seed_means` per (alpha, gamma), or the rows themselves for a deterministic
    method (rows without a seed, e.g. the cascade's thresholds)."""
    own = [r for r in rows if r["method"] == method]
    if own and all(r["seed"] is None for r in own):
        return sorted(own, key=lambda r: r["gflops_per_query"])
    return seed_means(rows, method)


def xy(points: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(GFLOPs per query, accuracy) arrays of `points` (pareto.csv rows or `seed_means` points)."""
    return (np.array([p["gflops_per_query"] for p in points], dtype=np.float64),
            np.array([p["accuracy"] for p in points], dtype=np.float64))


def seed_hypervolumes(rows: Sequence[dict], method: str, g_ref: float) -> list[float]:
    """The hypervolume of each seed's own points (one value for a deterministic method, whose rows have no seed)."""
    seeds = sorted({r["seed"] for r in rows if r["method"] == method}, key=lambda s: -1 if s is None else s)
    return [hypervolume(*xy([r for r in rows if r["method"] == method and r["seed"] == s]), g_ref) for s in seeds]


def _per_seed_summary(values: list[float], deterministic: bool, oracle: float) -> dict:
    """Mean, std and 95% t interval over seeds (a deterministic method's one value is exact), and mean and
    interval as a share of the oracle frontier's hypervolume `oracle`."""
    summary = (mean_std(values) | {"ci95": [values[0], values[0]], "deterministic": True} if deterministic
               else t_interval(values))
    ci = summary["ci95"]
    share = {"mean": summary["mean"] / oracle, "ci95": ci and [bound / oracle for bound in ci]} if oracle > 0 else None
    return summary | {"ratio_to_oracle": share}


def _baseline_comparisons(rows: Sequence[dict], baselines: Sequence[str], components: Sequence[str],
                          g_ref: float, oracle: float) -> tuple[dict, dict]:
    """(per-seed hypervolume summary of every PPO component and baseline, PPO minus baseline with a Welch interval)."""
    methods = [f"ppo-{c}" for c in components] + list(baselines)
    deterministic = {m: all(r["seed"] is None for r in rows if r["method"] == m) for m in methods}
    values = {m: seed_hypervolumes(rows, m, g_ref) for m in methods}
    per_seed = {m: _per_seed_summary(values[m], deterministic[m], oracle) for m in methods}
    differences = {}
    for baseline in baselines:
        versus = components if deterministic[baseline] else [baseline.split("-", 1)[1]]
        differences[baseline] = {f"ppo-{c}": welch_interval(values[f"ppo-{c}"], values[baseline],
                                                            b_exact=deterministic[baseline])
                                 for c in versus if c in components}
    return per_seed, differences


def summarize_sweep(rows: Sequence[dict], components: Sequence[str]) -> dict:
    """Hypervolumes (and their ratio to the oracle frontier's) of PPO and the baselines, per-seed hypervolumes with
    intervals, PPO minus each baseline, dominance of static and random points, matched-accuracy saving."""
    static = {r["method"]: r for r in rows if is_static(r["method"])}
    full = max(static.values(), key=lambda r: r["gflops_per_query"])
    g_ref, g_never = full["gflops_per_query"], static["never"]["gflops_per_query"]
    learned = {c: seed_means(rows, f"ppo-{c}") for c in components}
    random = [p | {"method": f"random-{c}"} for c in components for p in seed_means(rows, f"random-{c}")]
    oracle = [r for r in rows if r["method"] == "oracle-frontier"]
    hv = {f"ppo-{c}": hypervolume(*xy(points), g_ref) for c, points in learned.items()}
    hv |= {"static": hypervolume(*xy(list(static.values())), g_ref), "random": hypervolume(*xy(random), g_ref),
           "oracle": hypervolume(*xy([r for r in rows if r["method"] == "oracle"]), g_ref),
           "oracle-frontier": hypervolume(*xy(oracle), g_ref)}
    baselines = sorted({r["method"] for r in rows if r["method"].startswith(BASELINE_PREFIXES)})
    baseline_points = {m: method_points(rows, m) for m in baselines}
    hv |= {m: hypervolume(*xy(points), g_ref) for m, points in baseline_points.items()}
    per_seed, differences = _baseline_comparisons(rows, baselines, components, g_ref, hv["oracle-frontier"])
    all_learned = [p for points in learned.values() for p in points]
    learned_g, learned_acc = xy(all_learned)
    checks = [{"method": p["method"], "alpha": p.get("alpha"), "gamma": p.get("gamma"),
               "gflops_per_query": p["gflops_per_query"], "accuracy": p["accuracy"],
               **{column: p.get(column) for column in PERCENTILES},
               **dominance(p["gflops_per_query"], p["accuracy"], learned_g, learned_acc)}
              for p in [*static.values(), *random]]
    saving_args = (full["accuracy"], g_ref, g_never)
    savings = {f"ppo-{c}": matched_accuracy_saving(*xy(points), *saving_args) for c, points in learned.items()}
    savings["any"] = matched_accuracy_saving(learned_g, learned_acc, *saving_args)
    return {
        "reference": {"gflops_per_query": g_ref, "accuracy": 0.0, "method": full["method"]},
        "hypervolume": hv,
        "hypervolume_per_seed": per_seed,
        "hypervolume_ratio_to_oracle": {m: hv[m] / hv["oracle-frontier"] if hv["oracle-frontier"] > 0 else None
                                        for m in [*(f"ppo-{c}" for c in components), *baselines]},
        "ppo_minus_baseline_hypervolume": differences,
        "dominance": checks,
        "dominated": {kind: {how: f"{sum(c[how] for c in checks if c['method'].startswith(prefix))}/"
                                  f"{sum(c['method'].startswith(prefix) for c in checks)}"
                             for how in ("dominated", "strictly")}
                      for kind, prefix in (("static", STATIC_PREFIXES), ("random", "random-"))},
        "matched_accuracy_saving": savings,
        "learned_points": {f"ppo-{c}": points for c, points in learned.items()},
        "baseline_points": baseline_points,
    }
