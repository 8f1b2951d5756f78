"""The non-RL baselines of `stage_b-pareto` on small synthetic tables: what they learn, what they pay, what they see."""

import logging
from pathlib import Path

import numpy as np
import pytest

from envs.audio_budget import AudioBudgetEnv
from envs.outcome_table import OutcomeTable
from envs.reward_scale import RewardScale
from shared.cli import InputError
from stage_b import bandit
from stage_b.baselines import (
    ALWAYS_TAU,
    BaselineData,
    cascade_rows,
    fit_bandit,
    fit_cascade,
    fit_ridge,
    fit_supervised,
    run_baselines,
    select_baselines,
    sweep_baselines,
)
from stage_b.evaluate import point
from stage_b.sweep_config import ParetoConfig, weighted
from stage_b.train import PolicyConfig

GRID = [("alpha", 0.3, 0.0), ("gamma", 0.0, 0.3), ("alpha", 10.0, 0.0)]


def make_table(n: int = 300, seed: int = 0) -> OutcomeTable:
    """A third of the questions need audio (score 0 without, 1 with) and column 0 says which; the rest are answered
    without it. The no-audio confidence is low exactly where audio is needed. Audio costs 4-6x the base run."""
    rng = np.random.default_rng(seed)
    needs_audio = rng.random(n) < 1 / 3
    score = np.ones((n, 4), np.float32)
    score[needs_audio, 0] = 0.0
    features = np.column_stack([needs_audio, rng.normal(size=(n, 2))]).astype(np.float32)
    gflops = np.array([1.0, 4.0, 5.0, 6.0], np.float32) * rng.uniform(0.95, 1.05, size=(n, 1)).astype(np.float32)
    confidence = np.where(needs_audio, rng.uniform(0.1, 0.5, n), rng.uniform(0.6, 1.0, n)).astype(np.float32)
    family = np.where(needs_audio, "audio", "visual")
    return OutcomeTable(ids=np.array([f"q{i}" for i in range(n)]), family=family, qtype=np.array(["kind"] * n),
                        actions=np.array([0, 4, 8, 16]), score=score, gflops=gflops, latency_ms=10 * gflops,
                        features=features, provenance={"split": "toy"}, confidence=confidence)


@pytest.fixture(scope="module")
def table() -> OutcomeTable:
    return make_table()


def data_of(table: OutcomeTable, confidence: bool = False) -> BaselineData:
    """The baselines' data as `stage_b-pareto` builds it: PolicyConfig's training rows, the held-out rows to evaluate."""
    rows = PolicyConfig("unused").rows(table)
    train_rows, held_out = rows.train, rows.test
    return BaselineData(table, train_rows, table, held_out, confidence)


def test_supervised_and_bandit_reach_the_oracle_at_far_less_compute_than_always_audio(table: OutcomeTable) -> None:
    data = data_of(table)
    rows, report = run_baselines(data, ["supervised", "bandit"], GRID, [0, 1], thresholds=9)
    oracle = point(table, data.eval_rows, table.oracle_actions()[data.eval_rows])
    always = point(table, data.eval_rows, np.ones(len(data.eval_rows), dtype=np.int64))
    moderate = [r for r in rows if r["alpha"] == 0.3 or r["gamma"] == 0.3]
    assert len(moderate) == 2 * 2 * 2  # (supervised, bandit) x (alpha, gamma) x 2 seeds
    for row in moderate:
        assert row["accuracy"] >= oracle["accuracy"] - 0.02, row
        assert row["gflops_per_query"] <= 1.05 * oracle["gflops_per_query"] < 0.6 * always["gflops_per_query"], row
    never = point(table, data.eval_rows, np.zeros(len(data.eval_rows), dtype=np.int64))
    for row in (r for r in rows if r["alpha"] == 10.0):  # a cost no score can pay for: no audio at all
        assert row["audio_rate"] == 0.0 and row["gflops_per_query"] == pytest.approx(never["gflops_per_query"])
    assert {r["method"] for r in rows} == {"supervised-alpha", "supervised-gamma", "bandit-alpha", "bandit-gamma"}
    assert report["bandit"]["context_dims"] == 4 and report["supervised"]["chosen_penalty_per_seed"].keys() == {"0", "1"}


