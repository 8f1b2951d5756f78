"""`stage_b-outcomes` on a micro-world checkpoint: every (question, action) scored, counted and timed;
`stage_b-live` replays a policy on the same questions by running the model, and must agree."""

import json
from pathlib import Path

import numpy as np
import pytest

from envs.outcome_table import OutcomeTable
from shared.config import load_config
from stage_a.config import TrainConfig
from stage_b.live import main as live_main
from stage_b.outcomes import build_table, main as outcomes_main
from stage_b.runner import SafeRunner
from stage_b.train import PolicyConfig, train_policy


@pytest.fixture(scope="module")
def table(table_path: Path) -> OutcomeTable:
    return OutcomeTable.load(table_path)


def test_every_question_and_action_has_score_compute_and_latency(table: OutcomeTable) -> None:
    n = len(table.ids)
    assert table.actions.tolist() == [0, 4, 8] and table.score.shape == table.gflops.shape == (n, 3)
    assert ((table.score >= 0) & (table.score <= 1)).all() and (table.latency_ms > 0).all()
    encoder = table.provenance["encoder_gflops"]
    assert encoder > 0 and (table.gflops[:, 1:] > table.gflops[:, :1] + encoder * 0.99).all()
    assert (table.gflops[:, 2] >= table.gflops[:, 1]).all()  # more tokens cost more
    assert np.isfinite(table.features).all() and table.features.shape[0] == n
    assert table.provenance["split"] == "test" and len(table.provenance["checkpoint_hash"]) == 16
    assert table.confidence is not None and ((table.confidence > 0) & (table.confidence <= 1)).all()
    assert table.text_tokens is not None and (table.text_tokens >= 1).all()


