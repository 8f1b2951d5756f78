"""The non-RL competitors of `stage_b-pareto`: is RL needed when every question is its own decision?

Every baseline learns from the rows PPO trains on (`PolicyConfig.rows(...).train`: the training table's
train rows) and acts on the rows PPO is evaluated on (`SavedPolicy.evaluation_rows`), and is
charged as the env charges (`stage_b.evaluate.point`, i.e. `OutcomeTable.charged_costs`):
- `supervised`: per action, a ridge regression of the score on the observed features (those a
  policy sees: `observed_columns`, standardised by a `FeatureScaler` fitted on the training rows);
  each seed fits on its own bootstrap of the training rows and picks the penalty (from
  RIDGE_PENALTIES) with the lowest squared error on that bootstrap's out-of-bag rows, a validation
  slice of the training rows. Per reward weight it answers with argmax_a (predicted score - cost
  term), the cost term being the mean that the env's reward (`AudioBudgetEnv.reward`) charged
  action a on the training rows. Knob: the sweep's weights, per component; seeds: the bootstrap.
- `cascade`: the base model answers first; audio with one action (the audio action with the best mean
  training score, ties to fewer tokens, then to less training compute) only when its no-audio
  confidence is below a threshold tau.
  Knob: tau, as many thresholds as the sweep's longest component grid has weights (at least 2), so
  that every method's frontier has as many points (a hypervolume grows with its number of points):
  0 (never audio), the training rows' confidence quantiles at evenly spaced levels between, and
  ALWAYS_TAU (audio on every question). Charged `charged_costs(confidence=True)`: an audio answer
  pays the base run too. Deterministic (no seed). It needs the table's `confidence` column.
- `bandit`: disjoint LinUCB trained online on the env's reward (stage_b.bandit); seeds: the order of
  the stream. Knob: the sweep's weights, per component.
`supervised` and `bandit` observe (and, with `--confidence`, pay for) the no-audio confidence exactly
as the PPO policies of the sweep do, and their rewards use the policies' reward scale (`RewardScale`,
fitted on the same training rows), so a weight means the same for them as for PPO. Nothing is saved:
each run of `stage_b-pareto` refits every baseline (about a second on a 5,000-row table), so there is
no model file to load or unpickle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from envs.audio_budget import AudioBudgetEnv, FeatureScaler, observed_columns
from envs.outcome_table import OutcomeTable
from envs.reward_scale import RewardScale
from shared.cli import InputError
from stage_b import bandit
from stage_b.evaluate import point

if TYPE_CHECKING:
    from stage_b.sweep_config import ParetoConfig

log = logging.getLogger(__name__)

BASELINES = ("supervised", "cascade", "bandit")
RIDGE_PENALTIES = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
NEVER_TAU, ALWAYS_TAU = 0.0, 1.01  # no probability is below 0; every probability is below 1.01

Grid = Sequence[tuple[str, float, float]]  # (component, alpha, gamma) of every weight of the sweep


@dataclass
class BaselineData:
    """The training rows every baseline learns from, the evaluation rows it acts on, and what it observes of them."""

    train_table: OutcomeTable
    train_rows: np.ndarray
    eval_table: OutcomeTable
    eval_rows: np.ndarray
    confidence: bool = False
    scale: RewardScale | None = None  # the PPO policies' reward scale; None fits it on train_rows by the same rule
    scaler: FeatureScaler = field(init=False)
    train_x: np.ndarray = field(init=False)
    eval_x: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        """Refuse evaluation rows that are training rows; standardise both with the training rows' scaler."""
        if np.array_equal(self.train_table.ids, self.eval_table.ids):
            shared = np.intersect1d(self.train_rows, self.eval_rows)
            if shared.size:
                raise ValueError(f"{shared.size} evaluation rows (first: {int(shared[0])}) are also training rows; "
                                 "expected the baselines to be evaluated on held-out rows only")
        columns = observed_columns(self.train_table, self.confidence)
        self.scaler = FeatureScaler.fit(columns[self.train_rows])
        self.train_x = self.scaler(columns[self.train_rows])
        self.eval_x = self.scaler(observed_columns(self.eval_table, self.confidence)[self.eval_rows])

    @property
    def train_score(self) -> np.ndarray:
        """(n_train, A) float64 scores of the training rows."""
        return self.train_table.score[self.train_rows].astype(np.float64)

    def train_rewards(self, alpha: float, gamma: float) -> np.ndarray:
        """(n_train, A): the reward the PPO policies' training env (its reward scale included) gives every training
        row and action."""
        env = AudioBudgetEnv(self.train_table, alpha=alpha, gamma=gamma, rows=self.train_rows,
                             confidence=self.confidence, scaler=self.scaler, scale=self.scale)
        gflops, latency = (cost[self.train_rows].astype(np.float64)  # the env's precision
                           for cost in self.train_table.charged_costs(self.confidence))
        return env.reward(self.train_score, gflops, latency)

    def row(self, method: str, actions: np.ndarray, confidence: bool, alpha: float | None = None,
            gamma: float | None = None, seed: int | None = None) -> dict:
        """A pareto.csv row: `actions` (one per evaluation row) scored and charged on the evaluation rows."""
        return {"method": method, "alpha": alpha, "gamma": gamma, "seed": seed,
                **point(self.eval_table, self.eval_rows, actions, confidence)}


