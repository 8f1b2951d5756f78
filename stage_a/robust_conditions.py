"""The conditions of the robustness study (stage_a.robust), each as the split SAFE is evaluated on.

- corrupted audio: each clip the rows use is corrupted (shared.corruptions) BEFORE the frozen encoder, and
  its features cached under their own key (`<encoder id>|corruption=<name>|seed=<s>`, plus the babble pool's
  digest), so a rerun reuses them and clean entries are never touched. The returned split holds features only
  for those clips: a row outside them fails loudly instead of silently getting clean audio;
- missing audio: every row answered with NO valid frames (frame mask all False, its frames left in place, so a
  leak of them would show) in mixed batches beside rows that do have audio at gate 1, two passes so every row
  is missing once; each missing row's answer must equal the bare base's on the same batch;
- mismatched audio: every clip replaced by one of another file (a seeded derangement of the split's clips), and
  for world samples the AVHBench-style probe: how often the answer follows the wrong clip.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from shared.data.audio_io import load_audio
from shared.features import AudioRef
from shared.metrics import normalize_prediction
from shared.world.questions import SYNONYMS
from shared.world.spec import SHAPE_OF_SOUND, position_name
from shared.corruptions import Corruption, corrupt_clip
from stage_a.data import Collator, Split
from stage_a.evaluate import EvalSettings
from stage_a.model import SafeModel
from stage_a.setup import feature_cache

log = logging.getLogger(__name__)
DERANGEMENT_TRIES = 100


def clip_key(ref: AudioRef) -> str:
    """A clip's key for seeding and babble choice: its file and window."""
    return f"{ref.path}@{ref.start:.6f}:{'end' if ref.end is None else f'{ref.end:.6f}'}"


def clip_file(key: str) -> str:
    """The audio file of a clip key (`path@start:end`): babble is drawn from other files."""
    return key.rsplit("@", 1)[0]


def corrupted_split(split: Split, corruption: Corruption, rows: Sequence[int], encoder, cache_root: str,
                    sample_rate: int, seed: int) -> Split:
    """`split` with the features of the clips `rows` use replaced by those of the corrupted clips (other clips
    hold None); babble comes from clips of other files of the whole split."""
    refs = {k: r for r in split.clips for k in [clip_key(r)]}
    pool = sorted(refs)
    variant = f"|corruption={corruption.name}|seed={seed}"
    if corruption.noise == "babble":
        variant += f"|pool={hashlib.sha256(chr(0).join(pool).encode()).hexdigest()[:12]}"
    cache = feature_cache(encoder, cache_root, variant)

    @functools.lru_cache(maxsize=64)
    def load(key: str) -> np.ndarray:
        ref = refs[key]
        return load_audio(ref.path, sample_rate, ref.start, ref.end)

    def encode(batch: list[AudioRef]) -> list[torch.Tensor]:
        waves = [corrupt_clip(corruption, load(clip_key(r)), clip_key(r), pool, load, sample_rate=sample_rate,
                              seed=seed, group=clip_file) for r in batch]
        frames, mask = encoder.encode(waves, sample_rate)
        return [f[m] for f, m in zip(frames, mask.bool())]

    used = sorted({split.feature_index[i] for i in rows})
    features: list = [None] * len(split.clips)
    for j, feats in zip(used, cache.features([split.clips[j] for j in used], encode)):
        features[j] = feats
    return dataclasses.replace(split, features=features)


def derangement(groups: Sequence[str], rng: np.random.Generator) -> list[int]:
    """A permutation p with groups[p[i]] != groups[i] for every i (so no fixed point): Sattolo's cyclic shuffle,
    drawn again until no clip lands on one of its own group."""
    n = len(groups)
    if len(set(groups)) < 2:
        raise ValueError(f"cannot derange {n} clips of {len(set(groups))} file(s); expected clips of at least 2 files")
    for _ in range(DERANGEMENT_TRIES):
        perm = list(range(n))
        for i in range(n - 1, 0, -1):
            j = int(rng.integers(i))
            perm[i], perm[j] = perm[j], perm[i]
        if all(groups[perm[i]] != groups[i] for i in range(n)):
            return perm
    raise ValueError(f"no derangement of {n} clips across files in {DERANGEMENT_TRIES} draws; expected clips "
                     "spread over more files")


def mismatched_split(split: Split, seed: int) -> tuple[Split, list[int]]:
    """`split` with every clip's features replaced by those of another file's clip; returns it and the permutation
    (clip j now sounds like clip perm[j])."""
    perm = derangement([r.path for r in split.clips], np.random.default_rng(seed))
    return dataclasses.replace(split, features=[split.features[perm[j]] for j in range(len(split.clips))]), perm


