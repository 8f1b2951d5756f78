"""`stage_b-train`'s three-way split: seeded and disjoint, model selection on validation rows only, best/ pickle-free,
and a policy.json from before the split still loads."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from envs.outcome_table import OutcomeTable
from shared.loading import file_sha256
from stage_b.evaluate import SavedPolicy, evaluate_policy
from stage_b.pareto import _needs_training
from stage_b.sweep_config import ParetoConfig
from stage_b.train import PolicyConfig, train_policy

TINY = {"timesteps": 1024, "n_envs": 2, "eval_every": 256}


def toy_table(n: int = 60, seed: int = 0) -> OutcomeTable:
    """Visual questions need no audio, the others do; audio costs 4-6x the no-audio answer."""
    rng = np.random.default_rng(seed)
    family = np.array(["visual", "audio", "audio_visual"])[np.arange(n) % 3]
    score = np.ones((n, 4), np.float32)
    score[family != "visual", 0] = 0.0
    score[rng.random(n) < 0.3, 1] = 0.0
    gflops = np.tile(np.array([1.0, 4.0, 5.0, 6.0], np.float32), (n, 1))
    features = np.column_stack([family == "visual", rng.normal(size=n)]).astype(np.float32)
    return OutcomeTable(ids=np.array([f"q{i}" for i in range(n)]), family=family, qtype=np.array(["kind"] * n),
                        actions=np.array([0, 4, 8, 16]), score=score, gflops=gflops, latency_ms=10 * gflops,
                        features=features, provenance={"split": "toy", "checkpoint_hash": "aaaa"})


def poisoned(table: OutcomeTable, rows: np.ndarray) -> OutcomeTable:
    """A copy whose `rows` have every score flipped and other features: any use of them changes what PPO sees."""
    copy = table.subset(np.arange(table.n_rows))
    copy.score[rows] = 1.0 - copy.score[rows]
    copy.features[rows] = 100.0 + np.arange(len(rows), dtype=np.float32)[:, None]
    return copy


def test_the_split_is_disjoint_seeded_and_keeps_the_held_out_rows() -> None:
    table = toy_table(n=200)
    rows = PolicyConfig("t.npz", seed=0).rows(table)
    assert (len(rows.train), len(rows.val), len(rows.test)) == (110, 30, 60)  # 55 / 15 / 30 %
    assert np.array_equal(np.sort(np.concatenate([rows.train, rows.val, rows.test])), np.arange(200))  # disjoint
    assert np.array_equal(rows.test, table.split_rows(0.7, 0)[1])  # the held-out rows of earlier versions
    for seed in (1, 7):  # the policy seed does not move the split
        again = PolicyConfig("t.npz", seed=seed).rows(table)
        assert all(np.array_equal(getattr(again, part), getattr(rows, part)) for part in ("train", "val", "test"))
    other = PolicyConfig("t.npz", split_seed=1).rows(table)
    assert not np.array_equal(other.val, rows.val) and not np.array_equal(other.test, rows.test)
    none = PolicyConfig("t.npz", val_fraction=0.0).rows(table)
    assert none.val.size == 0 and np.array_equal(none.test, rows.test) and len(none.train) == 140


@pytest.mark.parametrize("kwargs, message", [
    ({"val_fraction": 0.7}, "val_fraction is 0.7; expected a finite number >= 0 and < 0.7"),
    ({"val_fraction": -0.1}, "val_fraction is -0.1; expected a finite number >= 0 and < 0.7"),
    ({"val_fraction": float("nan")}, "val_fraction is nan"),
])
def test_bad_validation_fractions_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PolicyConfig("t.npz", **kwargs)


def test_a_split_leaving_no_validation_row_is_named() -> None:
    with pytest.raises(ValueError, match=r"val_fraction 0.001 of 60 rows is 0 validation rows.*at least one"):
        PolicyConfig("t.npz", val_fraction=0.001).rows(toy_table())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A policy trained on the toy table, with 4 validation evaluations."""
    root = tmp_path_factory.mktemp("selection")
    path = toy_table().save(root / "clean" / "outcomes_toy.npz")
    record = train_policy(PolicyConfig(str(path), **TINY), root / "clean" / "policy", tensorboard=False)
    return root, record


