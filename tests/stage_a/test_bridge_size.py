"""Analytic bridge sizes (stage_a.bridge_size): meta-device counts equal really built models, hub configs give the
published totals, and the KV-cache formula equals a real DynamicCache."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForImageTextToText, WhisperModel

from shared.clap_convert import PRESETS
from shared.encoders import build_encoder
from stage_a.bridge_size import (base_components, bridge_report, count, default_settings, encoder_profile, hub_config,
                                 kv_cache_bytes, meta_base)
from stage_a.fusion import FusionConfig
from stage_a.lora import AudioOnlyLora, LoraSettings
from stage_a.model import SafeModel
from stage_a.setup import bridge_config, load_base

# Published parameter totals (the hub's safetensors metadata / model cards).
LLAVA_7B_TOTAL = 7_063_427_072         # llava-hf/llava-1.5-7b-hf
LLAMA2_13B_TOTAL = 13_015_864_320      # meta-llama/Llama-2-13b-hf, vocabulary 32000
WHISPER_LARGE_V3_TOTAL = 1_543_490_560  # openai/whisper-large-v3
TOLERANCE = 0.005


def within(value: int, published: int) -> bool:
    return abs(value - published) <= TOLERANCE * published


def _settings(variant: str):
    settings = default_settings()
    if variant == "default":
        return settings
    return replace(settings, projector_depth=3, fusion=FusionConfig(rank=8, heads=2, placement="middle", max_blocks=2),
                   lora=LoraSettings(rank=4, targets=("q_proj", "k_proj", "o_proj")))


@pytest.mark.parametrize("variant", ["default", "other"])
def test_micro_counts_equal_a_built_safe_model(micro_world: Path, variant: str) -> None:
    settings = _settings(variant)
    vl, clap = micro_world / "models" / "vl", micro_world / "models" / "clap"
    base, _ = load_base(str(vl), "float32", "cpu")
    base_total = sum(p.numel() for p in base.parameters())
    encoder = build_encoder("clap", str(clap), None)
    model = SafeModel(base, bridge_config(settings, encoder.dim, base))
    report = bridge_report(vl, clap, settings)
    bridge = report["params"]["bridge"]
    assert bridge["total"] == sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
    assert bridge["projector"] == sum(p.numel() for p in model.projector.parameters())
    assert bridge["fusion"] == sum(p.numel() for p in model.fusion.parameters())
    assert bridge["lora"] == sum(p.numel() for p in AudioOnlyLora.state(model.base).values()) > 0
    assert report["bridge_config"]["fusion_layers"] == model.fusion.layer_indices
    assert report["params"]["base"]["total"] == base_total
    assert report["params"]["encoder"]["resident"] == sum(p.numel() for p in encoder.model.parameters())
    activations = report["activations"]
    assert activations["frame_dim"] == encoder.dim
    assert activations["frames"] * encoder.frame_seconds == pytest.approx(encoder.max_seconds)
    assert report["mb"]["bridge"]["float32"] == pytest.approx(bridge["total"] * 4 / 2**20, abs=0.01)


def test_tiny_deeper_llava_counts_equal_a_built_one(micro_world: Path, tmp_path: Path) -> None:
    """A 4-layer LM built for real from a config (random weights) against the same config counted on meta."""
    config = AutoConfig.from_pretrained(micro_world / "models" / "vl")
    config.text_config.num_hidden_layers = 4
    config.save_pretrained(tmp_path)
    torch.manual_seed(0)
    base = AutoModelForImageTextToText.from_config(config)
    settings = default_settings()
    encoder = build_encoder("clap", str(micro_world / "models" / "clap"), None)
    components = base_components(base)
    model = SafeModel(base, bridge_config(settings, encoder.dim, base))
    report = bridge_report(tmp_path, micro_world / "models" / "clap", settings)
    assert report["params"]["bridge"]["total"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report["params"]["base"] == components
    assert len(report["bridge_config"]["fusion_layers"]) == min(4, settings.fusion.max_blocks)


def test_llava_7b_matches_the_published_total() -> None:
    parts = base_components(meta_base(hub_config("llava-hf/llava-1.5-7b-hf")))
    assert within(parts["total"], LLAVA_7B_TOTAL), parts
    assert parts["total"] == parts["language_model"] + parts["vision_tower"] + parts["connector"]


def test_llava_13b_language_model_matches_llama2_13b() -> None:
    """LLaVA-1.5-13B's LM is Vicuna-13B (Llama-2-13B) with 64 more vocabulary rows in embed_tokens and lm_head."""
    config = hub_config("llava-hf/llava-1.5-13b-hf")
    parts = base_components(meta_base(config))
    extra_rows = 2 * (config.text_config.vocab_size - 32000) * config.text_config.hidden_size
    assert within(parts["language_model"], LLAMA2_13B_TOTAL + extra_rows), parts
    seven = base_components(meta_base(hub_config("llava-hf/llava-1.5-7b-hf")))
    assert parts["vision_tower"] == seven["vision_tower"]  # the same CLIP ViT-L/14-336 tower


