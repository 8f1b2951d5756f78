"""What the fusion blocks do on a prompt: their updates' size and their attention over the audio tokens.

`BlockReadout` hooks every `FusionBlock` of a SAFE model (forward hooks on the blocks themselves, so
the blocks' computation is untouched) and recomputes, from each block's own weights and the call's
arguments (hidden, audio_tokens, audio_mask, gate), the cross-attention softmax(q k^T / sqrt(d))
over the audio tokens and the update gate * residual_scale * W_out(attend(...)) the block adds to
the hidden state. `check` compares that update with the block's real output minus its input, so a
readout that drifted from the block's arithmetic is caught (tests/stage_a/test_readouts.py).

Per prompt, `prompt_readouts` keeps for each block: the update's norm relative to the hidden
state's norm at the answer position (the last prompt position: prompts are left-padded) and
averaged over the prompt's valid positions, and the attention over the k audio tokens at the
answer position, averaged over heads. `token_spans` gives each token's time span in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from stage_a.fusion import FusionBlock, active_samples
from stage_a.model import SafeModel
from stage_a.projector import segment_weights


@dataclass
class BlockCall:
    """One call of a fusion block: its input hidden state, the recomputed attention and update, and its output."""

    hidden: torch.Tensor      # (B, N, H) the decoder layer's output, in the block's dtype
    attention: torch.Tensor   # (B, heads, N, k) softmax over the valid audio tokens (zero on masked ones)
    update: torch.Tensor      # (B, N, H) gate * residual_scale * W_out(attend(...)); zero on inactive rows
    output: torch.Tensor      # (B, N, H) what the block returned, in the block's dtype


def recompute(block: FusionBlock, hidden: torch.Tensor, audio: torch.Tensor, audio_mask: torch.Tensor,
              gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(attention (B, heads, N, k), update (B, N, H)) of one block call, from the block's weights."""
    b, n, _ = hidden.shape
    dtype = block.out.weight.dtype
    x, audio = hidden.to(dtype), audio.to(dtype)
    split = lambda t: t.view(b, t.shape[1], block.heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(block.q(block.norm(x))), split(block.k(audio)), split(block.v(audio))
    active = active_samples(gate, audio_mask)
    valid = audio_mask[:, None, None, :] | ~active[:, None, None, None]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    attention = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1)
    mixed = (attention @ v).transpose(1, 2).reshape(b, n, -1)
    update = (gate.to(dtype) * block.scale)[:, None, None] * block.out(mixed)
    keep = active[:, None, None]
    return attention * keep[..., None], update * keep


class BlockReadout:
    """Forward hooks on every fusion block of a model; `calls[layer]` holds the last call of each block."""

    def __init__(self, model: SafeModel) -> None:
        if not hasattr(model.fusion, "blocks"):
            raise ValueError("readouts need cross-attention fusion blocks; this bridge uses prefix fusion")
        self.blocks: dict[int, FusionBlock] = {int(i): block for i, block in model.fusion.blocks.items()}
        self.calls: dict[int, BlockCall] = {}

    def residual_scales(self) -> dict[int, float]:
        """Each block's residual_scale, by decoder layer."""
        return {layer: float(block.scale) for layer, block in self.blocks.items()}

    def _hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            hidden, audio, audio_mask, gate = args
            with torch.no_grad():
                attention, update = recompute(module, hidden, audio, audio_mask, gate)
            dtype = module.out.weight.dtype
            self.calls[layer] = BlockCall(hidden.detach().to(dtype), attention, update, output.detach().to(dtype))
        return hook

    @contextmanager
    def capture(self) -> Iterator["BlockReadout"]:
        """Within this block, every fusion block's call is recorded (hooks are removed on exit)."""
        self.calls = {}
        handles = [block.register_forward_hook(self._hook(layer)) for layer, block in self.blocks.items()]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def check(self, atol: float = 1e-5) -> float:
        """Max |recomputed update - (real output - input)| over the recorded calls; raises beyond `atol`."""
        worst = max(float((call.output - call.hidden - call.update).abs().max()) for call in self.calls.values())
        if not worst <= atol:
            raise RuntimeError(f"recomputed fusion update differs from the block's real update by {worst:.3g} "
                               f"(tolerance {atol:g}); the readout no longer matches stage_a.fusion.FusionBlock")
        return worst


def relative_norms(call: BlockCall, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) ||update|| / ||hidden|| at the last position and (B,) its mean over each row's valid positions."""
    ratio = call.update.norm(dim=-1) / call.hidden.norm(dim=-1).clamp(min=1e-12)
    valid = attention_mask.to(ratio.dtype)
    return ratio[:, -1], (ratio * valid).sum(1) / valid.sum(1)


@torch.no_grad()
def prompt_readouts(model: SafeModel, readout: BlockReadout, inputs: dict, frames: torch.Tensor,
                    frame_mask: torch.Tensor, k: int) -> tuple[torch.Tensor, dict[int, dict[str, torch.Tensor]]]:
    """One forward at gate 1: the last-position logits (B, V) and per block the relative update norms at the
    answer position (`norm_answer`) and over the prompt (`norm_prompt`) and the head-averaged attention over
    the k tokens at the answer position (`attention`, (B, k)); the recomputed update is checked on the way."""
    with readout.capture():
        logits = model(audio_frames=frames, frame_mask=frame_mask, k=k, gate=1.0, **inputs).logits[:, -1].float()
    readout.check()
    out = {}
    for layer, call in sorted(readout.calls.items()):
        answer, prompt = relative_norms(call, inputs["attention_mask"])
        out[layer] = {"norm_answer": answer, "norm_prompt": prompt, "attention": call.attention[:, :, -1].mean(1)}
    return logits, out


def token_spans(frame_mask: torch.Tensor, k: int, seconds: float) -> list[tuple[float, float]]:
    """Each of the k tokens' time span [start, end) in seconds for one clip ((T,) frame mask, `seconds` long):
    token j pools the j-th of k equal segments of the valid frames (stage_a.projector.segment_weights)."""
    weights = segment_weights(frame_mask[None], k)[0]
    per_frame = seconds / int(frame_mask.sum())
    spans = []
    for row in weights:
        inside = torch.nonzero(row > 0).flatten()
        spans.append((float(inside[0]) * per_frame, float(inside[-1] + 1) * per_frame))
    return spans


def frame_attention(attention: torch.Tensor, frame_mask: torch.Tensor, k: int) -> torch.Tensor:
    """(T,) attention over one clip's frames: each token's weight spread evenly over the frames it pools."""
    return attention.double() @ segment_weights(frame_mask[None], k)[0].double()
