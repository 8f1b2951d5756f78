"""Checked loaders: every kind of file the project reads back, with one error per failure that names the file.

Each loader takes the path and `expected`, what the file should be ("a bridge written by stage_a-train"), and
raises `shared.cli.InputError` (exit 2 in every console script) when the file is missing, empty, truncated,
corrupt or of another format, in one line:

    runs/x/checkpoint/adapter.safetensors: not a readable safetensors file (truncated or corrupt: <reason>);
    expected a bridge written by stage_a-train

A path that exists but cannot be opened (permissions) keeps its OSError, which names the file. Nothing is
unpickled here: tensors come from safetensors or `torch.load(weights_only=True)`, arrays from `.npz` with
`allow_pickle=False`. torch and safetensors are imported by the loaders that use them, so reading an outcome table
(envs) does not import torch. `load_sb3` is the one exception, called only where the caller trusts pickle: SB3 unpickles
parts of its `.zip` with cloudpickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.cli import PATH_ERRORS, InputError

if TYPE_CHECKING:
    import torch

ZIP_HEADERS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first local file header, or an empty zip's end record
PICKLE_HEADER = b"\x80"  # a pickle's protocol opcode: torch.save's format before its zip one
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError)  # what reading a broken zip raises
SB3_MEMBERS = ("data", "policy.pth")  # what every SB3 `.save` archive holds
# and what SB3 raises on a complete archive whose members are broken (it asserts on their content)
SB3_ERRORS = (*ZIP_ERRORS, RuntimeError, KeyError, ValueError, AssertionError, pickle.UnpicklingError)


def _existing(path: str | os.PathLike, expected: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {'a folder' if path.is_dir() else 'no such file'}; expected {expected}")
    return path


def _reason(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def unreadable(path: Path, kind: str, reason: BaseException | str, expected: str) -> InputError:
    """The error for a file that exists but cannot be read as `kind` (an empty file is said to be empty)."""
    if path.stat().st_size == 0:
        reason = "empty file (0 bytes)"
    elif isinstance(reason, BaseException):
        reason = f"truncated or corrupt: {_reason(reason)}"
    return InputError(f"{path}: not a readable {kind} file ({reason}); expected {expected}")


def load_safetensors(path: str | os.PathLike, expected: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _existing(path, expected)
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise unreadable(path, "safetensors", err, expected) from err


def _head(path: Path, size: int = 4) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def load_torch(path: str | os.PathLike, expected: str) -> Any:
    """A `torch.save` file read with `weights_only=True` (tensors and plain containers; no pickled code), on the CPU."""
    import torch

    path = _existing(path, expected)
    head = _head(path)
    if head[:4] not in ZIP_HEADERS and head[:1] != PICKLE_HEADER:
        raise unreadable(path, "torch.save", f"not a torch.save file: it starts with {head!r}", expected)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except PATH_ERRORS:
        raise
    except Exception as err:  # noqa: BLE001 - weights_only runs no code: whatever it raises comes from the bytes
        raise unreadable(path, "torch.save", err, expected) from err


def load_json(path: str | os.PathLike, expected: str, keys: tuple[str, ...] = ()) -> Any:
    """A UTF-8 JSON file; with `keys`, it must hold an object with (at least) those keys."""
    path = _existing(path, expected)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise unreadable(path, "JSON", f"truncated or corrupt: {err.msg} (line {err.lineno}, column {err.colno})",
                         expected) from err
    except UnicodeDecodeError as err:
        raise unreadable(path, "JSON", f"not UTF-8 text: {err.reason} at byte {err.start}", expected) from err
    if keys:
        missing = [key for key in keys if key not in data] if isinstance(data, dict) else list(keys)
        if missing:
            found = f"keys {sorted(data)}" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
            raise InputError(f"{path}: holds {found}, missing {missing}; expected {expected}")
    return data


def load_jsonl(path: str | os.PathLike, expected: str) -> list[tuple[int, Any]]:
    """(line number, record) per non-empty line of a JSON-lines file (one JSON value per line)."""
    path = _existing(path, expected)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise unreadable(path, "JSON lines", f"not UTF-8 text: {err.reason} at byte {err.start}", expected) from err
    records = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise unreadable(path, "JSON lines", f"truncated or corrupt: {err.msg} (line {number}, column "
                                 f"{err.colno})", expected) from err
    return records


def check_zip(path: str | os.PathLike, kind: str, expected: str, members: tuple[str, ...] = ()) -> Path:
    """`path` if it is a complete zip archive (every member's CRC checked) holding `members`, else the InputError
    naming it. (A truncated archive may still open as a zip stored inside it, which lacks the outer members.)"""
    path = _existing(path, expected)
    head = _head(path)
    if head not in ZIP_HEADERS:
        raise unreadable(path, kind, f"not a zip archive: it starts with {head!r}", expected)
    try:
        with zipfile.ZipFile(path) as archive:
            broken, names = archive.testzip(), set(archive.namelist())
    except PATH_ERRORS:
        raise
    except ZIP_ERRORS as err:
        raise unreadable(path, kind, err, expected) from err
    if broken is not None:
        raise unreadable(path, kind, f"truncated or corrupt: member {broken!r} fails its CRC check", expected)
    missing = [name for name in members if name not in names]
    if missing:
        raise unreadable(path, kind, f"truncated or corrupt: no member {missing[0]!r}", expected)
    return path


def load_npz(path: str | os.PathLike, expected: str) -> dict[str, np.ndarray]:
    """Every array of an `.npz` archive, read with allow_pickle=False (object arrays are refused by name)."""
    path = check_zip(path, ".npz", expected)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except PATH_ERRORS:
        raise
    except ValueError as err:  # numpy's words for an object array; other bad members are malformed .npy data
        pickled = "pickle" in str(err)
        raise unreadable(path, ".npz", "holds pickled (object) arrays, which are never loaded" if pickled else err,
                         expected) from err
    except ZIP_ERRORS as err:
        raise unreadable(path, ".npz", err, expected) from err


def load_sb3(algorithm: Any, path: str | os.PathLike, expected: str, **kwargs: Any) -> Any:
    """`algorithm.load` (an SB3 class) of a `.save`d zip; SB3 unpickles parts of it, so only for trusted files."""
    path = check_zip(path, "SB3 .zip", expected, SB3_MEMBERS)
    try:
        return algorithm.load(path, **kwargs)
    except PATH_ERRORS:
        raise
    except SB3_ERRORS as err:
        raise unreadable(path, "SB3 .zip", err, expected) from err


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, streamed."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
