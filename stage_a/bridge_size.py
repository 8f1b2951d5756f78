"""Analytic memory of SAFE around real hub models, counted on torch's meta device (no weights, no memory).

The base VL model and the audio encoder are built from their published configs (`configs/hub/<hub id>/config.json`,
or any model folder) on the meta device, and the bridge is the real `SafeModel` built around that base from a run's
model settings (`stage_a.setup.bridge_config`; by default the `configs/stage_a.yaml` preset): every parameter count
is sum(p.numel()) of the real modules, nothing is re-derived by hand.

Encoders are counted as `shared.encoders` keeps them loaded: `ClapEncoder` holds the whole `ClapModel` (its RoBERTa
text branch too, though frames come from the audio tower alone), `WhisperEncoder` only the encoder of the
`WhisperModel`. The frame features (T frames x C, float32) come from running the encoder network on meta tensors of
its front end's input for one full window: the folder's own preprocessor config if it has one, else laion's front
end for CLAP (`shared.clap_convert.laion_feature_extractor`) and Whisper's 30 s window.

Bytes: the bridge always runs with float32 master weights (stage_a.model.MASTER_DTYPE) and the frozen encoder in
float32 (stage_a.setup, stage_a.pipeline); only the base takes the run's dtype. "deployed" figures use those dtypes.

Inference-time extra activations per request with k audio tokens:
- the k audio tokens, k x H float32 (the projector's output);
- cross_attention fusion (the default): the tokens never enter the LM's KV cache; each fusion block projects them to
  keys and values, 2 x k x rank float32, recomputed on every forward (transient);
- prefix fusion: k more positions in the KV cache, 2 x layers x k x (kv heads x head dim) x bytes of the base dtype
  (`kv_cache_bytes`, tested against a real DynamicCache).
MB = 2**20 bytes, as elsewhere in the project.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForImageTextToText, ClapConfig,
                          ClapFeatureExtractor, ClapModel, PretrainedConfig, WhisperConfig, WhisperFeatureExtractor,
                          WhisperModel)

import configs
from shared.clap_convert import laion_feature_extractor
from shared.clap_features import frames_from_hidden, mel_features
from shared.config import load_config
from stage_a.config import ModelSettings, TrainConfig
from stage_a.fusion import decoder_layers_path
from stage_a.lora import AudioOnlyLora
from stage_a.model import MASTER_DTYPE, SafeModel
from stage_a.setup import bridge_config

HUB_DIR = Path(configs.__file__).parent / "hub"
BASES = ("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf")
ENCODERS = ("laion/larger_clap_music_and_speech", "openai/whisper-large-v3")
KS = (4, 8, 16)
MB = 2**20
ENCODER_DTYPE = torch.float32  # the frozen encoder runs in float32 whatever the base's dtype


def hub_folder(name: str | Path) -> Path:
    """A model folder: `name` itself if it is one, else configs/hub/<name> (a hub id)."""
    folder = Path(name) if Path(name).is_dir() else HUB_DIR / str(name)
    if not (folder / "config.json").is_file():
        known = sorted(str(p.parent.relative_to(HUB_DIR)) for p in HUB_DIR.glob("*/*/config.json"))
        raise ValueError(f"model config {name!r}: no config.json at {folder}; expected a model folder or one of {known}")
    return folder


def hub_config(name: str | Path) -> PretrainedConfig:
    """The config of a model folder or of a hub id stored under configs/hub."""
    return AutoConfig.from_pretrained(hub_folder(name))


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def count(module: nn.Module, skip_lora: bool = True) -> int:
    """Parameters of a module (the LoRA weights SAFE injects into the base left out unless skip_lora is False)."""
    return sum(p.numel() for n, p in module.named_parameters() if not (skip_lora and ".lora_" in n))


def meta_base(config: PretrainedConfig) -> nn.Module:
    """The base VL model of `config` on the meta device."""
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def base_components(base: nn.Module) -> dict[str, int]:
    """Base parameters by part: the language model (decoder and lm_head), the vision tower, the connector (the rest)."""
    lm = decoder_layers_path(base).removesuffix(".layers")
    vision = next((name for name, _ in base.named_modules() if name.endswith(("vision_tower", "vision_model"))), None)
    parts = {"language_model": 0, "vision_tower": 0, "connector": 0}
    for name, param in base.named_parameters():
        if ".lora_" in name:
            continue
        part = ("language_model" if name.startswith(f"{lm}.") or name.startswith("lm_head.") else
                "vision_tower" if vision and name.startswith(f"{vision}.") else "connector")
        parts[part] += param.numel()
    return {**parts, "total": sum(parts.values())}


def _front_end(folder: Path, config: PretrainedConfig) -> Any:
    """The folder's own feature extractor (as shared.encoders loads it), else laion's (CLAP) or Whisper's default."""
    cls = ClapFeatureExtractor if isinstance(config, ClapConfig) else WhisperFeatureExtractor
    if any((folder / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        return cls.from_pretrained(folder)
    return laion_feature_extractor(config) if cls is ClapFeatureExtractor else cls(feature_size=config.num_mel_bins)


def encoder_profile(name: str | Path) -> dict:
    """Parameters the frozen encoder keeps loaded and its frame features for one full window (T frames x C)."""
    folder = hub_folder(name)
    config = AutoConfig.from_pretrained(folder)
    if not isinstance(config, (ClapConfig, WhisperConfig)):
        raise ValueError(f"{folder}: config is {type(config).__name__}; expected a ClapConfig or WhisperConfig")
    front_end = _front_end(folder, config)
    if isinstance(config, ClapConfig):
        if config.audio_config.enable_fusion:
            raise ValueError(f"{folder}: a fusion CLAP config; expected an unfused one (torch.nonzero in HTSAT's "
                             "fusion branch has no meta kernel, so its frames cannot be shaped on meta)")
        with torch.device("meta"):
            model = ClapModel(config).eval()
        silent = np.zeros(front_end.nb_max_samples, dtype=np.float32)
        mels = mel_features(front_end, [silent], front_end.sampling_rate).to("meta")
        frames = frames_from_hidden(model.get_audio_features(input_features=mels).last_hidden_state)
        kind, resident, audio_path = "clap", count(model), count(model.audio_model)
        window = front_end.max_length_s
    else:
        with torch.device("meta"):
            encoder = WhisperModel(config).get_encoder().eval()
        silent = np.zeros(front_end.n_samples, dtype=np.float32)
        features = front_end([silent], sampling_rate=front_end.sampling_rate, return_tensors="pt")["input_features"]
        frames = encoder(features.to("meta")).last_hidden_state
        kind, resident, audio_path = "whisper", count(encoder), count(encoder)
        window = front_end.chunk_length
    return {"kind": kind, "params_resident": resident, "params_audio_path": audio_path, "window_seconds": window,
            "frames": int(frames.shape[1]), "frame_dim": int(frames.shape[2])}


def kv_cache_bytes(text_config: PretrainedConfig, tokens: int, dtype: torch.dtype) -> int:
    """KV-cache bytes of `tokens` positions in a decoder: 2 x layers x tokens x (kv heads x head dim) x dtype bytes."""
    heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    return 2 * text_config.num_hidden_layers * tokens * kv_heads * head_dim * dtype_bytes(dtype)


def image_tokens(config: PretrainedConfig) -> int:
    """Image positions in a LLaVA-style prompt: (image size / patch)^2 (the CLS feature is dropped by default)."""
    vision = config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


def default_settings() -> ModelSettings:
    """The bridge settings of the default Stage A preset (configs/stage_a.yaml)."""
    return load_config(TrainConfig, "stage_a").model


def bridge_report(base_name: str | Path, encoder_name: str | Path, settings: ModelSettings | None = None,
                  ks: tuple[int, ...] = KS, base_dtype: torch.dtype = torch.bfloat16) -> dict:
    """Parameters and bytes of base, encoder and SAFE bridge, and the extra activations per request at each k."""
    settings = settings or default_settings()
    base_config = hub_config(base_name)
    encoder = encoder_profile(encoder_name)
    base = meta_base(base_config)
    with torch.device("meta"):
        model = SafeModel(base, bridge_config(settings, encoder["frame_dim"], base))
    base_params = base_components(base)
    bridge = {"projector": count(model.projector), "fusion": count(model.fusion),
              "lora": sum(p.numel() for p in AudioOnlyLora.state(base).values())}
    bridge["total"] = sum(bridge.values())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable != bridge["total"]:
        raise RuntimeError(f"bridge parts sum to {bridge['total']} but SafeModel has {trainable} trainable parameters")
    text = getattr(base_config, "text_config", None) or base_config
    hidden, frame_bytes = model.bridge_config.projector.hidden_size, dtype_bytes(ENCODER_DTYPE)
    fusion = model.bridge_config.fusion
    blocks = 0 if fusion.mode == "prefix" else len(model.fusion.layer_indices)
    sizes = {"base": base_params["total"], "encoder": encoder["params_resident"], "bridge": bridge["total"]}
    in_mb = lambda n, dtype: round(n * dtype_bytes(dtype) / MB, 2)  # noqa: E731
    deployed = {"base": in_mb(sizes["base"], base_dtype), "encoder": in_mb(sizes["encoder"], ENCODER_DTYPE),
                "bridge": in_mb(sizes["bridge"], MASTER_DTYPE)}
    return {
        "base": str(base_name), "encoder": str(encoder_name), "encoder_kind": encoder["kind"],
        "bridge_config": {"k_max": settings.k_max, "projector_depth": settings.projector_depth,
                          "projector_dims": [encoder["frame_dim"], hidden], "fusion_mode": fusion.mode,
                          "fusion_rank": fusion.rank, "fusion_heads": fusion.heads, "placement": fusion.placement,
                          "max_blocks": fusion.max_blocks, "fusion_layers": list(model.fusion.layer_indices),
                          "lora_rank": settings.lora.rank, "lora_targets": list(settings.lora.targets),
                          "lm_layers": text.num_hidden_layers, "lm_hidden": hidden},
        "params": {"base": base_params, "encoder": {"resident": encoder["params_resident"],
                                                    "audio_path": encoder["params_audio_path"]}, "bridge": bridge},
        "mb": {name: {"float32": in_mb(n, torch.float32), "bfloat16": in_mb(n, torch.bfloat16)}
               for name, n in sizes.items()},
        "bridge_pct_of_base": round(100 * bridge["total"] / base_params["total"], 3),
        "deployed_mb": {**deployed, "base_dtype": str(base_dtype).removeprefix("torch."),
                        "extra_over_base": round(deployed["bridge"] + deployed["encoder"], 2),
                        "extra_pct_of_base": round(100 * (deployed["bridge"] + deployed["encoder"]) / deployed["base"], 2)},
        "activations": {
            "frames": encoder["frames"], "frame_dim": encoder["frame_dim"], "window_seconds": encoder["window_seconds"],
            "frame_features_bytes": encoder["frames"] * encoder["frame_dim"] * frame_bytes,
            "kv_bytes_per_token": kv_cache_bytes(text, 1, base_dtype),
            "image_tokens": image_tokens(base_config),
            "image_kv_bytes": kv_cache_bytes(text, image_tokens(base_config), base_dtype),
            "per_k": {str(k): {"audio_tokens_bytes": k * hidden * dtype_bytes(MASTER_DTYPE),
                               "fusion_kv_bytes": blocks * 2 * k * fusion.rank * dtype_bytes(MASTER_DTYPE),
                               "prefix_kv_cache_bytes": kv_cache_bytes(text, k, base_dtype)} for k in ks},
        },
    }
