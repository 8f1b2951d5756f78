"""SAFE model: a frozen base VL model plus the trainable bridge (projector + gated fusion).

The audio encoder stays outside: the model takes frame-level features (B, T, C) with a frame
mask (1 = valid), which come from the frozen encoder through the feature cache. Per call, the
caller chooses k (audio tokens) and a gate per sample; samples without valid frames, or with
gate 0, run the base model's exact computation. The fusion is the gated cross-attention adapter
(stage_a.fusion) or, for comparison, prefix tokens spliced into the input embeddings (stage_a.prefix).

Precision (bf16 / fp16 bases): the bridge keeps float32 master weights whatever the base's dtype,
and computes in float32, casting at its boundaries; no autocast is used, so CPU and GPU run the
same arithmetic. Audio features enter the projector as float32; a fusion block casts the LM's
hidden states to float32, computes its update there and returns the fused residual in the LM's
dtype; prefix tokens are cast to the embedding's dtype where they are spliced; LoRA weights are
cast to float32 after injection, and peft casts their input to that dtype and their sum back to
the base layer's. Gate-0 and no-audio rows keep the base's own tensors (torch.where / the bare
base call), so they stay bit-identical in any dtype. Losses are computed in float32 from the
logits (stage_a.losses, stage_a.retention), the optimizer steps float32 weights (with dynamic loss
scaling under float16, stage_a.train), and the saved bridge is float32. The frozen audio encoder
runs in float32 too: its features are computed once per clip into the float32 feature cache.

Only the bridge is saved: `adapter.safetensors` plus `safe_config.json` beside it. The config also holds the
bridge's record (stage_a.provenance): the base and encoder it was trained with, its prompt format and the SAFE
version; `from_bridge` refuses a different base or encoder unless strict=False.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from shared.checkpoint import atomic_directory, readable_folder
from shared.loading import load_json, load_safetensors
from stage_a.fusion import (FusionAdapter, FusionConfig, active_samples, check_gate, decoder_layers_path,
                             gate_vector)
from stage_a.lora import AudioOnlyLora, LoraSettings
from stage_a.prefix import PrefixSplicer
from stage_a.projector import AudioProjector, ProjectorConfig
from stage_a.provenance import (BridgeMismatch, base_fingerprint, encoder_fingerprint, prompt_record, safe_version,
                                 verify_record)

MASTER_DTYPE = torch.float32  # the bridge's weights and compute dtype, whatever the base's dtype
WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "safe_config.json"
BRIDGE_FILE = "a file of a bridge folder written by stage_a-train"


@dataclass
class BridgeConfig:
    """Everything needed to rebuild the trainable bridge around a base model."""

    projector: ProjectorConfig
    fusion: FusionConfig
    lora: LoraSettings = field(default_factory=LoraSettings)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str) -> "BridgeConfig":
        try:
            fusion = dict(data["fusion"])
            fusion["layers"] = tuple(fusion.get("layers", ()))
            lora = dict(data.get("lora", {}))
            lora["targets"] = tuple(lora.get("targets", LoraSettings.targets))
            return cls(ProjectorConfig(**data["projector"]), FusionConfig(**fusion), LoraSettings(**lora))
        except (KeyError, TypeError) as err:
            raise ValueError(f"{where}: bridge config does not fit (missing or unknown key: {err})") from err


def bridge_k_max(bridge_dir: str | Path) -> int:
    """The largest k a saved bridge serves (its projector's k_max), read from its config without loading anything."""
    path = Path(bridge_dir) / CONFIG_FILE
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["projector"]["k_max"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a bridge config with a projector k_max ({err!r})") from err


def lm_hidden_size(base: nn.Module) -> int:
    """Hidden size of the base model's language model."""
    config = base.config
    text = getattr(config, "text_config", None) or config
    return int(text.hidden_size)


class SafeModel(nn.Module):
    """Frozen base VL model with an audio bridge; forward/generate accept audio features."""

    def __init__(self, base: nn.Module, bridge: BridgeConfig) -> None:
        super().__init__()
        if bridge.projector.hidden_size != lm_hidden_size(base):
            raise ValueError(f"projector hidden_size is {bridge.projector.hidden_size}; "
                             f"expected the LM hidden size {lm_hidden_size(base)}")
        self.base = base.eval().requires_grad_(False)
        self.bridge_config = bridge
        self.projector = AudioProjector(bridge.projector).to(MASTER_DTYPE)
        self.fusion = (PrefixSplicer(base) if bridge.fusion.mode == "prefix"
                       else FusionAdapter(base, bridge.projector.hidden_size, bridge.fusion).to(MASTER_DTYPE))
        # The decoder-layer list the bridge sits on, for its record; prefix fusion without LoRA needs none.
        uses_layers = bridge.fusion.mode != "prefix" or bridge.lora.rank > 0
        self.layers_path = decoder_layers_path(base, bridge.fusion.layers_path) if uses_layers else None
        self.lora = AudioOnlyLora(base, bridge.lora, bridge.fusion.layers_path) if bridge.lora.rank > 0 else None
        self.context: dict = {}  # the encoder and prompt parts of the record, set by `describe_run`
        for param in AudioOnlyLora.state(base).values():  # peft injects LoRA in the base's dtype
            param.data = param.data.to(MASTER_DTYPE)

    def train(self, mode: bool = True) -> "SafeModel":
        """Only the bridge switches mode; the frozen base always stays in eval mode."""
        self.projector.train(mode)
        self.fusion.train(mode)
        self.training = mode
        return self

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The bridge's weights, the only thing a SAFE checkpoint holds."""
        lora = AudioOnlyLora.state(self.base) if self.lora else {}
        return {**{f"projector.{k}": v for k, v in self.projector.state_dict().items()},
                **{f"fusion.{k}": v for k, v in self.fusion.state_dict().items()},
                **{f"lora.{k}": v for k, v in lora.items()}}

    def _lora_scope(self, active: torch.Tensor) -> Any:
        return self.lora.active(active) if self.lora else nullcontext()

    def _run(self, method: Any, inputs: dict, audio_frames: torch.Tensor | None, frame_mask: torch.Tensor | None,
             k: int | list[int], gate: torch.Tensor | float, generate: bool) -> Any:
        check_gate(gate)  # a negative or NaN gate is an error here, before it could pass for "audio off"
        if audio_frames is None or not bool((torch.as_tensor(gate) > 0).any()):
            return method(**inputs)  # the exact base path, without running the projector
        if isinstance(k, int):
            tokens, token_mask = self.projector(audio_frames, k, frame_mask)
        elif isinstance(self.fusion, PrefixSplicer):
            raise ValueError("k per row needs cross-attention fusion; prefix fusion takes one k per batch")
        else:
            tokens, token_mask = self.projector.per_row(audio_frames, k, frame_mask)
        gates = gate_vector(gate, tokens.shape[0], tokens.device)
        active = active_samples(gates, token_mask)
        if isinstance(self.fusion, PrefixSplicer):
            return self.fusion.run(method, inputs, tokens, active, gates, generate, self._lora_scope)
        with self.fusion.audio(tokens, token_mask, gates), self._lora_scope(active):
            return method(**inputs)

    def forward(self, audio_frames: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None,
                k: int | list[int] = 8, gate: torch.Tensor | float = 1.0, **inputs: Any) -> Any:
        return self._run(self.base, inputs, audio_frames, frame_mask, k, gate, generate=False)

    @torch.no_grad()
    def generate(self, audio_frames: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None,
                 k: int | list[int] = 8, gate: torch.Tensor | float = 1.0, **inputs: Any) -> torch.Tensor:
        return self._run(self.base.generate, inputs, audio_frames, frame_mask, k, gate, generate=True)

    def describe_run(self, encoder, processor) -> None:
        """Remember the frozen encoder and the processor's prompt format for the record of every bridge written."""
        self.context = {"encoder": encoder_fingerprint(encoder), "prompt": prompt_record(processor)}

    def record(self) -> dict:
        """What this bridge was trained with (stage_a.provenance); encoder and prompt are None without `describe_run`."""
        return {"safe_version": safe_version(), "base": base_fingerprint(self.base),
                "encoder": self.context.get("encoder"), "prompt": self.context.get("prompt"),
                "bridge": {"k_max": self.bridge_config.projector.k_max, "fusion_mode": self.bridge_config.fusion.mode,
                           "layers": list(self.fusion.layer_indices), "layers_path": self.layers_path}}

    def write_bridge(self, folder: Path) -> None:
        """Write adapter.safetensors and safe_config.json (config + record) into a folder (the caller makes it atomic)."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.trainable_state().items()}
        save_file(state, str(folder / WEIGHTS_FILE))
        config = {**self.bridge_config.to_json(), "record": self.record()}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")

    def save_bridge(self, out_dir: str | Path) -> Path:
        """Write the bridge folder atomically; returns it."""
        with atomic_directory(out_dir) as tmp:
            self.write_bridge(tmp)
        return Path(out_dir)

    def load_trainable_state(self, state: dict[str, torch.Tensor], where: str) -> None:
        """Load bridge weights saved by `write_bridge` (from the bridge folder `where`); a missing, unexpected or
        differently shaped parameter (a bridge trained on another base) raises BridgeMismatch naming it."""
        shapes = {name: tuple(tensor.shape) for name, tensor in self.trainable_state().items()}
        missing, unexpected = sorted(shapes.keys() - state.keys()), sorted(state.keys() - shapes.keys())
        if missing or unexpected:
            raise BridgeMismatch(f"{where}: missing keys {missing}, unexpected keys {unexpected}; expected the "
                                 "parameters of a bridge built on this base")
        wrong = [name for name in sorted(shapes) if tuple(state[name].shape) != shapes[name]]
        if wrong:
            first = wrong[0]
            raise BridgeMismatch(f"{where}: bridge parameter {first!r} has shape {tuple(state[first].shape)}, the "
                                 f"bridge built on this base has {shapes[first]} ({len(wrong)} of {len(shapes)} "
                                 "parameters differ in shape); the bridge was trained on another base")
        self.projector.load_state_dict({k[len("projector."):]: v for k, v in state.items() if k.startswith("projector.")})
        self.fusion.load_state_dict({k[len("fusion."):]: v for k, v in state.items() if k.startswith("fusion.")})
        lora = {k[len("lora."):]: v for k, v in state.items() if k.startswith("lora.")}
        if lora:
            self.base.load_state_dict(lora, strict=False)

    @classmethod
    def from_bridge(cls, base: nn.Module, bridge_dir: str | Path, encoder=None, strict: bool = True) -> "SafeModel":
        """Rebuild SAFE around a freshly loaded base from a saved bridge folder (safetensors only).

        The bridge's record is checked against `base` and, when given, the frozen `encoder`: a different one raises
        stage_a.provenance.BridgeMismatch naming both, or with strict=False logs a warning.
        """
        bridge_dir = readable_folder(bridge_dir)
        config_path, weights_path = bridge_dir / CONFIG_FILE, bridge_dir / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"SAFE bridge file {path} does not exist; expected {CONFIG_FILE} and {WEIGHTS_FILE}")
        data = load_json(config_path, BRIDGE_FILE)
        verify_record(data.pop("record", None), base, encoder, str(bridge_dir), strict)
        bridge = BridgeConfig.from_json(data, str(config_path))
        try:
            model = cls(base, bridge)
        except ValueError as err:  # the bridge's sizes or layer path are not this base's
            raise BridgeMismatch(f"{bridge_dir}: the bridge does not fit this base ({err})") from err
        model.load_trainable_state(load_safetensors(weights_path, BRIDGE_FILE), str(bridge_dir))
        return model
