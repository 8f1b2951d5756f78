"""`SAFE/AudioBudgetConditioned-v0`: the weight column, the per-episode draw, the fixed weight, and a reward equal to
the plain env's at alpha = w * alpha_unit, gamma = w * gamma_unit on every step."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.audio_budget import AudioBudgetEnv
from envs.outcome_table import OutcomeTable
from envs.weight_conditioned import WeightConditioned, make_weight_conditioned

UNITS = {"alpha": (1.0, 0.0), "gamma": (0.0, 1.0), "both": (1.0, 1.0)}


def random_table(n: int = 40, seed: int = 0) -> OutcomeTable:
    """n questions, actions k = 0, 4, 8, 16 with random scores, costs growing with k, and 3 feature columns."""
    rng = np.random.default_rng(seed)
    grow = np.arange(1, 5)
    return OutcomeTable(ids=np.array([f"q{i}" for i in range(n)]), family=np.array(["audio"] * n),
                        qtype=np.array(["kind"] * n), actions=np.array([0, 4, 8, 16]),
                        score=rng.random((n, 4)).astype(np.float32),
                        gflops=(1 + rng.random((n, 4)) * grow).astype(np.float32),
                        latency_ms=(5 + rng.random((n, 4)) * grow).astype(np.float32),
                        features=rng.normal(size=(n, 3)).astype(np.float32), provenance={"split": "toy"})


def with_confidence(table: OutcomeTable) -> OutcomeTable:
    table.confidence = np.random.default_rng(1).random(table.n_rows).astype(np.float32)
    return table


def conditioned(table: OutcomeTable, units: tuple[float, float], weight_max: float = 2.0, draw: str = "uniform",
                **kwargs: object) -> WeightConditioned:
    return WeightConditioned(AudioBudgetEnv(table, alpha=0.0, gamma=0.0, **kwargs), units, weight_max, draw)


@pytest.mark.filterwarnings("ignore:.*Box observation space (minimum|maximum) value is:UserWarning")
@pytest.mark.filterwarnings("ignore:.*is different from the unwrapped version:UserWarning")
def test_gymnasium_make_and_the_checker() -> None:
    table = random_table()
    env = gym.make(envs.CONDITIONED_ENV_ID, table=table, units=(1.0, 0.0), weight_max=2.0, episode_length=8,
                   budget=0.5)
    check_env(env)
    check_env(conditioned(table, (0.0, 1.0), episode_length=8))
    obs, info = env.reset(seed=3)
    assert obs.shape == (3 + 2 + 1,) and obs.dtype == np.float32 and 0 <= info["weight"] <= 2.0
    assert obs[-1] == pytest.approx(info["weight"] / 2.0)
    with pytest.raises(ValueError, match="alpha is 0.5; a weight-conditioned env takes the cost weights as units"):
        make_weight_conditioned((1.0, 0.0), 2.0, table=table, alpha=0.5)


def test_the_observation_is_the_inner_one_plus_the_weight_column() -> None:
    table = random_table()
    env, plain = conditioned(table, (1.0, 0.0), 4.0, episode_length=8), AudioBudgetEnv(table, episode_length=8)
    assert env.observation_space.shape == (plain.observation_space.shape[0] + 1,)
    assert env.observation_space.low[-1] == 0 and env.observation_space.high[-1] == 1
    obs, info = env.reset(seed=5, options={"weight": 1.0})
    inner, _ = plain.reset(seed=5)
    np.testing.assert_array_equal(obs[:-1], inner)  # same seed, same questions: the weight draws after the rows
    assert obs[-1] == np.float32(0.25) and info["weight"] == 1.0
    for _ in range(3):
        obs, _, _, _, info = env.step(1)
        assert obs[-1] == np.float32(0.25) and info["weight"] == 1.0


def test_weights_are_drawn_per_episode_uniformly_and_seeded() -> None:
    env = conditioned(random_table(), (1.0, 0.0), 3.0, episode_length=4)
    draws = [env.reset(seed=0 if i == 0 else None)[1]["weight"] for i in range(2000)]
    assert 0 <= min(draws) < 0.05 and 2.95 < max(draws) <= 3.0 and abs(np.mean(draws) - 1.5) < 0.06
    again = [env.reset(seed=0 if i == 0 else None)[1]["weight"] for i in range(2000)]
    assert draws == again
    assert len(set(draws)) == len(draws)


def test_squared_draws_are_denser_at_small_weights() -> None:
    """w = W u^2: mean W / 3 and P(w < 0.05 W) = sqrt(0.05) = 22 %, against W / 2 and 5 % for uniform draws."""
    env = conditioned(random_table(), (1.0, 0.0), 3.0, draw="squared", episode_length=4)
    draws = np.array([env.reset(seed=0 if i == 0 else None)[1]["weight"] for i in range(4000)])
    assert 0 <= draws.min() and draws.max() <= 3.0
    assert abs(draws.mean() - 1.0) < 0.05
    assert abs((draws < 0.15).mean() - np.sqrt(0.05)) < 0.02


def test_an_unknown_draw_is_refused() -> None:
    with pytest.raises(ValueError, match="draw is 'cubed'; expected one of"):
        conditioned(random_table(), (1.0, 0.0), 3.0, draw="cubed")


@pytest.mark.parametrize("weight", [-0.1, 2.5, float("nan"), float("inf"), "1", None])
def test_a_bad_weight_option_is_named(weight: object) -> None:
    env = conditioned(random_table(), (1.0, 0.0), 2.0)
    if weight is None:  # no weight: drawn, not an error
        env.reset(seed=0, options={"weight": None})
        return
    with pytest.raises(ValueError, match=r"options\['weight'\] is .*; expected a finite number >= 0 and <= 2"):
        env.reset(seed=0, options={"weight": weight})


def test_the_order_option_passes_through() -> None:
    env = conditioned(random_table(), (1.0, 1.0), 2.0, episode_length=8)
    env.reset(options={"order": [5, 3, 7], "weight": 0.5})
    rows = [env.step(0)[4]["row"] for _ in range(3)]
    assert rows == [5, 3, 7]


@pytest.mark.parametrize("case", ["plain", "budget", "confidence"])
@pytest.mark.parametrize("component", list(UNITS))
def test_the_reward_equals_the_plain_envs_at_each_weight(case: str, component: str) -> None:
    """Every row, every action and several weights; under a budget the substituted action's costs, with the
    confidence the no-audio run charged on top: the wrapper's reward is the plain env's, exactly."""
    table = random_table(n=60, seed=2)
    kwargs = {"budget": {"budget": 0.4}, "confidence": {"confidence": True}}.get(case, {})
    if case == "confidence":
        table = with_confidence(table)
    units, rng = UNITS[component], np.random.default_rng(0)
    env = conditioned(table, units, 3.0, episode_length=table.n_rows, **kwargs)
    for weight in (0.0, 0.37, 1.0, 2.2, 3.0):
        plain = AudioBudgetEnv(table, episode_length=table.n_rows, alpha=weight * units[0],
                               gamma=weight * units[1], **kwargs)
        for _ in range(2):
            order = rng.permutation(table.n_rows)
            env.reset(options={"order": order, "weight": weight})
            plain.reset(options={"order": order})
            forced = 0
            for action in rng.integers(0, table.n_actions, size=table.n_rows):
                _, reward, done, _, info = env.step(action)
                _, expected, plain_done, _, plain_info = plain.step(action)
                assert reward == expected and done == plain_done, (weight, info)
                assert info["action_taken"] == plain_info["action_taken"] and info["weight"] == weight
                forced += info["budget_forced"]
            assert done
            assert (forced > 0) == (case == "budget")


def test_the_reward_uses_the_inner_scale_and_the_charged_costs() -> None:
    """By hand: score - w * (alpha_unit * gflops / scale.gflops + gamma_unit * latency / scale.latency_ms)."""
    table = with_confidence(random_table(n=20, seed=4))
    env = conditioned(table, (0.5, 2.0), 2.0, confidence=True, episode_length=4)
    env.reset(options={"order": [0, 1], "weight": 1.5})
    gflops, latency = table.charged_costs(confidence=True)
    scale = env.env.scale
    _, reward, _, _, info = env.step(2)
    expected = table.score[0, 2] - 1.5 * (0.5 * gflops[0, 2] / scale.gflops + 2.0 * latency[0, 2] / scale.latency_ms)
    assert reward == pytest.approx(float(expected), rel=1e-6)
    assert info["gflops"] == pytest.approx(float(gflops[0, 2])) and gflops[0, 2] > table.gflops[0, 2]


def test_only_a_cost_free_inner_env_with_a_unit_is_wrapped() -> None:
    table = random_table()
    with pytest.raises(ValueError, match="inner env has alpha 0.1 and gamma 0.0; expected 0 and 0"):
        WeightConditioned(AudioBudgetEnv(table, alpha=0.1), (1.0, 0.0), 1.0)
    with pytest.raises(ValueError, match=r"units are \(0, 0\)"):
        conditioned(table, (0.0, 0.0))
    with pytest.raises(ValueError, match="weight_max is 0; expected a finite number > 0"):
        conditioned(table, (1.0, 0.0), 0)
