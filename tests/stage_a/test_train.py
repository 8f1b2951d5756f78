"""`stage_a-train` on the micro world: retention really changes training, resume, NaN handling, baselines."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration

import stage_a.train
from shared.config import load_config
from stage_a.config import TrainConfig, gate_value
from stage_a.data import Collator
from stage_a.losses import answer_positions
from stage_a.setup import build_setup
from stage_a.train import StageATrainer, main

VARIANTS = ("none", "kl", "fisher", "nullspace", "full")


@pytest.fixture(scope="module")
def paths(micro_paths: dict[str, str]) -> dict[str, str]:
    return micro_paths


def _args(paths: dict[str, str], out: Path, *extra: str) -> list[str]:
    return ["--preset", "stage_a_micro", "--out_dir", str(out), *[x for k, v in paths.items() for x in (f"--{k}", v)],
            *extra]


def _config(paths: dict[str, str], out: Path, **overrides) -> TrainConfig:
    values = {"out_dir": str(out), **paths, **overrides}
    return load_config(TrainConfig, "stage_a_micro", {k: str(v) for k, v in values.items()})


def _bridge(trainer: StageATrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.trainable_state().items()}


def test_each_retention_variant_changes_the_update(paths: dict, tmp_path: Path) -> None:
    after, logs = {}, {}
    for variant in VARIANTS:
        trainer = StageATrainer(_config(paths, tmp_path, name=variant, retention=variant))
        logs[variant] = [trainer.train_step(step) for step in range(3)]
        after[variant] = _bridge(trainer)
    for variant in VARIANTS[1:]:
        assert any(not torch.equal(after[variant][k], after["none"][k]) for k in after["none"]), variant
    # zero-init: student = teacher at step 0, up to the rounding of a batch of all rows against one of the VL rows
    assert logs["kl"][0]["kl"] < 1e-7 and logs["kl"][2]["kl"] > 1e-5
    assert logs["fisher"][2]["ewc"] > 0 and "fisher" in logs["fisher"][0]
    assert logs["nullspace"][0]["nullspace_rank"]["fusion.0.q"] > 0
    assert all(entry["grad_norm"]["base"] == 0.0 for entry in logs["full"])


def _q_inputs(trainer: StageATrainer) -> torch.Tensor:
    """The protected query projection's inputs on calibration VL questions (with audio, gate 1)."""
    captured = []
    q = trainer.model.fusion.blocks["0"].q
    handle = q.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach().clone()))
    rows = trainer.calibration[: trainer.cfg.mix.batch_size]
    batch = trainer.setup.collator.train_batch(trainer.setup.train, rows, [trainer.targets[i] for i in rows])
    with torch.no_grad():
        trainer.model(audio_frames=batch.frames, frame_mask=batch.frame_mask, k=4, gate=1.0, **batch.inputs)
    handle.remove()
    return torch.cat(captured)



