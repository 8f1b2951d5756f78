"""Check a manifest's samples and media before use; nothing is dropped without a reported reason.

`check_manifest` returns a `CheckReport`: the clean samples (no excluding problem) and one
`Problem` per (sample, kind) found. Warning kinds are reported but do not exclude.
Media files are checked once per path (many questions share an image, a video or a clip),
and only the sample's audio window is decoded.

Defaults say what a usable sample is, not only what can be opened:
- images are decoded in full (a truncated PNG opens and reports its size, then fails on its pixels)
  and need both sides >= MIN_IMAGE_SIDE = 8 px. A smaller image is degenerate (a 1x1 placeholder or
  tracking pixel, a broken thumbnail): it shows nothing a question can be about, vision towers cut
  14-16 px patches, and processors that do not resize cannot batch it (Stage A adds its own
  processor's requirement, `stage_a.data`);
- an audio window must cover >= MIN_DURATION = 0.1 s: shorter is a cutting or annotation error (the
  datasets' clips last 10-60 s; 0.1 s is a few STFT windows of the encoders' front ends);
- a WAV whose header declares more frames than the file holds is truncated (libsndfile silently
  reads the shorter file), as is any file that decodes fewer frames than its header lists.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from shared.data.audio_io import AudioError, AudioInfo, audio_info, declared_frames, load_audio, window_frames
from shared.data.schema import Sample

log = logging.getLogger(__name__)

KINDS: dict[str, str] = {
    "duplicate_id": "id already used by an earlier sample (the first is kept)",
    "missing_image": "family needs an image or frames but the sample has none",
    "missing_audio": "family needs audio but the sample has none",
    "missing_file": "a referenced image, frame or audio file does not exist",
    "unreadable_image": "image or frame file cannot be decoded",
    "small_image": "image or frame has a side below the minimum image side",
    "unprocessable_image": "the model's processor cannot batch the image (found by a consumer such as Stage A)",
    "unreadable_audio": "audio file cannot be decoded",
    "empty_audio": "audio file holds no samples",
    "truncated_audio": "audio file holds fewer frames than its header declares",
    "window_outside": "audio window starts at or after the end of the file",
    "window_past_end": "audio window ends past the end of the file by more than the tolerance",
    "too_short": "audio window is shorter than the minimum duration",
    "nonfinite_audio": "audio window holds NaN or infinite samples",
    "silent_audio": "audio window peak is below the silence threshold",
    "misaligned": "audio window does not overlap the frames' time span",
    "sample_rate": "audio file sample rate differs from the expected rate (warning unless strict)",
}
MIN_IMAGE_SIDE = 8  # px; see the module docstring
MIN_DURATION = 0.1  # s; see the module docstring
NEEDS_IMAGE = frozenset({"visual", "audio_visual"})
NEEDS_AUDIO = frozenset({"audio", "audio_visual", "caption"})
# PIL reports corrupt data as OSError (truncated), SyntaxError (broken PNG chunks) or
# ValueError (bad tile extents), and oversized images as DecompressionBombError.
_IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Problem:
    """One problem of one sample; `index` is the sample's position in the input."""

    index: int
    id: str
    kind: str
    field: str
    path: str | None
    detail: str
    excluding: bool = True

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "id": self.id,
            "kind": self.kind,
            "severity": "error" if self.excluding else "warning",
            "field": self.field,
            "path": self.path,
            "detail": self.detail,
        }


@dataclass
class CheckReport:
    """The outcome of a check: clean samples, their input positions and every problem."""

    total: int
    clean: list[Sample]
    kept_indices: list[int]
    problems: list[Problem]
    settings: dict = field(default_factory=dict)

    @property
    def excluded(self) -> int:
        return self.total - len(self.clean)

    def counts(self) -> dict[str, int]:
        """Number of problems per kind, in the order of `KINDS`."""
        out = {kind: 0 for kind in KINDS}
        for problem in self.problems:
            out[problem.kind] += 1
        return {kind: n for kind, n in out.items() if n}

    def exclude(self, problems: Iterable[Problem]) -> None:
        """Record problems a consumer found after the check (e.g. its processor's); excluding ones drop their samples."""
        problems = list(problems)
        gone = {p.index for p in problems if p.excluding}
        self.problems = sorted([*self.problems, *problems], key=lambda p: p.index)
        kept = [(i, s) for i, s in zip(self.kept_indices, self.clean) if i not in gone]
        self.kept_indices, self.clean = [i for i, _ in kept], [s for _, s in kept]

    def excluded_samples(self) -> list[dict]:
        """Each excluded sample with the kinds of problem that excluded it."""
        reasons: dict[int, dict] = {}
        for p in self.problems:
            if p.excluding:
                entry = reasons.setdefault(p.index, {"index": p.index, "id": p.id, "kinds": []})
                if p.kind not in entry["kinds"]:
                    entry["kinds"].append(p.kind)
        return [reasons[i] for i in sorted(reasons)]

    def to_json(self) -> dict:
        return {
            "total": self.total,
            "kept": len(self.clean),
            "excluded": self.excluded,
            "counts": self.counts(),
            "settings": self.settings,
            "excluded_samples": self.excluded_samples(),
            "problems": [p.to_json() for p in self.problems],
        }


