"""Stage A data: checked manifests, cached frozen-encoder features, and batches for the trainer.

Every split is read from a sample manifest (the embedded world's, or a converted dataset's),
checked with `shared.data.check` and its defaults, as `safe-data check` does (corrupt, truncated
or too short audio, missing, truncated or too small images: counted and excluded, never silently
turned into VL samples), then each image a sample is shown goes through the base model's processor
beside one of the processor's own size (`stage_a.prompting.unbatchable_images`): what the processor
cannot batch is excluded too, so no batch meets an image that breaks it. Every exclusion is logged
and kept with the sample's id in `Split.excluded` (a run's summary.json). Its audio windows are
encoded once through the feature cache. VL questions are paired with audio too: their own clip
(the world's scenes have one), or, for datasets whose VL samples have none, a clip of the split's
audio samples chosen by the sample id, so the adapter is active on VL inputs, where it can harm them.

Every modality mix is loaded (each sample keeps its dataset in `Sample.source`):
- an image: shown as is;
- video frames only (MUSIC-AVQA): one frame is shown, the one nearest the middle of the audio
  window (without audio: of the frames' time span; ties: the earlier frame), see `FRAME_RULE`;
- no visual input (AudioCaps captions, Clotho-AQA): the base model's text-only prompt, or a blank
  image where the model cannot run text-only (`stage_a.prompting.no_image_policy`; the policy is
  recorded in the run's summary). Such a sample stays what it is: it is never given an image of
  another sample, and a sample whose family needs a visual input but has none is excluded and
  counted by `shared.data.check`.

Batches are right-padded for training (answer tokens last, labels -100 elsewhere) and
left-padded prompts for generation. Mask convention: 1 = attend / valid, 0 = padding.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from shared.data.audio_io import audio_info
from shared.data.check import CheckReport, Problem, check_manifest
from shared.data.schema import Sample, majority_answer, read_manifest
from shared.features import AudioRef, FeatureCache, pad_frames, valid_frames_encoder
from stage_a.prompting import BLANK_RGB, build_prompt, model_inputs, no_image_policy, unbatchable_images

log = logging.getLogger(__name__)
IGNORE = -100
AUDIO_FAMILIES = ("audio", "audio_visual", "caption")
LISTED = 10  # excluded sample ids named in the log line (all are in Split.excluded)
FRAME_RULE = ("frames-only samples show the frame nearest the middle of the audio window (end clipped to the "
              "file; without audio: the middle of the frames' time span), ties to the earlier frame")


def target_answer(sample: Sample) -> str:
    """The training target: the most frequent annotator answer or caption (ties: the first given)."""
    return majority_answer(sample.answers, f"sample {sample.id!r}: field 'answers'")


def _centre(sample: Sample, durations: dict[str, float]) -> float:
    """Middle of the sample's audio window (end clipped to the file), or of its frames' span without audio."""
    if not sample.has_audio:
        return (min(sample.frame_times) + max(sample.frame_times)) / 2
    if sample.audio not in durations:
        durations[sample.audio] = audio_info(sample.audio).duration  # type: ignore[index]
    end = durations[sample.audio] if sample.audio_end is None else min(sample.audio_end, durations[sample.audio])
    return (sample.audio_start + end) / 2


def visual_input(sample: Sample, durations: dict[str, float]) -> str | None:
    """The image file a sample is shown: its image, else one of its frames (FRAME_RULE), else None."""
    if sample.image is not None or not sample.frames:
        return sample.image
    centre = _centre(sample, durations)
    best = min(range(len(sample.frames)), key=lambda j: (abs(sample.frame_times[j] - centre), sample.frame_times[j]))
    return sample.frames[best]


@dataclass
class Split:
    """One checked split: samples, their targets, audio features, and the image file each sample is shown
    (`visuals`: its image, its chosen frame, or None) with those files loaded once (`images`).
    `excluded`: the manifest's total, the number excluded, counts per kind and each excluded sample
    (index in the manifest, id, kinds). `augmented[c][j]`: clip j's features in augmented copy c (stage_a.augment;
    None for clips no audio-dependent row uses), empty unless the training split is augmented."""

    name: str
    samples: list[Sample]
    targets: list[str]
    features: list[torch.Tensor]
    feature_index: list[int]
    visuals: list[str | None]
    images: dict[str, Image.Image]
    excluded: dict
    clips: list[AudioRef]
    augmented: list[list[torch.Tensor | None]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def clip(self, i: int) -> AudioRef:
        """The audio window sample i is paired with (its own, or the clip a VL sample borrowed)."""
        return self.clips[self.feature_index[i]]

    def image(self, i: int) -> Image.Image | None:
        """The image sample i is shown (its image or chosen frame), or None without visual input."""
        path = self.visuals[i]
        return None if path is None else self.images[path]

    def composition(self) -> dict:
        """Samples per dataset and per visual input (image, frame, none), with the frame rule: for provenance."""
        kinds = Counter("image" if s.image is not None else "frame" if v is not None else "none"
                        for s, v in zip(self.samples, self.visuals))
        return {"sources": dict(sorted(Counter(s.source for s in self.samples).items())),
                "visual_input": {k: kinds.get(k, 0) for k in ("image", "frame", "none")},
                "frame_rule": FRAME_RULE if kinds.get("frame") else None}

    def is_vl(self, i: int) -> bool:
        return self.samples[i].family == "visual"

    def indices(self, audio: bool) -> list[int]:
        """Indices of audio-dependent (True) or VL (False) samples."""
        return [i for i, s in enumerate(self.samples) if (s.family in AUDIO_FAMILIES) == audio]


def _audio_ref(sample: Sample) -> AudioRef:
    return AudioRef(sample.audio, sample.audio_start, sample.audio_end)  # type: ignore[arg-type]


def _borrowed_clip(sample: Sample, pool: list[AudioRef]) -> AudioRef:
    if not pool:
        raise ValueError(f"sample {sample.id!r} has no audio and the split has no audio samples to attach; "
                         "expected VL samples with audio or an audio dataset in the same manifest")
    digest = int(hashlib.sha256(sample.id.encode()).hexdigest()[:8], 16)
    return pool[digest % len(pool)]


def _shown_images(report: CheckReport, processor, durations: dict[str, float]) -> dict[str, Image.Image]:
    """The images the report's clean samples are shown, loaded once; samples whose image the processor cannot
    batch are excluded from the report, each logged with its id."""
    shown = [visual_input(s, durations) for s in report.clean]
    images = {}
    for path in dict.fromkeys(p for p in shown if p is not None):
        with Image.open(path) as im:  # decoded in full by the check a moment ago
            images[path] = im.convert("RGB")
    failed = unbatchable_images(processor, images)
    problems = []
    for index, sample, path in zip(report.kept_indices, report.clean, shown):
        if path in failed:
            field = "image" if path == sample.image else f"frames[{sample.frames.index(path)}]"
            problems.append(Problem(index, sample.id, "unprocessable_image", field, path, failed[path]))
            log.warning("sample %r excluded: %s %s cannot be batched by the processor (%s)", sample.id, field, path,
                        failed[path])
    report.exclude(problems)
    return {path: image for path, image in images.items() if path not in failed}


def load_split(name: str, manifest: str | Path, encoder, cache: FeatureCache, sample_rate: int, processor) -> Split:
    """Read, check and encode one split for the base model's `processor`; excluded samples are counted and logged
    with their ids, never lost silently (see the module docstring)."""
    samples = read_manifest(manifest)
    if not samples:
        raise ValueError(f"manifest {manifest} holds no samples; expected at least one")
    report = check_manifest(samples, sample_rate=sample_rate, progress=False)
    durations: dict[str, float] = {}
    images = _shown_images(report, processor, durations)
    listed = [f"{e['id']} ({', '.join(e['kinds'])})" for e in report.excluded_samples()]
    if listed:
        more = f" and {len(listed) - LISTED} more" if len(listed) > LISTED else ""
        log.warning("%s split (%s): %d of %d samples excluded %s: %s%s", name, manifest, report.excluded,
                    report.total, report.counts(), "; ".join(listed[:LISTED]), more)
    clean = report.clean
    if not clean:
        raise ValueError(f"{name} split: all {report.total} samples of {manifest} are excluded ({report.counts()}); "
                         "expected at least one usable sample (`safe-data check` lists why)")
    pool = sorted({_audio_ref(s) for s in clean if s.family in AUDIO_FAMILIES and s.has_audio},
                  key=lambda r: (r.path, r.start))
    refs = [_audio_ref(s) if s.has_audio else _borrowed_clip(s, pool) for s in clean]
    borrowed = sum(not s.has_audio for s in clean)
    if borrowed:
        log.info("%s split: %d VL samples without audio get a clip of the split's audio samples", name, borrowed)
    unique = sorted(set(refs), key=lambda r: (r.path, r.start, r.end or 0.0))
    position = {r: i for i, r in enumerate(unique)}
    features = cache.features(unique, valid_frames_encoder(encoder, sample_rate))
    visuals = [visual_input(s, durations) for s in clean]
    excluded = {"total": report.total, "excluded": report.excluded, "counts": report.counts(),
                "samples": report.excluded_samples()}
    split = Split(name, clean, [target_answer(s) for s in clean], features, [position[r] for r in refs], visuals,
                  images, excluded, unique)
    log.info("%s split: %s", name, split.composition())
    return split


@dataclass
class Batch:
    """Model inputs, answer labels, per-row flags and audio frames of one batch."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    is_vl: torch.Tensor
    frames: torch.Tensor
    frame_mask: torch.Tensor
    ids: list[str]

    def to(self, device: torch.device | str) -> "Batch":
        return Batch({k: v.to(device) for k, v in self.inputs.items()}, self.labels.to(device), self.is_vl.to(device),
                     self.frames.to(device), self.frame_mask.to(device), self.ids)