def test_a_gradient_on_a_frozen_base_parameter_is_reported(paths: dict, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A set-up bug that leaves one base LM weight trainable: the monitor warns, counts and names it."""
    leaked = []

    def leaky_setup(*args, **kwargs):
        setup = build_setup(*args, **kwargs)
        name = next(n for n, _ in setup.model.base.named_parameters() if n.endswith("language_model.norm.weight"))
        setup.model.base.get_parameter(name).requires_grad_(True)
        leaked.append(name)
        return setup

    monkeypatch.setattr(stage_a.train, "build_setup", leaky_setup)
    trainer = StageATrainer(_config(paths, tmp_path, gate_schedule="none"))
    with caplog.at_level(logging.WARNING, logger="stage_a.monitor"):
        metrics = trainer.train_step(0)
    assert metrics["grad_norm"]["base"] > 0 and trainer.monitor.base_grad_steps == 1
    assert f"frozen base received gradients in 1 parameters (e.g. {leaked[0]})" in caplog.text

@pytest.mark.parametrize("variant,unchanged", [("nullspace", True), ("none", False)])
def test_nullspace_keeps_protected_outputs_on_vl_inputs(paths: dict, tmp_path: Path, variant: str,
                                                        unchanged: bool) -> None:
    trainer = StageATrainer(_config(paths, tmp_path, retention=variant, nullspace_energy=0.99999999,
                                    gate_schedule="none"))
    q = trainer.model.fusion.blocks["0"].q
    for step in range(2):  # step 0 moves only W_out; step 1 moves q as well
        inputs = _q_inputs(trainer)
        with torch.no_grad():
            before = q(inputs)
        trainer.train_step(step)
    with torch.no_grad():
        change = ((q(inputs) - before).norm() / before.norm()).item()
    assert (change < 1e-5) == unchanged, change


def test_answer_positions_follow_the_shifted_labels() -> None:
    labels = torch.tensor([[-100, -100, 7, 2, -100], [-100, 5, 2, -100, -100]])
    assert answer_positions(labels).int().tolist() == [[0, 1, 1, 0, 0], [1, 1, 0, 0, 0]]


def test_gate_schedules() -> None:
    assert [gate_value("linear", s, 4) for s in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]
    assert gate_value("cosine", 2, 4) == pytest.approx(0.5) and gate_value("none", 0, 4) == 1.0
    assert [gate_value("step", s, 4) for s in (0, 1, 2, 3)] == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_resume_after_stop_equals_an_uninterrupted_run(paths: dict, tmp_path: Path, dtype: str,
                                                      capsys: pytest.CaptureFixture) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(_args(paths, whole, "--tolerance_pts", "100", "--model.dtype", dtype)) == 0
    args = _args(paths, parts, "--tolerance_pts", "100", "--model.dtype", dtype)
    assert main([*args, "--stop-after", "3"]) == 0
    assert json.loads((parts / "stage_a_micro/checkpoint/state.json").read_text())["step"] == 3
    assert main(args) == 2  # a run folder with a checkpoint: continue with --resume, or choose another name
    assert "--resume" in capsys.readouterr().err.splitlines()[-1]
    with (parts / "stage_a_micro/metrics.jsonl").open("a") as log:  # what a process killed after step 4 leaves
        log.write(json.dumps({"step": 4, "kind": "train", "loss": 1.0}) + "\n")
    assert main([*args, "--resume"]) == 0
    a, b = (load_file(str(d / "stage_a_micro/checkpoint/adapter.safetensors")) for d in (whole, parts))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda d: [{k: v for k, v in json.loads(line).items() if k != "train_seconds"}  # noqa: E731
                       for line in (d / "stage_a_micro/metrics.jsonl").read_text().splitlines()]
    assert strip(whole) == strip(parts)
    sa, sb = (json.loads((d / "stage_a_micro/summary.json").read_text()) for d in (whole, parts))
    assert sa["audio_acc"] == sb["audio_acc"] and sa["steps"] == sb["steps"] == 8
    assert sa["gate0_max_abs_logit_diff"] == 0.0 and sa["model_dtype"] == dtype
    assert {v.dtype for v in a.values()} == {torch.float32}  # float32 master weights whatever the base's dtype


def test_nan_loss_skips_the_step_then_stops_after_three(paths: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = StageATrainer(_config(paths, tmp_path, gate_schedule="none"))
    original = Collator.train_batch

    def poisoned(self, split, rows, targets=None, copies=None):
        batch = original(self, split, rows, targets, copies)
        batch.frames[0, 0] = float("nan")
        return batch

    monkeypatch.setattr(Collator, "train_batch", poisoned)
    before = _bridge(trainer)
    assert trainer.train_step(0)["skipped"] is True
    assert all(torch.equal(before[k], v) for k, v in _bridge(trainer).items())
    trainer.train_step(1)
    with pytest.raises(FloatingPointError, match="3 non-finite losses in a row.*batch ids: \\['world/train/"):
        trainer.train_step(2)


def test_logged_mixing_ratio_and_summary_keys(paths: dict, tmp_path: Path) -> None:
    assert main(_args(paths, tmp_path, "--steps", "12", "--mix.audio_fraction", "0.5")) == 0
    run = tmp_path / "stage_a_micro"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ratios = [r["audio_ratio"] for r in records if r["kind"] == "train"]
    assert len(ratios) == 12 and all(r["target_ratio"] == 0.5 for r in records if r["kind"] == "train")
    assert abs(sum(ratios) / len(ratios) - 0.5) < 3 * (0.25 / (8 * 12)) ** 0.5
    data = [r for r in records if r["kind"] == "data"][-1]
    assert data["unique_seen"] > 0 and set(data["family_counts"]) == {"audio", "audio_visual", "visual"}
    summary = json.loads((run / "summary.json").read_text())
    for key in ("audio_acc", "audio_acc_base", "vl_acc_base", "vl_acc_with_audio", "vl_acc_gate0",
                "gate0_max_abs_logit_diff", "vl_degradation_pts", "retention_variant", "k_eval", "train_seconds", "steps"):
        assert key in summary, key
    assert set(summary["audio_acc"]) >= {"mean", "ci95"} and summary["gate0_max_abs_logit_diff"] == 0.0
    assert summary["vl_acc_gate0"] == summary["vl_acc_base"]


def test_vl_labels_ignore_trains_vl_only_through_retention(paths: dict, tmp_path: Path) -> None:
    trainer = StageATrainer(_config(paths, tmp_path, **{"data.vl_labels": "ignore", "retention": "none",
                                                      "mix.audio_fraction": 0.0, "gate_schedule": "none"}))
    metrics = trainer.train_step(0)
    assert metrics["ce"] == 0.0 and metrics["audio_ratio"] == 0.0  # VL rows only, no labels, no retention


def test_tolerance_breach_stops_early_and_says_so(paths: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    summary = StageATrainer(_config(paths, tmp_path, tolerance_pts=-1.0, steps=12, stop_patience=1)).run()
    assert summary["stopped_early"] is True and summary["steps"] == 4 and summary["within_tolerance"] is False
    assert "exceeds the tolerance" in caplog.text
    patient = StageATrainer(_config(paths, tmp_path, name="patient", tolerance_pts=-1.0, steps=12, stop_patience=2)).run()
    assert patient["stopped_early"] is True and patient["steps"] == 8


MICRO = {"world": "world_micro", "steps": 2, "eval_every": 2, "mix.batch_size": 8, "data.eval_size": 0,
         "tensorboard": "false"}


@pytest.mark.parametrize("name", ["original_vl", "lora_only", "full_ft", "random_audio"])
def test_baselines_are_configs_of_the_same_trainer(paths: dict, tmp_path: Path, name: str) -> None:
    cfg = load_config(TrainConfig, f"baseline_{name}", {"out_dir": str(tmp_path), **paths, **MICRO})
    trainer = StageATrainer(cfg)
    base = {n: p.detach().clone() for n, p in trainer.model.base.named_parameters() if ".lora_" not in n}
    summary = trainer.run()
    moved = any(not torch.equal(p, base[n]) for n, p in trainer.model.base.named_parameters() if n in base)
    assert moved == (name == "full_ft")  # only full fine-tuning touches the base model's own weights
    # ... and the summary measures it against the untouched base: gate 0 is no longer exact
    assert (summary["gate0_max_abs_logit_diff"] > 0) == (name == "full_ft")
    assert (summary["trainable_params"] == 0) == (name == "original_vl")
    if name == "original_vl":
        assert summary["audio_acc"]["mean"] == summary["audio_acc_base"] and summary["vl_degradation_pts"] == 0
    if name == "lora_only":
        assert trainer.model.bridge_config.fusion.mode == "prefix" and trainer.model.lora is not None
    if name == "random_audio":
        assert trainer.eval_settings.shuffle_audio and summary["steps"] == 2


@pytest.fixture(scope="module")
def stopped(paths: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The out_dir of a micro run stopped (and checkpointed) after 2 steps."""
    out = tmp_path_factory.mktemp("stopped")
    assert main(_args(paths, out, "--stop-after", "2")) == 0
    return out


def _err_lines(capsys: pytest.CaptureFixture) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("stage_a-train:")]