@dataclass(frozen=True)
class CheckSettings:
    """Thresholds of a check; see `check_manifest`."""

    sample_rate: int | None = None
    min_duration: float = MIN_DURATION
    silence_threshold: float = 1e-4
    strict_sample_rate: bool = False
    end_tolerance: float = 0.5
    decode_images: bool = True
    min_image_side: int = MIN_IMAGE_SIDE


@dataclass(frozen=True)
class _Found:
    """A problem before it is attached to a sample."""

    kind: str
    field: str
    path: str | None
    detail: str


@dataclass(frozen=True)
class _AudioResult:
    info: AudioInfo | None
    found: tuple[_Found, ...]


def check_manifest(
    samples: Iterable[Sample],
    *,
    sample_rate: int | None = None,
    min_duration: float = MIN_DURATION,
    silence_threshold: float = 1e-4,
    strict_sample_rate: bool = False,
    end_tolerance: float = 0.5,
    decode_images: bool = True,
    min_image_side: int = MIN_IMAGE_SIDE,
    progress: bool = True,
) -> CheckReport:
    """Check every sample; see `KINDS` for what is looked for.

    `sample_rate`: expected audio file rate (None: any). `min_duration`: shortest usable audio
    window in seconds. `end_tolerance`: how far (s) a window may end past the end of its file
    before it is excluded (shorter overshoots are zero-padded when loading).
    `decode_images=False` only reads image headers (faster, misses truncated pixel data).
    `min_image_side`: smallest usable image width and height in pixels.
    """
    samples = list(samples)
    settings = CheckSettings(sample_rate, min_duration, silence_threshold, strict_sample_rate,
                             end_tolerance, decode_images, min_image_side)
    checker = _Checker(settings)
    problems: list[Problem] = []
    clean, kept = [], []
    first_seen: dict[str, int] = {}
    for index, sample in enumerate(tqdm(samples, desc="checking", unit="sample", disable=not progress)):
        if sample.id in first_seen:
            detail = f"id {sample.id!r} first used by sample #{first_seen[sample.id]}"
            found = [_Found("duplicate_id", "id", None, detail)]
        else:
            first_seen[sample.id] = index
            found = checker.sample(sample)
        mine = [
            Problem(index, sample.id, f.kind, f.field, f.path, f.detail,
                    excluding=f.kind != "sample_rate" or strict_sample_rate)
            for f in found
        ]
        problems.extend(mine)
        if not any(p.excluding for p in mine):
            clean.append(sample)
            kept.append(index)
    report = CheckReport(len(samples), clean, kept, problems, asdict(settings))
    log.info("checked %d samples: %d kept, %d excluded", report.total, len(clean), report.excluded)
    return report


