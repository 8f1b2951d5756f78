"""AudioCaps from its official CSV files (`audiocap_id,youtube_id,start_time,caption`).

Each row is one caption; a clip (youtube_id, start_time) has one caption in train and five in
val/test. One Sample is made per clip, with all its captions as answers in file order.
The clip is the 10 s starting at `start_time` of the YouTube audio. If the audio files are
already cut to the clip (the usual case), pass `clip_files_are_cut=True` so the window
becomes [0, 10) of each file.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Iterator

from shared.data._io import check_pattern, csv_records, make_sample, require_file
from shared.data.schema import ManifestError, Sample

SOURCE = "audiocaps"
CAPTION_PROMPT = "Describe the sound."
CLIP_SECONDS = 10.0
COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
PATTERN_FIELDS = ("youtube_id", "start_time")


def load_audiocaps(
    csv_path: str | os.PathLike,
    audio_dir: str | os.PathLike,
    *,
    clip_files_are_cut: bool = False,
    audio_pattern: str = "{youtube_id}.wav",
    clip_seconds: float = CLIP_SECONDS,
    prompt: str = CAPTION_PROMPT,
) -> list[Sample]:
    """One caption Sample per clip, in order of first appearance in the CSV.

    `audio_pattern` names a clip's file inside `audio_dir`; it may use `{youtube_id}` and
    `{start_time}` (an int when the start is a whole number of seconds, as in the CSV).
    """
    csv_path = require_file(csv_path, "AudioCaps CSV")
    check_pattern(audio_pattern, PATTERN_FIELDS)
    if not clip_seconds > 0:
        raise ValueError(f"clip_seconds is {clip_seconds!r}; expected a positive number of seconds")
    clips: dict[tuple[str, float], list[tuple[str, str]]] = {}
    try:
        for audiocap_id, youtube_id, start, caption in _rows(csv_path):
            clips.setdefault((youtube_id, start), []).append((audiocap_id, caption))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ManifestError(f"{csv_path}: cannot be read as a UTF-8 CSV ({err})") from err

    samples = []
    for (youtube_id, start), captions in clips.items():
        start_value = int(start) if start.is_integer() else start
        window = (0.0, clip_seconds) if clip_files_are_cut else (start, start + clip_seconds)
        sample_id = f"{SOURCE}-{youtube_id}-{start_value}"
        samples.append(
            make_sample(
                f"{csv_path} clip {youtube_id}@{start_value}s",
                id=sample_id,
                question=prompt,
                answers=tuple(caption for _, caption in captions),
                family="caption",
                qtype="caption",
                source=SOURCE,
                audio=str(Path(audio_dir) / audio_pattern.format(youtube_id=youtube_id, start_time=start_value)),
                audio_start=window[0],
                audio_end=window[1],
                meta={
                    "youtube_id": youtube_id,
                    "start_time": start_value,
                    "audiocap_ids": [audiocap_id for audiocap_id, _ in captions],
                },
            )
        )
    return samples


def _rows(csv_path: Path) -> Iterator[tuple[str, str, float, str]]:
    """Yield (audiocap_id, youtube_id, start_time, caption) per CSV row, validated."""
    for line, values in csv_records(csv_path, COLUMNS):
        where = f"{csv_path} line {line} (audiocap_id {values['audiocap_id'] or '?'})"
        for column in COLUMNS:
            if not values[column]:
                raise ManifestError(f"{where}: field {column!r} is missing or empty")
        yield values["audiocap_id"], values["youtube_id"], _start(values["start_time"], where), values["caption"]


def _start(text: str, where: str) -> float:
    try:
        start = float(text)
    except ValueError:
        start = math.nan
    if not math.isfinite(start) or start < 0:
        raise ManifestError(f"{where}: field 'start_time' is {text!r}; expected seconds >= 0")
    return start
