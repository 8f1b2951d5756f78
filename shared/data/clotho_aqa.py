"""Clotho-AQA from its official CSV files (`clotho_aqa_{train,val,test}.csv`, Zenodo record 6473207).

Each CSV has the header `file_name,QuestionText,answer,confidence` and one row per annotator
answer: every question is answered by three annotators on three rows, and `confidence` is
the annotator's own yes/no (or maybe) about their answer. The audio is a folder of .wav files
(`audio_files/` in the release) named by `file_name`; clips are 15-30 s and used whole.

One audio-only Sample is made per (file_name, QuestionText), in order of first appearance,
with every annotator's answer in file order (three in the release; any number is kept) and
their confidences in `meta`. The question type is "yes_no" when the majority answer is
yes or no, else "single_word" (the dataset's two question kinds).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from shared.data._io import csv_records, make_sample, require_file
from shared.data.schema import ManifestError, Sample, majority_answer

SOURCE = "clotho_aqa"
COLUMNS = ("file_name", "QuestionText", "answer", "confidence")
REQUIRED = ("file_name", "QuestionText", "answer")
YES_NO = frozenset({"yes", "no"})


@dataclass
class _Question:
    file_name: str
    text: str
    line: int
    answers: list[str] = field(default_factory=list)
    confidences: list[str] = field(default_factory=list)


def question_type(answers: tuple[str, ...] | list[str]) -> str:
    """"yes_no" when the majority answer (case and surrounding space ignored) is yes or no, else "single_word"."""
    return "yes_no" if majority_answer(a.strip().lower() for a in answers) in YES_NO else "single_word"


def load_clotho_aqa(csv_path: str | os.PathLike, audio_dir: str | os.PathLike) -> list[Sample]:
    """One audio-family Sample per (file, question), with all annotator answers in file order."""
    csv_path = require_file(csv_path, "Clotho-AQA CSV")
    questions: dict[tuple[str, str], _Question] = {}
    try:
        for line, file_name, text, answer, confidence in _rows(csv_path):
            q = questions.setdefault((file_name, text), _Question(file_name, text, line))
            q.answers.append(answer)
            q.confidences.append(confidence)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ManifestError(f"{csv_path}: cannot be read as a UTF-8 CSV ({err})") from err

    per_file: dict[str, int] = {}
    samples = []
    for q in questions.values():
        ordinal = per_file.get(q.file_name, 0)
        per_file[q.file_name] = ordinal + 1
        samples.append(
            make_sample(
                f"{csv_path} line {q.line} (file_name {q.file_name!r})",
                id=f"{SOURCE}-{q.file_name}-q{ordinal}",
                question=q.text,
                answers=tuple(q.answers),
                family="audio",
                qtype=question_type(q.answers),
                source=SOURCE,
                audio=str(Path(audio_dir) / q.file_name),
                meta={"file_name": q.file_name, "confidence": q.confidences, "line": q.line},
            )
        )
    return samples


def _rows(csv_path: Path) -> Iterator[tuple[int, str, str, str, str]]:
    """Yield (line, file_name, QuestionText, answer, confidence) per CSV row, validated."""
    for line, values in csv_records(csv_path, COLUMNS):
        for column in REQUIRED:
            if not values[column]:
                raise ManifestError(f"{csv_path} line {line}: field {column!r} is missing or empty; expected text")
        yield line, values["file_name"], values["QuestionText"], values["answer"], values["confidence"]
