"""Gated fusion adapter: low-rank cross-attention from LM hidden states to audio tokens.

A `FusionBlock` sits after a decoder layer of the frozen LM (through a forward hook) and adds

    h <- h + gate_b * residual_scale * W_out(attend(q = W_q LN(h), k = W_k a, v = W_v a))

for each sample b that has audio tokens a. W_q, W_k, W_v project to rank r (the "LoRA rank" of
the ablations) and W_out starts at zero, so an untrained adapter changes nothing. Samples with
gate 0 or no audio take the untouched path `h` (selected with torch.where, not multiplied by
zero), which makes them bit-identical to the base model whatever the adapter's weights are.

Gradients: because W_out starts at zero, the first step's gradient reaches only W_out; W_q,
W_k, W_v, the block's LayerNorm and the projector feed the update through W_out, so their
gradient is exactly zero until W_out has moved (from the second step on, every part learns).

Mask convention: 1 (True) = attend, 0 (False) = ignore; masked audio tokens get no attention.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from shared.cli import check_number

PLACEMENTS = ("early", "middle", "late", "all")
MODES = ("cross_attention", "prefix")
# Where decoder layers live in the supported families, searched in this order (FusionConfig.layers_path overrides).
LAYER_PATHS = (
    "model.language_model.layers",          # LLaVA, LLaVA-NeXT, Qwen2-VL, PaliGemma, Gemma3 (transformers 5)
    "model.text_model.layers",              # Idefics3, SmolVLM
    "language_model.model.decoder.layers",  # BLIP-2 with an OPT decoder
    "language_model.model.layers",          # BLIP-2 / others with a Llama-style decoder
    "model.layers",                         # plain decoder-only LMs
)
LAYERS_HINT = ("pass the dotted path of the LM's decoder-layer list with --layers-path (stage_a-check) "
               "or --model.fusion.layers_path (stage_a-train), e.g. model.text_model.layers")


@dataclass
class FusionConfig:
    """Adapter mode, sizes and placement (a preset name or explicit decoder-layer indices).

    mode "prefix" splices the audio tokens into the input embeddings instead (stage_a.prefix);
    rank, heads, residual_scale and placement then do not apply. layers_path (e.g. "model.text_model.layers")
    names the LM's decoder-layer list where LAYER_PATHS does not find it; it also anchors the LoRA targets.
    """

    mode: str = "cross_attention"
    rank: int = 8
    heads: int = 2
    residual_scale: float = 0.05
    placement: str = "middle"
    layers: tuple[int, ...] = field(default_factory=tuple)
    max_blocks: int = 3
    layers_path: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"fusion mode is {self.mode!r}; expected one of {MODES}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"fusion placement is {self.placement!r}; expected one of {PLACEMENTS}")
        for name in ("heads", "max_blocks"):
            check_number(f"fusion {name}", getattr(self, name), ge=1, integer=True)
        if self.rank < 1 or self.rank % self.heads:
            raise ValueError(f"fusion rank is {self.rank} with {self.heads} heads; expected a positive multiple of heads")
        check_number("fusion residual_scale", self.residual_scale, gt=0)


def _module_at(model: nn.Module, path: str) -> nn.ModuleList | None:
    node: object = model
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node if isinstance(node, nn.ModuleList) and len(node) > 0 else None


def decoder_layers_path(model: nn.Module, override: str | None = None) -> str:
    """The dotted path of the LM's decoder layers: the override if given, else the first of LAYER_PATHS found."""
    if override is not None:
        if _module_at(model, override) is None:
            raise ValueError(f"layers path {override!r} is not a non-empty module list in {type(model).__name__}; "
                             f"{LAYERS_HINT}")
        return override
    for path in LAYER_PATHS:
        if _module_at(model, path) is not None:
            return path
    raise ValueError(f"cannot locate the decoder layers of {type(model).__name__}; searched {list(LAYER_PATHS)}; "
                     f"{LAYERS_HINT}")


def find_decoder_layers(model: nn.Module, override: str | None = None) -> nn.ModuleList:
    """The LM's decoder layers (see decoder_layers_path), or an error saying what to pass."""
    return _module_at(model, decoder_layers_path(model, override))