@pytest.mark.parametrize("name", ["adapter.safetensors", "optimizer.pt", "state.json"])
def test_resuming_a_truncated_checkpoint_exits_2_naming_the_file(paths: dict, stopped: Path, tmp_path: Path, name: str,
                                                                  capsys: pytest.CaptureFixture) -> None:
    out = shutil.copytree(stopped, tmp_path / "out")
    damaged = out / "stage_a_micro" / "checkpoint" / name
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    assert main(_args(paths, out, "--resume")) == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"stage_a-train: {damaged}: not a readable "), lines


def test_resuming_onto_another_base_exits_2_unless_no_strict(paths: dict, stopped: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    """A base of the same shapes with other weights: the checkpoint's record refuses it, as loading a bridge does."""
    other = shutil.copytree(paths["model.base_vl"], tmp_path / "other_vl")
    model = LlavaForConditionalGeneration.from_pretrained(other)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1.0
    model.save_pretrained(other)
    out = shutil.copytree(stopped, tmp_path / "out")
    args = _args({**paths, "model.base_vl": str(other)}, out, "--resume", "--stop-after", "1")
    assert main(args) == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1 and repr(str(other)) in lines[0] and repr(paths["model.base_vl"]) in lines[0], lines
    assert main([*args, "--no-strict"]) == 0
    assert json.loads((out / "stage_a_micro/checkpoint/state.json").read_text())["step"] == 3


def test_bad_config_exits_2_naming_the_key(capsys: pytest.CaptureFixture) -> None:
    assert main(["--preset", "stage_a_micro", "--mix.audio_fraction", "1.5"]) == 2
    assert "audio_fraction" in capsys.readouterr().err
    assert main(["--preset", "stage_a_micro", "--retention_weight", "1"]) == 2


def test_resume_without_a_checkpoint_names_the_run_folder_before_anything_loads(tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture) -> None:
    args = ["--preset", "stage_a_micro", "--world", "no_such_world", "--out_dir", str(tmp_path), "--resume"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"run folder {tmp_path / 'stage_a_micro'} has no checkpoint" in err
    assert "does not exist" in err
    checkpoint = tmp_path / "stage_a_micro" / "checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.json").write_text("{}")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "lacks adapter.safetensors, optimizer.pt, state.safetensors" in err and "no_such_world" not in err


def test_two_processes_match_one_process(paths: dict, tmp_path: Path) -> None:
    """accelerate launch with 2 CPU processes (gloo) vs 1 process at the same global batch."""
    common = ("--steps", "4", "--eval_every", "4", "--data.test_size", "8")
    assert main(_args(paths, tmp_path / "one", *common)) == 0
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "stage_a.train", *_args(paths, tmp_path / "two", *common)]
    done = subprocess.run(launch, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (load_file(str(tmp_path / d / "stage_a_micro/checkpoint/adapter.safetensors")) for d in ("one", "two"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-5)
