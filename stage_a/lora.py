"""Optional peft LoRA on the base LM's projections, active only for samples that carry audio.

The default preset wraps every Linear of the decoder layers (`all-linear`: attention and MLP);
LoRA goes on language-model projections only: the target regex is anchored on the path of the
LM's decoder layers (stage_a.fusion.decoder_layers_path, the same discovery and override as the
fusion adapter), so the vision tower's q/v projections are never touched. Each LoRA branch's output is selected
by a per-sample activity mask (sample has audio and gate > 0), zero elsewhere; outside an audio context every
sample is inactive. An inactive sample's projection is `base(x) + 0`, bit-identical to the frozen base model even
when a branch misbehaves (a NaN in an inactive row stays out, where multiplying by 0 would let it through), so
gate-0 and no-audio exactness hold with LoRA on. The branches are still evaluated on calls without audio.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from shared.cli import check_number
from stage_a.fusion import decoder_layers_path

ADAPTER = "default"
ALL_LINEAR = "all-linear"  # every nn.Linear of the LM's decoder layers (attention and MLP), whatever the family


@dataclass
class LoraSettings:
    """rank 0 turns LoRA off; targets are LM projection names, or ("all-linear",)."""

    rank: int = 0
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        check_number("lora rank (0 = off)", self.rank, ge=0, integer=True)
        check_number("lora alpha", self.alpha, gt=0)
        if not self.targets or (ALL_LINEAR in self.targets and len(self.targets) > 1):
            raise ValueError(f"lora targets are {list(self.targets)}; expected projection names such as "
                             f"[q_proj, v_proj], or [{ALL_LINEAR}] alone")


def target_names(base: nn.Module, settings: LoraSettings, layers_path: str) -> list[str]:
    """The projection names LoRA wraps: settings.targets, with all-linear expanded to the decoder layers' Linears.

    Every named target must exist in the decoder layers: a target that matches nothing is an error, not a
    silently smaller adapter (e.g. gate_proj on an OPT decoder, whose MLP is fc1 / fc2).
    """
    inside = re.compile(rf"^{re.escape(layers_path)}\.\d+\.")
    found = sorted({name.rsplit(".", 1)[-1] for name, module in base.named_modules()
                    if inside.match(name) and isinstance(module, nn.Linear)})
    if settings.targets == (ALL_LINEAR,):
        return found
    missing = [t for t in settings.targets if t not in found]
    if missing:
        raise ValueError(f"lora targets {missing} are not Linear projections of the LM's decoder layers "
                         f"({layers_path}); expected some of {found} or [{ALL_LINEAR}]")
    return list(settings.targets)


class AudioOnlyLora:
    """LoRA injected into the LM of `base`, gated per sample by an activity mask."""

    def __init__(self, base: nn.Module, settings: LoraSettings, layers_path: str | None = None) -> None:
        path = decoder_layers_path(base, layers_path)
        names = target_names(base, settings, path)
        pattern = rf"^{re.escape(path)}\.\d+\.(.*\.)?(" + "|".join(map(re.escape, names)) + r")$"
        inject_adapter_in_model(LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=pattern), base)
        self.branches = {name: module for name, module in base.named_modules()
                         if name.endswith(f"lora_B.{ADAPTER}")}
        if not self.branches:
            raise ValueError(f"LoRA found no projections named {names} under {path}; "
                             "expected Linear projections of the LM's decoder layers")
        if any("vision" in name for name in self.branches):
            raise ValueError("LoRA reached the vision tower; expected language-model modules only")
        self._active: torch.Tensor | None = None
        self._handles = [m.register_forward_hook(self._gate) for m in self.branches.values()]

    def _gate(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if self._active is None:
            return torch.zeros_like(output)
        active, rows = self._active.bool(), output.shape[0]
        if rows != len(active):  # a layer that flattens (batch, time) into rows first, e.g. OPT's fc1 / fc2
            if rows % len(active):
                raise RuntimeError(f"LoRA branch output has {rows} rows for a batch of {len(active)}; expected "
                                   "the batch, or batch x positions flattened batch-major")
            active = active.repeat_interleave(rows // len(active))
        return torch.where(active.view(-1, *([1] * (output.dim() - 1))), output, output.new_zeros(()))

    @staticmethod
    def state(base: nn.Module) -> dict[str, torch.Tensor]:
        """The LoRA weights of base, by name."""
        return {n: p for n, p in base.named_parameters() if ".lora_" in n}

    @contextmanager
    def active(self, mask: torch.Tensor) -> Iterator[None]:
        """Within this block, LoRA acts on the samples where mask is True."""
        self._active = mask
        try:
            yield
        finally:
            self._active = None
