"""Reward-weight grids derived from the outcome table, so a sweep reaches the no-audio point on any machine.

A fixed list of weights means different things on different tables: the latency of an audio
answer, relative to the reward's scale, depends on the machine, so a weight that makes every
policy skip audio on one never does on another. `stage_b-pareto` therefore derives each
component's grid (unless `--alphas` is given) from the rows its policies train on:

- the component's cost of answering question i with action a is its reward cost at weight 1,
  `c[i, a] = alpha * gflops[i, a] / scale.gflops + gamma * latency_ms[i, a] / scale.latency_ms`
  with the component's unit (alpha, gamma), the costs charged as the policy pays them and the
  policy's `RewardScale` (envs.reward_scale);
- the oracle that knows every score answers with the action maximising `score - w * c`
  (stage_b.frontier.oracle_choice). Where no audio is strictly the cheapest action, that is no
  audio for every w >= w_i = max(0, max over audio a of (score[i, a] - score[i, 0]) / (c[i, a] - c[i, 0]));
  where some audio action costs no more than no audio (a noisy latency can), no weight makes the
  oracle skip audio, and the question is counted as `unreachable_rows` and left out;
- the grid's top is the smallest two-significant-digit number above max_i w_i, so at the top the
  oracle skips audio on every other training question; the grid below it keeps the spacing of
  the fixed grid used before (`GRID_SHAPE`, denser at small weights), scaled to the top and
  rounded to three significant digits: nine weights from 0 to the top, the top included;
- one weight beyond, BEYOND x the top: at the top the oracle is indifferent on its last question, and
  a policy that only estimates the outcomes still uses audio where it is nearly so; beyond it no audio
  is better by a margin on every training question, so the learned frontier reaches the no-audio
  point as well as the oracle's does.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from envs.outcome_table import OutcomeTable
from stage_b.train import PolicyConfig

log = logging.getLogger(__name__)

GRID_SHAPE = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9, 1.2)  # the fixed grid used before; its spacing is kept
BEYOND = 1.5  # the grid's last weight, as a multiple of its top


def component_cost(table: OutcomeTable, rows: np.ndarray, config: PolicyConfig,
                   units: tuple[float, float]) -> np.ndarray:
    """(len(rows), A) reward cost at weight 1 of a component of unit weights (alpha, gamma), as `config` charges."""
    gflops, latency = table.charged_costs(config.confidence)
    scale = config.reward_scale(table)
    alpha, gamma = units
    return (alpha * gflops[rows].astype(np.float64) / scale.gflops
            + gamma * latency[rows].astype(np.float64) / scale.latency_ms)


def no_audio_weights(score: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Per question, the smallest weight from which the oracle answers without audio; inf where none does."""
    score, cost = np.asarray(score, dtype=np.float64), np.asarray(cost, dtype=np.float64)
    gain, extra = score[:, 1:] - score[:, :1], cost[:, 1:] - cost[:, :1]
    reachable = (extra > 0).all(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(extra > 0, gain / extra, np.inf)
    return np.where(reachable, np.maximum(ratio.max(axis=1), 0.0), np.inf)


def round_up(value: float, digits: int = 2) -> float:
    """The smallest number with `digits` significant digits strictly above `value` (> 0)."""
    step = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    candidate = float(f"{math.floor(value / step) * step:.{digits}g}")
    while candidate <= value:  # value / step may round either way
        candidate = float(f"{candidate + step:.{digits}g}")
    return candidate


def derive_grid(score: np.ndarray, cost: np.ndarray, shape: tuple[float, ...] = GRID_SHAPE) -> dict:
    """The weight grid of one component from (N, A) scores and costs of its training questions (module docstring)."""
    weights = no_audio_weights(score, cost)
    reachable = np.isfinite(weights)
    if not reachable.any():
        raise ValueError(f"on all {len(weights)} training questions an audio action costs no more than no audio, so "
                         "no weight makes the oracle skip audio; pass --alphas to choose the weights")
    largest = float(weights[reachable].max())
    top = round_up(largest) if largest > 0 else 0.0
    grid = sorted({float(f"{top * s / shape[-1]:.3g}") for s in (*shape, BEYOND * shape[-1])})
    return {"source": "derived", "weights": grid, "top": top, "largest_no_audio_weight": largest,
            "rows": len(weights), "unreachable_rows": int((~reachable).sum())}


def derive_grids(table: OutcomeTable, config: PolicyConfig,
                 components: dict[str, tuple[float, float]]) -> dict[str, dict]:
    """`derive_grid` per component (name -> unit (alpha, gamma)) on `config`'s training rows (`rows(...).train`),
    with the scale used."""
    rows = config.rows(table).train
    scale = config.reward_scale(table).to_json()
    grids = {}
    for name, units in components.items():
        grid = derive_grid(table.score[rows], component_cost(table, rows, config, units)) | {"scale": scale}
        if grid["unreachable_rows"]:
            log.warning("component %s: on %d of %d training questions an audio action costs no more than no audio; "
                        "no weight makes the oracle skip audio there, so the grid ignores them", name,
                        grid["unreachable_rows"], grid["rows"])
        log.info("component %s: weights %s (no audio is the oracle's choice from %.4g on)", name, grid["weights"],
                 grid["largest_no_audio_weight"])
        grids[name] = grid
    return grids
