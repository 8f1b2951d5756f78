"""What a bridge was trained with, recorded in its `safe_config.json`, and the check made when it is loaded.

The record (key "record") holds:
- `base`: the id the base was loaded from (folder or hub id, `config._name_or_path`) and `weights_fingerprint`,
  a SHA-256 over the base's weight files as stored: for every tensor of its `*.safetensors` files (in name order,
  across shards) its name, dtype, shape and the first and last `SAMPLE_BYTES` bytes of its data. Reading from the
  files rather than the loaded tensors makes it independent of the dtype the base is loaded in (a bridge trained on
  a float32 base loads onto the same base in bfloat16) and of the LoRA layers SAFE injects. It reads at most 8 KiB
  per tensor: for ~700 tensors, as in LLaVA-1.5-7B, about 12 ms from the page cache on the reference machine,
  where hashing every byte of its 13.5 GiB took about 8 s. It still tells apart any base of the same shapes whose
  weights were trained or fine-tuned separately (their tensors differ from the first byte on); an edit confined
  to the middle of a tensor is not seen. A base stored only as pickled `*.bin` files (which cannot be indexed
  without unpickling) is hashed in full. A base with no weight files on disk (built in memory, or a hub id not in
  the local cache) gets no fingerprint, and a bridge cannot be verified against it. Records written before the
  fingerprint hold `weights_sha256`, the SHA-256 of the whole files (file name, size, bytes); those bridges are
  still checked with it.
- `encoder`: the frozen encoder's identity (name, path, front end) and the hash of its loaded weights
  (`shared.features.weights_hash`; the encoder always runs in float32), the same pair that keys the feature cache.
- `bridge`: k_max, fusion mode, the decoder layers holding adapters and the path of their layer list.
- `prompt`: the processor's no-image policy and the prompt built for a fixed question (`stage_a.prompting`).
- `safe_version`: the installed version of the `safe-av` package.

A base or encoder is the same when its fingerprint (weights hash) is (a different id with the same one is only
logged). A different one refuses the load with `BridgeMismatch` naming the recorded and the given ones, unless
strict=False (`--no-strict`), which logs a warning instead. Bridges written before the record existed load with a
warning that they cannot be verified. Besides the record, loading the weights themselves refuses a parameter whose
shape differs from the one built on the given base (`SafeModel.load_trainable_state`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import weakref
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import HFValidationError

from shared.features import weights_hash
from shared.loading import file_sha256
from stage_a.prompting import build_prompt, no_image_policy

log = logging.getLogger(__name__)

PACKAGE = "safe-av"
PROMPT_PROBE = "what color is the circle?"
SAMPLE_BYTES = 4096  # read from the start and from the end of every tensor of the base's weight files
FINGERPRINT, FULL_HASH = "weights_fingerprint", "weights_sha256"  # the record's key for each digest of a base
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
        _FILE_HASHES[memo] = file_sha256(path)
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


def _tensor_samples(path: Path) -> dict[str, tuple[str, list[int], bytes]]:
    """Per tensor of a safetensors file: dtype, shape and its first and last SAMPLE_BYTES bytes."""
    samples = {}
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            parts = []
            for offset in sorted({begin, max(begin, end - SAMPLE_BYTES)}):
                handle.seek(8 + size + offset)
                parts.append(handle.read(min(SAMPLE_BYTES, end - offset)))
            samples[name] = (entry["dtype"], entry["shape"], b"".join(parts))
    return samples


def weights_fingerprint(folder: Path) -> str | None:
    """SHA-256 over every safetensors tensor's name, dtype, shape and sampled bytes (module docstring); a folder with
    only .bin weights gets the full hash of its files, one without weight files None."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return files_weights_hash(folder)
    samples = {name: sample for path in files for name, sample in _tensor_samples(path).items()}
    digest = hashlib.sha256()
    for name in sorted(samples):
        dtype, shape, data = samples[name]
        digest.update(f"{name}\0{dtype}\0{shape}\0".encode())
        digest.update(data)
    return digest.hexdigest()


DIGESTS = {FINGERPRINT: weights_fingerprint, FULL_HASH: files_weights_hash}


def digest_key(recorded_base: dict | None) -> str:
    """The digest a recorded base is checked with: its fingerprint, or the full hash of a record older than that."""
    part = recorded_base or {}
    return FULL_HASH if FINGERPRINT not in part and part.get(FULL_HASH) else FINGERPRINT


def base_fingerprint(base: torch.nn.Module, key: str = FINGERPRINT) -> dict:
    """The base's id (where it was loaded from) and the digest `key` of its weight files (None without files)."""
    name = str(getattr(base.config, "_name_or_path", "") or "")
    folder = _model_folder(name)
    return {"id": name, key: DIGESTS[key](folder) if folder else None}


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


def _short(part: dict, name_key: str, key: str) -> str:
    digest = part.get(key)
    return f"{part.get(name_key)!r} ({key.replace('_', ' ')} {digest[:12] if digest else 'unknown'})"


def _compare(kind: str, recorded: dict | None, given: dict, name_key: str, key: str, where: str, strict: bool) -> None:
    """Refuse (or warn, strict=False) when the recorded and given digests `key` differ; warn when either is unknown."""
    if recorded is None or not recorded.get(key) or not given.get(key):
        log.warning("%s: the %s cannot be verified (recorded %s, given %s)", where, kind,
                    _short(recorded, name_key, key) if recorded else "nothing", _short(given, name_key, key))
        return
    if recorded[key] == given[key]:
        if recorded.get(name_key) != given.get(name_key):
            log.info("%s: %s %r has the recorded weights of %r", where, kind, given.get(name_key), recorded.get(name_key))
        return
    message = (f"{where}: bridge was trained on {kind} {_short(recorded, name_key, key)} but is being loaded onto "
               f"{_short(given, name_key, key)}; pass the recorded {kind}, or strict=False (--no-strict) to load anyway")
    if strict:
        raise BridgeMismatch(message)
    log.warning("%s", message)


def verify_record(record: dict | None, base: torch.nn.Module, encoder, where: str, strict: bool = True) -> None:
    """Check a bridge's record against the base (and, when given, the encoder) it is being loaded with."""
    if record is None:
        log.warning("%s: bridge written without a record of its base and encoder; it cannot be verified", where)
        return
    key = digest_key(record.get("base"))
    _compare("base", record.get("base"), base_fingerprint(base, key), "id", key, where, strict)
    if encoder is not None:
        _compare("encoder", record.get("encoder"), encoder_fingerprint(encoder), "identity", FULL_HASH, where, strict)
