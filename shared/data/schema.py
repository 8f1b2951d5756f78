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
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator

from shared.checkpoint import atomic_file

FAMILIES = ("visual", "audio", "audio_visual", "caption")
SOURCES = ("vqav2", "gqa", "audiocaps", "clotho_aqa", "music_avqa", "world")


class ManifestError(ValueError):
    """A manifest line that does not fit the sample schema."""


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def typed(value: Any, kind: type | tuple[type, ...], name: str, where: str) -> Any:
    """`value` if it is a `kind` (bool never passes for int or float), else a ManifestError naming field `name`."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ManifestError(f"{where}: field {name!r} is {value!r}; expected {_type_name(kind)}")
    return value


_TEXT_FIELDS = ("id", "question", "family", "qtype", "source")
_NUMBER = (int, float)


def _list_of(obj: dict, name: str, kind: type | tuple[type, ...], where: str) -> list:
    value = obj.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise ManifestError(f"{where}: field {name!r} is {value!r}; expected a list of {_type_name(kind)}")
    return value


def _seconds(obj: dict, name: str, where: str, optional: bool) -> None:
    """A time field: a finite number of seconds >= 0 (or null when `optional`)."""
    value = obj.get(name)
    if value is None and optional:
        return
    if not isinstance(value, _NUMBER) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ManifestError(f"{where}: field {name!r} is {value!r}; expected a finite number of seconds >= 0"
                            + (" or null" if optional else ""))


def _check_types(obj: Any, where: str) -> None:
    """Every field of a manifest line has its schema type (a line that is not an object is named as such)."""
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: line is {json.dumps(obj)}; expected a JSON object with one sample's fields")
    for name in _TEXT_FIELDS:
        if name in obj:
            typed(obj[name], str, name, where)
    for name in ("image", "audio"):
        typed(obj.get(name), (str, type(None)), name, where)
    _list_of(obj, "answers", str, where)
    _list_of(obj, "frames", str, where)
    for t in _list_of(obj, "frame_times", _NUMBER, where):
        if not math.isfinite(t):
            raise ManifestError(f"{where}: field 'frame_times' holds {t!r}; expected finite numbers of seconds")
    if "audio_start" in obj:
        _seconds(obj, "audio_start", where, optional=False)
    _seconds(obj, "audio_end", where, optional=True)
    typed(obj.get("meta", {}), dict, "meta", where)


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
    def from_json(cls, obj: Any, where: str = "<dict>") -> "Sample":
        """A sample from one manifest line's JSON value; any misfit is a ManifestError naming `where` and the field."""
        _check_types(obj, where)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ManifestError(f"{where}: unknown field(s) {unknown}; expected only {sorted(known)}")
        missing = [n for n in ("id", "question", "answers", "family", "qtype", "source") if n not in obj]
        if missing:
            raise ManifestError(f"{where}: missing field(s) {missing}")
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


def _objects(path: Path) -> Iterator[tuple[str, Any]]:
    """("file:line", parsed value) for each non-blank line of a JSONL file; a line that is not JSON, or bytes that
    are not UTF-8, are a ManifestError naming the file (and line). `Sample.from_json` checks that it is an object."""
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ManifestError(f"{where}: not valid JSON ({err.msg}); expected one JSON object per line") \
                        from err
                yield where, obj
    except UnicodeDecodeError as err:
        raise ManifestError(f"manifest {path} is not UTF-8 text ({err.reason}); expected a JSONL manifest") from None


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} {'is not a file' if path.exists() else 'does not exist'}; "
                                "expected a JSONL manifest")
    return path


def check_manifest_file(path: str | os.PathLike) -> Path:
    """Fail fast on a file that cannot be a manifest: missing, not JSONL, or empty. Only its first sample is read
    (read_manifest checks every line), so commands can call it before loading anything."""
    path = _existing(path)
    for where, obj in _objects(path):
        Sample.from_json(obj, where)
        return path
    raise ManifestError(f"manifest {path} is empty; expected one JSON object per line")


def read_manifest(path: str | os.PathLike, resolve_paths: bool = True) -> list[Sample]:
    """Read a JSONL manifest; media paths are made absolute relative to its folder."""
    path = _existing(path)
    root = path.parent
    samples = []
    for where, obj in _objects(path):
        sample = Sample.from_json(obj, where)
        samples.append(_with_paths(sample, root) if resolve_paths else sample)
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
