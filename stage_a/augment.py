"""Training-side audio augmentation: corrupted feature copies of the train split, precomputed once and cached.

The frozen encoder never runs per step. With `augment.copies: N`, each clip an audio-dependent train row uses
gets N corrupted versions, each drawn once per (clip, copy) from a generator seeded by the clip's key, the copy
and `augment.seed` (`shared.corruptions.corruption_rng`): a noise type of `augment.noise` (babble from clips of
other files of the split), an integer SNR in `augment.snr_db`, and, with `augment.mask_fraction` > 0, a
contiguous time mask of up to that fraction. Copy c's features are cached under their own key
(`<encoder id>|augment=copy<c>|...`, see `copy_variant`), so a rerun encodes nothing and clean entries are never
touched. Per training step, each audio-dependent row of the global batch uses one copy (uniformly) with
`augment.probability`, drawn from a generator seeded by (run seed, step), so a resumed run draws the same.
VL rows, and the validation and test splits, always keep their clean features.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging

import numpy as np
import torch

from shared.data.audio_io import load_audio
from shared.features import AudioRef
from stage_a.config import AugmentConfig
from shared.corruptions import Corruption, corrupt_clip, corruption_rng
from stage_a.data import AUDIO_FAMILIES, Split
from stage_a.robust_conditions import clip_file, clip_key
from stage_a.setup import feature_cache

log = logging.getLogger(__name__)
CLEAN_COPY = -1  # a row that keeps its clean features


def copy_variant(cfg: AugmentConfig, copy: int, pool: list[str]) -> str:
    """The feature-cache key suffix of one copy: every setting that changes its audio, and the babble pool's digest."""
    pool_digest = hashlib.sha256(chr(0).join(pool).encode()).hexdigest()[:12]
    return (f"|augment=copy{copy}|seed={cfg.seed}|noise={','.join(cfg.noise)}|snr={cfg.snr_db[0]:g}:{cfg.snr_db[1]:g}"
            f"|mask={cfg.mask_fraction:g}|pool={pool_digest}")


def draw_corruptions(cfg: AugmentConfig, key: str, copy: int) -> tuple[list[Corruption], int]:
    """The corruptions of one (clip, copy), applied in order (a noise at an integer SNR, then an optional mask), and
    the seed of their own draws (`corrupt_clip`), so copies with the same corruption still differ."""
    rng = corruption_rng(f"augment-copy{copy}", key, cfg.seed)
    low, high = int(np.ceil(cfg.snr_db[0])), int(np.floor(cfg.snr_db[1]))  # AugmentConfig: low <= high
    out = [Corruption("noise", noise=cfg.noise[int(rng.integers(len(cfg.noise)))],
                      snr_db=float(rng.integers(low, high + 1)))]
    if cfg.mask_fraction > 0:
        out.append(Corruption("mask", fraction=cfg.mask_fraction * (1.0 - float(rng.random())), layout="contiguous"))
    return out, int(rng.integers(2**62))


def augmented_split(split: Split, cfg: AugmentConfig, encoder, cache_root: str, sample_rate: int) -> Split:
    """`split` with `cfg.copies` corrupted feature sets (`Split.augmented[c][clip]`) for the clips its audio-dependent
    rows use (other clips hold None); every copy is read from, or encoded into, its own feature cache."""
    refs = {clip_key(r): r for r in split.clips}
    pool = sorted(refs)

    @functools.lru_cache(maxsize=64)
    def load(key: str) -> np.ndarray:
        ref = refs[key]
        return load_audio(ref.path, sample_rate, ref.start, ref.end)

    def encoder_for(copy: int):
        def encode(batch: list[AudioRef]) -> list[torch.Tensor]:
            waves = []
            for ref in batch:
                key = clip_key(ref)
                wave = load(key)
                corruptions, seed = draw_corruptions(cfg, key, copy)
                for corruption in corruptions:
                    wave = corrupt_clip(corruption, wave, key, pool, load, sample_rate=sample_rate, seed=seed,
                                        group=clip_file)
                waves.append(wave)
            frames, mask = encoder.encode(waves, sample_rate)
            return [f[m] for f, m in zip(frames, mask.bool())]
        return encode

    used = sorted({split.feature_index[i] for i in split.indices(audio=True)})
    augmented = []
    for copy in range(cfg.copies):
        cache = feature_cache(encoder, cache_root, copy_variant(cfg, copy, pool))
        features: list[torch.Tensor | None] = [None] * len(split.clips)
        for j, feats in zip(used, cache.features([split.clips[j] for j in used], encoder_for(copy))):
            features[j] = feats
        log.info("%s split: augmented copy %d of %d clips (cache %d hits, %d encoded)", split.name, copy, len(used),
                 cache.hits, cache.misses)
        augmented.append(features)
    return dataclasses.replace(split, augmented=augmented)


def choose_copies(split: Split, rows: list[int], cfg: AugmentConfig, seed: int, step: int) -> list[int]:
    """Per row of a global training batch: the augmented copy it uses, or CLEAN_COPY (VL rows always; audio rows
    with 1 - probability); drawn from a generator seeded by (seed, step)."""
    gen = torch.Generator().manual_seed(seed * 1_000_033 + step)
    use = (torch.rand(len(rows), generator=gen) < cfg.probability).tolist()
    pick = torch.randint(cfg.copies, (len(rows),), generator=gen).tolist()
    return [c if u and split.samples[i].family in AUDIO_FAMILIES else CLEAN_COPY for i, u, c in zip(rows, use, pick)]