@dataclass(frozen=True)
class RidgeModel:
    """Per-action linear models of the score: `predict(x) = clip(x @ weights + intercept, 0, 1)`."""

    weights: np.ndarray
    intercept: np.ndarray
    penalty: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, A) predicted scores of standardised features `x`."""
        return np.clip(x.astype(np.float64) @ self.weights + self.intercept, 0.0, 1.0)


def fit_ridge(x: np.ndarray, score: np.ndarray, seed: int, penalties: Sequence[float] = RIDGE_PENALTIES) -> RidgeModel:
    """Ridge regression of every action's score on a seeded bootstrap of the rows, with the penalty whose
    predictions have the lowest mean squared error on the bootstrap's out-of-bag rows."""
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n, size=n)
    out_of_bag = np.setdiff1d(np.arange(n), drawn)
    if out_of_bag.size == 0:
        raise ValueError(f"a bootstrap of the {n} training rows left no out-of-bag row to choose the ridge penalty "
                         "on; expected more training rows")
    xb, yb = x[drawn].astype(np.float64), score[drawn].astype(np.float64)
    mean_x, mean_y = xb.mean(axis=0), yb.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh((xb - mean_x).T @ (xb - mean_x))
    rotated = eigenvectors.T @ ((xb - mean_x).T @ (yb - mean_y))
    models = []
    for penalty in penalties:
        weights = eigenvectors @ (rotated / (np.maximum(eigenvalues, 0.0) + penalty)[:, None])
        models.append(RidgeModel(weights, mean_y - mean_x @ weights, float(penalty)))
    errors = [float(np.mean((m.predict(x[out_of_bag]) - score[out_of_bag]) ** 2)) for m in models]
    return models[int(np.argmin(errors))]


def fit_supervised(data: BaselineData, seed: int) -> RidgeModel:
    """The `supervised` baseline's score model of one seed, fitted on the training rows."""
    return fit_ridge(data.train_x, data.train_score, seed)


def supervised_rows(data: BaselineData, grid: Grid, seeds: Sequence[int],
                    rewards: dict[tuple[float, float], np.ndarray]) -> tuple[list[dict], dict]:
    """`supervised-<component>` rows for every weight and seed, and what was fitted."""
    rows, penalties = [], {}
    for seed in seeds:
        model = fit_supervised(data, seed)
        penalties[str(seed)] = model.penalty
        predicted = model.predict(data.eval_x)
        for component, alpha, gamma in grid:
            cost = (data.train_score - rewards[(alpha, gamma)]).mean(axis=0)
            actions = np.argmax(predicted - cost, axis=1)
            rows.append(data.row(f"supervised-{component}", actions, data.confidence, alpha, gamma, seed))
    return rows, {"model": "per-action ridge regression of the score on the standardised observed features",
                  "penalties": list(RIDGE_PENALTIES), "chosen_penalty_per_seed": penalties,
                  "validation": "out-of-bag rows of each seed's bootstrap of the training rows"}