def resolve_layers(config: FusionConfig, num_layers: int) -> list[int]:
    """Explicit indices, or up to max_blocks evenly spaced layers in the preset's third of the LM (or all of it)."""
    if config.layers:
        bad = [i for i in config.layers if not 0 <= i < num_layers]
        if bad:
            raise ValueError(f"fusion layers {bad} are out of range; the LM has {num_layers} layers (0..{num_layers - 1})")
        return sorted(set(config.layers))
    a, b = num_layers // 3, 2 * num_layers // 3
    span = {"early": range(0, max(a, 1)), "middle": range(a, max(b, a + 1)), "late": range(b, num_layers),
            "all": range(num_layers)}[config.placement]
    step = max(1, len(span) // config.max_blocks)
    return list(span[::step])[: config.max_blocks]


def check_gate(gate: torch.Tensor | float) -> None:
    """Refuse, naming the values, any gate outside [0, 1]: negative, NaN and > 1 are errors, never "no audio"."""
    values = torch.as_tensor(gate).detach().cpu()
    bad = ~((values >= 0) & (values <= 1))  # NaN fails both comparisons
    if not bad.any():
        return
    if values.dim() == 0:
        raise ValueError(f"gate is {values.item()}; expected a number in [0, 1] (0 = audio off)")
    raise ValueError(f"gate has {values[bad].tolist()} at rows {bad.nonzero().flatten().tolist()}; "
                     "expected every per-sample gate in [0, 1] (0 = audio off)")


def gate_vector(gate: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    """(B,) float gates from a scalar or per-sample gate, checked to lie in [0, 1]."""
    check_gate(gate)
    return torch.as_tensor(gate, dtype=torch.float32, device=device).expand(batch)


def active_samples(gate: torch.Tensor, audio_mask: torch.Tensor) -> torch.Tensor:
    """(B,) True where a sample has at least one valid audio token and a gate above 0."""
    return (gate > 0) & audio_mask.any(-1)


class FusionBlock(nn.Module):
    """One gated, low-rank cross-attention block acting on a decoder layer's output."""

    def __init__(self, hidden_size: int, config: FusionConfig) -> None:
        super().__init__()
        self.heads, self.scale = config.heads, config.residual_scale
        self.norm = nn.LayerNorm(hidden_size)
        self.q = nn.Linear(hidden_size, config.rank, bias=False)
        self.k = nn.Linear(hidden_size, config.rank, bias=False)
        self.v = nn.Linear(hidden_size, config.rank, bias=False)
        self.out = nn.Linear(config.rank, hidden_size, bias=False)
        nn.init.zeros_(self.out.weight)

    def forward(self, hidden: torch.Tensor, audio: torch.Tensor, audio_mask: torch.Tensor,
                gate: torch.Tensor) -> torch.Tensor:
        active = active_samples(gate, audio_mask)
        if not active.any():
            return hidden
        b, n, _ = hidden.shape
        split = lambda x: x.view(b, x.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731
        # The block computes in its weights' dtype (float32 master weights) and returns the LM's dtype.
        dtype = self.out.weight.dtype
        x, audio = hidden.to(dtype), audio.to(dtype)
        q, k, v = split(self.q(self.norm(x))), split(self.k(audio)), split(self.v(audio))
        # Rows with no valid audio token would be all -inf; they are inactive and replaced below.
        attn_mask = audio_mask[:, None, None, :] | ~active[:, None, None, None]
        mixed = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        update = self.out(mixed.transpose(1, 2).reshape(b, n, -1))
        fused = (x + (gate.to(dtype) * self.scale)[:, None, None] * update).to(hidden.dtype)
        return torch.where(active[:, None, None], fused, hidden)


class FusionAdapter(nn.Module):
    """Fusion blocks hooked after chosen decoder layers of a frozen LM; audio is set per call."""

    def __init__(self, base: nn.Module, hidden_size: int, config: FusionConfig) -> None:
        super().__init__()
        layers = find_decoder_layers(base, config.layers_path)
        self.layer_indices = resolve_layers(config, len(layers))
        self.blocks = nn.ModuleDict({str(i): FusionBlock(hidden_size, config) for i in self.layer_indices})
        self._layers = [layers[i] for i in self.layer_indices]  # a plain list: not submodules of the adapter

    @contextmanager
    def audio(self, tokens: torch.Tensor, token_mask: torch.Tensor, gate: torch.Tensor | float) -> Iterator[None]:
        """Within this block, base forward/generate calls see these audio tokens and per-sample gates.

        The hooks exist only inside the block, so outside it the base model runs untouched and at full speed.
        """
        context = (tokens, token_mask.bool(), gate_vector(gate, tokens.shape[0], tokens.device))

        def hook_for(block: FusionBlock):
            def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> torch.Tensor | tuple:
                hidden = output[0] if isinstance(output, tuple) else output
                fused = block(hidden, *context)
                return (fused, *output[1:]) if isinstance(output, tuple) else fused
            return hook

        handles = [layer.register_forward_hook(hook_for(self.blocks[str(i)]))
                   for i, layer in zip(self.layer_indices, self._layers)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