class Collator:
    """Builds training batches (prompt + answer, right-padded) and prompt-only batches for generation."""

    def __init__(self, processor) -> None:
        self.processor = processor
        self.no_image_policy = no_image_policy(processor)
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.eos = self.tokenizer.eos_token or ""
        self._answer_ids: dict[str, list[int]] = {}

    def answer_ids(self, answer: str) -> list[int]:
        if answer not in self._answer_ids:
            self._answer_ids[answer] = self.tokenizer(answer + self.eos, add_special_tokens=False)["input_ids"]
        return self._answer_ids[answer]

    def provenance(self) -> dict:
        """How rows without a visual input are prompted, for the run's summary."""
        blank = f"constant RGB {BLANK_RGB} image at the processor's size" if self.no_image_policy == "blank_image" else None
        return {"no_image_policy": self.no_image_policy, "blank_image": blank}

    def _audio(self, split: Split, rows: list[int], copies: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded frames of the rows: clean, or of augmented copy copies[r] where that is >= 0 (None: all clean)."""
        feats = []
        for i, c in zip(rows, [-1] * len(rows) if copies is None else copies, strict=True):
            f = split.features[split.feature_index[i]] if c < 0 else split.augmented[c][split.feature_index[i]]
            if f is None:
                raise ValueError(f"sample {split.samples[i].id!r} of the {split.name} split has no features in "
                                 f"augmented copy {c}; expected copies only for audio-dependent rows")
            feats.append(f)
        return pad_frames(feats)

    def _prompt(self, split: Split, i: int) -> str:
        return build_prompt(self.processor, split.samples[i].question, image=split.visuals[i] is not None)

    def _inputs(self, split: Split, rows: list[int], padding_side: str,
                answers: list[str] | None = None) -> dict[str, torch.Tensor]:
        prompts = [self._prompt(split, i) for i in rows]
        return model_inputs(self.processor, prompts, [split.image(i) for i in rows], padding_side, answers=answers)

    def train_batch(self, split: Split, rows: list[int], targets: list[str] | None = None,
                    copies: list[int] | None = None) -> Batch:
        """Prompt + answer + EOS per row; labels hold the answer tokens only; `copies`: each row's augmented copy
        (-1: clean), None: all clean."""
        samples = [split.samples[i] for i in rows]
        answers = targets or [split.targets[i] for i in rows]
        inputs = self._inputs(split, rows, "right", answers)
        ids, lengths = inputs["input_ids"], inputs["attention_mask"].sum(1)
        labels = torch.full_like(ids, IGNORE)
        for row, (sample, answer) in enumerate(zip(samples, answers)):
            target = torch.tensor(self.answer_ids(answer))
            end = int(lengths[row])
            if end < len(target) or not torch.equal(ids[row, end - len(target): end], target):
                raise ValueError(f"sample {sample.id!r}: answer {answer!r} does not tokenise to the end of its "
                                 "prompt + answer text; expected the prompt and answer to split at the space")
            labels[row, end - len(target): end] = target
        frames, frame_mask = self._audio(split, rows, copies)
        return Batch(inputs, labels, torch.tensor([s.family == "visual" for s in samples]), frames, frame_mask,
                     [s.id for s in samples])

    def prompt_batch(self, split: Split, rows: list[int]) -> Batch:
        """Left-padded prompts for greedy generation, with the rows' audio."""
        samples = [split.samples[i] for i in rows]
        inputs = self._inputs(split, rows, "left")
        frames, frame_mask = self._audio(split, rows)
        return Batch(inputs, torch.empty(0), torch.tensor([s.family == "visual" for s in samples]), frames,
                     frame_mask, [s.id for s in samples])

    def decode(self, sequences: torch.Tensor, prompt_length: int) -> list[str]:
        """Answers from generated sequences: new tokens only, specials stripped, spaces collapsed."""
        texts = self.tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]
