"""`SAFE/AudioBudget-v0` in table mode: API checkers, reward arithmetic, seeding, budget, oracle, PPO.

Every table here is tiny and hand-made, written with `OutcomeTable.save` and loaded back, so the
file format is exercised on each test as well as the environment.
"""

import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.env_util import make_vec_env

import envs
from envs.audio_budget import AudioBudgetEnv
from envs.outcome_table import OPTIONAL_KEYS, OutcomeTable
from envs.reward_scale import RewardScale


def make_table(score, gflops, latency, actions=None, dim: int = 3, seed: int = 0) -> OutcomeTable:
    """A table from (N, A) lists, with random features and cycling families."""
    score = np.asarray(score, dtype=np.float32)
    n, a = score.shape
    families = np.array(["visual", "audio", "audio_visual"])[np.arange(n) % 3]
    return OutcomeTable(ids=np.array([f"q{i}" for i in range(n)]), family=families,
                        qtype=np.array(["color"] * n), actions=np.array(actions or [0, 4, 8, 16][:a], dtype=np.int64),
                        score=score, gflops=np.asarray(gflops, dtype=np.float32),
                        latency_ms=np.asarray(latency, dtype=np.float32),
                        features=np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32),
                        provenance={"checkpoint_hash": "test", "split": "test", "actions": actions or [0, 4, 8, 16][:a]})


def random_table(n: int = 40, a: int = 4, seed: int = 0) -> OutcomeTable:
    rng = np.random.default_rng(seed)
    return make_table(rng.random((n, a)), 1 + rng.random((n, a)) * np.arange(1, a + 1),
                      5 + rng.random((n, a)) * np.arange(1, a + 1), seed=seed)


def saved(table: OutcomeTable, tmp_path: Path, name: str = "outcomes.npz") -> Path:
    """Round-trip the table through the file: save, load, and check nothing changed."""
    path = table.save(tmp_path / name)
    loaded = OutcomeTable.load(path)
    for key in ("ids", "family", "qtype", "actions", "score", "gflops", "latency_ms", "features"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(table, key))
    assert loaded.provenance == table.provenance
    return path


@pytest.fixture
def table_path(tmp_path: Path) -> Path:
    return saved(random_table(), tmp_path)


@pytest.mark.filterwarnings("ignore:.*Box observation space (minimum|maximum) value is:UserWarning")
def test_checkers_pass(table_path: Path) -> None:
    """Unbounded features are by design (they are whatever the table holds), hence the Box warnings."""
    env = gym.make("SAFE/AudioBudget-v0", table=table_path, episode_length=8, budget=0.5)
    gym_check_env(env.unwrapped)
    sb3_check_env(env.unwrapped)
    sb3_check_env(AudioBudgetEnv(table_path, episode_length=8))


def test_gymnasium_make(table_path: Path) -> None:
    assert envs.ENV_ID == "SAFE/AudioBudget-v0"
    env = gym.make("SAFE/AudioBudget-v0", table=table_path, episode_length=4)
    obs, _ = env.reset(seed=1)
    assert obs.shape == (3 + 2,) and obs.dtype == np.float32
    assert isinstance(env.unwrapped, AudioBudgetEnv)
    assert env.action_space == gym.spaces.Discrete(4)


def test_reward_arithmetic(tmp_path: Path) -> None:
    table = make_table(score=[[0.0, 1.0, 1.0], [0.3, 0.6, 1.0]], gflops=[[1, 2, 4], [1, 2, 8]],
                       latency=[[10, 20, 40], [10, 20, 20]])
    # Scales: the largest per-action median over the rows, gflops max(1, 2, 6) = 6 and latency max(10, 20, 30) = 30
    # (not the maxima 8 and 40); reward = score - 0.5 * g / 6 - 0.25 * l / 30
    expected = {0: [-1 / 6, 2 / 3, 1 / 3], 1: [0.3 - 1 / 6, 0.6 - 1 / 3, 1 / 6]}
    env = AudioBudgetEnv(saved(table, tmp_path), episode_length=2, alpha=0.5, gamma=0.25)
    assert (env.scale.gflops, env.scale.latency_ms, env.max_gflops) == (6.0, 30.0, 8.0)  # the budget keeps the max
    for action in range(3):
        env.reset(seed=action)
        for _ in range(2):
            _, reward, _, _, info = env.step(action)
            assert reward == pytest.approx(expected[info["row"]][action], abs=1e-6)
            assert info["action_taken"] == action and info["k"] == [0, 4, 8][action]
            assert info["gflops"] == table.gflops[info["row"], action]
            assert info["latency_ms"] == table.latency_ms[info["row"], action]
            assert info["score"] == pytest.approx(table.score[info["row"], action])
            assert info["budget_forced"] is False


