"""Helpers shared by the dataset loaders: file checks, JSON loading and typed field access.

Every error names the file, the record (usually a question id) and the field, so a broken
record in a multi-gigabyte official file can be found without a debugger.
"""

from __future__ import annotations

import csv
import json
import os
import string
from pathlib import Path
from typing import Any, Iterator, Mapping

from shared.data.schema import ManifestError, Sample, typed


def require_file(path: str | os.PathLike, what: str) -> Path:
    """Return `path` as a Path, or raise FileNotFoundError naming it and what it should be."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist (or is not a file)")
    return path


def load_json(path: str | os.PathLike, what: str) -> Any:
    """Load a whole JSON file; a decoding error becomes a ManifestError naming file and position."""
    path = require_file(path, what)
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise ManifestError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from err
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err


def get_field(record: Any, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """Return `record[name]` checked against `kind` (bool never passes for int or float)."""
    if not isinstance(record, Mapping):
        raise ManifestError(f"{where}: record is {type(record).__name__}; expected a JSON object")
    if name not in record:
        raise ManifestError(f"{where}: missing field {name!r}")
    return typed(record[name], kind, name, where)


def get_text(record: Any, name: str, where: str) -> str:
    """Return a non-empty string field (surrounding whitespace stripped)."""
    value = get_field(record, name, str, where).strip()
    if not value:
        raise ManifestError(f"{where}: field {name!r} is empty; expected non-empty text")
    return value


def make_sample(where: str, **values: Any) -> Sample:
    """Build a Sample; a schema violation is re-raised with the source location prefixed."""
    try:
        return Sample(**values)
    except ManifestError as err:
        raise ManifestError(f"{where}: {err}") from err


def check_pattern(pattern: str, allowed: tuple[str, ...]) -> str:
    """Validate a file-name pattern such as "{youtube_id}.wav"; only `allowed` fields may appear."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    except ValueError as err:
        raise ValueError(
            f"file-name pattern {pattern!r} is malformed ({err}); expected e.g. '{{{allowed[0]}}}.wav'"
        ) from err
    bad = sorted(n for n in names if n not in allowed)
    if bad or not names:
        raise ValueError(
            f"file-name pattern {pattern!r} uses field(s) {bad or '(none)'}; "
            f"expected at least one of {list(allowed)} and no others"
        )
    return pattern


def file_suffix(ext: str, option: str = "image_ext") -> str:
    """A file extension given as "png" or ".png", returned as ".png"; anything else is an error."""
    bare = ext[1:] if ext.startswith(".") else ext
    if not bare or not bare.isalnum():
        raise ValueError(f"{option} is {ext!r}; expected a file extension such as 'jpg' or 'png'")
    return "." + bare


def csv_records(csv_path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, stripped values of `columns`) per row of a UTF-8 CSV whose header holds `columns`.

    A header without them, or a row with more fields than the header, is a ManifestError naming the file and line.
    """
    with csv_path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        header = tuple(name.strip() for name in reader.fieldnames or ())
        missing = [c for c in columns if c not in header]
        if missing:
            raise ManifestError(
                f"{csv_path}: header is {list(header)}; missing column(s) {missing}, expected {list(columns)}"
            )
        reader.fieldnames = list(header)
        for row in reader:
            if None in row:
                raise ManifestError(f"{csv_path} line {reader.line_num}: {len(header) + len(row[None])} columns; "
                                    f"expected {len(header)}")
            yield reader.line_num, {c: (row[c] or "").strip() for c in columns}
