"""`stage_b-eval` and `stage_b-live` compare the outcome table's provenance with the policy's, and name broken files."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from envs.audio_budget import AudioBudgetEnv
from envs.outcome_table import OutcomeTable
from envs.reward_scale import RewardScale
from stage_b.actor import ACTOR_FILE
from stage_b.evaluate import SavedPolicy
from stage_b.evaluate import main as eval_main
from stage_b.live import main as live_main
from stage_b.train import PolicyConfig, train_policy


def toy_table(checkpoint_hash: str, seed: int = 0) -> OutcomeTable:
    """60 questions, 4 actions, 3 timed repeats per cell; the provenance names the Stage A checkpoint the outcomes
    were measured with."""
    n, rng = 60, np.random.default_rng(seed)
    repeats = ((1 + 9 * rng.random((n, 4, 3))) * np.array([1, 4, 5, 6])[:, None]).astype(np.float32)
    return OutcomeTable(ids=np.array([f"q{i}" for i in range(n)]), family=np.array(["audio"] * n),
                        qtype=np.array(["kind"] * n), actions=np.array([0, 4, 8, 16]),
                        score=rng.random((n, 4)).astype(np.float32), gflops=1 + rng.random((n, 4)).astype(np.float32),
                        latency_ms=np.median(repeats, axis=2), latency_repeats_ms=repeats,
                        features=rng.normal(size=(n, 3)).astype(np.float32),
                        provenance={"split": "toy", "checkpoint_hash": checkpoint_hash})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A policy trained on outcomes of checkpoint aaaa (its table at toy/outcomes_toy.npz)."""
    root = tmp_path_factory.mktemp("evaluate")
    table = toy_table("aaaa").save(root / "toy" / "outcomes_toy.npz")
    train_policy(PolicyConfig(str(table), timesteps=512, n_envs=2, eval_every=512), root / "policy", tensorboard=False)
    return root