@dataclass(frozen=True)
class Cascade:
    """Audio with action `k_index` when the no-audio confidence is below tau, else the base model's answer."""

    k_index: int
    thresholds: np.ndarray

    def actions(self, confidence: np.ndarray, tau: float) -> np.ndarray:
        """Per question, `k_index` if its confidence < tau, else 0 (no audio)."""
        return np.where(confidence < tau, self.k_index, 0).astype(np.int64)


def quantile_levels(count: int) -> np.ndarray:
    """The quantile levels of `count` thresholds (at least 2): evenly spaced in [0, 1], the ends meaning never and always."""
    return np.linspace(0.0, 1.0, max(count, 2))


def fit_cascade(data: BaselineData, count: int) -> Cascade:
    """The audio action with the best mean training score (ties to fewer tokens, then to fewer mean training GFLOPs,
    e.g. between two encoders' actions of the same k) and `count` thresholds (at least 2):
    0, the training rows' confidence quantiles at the inner `quantile_levels`, and ALWAYS_TAU."""
    table = data.train_table
    if table.n_actions < 2:
        raise ValueError(f"the outcome table's actions are {table.actions.tolist()}; the cascade needs an audio action")
    confidence = table.require_confidence()[data.train_rows]
    audio = data.train_score[:, 1:].mean(axis=0)
    best = np.flatnonzero(audio == audio.max()) + 1
    cost = table.gflops[data.train_rows].mean(axis=0, dtype=np.float64)
    k_index = int(best[np.lexsort((cost[best], table.actions[best]))[0]])
    quantiles = np.quantile(confidence.astype(np.float64), quantile_levels(count)[1:-1])
    return Cascade(k_index, np.unique(np.concatenate([[NEVER_TAU], quantiles, [ALWAYS_TAU]])))


def cascade_rows(data: BaselineData, count: int) -> tuple[list[dict], dict]:
    """One `cascade` row per threshold (ascending; `count` of them, fewer if quantiles coincide), and the rule."""
    rule = fit_cascade(data, count)
    confidence = data.eval_table.require_confidence()[data.eval_rows]
    rows = [data.row("cascade", rule.actions(confidence, tau), True) for tau in rule.thresholds]
    return rows, {"k": int(data.train_table.actions[rule.k_index]),
                  "action": data.train_table.action_labels[rule.k_index], "thresholds": rule.thresholds.tolist(),
                  "quantile_levels": quantile_levels(count)[1:-1].tolist(), "deterministic": True,
                  "rule": "audio with k tokens when the no-audio confidence < tau; thresholds: 0 (never), the "
                          "training rows' confidence quantiles at quantile_levels, then always; pareto.csv's "
                          "cascade rows are the thresholds in this order"}


