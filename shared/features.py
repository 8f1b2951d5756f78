"""On-disk cache of frozen-encoder features, so each clip goes through an encoder once.

Entries are frame-level feature tensors (T, C), not pooled vectors: later stages pool them
into k temporal tokens. An entry's key hashes
    the encoder's identity (name plus preprocessing settings),
    the encoder's weights (a hash of its parameters),
    the audio file's content (so an edited file is a miss), and
    the audio window (start, end).
Changing any of them misses the old entry. Entries are safetensors files written atomically; an entry that
cannot be read back (truncated or corrupt, e.g. by a disk filling up) is logged, counted as a miss and rewritten.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from shared.cli import InputError, one_line
from shared.data.audio_io import load_audio
from shared.loading import load_safetensors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioRef:
    """An audio window: file path and [start, end) in seconds (end None = to the file's end)."""

    path: str
    start: float = 0.0
    end: float | None = None


def weights_hash(module: torch.nn.Module) -> str:
    """SHA-256 over a module's parameters and buffers, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Frame-level features of one encoder (identity + weights), keyed by file content and window."""

    def __init__(self, root: str | os.PathLike, encoder_id: str, encoder_weights_hash: str) -> None:
        self.encoder_key = hashlib.sha256(f"{encoder_id}\0{encoder_weights_hash}".encode()).hexdigest()[:16]
        self.dir = Path(root) / self.encoder_key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self._file_hashes: dict[tuple[str, int, int], str] = {}

    def _file_hash(self, path: str) -> str:
        stat = os.stat(path)
        memo = (path, stat.st_size, stat.st_mtime_ns)
        if memo not in self._file_hashes:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            self._file_hashes[memo] = digest.hexdigest()
        return self._file_hashes[memo]

    def entry_path(self, ref: AudioRef) -> Path:
        window = f"{ref.start:.6f}:{'end' if ref.end is None else f'{ref.end:.6f}'}"
        key = hashlib.sha256(f"{self._file_hash(ref.path)}\0{window}".encode()).hexdigest()
        return self.dir / key[:2] / f"{key}.safetensors"

    def get(self, ref: AudioRef) -> torch.Tensor | None:
        """The cached features of `ref`, or None when there is no readable entry."""
        path = self.entry_path(ref)
        if not path.is_file():
            return None
        try:
            return load_safetensors(path, "a feature-cache entry")["features"]
        except (InputError, KeyError) as err:  # KeyError: a safetensors file without 'features'
            log.warning("feature cache entry %s is unreadable (%s); encoding the clip again", path, one_line(err))
            return None

    def put(self, ref: AudioRef, features: torch.Tensor) -> None:
        path = self.entry_path(ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        save_file({"features": features.detach().cpu().contiguous()}, str(tmp))
        os.replace(tmp, path)

    def features(self, refs: Sequence[AudioRef], encode: Callable[[list[AudioRef]], Sequence[torch.Tensor]],
                 batch_size: int = 32) -> list[torch.Tensor]:
        """Features for every ref: cached ones are read, the rest encoded in batches and stored.

        `encode` takes a batch of refs and returns one (T, C) tensor per ref (or a (B, T, C) tensor).
        """
        out: list[torch.Tensor | None] = [self.get(r) for r in refs]
        missing = [i for i, f in enumerate(out) if f is None]
        self.hits += len(refs) - len(missing)
        self.misses += len(missing)
        if missing:
            log.info("feature cache %s: %d hits, encoding %d clips", self.encoder_key, len(refs) - len(missing), len(missing))
        for start in tqdm(range(0, len(missing), batch_size), desc="encoding audio", unit="batch",
                          disable=len(missing) <= batch_size):
            idx = missing[start:start + batch_size]
            batch = encode([refs[i] for i in idx])
            if len(batch) != len(idx):
                raise ValueError(f"encoder returned {len(batch)} feature rows for {len(idx)} clips; expected one per clip")
            for i, feats in zip(idx, batch):
                self.put(refs[i], feats)
                out[i] = feats.detach().cpu()
        return out  # type: ignore[return-value]


def valid_frames_encoder(encoder, sample_rate: int) -> Callable[[list[AudioRef]], list[torch.Tensor]]:
    """An `encode` for FeatureCache.features: reads each audio window, keeps only its valid frames.

    `encoder` is a frozen encoder from shared.encoders (encode(waves, sample_rate) -> frames, mask).
    """
    def encode(refs: list[AudioRef]) -> list[torch.Tensor]:
        waves = [load_audio(r.path, sample_rate, r.start, r.end) for r in refs]
        frames, mask = encoder.encode(waves, sample_rate)
        return [f[m] for f, m in zip(frames, mask.bool())]
    return encode


def pad_frames(features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length (T_i, C) features into (B, T_max, C) with a frame mask (1 = valid)."""
    if not features:
        raise ValueError("pad_frames: no features; expected at least one clip")
    longest = max(f.shape[0] for f in features)
    out = features[0].new_zeros(len(features), longest, features[0].shape[1])
    mask = torch.zeros(len(features), longest, dtype=torch.bool)
    for i, f in enumerate(features):
        out[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = True
    return out, mask
