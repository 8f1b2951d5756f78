"""The one sample schema every dataset loader produces, and JSONL manifests of it.

A sample holds any modality mix: an image, video frames (with their timestamps), or no visual
input, and an audio window or none. Which inputs a family needs is checked by
`shared.data.check` (visual and audio_visual need an image or frames; audio, audio_visual
and caption need audio), so an audio-only Clotho-AQA or AudioCaps sample is as valid as a
VQAv2 image question. Every sample names its dataset in `source` (SOURCES lists the ones the
project converts), which is how mixed manifests keep each dataset's metric.

A manifest is a JSON-lines file with one `Sample` per line. Relative media paths are
resolved against the manifest's own folder, so a dataset folder can be moved as a whole.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable

from shared.checkpoint import atomic_file

FAMILIES = ("visual", "audio", "audio_visual", "caption")
SOURCES = ("vqav2", "gqa", "audiocaps", "clotho_aqa", "music_avqa", "world")


class ManifestError(ValueError):
    """A manifest line that does not fit the sample schema."""


@dataclass(frozen=True)
class Sample:
    """One question (or captioning target) with its image or frames and its audio window."""

    id: str
    question: str
    answers: tuple[str, ...]
    family: str
    qtype: str
    source: str
    image: str | None = None
    frames: tuple[str, ...] = ()
    frame_times: tuple[float, ...] = ()
    audio: str | None = None
    audio_start: float = 0.0
    audio_end: float | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.id:
            raise ManifestError("sample field 'id' is empty; expected a non-empty string")
        if not self.source:
            raise ManifestError(
                f"sample {self.id!r}: field 'source' is empty; expected the dataset's name, e.g. {SOURCES}"
            )
        if self.family not in FAMILIES:
            raise ManifestError(
                f"sample {self.id!r}: field 'family' is {self.family!r}; expected one of {FAMILIES}"
            )
        if len(self.frames) != len(self.frame_times):
            raise ManifestError(
                f"sample {self.id!r}: {len(self.frames)} 'frames' but {len(self.frame_times)} "
                "'frame_times'; expected one timestamp per frame"
            )
        if self.audio_end is not None and self.audio_end <= self.audio_start:
            raise ManifestError(
                f"sample {self.id!r}: audio window [{self.audio_start}, {self.audio_end}] is empty; "
                "expected audio_end > audio_start"
            )

    @property
    def has_audio(self) -> bool:
        return self.audio is not None

    @property
    def has_visual(self) -> bool:
        """True when the sample has an image or video frames."""
        return self.image is not None or bool(self.frames)

    def to_json(self) -> dict:
        out = asdict(self)
        out["answers"] = list(self.answers)
        out["frames"] = list(self.frames)
        out["frame_times"] = list(self.frame_times)
        return out

    @classmethod
    def from_json(cls, obj: dict, where: str = "<dict>") -> "Sample":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ManifestError(f"{where}: unknown field(s) {unknown}; expected only {sorted(known)}")
        missing = [n for n in ("id", "question", "answers", "family", "qtype", "source") if n not in obj]
        if missing:
            raise ManifestError(f"{where}: missing field(s) {missing}")
        if not isinstance(obj["answers"], list) or not all(isinstance(a, str) for a in obj["answers"]):
            raise ManifestError(f"{where}: field 'answers' is {obj['answers']!r}; expected a list of strings")
        data = dict(obj)
        data["answers"] = tuple(obj["answers"])
        data["frames"] = tuple(obj.get("frames", ()))
        data["frame_times"] = tuple(float(t) for t in obj.get("frame_times", ()))
        try:
            return cls(**data)
        except ManifestError as err:
            raise ManifestError(f"{where}: {err}") from None


def majority_answer(answers: Iterable[str], where: str = "answers") -> str:
    """The most frequent answer (ties: the one given first); a dataset's single reference answer."""
    answers = list(answers)
    if not answers:
        raise ManifestError(f"{where}: no answers; expected at least one")
    counts = Counter(answers)
    return max(answers, key=lambda a: counts[a])


def _resolve(path: str | None, root: Path) -> str | None:
    if path is None or os.path.isabs(path):
        return path
    return str(root / path)


def read_manifest(path: str | os.PathLike, resolve_paths: bool = True) -> list[Sample]:
    """Read a JSONL manifest; media paths are made absolute relative to its folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    root = path.parent
    samples = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{where}: not valid JSON ({err.msg})") from err
            sample = Sample.from_json(obj, where)
            if resolve_paths:
                sample = _with_paths(sample, root)
            samples.append(sample)
    return samples


def _with_paths(sample: Sample, root: Path) -> Sample:
    data = sample.to_json()
    data["image"] = _resolve(sample.image, root)
    data["audio"] = _resolve(sample.audio, root)
    data["frames"] = [_resolve(f, root) for f in sample.frames]
    return Sample.from_json(data)


def write_manifest(samples: Iterable[Sample], path: str | os.PathLike) -> Path:
    """Write samples as JSONL atomically and durably (shared.checkpoint.atomic_file)."""
    with atomic_file(path, "w", encoding="utf-8") as fh:
        for sample in samples:
            fh.write(json.dumps(sample.to_json(), ensure_ascii=False) + "\n")
    return Path(path)