def test_episode_structure(table_path: Path) -> None:
    env = AudioBudgetEnv(table_path, episode_length=5, rows=np.array([3, 7, 9]))
    obs, _ = env.reset(seed=0)
    assert obs[-2] == 1.0 and obs[-1] == 1.0
    seen, flags = [], []
    for _ in range(5):
        obs, _, terminated, truncated, info = env.step(env.action_space.sample())
        seen.append(info["row"])
        flags.append(terminated)
        assert truncated is False
    assert flags == [False] * 4 + [True]
    assert set(seen) <= {3, 7, 9}  # fewer rows than the episode: drawn with replacement
    assert obs[-1] == 0.0
    env = AudioBudgetEnv(table_path, episode_length=40)
    env.reset(seed=0)
    assert len({env.step(0)[4]["row"] for _ in range(40)}) == 40  # without replacement


def run(env: AudioBudgetEnv, seed: int, actions: list[int]) -> tuple[list[np.ndarray], list[float], list[int]]:
    obs, _ = env.reset(seed=seed)
    observations, rewards, rows = [obs], [], []
    for action in actions:
        obs, reward, terminated, _, info = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        rows.append(info["row"])
        if terminated:
            observations.append(env.reset()[0])
    return observations, rewards, rows


def test_determinism(table_path: Path) -> None:
    actions = np.random.default_rng(0).integers(0, 4, size=50).tolist()
    first = run(AudioBudgetEnv(table_path, episode_length=16, budget=0.4), 7, actions)
    second = run(AudioBudgetEnv(table_path, episode_length=16, budget=0.4), 7, actions)
    other = run(AudioBudgetEnv(table_path, episode_length=16, budget=0.4), 8, actions)
    for a, b in zip(first[0], second[0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert first[1] == second[1] and first[2] == second[2]
    assert first[2] != other[2]
    seeded = AudioBudgetEnv(table_path, episode_length=16, seed=7)
    assert run(seeded, None, actions)[2] == first[2]  # constructor seed == reset seed


def test_budget_exhaustion(tmp_path: Path) -> None:
    n = 10
    table = make_table(score=[[0.0, 0.0, 0.0, 1.0]] * n, gflops=[[1, 2, 4, 8]] * n, latency=[[1, 1, 1, 1]] * n)
    # total budget = 0.3 * 8 steps * 8 GFLOPs = 19.2: two expensive answers fit, then action 0 only.
    env = AudioBudgetEnv(saved(table, tmp_path), episode_length=8, alpha=0.0, budget=0.3)
    obs, _ = env.reset(seed=0)
    budgets, taken, forced, scores = [obs[-2]], [], [], []
    for _ in range(8):
        obs, reward, _, _, info = env.step(3)
        budgets.append(obs[-2])
        taken.append(info["action_taken"])
        forced.append(info["budget_forced"])
        scores.append(reward)
    assert taken == [3, 3] + [0] * 6
    assert forced == [False, False] + [True] * 6
    assert scores == [1.0, 1.0] + [0.0] * 6
    expected = [19.2, 11.2, 3.2, 2.2, 1.2, 0.2, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(budgets, np.array(expected) / 19.2, atol=1e-6)
    assert all(b >= 0 for b in budgets) and all(x >= y for x, y in zip(budgets, budgets[1:]))
    assert env.reset(seed=0)[0][-2] == 1.0
    unlimited = AudioBudgetEnv(saved(table, tmp_path, "b.npz"), episode_length=8)
    unlimited.reset(seed=0)
    assert all(unlimited.step(3)[0][-2] == 1.0 for _ in range(8))


def test_oracle_is_cheapest_correct(tmp_path: Path) -> None:
    table = OutcomeTable.load(saved(make_table(
        score=[[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 2 / 3, 0, 1], [0, 1, 1, 1 / 3]],
        gflops=[[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [1, 5, 3, 4]],
        latency=[[1, 1, 1, 1]] * 5), tmp_path))
    oracle = table.oracle_actions()
    assert oracle.tolist() == [0, 2, 0, 1, 2]
    correct = table.score >= 0.5
    rows = np.arange(5)
    for row in rows:  # no action is correct more cheaply, and no correct answer is missed
        cheaper = table.gflops[row] < table.gflops[row, oracle[row]]
        assert not (correct[row] & cheaper).any()
    assert (correct[rows, oracle] == correct.any(axis=1)).all()


def test_subset_and_split(table_path: Path) -> None:
    table = OutcomeTable.load(table_path)
    train, test = table.split_rows(0.75, seed=3)
    assert len(train) == 30 and len(test) == 10 and not set(train) & set(test)
    assert table.split_rows(0.75, seed=3)[0].tolist() == train.tolist()
    part = table.subset(test)
    np.testing.assert_array_equal(part.score, table.score[test])
    assert part.ids.tolist() == table.ids[test].tolist()


def test_load_errors(tmp_path: Path) -> None:
    path = saved(random_table(), tmp_path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    np.savez(tmp_path / "no_score.npz", **{k: v for k, v in arrays.items() if k != "score"})
    with pytest.raises(ValueError, match=r"no_score\.npz.*'score'.*stage_b-outcomes"):
        OutcomeTable.load(tmp_path / "no_score.npz")
    np.savez(tmp_path / "shape.npz", **{**arrays, "gflops": arrays["gflops"][:, :3]})
    with pytest.raises(ValueError, match=r"'gflops' has shape \(40, 3\), expected \(40, 4\)"):
        OutcomeTable.load(tmp_path / "shape.npz")
    bad = arrays["latency_ms"].copy()
    bad[2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", **{**arrays, "latency_ms": bad})
    with pytest.raises(ValueError, match=r"'latency_ms'\[2, 1\] = nan"):
        OutcomeTable.load(tmp_path / "nan.npz")
    np.savez(tmp_path / "range.npz", **{**arrays, "score": arrays["score"] + 1.5})
    with pytest.raises(ValueError, match=r"'score'.*expected in \[0.0, 1.0\]"):
        OutcomeTable.load(tmp_path / "range.npz")
    np.savez(tmp_path / "actions.npz", **{**arrays, "actions": np.array([4, 8, 16, 32])})
    with pytest.raises(ValueError, match=r"'actions'\[0\] = 4, expected 0"):
        OutcomeTable.load(tmp_path / "actions.npz")
    with pytest.raises(ValueError, match="stage_b-outcomes"):
        AudioBudgetEnv(tmp_path / "missing.npz")
    for name, tokens in (("negative", np.array([3, -1] * 20)), ("float", np.full(40, 3.0)), ("short", np.ones(39, int))):
        np.savez(tmp_path / f"{name}.npz", **{**arrays, "text_tokens": tokens})
        with pytest.raises(ValueError, match=r"'text_tokens' has shape .*; expected \(40,\) integers >= 0"):
            OutcomeTable.load(tmp_path / f"{name}.npz")


def test_text_tokens_are_optional_and_round_trip(tmp_path: Path) -> None:
    table = random_table()
    assert OutcomeTable.load(saved(table, tmp_path)).text_tokens is None
    table.text_tokens = np.arange(40, dtype=np.int32) % 7 + 9
    loaded = OutcomeTable.load(saved(table, tmp_path, "with_tokens.npz"))
    assert loaded.text_tokens.dtype == np.int64 and loaded.text_tokens.tolist() == table.text_tokens.tolist()
    assert loaded.subset(np.array([5, 1])).text_tokens.tolist() == [14, 10]


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": -0.1}, "alpha is -0.1"), ({"gamma": float("nan")}, "gamma is nan"),
    ({"alpha": float("inf")}, "alpha is inf"), ({"episode_length": 0}, "episode_length is 0"),
    ({"budget": 0.0}, "budget is 0.0"), ({"budget": 1.5}, r"budget is 1.5; expected None or a finite number > 0 and <= 1"),
    ({"budget": float("nan")}, "budget is nan"), ({"episode_length": 2.0}, "episode_length is 2.0"),
    ({"rows": np.array([0, 99])}, "rows span"),
])
def test_bad_arguments(table_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AudioBudgetEnv(table_path, **kwargs)


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_a_damaged_table_file_is_named(table_path: Path, damage: str) -> None:
    content = table_path.read_bytes()
    table_path.write_bytes({"truncated": content[: len(content) // 2], "empty": b"", "text": b"id,score\nq0,1\n"}[damage])
    with pytest.raises(ValueError) as err:
        OutcomeTable.load(table_path)
    message = str(err.value)
    assert message.startswith(f"{table_path}: not a readable .npz file (") and "expected an outcome table" in message
    assert {"truncated": "truncated or corrupt", "empty": "empty file (0 bytes)",
            "text": "not a zip archive"}[damage] in message and "pickle" not in message


@pytest.mark.parametrize("action", [4, -1, 1.7, 1.0, "1", True, np.float64(1.0), np.array(1.0), np.array([1]), None])
def test_bad_action(table_path: Path, action: object) -> None:
    env = AudioBudgetEnv(table_path)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=rf"^action is {re.escape(repr(action))}; expected an integer in \[0, 4\)$"):
        env.step(action)


@pytest.mark.parametrize("action", [2, np.int64(2), np.int32(2), np.array(2), np.array(2, dtype=np.uint8)])
def test_integer_actions_as_python_numpy_or_sb3_pass_them(table_path: Path, action: object) -> None:
    env = AudioBudgetEnv(table_path)
    env.reset(seed=0)
    assert env.step(action)[4]["action_taken"] == 2


@pytest.fixture(scope="module")
def dominant_ppo(tmp_path_factory: pytest.TempPathFactory) -> tuple[PPO, AudioBudgetEnv, np.ndarray]:
    """PPO trained ~3000 steps on a table where action 2 is the only correct one and costs are equal."""
    torch.set_num_threads(1)
    n = 16
    score = np.zeros((n, 4))
    score[:, 2] = 1.0
    path = saved(make_table(score, np.ones((n, 4)), np.ones((n, 4)), dim=4), tmp_path_factory.mktemp("ppo"))
    kwargs = {"table": path, "episode_length": 8, "alpha": 0.1, "gamma": 0.1}
    vec = make_vec_env(AudioBudgetEnv, n_envs=2, seed=0, env_kwargs=kwargs)
    model = PPO("MlpPolicy", vec, n_steps=64, batch_size=64, seed=0, device="cpu", verbose=0)
    model.learn(total_timesteps=3072)
    env = AudioBudgetEnv(**kwargs)
    obs = [env.reset(seed=100)[0]]
    for _ in range(63):
        step = env.step(env.action_space.sample())
        obs.append(step[0] if not step[2] else env.reset()[0])
    return model, env, np.stack(obs)


def test_ppo_learns_dominant_action(dominant_ppo: tuple[PPO, AudioBudgetEnv, np.ndarray]) -> None:
    model, _, obs = dominant_ppo
    actions, _ = model.predict(obs, deterministic=True)
    assert (actions == 2).mean() >= 0.9


def test_policy_save_load_round_trip(dominant_ppo: tuple[PPO, AudioBudgetEnv, np.ndarray], tmp_path: Path) -> None:
    model, _, obs = dominant_ppo
    model.save(tmp_path / "policy.zip")
    loaded = PPO.load(tmp_path / "policy.zip", device="cpu")
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])


def test_confidence_is_observed_and_charged(tmp_path: Path) -> None:
    table = random_table(n=12)
    with pytest.raises(ValueError, match="no 'confidence' column"):
        AudioBudgetEnv(table, confidence=True)
    table.confidence = np.linspace(0, 1, 12, dtype=np.float32)
    table = OutcomeTable.load(saved(table, tmp_path))
    env = AudioBudgetEnv(table, episode_length=4, confidence=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (table.features.shape[1] + 3,)
    for action in (0, 2):
        row = env._order[env._t]
        _, reward, _, _, info = env.step(action)
        extra = 0.0 if action == 0 else 1.0
        assert info["gflops"] == pytest.approx(table.gflops[row, action] + extra * table.gflops[row, 0])
        assert info["latency_ms"] == pytest.approx(table.latency_ms[row, action] + extra * table.latency_ms[row, 0])
        assert reward == pytest.approx(env.reward(info["score"], info["gflops"], info["latency_ms"]))
    assert env.max_gflops == pytest.approx(float((table.gflops[:, 1:] + table.gflops[:, :1]).max()))


def test_outcome_function_replaces_table_lookups(table_path: Path) -> None:
    """Live mode's interface: the env scores and charges what the outcome function returns."""
    calls = []

    def outcome(row: int, action: int) -> tuple[float, float, float]:
        calls.append((row, action))
        return 0.25, 1.5, 7.0

    env = AudioBudgetEnv(table_path, episode_length=3, alpha=0.2, gamma=0.3, outcome=outcome)
    env.reset(seed=1)
    row = env._order[0]
    _, reward, _, _, info = env.step(1)
    assert calls == [(row, 1)] and (info["score"], info["gflops"], info["latency_ms"]) == (0.25, 1.5, 7.0)
    assert reward == pytest.approx(0.25 - 0.2 * 1.5 / env.scale.gflops - 0.3 * 7.0 / env.scale.latency_ms)
    with pytest.raises(ValueError, match="live mode"):
        AudioBudgetEnv(table_path, outcome=outcome, confidence=True)


def test_reset_order_plays_exactly_those_rows(tmp_path: Path) -> None:
    table = make_table(score=[[0.0, 1.0]] * 4, gflops=[[1, 4]] * 4, latency=[[1, 1]] * 4)
    env = AudioBudgetEnv(table, episode_length=4, budget=0.5)  # an episode of L questions may spend 0.5 * L * 4
    obs, _ = env.reset(options={"order": [3, 1]})
    assert obs[-1] == 1.0
    first = env.step(1)
    assert first[4]["row"] == 3 and not first[4]["budget_forced"] and first[0][-1] == 0.5  # half the episode left
    second = env.step(1)  # 4 of the budget's 0.5 * 2 * 4 = 4 GFLOPs are spent: audio is replaced by no audio
    assert second[4]["row"] == 1 and second[4]["budget_forced"] and second[2]
    for bad, match in (([], "1 to 4"), ([0, 1, 2, 3, 0], "1 to 4"), ([4], r"spans \[4, 4\]"), ([0.5], "integer")):
        with pytest.raises(ValueError, match=match):
            env.reset(options={"order": bad})


def test_live_confidence_is_observed_in_place_of_the_table_column(tmp_path: Path) -> None:
    """Live mode with the confidence feature: the policy sees the value measured when the question is shown
    (scaled like the table's column), `info` reports it, and the outcome function's charge is what is paid, rewarded
    with the reward scale passed in (as a saved policy passes its own)."""
    table = random_table(n=12)
    table.confidence = np.linspace(0, 1, 12, dtype=np.float32)
    table = OutcomeTable.load(saved(table, tmp_path))
    shown, paid = [], []

    def live_confidence(row: int) -> float:
        shown.append(row)
        return 0.25 + row / 100

    def outcome(row: int, action: int) -> tuple[float, float, float]:
        paid.append((row, action))
        return 1.0, 3.0, 9.0

    kwargs = {"episode_length": 4, "confidence": True}
    tabled = AudioBudgetEnv(table, **kwargs)
    env = AudioBudgetEnv(table, scaler=tabled.scaler, outcome=outcome, live_confidence=live_confidence,
                         scale=RewardScale(2.0, 30.0), **kwargs)
    obs, _ = env.reset(options={"order": [5, 2, 9]})
    tabled_obs, _ = tabled.reset(options={"order": [5, 2, 9]})
    mean, std = tabled.scaler.mean[-1], tabled.scaler.std[-1]
    for step, row in enumerate([5, 2, 9]):
        assert shown == [5, 2, 9][:step + 1]  # measured once, when the question is shown, before the action
        assert obs[-3] == pytest.approx((0.25 + row / 100 - mean) / std, rel=1e-5)
        np.testing.assert_array_equal(obs[:-3], tabled_obs[:-3])  # the other features are the table's
        assert tabled_obs[-3] == pytest.approx((table.confidence[row] - mean) / std, rel=1e-5)
        obs, reward, done, _, info = env.step(1)
        tabled_obs, _, _, _, tabled_info = tabled.step(1)
        assert reward == pytest.approx(1.0 - 0.1 * 3.0 / 2.0)  # alpha 0.1, gamma 0: the scale's 2 GFLOPs
        assert info["confidence"] == pytest.approx(0.25 + row / 100) and paid[-1] == (row, 1)
        assert tabled_info["confidence"] == pytest.approx(table.confidence[row])
        assert (info["gflops"], info["latency_ms"]) == (3.0, 9.0)
    assert done and shown == [5, 2, 9]  # the terminal observation runs nothing
    for bad in ({"outcome": outcome}, {"live_confidence": live_confidence},
                {"outcome": outcome, "live_confidence": live_confidence, "confidence": False}):
        with pytest.raises(ValueError, match="expected it exactly in live mode with the confidence feature"):
            AudioBudgetEnv(table, **{"confidence": True, **bad})


def with_repeats(table: OutcomeTable, repeats: int = 5, seed: int = 0) -> OutcomeTable:
    """`table` with timed repeats scattered around its latency (whose median they then become)."""
    rng = np.random.default_rng(seed)
    samples = table.latency_ms[:, :, None] * (0.8 + 0.4 * rng.random((*table.latency_ms.shape, repeats)))
    table.latency_repeats_ms = samples.astype(np.float32)
    table.latency_ms = np.median(table.latency_repeats_ms, axis=2)
    return OutcomeTable(**{k: v for k, v in vars(table).items()})


def test_latency_repeats_are_saved_kept_and_charged_per_repeat(tmp_path: Path) -> None:
    table = with_repeats(random_table(n=12))
    table.confidence = np.linspace(0, 1, 12, dtype=np.float32)
    loaded = OutcomeTable.load(saved(table, tmp_path))
    np.testing.assert_array_equal(loaded.latency_repeats_ms, table.latency_repeats_ms)
    with np.load(tmp_path / "outcomes.npz", allow_pickle=False) as data:
        assert data["latency_repeats_ms"].dtype == np.float32 and data["latency_repeats_ms"].shape == (12, 4, 5)
    part = loaded.subset(np.array([3, 1]))
    np.testing.assert_array_equal(part.latency_repeats_ms, table.latency_repeats_ms[[3, 1]])
    charged = loaded.charged_latency_samples(confidence=True)
    np.testing.assert_allclose(charged[:, 2, 4], table.latency_repeats_ms[:, 2, 4] + table.latency_repeats_ms[:, 0, 4])
    np.testing.assert_array_equal(charged[:, 0], table.latency_repeats_ms[:, 0])
    older = random_table(n=12)  # no repeats: one sample per cell, the median column
    np.testing.assert_array_equal(older.charged_latency_samples()[:, :, 0], older.latency_ms)


@pytest.mark.parametrize("damage, match", [
    ("negative", r"'latency_repeats_ms'\[2, 1, 3\] = -1.0 \(1 bad values\), expected finite and > 0.0"),
    ("nan", r"'latency_repeats_ms'\[2, 1, 3\] = nan \(1 bad values\), expected finite and > 0.0"),
    ("shape", r"'latency_repeats_ms' has shape \(40, 3, 5\), expected \(40, 4, R\)"),
    ("median", (r"'latency_ms'\[2, 1\] = .* but the median of 'latency_repeats_ms'\[2, 1\] is .*expected "
                "latency_ms to be the median of its repeats")),
])
def test_bad_latency_repeats_are_named(tmp_path: Path, damage: str, match: str) -> None:
    path = saved(with_repeats(random_table()), tmp_path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    repeats, latency = arrays["latency_repeats_ms"].copy(), arrays["latency_ms"].copy()
    if damage == "shape":
        repeats = repeats[:, :3]
    elif damage == "median":
        latency[2, 1] *= 2
    else:
        repeats[2, 1, 3] = -1.0 if damage == "negative" else np.nan
    np.savez(tmp_path / "bad.npz", **{**arrays, "latency_repeats_ms": repeats, "latency_ms": latency})
    with pytest.raises(ValueError, match=rf"bad\.npz: {match}"):
        OutcomeTable.load(tmp_path / "bad.npz")


def test_one_latency_outlier_leaves_the_gamma_frontier_unchanged(tmp_path: Path) -> None:
    """One cell's latency x1000 moves neither the latency scale nor any other cell's reward, the latency-weighted
    oracle's choices on the other questions or the derived gamma grid; dividing by the maximum moves them all."""
    from stage_b.frontier import oracle_choice
    from stage_b.weight_grid import derive_grid, no_audio_weights

    table = random_table(n=60, seed=3)
    scale = RewardScale.fit(table, np.arange(60))
    latency = table.latency_ms.astype(np.float64)
    costliest = int(np.argmax(np.median(latency, axis=0)))
    weights = no_audio_weights(table.score, latency / scale.latency_ms)
    above = latency[:, costliest] > np.median(latency[:, costliest])
    # a slow no-audio answer (as the slow batch of the default table), and a slow costliest-action answer
    cells = [(int(np.flatnonzero(weights < weights.max())[0]), 0),
             (int(np.flatnonzero(above & (weights < weights.max()))[0]), costliest)]

    def gamma_view(table: OutcomeTable) -> tuple[RewardScale, np.ndarray, np.ndarray, list[float]]:
        env = AudioBudgetEnv(table, alpha=0.1, gamma=0.5)
        cost = table.latency_ms / env.scale.latency_ms
        grid = derive_grid(table.score, cost)["weights"]
        choices = np.stack([oracle_choice(table.score, cost, w) for w in [*grid, 0.2, 1.0, 3.0, 10.0]])
        return env.scale, env.reward(table.score.astype(np.float64), table.gflops, table.latency_ms), choices, grid

    clean = gamma_view(table)
    for row, action in cells:
        planted = OutcomeTable.load(saved(table, tmp_path))
        planted.latency_ms[row, action] *= 1000
        scale_after, reward, choices, grid = gamma_view(planted)
        other = np.ones_like(reward, dtype=bool)
        other[row, action] = False
        assert scale_after == clean[0], (row, action)
        np.testing.assert_array_equal(reward[other], clean[1][other])
        np.testing.assert_array_equal(np.delete(choices, row, axis=1), np.delete(clean[2], row, axis=1))
        assert grid == clean[3]
    for row, action in np.ndindex(*table.latency_ms.shape):  # anywhere: the scale moves by one order statistic at most
        planted = OutcomeTable(**{k: v for k, v in vars(table).items()})
        planted.latency_ms = table.latency_ms.copy()
        planted.latency_ms[row, action] *= 1000
        assert 1.0 <= RewardScale.fit(planted, np.arange(60)).latency_ms / scale.latency_ms < 1.1, (row, action)


def test_every_optional_column_together_is_saved_and_kept_by_subset(tmp_path: Path) -> None:
    """confidence, latency_repeats_ms and text_tokens in one table: each round-trips and follows subset's rows."""
    table = with_repeats(random_table(n=12))
    table.confidence = np.linspace(0.1, 0.9, 12, dtype=np.float32)
    table.text_tokens = np.arange(12) + 9
    loaded = OutcomeTable.load(saved(table, tmp_path))
    part = loaded.subset(np.array([7, 2]))
    for key in OPTIONAL_KEYS:
        np.testing.assert_array_equal(getattr(loaded, key), getattr(table, key), err_msg=key)
        np.testing.assert_array_equal(getattr(part, key), getattr(table, key)[[7, 2]], err_msg=key)

