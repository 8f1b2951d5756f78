"""peft LoRA on the LM, active only for samples with audio: exactness and save/reload."""

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration

from shared.world.spec import WorldSpec
from shared.world.vl_model import VLModelConfig, build_base_vl, build_processor, format_prompt
from stage_a.fusion import FusionConfig
from stage_a.lora import LoraSettings
from stage_a.model import BridgeConfig, SafeModel
from stage_a.projector import ProjectorConfig

SPEC = WorldSpec(size="micro")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base")
    build_base_vl(SPEC, VLModelConfig(vision_dim=32, text_dim=32, vision_layers=1, text_layers=2)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def inputs() -> dict:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(2)]
    prompts = [format_prompt(q) for q in ("what color is the circle?", "is the sound high or low?")]
    return dict(build_processor(SPEC)(images=images, text=prompts, return_tensors="pt", padding=True))


def _model(base_dir: Path) -> SafeModel:
    torch.manual_seed(4)
    bridge = BridgeConfig(ProjectorConfig(audio_dim=8, hidden_size=32), FusionConfig(layers=(1,)), LoraSettings(rank=4))
    model = SafeModel(LlavaForConditionalGeneration.from_pretrained(base_dir), bridge)
    with torch.no_grad():
        for name, p in model.base.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.5)
    return model


def test_lora_sits_on_the_language_model_only_and_is_trainable(base_dir: Path) -> None:
    model = _model(base_dir)
    lora = [n for n in model.trainable_state() if n.startswith("lora.")]
    assert len(lora) == 2 * 2 * 2  # q and v, A and B, two layers
    assert all("language_model" in n and "vision" not in n for n in lora)
    trainable = {n for n, p in model.base.named_parameters() if p.requires_grad}
    assert trainable == {n[len("lora."):] for n in lora}


def test_lora_is_inactive_without_audio_and_at_gate_zero(base_dir: Path, inputs: dict) -> None:
    model = _model(base_dir)  # fusion output still zero-initialised: any change comes from LoRA
    reference = LlavaForConditionalGeneration.from_pretrained(base_dir).eval()(**inputs).logits
    frames = torch.randn(2, 6, 8)
    assert torch.equal(model(**inputs).logits, reference)
    assert torch.equal(model(audio_frames=frames, k=4, gate=0.0, **inputs).logits, reference)
    mixed = model(audio_frames=frames, k=4, gate=torch.tensor([0.0, 1.0]), **inputs).logits
    assert torch.equal(mixed[0], reference[0]) and not torch.allclose(mixed[1], reference[1])


def test_lora_survives_save_and_reload(base_dir: Path, inputs: dict, tmp_path: Path) -> None:
    model = _model(base_dir)
    frames = torch.randn(2, 6, 8)
    before = model(audio_frames=frames, k=4, gate=1.0, **inputs).logits
    model.save_bridge(tmp_path / "bridge")
    fresh = SafeModel.from_bridge(LlavaForConditionalGeneration.from_pretrained(base_dir), tmp_path / "bridge")
    assert torch.equal(fresh(audio_frames=frames, k=4, gate=1.0, **inputs).logits, before)