def test_cascade_spans_never_to_always_k_plus_the_base_run(table: OutcomeTable) -> None:
    data = data_of(table)
    rows, report = cascade_rows(data, 21)
    held_out = data.eval_rows
    assert report["thresholds"][0] == 0.0 and report["thresholds"][-1] == ALWAYS_TAU > 1.0
    assert len(report["thresholds"]) == 21 and report["quantile_levels"] == pytest.approx(np.arange(1, 20) / 20)
    assert fit_cascade(data, 1).thresholds.tolist() == [0.0, ALWAYS_TAU]  # one weight: never and always
    assert len(rows) == len(report["thresholds"]) and all(r["alpha"] is None and r["seed"] is None for r in rows)
    assert [r["audio_rate"] for r in rows] == sorted(r["audio_rate"] for r in rows)
    never = rows[0]  # tau below every confidence: the base model's answer, nothing more
    assert never["audio_rate"] == 0.0
    assert never["gflops_per_query"] == pytest.approx(table.gflops[held_out, 0].mean(dtype=np.float64))
    assert never["accuracy"] == pytest.approx(table.score[held_out, 0].mean())
    k = report["k"]  # k4: every audio action scores 1, ties go to the fewest tokens
    index = int(np.flatnonzero(table.actions == k)[0])
    always = rows[-1]  # tau above every confidence: audio with k everywhere, plus the base run that gave the confidence
    assert k == 4 and always["audio_rate"] == 1.0
    paid = table.gflops[held_out, index].astype(np.float64) + table.gflops[held_out, 0]
    assert always["gflops_per_query"] == pytest.approx(paid.mean())
    assert always["latency_ms"] == pytest.approx((table.latency_ms[held_out, index] + table.latency_ms[held_out, 0]).mean())
    perfect = min((r for r in rows if r["accuracy"] == 1.0), key=lambda r: r["audio_rate"])  # confidence separates
    assert perfect["audio_rate"] < (table.family[held_out] == "audio").mean() + 0.1 < always["audio_rate"]


def test_cascade_k_comes_from_the_training_rows(table: OutcomeTable) -> None:
    better = make_table()
    data = data_of(better)
    better.score[data.train_rows, 1] = 0.5  # on the training rows k8 and k16 beat k4, and tie with each other
    assert better.actions[fit_cascade(data_of(better), 5).k_index] == 8
    better.score[data.eval_rows, 2] = 0.0  # what k8 does on held-out rows does not change the choice
    assert better.actions[fit_cascade(data_of(better), 5).k_index] == 8


def poisoned(table: OutcomeTable, rows: np.ndarray) -> OutcomeTable:
    """`table` with the scores, features and confidence of `rows` replaced by nonsense."""
    bad = table.subset(np.arange(table.n_rows))
    bad.score[rows] = 1.0 - bad.score[rows]
    bad.features[rows] = -50.0 * bad.features[rows] + 7.0
    bad.confidence[rows] = 1.0 - bad.confidence[rows]
    return bad


