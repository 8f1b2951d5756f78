"""INT8 quantization with torchao: only the chosen target's Linear layers, exact gate 0, still answers, true byte counts."""

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from stage_a.fusion import FusionConfig
from stage_a.lora import LoraSettings
from stage_a.model import BridgeConfig, SafeModel
from stage_a.projector import ProjectorConfig
from stage_a.quantize import (SCHEMES, TARGETS, component_bytes, is_quantized, parameter_bytes, quantize,
                              quantize_base, tensor_bytes)

AUDIO_DIM = 24


def _safe(llava_dir: Path) -> SafeModel:
    """A tiny SAFE model with LoRA and non-zero fusion / LoRA outputs, so exactness is not a gift of the zero init."""
    torch.manual_seed(3)
    bridge = BridgeConfig(ProjectorConfig(audio_dim=AUDIO_DIM, hidden_size=32, k_max=16),
                          FusionConfig(layers=(1,)), LoraSettings(rank=4))
    model = SafeModel(LlavaForConditionalGeneration.from_pretrained(llava_dir), bridge)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("out.weight") or ".lora_B." in name:
                param.normal_(0, 0.5)
    return model.eval()


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _expected(name: str, target: str) -> bool:
    """Independent statement of the targets: LM Linears and the head (base), projector / fusion / LoRA (bridge)."""
    in_base = (name.startswith("base.model.language_model.") and ".lora_" not in name) or name == "base.lm_head"
    in_bridge = name.startswith(("projector.", "fusion.")) or ".lora_" in name
    return {"base": in_base, "bridge": in_bridge, "both": in_base or in_bridge}[target]


@pytest.mark.parametrize("target", TARGETS)
def test_only_the_targets_linear_layers_are_quantized(llava_dir: Path, target: str) -> None:
    model = _safe(llava_dir)
    names = quantize(model, target, "int8-weight")
    linears = _linears(model)
    quantized = {name for name, m in linears.items() if is_quantized(m.weight)}
    assert quantized == set(names) == {name for name in linears if _expected(name, target)}
    assert not any("vision_tower" in name or "multi_modal_projector" in name for name in quantized)
    if target != "bridge":  # the frozen projections inside peft's LoRA wrappers are base layers
        assert any(name.endswith("q_proj.base_layer") for name in quantized)
    if target != "base":
        assert any(".lora_A." in name for name in quantized) and any(n.startswith("fusion.") for n in quantized)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("target", ["base", "both"])
def test_gate_zero_with_a_quantized_base_equals_the_quantized_base_alone(llava_dir: Path, llava_inputs: dict,
                                                                        scheme: str, target: str) -> None:
    model = _safe(llava_dir)
    quantize(model, target, scheme)
    bare = LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()
    float_logits = bare(**llava_inputs).logits
    quantize_base(bare, scheme)
    reference = bare(**llava_inputs).logits
    assert not torch.equal(reference, float_logits)  # quantization did change the base
    frames = torch.randn(2, 16, AUDIO_DIM)
    assert torch.equal(model(**llava_inputs).logits, reference)
    assert torch.equal(model(audio_frames=frames, k=4, gate=0.0, **llava_inputs).logits, reference)
    mixed = model(audio_frames=frames, k=4, gate=torch.tensor([0.0, 1.0]), **llava_inputs).logits
    assert torch.equal(mixed[0], reference[0]) and not torch.equal(mixed[1], reference[1])
    greedy = dict(max_new_tokens=3, do_sample=False)
    assert torch.equal(model.generate(audio_frames=frames, k=4, gate=0.0, **llava_inputs, **greedy),
                       bare.generate(**llava_inputs, **greedy))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_quantized_bridge_leaves_gate_zero_on_the_float_base(llava_dir: Path, llava_inputs: dict, scheme: str) -> None:
    model = _safe(llava_dir)
    quantize(model, "bridge", scheme)
    reference = LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()(**llava_inputs).logits
    frames = torch.randn(2, 16, AUDIO_DIM)
    assert torch.equal(model(audio_frames=frames, k=4, gate=0.0, **llava_inputs).logits, reference)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_quantized_model_still_answers_close_to_float(llava_dir: Path, llava_inputs: dict, scheme: str) -> None:
    frames = torch.randn(2, 16, AUDIO_DIM)
    audio = dict(audio_frames=frames, k=4, gate=1.0)
    reference = _safe(llava_dir)
    expected = reference(**audio, **llava_inputs).logits
    model = _safe(llava_dir)
    quantize(model, "both", scheme)
    logits = model(**audio, **llava_inputs).logits
    assert torch.isfinite(logits).all() and not torch.equal(logits, expected)
    assert (logits - expected).abs().max() < 0.1 * expected.abs().max()  # INT8 error, not a different model
    assert not torch.equal(logits, model(audio_frames=frames, k=4, gate=0.0, **llava_inputs).logits)  # audio acts
    out = model.generate(**audio, **llava_inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, llava_inputs["input_ids"].shape[1] + 3)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_parameter_bytes_count_int8_storage(llava_dir: Path, scheme: str) -> None:
    model = _safe(llava_dir)
    before = component_bytes(model)
    weights = {name: m.weight.numel() * 4 for name, m in _linears(model).items() if _expected(name, "both")}
    vision = parameter_bytes(model.base.model.vision_tower.parameters())
    names = quantize(model, "both", scheme)
    after = {name: model.get_submodule(name).weight for name in names}
    for name, weight in after.items():  # int8 data, a float32 scale and an int8 zero point per output row
        assert tensor_bytes(weight) == weight.numel() + 5 * weight.shape[0], name
        assert weight.numel() * weight.element_size() == weights[name]  # the naive count would see float32
    shrink = sum(weights.values()) / sum(tensor_bytes(w) for w in after.values())
    assert 3.3 < shrink < 4.0  # ~4x: int8 instead of float32, plus the per-row scales (32-wide rows here)
    assert parameter_bytes(model.base.model.vision_tower.parameters()) == vision
    saved = sum(weights.values()) - sum(tensor_bytes(w) for w in after.values())
    assert sum(before.values()) - sum(component_bytes(model).values()) == saved


def test_bad_target_or_scheme_is_named(llava_dir: Path) -> None:
    model = _safe(llava_dir)
    with pytest.raises(ValueError, match=r"quantization target is 'lm'; expected one of \('base', 'bridge', 'both'\)"):
        quantize(model, "lm", "int8-weight")
    with pytest.raises(ValueError, match=r"quantization scheme is 'int4'; expected one of \('int8-weight', 'int8-dyn"):
        quantize(model, "base", "int4")
    assert not any(is_quantized(m.weight) for m in _linears(model).values())
