"""Which stretches of the audio SAFE's answer depends on, and whether an attribution's ranking is faithful.

Occlusion (captum's `Occlusion`): the input is one clip's encoder frames (1, T, C); a window of
`ceil(T / windows)` frames x all channels slides over time without overlap and is replaced by the
baseline, the frozen encoder's frames of a SILENT clip of the same length (a meaningful "no sound
here"); a window's attribution is the drop of the target, the log-probability of SAFE's clean
first answer token at the answer position. The frames are padded to a whole number of windows
with masked-out frames (the projector ignores them), so the windows partition the clip exactly.

Faithfulness (`faithfulness`): deletion replaces windows by the baseline in an order (most
attributed first), step by step, and scores the greedy answer after each step; insertion starts
from the all-baseline clip and restores windows in that order. A curve's area is its mean over the
steps 0..W. A faithful ranking deletes to a low area (accuracy falls at once) and inserts to a
high one, compared with seeded random orders of the same question; `compare` gives the paired
per-question difference (ranked - random) with a 95 % bootstrap CI.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import Occlusion
from scipy import stats

from shared.stats import mean_ci, paired_diff_ci

Forward = Callable[[torch.Tensor], torch.Tensor]     # frames (B, T, C) -> target (B,)
Scorer = Callable[[np.ndarray], np.ndarray]           # keep masks (M, W) bool -> score (M,)


@dataclass(frozen=True)
class Windows:
    """A partition of T valid frames into `count` time windows of `size` frames (the last may be shorter)."""

    frames: int
    size: int

    @classmethod
    def of(cls, frames: int, windows: int) -> "Windows":
        if frames < 1 or windows < 1:
            raise ValueError(f"{frames} frames into {windows} windows; expected at least one of each")
        return cls(frames, math.ceil(frames / windows))

    @property
    def count(self) -> int:
        return math.ceil(self.frames / self.size)

    def bounds(self, j: int) -> tuple[int, int]:
        return j * self.size, min((j + 1) * self.size, self.frames)

    def per_window(self, per_frame: np.ndarray) -> np.ndarray:
        """(W,) sums of a (T,) per-frame quantity over each window."""
        return np.array([per_frame[a:b].sum() for a, b in map(self.bounds, range(self.count))])

    def frame_keep(self, keep: np.ndarray) -> np.ndarray:
        """(M, T) frame mask of the original frames from (M, W) window keep masks."""
        return np.repeat(keep, self.size, axis=1)[:, : self.frames]


def _padded(frames: torch.Tensor, windows: Windows) -> torch.Tensor:
    extra = windows.count * windows.size - frames.shape[1]
    return torch.cat([frames, frames.new_zeros(frames.shape[0], extra, frames.shape[2])], dim=1)


def occlusion(forward: Forward, frames: torch.Tensor, baseline: torch.Tensor, windows: Windows) -> np.ndarray:
    """(W,) drop of `forward` when each window of one clip's valid frames (1, T, C) becomes the baseline's."""
    if frames.shape != baseline.shape or frames.shape[0] != 1 or frames.shape[1] != windows.frames:
        raise ValueError(f"occlusion takes one clip's frames and a baseline of the same shape (1, {windows.frames}, C);"
                         f" got {tuple(frames.shape)} and {tuple(baseline.shape)}")
    padded, base = _padded(frames, windows), _padded(baseline, windows)
    channels = frames.shape[2]

    def target(x: torch.Tensor) -> torch.Tensor:
        return forward(x[:, : windows.frames])

    with torch.no_grad():
        attr = Occlusion(target).attribute(padded, sliding_window_shapes=(windows.size, channels),
                                           strides=(windows.size, channels), baselines=base,
                                           perturbations_per_eval=windows.count)
    return attr[0, :: windows.size, 0].double().cpu().numpy()


def mixed_frames(frames: torch.Tensor, baseline: torch.Tensor, keep: np.ndarray, windows: Windows) -> torch.Tensor:
    """(M, T, C): the clip where `keep` (M, W) is True, the baseline elsewhere."""
    mask = torch.as_tensor(windows.frame_keep(keep), device=frames.device)[..., None]
    return torch.where(mask, frames, baseline)


def deletion_masks(order: np.ndarray) -> np.ndarray:
    """(W+1, W) keep masks: step s has the first s windows of `order` replaced by the baseline."""
    keep = np.ones((len(order) + 1, len(order)), dtype=bool)
    for step in range(1, len(order) + 1):
        keep[step:, order[step - 1]] = False
    return keep


def insertion_masks(order: np.ndarray) -> np.ndarray:
    """(W+1, W) keep masks: step s has only the first s windows of `order` restored from the clip."""
    return ~deletion_masks(order)


def ranking(scores: np.ndarray) -> np.ndarray:
    """Windows from the most to the least attributed (ties: the earlier window first)."""
    return np.argsort(-np.asarray(scores), kind="stable")


def curves(scorer: Scorer, orders: dict[str, np.ndarray], randoms: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Deletion and insertion curves (W+1,) for each named order and the mean over the random orders; every
    distinct keep mask is scored once, in one call."""
    named = {**{f"{kind}:{name}": order for name, order in orders.items() for kind in ("deletion", "insertion")},
             **{f"{kind}:random{r}": order for r, order in enumerate(randoms) for kind in ("deletion", "insertion")}}
    masks = {key: (deletion_masks if key.startswith("deletion") else insertion_masks)(order)
             for key, order in named.items()}
    unique, inverse = np.unique(np.concatenate(list(masks.values())), axis=0, return_inverse=True)
    scores = np.asarray(scorer(unique), dtype=np.float64)[inverse.reshape(-1)]
    steps = len(next(iter(masks.values())))
    out = {key: scores[i * steps: (i + 1) * steps] for i, key in enumerate(masks)}
    for kind in ("deletion", "insertion"):
        out[f"{kind}:random"] = np.mean([out.pop(f"{kind}:random{r}") for r in range(len(randoms))], axis=0)
    return out


def random_orders(windows: int, count: int, seed: int) -> list[np.ndarray]:
    """`count` seeded random window orders."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(windows) for _ in range(count)]


def faithfulness(scorer: Scorer, attributions: dict[str, np.ndarray], n_random: int, seed: int) -> dict[str, dict]:
    """Per attribution: deletion and insertion curves and areas of its ranking and of random orders (mean)."""
    windows = len(next(iter(attributions.values())))
    out_curves = curves(scorer, {name: ranking(a) for name, a in attributions.items()},
                        random_orders(windows, n_random, seed))
    result: dict[str, dict] = {}
    for key, curve in out_curves.items():
        kind, name = key.split(":")
        result.setdefault(name, {})[kind] = {"curve": curve.tolist(), "area": float(curve.mean())}
    return result


def compare(per_question: list[dict[str, dict]], name: str, kind: str) -> dict:
    """Paired per-question area of `name`'s ranking vs random orders for `kind` (deletion or insertion):
    both means with CIs and the difference (ranked - random) with its bootstrap CI and whether it excludes 0."""
    ranked = [q[name][kind]["area"] for q in per_question]
    random = [q["random"][kind]["area"] for q in per_question]
    diff = paired_diff_ci(ranked, random)
    lo, hi = diff["ci95"]
    return {"ranked": mean_ci(ranked), "random": mean_ci(random), "diff": diff, "excludes_0": bool(lo > 0 or hi < 0)}


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation of two attributions, or None when either is constant (undefined)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(stats.spearmanr(a, b).statistic)
