"""`stage_b-train` on toy outcome tables: PPO finds the dominant action, saves and reloads, rejects bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3 import PPO

from envs.outcome_table import OutcomeTable
from stage_b.evaluate import choose, evaluate_policy
from stage_b.evaluate import main as eval_main
from stage_b.train import PolicyConfig, main, train_policy


@pytest.fixture
def dominant_table(tmp_path: Path) -> Path:
    """Action 2 (k=8) is the only correct one, and every action costs the same."""
    n, rng = 60, np.random.default_rng(0)
    score = np.zeros((n, 4), np.float32)
    score[:, 2] = 1.0
    table = OutcomeTable(ids=np.array([f"q{i}" for i in range(n)]), family=np.array(["audio"] * n),
                         qtype=np.array(["kind"] * n), actions=np.array([0, 4, 8, 16]), score=score,
                         gflops=np.ones((n, 4), np.float32), latency_ms=np.ones((n, 4), np.float32),
                         features=rng.normal(size=(n, 5)).astype(np.float32), provenance={"split": "toy"})
    return table.save(tmp_path / "toy.npz")


def test_ppo_learns_the_dominant_action_and_reloads_identically(dominant_table: Path, tmp_path: Path) -> None:
    record = train_policy(PolicyConfig(str(dominant_table), alpha=0.1, timesteps=4096, n_envs=2, eval_every=2048),
                          tmp_path / "policy", tensorboard=False)
    assert (tmp_path / "policy" / "policy.zip").is_file() and (tmp_path / "policy" / "best" / "best_model.zip").is_file()
    saved = json.loads((tmp_path / "policy" / "policy.json").read_text())
    assert saved["config"]["alpha"] == 0.1 and saved["table_provenance"] == {"split": "toy"}
    assert record["train_rows"] == 42 and len(record["test_rows"]) == 18  # 30% held out
    table, rows = OutcomeTable.load(dominant_table), np.arange(60)
    actions = choose(PPO.load(tmp_path / "policy" / "policy.zip", device="cpu"), table, rows)
    assert (actions == 2).mean() >= 0.9
    again = choose(PPO.load(tmp_path / "policy" / "policy.zip", device="cpu"), table, rows)
    assert np.array_equal(actions, again)
    result = evaluate_policy(tmp_path / "policy")  # stage_b-eval: held-out rows only
    assert result["n"] == 18 and result["accuracy"]["mean"] >= 0.9 and result["audio_rate"] >= 0.9
    assert set(result["actions"]) == {"audio", "audio.kind"} and sum(result["actions"]["audio"].values()) == 18
    assert eval_main(["--policy", str(tmp_path / "policy"), "--json"]) == 0
    with pytest.raises(FileNotFoundError, match="written by stage_b-train"):
        evaluate_policy(tmp_path)


@pytest.mark.parametrize("flag,value", [("--alpha", "-0.1"), ("--gamma", "nan")])
def test_invalid_reward_weights_exit_2(dominant_table: Path, flag: str, value: str,
                                       capsys: pytest.CaptureFixture) -> None:
    assert main(["--table", str(dominant_table), flag, value]) == 2
    assert f"{flag} is" in capsys.readouterr().err


def test_missing_table_says_how_to_build_one(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="stage_b-outcomes"):
        main(["--table", str(tmp_path / "none.npz"), "--timesteps", "10", "--out", str(tmp_path / "p")])
