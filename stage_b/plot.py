"""The Pareto plot of a `stage_b-pareto` sweep: accuracy against GFLOPs (or p95 latency) per query for every method.

The x axis is one of `AXES`: `gflops` (GFLOPs per query, pareto.png) or `latency_p95` (the p95 latency
of the policy's answers, stage_b.latency; pareto_latency_p95.png). Points are the rows of pareto.csv.

Learned policies are drawn per reward component as a line through the per-weight means over seeds
with error bars (std over seeds on both axes); static policies as labelled squares; the
budget-matched random policies as faint crosses (one per PPO policy); the oracle frontier (its
vertices that no other vertex beats on both axes) as a line and the cheapest-correct oracle as a
star. The non-RL baselines are thin lines through their points (`method_points`: per-weight means
over seeds, or the cascade's thresholds), one color and marker per baseline and one line style per
reward component. Rendering uses matplotlib's Agg canvas, no display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from stage_b.frontier import (
    BASELINE_PREFIXES,
    is_static,
    method_points,
    pareto_mask,
    seed_means,
)

COLORS = {"alpha": "tab:blue", "gamma": "tab:orange", "both": "tab:green"}
LABELS = {"alpha": "PPO, compute cost (alpha)", "gamma": "PPO, latency cost (gamma)",
          "both": "PPO, both costs (alpha = gamma)"}
BASELINE_STYLES = {"supervised": ("tab:purple", "^", "supervised (ridge)"), "bandit": ("tab:brown", "v", "LinUCB bandit"),
                   "cascade": ("tab:olive", "D", "cascade (confidence < tau)")}  # color, marker, label
LINE_STYLES = {"alpha": "--", "gamma": ":", "both": "-."}
# axis -> (pareto.csv column, its std over seeds in seed_means, axis label, file name)
AXES = {"gflops": ("gflops_per_query", "gflops_std", "GFLOPs per query", "pareto.png"),
        "latency_p95": ("latency_p95_ms", "latency_p95_ms_std", "p95 latency per question (ms)",
                        "pareto_latency_p95.png")}


def plot_pareto(rows: Sequence[dict], path: Path, title: str, axis: str = "gflops") -> Path:
    """Draw every method of `rows` (pareto.csv rows) against the `axis` column; save the figure as a PNG at `path`."""
    x, x_std, x_label, _ = AXES[axis]

    def xy(points: Sequence[dict]) -> tuple[list[float], list[float]]:
        return [r[x] for r in points], [r["accuracy"] for r in points]

    fig = Figure(figsize=(9, 6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    frontier = [r for r in rows if r["method"] == "oracle-frontier"]
    if frontier:  # its vertices not dominated on this axis: all of them against GFLOPs, a staircase against p95 latency
        keep = pareto_mask(*(np.array(v) for v in xy(frontier)))
        frontier = sorted((r for r, k in zip(frontier, keep) if k), key=lambda r: r[x])
    static = sorted((r for r in rows if is_static(r["method"])), key=lambda r: r[x])
    if frontier:
        ax.plot(*xy(frontier), color="tab:red", lw=1.5, alpha=0.8, label="oracle frontier (knows every outcome)")
        top = min(frontier, key=lambda r: r["alpha"])  # weight 0: the best score on every question
        ax.hlines(top["accuracy"], top[x], static[-1][x], color="tab:red", lw=1, ls=":",
                  alpha=0.8)  # more cost buys the oracle nothing
    for row in rows:
        if row["method"] == "oracle":
            ax.plot(row[x], row["accuracy"], "*", color="tab:red", ms=15, mec="black",
                    label="oracle: cheapest correct action", zorder=5)
    random = [r for r in rows if r["method"].startswith("random-")]
    if random:
        ax.plot(*xy(random), "x", color="gray", alpha=0.6, label="random, budget-matched (per PPO policy)")
    for component, color in COLORS.items():
        points = sorted(seed_means(rows, f"ppo-{component}"), key=lambda p: p[x])
        if points:
            ax.errorbar(*xy(points), xerr=[p[x_std] for p in points],
                        yerr=[p["accuracy_std"] for p in points], fmt="o-", color=color, capsize=3, ms=5,
                        label=f"{LABELS[component]}, mean ± std over seeds", zorder=4)
    for method in sorted({r["method"] for r in rows if r["method"].startswith(BASELINE_PREFIXES)}):
        kind, _, component = method.partition("-")
        color, marker, label = BASELINE_STYLES[kind]
        points = sorted(method_points(rows, method), key=lambda p: p[x])
        ax.plot(*xy(points), marker=marker, ls=LINE_STYLES.get(component, "-"), color=color,
                lw=1, ms=4, alpha=0.85, label=f"{label}, {component}" if component else label, zorder=3)
    for i, row in enumerate(static):  # labels of the cheapest to its right, the rest stacked down-left
        ax.plot(row[x], row["accuracy"], "s", color="black", ms=7, zorder=6,
                label="static policies" if i == 0 else None)
        ax.annotate(row["method"], (row[x], row["accuracy"]), textcoords="offset points",
                    xytext=(8, -3) if i == 0 else (-8, -14 - 11 * i), ha="left" if i == 0 else "right", fontsize=8,
                    arrowprops={"arrowstyle": "-", "color": "gray", "lw": 0.5})
    ax.set_xlabel(x_label)
    ax.set_ylabel("accuracy (mean VQA score)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
