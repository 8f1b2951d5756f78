"""`stage_b-outcomes` on a micro-world checkpoint: every (question, action) scored, counted and timed;
`stage_b-live` replays a policy on the same questions by running the model, and must agree."""

import json
from pathlib import Path

import numpy as np
import pytest

from envs.outcome_table import OutcomeTable
from shared.config import load_config
from stage_a.checkpointing import bridge_folder
from stage_a.config import TrainConfig
from stage_b.live import LiveOutcome
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


def test_every_timed_repeat_is_kept_and_latency_is_their_median(table: OutcomeTable) -> None:
    """--repeats 3 (the default): three timings per question and action; an audio action's repeat r includes the
    encoder's repeat r, and every question of a batch shares its batch's timings."""
    repeats = table.latency_repeats_ms
    assert repeats is not None and repeats.dtype == np.float32 and repeats.shape == (len(table.ids), 3, 3)
    assert (repeats > 0).all() and np.array_equal(np.median(repeats, axis=2), table.latency_ms)
    encoder = np.asarray(table.provenance["encoder_ms_repeats"], dtype=np.float32)
    assert encoder.shape == (3,) and table.provenance["encoder_ms"] == pytest.approx(float(np.median(encoder)))
    assert (repeats[:, 1:] > encoder).all()  # generation time on top of the encoder's, repeat by repeat
    assert (repeats[:32] == repeats[0]).all() and len(np.unique(repeats[:, 0, 0])) > 1  # batches of 32


def test_a_bad_repeat_is_refused_naming_field_index_and_value(table: OutcomeTable, tmp_path: Path) -> None:
    path = table.save(tmp_path / "t.npz")
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    for bad, shown in ((-3.0, "-3.0"), (np.inf, "inf"), (0.0, "0.0")):
        repeats = arrays["latency_repeats_ms"].copy()
        repeats[5, 2, 1] = bad
        np.savez(tmp_path / "bad.npz", **{**arrays, "latency_repeats_ms": repeats})
        with pytest.raises(ValueError, match=rf"^outcome table {tmp_path / 'bad.npz'}: "
                                             rf"'latency_repeats_ms'\[5, 2, 1\] = {shown} \(1 bad values\), "
                                             r"expected finite and > 0.0$"):
            OutcomeTable.load(tmp_path / "bad.npz")


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


@pytest.fixture(scope="module")
def runner(table: OutcomeTable) -> SafeRunner:
    """The micro-world checkpoint the table was measured with, rebuilt as stage_b-live rebuilds it."""
    provenance = table.provenance
    cfg = load_config(TrainConfig, provenance["preset"], provenance.get("overrides", {}))
    return SafeRunner(cfg, bridge_folder(Path(provenance["checkpoint"])), provenance["split"])


def test_live_outcome_measures_the_confidence_and_charges_it_as_the_table(table: OutcomeTable,
                                                                          runner: SafeRunner) -> None:
    """The no-audio pass runs when the question is shown; no audio reuses it, audio pays it on top of its own run."""
    live = LiveOutcome(runner, table, charge_confidence=True)
    charged, _ = table.charged_costs(confidence=True)
    for row in range(6):
        assert live.confidence(row) == pytest.approx(table.confidence[row], abs=1e-4)
        base = live(row, 0)
        assert base[1] == pytest.approx(table.gflops[row, 0], rel=1e-5)
        for action in range(1, table.n_actions):
            _, gflops, latency = live(row, action)
            assert gflops == pytest.approx(charged[row, action], rel=1e-5) and latency > base[2]
    with pytest.raises(RuntimeError, match="before its no-audio confidence was measured"):
        live(7, 1)
    with pytest.raises(ValueError, match="charge_confidence=True"):
        LiveOutcome(runner, table).confidence(0)


def test_live_mode_supports_a_policy_observing_the_confidence(table_path: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    train_policy(PolicyConfig(str(table_path), alpha=0.0, confidence=True, timesteps=256, n_envs=2, eval_every=256),
                 tmp_path / "policy", tensorboard=False)
    capsys.readouterr()
    code = live_main(["--policy", str(tmp_path / "policy"), "--questions", "12"])
    result = json.loads(capsys.readouterr().out)
    assert code == (0 if result["live_within_table_ci"] else 1) and result["questions"] == 12
    assert result["confidence"]["max_abs_difference"] < 1e-4 and result["same_actions"] == 1.0
    assert result["gflops_live"] == pytest.approx(result["gflops_table"], rel=1e-5)
    table = OutcomeTable.load(table_path)
    assert result["gflops_table"] > table.gflops[:, 0].max()  # some audio was chosen, and paid with the base run


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
    assert resumed.latency_repeats_ms.shape == (len(whole.ids), 3, 1) and (resumed.latency_repeats_ms > 0).all()
    with pytest.raises(ValueError, match="delete it to start over"):  # the partial table was timed with 1 repeat
        build_table(cfg, checkpoint, "test", [4, 8], batch_size=8, repeats=2, partial=partial, save_every=1)
    with pytest.raises(ValueError, match="delete it to start over"):
        build_table(cfg, checkpoint, "test", [4, 16], batch_size=8, repeats=1, partial=partial, save_every=1)
    with np.load(partial) as saved:
        older = {name: saved[name] for name in saved.files if name != "text_tokens"}
    np.savez(partial, **older)  # the same key, written before text tokens were recorded
    with pytest.raises(ValueError, match=r"was written without \['text_tokens'\]; delete it to start over$"):
        build_table(cfg, checkpoint, "test", [4, 8], batch_size=8, repeats=1, partial=partial, save_every=1)
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
