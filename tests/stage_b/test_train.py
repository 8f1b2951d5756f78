"""`stage_b-train` on toy outcome tables: PPO finds the dominant action, saves and reloads, rejects bad input."""

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.outcome_table import OutcomeTable
from stage_b.evaluate import SavedPolicy, evaluate_policy
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


def test_ppo_learns_the_dominant_action_and_reloads_identically(dominant_table: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    record = train_policy(PolicyConfig(str(dominant_table), alpha=0.1, timesteps=4096, n_envs=2, eval_every=2048),
                          tmp_path / "policy", tensorboard=False)
    assert (tmp_path / "policy" / "policy.zip").is_file() and not list((tmp_path / "policy").rglob("best_model.zip"))
    saved = json.loads((tmp_path / "policy" / "policy.json").read_text())
    assert saved["config"]["alpha"] == 0.1 and saved["table_provenance"] == {"split": "toy"}
    assert saved["table_sha256"] == hashlib.sha256(dominant_table.read_bytes()).hexdigest()
    assert record["train_rows"] == 33 and len(record["val_rows"]) == 9 and len(record["test_rows"]) == 18
    table, rows = OutcomeTable.load(dominant_table), np.arange(60)
    steps = SavedPolicy.load(tmp_path / "policy").play(table, rows)
    assert np.array_equal(steps["row"], rows) and (steps["action"] == 2).mean() >= 0.9
    again = SavedPolicy.load(tmp_path / "policy").play(table, rows)
    assert all(np.array_equal(steps[key], again[key]) for key in steps)
    train_rows = np.setdiff1d(rows, record["test_rows"] + record["val_rows"])
    scaled = SavedPolicy.load(tmp_path / "policy").scaler(table.features[train_rows])
    np.testing.assert_allclose(scaled.mean(0), 0, atol=1e-5)  # the scaler is fitted on training rows only
    result = evaluate_policy(tmp_path / "policy")  # stage_b-eval: held-out rows only
    assert result["n"] == 18 and result["accuracy"]["mean"] >= 0.9 and result["audio_rate"] >= 0.9
    assert set(result["actions"]) == {"audio", "audio.kind"} and sum(result["actions"]["audio"].values()) == 18
    assert eval_main(["--policy", str(tmp_path / "policy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 18
    assert eval_main(["--policy", str(tmp_path / "policy")]) == 0
    printed = capsys.readouterr().out
    assert "18 questions (held-out rows of split toy)" in printed and "audio.kind" in printed
    with pytest.raises(FileNotFoundError, match="written by stage_b-train"):
        evaluate_policy(tmp_path)
    # --split: every row of outcomes_<split>.npz beside the training table, or a named error
    assert eval_main(["--policy", str(tmp_path / "policy"), "--split", "val"]) == 2
    table.provenance = {"split": "val"}
    table.save(dominant_table.parent / "outcomes_val.npz")
    other = evaluate_policy(tmp_path / "policy", "val")
    assert other["n"] == 60 and other["rows"] == "all" and other["split"] == "val"


def test_confidence_feature_is_observed_and_charged(dominant_table: Path, tmp_path: Path) -> None:
    table = OutcomeTable.load(dominant_table)
    table.confidence = np.linspace(0, 1, table.n_rows, dtype=np.float32)
    path = table.save(tmp_path / "with_confidence.npz")
    train_policy(PolicyConfig(str(path), confidence=True, timesteps=512, n_envs=2, eval_every=512),
                 tmp_path / "policy", tensorboard=False)
    policy = SavedPolicy.load(tmp_path / "policy")
    assert policy.confidence and policy.scaler.mean.shape == (table.features.shape[1] + 1,)
    result = evaluate_policy(tmp_path / "policy")
    # every action costs 1 GFLOP; with the base run bought first, audio actions cost 2 and action 0 stays 1
    assert result["gflops_per_query"] == pytest.approx(1 + result["audio_rate"])
    with pytest.raises(ValueError, match="no 'confidence' column"):
        train_policy(PolicyConfig(str(dominant_table), confidence=True, timesteps=64, n_envs=1),
                     tmp_path / "p2", tensorboard=False)


@pytest.mark.parametrize("flag, value, message", [
    ("--alpha", "-0.1", "--alpha is -0.1; expected a finite number >= 0"),
    ("--gamma", "nan", "--gamma is nan; expected a finite number >= 0"),
    ("--alpha", "inf", "--alpha is inf; expected a finite number >= 0"),
    ("--budget", "1.5", "--budget is 1.5; expected None or a finite number > 0 and <= 1"),
    ("--budget", "0", "--budget is 0.0; expected None or a finite number > 0 and <= 1"),
    ("--budget", "nan", "--budget is nan; expected None or a finite number > 0 and <= 1"),
    ("--episode-length", "0", "--episode-length is 0; expected an integer >= 1"),
    ("--timesteps", "0", "--timesteps is 0; expected an integer >= 1"),
    ("--n-envs", "-2", "--n-envs is -2; expected an integer >= 1"),
    ("--seed", "-1", "--seed is -1; expected an integer >= 0"),
    ("--weight-max", "-1", "--weight-max is -1.0; expected None or a finite number > 0"),
    ("--weight-max", "inf", "--weight-max is inf; expected None or a finite number > 0"),
    ("--weight-draw", "cubed", "--weight-draw is 'cubed'; expected one of ['uniform', 'squared']"),
])
def test_invalid_numbers_exit_2_before_the_table_is_read(tmp_path: Path, flag: str, value: str, message: str,
                                                         capsys: pytest.CaptureFixture) -> None:
    # the table does not exist: reading it first would name it instead
    assert main(["--table", str(tmp_path / "none.npz"), "--out", str(tmp_path / "p"), flag, value]) == 2
    assert capsys.readouterr().err == f"stage_b-train: {message}\n"
    assert not (tmp_path / "p").exists()


def test_weight_max_without_a_unit_exits_2_before_the_table_is_read(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    assert main(["--table", str(tmp_path / "none.npz"), "--out", str(tmp_path / "p"), "--weight-max", "2",
                 "--alpha", "0"]) == 2
    assert capsys.readouterr().err == ("stage_b-train: --weight-max 2.0 with --alpha 0 and --gamma 0: the weight would "
                                       "multiply no cost; expected a nonzero --alpha or --gamma unit\n")
    assert not (tmp_path / "p").exists()


def test_missing_table_says_how_to_build_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--table", str(tmp_path / "none.npz"), "--timesteps", "10", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "none.npz does not exist" in err and "stage_b-outcomes --checkpoint" in err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_a_damaged_table_exits_2_naming_it(dominant_table: Path, tmp_path: Path, damage: str,
                                           capsys: pytest.CaptureFixture) -> None:
    content = dominant_table.read_bytes()
    dominant_table.write_bytes({"truncated": content[: len(content) // 2], "empty": b"", "text": b"a,b\n1,2\n"}[damage])
    assert main(["--table", str(dominant_table), "--timesteps", "10", "--out", str(tmp_path / "p")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("stage_b-train:")]
    assert len(lines) == 1 and lines[0].startswith(f"stage_b-train: {dominant_table}: not a readable .npz file ("), lines
    assert "expected an outcome table" in lines[0] and not (tmp_path / "p").exists()


def test_tensorboard_and_offline_wandb_logging(dominant_table: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """--wandb goes through SB3's integration; offline without a key, so the run is written locally."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "policy"
    assert main(["--table", str(dominant_table), "--timesteps", "512", "--n-envs", "2", "--episode-length", "8",
                 "--out", str(out), "--wandb"]) == 0
    assert list((out / "tb").rglob("events.out.tfevents.*"))
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert json.loads((out / "policy.json").read_text())["config"]["episode_length"] == 8


def test_evaluation_plays_the_policy_under_its_budget(dominant_table: Path, tmp_path: Path) -> None:
    """Every action costs 1 GFLOP; a 0.3 budget over the 18 held-out questions (one episode) allows 5.4 GFLOPs,
    so whatever the policy asks for, at most 5 questions get audio and the rest are forced to no audio."""
    train_policy(PolicyConfig(str(dominant_table), budget=0.3, timesteps=512, n_envs=2, eval_every=512),
                 tmp_path / "policy", tensorboard=False)
    result = evaluate_policy(tmp_path / "policy")
    assert result["n"] == 18 and result["audio_rate"] <= 5 / 18 and result["accuracy"]["mean"] <= 5 / 18


@pytest.fixture
def tradeoff_table(tmp_path: Path) -> Path:
    """Visual questions need no audio, the others need it; audio costs 4-6 GFLOPs against 1 (the reward scale is 6),
    so audio pays on an audio question while w * (4 - 1) / 6 < 1: for weights below 2."""
    n, rng = 90, np.random.default_rng(0)
    family = np.array(["visual", "audio", "audio_visual"])[np.arange(n) % 3]
    score = np.ones((n, 4), np.float32)
    score[family != "visual", 0] = 0.0
    gflops = np.tile(np.array([1.0, 4.0, 5.0, 6.0], np.float32), (n, 1))
    table = OutcomeTable(ids=np.array([f"q{i}" for i in range(n)]), family=family, qtype=np.array(["kind"] * n),
                         actions=np.array([0, 4, 8, 16]), score=score, gflops=gflops, latency_ms=10 * gflops,
                         features=np.column_stack([family == "visual", rng.normal(size=n)]).astype(np.float32),
                         provenance={"split": "toy"})
    return table.save(tmp_path / "tradeoff.npz")


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """PPO's small MLP gains nothing from a second thread, and on a busy machine spinning threads make a 3 s run last
    over a minute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_weight_conditioned_policy_follows_the_weight_it_is_shown(tradeoff_table: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """One policy, weights drawn uniformly per episode (squared draws reach w > 3 in 13 % of episodes, too few for
    this short run): audio on the audio questions at w = 0, none at w = 4; selected on
    the validation rows at 5 fixed weights; saved, reloaded and played at a weight by stage_b-eval."""
    out = tmp_path / "conditioned"
    record = train_policy(PolicyConfig(str(tradeoff_table), alpha=1.0, weight_max=4.0, timesteps=16_384, n_envs=2,
                                       eval_every=2048, weight_draw="uniform"), out, tensorboard=False)
    saved = json.loads((out / "policy.json").read_text())
    assert saved["conditioned"] is True and saved["config"]["weight_max"] == 4.0 == record["config"]["weight_max"]
    selection = saved["selection"]
    assert selection["weights"] == [0.0, 1.0, 2.0, 3.0, 4.0] and len(selection["evaluations"]) == 8
    assert selection["best"] in selection["evaluations"]
    policy = SavedPolicy.load(out)
    assert policy.model.observation_space.shape == (2 + 2 + 1,)  # features, budget, episode left, weight
    free, costly = evaluate_policy(out, weight=0.0), evaluate_policy(out, weight=4.0)
    assert free["accuracy"]["mean"] >= 0.9 and free["audio_rate"] >= 0.6, free
    assert costly["audio_rate"] <= 0.1 and costly["alpha"] == 4.0 and costly["gamma"] == 0.0, costly
    assert costly["weight"] == 4.0 and costly["weight_max"] == 4.0
    table, rows = OutcomeTable.load(tradeoff_table), np.asarray(record["test_rows"])
    steps = policy.play(table, rows, weight=4.0)
    assert np.array_equal(steps["action"], policy.play(table, rows, weight=4.0)["action"])
    assert eval_main(["--policy", str(out), "--weight", "0.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["alpha"] == 0.5
    assert eval_main(["--policy", str(out), "--weight", "2"]) == 0
    assert "(alpha 2, gamma 0, weight 2 of [0, 4])" in capsys.readouterr().out


@pytest.mark.parametrize("weight, message", [
    (None, "is a weight-conditioned policy (weight_max 4); expected --weight w in [0, 4]"),
    ("4.5", "--weight is 4.5; expected a finite number >= 0 and <= 4"),
    ("nan", "--weight is nan; expected"),
])
def test_eval_of_a_conditioned_policy_needs_a_weight_in_range(tradeoff_table: Path, tmp_path: Path,
                                                              weight: str | None, message: str,
                                                              capsys: pytest.CaptureFixture) -> None:
    train_policy(PolicyConfig(str(tradeoff_table), weight_max=4.0, timesteps=64, n_envs=1, eval_every=64),
                 tmp_path / "p", tensorboard=False)
    assert eval_main(["--policy", str(tmp_path / "p"), *(["--weight", weight] if weight else [])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stage_b-eval: ") and message in err, err


def test_eval_of_an_ordinary_policy_refuses_a_weight(tradeoff_table: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    train_policy(PolicyConfig(str(tradeoff_table), timesteps=64, n_envs=1, eval_every=64), tmp_path / "p",
                 tensorboard=False)
    assert eval_main(["--policy", str(tmp_path / "p"), "--weight", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--weight 1.0 for" in err and "expected no --weight" in err, err


def test_stage_b_train_weight_max_takes_alpha_and_gamma_as_units(tradeoff_table: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    """--weight-max alone: the compute unit (1, 0); with a budget the inner env charges it as for any policy."""
    out = tmp_path / "p"
    assert main(["--table", str(tradeoff_table), "--weight-max", "3", "--timesteps", "256", "--n-envs", "1",
                 "--budget", "0.5", "--out", str(out), "--no-tensorboard"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["conditioned"] is True
    assert {k: printed["config"][k] for k in ("alpha", "gamma", "weight_max", "budget")} == {
        "alpha": 1.0, "gamma": 0.0, "weight_max": 3.0, "budget": 0.5}
    result = evaluate_policy(out, weight=3.0)
    assert result["alpha"] == 3.0 and result["n"] == 27
    assert main(["--table", str(tradeoff_table), "--weight-max", "3", "--gamma", "2", "--alpha", "0", "--timesteps",
                 "64", "--n-envs", "1", "--out", str(tmp_path / "g"), "--no-tensorboard"]) == 0
    config = json.loads(capsys.readouterr().out)["config"]
    assert (config["alpha"], config["gamma"]) == (0.0, 2.0)
