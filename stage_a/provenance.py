"""What a bridge was trained with, recorded in its `safe_config.json`, and the check made when it is loaded.

The record (key "record") holds:
- `base`: the id the base was loaded from (folder or hub id, `config._name_or_path`) and `weights_sha256`, a
  SHA-256 over the base's weight files as stored (each `*.safetensors` file of the folder, else each `*.bin`, in
  name order: file name, size, then its bytes, streamed). Hashing the files rather than the loaded tensors makes the
  hash independent of the dtype the base is loaded in (a bridge trained on a float32 base loads onto the same base in
  bfloat16) and of the LoRA layers SAFE injects. It reads every weight byte once per process (memoised by path,
  size and mtime): SHA-256 streams 1.7 GiB/s on one core of the reference machine from the page cache, so about
  8 s for LLaVA-1.5-7B's 13.5 GiB of float16 weights (more from a cold disk). A base with no weight files on
  disk (built in memory, or a hub id not in the local cache) gets no hash, and a bridge cannot be verified
  against it.
- `encoder`: the frozen encoder's identity (name, path, front end) and the hash of its loaded weights
  (`shared.features.weights_hash`; the encoder always runs in float32), the same pair that keys the feature cache.
- `bridge`: k_max, fusion mode, the decoder layers holding adapters and the path of their layer list.
- `prompt`: the processor's no-image policy and the prompt built for a fixed question (`stage_a.prompting`).
- `safe_version`: the installed version of the `safe-av` package.

A base or encoder is the same when its weights hash is (a different id with the same hash is only logged). A
different hash refuses the load with `BridgeMismatch` naming the recorded and the given ones, unless strict=False,
which logs a warning instead. Bridges written before the record existed load with a warning that they cannot be
verified.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import weakref
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import HFValidationError

from shared.features import weights_hash
from stage_a.prompting import build_prompt, no_image_policy

log = logging.getLogger(__name__)

PACKAGE = "safe-av"
PROMPT_PROBE = "what color is the circle?"
_FILE_HASHES: dict[tuple[str, int, int], str] = {}
_ENCODER_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # frozen encoders are hashed once


class BridgeMismatch(ValueError):
    """A bridge is being loaded onto a base model or audio encoder other than the one it was trained with."""


def safe_version() -> str | None:
    """The installed version of the SAFE package, or None (logged) when it is not installed as a package."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        log.warning("package %s is not installed; the bridge records no SAFE version", PACKAGE)
        return None


def _model_folder(name_or_path: str) -> Path | None:
    """The folder holding a model's files: the path itself, or a hub id's snapshot in the local cache."""
    if not name_or_path:
        return None
    if Path(name_or_path).expanduser().is_dir():
        return Path(name_or_path).expanduser()
    try:
        cached = try_to_load_from_cache(name_or_path, "config.json")
    except HFValidationError:  # neither an existing folder nor a hub id (e.g. a folder since removed)
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_HASHES:
        with open(path, "rb") as handle:
            _FILE_HASHES[memo] = hashlib.file_digest(handle, "sha256").hexdigest()
    return _FILE_HASHES[memo]


def files_weights_hash(folder: Path) -> str | None:
    """SHA-256 over a model folder's weight files (safetensors, else .bin) as stored; None when it has none."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{path.stat().st_size}\0{_file_sha256(path)}\0".encode())
    return digest.hexdigest()


def base_fingerprint(base: torch.nn.Module) -> dict:
    """The base's id (where it was loaded from) and the hash of its weight files (None without files)."""
    name = str(getattr(base.config, "_name_or_path", "") or "")
    folder = _model_folder(name)
    return {"id": name, "weights_sha256": files_weights_hash(folder) if folder else None}


def encoder_fingerprint(encoder) -> dict:
    """The frozen encoder's identity and the hash of its loaded weights (what keys the feature cache)."""
    if encoder not in _ENCODER_HASHES:
        _ENCODER_HASHES[encoder] = "|".join(weights_hash(m) for m in encoder.modules())
    return {"identity": encoder.identity, "weights_sha256": _ENCODER_HASHES[encoder]}


def prompt_record(processor) -> dict:
    """The processor's prompt convention: no-image policy and a fixed question's prompt with and without image."""
    return {"no_image_policy": no_image_policy(processor), "question": PROMPT_PROBE,
            "with_image": build_prompt(processor, PROMPT_PROBE),
            "without_image": build_prompt(processor, PROMPT_PROBE, image=False)}


def _short(part: dict, name_key: str) -> str:
    digest = part.get("weights_sha256")
    return f"{part.get(name_key)!r} (weights sha256 {digest[:12] if digest else 'unknown'})"


def _compare(kind: str, recorded: dict | None, given: dict | None, name_key: str, where: str, strict: bool) -> None:
    """Refuse (or warn, strict=False) when the recorded and given weights hashes differ; warn when either is unknown."""
    if recorded is None or given is None or not recorded.get("weights_sha256") or not given.get("weights_sha256"):
        log.warning("%s: the %s cannot be verified (recorded %s, given %s)", where, kind,
                    _short(recorded, name_key) if recorded else "nothing",
                    _short(given, name_key) if given else "nothing")
        return
    if recorded["weights_sha256"] == given["weights_sha256"]:
        if recorded.get(name_key) != given.get(name_key):
            log.info("%s: %s %r has the recorded weights of %r", where, kind, given.get(name_key), recorded.get(name_key))
        return
    message = (f"{where}: bridge was trained on {kind} {_short(recorded, name_key)} but is being loaded onto "
               f"{_short(given, name_key)}; pass the recorded {kind}, or strict=False (--no-strict) to load anyway")
    if strict:
        raise BridgeMismatch(message)
    log.warning("%s", message)


def verify_record(record: dict | None, base: torch.nn.Module, encoder, where: str, strict: bool = True) -> None:
    """Check a bridge's record against the base (and, when given, the encoder) it is being loaded with."""
    if record is None:
        log.warning("%s: bridge written without a record of its base and encoder; it cannot be verified", where)
        return
    _compare("base", record.get("base"), base_fingerprint(base), "id", where, strict)
    if encoder is not None:
        _compare("encoder", record.get("encoder"), encoder_fingerprint(encoder), "identity", where, strict)