def fit_bandit(data: BaselineData, runs: Sequence[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(principal axes, arm models theta (R, A, d)) of one LinUCB learner per run: (training rows' rewards, seed)."""
    axes = bandit.principal_axes(data.train_x)
    seeds = sorted({seed for _, seed in runs})
    orders = bandit.stream_orders(len(data.train_rows), seeds)
    theta = bandit.linucb(bandit.contexts(data.train_x, axes), np.stack([rewards for rewards, _ in runs]),
                          orders[[seeds.index(seed) for _, seed in runs]])
    return axes, theta


def bandit_rows(data: BaselineData, grid: Grid, seeds: Sequence[int],
                rewards: dict[tuple[float, float], np.ndarray]) -> tuple[list[dict], dict]:
    """`bandit-<component>` rows: one LinUCB learner per weight and seed, all run together."""
    runs = [(weights, seed) for weights in grid for seed in seeds]
    axes, theta = fit_bandit(data, [(rewards[(alpha, gamma)], seed) for (_, alpha, gamma), seed in runs])
    actions = bandit.greedy(bandit.contexts(data.eval_x, axes), theta)
    rows = [data.row(f"bandit-{component}", actions[i], data.confidence, alpha, gamma, seed)
            for i, ((component, alpha, gamma), seed) in enumerate(runs)]
    return rows, {"algorithm": "disjoint LinUCB, evaluated greedily", "exploration": bandit.EXPLORATION,
                  "ridge": bandit.RIDGE, "passes": bandit.PASSES, "context_dims": int(axes.shape[1]) + 1,
                  "seed": "the order of the online stream"}


def select_baselines(requested: Sequence[str] | None, table: OutcomeTable, path: Path) -> tuple[tuple[str, ...],
                                                                                               dict[str, str]]:
    """(baselines to run, {skipped: why}): `requested` None means all of BASELINES, the cascade only when the
    table has the no-audio confidence; a cascade requested by name on a table without it is an InputError."""
    names = tuple(BASELINES if requested is None else requested)
    if "cascade" not in names or table.confidence is not None:
        return names, {}
    if requested is not None:
        raise InputError(f"--baselines cascade needs the no-audio 'confidence' column, which {path} lacks; rebuild "
                         "the table with stage_b-outcomes (it records the base model's no-audio confidence) or leave "
                         "cascade out of --baselines")
    reason = f"{path} has no 'confidence' column (stage_b-outcomes records it)"
    log.warning("cascade baseline skipped: %s", reason)
    return tuple(n for n in names if n != "cascade"), {"cascade": reason}


def run_baselines(data: BaselineData, names: Sequence[str], grid: Grid, seeds: Sequence[int],
                  thresholds: int) -> tuple[list[dict], dict]:
    """pareto.csv rows of every baseline in `names` (in BASELINES order; the cascade with `thresholds` thresholds),
    and per baseline what it fitted and its seconds."""
    learned = {"supervised", "bandit"} & set(names)
    rewards = {(alpha, gamma): data.train_rewards(alpha, gamma) for _, alpha, gamma in grid} if learned else {}
    rows, report = [], {}
    for name in (n for n in BASELINES if n in names):
        start = time.perf_counter()
        if name == "supervised":
            new, info = supervised_rows(data, grid, seeds, rewards)
        elif name == "cascade":
            new, info = cascade_rows(data, thresholds)
        else:
            new, info = bandit_rows(data, grid, seeds, rewards)
        seconds = time.perf_counter() - start
        log.info("baseline %s: %d rows in %.2f s", name, len(new), seconds)
        rows += new
        report[name] = info | {"seconds": round(seconds, 3)}
    return rows, report


def sweep_baselines(sweep: ParetoConfig, train_table: OutcomeTable, names: tuple[str, ...], table: OutcomeTable,
                    eval_rows: np.ndarray) -> tuple[list[dict], dict]:
    """pareto.csv rows of the baselines `names` at every weight the sweep evaluates (`ParetoConfig.grid`: each
    component's grid, or a conditioned sweep's evaluation grid), the cascade at as many thresholds, trained on the
    policies' training rows with their reward scale and evaluated on `eval_rows`; and what they fitted."""
    if not names:
        return [], {}
    config = next(iter(sweep.policies().values()))  # every policy of the sweep shares its rows and reward scale
    train_rows = config.rows(train_table).train
    data = BaselineData(train_table, train_rows, table, eval_rows, sweep.confidence, config.reward_scale(train_table))
    grid = [(c, alpha, gamma) for c, _, alpha, gamma in sweep.grid()]
    thresholds = max(len(sweep.evaluation_weights(c)) for c in sweep.components)
    rows, report = run_baselines(data, names, grid, sorted(set(sweep.seeds)), thresholds)
    return rows, {"train_rows": len(train_rows), **report}
