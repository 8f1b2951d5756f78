"""peft LoRA on the LM, active only for samples with audio: exactness and save/reload."""

from pathlib import Path

import pytest
import torch
from transformers import Blip2ForConditionalGeneration, LlavaForConditionalGeneration

from stage_a.fusion import FusionConfig
from stage_a.lora import ALL_LINEAR, LoraSettings
from stage_a.model import BridgeConfig, SafeModel
from stage_a.projector import ProjectorConfig


def _model(llava_dir: Path) -> SafeModel:
    torch.manual_seed(4)
    bridge = BridgeConfig(ProjectorConfig(audio_dim=8, hidden_size=32), FusionConfig(layers=(1,)), LoraSettings(rank=4))
    model = SafeModel(LlavaForConditionalGeneration.from_pretrained(llava_dir), bridge)
    with torch.no_grad():
        for name, p in model.base.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.5)
    return model


def test_lora_sits_on_the_language_model_only_and_is_trainable(llava_dir: Path) -> None:
    model = _model(llava_dir)
    lora = [n for n in model.trainable_state() if n.startswith("lora.")]
    assert len(lora) == 2 * 2 * 3  # q and v, A and B, three layers
    assert all("language_model" in n and "vision" not in n for n in lora)
    trainable = {n for n, p in model.base.named_parameters() if p.requires_grad}
    assert trainable == {n[len("lora."):] for n in lora}


def test_lora_is_inactive_without_audio_and_at_gate_zero(llava_dir: Path, llava_inputs: dict) -> None:
    model = _model(llava_dir)  # fusion output still zero-initialised: any change comes from LoRA
    reference = LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()(**llava_inputs).logits
    frames = torch.randn(2, 6, 8)
    assert torch.equal(model(**llava_inputs).logits, reference)
    assert torch.equal(model(audio_frames=frames, k=4, gate=0.0, **llava_inputs).logits, reference)
    mixed = model(audio_frames=frames, k=4, gate=torch.tensor([0.0, 1.0]), **llava_inputs).logits
    assert torch.equal(mixed[0], reference[0]) and not torch.allclose(mixed[1], reference[1])


def test_a_nan_in_a_lora_branch_stays_out_of_inactive_rows(llava_dir: Path, llava_inputs: dict) -> None:
    model = _model(llava_dir)
    reference = LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()(**llava_inputs).logits
    with torch.no_grad():
        next(p for n, p in model.base.named_parameters() if ".lora_B." in n).fill_(float("nan"))
    mixed = model(audio_frames=torch.randn(2, 6, 8), k=4, gate=torch.tensor([0.0, 1.0]), **llava_inputs).logits
    assert torch.equal(mixed[0], reference[0])  # selected, not multiplied: 0 * NaN would be NaN here
    assert torch.isnan(mixed[1]).any()
    assert torch.equal(model(**llava_inputs).logits, reference)  # no audio: the branch runs, and adds exactly 0


def test_lora_survives_save_and_reload(llava_dir: Path, llava_inputs: dict, tmp_path: Path) -> None:
    model = _model(llava_dir)
    frames = torch.randn(2, 6, 8)
    before = model(audio_frames=frames, k=4, gate=1.0, **llava_inputs).logits
    model.save_bridge(tmp_path / "bridge")
    fresh = SafeModel.from_bridge(LlavaForConditionalGeneration.from_pretrained(llava_dir), tmp_path / "bridge")
    assert torch.equal(fresh(audio_frames=frames, k=4, gate=1.0, **llava_inputs).logits, before)


def _wrapped(model: SafeModel) -> set[str]:
    return {n.split(".lora_A.")[0].rsplit(".", 1)[-1] for n in model.trainable_state() if ".lora_A." in n}


def test_all_linear_wraps_every_decoder_projection_of_each_family(llava_dir: Path, blip2_dir: Path) -> None:
    settings = LoraSettings(rank=2, targets=(ALL_LINEAR,))
    llava = SafeModel(LlavaForConditionalGeneration.from_pretrained(llava_dir),
                      BridgeConfig(ProjectorConfig(audio_dim=8, hidden_size=32), FusionConfig(layers=(1,)), settings))
    assert _wrapped(llava) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert all("language_model" in n for n in llava.trainable_state() if n.startswith("lora."))
    blip2 = SafeModel(Blip2ForConditionalGeneration.from_pretrained(blip2_dir),
                      BridgeConfig(ProjectorConfig(audio_dim=8, hidden_size=32), FusionConfig(layers=(1,)), settings))
    assert _wrapped(blip2) == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}


def test_a_target_the_decoder_does_not_have_is_an_error_naming_it(blip2_dir: Path) -> None:
    bridge = BridgeConfig(ProjectorConfig(audio_dim=8, hidden_size=32), FusionConfig(layers=(1,)),
                          LoraSettings(rank=2, targets=("q_proj", "gate_proj")))
    with pytest.raises(ValueError, match=r"lora targets \['gate_proj'\] are not Linear projections .*fc1"):
        SafeModel(Blip2ForConditionalGeneration.from_pretrained(blip2_dir), bridge)
    with pytest.raises(ValueError, match="or \\[all-linear\\] alone"):
        LoraSettings(rank=2, targets=(ALL_LINEAR, "q_proj"))