def _selection_of(root: Path, table: OutcomeTable, name: str) -> tuple[dict, str, str]:
    """Train the fixture's config on `table`; (selection record, best actor's SHA-256, final actor's SHA-256)."""
    path = table.save(root / name / "outcomes_toy.npz")
    record = train_policy(PolicyConfig(str(path), **TINY), root / name / "policy", tensorboard=False)
    best = json.loads((root / name / "policy" / "best" / "policy.json").read_text())
    return record["selection"], best["actor"]["sha256"], record["actor"]["sha256"]


def test_selection_never_touches_the_test_rows(trained: tuple[Path, dict], tmp_path: Path) -> None:
    """Flipping every test row's scores and features changes nothing in training, selection or best/; the same
    poison on the validation rows does (so the comparison can see a change)."""
    root, record = trained
    clean = root / "clean" / "policy"
    best = json.loads((clean / "best" / "policy.json").read_text())
    assert len(record["selection"]["evaluations"]) == 4 and record["selection"]["rows"] == "val"
    assert best["selected"] == record["selection"]["best"] and best["test_rows"] == record["test_rows"]
    table = OutcomeTable.load(clean.parent / "outcomes_toy.npz")
    selection, best_sha, final_sha = _selection_of(tmp_path, poisoned(table, np.asarray(record["test_rows"])), "test")
    assert selection == record["selection"]
    assert best_sha == best["actor"]["sha256"] == file_sha256(clean / "best" / "policy.safetensors")
    assert final_sha == record["actor"]["sha256"]
    selection, best_sha, _ = _selection_of(tmp_path, poisoned(table, np.asarray(record["val_rows"])), "val")
    assert selection["evaluations"] != record["selection"]["evaluations"]


def test_best_is_a_pickle_free_policy_folder(trained: tuple[Path, dict]) -> None:
    root, record = trained
    best = root / "clean" / "policy" / "best"
    assert sorted(p.name for p in best.iterdir()) == ["policy.json", "policy.safetensors"]
    policy = SavedPolicy.load(best)
    assert policy.record["selected"]["timesteps"] in [e["timesteps"] for e in record["selection"]["evaluations"]]
    result = evaluate_policy(best)
    assert result["n"] == len(record["test_rows"]) == 18 and result["rows"] == "held-out"


def test_the_scaler_is_fitted_on_training_rows_only(trained: tuple[Path, dict]) -> None:
    root, record = trained
    policy = SavedPolicy.load(root / "clean" / "policy")
    table = OutcomeTable.load(policy.config.table)
    train = np.setdiff1d(np.arange(table.n_rows), record["val_rows"] + record["test_rows"])
    assert len(train) == record["train_rows"] == 33
    np.testing.assert_allclose(policy.scaler.mean, table.features[train].mean(0), rtol=1e-6)
    assert not np.allclose(policy.scaler.mean, table.features[np.concatenate([train, record["val_rows"]])].mean(0))


def test_no_validation_rows_means_no_selection(tmp_path: Path) -> None:
    path = toy_table().save(tmp_path / "outcomes_toy.npz")
    record = train_policy(PolicyConfig(str(path), val_fraction=0.0, **TINY), tmp_path / "policy", tensorboard=False)
    assert record["selection"] is None and record["val_rows"] == [] and record["train_rows"] == 42
    assert not (tmp_path / "policy" / "best").exists()


def test_a_policy_from_before_the_validation_split_still_loads(trained: tuple[Path, dict], tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Its policy.json has no val_fraction and no val_rows: it loads as val_fraction 0, evaluates on the same
    held-out rows, and stage_b-pareto retrains it rather than reuse a policy whose best/ saw the test rows."""
    root, record = trained
    folder = tmp_path / "old"
    folder.mkdir()
    for name in ("policy.safetensors", "policy.zip"):
        (folder / name).write_bytes((root / "clean" / "policy" / name).read_bytes())
    old = {key: value for key, value in record.items() if key not in ("val_rows", "selection")}
    old["config"] = {key: value for key, value in record["config"].items() if key != "val_fraction"}
    (folder / "policy.json").write_text(json.dumps(old))
    policy = SavedPolicy.load(folder)
    assert policy.config.val_fraction == 0.0 and policy.record["val_rows"] == []
    assert evaluate_policy(folder) | {"policy": ""} == evaluate_policy(root / "clean" / "policy") | {"policy": ""}
    config = ParetoConfig(Path(policy.config.table), tmp_path, weights=(0.1,)).policies()["alpha-w0.1-seed0"]
    with caplog.at_level(logging.INFO, logger="stage_b.pareto"):
        assert _needs_training(folder, config, record["table_sha256"], OutcomeTable.load(policy.config.table))
    assert "trained before the validation split" in caplog.text
