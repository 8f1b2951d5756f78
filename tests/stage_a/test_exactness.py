"""Exactness checks that can fail: gates outside [0, 1] are errors, and planted bridge bugs that only act when the
bridge runs (a LoRA branch that ignores the per-row mask, NaN updates in inactive rows) fail `stage_a-check` and give
the evaluator a gate-0 logit difference > 0, while the correct bridge gives exactly 0."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from shared.config import load_config
from shared.encoders import build_encoder
from stage_a.check import main as check_main
from stage_a.config import TrainConfig
from stage_a.evaluate import EvalSettings, Evaluator, eval_rows
from stage_a.exactness import PARTNER_GATE, fill_zero_init, max_abs_diff, twin_gates, twin_rows
from stage_a.fusion import FusionAdapter, FusionBlock, FusionConfig, active_samples
from stage_a.lora import AudioOnlyLora, LoraSettings
from stage_a.model import BridgeConfig, SafeModel
from stage_a.pipeline import SafePipeline
from stage_a.projector import ProjectorConfig
from stage_a.setup import build_setup

INF = float("inf")


@contextmanager
def _lora_for_every_row(self: AudioOnlyLora, mask: torch.Tensor) -> Iterator[None]:
    """Planted bug: the audio scope switches LoRA on for every row of the batch, so gate-0 rows get its branch too."""
    self._active = torch.ones_like(mask)
    try:
        yield
    finally:
        self._active = None


_block_forward = FusionBlock.forward


def _nan_in_inactive_rows(self: FusionBlock, hidden: torch.Tensor, audio: torch.Tensor, audio_mask: torch.Tensor,
                          gate: torch.Tensor) -> torch.Tensor:
    """Planted bug: the block gates by multiplying instead of selecting rows, and an inactive row's update is NaN
    (as all-masked attention gives), so 0 * NaN reaches the gate-0 rows."""
    active = active_samples(gate, audio_mask)
    update = torch.where(active[:, None, None], _block_forward(self, hidden, audio, audio_mask, gate) - hidden,
                         float("nan"))
    return hidden + gate.to(hidden.dtype)[:, None, None] * update


PLANTS = {"lora_on_every_row": (AudioOnlyLora, "active", _lora_for_every_row),
          "fusion_nan_in_inactive_rows": (FusionBlock, "forward", _nan_in_inactive_rows)}


def _safe(llava_dir: Path) -> SafeModel:
    torch.manual_seed(0)
    bridge = BridgeConfig(ProjectorConfig(audio_dim=8, hidden_size=32), FusionConfig(layers=(1,)), LoraSettings(rank=4))
    model = SafeModel(LlavaForConditionalGeneration.from_pretrained(llava_dir), bridge)
    fill_zero_init(model, seed=0)
    return model


@pytest.mark.parametrize("gate, shown", [(-0.5, "gate is -0.5"), (float("nan"), "gate is nan"), (1.5, "gate is 1.5"),
                                         (torch.tensor([0.0, -0.25]), "gate has [-0.25] at rows [1]"),
                                         (torch.tensor([float("nan"), 1.0]), "gate has [nan] at rows [0]"),
                                         (torch.tensor([1.0, 2.0]), "gate has [2.0] at rows [1]")])
def test_a_gate_outside_0_1_is_an_error_naming_it_never_no_audio(llava_dir: Path, llava_inputs: dict, gate,
                                                                 shown: str) -> None:
    model = _safe(llava_dir)
    frames = torch.randn(2, 6, 8)
    for audio in ({"audio_frames": frames, "k": 4}, {}):  # with audio, and without: never the base path
        with pytest.raises(ValueError, match=r"expected .*\[0, 1\]") as err:
            model(gate=gate, **audio, **llava_inputs)
        assert shown in str(err.value)
        with pytest.raises(ValueError, match="expected"):
            model.generate(gate=gate, **audio, **llava_inputs, max_new_tokens=2, do_sample=False)
    adapter = model.fusion
    assert isinstance(adapter, FusionAdapter)
    with pytest.raises(ValueError, match="expected"):
        with adapter.audio(torch.randn(2, 4, 32), torch.ones(2, 4), gate):
            pass


@pytest.mark.parametrize("gate", [-1.0, float("nan"), 1.5])
def test_the_pipeline_refuses_a_gate_outside_0_1(llava_dir: Path, clap_dir: Path, gate: float) -> None:
    """SafePipeline used to treat a gate <= 0 as "no audio" before the model saw it."""
    pipe = SafePipeline(_safe(llava_dir), AutoProcessor.from_pretrained(llava_dir),
                        build_encoder("clap", str(clap_dir), None, "cpu", "float32"), default_k=4, device="cpu")
    request = pipe.prepare(np.zeros((48, 48, 3), dtype=np.uint8), (np.zeros(16000, dtype=np.float32), 16000),
                           "what color is the circle?")
    with pytest.raises(ValueError, match=f"gate is {gate}; expected a number in"):
        pipe.answer([request], gate=gate)


def test_helpers_pair_rows_and_count_nan_as_infinite() -> None:
    assert twin_rows([3, 7]) == [3, 3, 7, 7]
    assert twin_gates(2, PARTNER_GATE).tolist() == [0.0, 1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="partner gate is 0.0; expected a value in"):
        twin_gates(2, 0.0)
    base = torch.tensor([[1.0, -INF, 3.0]])
    assert max_abs_diff(base.clone(), base) == 0.0  # equal infinities are exact
    assert max_abs_diff(torch.tensor([[1.0, -INF, 3.5]]), base) == 0.5
    assert max_abs_diff(torch.tensor([[float("nan"), -INF, 3.0]]), base) == INF


@pytest.mark.parametrize("extra", [[], ["--lora-rank", "0"], ["--fusion-mode", "prefix"]])
def test_check_passes_the_correct_bridge(extra: list[str], llava_dir: Path, clap_dir: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    """With LoRA (the default), with the fusion blocks alone, and in prefix mode: gate-0 rows of the mixed batch
    exact, its gate-1 rows changed and equal to an all-gate-1 batch's."""
    assert check_main(["--base-vl", str(llava_dir), "--clap", str(clap_dir), "--json", *extra]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["lora_rank"] == (0 if extra[:1] == ["--lora-rank"] else 16) and report["exact"]
    assert report["mixed_gate1_rows_change"] and report["mixed_gate1_rows_equal_all_gate1"]
    assert report["checks"]["mixed_gate0_rows"] == {"logits": True, "generate": True, "max_abs_logit_diff": 0.0}


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_check_fails_a_bridge_that_leaks_only_when_it_runs(plant: str, llava_dir: Path, clap_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    """The shortcut checks (scalar gate 0, no audio) never reach the bridge, so they stay exact: the mixed batch,
    the decisive check, is what fails, and `stage_a-check` exits 1."""
    monkeypatch.setattr(*PLANTS[plant])
    assert check_main(["--base-vl", str(llava_dir), "--clap", str(clap_dir), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    checks = report["checks"]
    assert report["exact"] is False and checks["mixed_gate0_rows"]["logits"] is False
    assert checks["mixed_gate0_rows"]["max_abs_logit_diff"] > 0
    assert checks["gate0"]["max_abs_logit_diff"] == 0.0 and checks["no_audio"]["max_abs_logit_diff"] == 0.0
    if plant == "fusion_nan_in_inactive_rows":
        assert checks["mixed_gate0_rows"]["max_abs_logit_diff"] == INF


@pytest.fixture(scope="module")
def micro_eval(micro_paths: dict[str, str]) -> Evaluator:
    """An evaluator on 24 val rows of the micro world, its bridge's zero-init outputs filled (so it acts), built
    before any bug is planted; batches of 8 make the VL rows span several mixed batches."""
    setup = build_setup(load_config(TrainConfig, "stage_a_micro", micro_paths), splits=("val",))
    fill_zero_init(setup.model, seed=0, std=0.1)
    rows = eval_rows(setup.val, 24, 0)
    return Evaluator(setup.model, setup.collator, setup.val, rows, EvalSettings(k=4, batch_size=8))


def test_evaluator_gate0_figures_come_from_mixed_batches_and_are_exact(micro_eval: Evaluator) -> None:
    result = micro_eval.run()
    assert result["gate0_max_abs_logit_diff"] == 0.0 and result["gate0_answers_differ"] == 0
    assert result["gate0_mixed_rows"] == len(micro_eval.vl_rows) > 4
    assert result["vl_acc_gate0"] == pytest.approx(
        sum(micro_eval._score(micro_eval.base_gate0_raw).values()) / len(micro_eval.vl_rows))


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_evaluator_reports_a_gate0_difference_for_a_leaking_bridge(plant: str, micro_eval: Evaluator,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(*PLANTS[plant])
    result = micro_eval.run()
    assert result["gate0_max_abs_logit_diff"] > 0
    if plant == "fusion_nan_in_inactive_rows":
        assert result["gate0_max_abs_logit_diff"] == INF


def test_evaluator_in_prefix_mode_compares_with_the_gate0_rows_alone(micro_paths: dict[str, str]) -> None:
    setup = build_setup(load_config(TrainConfig, "stage_a_micro", {**micro_paths, "model.fusion.mode": "prefix"}),
                        splits=("val",))
    fill_zero_init(setup.model, seed=0, std=0.1)
    evaluator = Evaluator(setup.model, setup.collator, setup.val, eval_rows(setup.val, 12, 0),
                          EvalSettings(k=4, batch_size=8))
    result = evaluator.run()
    assert result["gate0_max_abs_logit_diff"] == 0.0 and result["gate0_answers_differ"] == 0
