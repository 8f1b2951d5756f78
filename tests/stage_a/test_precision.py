"""bf16 / fp16 bases: float32 bridge with boundary casts, exact gate 0, float32 losses, training runs end to end."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration

from shared.config import load_config
from stage_a.config import TrainConfig
from stage_a.fusion import FusionConfig
from stage_a.lora import LoraSettings
from stage_a.losses import answer_loss
from stage_a.model import WEIGHTS_FILE, BridgeConfig, SafeModel
from stage_a.projector import ProjectorConfig
from stage_a.retention import distill_loss
from stage_a.train import StageATrainer

DTYPES = (torch.bfloat16, torch.float16)


def _safe(llava_dir: Path, dtype: torch.dtype, mode: str) -> SafeModel:
    torch.manual_seed(7)
    bridge = BridgeConfig(ProjectorConfig(audio_dim=24, hidden_size=32, k_max=16),
                          FusionConfig(mode=mode, layers=(1,)), LoraSettings(rank=4))
    model = SafeModel(LlavaForConditionalGeneration.from_pretrained(llava_dir, dtype=dtype), bridge)
    with torch.no_grad():  # non-zero outputs everywhere, so exactness is not a gift of the zero init
        for name, param in model.named_parameters():
            if name.endswith("out.weight") or ".lora_B." in name:
                param.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("mode", ["cross_attention", "prefix"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_float32_bridge_on_a_low_precision_base_is_exact_at_gate_zero(llava_dir: Path, llava_inputs: dict,
                                                                       tmp_path: Path, dtype: torch.dtype,
                                                                       mode: str) -> None:
    model = _safe(llava_dir, dtype, mode)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for n, p in model.base.named_parameters() if ".lora_" not in n} == {dtype}
    reference = LlavaForConditionalGeneration.from_pretrained(llava_dir, dtype=dtype).eval()(**llava_inputs).logits
    frames = torch.randn(2, 16, 24)
    assert torch.equal(model(**llava_inputs).logits, reference)
    assert torch.equal(model(audio_frames=frames, k=4, gate=0.0, **llava_inputs).logits, reference)
    mixed = model(audio_frames=frames.to(dtype), k=4, gate=torch.tensor([1.0, 0.0]), **llava_inputs).logits
    assert mixed.dtype == dtype and torch.equal(mixed[1], reference[1]) and not torch.equal(mixed[0], reference[0])
    answer_loss(mixed, llava_inputs["input_ids"], torch.tensor([True, False]), 0.0).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("projector."))
    saved = load_file(str(model.save_bridge(tmp_path / "bridge") / WEIGHTS_FILE))
    assert {v.dtype for v in saved.values()} == {torch.float32}


def test_losses_are_float32_from_low_precision_logits() -> None:
    logits = torch.randn(2, 5, 11).to(torch.bfloat16).requires_grad_()
    labels = torch.tensor([[-100, -100, 3, 2, -100], [-100, 4, 2, -100, -100]])
    assert answer_loss(logits, labels, torch.tensor([True, True]), 0.1).dtype == torch.float32
    mask = labels != -100
    assert distill_loss(logits, logits.detach() + 1, mask, 2.0).dtype == torch.float32


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_tiny_llava_trains_and_evaluates_in_low_precision(micro_paths: dict, llava_dir: Path, tmp_path: Path,
                                                          dtype: str) -> None:
    values = {"out_dir": str(tmp_path), **micro_paths, "model.base_vl": str(llava_dir), "model.dtype": dtype,
              "steps": 4, "eval_every": 2, "data.test_size": 16}
    trainer = StageATrainer(load_config(TrainConfig, "stage_a_micro", {k: str(v) for k, v in values.items()}))
    before = {k: v.clone() for k, v in trainer.model.trainable_state().items()}
    summary = trainer.run()
    after = trainer.model.trainable_state()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert summary["gate0_max_abs_logit_diff"] == 0.0 and summary["vl_acc_gate0"] == summary["vl_acc_base"]
    assert all(entry["gate0_max_abs_logit_diff"] == 0.0 for entry in summary["history"])
    assert json.loads((tmp_path / "stage_a_micro" / "summary.json").read_text())["model_dtype"] == dtype
    saved = load_file(str(tmp_path / "stage_a_micro" / "best" / WEIGHTS_FILE))
    assert {v.dtype for v in saved.values()} == {torch.float32}


def test_float16_scales_the_loss_and_skips_overflowing_steps(micro_paths: dict, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import stage_a.train as train_module

    values = {"out_dir": str(tmp_path), **micro_paths, "model.dtype": "float16", "gate_schedule": "none"}
    trainer = StageATrainer(load_config(TrainConfig, "stage_a_micro", {k: str(v) for k, v in values.items()}))
    assert trainer.train_step(0)["loss_scale"] == 2.0**16
    before = {k: v.clone() for k, v in trainer.model.trainable_state().items()}
    original = train_module.answer_loss
    monkeypatch.setattr(train_module, "answer_loss", lambda *args: original(*args) * 1e35)  # finite, overflows scaled
    assert trainer.train_step(1)["loss_scale"] == 2.0**16 and trainer.scaler.get_scale() == 2.0**15
    assert all(torch.equal(before[k], v) for k, v in trainer.model.trainable_state().items())
    monkeypatch.setattr(train_module, "answer_loss", original)
    trainer.train_step(2)
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.trainable_state().items())
    bf16 = StageATrainer(load_config(TrainConfig, "stage_a_micro", {**{k: str(v) for k, v in values.items()},
                                                                    "model.dtype": "bfloat16", "name": "bf16"}))
    assert not bf16.scaler.is_enabled() and "loss_scale" not in bf16.train_step(0)


def test_training_the_base_lm_in_low_precision_is_refused() -> None:
    from shared.config import ConfigError

    with pytest.raises(ConfigError, match="train_base_lm is true with model.dtype bfloat16; expected float32"):
        load_config(TrainConfig, "baseline_full_ft", {"model.dtype": "bfloat16"})
