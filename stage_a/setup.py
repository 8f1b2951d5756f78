"""Build what a Stage A run needs from its config: base model, SAFE bridge, encoder and data splits.

Empty model or manifest paths mean the embedded world's, built first if missing. Real runs name
hub ids or folders (`model.base_vl: llava-hf/llava-1.5-7b-hf`, `model.clap: laion/clap-htsat-unfused`)
and manifests written by `safe-data convert`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoModelForImageTextToText, AutoProcessor

from shared.cli import InputError
from shared.data.schema import check_manifest_file
from shared.encoders import FrozenAudioEncoder, build_encoder
from shared.features import FeatureCache
from shared.config import load_config
from shared.world.build import WorldConfig, build_world
from stage_a.config import ModelSettings, TrainConfig
from stage_a.data import Collator, Split, load_split
from stage_a.fusion import decoder_layers_path
from stage_a.model import BridgeConfig, SafeModel, lm_hidden_size
from stage_a.projector import ProjectorConfig
from stage_a.provenance import encoder_fingerprint

log = logging.getLogger(__name__)


@dataclass
class Setup:
    """A SAFE model with its processor, collator, frozen audio encoder and checked, encoded splits."""

    model: SafeModel
    processor: object
    collator: Collator
    train: Split | None
    val: Split | None
    test: Split | None
    paths: dict[str, str]
    encoder: FrozenAudioEncoder
    trained_base: tuple[str, ...] = ()  # base parameters the config trains (full fine-tuning's LM), LoRA aside


def check_model_path(name: str, value: str) -> None:
    """A model named by a path must be an existing folder; a hub id (`org/name`, `name`) is left to the loader."""
    if not value or Path(value).expanduser().is_dir():
        return
    try:
        validate_repo_id(value)
    except HFValidationError:
        raise InputError(f"{name} is {value!r}: no such folder, and not a hub id; expected a model folder or a hub "
                         "id such as llava-hf/llava-1.5-7b-hf") from None


def check_paths(cfg: TrainConfig, splits: tuple[str, ...]) -> None:
    """The models and manifests the config names (empty: the embedded world's) exist, before anything is built."""
    m = cfg.model
    used = {"base_vl": True, "clap": m.audio_encoder != "whisper", "whisper": m.audio_encoder != "clap"}
    for key in (k for k, needed in used.items() if needed):
        check_model_path(f"model.{key}", getattr(m, key))
    for split in splits:
        if getattr(cfg.data, split):
            check_manifest_file(getattr(cfg.data, split))


def resolve_paths(cfg: TrainConfig, splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, str]:
    """Model and manifest paths, with the embedded world's filling every empty one that `splits` needs; the named
    ones are checked first (`check_paths`)."""
    check_paths(cfg, splits)
    m, d = cfg.model, cfg.data
    paths = {"base_vl": m.base_vl, "clap": m.clap, "whisper": m.whisper, "train": d.train, "val": d.val, "test": d.test}
    needs_world = [k for k in ("base_vl", *splits) if not paths[k]]
    if m.audio_encoder != "whisper" and not paths["clap"]:
        needs_world.append("clap")
    if m.audio_encoder != "clap" and not paths["whisper"]:
        needs_world.append("whisper")
    if needs_world:
        world = build_world(load_config(WorldConfig, cfg.world))
        defaults = {"base_vl": world / "models" / "vl", "clap": world / "models" / "clap",
                    "whisper": world / "models" / "whisper",
                    **{split: world / "data" / f"{split}.jsonl" for split in ("train", "val", "test")}}
        for key in needs_world:
            paths[key] = str(defaults[key])
        log.info("embedded world at %s provides %s", world, needs_world)
    return paths


def feature_cache(encoder, root: str, variant: str = "") -> FeatureCache:
    """The on-disk feature cache of this encoder (identity + weights); a `variant` (e.g. a corruption of the audio,
    stage_a.robust) is appended to the identity, so its entries never mix with the clean ones."""
    fingerprint = encoder_fingerprint(encoder)
    return FeatureCache(root or Path(platformdirs.user_cache_dir("safe")) / "features",
                        fingerprint["identity"] + variant, fingerprint["weights_sha256"])


def load_base(path: str, dtype: str, device: torch.device | str) -> tuple[torch.nn.Module, object]:
    """The base VL model (frozen later by SafeModel) and its processor."""
    processor = AutoProcessor.from_pretrained(path)
    base = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    return base, processor


def unfreeze_language_model(base: torch.nn.Module, layers_path: str | None = None) -> list[str]:
    """Make the base's language model (the module holding its decoder layers) trainable, LoRA aside; returns the names."""
    lm = decoder_layers_path(base, layers_path).removesuffix(".layers")
    names = [name for name, _ in base.named_parameters() if name.startswith(f"{lm}.") and ".lora_" not in name]
    for name in names:
        base.get_parameter(name).requires_grad_(True)
    return names


def bridge_config(settings: ModelSettings, audio_dim: int, base: torch.nn.Module) -> BridgeConfig:
    """The bridge a run's model settings build around `base` for an encoder of `audio_dim` features."""
    return BridgeConfig(ProjectorConfig(audio_dim, lm_hidden_size(base), k_max=settings.k_max,
                                        depth=settings.projector_depth), settings.fusion, settings.lora)


def build_setup(cfg: TrainConfig, device: torch.device | str = "cpu", splits: tuple[str, ...] = ("train", "val", "test"),
                bridge_dir: str | Path | None = None, strict: bool = True) -> Setup:
    """Load the base, wrap it in SAFE (a saved bridge, or a seeded fresh one) and load the splits via the feature cache.

    A saved bridge must have been trained on this base and encoder (stage_a.provenance), unless strict=False.
    """
    paths = resolve_paths(cfg, splits)
    base, processor = load_base(paths["base_vl"], cfg.model.dtype, device)
    # The frozen encoder runs once per clip into the float32 feature cache, so it stays float32 whatever
    # model.dtype is (its cost is not paid per training step).
    encoder = build_encoder(cfg.model.audio_encoder, paths["clap"], paths["whisper"], str(device), "float32")
    cache = feature_cache(encoder, cfg.data.feature_cache)
    loaded = {name: load_split(name, paths[name], encoder, cache, cfg.data.sample_rate, processor) for name in splits}
    torch.manual_seed(cfg.seed)
    if bridge_dir is not None:
        model = SafeModel.from_bridge(base, bridge_dir, encoder, strict)
    else:
        model = SafeModel(base, bridge_config(cfg.model, encoder.dim, base))
    model.describe_run(encoder, processor)
    model.projector.to(device)
    model.fusion.to(device)
    trained_base = unfreeze_language_model(model.base, cfg.model.fusion.layers_path) if cfg.model.train_base_lm else []
    return Setup(model, processor, Collator(processor), loaded.get("train"), loaded.get("val"), loaded.get("test"), paths,
                 encoder, tuple(trained_base))