@pytest.mark.parametrize("field,value", [("hidden_size", 4160), ("num_hidden_layers", 31), ("intermediate_size", 10000)])
def test_the_published_total_catches_a_wrong_dimension(field: str, value: int) -> None:
    config = hub_config("llava-hf/llava-1.5-7b-hf")
    setattr(config.text_config, field, value)
    if field == "hidden_size":
        config.text_config.head_dim = value // config.text_config.num_attention_heads
    assert not within(base_components(meta_base(config))["total"], LLAVA_7B_TOTAL)


def test_whisper_large_v3_total_and_frames() -> None:
    with torch.device("meta"):
        model = WhisperModel(hub_config("openai/whisper-large-v3"))
    assert within(count(model), WHISPER_LARGE_V3_TOTAL)
    profile = encoder_profile("openai/whisper-large-v3")
    assert profile["params_resident"] == count(model.get_encoder())
    assert (profile["frames"], profile["frame_dim"], profile["window_seconds"]) == (1500, 1280, 30)


def test_hub_clap_is_laion_htsat_base() -> None:
    """The stored CLAP config has the HTSAT-base sizes of shared.clap_convert (parity-tested against laion's code)."""
    audio = hub_config("laion/larger_clap_music_and_speech").audio_config
    preset = PRESETS["htsat-base"]
    assert (audio.patch_embeds_hidden_size, list(audio.depths), list(audio.num_attention_heads)) == (
        preset["patch_embeds_hidden_size"], preset["depths"], preset["num_attention_heads"])
    assert not audio.enable_fusion
    profile = encoder_profile("laion/larger_clap_music_and_speech")
    assert (profile["frames"], profile["frame_dim"]) == (32, audio.hidden_size)  # HTSAT's (B, C, 2, 32) latent


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_bytes_equal_a_real_cache(micro_world: Path, dtype: torch.dtype) -> None:
    base, _ = load_base(str(micro_world / "models" / "vl"), str(dtype).removeprefix("torch."), "cpu")
    lm, text = base.model.language_model, base.config.text_config

    def cache_bytes(tokens: int) -> int:
        ids = torch.arange(tokens)[None] % 10 + 1
        with torch.no_grad():
            cache = lm(input_ids=ids, use_cache=True).past_key_values
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)

    prompt = 12
    for k in (4, 8, 16):
        assert cache_bytes(prompt + k) - cache_bytes(prompt) == kv_cache_bytes(text, k, dtype)


def test_unknown_model_is_named() -> None:
    with pytest.raises(ValueError, match="no-such/model.*expected a model folder or one of"):
        hub_config("no-such/model")


def test_a_non_audio_encoder_is_named() -> None:
    with pytest.raises(ValueError, match="LlavaConfig; expected a ClapConfig or WhisperConfig"):
        encoder_profile("llava-hf/llava-1.5-7b-hf")