def test_baselines_never_see_held_out_rows(table: OutcomeTable) -> None:
    clean = data_of(table, confidence=True)
    dirty = data_of(poisoned(table, clean.eval_rows), confidence=True)
    np.testing.assert_array_equal(clean.scaler.mean, dirty.scaler.mean)
    np.testing.assert_array_equal(clean.train_rewards(0.3, 0.1), dirty.train_rewards(0.3, 0.1))
    for seed in (0, 1):
        fitted, other = fit_supervised(clean, seed), fit_supervised(dirty, seed)
        np.testing.assert_array_equal(fitted.weights, other.weights)
        assert fitted.penalty == other.penalty
    runs = [(clean.train_rewards(0.3, 0.0), 0), (clean.train_rewards(0.3, 0.0), 1)]
    for got, want in zip(fit_bandit(dirty, runs), fit_bandit(clean, runs)):
        np.testing.assert_array_equal(got, want)
    assert fit_cascade(clean, 9).k_index == fit_cascade(dirty, 9).k_index
    np.testing.assert_array_equal(fit_cascade(clean, 9).thresholds, fit_cascade(dirty, 9).thresholds)
    # ...and poisoning the training rows instead does change them: the comparison can fail
    trained = data_of(poisoned(table, clean.train_rows), confidence=True)
    assert not np.array_equal(fit_supervised(trained, 0).weights, fit_supervised(clean, 0).weights)
    assert not np.array_equal(fit_cascade(trained, 9).thresholds, fit_cascade(clean, 9).thresholds)


def test_evaluation_rows_that_are_training_rows_are_refused(table: OutcomeTable) -> None:
    train_rows = PolicyConfig("unused").rows(table).train
    with pytest.raises(ValueError, match="evaluation rows .* are also training rows"):
        BaselineData(table, train_rows, table, train_rows[:5])


def test_supervised_pays_and_observes_the_confidence_like_the_policies(table: OutcomeTable) -> None:
    plain, bought = data_of(table), data_of(table, confidence=True)
    assert bought.train_x.shape[1] == plain.train_x.shape[1] + 1
    env = AudioBudgetEnv(table, alpha=0.3, rows=plain.train_rows, confidence=True)
    gflops, latency = (cost.astype(np.float64) for cost in table.charged_costs(True))  # the env's precision
    rows = plain.train_rows
    np.testing.assert_array_equal(bought.train_rewards(0.3, 0.0),
                                  env.reward(table.score[rows].astype(np.float64), gflops[rows], latency[rows]))
    (row,), _ = run_baselines(bought, ["supervised"], [("alpha", 0.3, 0.0)], [0], thresholds=9)
    audio = table.actions[np.argmax(fit_supervised(bought, 0).predict(bought.eval_x)
                                    - (bought.train_score - bought.train_rewards(0.3, 0.0)).mean(axis=0), axis=1)] > 0
    charged = np.where(audio, table.gflops[bought.eval_rows, 1] + table.gflops[bought.eval_rows, 0],
                       table.gflops[bought.eval_rows, 0])
    assert 0 < row["audio_rate"] < 1 and row["gflops_per_query"] == pytest.approx(charged.mean())


def test_baselines_reward_with_the_policies_reward_scale(table: OutcomeTable) -> None:
    """A weight means for the baselines what it means for PPO: the rewards divide by the policies' reward scale."""
    config = PolicyConfig("unused", confidence=True)
    rows, scale = config.rows(table), config.reward_scale(table)
    data = BaselineData(table, rows.train, table, rows.test, True, scale)
    env = AudioBudgetEnv(table, alpha=0.3, gamma=0.1, rows=rows.train, confidence=True, scale=scale)
    gflops, latency = (cost.astype(np.float64) for cost in table.charged_costs(True))  # the env's precision
    np.testing.assert_array_equal(data.train_rewards(0.3, 0.1), env.reward(
        table.score[rows.train].astype(np.float64), gflops[rows.train], latency[rows.train]))
    other = BaselineData(table, rows.train, table, rows.test, True, RewardScale(1.0, 1.0))
    assert not np.allclose(other.train_rewards(0.3, 0.1), data.train_rewards(0.3, 0.1))


