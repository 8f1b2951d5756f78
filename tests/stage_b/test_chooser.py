"""A policy deciding for raw requests: the same observations as its outcome table rows, checked against its bridge."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from envs.outcome_table import OutcomeTable
from shared.config import load_config
from shared.data.audio_io import load_audio
from stage_a.config import TrainConfig
from stage_a.model import WEIGHTS_FILE
from stage_a.pipeline import SafePipeline
from stage_a.setup import build_setup
from stage_b.chooser import PolicyChooser
from stage_b.evaluate import SavedPolicy
from stage_b.policy_features import audio_preview, query_features

RATE = 16000


@pytest.fixture(scope="module")
def table(table_path: Path) -> OutcomeTable:
    return OutcomeTable.load(table_path)


@pytest.fixture(scope="module")
def pipe(table: OutcomeTable, policy_dir: Path) -> SafePipeline:
    return SafePipeline.from_pretrained(table.provenance["checkpoint"], policy=PolicyChooser.load(policy_dir))


@pytest.fixture(scope="module")
def raw(table: OutcomeTable, micro_paths: dict[str, str]) -> dict[str, list]:
    """The table's questions as a client would send them: image file, audio wave and question text."""
    cfg = load_config(TrainConfig, "stage_a_micro", micro_paths)
    split = build_setup(cfg, splits=("test",), bridge_dir=Path(table.provenance["checkpoint"])).test
    assert [s.id for s in split.samples] == table.ids.tolist()
    clips = [split.clip(i) for i in range(len(split.samples))]
    return {"image": list(split.visuals), "question": [s.question for s in split.samples],
            "audio": [(load_audio(c.path, RATE, c.start, c.end), RATE) for c in clips]}


def _features(pipe: SafePipeline, raw: dict[str, list]) -> np.ndarray:
    requests = [pipe.prepare(*row, k=4) for row in zip(raw["image"], raw["audio"], raw["question"])]
    return np.concatenate([query_features(pipe.model.base.get_input_embeddings(), pipe._inputs(requests[i:i + 7]),
                                          [audio_preview(r.wave, RATE) for r in requests[i:i + 7]])
                           for i in range(0, len(requests), 7)])


def test_raw_requests_give_the_tables_features_and_observations(pipe: SafePipeline, raw: dict, table: OutcomeTable,
                                                                policy_dir: Path) -> None:
    features = _features(pipe, raw)  # batches of 7, the table's of 32: padding must not matter
    np.testing.assert_allclose(features, table.features, rtol=1e-5, atol=1e-6)
    chooser = pipe.policy
    env = SavedPolicy.load(policy_dir).env(table, np.arange(table.n_rows))
    expected = np.stack([env.reset(options={"order": [row]})[0] for row in range(table.n_rows)])
    np.testing.assert_allclose(chooser.observations(features), expected, rtol=1e-5, atol=1e-5)


def test_auto_k_takes_the_policys_action_and_answers_as_that_k(pipe: SafePipeline, raw: dict,
                                                               table: OutcomeTable) -> None:
    rows = list(range(12))
    auto = pipe(image=[raw["image"][i] for i in rows], audio=[raw["audio"][i] for i in rows],
                question=[raw["question"][i] for i in rows], k="auto")
    observations = pipe.policy.observations(table.features[rows])
    expected, _ = pipe.policy.policy.model.predict(observations, deterministic=True)
    assert [r["action"]["k"] for r in auto] == [int(table.actions[a]) for a in expected]
    for i, result in zip(rows, auto):
        fixed = pipe(image=raw["image"][i], audio=raw["audio"][i], question=raw["question"][i], k=result["action"]["k"])
        assert fixed["answer"] == result["answer"] and fixed["action"] == result["action"]
    no_audio = pipe(image=raw["image"][0], audio=None, question=raw["question"][0])  # k None means auto with a policy
    assert no_audio["action"] == {"audio": False, "k": 0}


def test_a_policy_for_another_bridge_or_with_episode_state_is_refused(pipe: SafePipeline, policy_dir: Path,
                                                                      table: OutcomeTable, tmp_path: Path) -> None:
    other = tmp_path / "bridge"
    shutil.copytree(table.provenance["checkpoint"], other)
    (other / WEIGHTS_FILE).write_bytes((other / WEIGHTS_FILE).read_bytes() + b" ")
    chooser = PolicyChooser.load(policy_dir)
    pipe.bridge_dir, original = other, pipe.bridge_dir
    try:
        with pytest.raises(ValueError, match=r"trained on outcomes of bridge [0-9a-f]{16}, not .*bridge"):
            chooser.check(pipe)
    finally:
        pipe.bridge_dir = original
    for field, value, match in (("budget", 0.5, "trained with budget 0.5"), ("confidence", True, "no-audio confidence")):
        folder = tmp_path / field
        shutil.copytree(policy_dir, folder)
        record = json.loads((folder / "policy.json").read_text())
        record["config"][field] = value
        (folder / "policy.json").write_text(json.dumps(record))
        with pytest.raises(ValueError, match=match):
            PolicyChooser.load(folder)


def toy_policy(tmp_path: Path, **config: object) -> Path:
    """A 64-step policy on a 20-question toy table whose provenance lacks what a chooser needs."""
    from stage_b.train import PolicyConfig, train_policy

    n = 20
    toy = OutcomeTable(ids=np.array([f"q{i}" for i in range(n)]), family=np.array(["audio"] * n),
                       qtype=np.array(["kind"] * n), actions=np.array([0, 4]), score=np.ones((n, 2), np.float32),
                       gflops=np.ones((n, 2), np.float32), latency_ms=np.ones((n, 2), np.float32),
                       features=np.zeros((n, 3), np.float32), provenance={"split": "toy", "actions": [0, 4]})
    train_policy(PolicyConfig(str(toy.save(tmp_path / "toy.npz")), timesteps=64, n_envs=1, eval_every=64, **config),
                 tmp_path / "policy", tensorboard=False)
    return tmp_path / "policy"


def test_a_weight_conditioned_policy_is_refused_by_name(tmp_path: Path) -> None:
    toy_policy(tmp_path, weight_max=1.5)
    with pytest.raises(ValueError, match=r"policy: a weight-conditioned policy \(weight_max 1.5\), which needs a "
                                         "cost weight per request that serving does not take yet"):
        PolicyChooser.load(tmp_path / "policy")


def test_a_policy_whose_table_provenance_lacks_a_key_is_named(tmp_path: Path) -> None:
    from shared.cli import InputError

    toy_policy(tmp_path)
    with pytest.raises(InputError, match=r"policy\.json: table_provenance lacks 'checkpoint_hash', 'features'"):
        PolicyChooser.load(tmp_path / "policy")
