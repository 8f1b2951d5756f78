"""SafeModel around a real tiny LLaVA: frozen base, exact no-audio path, bridge-only save and reload."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlavaForConditionalGeneration

from shared.cli import InputError
from shared.world.spec import WorldSpec
from shared.world.vl_model import VLModelConfig, build_base_vl
from stage_a.fusion import FusionConfig
from stage_a.lora import LoraSettings
from stage_a.model import CONFIG_FILE, WEIGHTS_FILE, BridgeConfig, SafeModel
from stage_a.projector import ProjectorConfig
from stage_a.provenance import BridgeMismatch


def _safe(llava_dir: Path) -> SafeModel:
    base = LlavaForConditionalGeneration.from_pretrained(llava_dir)
    torch.manual_seed(3)
    bridge = BridgeConfig(ProjectorConfig(audio_dim=24, hidden_size=32, k_max=16, depth=2), FusionConfig(rank=8, layers=(1,)))
    model = SafeModel(base, bridge)
    with torch.no_grad():
        model.fusion.blocks["1"].out.weight.normal_(0, 1.0)
    return model


def test_base_is_frozen_and_bridge_is_small(llava_dir: Path) -> None:
    model = _safe(llava_dir)
    model.train()
    assert not model.base.training and model.projector.training
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.base.parameters())
    assert trainable == sum(v.numel() for v in model.trainable_state().values())
    assert 0 < trainable and all(not p.requires_grad for p in model.base.parameters()) and frozen > 0


def test_no_audio_and_gate_zero_equal_base(llava_dir: Path, llava_inputs: dict) -> None:
    model = _safe(llava_dir)
    reference = LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()(**llava_inputs).logits
    frames = torch.randn(2, 16, 24)
    assert torch.equal(model(**llava_inputs).logits, reference)
    assert torch.equal(model(audio_frames=frames, k=4, gate=0.0, **llava_inputs).logits, reference)
    assert not torch.allclose(model(audio_frames=frames, k=4, gate=1.0, **llava_inputs).logits, reference)


def test_k_per_row_equals_each_row_with_its_own_k(llava_dir: Path, llava_inputs: dict) -> None:
    model = _safe(llava_dir)
    frames, mask = torch.randn(2, 16, 24), torch.ones(2, 16, dtype=torch.bool)
    mask[1, 9:] = False
    mixed = model(audio_frames=frames, frame_mask=mask, k=[3, 12], **llava_inputs).logits
    for row, k in enumerate((3, 12)):
        alone = model(audio_frames=frames, frame_mask=mask, k=k, **llava_inputs).logits[row]
        torch.testing.assert_close(mixed[row], alone, rtol=0, atol=1e-6)
    other = model(audio_frames=frames, frame_mask=mask, k=3, **llava_inputs).logits[1]
    assert (mixed[1] - other).abs().max() > 1e-3  # row 1 really used its own k
    with pytest.raises(ValueError, match="2 values of k for a batch of 3"):
        model.projector.per_row(torch.randn(3, 4, 24), [2, 2])


def test_bridge_save_and_reload_on_fresh_base(llava_dir: Path, llava_inputs: dict, tmp_path: Path) -> None:
    model = _safe(llava_dir)
    frames, gate = torch.randn(2, 16, 24), torch.tensor([1.0, 0.3])
    before = model(audio_frames=frames, k=8, gate=gate, **llava_inputs).logits
    out = model.save_bridge(tmp_path / "bridge")
    assert sorted(p.name for p in out.iterdir()) == ["adapter.safetensors", "safe_config.json"]
    assert (out / WEIGHTS_FILE).stat().st_size < 200_000
    assert json.loads((out / "safe_config.json").read_text())["fusion"]["layers"] == [1]
    fresh = SafeModel.from_bridge(LlavaForConditionalGeneration.from_pretrained(llava_dir), out)
    assert torch.equal(fresh(audio_frames=frames, k=8, gate=gate, **llava_inputs).logits, before)
    generated = model.generate(audio_frames=frames, k=8, gate=gate, max_new_tokens=3, do_sample=False, **llava_inputs)
    assert torch.equal(fresh.generate(audio_frames=frames, k=8, gate=gate, max_new_tokens=3, do_sample=False, **llava_inputs),
                       generated)


def test_reload_errors_name_the_file(llava_dir: Path, tmp_path: Path) -> None:
    base = LlavaForConditionalGeneration.from_pretrained(llava_dir)
    with pytest.raises(FileNotFoundError, match="safe_config.json does not exist"):
        SafeModel.from_bridge(base, tmp_path)
    bad = BridgeConfig(ProjectorConfig(audio_dim=24, hidden_size=64), FusionConfig())
    with pytest.raises(ValueError, match="hidden_size is 64; expected the LM hidden size 32"):
        SafeModel(base, bad)


@pytest.mark.parametrize("name, kind", [(WEIGHTS_FILE, "safetensors"), (CONFIG_FILE, "JSON")])
def test_a_truncated_bridge_file_is_named(llava_dir: Path, tmp_path: Path, name: str, kind: str) -> None:
    folder = _safe(llava_dir).save_bridge(tmp_path / "bridge")
    (folder / name).write_bytes((folder / name).read_bytes()[: (folder / name).stat().st_size // 2])
    with pytest.raises(InputError, match=rf"^{folder / name}: not a readable {kind} file \(truncated or corrupt: "):
        SafeModel.from_bridge(LlavaForConditionalGeneration.from_pretrained(llava_dir), folder)


def test_a_bridge_parameter_of_another_shape_is_named_with_both_shapes(llava_dir: Path, tmp_path: Path) -> None:
    folder = _safe(llava_dir).save_bridge(tmp_path / "bridge")
    state = load_file(str(folder / WEIGHTS_FILE))
    state["fusion.blocks.1.out.weight"] = torch.zeros(32, 16)
    save_file(state, str(folder / WEIGHTS_FILE))
    with pytest.raises(BridgeMismatch) as err:
        SafeModel.from_bridge(LlavaForConditionalGeneration.from_pretrained(llava_dir), folder)
    assert str(err.value) == (f"{folder}: bridge parameter 'fusion.blocks.1.out.weight' has shape (32, 16), the bridge "
                              "built on this base has (32, 8) (1 of 12 parameters differ in shape); the bridge was trained on another "
                              "base")


def _other_base(folder: Path, **sizes: int) -> Path:
    """A tiny LLaVA like llava_dir's but for `sizes`, saved to folder."""
    torch.manual_seed(0)
    config = VLModelConfig(**{"vision_dim": 32, "text_dim": 32, "vision_layers": 1, "text_layers": 3, **sizes})
    build_base_vl(WorldSpec(size="micro"), config).save_pretrained(folder)
    return folder


