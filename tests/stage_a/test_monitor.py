"""Run metrics (JSONL, TensorBoard, wandb without network) and gradient health checks."""

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stage_a.monitor import GradientMonitor, RunLogger


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_lines_config_and_nan(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, {"lr": 1e-3, "out": tmp_path}, tensorboard=False)
    logger.log(1, "train", {"loss": 2.5, "gate": {"mean": 0.1}, "note": "warmup"})
    logger.log(2, "train", {"loss": float("nan"), "grad": [float("inf"), -math.inf], "t": torch.tensor(3.0)})
    logger.close()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [
        {"step": 1, "kind": "train", "loss": 2.5, "gate": {"mean": 0.1}, "note": "warmup"},
        {"step": 2, "kind": "train", "loss": "nan", "grad": ["inf", "-inf"], "t": 3.0},
    ]
    assert json.loads((tmp_path / "config.json").read_text()) == {"lr": 1e-3, "out": str(tmp_path)}


def test_unloggable_value_names_the_key(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, {}, tensorboard=False)
    with pytest.raises(TypeError, match=r"'train\.stats\.w' is Tensor"):
        logger.log(1, "train", {"stats": {"w": torch.zeros(3)}})
    logger.close()


def test_tensorboard_gets_flattened_numeric_leaves(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, {}, tensorboard=True)
    logger.log(5, "eval", {"acc": {"vqa": 0.75}, "name": "val", "flag": True})
    logger.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert events.Tags()["scalars"] == ["eval/acc/vqa"]
    (scalar,) = events.Scalars("eval/acc/vqa")
    assert scalar.step == 5 and scalar.value == pytest.approx(0.75)


def test_resume_drops_records_after_resume_step(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, {})
    for step in range(1, 6):
        logger.log(step, "train", {"loss": float(step)})
    logger.close()
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 6, "kind": "tr')  # cut off by a crash
    logger = RunLogger(tmp_path, {}, resume_step=3)
    logger.log(4, "train", {"loss": 40.0})
    logger.close()
    expected = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    assert [(r["step"], r["loss"]) for r in read_jsonl(tmp_path / "metrics.jsonl")] == expected
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == expected


def test_metric_named_step_is_an_error(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, {}, tensorboard=False)
    with pytest.raises(ValueError, match="'step' or 'kind'"):
        logger.log(1, "train", {"step": 3})
    logger.close()


def test_non_main_process_writes_nothing(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path / "run", {"lr": 1}, tensorboard=True, wandb=True, main_process=False)
    logger.log(1, "train", {"loss": 1.0})
    logger.close()
    assert not (tmp_path / "run").exists()


def test_wandb_disabled_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = RunLogger(tmp_path, {"lr": 1e-3}, tensorboard=False, wandb=True, run_name="t")
    logger.log(1, "train", {"loss": 1.0, "gate": {"mean": 0.5}})
    logger.close()
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 1


def test_wandb_offline_mode_writes_a_local_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = RunLogger(tmp_path, {"lr": 1e-3}, tensorboard=False, wandb=True, run_name="t")
    logger.log(1, "train", {"loss": 1.0})
    logger.close()
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))


def make_monitor(**kwargs) -> tuple[GradientMonitor, dict[str, torch.nn.Parameter]]:
    params = {name: torch.nn.Parameter(torch.zeros(3)) for name in ("proj_w", "proj_b", "fusion_w", "base_w")}
    params["base_w"].requires_grad_(False)
    components = {"projector": [params["proj_w"], params["proj_b"]], "fusion": [params["fusion_w"]], "lora": []}
    return GradientMonitor(components, [("lm.layers.0.weight", params["base_w"])], **kwargs), params


def test_norms_per_component(caplog: pytest.LogCaptureFixture) -> None:
    monitor, params = make_monitor()
    params["proj_w"].grad = torch.tensor([3.0, 0.0, 0.0])
    params["proj_b"].grad = torch.tensor([0.0, 4.0, 12.0])
    with caplog.at_level(logging.WARNING, logger="stage_a.monitor"):
        norms = monitor.observe()
    assert norms == {"projector": pytest.approx(13.0), "fusion": 0.0, "base": 0.0}  # no LoRA params: skipped
    assert not caplog.records and monitor.base_grad_steps == 0


def test_vanishing_warns_once_after_patience(caplog: pytest.LogCaptureFixture) -> None:
    monitor, params = make_monitor(patience=3)
    params["proj_w"].grad = torch.ones(3)
    with caplog.at_level(logging.WARNING, logger="stage_a.monitor"):
        monitor.observe()
        monitor.observe()
        assert not caplog.records
        monitor.observe()
        assert [r.getMessage() for r in caplog.records] == [
            "gradients of 'fusion' have vanished: norm below 1e-10 for 3 consecutive steps"]
        for _ in range(5):
            monitor.observe()
        assert len(caplog.records) == 1


def test_vanishing_rearms_after_recovery(caplog: pytest.LogCaptureFixture) -> None:
    monitor, params = make_monitor(patience=2)
    with caplog.at_level(logging.WARNING, logger="stage_a.monitor"):
        for grad in (0.0, 0.0, 1.0, 0.0, 0.0):
            params["fusion_w"].grad = torch.full((3,), grad)
            monitor.observe()
    assert sum("'fusion'" in r.getMessage() for r in caplog.records) == 2


def test_base_gradient_warning_names_the_parameter(caplog: pytest.LogCaptureFixture) -> None:
    monitor, params = make_monitor()
    params["base_w"].grad = torch.tensor([0.0, 1e-30, 0.0])
    with caplog.at_level(logging.WARNING, logger="stage_a.monitor"):
        monitor.observe()
    assert monitor.base_grad_steps == 1
    assert any("lm.layers.0.weight" in r.getMessage() for r in caplog.records)


def test_state_dict_round_trip_keeps_counters(caplog: pytest.LogCaptureFixture) -> None:
    monitor, params = make_monitor(patience=4)
    params["base_w"].grad = torch.ones(3)
    for _ in range(3):
        monitor.observe()
    state = monitor.state_dict()
    assert state == {"below/projector": 3, "below/fusion": 3, "base_grad_steps": 3}
    resumed, _ = make_monitor(patience=4)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert resumed.state_dict() == state
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stage_a.monitor"):
        resumed.observe()
    assert sum("vanished" in r.getMessage() for r in caplog.records) == 2
    with pytest.raises(ValueError, match="below/lora"):
        resumed.load_state_dict({**state, "below/lora": 0})