@torch.no_grad()
def missing_audio_pass(model: SafeModel, collator: Collator, split: Split, rows: list[int], settings: EvalSettings,
                       device: torch.device | str) -> dict:
    """Each row answered without valid frames in mixed batches beside rows with audio at gate 1 (alternate rows,
    two passes), against the bare base on the same batch: {"missing": answers, "base": answers, "present_differ"}."""
    if len(rows) < 2:
        raise ValueError(f"missing-audio check needs at least 2 rows to mix; got {len(rows)}")
    captions = [i for i in rows if split.samples[i].family == "caption"]
    questions = [i for i in rows if split.samples[i].family != "caption"]
    missing, base, present_differ = {}, {}, 0
    for group, length in ((questions, settings.max_new_tokens), (captions, settings.caption_max_new_tokens)):
        if not group:
            continue
        chunks = np.array_split(np.array(group), max(1, -(-len(group) // settings.batch_size)))
        for chunk in tqdm(chunks, desc="missing audio", unit="batch", leave=False, disable=len(chunks) < 2):
            chunk = chunk.tolist()
            batch = collator.prompt_batch(split, chunk).to(device)
            width = batch.inputs["input_ids"].shape[1]
            bare = collator.decode(model.base.generate(**batch.inputs, max_new_tokens=length, do_sample=False), width)
            base.update(zip(chunk, bare))
            for parity in (0, 1):
                off = torch.arange(len(chunk), device=batch.frame_mask.device) % 2 == parity
                if len(chunk) < 2 or not bool((~off).any()):
                    raise ValueError(f"missing-audio batch of {len(chunk)} rows has no row with audio beside the "
                                     "missing ones; expected mixed batches")
                frame_mask = batch.frame_mask.clone()
                frame_mask[off] = False
                out = model.generate(audio_frames=batch.frames, frame_mask=frame_mask, k=settings.k, gate=1.0,
                                     **batch.inputs, max_new_tokens=length, do_sample=False)
                answers = collator.decode(out, width)
                for row, answer, is_off, reference in zip(chunk, answers, off.tolist(), bare):
                    if is_off:
                        missing[row] = answer
                    else:
                        present_differ += answer != reference
    return {"missing": missing, "base": base, "present_differ": present_differ}


def _spoken(answer: str) -> str:
    return normalize_prediction(answer).lower()


def _follows(answer: str, target: str) -> bool:
    return _spoken(answer) in {_spoken(a) for a in (target, *SYNONYMS.get(target, ()))}


def implied_answers(split: Split, rows: Sequence[int], perm: Sequence[int], scenes: Sequence[dict]) -> dict[int, str]:
    """For audio-visual world rows: the answer the swapped clip implies with this image's objects, when it differs
    from the true answer (visible: is an object of the swapped sound's shape there; color / where: that object's,
    when exactly one is there); the swapped clip must hold a single sound event."""
    by_key = {s["key"]: s for s in scenes}
    by_audio = {str(Path(s["audio"]).resolve()): s for s in scenes}
    out = {}
    for i in rows:
        sample = split.samples[i]
        scene = by_key.get(sample.meta.get("scene"))
        if sample.family != "audio_visual" or scene is None:
            continue
        swapped = by_audio.get(str(Path(split.clips[perm[split.feature_index[i]]].path).resolve()))
        if swapped is None or len(swapped["events"]) != 1:
            continue
        shape = SHAPE_OF_SOUND[swapped["events"][0]["kind"]]
        sources = [o for o in scene["objects"] if o["shape"] == shape]
        if sample.qtype == "visible":
            implied = "yes" if sources else "no"
        elif len(sources) == 1 and sample.qtype in ("color", "where"):
            (o,) = sources
            implied = o["color"] if sample.qtype == "color" else position_name(o["row"], o["col"])
        else:
            continue
        if implied != sample.meta["answer"]:
            out[i] = implied
    return out


def probe_rates(split: Split, implied: dict[int, str], answers: dict[int, str]) -> dict[str, dict]:
    """Per audio-visual type: of the questions whose wrong clip implies another answer, how many answers follow
    the wrong clip, and how many the true answer."""
    out: dict[str, dict] = {}
    for qtype in sorted({split.samples[i].qtype for i in implied}):
        rows = [i for i in implied if split.samples[i].qtype == qtype]
        wrong = sum(_follows(answers[i], implied[i]) for i in rows)
        right = sum(_follows(answers[i], split.samples[i].meta["answer"]) for i in rows)
        out[qtype] = {"n": len(rows), "follows_wrong_audio": wrong / len(rows), "follows_truth": right / len(rows)}
    return out