def test_a_bridge_from_a_base_of_other_sizes_is_refused_by_name(llava_dir: Path, tmp_path: Path) -> None:
    """The same hidden size, a wider MLP: LoRA on up_proj no longer fits. The record refuses the other base first;
    strict=False gets past it to the weights, whose first misfit is named with both shapes. Another hidden size
    does not fit the projector at all."""
    _other_base(tmp_path / "wide", mlp_ratio=4)
    bridge = BridgeConfig(ProjectorConfig(audio_dim=24, hidden_size=32, k_max=16), FusionConfig(rank=8, layers=(1,)),
                          LoraSettings(rank=2, targets=("up_proj",)))
    folder = SafeModel(LlavaForConditionalGeneration.from_pretrained(llava_dir), bridge).save_bridge(tmp_path / "b")
    with pytest.raises(BridgeMismatch, match=f"{folder}: bridge was trained on base"):
        SafeModel.from_bridge(LlavaForConditionalGeneration.from_pretrained(tmp_path / "wide"), folder)
    with pytest.raises(BridgeMismatch, match=rf"^{folder}: bridge parameter 'lora\..*up_proj\.lora_B.*' has shape "
                                             r"\(64, 2\), the bridge built on this base has \(128, 2\)"):
        SafeModel.from_bridge(LlavaForConditionalGeneration.from_pretrained(tmp_path / "wide"), folder, strict=False)
    _other_base(tmp_path / "wider", text_dim=48)
    with pytest.raises(BridgeMismatch, match=rf"^{folder}: the bridge does not fit this base \(projector hidden_size is "
                                             r"32; expected the LM hidden size 48\)$"):
        SafeModel.from_bridge(LlavaForConditionalGeneration.from_pretrained(tmp_path / "wider"), folder, strict=False)