class _Checker:
    """Per-sample checks with per-file caches."""

    def __init__(self, settings: CheckSettings) -> None:
        self.settings = settings
        self._images: dict[str, _Found | None] = {}
        self._audio: dict[tuple[str, float, float | None], _AudioResult] = {}

    def sample(self, sample: Sample) -> list[_Found]:
        found: list[_Found] = []
        if sample.family in NEEDS_IMAGE and sample.image is None and not sample.frames:
            detail = f"family {sample.family!r} needs an image or frames"
            found.append(_Found("missing_image", "image", None, detail))
        image_problem = None if sample.image is None else self.image(sample.image, "image")
        if image_problem:
            found.append(image_problem)
        found.extend(self.frames(sample.frames))
        if sample.audio is None:
            if sample.family in NEEDS_AUDIO:
                found.append(_Found("missing_audio", "audio", None, f"family {sample.family!r} needs audio"))
            return found
        result = self.audio(sample.audio, sample.audio_start, sample.audio_end)
        found.extend(result.found)
        if sample.frames:
            found.extend(self.alignment(sample, result.info))
        return found

    def image(self, path: str, where: str) -> _Found | None:
        if path not in self._images:
            self._images[path] = self._open_image(path, where)
        cached = self._images[path]
        return None if cached is None else _Found(cached.kind, where, cached.path, cached.detail)

    def _open_image(self, path: str, where: str) -> _Found | None:
        if not Path(path).is_file():
            return _Found("missing_file", where, path, "file does not exist")
        try:
            with Image.open(path) as im:
                if self.settings.decode_images:
                    im.load()
                width, height = im.size
        except _IMAGE_ERRORS as err:
            return _Found("unreadable_image", where, path, f"{type(err).__name__}: {err}")
        side = self.settings.min_image_side
        if min(width, height) < side:
            return _Found("small_image", where, path, f"image is {width}x{height} px; expected both sides >= {side} px")
        return None

    def frames(self, frames: tuple[str, ...]) -> list[_Found]:
        """One problem per kind over all frames, naming the first bad frame and the count."""
        bad: dict[str, list[_Found]] = {}
        for i, frame in enumerate(frames):
            problem = self.image(frame, f"frames[{i}]")
            if problem:
                bad.setdefault(problem.kind, []).append(problem)
        out = []
        for kind, items in bad.items():
            first = items[0]
            out.append(_Found(kind, first.field, first.path, f"{len(items)} of {len(frames)} frames: {first.detail}"))
        return out

    def audio(self, path: str, start: float, end: float | None) -> _AudioResult:
        key = (path, start, end)
        if key not in self._audio:
            self._audio[key] = self._check_audio(path, start, end)
        return self._audio[key]

    def _check_audio(self, path: str, start: float, end: float | None) -> _AudioResult:
        cfg = self.settings
        if not Path(path).is_file():
            return _AudioResult(None, (_Found("missing_file", "audio", path, "file does not exist"),))
        try:
            info = audio_info(path)
        except AudioError as err:
            return _AudioResult(None, (_Found("unreadable_audio", "audio", path, str(err)),))
        found = []
        if cfg.sample_rate is not None and info.sample_rate != cfg.sample_rate:
            found.append(_Found("sample_rate", "audio", path,
                                f"file rate is {info.sample_rate} Hz; expected {cfg.sample_rate} Hz"))
        declared = declared_frames(path)
        if declared is not None and declared > info.frames:
            detail = (f"header declares {declared} frames ({declared / info.sample_rate:.3f}s); the file holds "
                      f"{info.frames} ({info.duration:.3f}s)")
            return _AudioResult(info, (*found, _Found("truncated_audio", "audio", path, detail)))
        if info.frames == 0:
            return _AudioResult(info, (*found, _Found("empty_audio", "audio", path, "file holds 0 samples")))
        if start >= info.duration:
            detail = f"audio_start {start}s is at or after the end of the file ({info.duration:.3f}s)"
            return _AudioResult(info, (*found, _Found("window_outside", "audio_start", path, detail)))
        if end is not None and end > info.duration + cfg.end_tolerance:
            found.append(_Found("window_past_end", "audio_end", path,
                                f"audio_end {end}s is past the end of the file ({info.duration:.3f}s) "
                                f"by more than {cfg.end_tolerance}s"))
        length = min(info.duration if end is None else end, info.duration) - start
        if length < cfg.min_duration:
            detail = f"window [{start}, {end}) covers {length:.3f}s of audio; expected >= {cfg.min_duration}s"
            found.append(_Found("too_short", "audio_end", path, detail))
        found.extend(self._samples(path, info, start, end))
        return _AudioResult(info, tuple(found))

    def _samples(self, path: str, info: AudioInfo, start: float, end: float | None) -> list[_Found]:
        """Decode the window at the file's own rate and look at the sample values."""
        try:
            wave = load_audio(path, info.sample_rate, start, end)
        except AudioError as err:
            return [_Found("unreadable_audio", "audio", path, str(err))]
        first, last = window_frames(start, end, info.sample_rate, info.frames)
        if wave.size < last - first:
            return [_Found("truncated_audio", "audio", path, f"window [{start}, {end}) s decodes to {wave.size} of "
                           f"the {last - first} frames the header lists; the file ends early")]
        bad = int(np.count_nonzero(~np.isfinite(wave)))
        if bad:
            return [_Found("nonfinite_audio", "audio", path, f"{bad} of {wave.size} samples are NaN or infinite")]
        peak = float(np.max(np.abs(wave)))
        threshold = self.settings.silence_threshold
        if peak < threshold:
            return [_Found("silent_audio", "audio", path, f"peak {peak:.3g} is below {threshold:.3g}")]
        return []

    @staticmethod
    def alignment(sample: Sample, info: AudioInfo | None) -> list[_Found]:
        end = sample.audio_end
        if info is not None:
            end = info.duration if end is None else min(end, info.duration)
        if end is None or sample.audio_start >= end:
            return []  # an empty or outside window is reported by the audio checks
        first, last = min(sample.frame_times), max(sample.frame_times)
        if sample.audio_start <= last and first < end:
            return []
        return [_Found("misaligned", "frame_times", sample.audio,
                       f"audio window [{sample.audio_start}, {end:.3f}) s does not overlap frames at "
                       f"[{first}, {last}] s")]
