"""Policies saved without pickle: identical actions to the trained PPO, old zip-only folders need --trust-pickle,
tampered or mismatched weights are refused by name."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load, load_file, save
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy

from envs.audio_budget import AudioBudgetEnv, FeatureScaler, observed_columns
from envs.outcome_table import OutcomeTable
from stage_b.actor import ACTOR_FILE
from stage_b.evaluate import PickleRefused, SavedPolicy, evaluate_policy
from stage_b.evaluate import main as eval_main
from stage_b.live import main as live_main
from stage_b.playback import play
from stage_b.train import PolicyConfig, train_policy


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(table, policy folder): the best action is k=4 when feature 0 is positive, k=16 otherwise."""
    root = tmp_path_factory.mktemp("actor")
    n, rng = 80, np.random.default_rng(0)
    features = rng.normal(size=(n, 5)).astype(np.float32)
    score = np.zeros((n, 4), np.float32)
    score[np.arange(n), np.where(features[:, 0] > 0, 1, 3)] = 1.0
    table = OutcomeTable(ids=np.array([f"q{i}" for i in range(n)]), family=np.array(["audio"] * n),
                         qtype=np.array(["kind"] * n), actions=np.array([0, 4, 8, 16]), score=score,
                         gflops=np.ones((n, 4), np.float32), latency_ms=np.ones((n, 4), np.float32),
                         features=features, provenance={"split": "toy"})
    path = table.save(root / "toy.npz")
    train_policy(PolicyConfig(str(path), timesteps=2048, n_envs=2, eval_every=2048), root / "policy", tensorboard=False)
    return path, root / "policy"


def old_folder(policy: Path, out: Path) -> Path:
    """A copy of `policy` as stage_b-train wrote it before policy.safetensors: policy.zip and policy.json only."""
    shutil.copytree(policy, out)
    (out / ACTOR_FILE).unlink()
    record = json.loads((out / "policy.json").read_text())
    del record["actor"]
    (out / "policy.json").write_text(json.dumps(record))
    return out


def test_pickle_free_policy_acts_exactly_as_the_trained_ppo(trained: tuple[Path, Path]) -> None:
    table_path, folder = trained
    reference = PPO.load(folder / "policy.zip", device="cpu")  # our own file, written by the fixture
    saved = SavedPolicy.load(folder)
    assert type(saved.model) is ActorCriticPolicy
    assert not [name for name in load_file(folder / ACTOR_FILE) if "value" in name]  # the critic is not saved
    json.loads((folder / "policy.json").read_text(), parse_constant=pytest.fail)  # strict JSON: no Infinity or NaN
    assert saved.model.observation_space == reference.observation_space
    obs = torch.as_tensor(np.random.default_rng(1).normal(scale=3.0, size=(2000, reference.observation_space.shape[0])),
                          dtype=torch.float32)
    with torch.no_grad():
        want = reference.policy.get_distribution(obs).distribution.probs
        got = saved.model.get_distribution(obs).distribution.probs
    assert torch.equal(got, want)
    actions = reference.predict(obs.numpy(), deterministic=True)[0]
    assert len(np.unique(actions)) > 1  # the comparison sees more than one action
    np.testing.assert_array_equal(saved.model.predict(obs.numpy(), deterministic=True)[0], actions)
    # through the env: the saved scaler is the one fitted on training rows, so play() matches the PPO model exactly
    table, rows = OutcomeTable.load(table_path), np.arange(80)
    train_rows = np.setdiff1d(rows, saved.record["test_rows"] + saved.record["val_rows"])
    env = AudioBudgetEnv(table, rows=rows, scaler=FeatureScaler.fit(observed_columns(table, False)[train_rows]),
                         **saved.config.env_kwargs())
    expected, steps = play(reference, env, rows), saved.play(table, rows)
    assert all(np.array_equal(steps[key], expected[key]) for key in expected)


def test_zip_only_folder_loads_only_with_trust_pickle(trained: tuple[Path, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    old = old_folder(trained[1], tmp_path / "old")
    with pytest.raises(PickleRefused, match="policy.zip is a pickled SB3 policy.*--trust-pickle"):
        SavedPolicy.load(old)
    for command in (eval_main, live_main):
        assert command(["--policy", str(old)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(old / "policy.zip") in err and "--trust-pickle" in err
    assert eval_main(["--policy", str(old), "--json", "--trust-pickle"]) == 0
    assert json.loads(capsys.readouterr().out) | {"policy": ""} == evaluate_policy(trained[1]) | {"policy": ""}


def test_tampered_or_mismatched_weights_are_refused(trained: tuple[Path, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    folder = shutil.copytree(trained[1], tmp_path / "policy")
    weights, record_path = folder / ACTOR_FILE, folder / "policy.json"
    original = weights.read_bytes()
    weights.write_bytes(original[:-4] + bytes(4))  # last weights changed, header intact
    with pytest.raises(ValueError, match="SHA-256 .* differs .* recorded in policy.json"):
        SavedPolicy.load(folder)
    assert eval_main(["--policy", str(folder)]) == 2 and "policy.safetensors: SHA-256" in capsys.readouterr().err

    def rewrite(content: bytes) -> None:
        """Replace the weights file and record its hash: a mismatched file with a consistent policy.json."""
        weights.write_bytes(content)
        record = json.loads(record_path.read_text())
        record["actor"]["sha256"] = hashlib.sha256(content).hexdigest()
        record_path.write_text(json.dumps(record))

    tensors = load(original)
    rewrite(save({k: v for k, v in tensors.items() if k != "mlp_extractor.policy_net.2.weight"}))  # a layer dropped
    with pytest.raises(ValueError, match="'mlp_extractor.policy_net.2.weight' has shape missing"):
        SavedPolicy.load(folder)
    rewrite(save({**tensors, "action_net.weight": torch.zeros(5, 64)}))  # another policy's action head
    with pytest.raises(ValueError, match=r"'action_net.weight' has shape \(5, 64\).* expects \(4, 64\)"):
        SavedPolicy.load(folder)
    rewrite(b"not a safetensors file")
    with pytest.raises(ValueError, match="policy.safetensors: not a readable safetensors file"):
        SavedPolicy.load(folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="policy.safetensors does not exist"):
        SavedPolicy.load(folder)