def test_text_tokens_are_the_prompt_without_its_image_placeholders(table: OutcomeTable,
                                                                   micro_paths: dict[str, str]) -> None:
    """What cost profiles recount a question from: prompt length minus the base's image tokens, row by row."""
    runner = SafeRunner(load_config(TrainConfig, "stage_a_micro", micro_paths),
                        Path(table.provenance["checkpoint"]), "test")
    batch = runner.batch(list(range(16)))
    vision = runner.model.base.config.vision_config
    image_tokens = (vision.image_size // vision.patch_size) ** 2
    prompt = batch.inputs["attention_mask"].sum(1).numpy()
    assert image_tokens > 1 and np.array_equal(prompt - runner.text_tokens(batch), [image_tokens] * 16)
    assert np.array_equal(table.text_tokens[:16], runner.text_tokens(batch))


def test_analytic_gflops_match_the_profiler(table: OutcomeTable) -> None:
    for action, check in table.provenance["flops_check"].items():
        assert check["analytic"] == pytest.approx(check["profiler"], rel=0.10), action


def test_live_mode_agrees_with_table_mode(table_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train_policy(PolicyConfig(str(table_path), timesteps=256, n_envs=2, eval_every=256), tmp_path / "policy",
                 tensorboard=False)
    capsys.readouterr()
    code = live_main(["--policy", str(tmp_path / "policy"), "--questions", "12"])
    result = json.loads(capsys.readouterr().out)
    assert code == (0 if result["live_within_table_ci"] else 1)
    assert result["questions"] == 12 and result["same_actions"] == 1.0
    assert result["gflops_live"] == pytest.approx(result["gflops_table"], rel=1e-5)
    assert result["same_score"] >= 0.9  # batch-of-one generation may flip a rare near-tie


def test_table_round_trips_through_npz(table: OutcomeTable, tmp_path: Path) -> None:
    table.save(tmp_path / "t.npz")
    again = OutcomeTable.load(tmp_path / "t.npz")
    assert np.array_equal(again.score, table.score) and again.provenance == table.provenance
    assert np.array_equal(again.text_tokens, table.text_tokens)
    assert np.array_equal(table.subset(np.array([2, 0])).text_tokens, table.text_tokens[[2, 0]])


def test_an_interrupted_build_resumes_to_the_same_table(table: OutcomeTable, micro_paths: dict[str, str],
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(TrainConfig, "stage_a_micro", micro_paths)
    checkpoint, partial = Path(table.provenance["checkpoint"]), tmp_path / "t.partial.npz"
    original, calls = SafeRunner.features, []

    def crash_on_third_batch(self: SafeRunner, batch, rows):
        calls.append(rows[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, batch, rows)

    monkeypatch.setattr(SafeRunner, "features", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        build_table(cfg, checkpoint, "test", [4, 8], batch_size=8, repeats=1, partial=partial, save_every=1)
    with np.load(partial) as saved:
        assert int(saved["done"]) == 16  # two batches of 8 saved before the interruption
    monkeypatch.setattr(SafeRunner, "features", original)
    resumed = build_table(cfg, checkpoint, "test", [4, 8], batch_size=8, repeats=1, partial=partial, save_every=1)
    whole = build_table(cfg, checkpoint, "test", [4, 8], batch_size=8, repeats=1)
    for key in ("score", "gflops", "features", "confidence", "text_tokens"):
        np.testing.assert_array_equal(getattr(resumed, key), getattr(whole, key), err_msg=key)
    with pytest.raises(ValueError, match="delete it to start over"):
        build_table(cfg, checkpoint, "test", [4, 16], batch_size=8, repeats=1, partial=partial, save_every=1)
    partial.write_bytes(partial.read_bytes()[: partial.stat().st_size // 2])  # e.g. a full disk before atomic writes
    with pytest.raises(ValueError, match=rf"^{partial}: not a readable .npz file \(truncated or corrupt: .*; expected "
                                         r"a partial table written by stage_b-outcomes \(delete it to start over\)$"):
        build_table(cfg, checkpoint, "test", [4, 8], batch_size=8, repeats=1, partial=partial, save_every=1)


def test_a_folder_without_a_bridge_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert outcomes_main(["--checkpoint", str(tmp_path)]) == 2
    assert f"stage_b-outcomes: --checkpoint {tmp_path}: no adapter.safetensors there" in capsys.readouterr().err


@pytest.fixture
def fake_bridge(tmp_path: Path) -> Path:
    """A folder that passes for a bridge with k_max 12 (its weights are never read: the checks come first)."""
    (tmp_path / "adapter.safetensors").write_bytes(b"")
    (tmp_path / "safe_config.json").write_text(json.dumps({"projector": {"k_max": 12}}))
    return tmp_path


@pytest.mark.parametrize("flags, message", [
    (["--ks", "4,x"], "--ks is '4,x': item 'x' is not an integer >= 1 and <= 12"),
    (["--ks", "4,16"], "--ks is '4,16': item '16' is not an integer >= 1 and <= 12"),
    (["--ks", "0,4"], "--ks is '0,4': item '0' is not an integer >= 1 and <= 12"),
    (["--ks", "4,8,4"], "--ks is '4,8,4': a k is repeated; expected distinct token counts"),
    (["--batch-size", "0"], "--batch-size is 0; expected an integer >= 1"),
    (["--repeats", "-1"], "--repeats is -1; expected an integer >= 1"),
    (["--save-every", "0"], "--save-every is 0; expected an integer >= 1"),
])
def test_bad_numbers_exit_2_before_anything_loads(fake_bridge: Path, flags: list[str], message: str,
                                                  capsys: pytest.CaptureFixture) -> None:
    args = ["--checkpoint", str(fake_bridge), "--preset", "stage_a_micro", "--world", "no_such_world", "--ks", "4,8",
            *flags]
    assert outcomes_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"stage_b-outcomes: {message}")
    assert sorted(p.name for p in fake_bridge.iterdir()) == ["adapter.safetensors", "safe_config.json"]  # no table


def _toy_policy(folder: Path, provenance: dict) -> Path:
    """A tiny PPO policy trained on a toy table with the given provenance."""
    n, rng = 20, np.random.default_rng(0)
    table = OutcomeTable(ids=np.array([f"q{i}" for i in range(n)]), family=np.array(["audio"] * n),
                         qtype=np.array(["kind"] * n), actions=np.array([0, 4]), score=np.ones((n, 2), np.float32),
                         gflops=np.ones((n, 2), np.float32), latency_ms=np.ones((n, 2), np.float32),
                         features=rng.normal(size=(n, 3)).astype(np.float32), provenance=provenance)
    path = table.save(folder / "toy.npz")
    train_policy(PolicyConfig(str(path), timesteps=64, n_envs=1, eval_every=64), folder / "policy", tensorboard=False)
    return folder / "policy"


def test_live_names_the_table_and_the_provenance_key_it_lacks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    policy = _toy_policy(tmp_path, {"split": "test", "preset": "stage_a_micro"})
    assert live_main(["--policy", str(policy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "toy.npz") in err and "lacks 'checkpoint'" in err


@pytest.mark.parametrize("flags, message", [(["--questions", "0"], "--questions is 0; expected an integer >= 1"),
                                            (["--seed", "-1"], "--seed is -1; expected an integer >= 0")])
def test_live_checks_its_numbers_before_loading_the_policy(tmp_path: Path, flags: list[str], message: str,
                                                           capsys: pytest.CaptureFixture) -> None:
    assert live_main(["--policy", str(tmp_path / "none"), *flags]) == 2
    assert capsys.readouterr().err == f"stage_b-live: {message}\n"
