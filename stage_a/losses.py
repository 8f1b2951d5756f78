"""Answer-only losses of Stage A: logits at position t predict token t + 1, labels are -100 off the answer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stage_a.data import IGNORE


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of the selected rows (0 with a grad path if none)."""
    if not rows.any():
        return logits.sum() * 0
    return F.cross_entropy(logits[rows, :-1].flatten(0, 1).float(), labels[rows, 1:].flatten(),
                           ignore_index=IGNORE, label_smoothing=smoothing)


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) True where the logits predict an answer token (labels shifted by one)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE
    return mask