@pytest.fixture
def root(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained folders whose policy.json points at the copy's table."""
    root = shutil.copytree(trained, tmp_path / "copy")
    record = json.loads((root / "policy" / "policy.json").read_text())
    record["config"]["table"] = str(root / "toy" / "outcomes_toy.npz")
    (root / "policy" / "policy.json").write_text(json.dumps(record))
    return root


def _err_line(capsys: pytest.CaptureFixture, prog: str) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"{prog}:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_training_table_replaced_by_another_checkpoints_is_refused(root: Path, capsys: pytest.CaptureFixture,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    policy, table = root / "policy", root / "toy" / "outcomes_toy.npz"
    assert eval_main(["--policy", str(policy), "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    toy_table("bbbb", seed=1).save(table)  # same shapes and ids, outcomes of another Stage A checkpoint
    assert eval_main(["--policy", str(policy)]) == 2
    line = _err_line(capsys, "stage_b-eval")
    assert line.startswith(f"stage_b-eval: {table} holds outcomes of Stage A checkpoint bbbb, but policy {policy} was "
                           "trained on outcomes of checkpoint aaaa;") and "--allow-other-table" in line
    with caplog.at_level(logging.WARNING, logger="stage_b.evaluate"):
        assert eval_main(["--policy", str(policy), "--json", "--allow-other-table"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] != same["accuracy"]
    assert any("checkpoint bbbb" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_another_split_of_another_checkpoint_is_refused(root: Path, capsys: pytest.CaptureFixture) -> None:
    policy, other = root / "policy", root / "toy" / "outcomes_val.npz"
    table = toy_table("bbbb", seed=1)
    table.provenance["split"] = "val"
    table.save(other)
    assert eval_main(["--policy", str(policy), "--split", "val"]) == 2
    assert _err_line(capsys, "stage_b-eval").startswith(f"stage_b-eval: {other} holds outcomes of Stage A checkpoint "
                                                        "bbbb")
    assert eval_main(["--policy", str(policy), "--split", "val", "--allow-other-table"]) == 0
    table.provenance["checkpoint_hash"] = "aaaa"
    table.save(other)
    assert eval_main(["--policy", str(policy), "--split", "val"]) == 0


def test_live_mode_refuses_another_checkpoints_table_before_loading_safe(root: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """The toy table records no preset or checkpoint folder: had SAFE been built first, this would be exit 3."""
    toy_table("bbbb").save(root / "toy" / "outcomes_toy.npz")
    assert live_main(["--policy", str(root / "policy")]) == 2
    assert "holds outcomes of Stage A checkpoint bbbb" in _err_line(capsys, "stage_b-live")


def test_live_mode_refuses_a_weight_conditioned_policy_by_name(root: Path, capsys: pytest.CaptureFixture) -> None:
    train_policy(PolicyConfig(str(root / "toy" / "outcomes_toy.npz"), weight_max=2.0, timesteps=64, n_envs=1,
                              eval_every=64), root / "conditioned", tensorboard=False)
    assert live_main(["--policy", str(root / "conditioned")]) == 2
    line = _err_line(capsys, "stage_b-live")
    assert f"{root / 'conditioned'} is a weight-conditioned policy (weight_max 2)" in line
    assert "expected a policy trained without --weight-max" in line


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_policy_files_are_named(root: Path, damage: str, capsys: pytest.CaptureFixture) -> None:
    """policy.json, and an old zip-only folder's policy.zip (loaded with --trust-pickle)."""
    policy = root / "policy"
    record = json.loads((policy / "policy.json").read_text())
    del record["actor"]
    (policy / ACTOR_FILE).unlink()
    (policy / "policy.json").write_text(json.dumps(record))
    for name in ("policy.zip", "policy.json"):
        content = (policy / name).read_bytes()
        (policy / name).write_bytes(content[: len(content) // 2] if damage == "truncated" else b"")
        assert eval_main(["--policy", str(policy), "--trust-pickle"]) == 2
        assert _err_line(capsys, "stage_b-eval").startswith(f"stage_b-eval: {policy / name}: not a readable ")


def test_eval_reports_latency_percentiles_over_the_timed_repeats(root: Path, capsys: pytest.CaptureFixture) -> None:
    policy = SavedPolicy.load(root / "policy")
    table, rows = policy.evaluation_rows()
    actions = policy.play(table, rows)["action"]
    assert eval_main(["--policy", str(root / "policy"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    pooled = table.latency_repeats_ms[rows, actions]  # (questions, repeats): every repeat is one sample
    assert result["latency_source"] == "repeats" and pooled.shape == (len(rows), 3)
    assert result["latency_p50_ms"] == pytest.approx(np.percentile(pooled, 50), rel=1e-6)
    assert result["latency_p95_ms"] == pytest.approx(np.percentile(pooled, 95), rel=1e-6)
    assert result["latency_p95_ms"] != pytest.approx(np.percentile(table.latency_ms[rows, actions], 95))
    assert eval_main(["--policy", str(root / "policy")]) == 0
    assert f"p95 {result['latency_p95_ms']:.2f} ms (over questions x timed repeats)" in capsys.readouterr().out


def test_evaluation_rewards_with_the_training_scale(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The scale fitted on the training rows (not the validation or test rows) is saved, in best/ too, and reused:
    the held-out env of the final and of the best policy rewards exactly as training did."""
    policy = SavedPolicy.load(root / "policy")
    table, held_out = policy.evaluation_rows()
    rows = policy.config.rows(table)
    recorded = json.loads((root / "policy" / "policy.json").read_text())["reward_scale"]
    assert recorded == RewardScale.fit(table, rows.train).to_json() != RewardScale.fit(table, held_out).to_json()
    assert recorded != RewardScale.fit(table, np.concatenate([rows.train, rows.val])).to_json()
    training_env = AudioBudgetEnv(table, rows=rows.train, **policy.config.env_kwargs())
    best = SavedPolicy.load(root / "policy" / "best")
    assert best.scale == policy.scale == RewardScale.from_json(recorded)
    for saved in (policy, best):
        steps = saved.play(table, held_out)
        expected = training_env.reward(*(column[steps["row"], steps["action"]].astype(np.float64)  # as the env does
                                         for column in (table.score, table.gflops, table.latency_ms)))
        np.testing.assert_array_equal(steps["reward"], expected)
    record = json.loads((root / "policy" / "policy.json").read_text())
    del record["reward_scale"]  # a policy saved before scales were recorded divided by the table's maxima
    (root / "policy" / "policy.json").write_text(json.dumps(record))
    with caplog.at_level(logging.INFO, logger="stage_b.evaluate"):
        old = SavedPolicy.load(root / "policy").env(table, held_out)
    assert old.scale == RewardScale(float(table.gflops.max()), float(table.latency_ms.max()))
    assert "records no reward_scale" in caplog.text
    record["reward_scale"] = {"gflops": -1.0, "latency_ms": 1.0}
    (root / "policy" / "policy.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=rf"^{root / 'policy' / 'policy.json'}: reward scale 'gflops' is -1.0"):
        SavedPolicy.load(root / "policy")
