"""Audio projector: frame-level encoder features -> k audio tokens in the LM's hidden size.

One set of weights serves any k from 1 to k_max at run time. The valid frames of a clip are
split into k contiguous temporal segments; each segment's frames are averaged (masked), tagged
with a sinusoidal code of the segment's centre time in [0, 1], and sent through a shared MLP.
Token j therefore describes the j-th stretch of time, so larger k keeps more temporal detail
(counting pulses, the order of two sounds) and a pooled vector (k = 1) keeps none.

Mask convention, used everywhere in SAFE: 1 (True) = attend / valid, 0 (False) = ignore / padding.
Padded frames get weight exactly zero; a clip with no valid frame yields all-zero tokens with an
all-False token mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

TIME_CODE_DIM = 16


@dataclass
class ProjectorConfig:
    """Sizes of the projector; width defaults to the LM hidden size."""

    audio_dim: int
    hidden_size: int
    k_max: int = 16
    depth: int = 2
    width: int | None = None

    def __post_init__(self) -> None:
        if not 2 <= self.depth <= 5:
            raise ValueError(f"projector depth is {self.depth}; expected 2 to 5 layers")
        if self.k_max < 1:
            raise ValueError(f"projector k_max is {self.k_max}; expected >= 1")
        if self.audio_dim < 1 or self.hidden_size < 1:
            raise ValueError(f"projector sizes audio_dim={self.audio_dim}, hidden_size={self.hidden_size}; expected >= 1")


def segment_weights(frame_mask: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k, T) averaging weights: row j spreads 1 over the valid frames of segment j.

    With L valid frames (valid frames must come first), segment j covers frames
    [floor(j L / k), max(floor((j+1) L / k), floor(j L / k) + 1)), so no segment is empty
    when L >= 1 (with L < k, neighbouring segments share frames).
    """
    mask = frame_mask.bool()
    batch, frames = mask.shape
    lengths = mask.sum(1)
    if not torch.equal(mask, torch.arange(frames, device=mask.device)[None, :] < lengths[:, None]):
        raise ValueError("frame_mask must mark valid frames first, then padding (1 = valid, 0 = padding)")
    j = torch.arange(k, device=mask.device, dtype=torch.float64)
    start = torch.floor(j[None, :] * lengths[:, None] / k)
    end = torch.maximum(torch.floor((j[None, :] + 1) * lengths[:, None] / k), start + 1)
    t = torch.arange(frames, device=mask.device, dtype=torch.float64)[None, None, :]
    inside = (t >= start[..., None]) & (t < end[..., None]) & mask[:, None, :]
    counts = inside.sum(-1, keepdim=True)
    return torch.where(counts > 0, inside / counts.clamp(min=1), torch.zeros((), dtype=torch.float64))


def time_code(k: int, device: torch.device | None = None) -> torch.Tensor:
    """(k, TIME_CODE_DIM) sinusoidal code of each segment's centre time in [0, 1]."""
    centre = (torch.arange(k, device=device, dtype=torch.float32) + 0.5) / k
    freqs = math.pi * 2.0 ** torch.arange(TIME_CODE_DIM // 2, device=device, dtype=torch.float32)
    angles = centre[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class AudioProjector(nn.Module):
    """Frame features (B, T, C) -> (tokens (B, k, H), token_mask (B, k)) for any k <= k_max."""

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width or config.hidden_size
        dims = [config.audio_dim + TIME_CODE_DIM] + [width] * (config.depth - 1) + [config.hidden_size]
        layers: list[nn.Module] = [nn.LayerNorm(config.audio_dim)]
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < config.depth - 1:
                layers.append(nn.GELU())
        self.norm = layers[0]
        self.mlp = nn.Sequential(*layers[1:])

    def forward(self, frames: torch.Tensor, k: int,
                frame_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not 1 <= k <= self.config.k_max:
            raise ValueError(f"k is {k}; expected 1 to k_max={self.config.k_max}")
        if frames.dim() != 3 or frames.shape[-1] != self.config.audio_dim:
            raise ValueError(f"frames have shape {tuple(frames.shape)}; expected (batch, time, {self.config.audio_dim})")
        if frame_mask is None:
            frame_mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
        frames = frames.to(self.norm.weight.dtype)  # computes in its weights' dtype (float32 master weights)
        weights = segment_weights(frame_mask, k).to(frames.dtype)
        # Padded frames are zeroed before pooling, so even NaN padding contributes nothing.
        clean = torch.where(frame_mask.bool()[..., None], self.norm(frames), torch.zeros((), dtype=frames.dtype))
        pooled = weights @ clean
        code = time_code(k, frames.device).to(frames.dtype).expand(frames.shape[0], k, TIME_CODE_DIM)
        token_mask = weights.sum(-1) > 0
        tokens = self.mlp(torch.cat([pooled, code], dim=-1)) * token_mask[..., None]
        return tokens, token_mask

    def per_row(self, frames: torch.Tensor, ks: list[int],
                frame_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens with each row's own k: (B, max k, H) and a token mask marking each row's first k_i tokens.

        Rows are projected in groups of equal k (the projector is row-wise), so row i's tokens equal
        `forward(frames[i:i+1], ks[i])`; the fusion blocks attend only to masked-in tokens."""
        if len(ks) != frames.shape[0]:
            raise ValueError(f"{len(ks)} values of k for a batch of {frames.shape[0]}; expected one per row")
        if frame_mask is None:
            frame_mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
        tokens = frames.new_zeros(frames.shape[0], max(ks), self.config.hidden_size, dtype=self.norm.weight.dtype)
        token_mask = torch.zeros(frames.shape[0], max(ks), dtype=torch.bool, device=frames.device)
        for k in sorted(set(ks)):
            rows = torch.tensor([i for i, value in enumerate(ks) if value == k], device=frames.device)
            tokens[rows, :k], token_mask[rows, :k] = self(frames[rows], k, frame_mask[rows])
        return tokens, token_mask
