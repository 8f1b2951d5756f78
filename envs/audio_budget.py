"""`SAFE/AudioBudget-v0`: choose, question by question, how many audio tokens to spend.

By default (*table mode*) it replays an `OutcomeTable` (measured once by `stage_b-outcomes`), so
a step is a few list look-ups rather than a model forward pass and PPO can take millions of steps
on a laptop. *Live mode* (below) runs SAFE itself per step through the same class and reward;
`stage_b-live` checks that the two agree.

Reward of answering question i with action a:

    score[i, a] - alpha * gflops[i, a] / scale.gflops - gamma * latency_ms[i, a] / scale.latency_ms

where `scale` (envs.reward_scale.RewardScale) holds, for each cost, the largest over actions of
its median over the env's rows (the typical cost of the most expensive action; a policy saves the
scale of its training rows and evaluation passes it back). Each cost term is then about 1 for a
typical most expensive answer and alpha, gamma read as "score points given up for it". Unlike the
maximum this scale is not moved by one slow measurement (the reasons are in envs.reward_scale).
With the optional no-audio confidence feature the costs are
`OutcomeTable.charged_costs(confidence=True)`: every audio action also pays the base run that
produced the confidence. The budget (below) stays a fraction of the table's maximum GFLOPs.

*Live mode* passes `outcome`, a function (row, action index) -> (score, gflops, latency_ms) that
runs SAFE on the question (stage_b.live); the env then scores and charges what that run returned,
with the same scale, and uses the table only for features, budget checks and the scale. With
the confidence feature, live mode also passes `live_confidence`, a function row -> the no-audio
confidence measured by running the base model on the question when it is shown; the policy observes
that value instead of the table's, and `outcome` charges the run as `charged_costs` does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.outcome_table import OutcomeTable
from envs.reward_scale import RewardScale
from shared.cli import check_number

log = logging.getLogger(__name__)


Outcome = Callable[[int, int], tuple[float, float, float]]
Confidence = Callable[[int], float]
BUDGET = {"gt": 0.0, "le": 1.0}  # an episode's budget: a fraction of its maximum compute (shared.cli.check_number bounds)


@dataclass(frozen=True)
class FeatureScaler:
    """Per-column standardisation fitted on training rows and saved with a policy, so evaluation sees its scale."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, columns: np.ndarray) -> FeatureScaler:
        """Mean and std per column; constant columns get std 1 (they become 0)."""
        std = columns.std(axis=0)
        return cls(columns.mean(axis=0), np.where(std > 0, std, 1.0))

    def __call__(self, columns: np.ndarray) -> np.ndarray:
        if columns.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"features have {columns.shape[-1]} columns, the scaler was fitted on {self.mean.shape[0]}")
        return ((columns - self.mean) / self.std).astype(np.float32)

    def to_json(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> FeatureScaler:
        return cls(np.asarray(data["mean"], dtype=np.float64), np.asarray(data["std"], dtype=np.float64))


def cost_reward(score: Any, gflops: Any, latency_ms: Any, alpha: float, gamma: float, scale: RewardScale) -> Any:
    """score - alpha * gflops / scale.gflops - gamma * latency_ms / scale.latency_ms (scalars or arrays)."""
    return score - alpha * gflops / scale.gflops - gamma * latency_ms / scale.latency_ms


def observed_columns(table: OutcomeTable, confidence: bool = False) -> np.ndarray:
    """The raw per-question columns a policy observes: the table's features, plus the no-audio confidence if bought."""
    if not confidence:
        return table.features
    return np.concatenate([table.features, table.require_confidence()[:, None]], axis=1)


class AudioBudgetEnv(gym.Env):
    """An episode is `episode_length` questions; each step picks an action index into `table.actions`.

    A step's info names the action taken (`action_taken`, its index), its token count (`k`) and its name
    (`action_name`: `OutcomeTable.action_labels`, e.g. "k8", or "whisper-k8" in a table joining two bridges).

    Observation (float32, D + 2, or D + 3 with `confidence`): the current question's features
    (standardised per column by `scaler`, by default fitted on `rows`, so embeddings and audio
    statistics share one scale), the no-audio confidence if bought, the remaining budget fraction
    (1.0 without a budget) and the fraction of the episode left (1.0 at reset). Questions are drawn
    from `rows` (default: all) without replacement, or with replacement when there are fewer rows
    than `episode_length`, using the env's seeded `np_random`; `terminated` is True after the last.
    `reset(options={"order": [i, j, ...]})` plays exactly those table rows instead (1 to
    `episode_length` of them, in that order): evaluation uses it to visit each held-out question once.
    With `confidence`, `info["confidence"]` is the raw confidence the policy observed for the step's question.
    The reward's cost `scale` is, by default, `RewardScale.fit` on `rows` (like the feature scaler).

    Budget: with `budget = b` an episode of L questions may spend at most `b * L * max_gflops` GFLOPs.
    If the chosen action costs more than what remains, the env substitutes action 0 (no audio): the
    step is charged, scored and rewarded as action 0 and `info["budget_forced"]` is True. Action 0
    is always allowed (a question is never left unanswered); should it overspend, the remaining
    budget is floored at 0, so the feature never goes negative.
    """

    metadata = {"render_modes": []}

    def __init__(self, table: OutcomeTable | str | Path, episode_length: int = 32, alpha: float = 0.1,
                 gamma: float = 0.0, budget: float | None = None, rows: np.ndarray | None = None,
                 seed: int | None = None, confidence: bool = False, scaler: FeatureScaler | None = None,
                 outcome: Outcome | None = None, live_confidence: Confidence | None = None,
                 scale: RewardScale | None = None) -> None:
        super().__init__()
        if not isinstance(table, OutcomeTable):
            table = OutcomeTable.load(table)
        for name, value in (("alpha", alpha), ("gamma", gamma)):
            check_number(name, value, ge=0)
        check_number("episode_length", episode_length, ge=1, integer=True)
        check_number("budget", budget, optional=True, **BUDGET)
        all_rows = np.arange(table.n_rows)
        rows = all_rows if rows is None else np.asarray(rows)
        if rows.ndim != 1 or rows.size == 0 or rows.dtype.kind not in "iu":
            raise ValueError(f"rows has shape {rows.shape} dtype {rows.dtype}, expected a non-empty 1-D integer array")
        if rows.min() < 0 or rows.max() >= table.n_rows:
            raise ValueError(f"rows span [{rows.min()}, {rows.max()}], expected indices in [0, {table.n_rows})")
        self.table = table
        self.rows = rows.astype(np.int64)
        self.episode_length = int(episode_length)
        self.alpha, self.gamma, self.budget = float(alpha), float(gamma), budget
        self.confidence = bool(confidence)
        if (live_confidence is not None) != (outcome is not None and self.confidence):
            raise ValueError(f"live_confidence is {'given' if live_confidence else 'missing'} with outcome "
                             f"{'given' if outcome else 'missing'} and confidence {self.confidence}; expected it "
                             "exactly in live mode with the confidence feature")
        gflops, latency = table.charged_costs(confidence)
        self.max_gflops = float(gflops.max())  # the budget's unit
        self.scale = scale or RewardScale.fit(table, self.rows, confidence)
        score, gflops, latency = (np.asarray(x, dtype=np.float64) for x in (table.score, gflops, latency))
        # In float64, the precision of the costs `info` reports, so a step's reward is `reward(info's values)`.
        reward = self.reward(score, gflops, latency)
        # Python lists: scalar look-ups in nested lists are several times faster than numpy indexing.
        self._reward = reward.tolist()
        self._score = score.tolist()
        self._gflops = gflops.tolist()
        self._latency = latency.tolist()
        self._k = table.actions.tolist()
        self._names = table.action_labels
        self._n_actions = table.n_actions
        self._outcome = outcome
        self._live_confidence = live_confidence
        self._columns = observed_columns(table, confidence)
        self.scaler = scaler or FeatureScaler.fit(self._columns[self.rows])
        dim = self._columns.shape[1]
        self._obs_base = np.zeros((table.n_rows, dim + 2), dtype=np.float32)
        self._obs_base[:, :dim] = self.scaler(self._columns)
        self._seen_confidence = math.nan
        self._length = self.episode_length
        self.action_space = spaces.Discrete(self._n_actions)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(dim + 2,), dtype=np.float32)
        self._order: list[int] = []
        self._t = 0
        self._total_budget = self._remaining = math.inf
        if seed is not None:
            super().reset(seed=seed)
        log.debug("AudioBudgetEnv: %d rows, actions %s, alpha %.3g, gamma %.3g, budget %s, scale %s",
                  self.rows.size, self._names, self.alpha, self.gamma, budget, self.scale)

    def reward(self, score: Any, gflops: Any, latency_ms: Any) -> Any:
        """`cost_reward` at this env's alpha, gamma and scale."""
        return cost_reward(score, gflops, latency_ms, self.alpha, self.gamma, self.scale)

    def _budget_fraction(self) -> float:
        return 1.0 if self.budget is None else self._remaining / self._total_budget

    def _observation(self) -> np.ndarray:
        """A fresh array: the current question's features, budget left and episode left; in live mode with the
        confidence feature, the confidence measured now (the last column of the raw features, then scaled)."""
        t = self._t
        row = self._order[min(t, self._length - 1)]
        obs = self._obs_base[row].copy()
        if self.confidence and t < self._length:  # the terminal observation is never acted on
            if self._live_confidence is None:
                self._seen_confidence = float(self._columns[row, -1])
            else:
                raw = self._columns[row].copy()
                raw[-1] = self._seen_confidence = float(self._live_confidence(row))
                obs[:-2] = self.scaler(raw)
        obs[-2] = self._budget_fraction()
        obs[-1] = (self._length - t) / self._length
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        order = (options or {}).get("order")
        if order is None:
            replace = self.rows.size < self.episode_length
            self._order = self.np_random.choice(self.rows, size=self.episode_length, replace=replace).tolist()
        else:
            self._order = self._checked_order(order)
        self._length, self._t = len(self._order), 0
        self._total_budget = math.inf if self.budget is None else float(self.budget) * self._length * self.max_gflops
        self._remaining = self._total_budget
        return self._observation(), {}

    def _checked_order(self, order: Any) -> list[int]:
        """A reset option's row list, or a ValueError naming what is wrong with it."""
        rows = np.asarray(order)
        if rows.ndim != 1 or not 1 <= rows.size <= self.episode_length or rows.dtype.kind not in "iu":
            raise ValueError(f"options['order'] has shape {rows.shape} dtype {rows.dtype}; expected 1 to "
                             f"{self.episode_length} integer row indices")
        if rows.min() < 0 or rows.max() >= self.table.n_rows:
            raise ValueError(f"options['order'] spans [{rows.min()}, {rows.max()}]; expected rows in "
                             f"[0, {self.table.n_rows})")
        return rows.astype(np.int64).tolist()

    def _checked_action(self, action: Any) -> int:
        """An action index: a Python or numpy integer, or a 0-d integer array (as SB3 passes it), in range; anything
        else (a float such as 1.7, a string, a bool) is a ValueError naming it."""
        value = action.item() if isinstance(action, np.ndarray) and action.ndim == 0 else action
        is_integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if not is_integer or not 0 <= value < self._n_actions:
            raise ValueError(f"action is {action!r}; expected an integer in [0, {self._n_actions})")
        return int(value)

    def step(self, action: int | np.integer | np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self._order:
            raise RuntimeError("AudioBudgetEnv.step called before reset()")
        if self._t >= self._length:
            raise RuntimeError("AudioBudgetEnv.step called after the episode terminated; call reset()")
        a = self._checked_action(action)
        row = self._order[self._t]
        cost = self._gflops[row]
        forced = a != 0 and cost[a] > self._remaining
        if forced:
            a = 0
        if self._outcome is None:
            score, gflops, latency, reward = self._score[row][a], cost[a], self._latency[row][a], self._reward[row][a]
        else:
            score, gflops, latency = self._outcome(row, a)
            reward = self.reward(score, gflops, latency)
        if self.budget is not None:
            self._remaining = max(0.0, self._remaining - gflops)
        info = {"action_taken": a, "k": self._k[a], "action_name": self._names[a], "score": score, "gflops": gflops,
                "latency_ms": latency, "row": row, "budget_forced": forced}
        if self.confidence:
            info["confidence"] = self._seen_confidence
        self._t += 1
        return self._observation(), reward, self._t >= self._length, False, info