def test_sweep_baselines_use_the_policies_rows_scale_and_each_components_grid(
        table: OutcomeTable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """stage_b-pareto's baselines: PPO's training rows and reward scale, and each component's derived weights."""
    slow = OutcomeTable(**vars(table))
    slow.latency_ms = np.tile(np.array([10.0, 12.0, 13.0, 14.0], np.float32), (table.n_rows, 1))  # audio adds little
    sweep = ParetoConfig(slow.save(tmp_path / "outcomes_toy.npz"), tmp_path / "sweep", seeds=(0, 1),
                         components=("alpha", "gamma"))
    grids = {c: sweep.weight_grids[c]["weights"] for c in ("alpha", "gamma")}
    assert grids["alpha"] != grids["gamma"]
    seen = {}

    def fake_run(data: BaselineData, names: tuple, grid: list, seeds: list, thresholds: int) -> tuple[list, dict]:
        seen.update(data=data, grid=grid, seeds=seeds, thresholds=thresholds)
        return [], {}

    monkeypatch.setattr("stage_b.baselines.run_baselines", fake_run)
    config = sweep.policy("gamma", 0.5, 1)
    rows = config.rows(slow)
    _, report = sweep_baselines(sweep, slow, ("supervised", "bandit"), slow, rows.test)
    assert report == {"train_rows": len(rows.train)} and seen["seeds"] == [0, 1]
    np.testing.assert_array_equal(seen["data"].train_rows, rows.train)
    assert seen["data"].scale == config.reward_scale(slow) != RewardScale.fit(slow, np.arange(slow.n_rows))
    assert seen["grid"] == [(c, *weighted(c, w)) for c in ("alpha", "gamma") for w in grids[c]]
    assert seen["thresholds"] == max(len(weights) for weights in grids.values())


def test_ridge_penalty_is_chosen_on_out_of_bag_rows() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 20))
    noise = rng.random((200, 2))
    assert fit_ridge(x, noise, seed=0).penalty >= 100  # nothing to learn: shrink everything
    signal = np.clip(0.5 + 0.1 * x[:, :2], 0, 1)
    model = fit_ridge(x, signal, seed=0)
    assert model.penalty <= 1 and np.abs(model.predict(x) - signal).max() < 0.02
    assert not np.array_equal(fit_ridge(x, noise, seed=1).weights, fit_ridge(x, noise, seed=0).weights)  # bootstrap


def test_linucb_learns_the_best_arm_and_its_seed_is_the_stream_order() -> None:
    rng = np.random.default_rng(0)
    n = 400
    x = np.column_stack([rng.normal(size=(n, 2)), np.ones(n)])
    expected = x @ np.array([[1.0, 0.0, 0.0], [-1.0, 0.5, 0.2], [0.0, -1.0, 0.1]]).T  # each arm best somewhere
    best = expected.argmax(axis=1)
    rewards = (expected + 0.1 * rng.normal(size=(n, 3)))[None]
    orders = bandit.stream_orders(n, [0, 1])
    theta = bandit.linucb(x, np.repeat(rewards, 2, axis=0), orders)
    assert np.bincount(best).min() > 50 and (bandit.greedy(x, theta) == best).mean(axis=1).min() > 0.95
    np.testing.assert_array_equal(theta, bandit.linucb(x, np.repeat(rewards, 2, axis=0), orders))  # deterministic
    assert not np.array_equal(theta[0], theta[1]) and not np.array_equal(orders[0], orders[1])
    assert sorted(orders[0][:n]) == list(range(n)) and orders.shape == (2, bandit.PASSES * n)


def test_select_baselines_without_confidence(table: OutcomeTable, caplog: pytest.LogCaptureFixture) -> None:
    assert select_baselines(None, table, Path("t.npz")) == (("supervised", "cascade", "bandit"), {})
    bare = table.subset(np.arange(table.n_rows))
    bare.confidence = None
    with pytest.raises(InputError, match="--baselines cascade needs the no-audio 'confidence' column, which t.npz "
                                         "lacks; rebuild the table with stage_b-outcomes"):
        select_baselines(("supervised", "cascade"), bare, Path("t.npz"))
    with caplog.at_level(logging.WARNING, logger="stage_b.baselines"):
        names, skipped = select_baselines(None, bare, Path("t.npz"))
    assert names == ("supervised", "bandit") and "no 'confidence' column" in skipped["cascade"]
    assert "cascade baseline skipped" in caplog.text
    assert select_baselines((), bare, Path("t.npz")) == ((), {})
