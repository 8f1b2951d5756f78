"""Frozen audio encoders with frame-level outputs: LAION-CLAP (transformers `ClapModel`),
the Whisper encoder (`WhisperModel`), and "both" aligned in time.

Each encoder maps mono clips to (frames (B, T, C), frame_mask (B, T)) where frame t covers
[t, t+1) * frame_seconds of the clip, and frames past the clip's real length are masked out
(mask convention: 1 = valid, 0 = padding). Models load by hub id or local path with
`from_pretrained`, on a configurable device and dtype, and are frozen (eval, no grad).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch
from transformers import AutoFeatureExtractor, ClapFeatureExtractor, ClapModel, WhisperModel

from shared.clap_features import clap_frame_features
from shared.data.audio_io import resample


class FrozenAudioEncoder(Protocol):
    identity: str
    dim: int
    frame_seconds: float
    max_seconds: float  # the window every clip is padded to: longer clips are cut (CLAP) or refused (Whisper)

    def encode(self, waves: Sequence[np.ndarray], sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
        ...


def _valid_frames(waves: Sequence[np.ndarray], sample_rate: int, frames: int, frame_seconds: float) -> torch.Tensor:
    """Mask of the frames that overlap each clip's real duration."""
    counts = [min(frames, math.ceil(len(w) / sample_rate / frame_seconds - 1e-9)) for w in waves]
    return torch.arange(frames)[None, :] < torch.tensor(counts)[:, None]


@dataclass
class EncoderSettings:
    """Where and how to run a frozen encoder."""

    path: str
    device: str = "cpu"
    dtype: str = "float32"


def _load(cls, settings: EncoderSettings):
    model = cls.from_pretrained(settings.path, dtype=getattr(torch, settings.dtype))
    return model.to(settings.device).eval().requires_grad_(False)


class ClapEncoder:
    """HTSAT frame features of a `ClapModel` (e.g. LAION-CLAP weights in transformers format).

    The front end is the folder's own `ClapFeatureExtractor` (preprocessor_config.json): its
    sample rate, STFT and mel settings, padding and truncation are followed as saved (see
    `shared.clap_features.mel_features`). Audio needs no tokenizer, so none is loaded.
    """

    def __init__(self, settings: EncoderSettings) -> None:
        self.model = _load(ClapModel, settings)
        try:
            fe = ClapFeatureExtractor.from_pretrained(settings.path)
        except OSError as err:
            raise ValueError(f"{settings.path}: no CLAP preprocessor config ({str(err).splitlines()[0]}); expected "
                             "a preprocessor_config.json (safe-convert-clap writes laion's)") from err
        self.feature_extractor = fe
        self.max_seconds = fe.max_length_s
        front_end = (f"sr{fe.sampling_rate}:max{fe.max_length_s}:fft{fe.fft_window_size}:hop{fe.hop_length}:"
                     f"mel{fe.feature_size}:{fe.frequency_min}-{fe.frequency_max}Hz:{fe.padding}:{fe.truncation}")
        self.identity = f"clap:{settings.path}:{front_end}"
        silent = np.zeros(int(fe.max_length_s * fe.sampling_rate), dtype=np.float32)
        probe = self.encode_frames([silent], fe.sampling_rate)
        self.frame_seconds, self.dim = self.max_seconds / probe.shape[1], int(probe.shape[2])

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]

    @torch.no_grad()
    def encode_frames(self, waves: Sequence[np.ndarray], sample_rate: int) -> torch.Tensor:
        return clap_frame_features(self.model, self.feature_extractor, list(waves), sample_rate).float().cpu()

    def encode(self, waves: Sequence[np.ndarray], sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
        frames = self.encode_frames(waves, sample_rate)
        return frames, _valid_frames(waves, sample_rate, frames.shape[1], self.frame_seconds)


class WhisperEncoder:
    """Encoder hidden states of a `WhisperModel`: one frame per 2 mel hops (20 ms for the real models)."""

    def __init__(self, settings: EncoderSettings) -> None:
        self.encoder = _load(WhisperModel, settings).get_encoder()
        self.extractor = AutoFeatureExtractor.from_pretrained(settings.path)
        self.device = settings.device
        self.dim = int(self.encoder.config.d_model)
        self.frame_seconds = 2 * self.extractor.hop_length / self.extractor.sampling_rate
        self.max_seconds = float(self.extractor.chunk_length)  # n_samples = chunk_length x sampling_rate
        self.identity = f"whisper:{settings.path}:chunk{self.extractor.chunk_length}"

    def modules(self) -> list[torch.nn.Module]:
        return [self.encoder]

    @torch.no_grad()
    def encode(self, waves: Sequence[np.ndarray], sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
        sr = self.extractor.sampling_rate
        clips = [resample(np.asarray(w, dtype=np.float32), sample_rate, sr) for w in waves]
        too_long = [i for i, c in enumerate(clips) if len(c) > self.extractor.n_samples]
        if too_long:
            raise ValueError(f"clips {too_long} are longer than Whisper's {self.extractor.chunk_length} s window; "
                             "expected shorter clips (window them first)")
        features = self.extractor(clips, sampling_rate=sr, return_tensors="pt")["input_features"]
        dtype = next(self.encoder.parameters()).dtype
        frames = self.encoder(features.to(self.device, dtype)).last_hidden_state.float().cpu()
        return frames, _valid_frames(clips, sr, frames.shape[1], self.frame_seconds)


class BothEncoder:
    """CLAP and Whisper frames side by side, on the coarser encoder's time grid (nearest frame)."""

    def __init__(self, clap: ClapEncoder, whisper: WhisperEncoder) -> None:
        self.parts = (clap, whisper)
        self.dim = clap.dim + whisper.dim
        self.identity = f"both:{clap.identity}|{whisper.identity}"
        self.frame_seconds = max(clap.frame_seconds, whisper.frame_seconds)
        self.max_seconds = min(clap.max_seconds, whisper.max_seconds)  # the longest clip both accept

    def modules(self) -> list[torch.nn.Module]:
        return [m for part in self.parts for m in part.modules()]

    def encode(self, waves: Sequence[np.ndarray], sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = [(enc.encode(waves, sample_rate), enc.frame_seconds) for enc in self.parts]
        duration = max(len(w) for w in waves) / sample_rate
        steps = max(1, math.ceil(duration / self.frame_seconds - 1e-9))
        centres = (torch.arange(steps) + 0.5) * self.frame_seconds
        aligned, masks = [], []
        for (frames, mask), fs in outputs:
            index = torch.clamp((centres / fs).long(), max=frames.shape[1] - 1)
            aligned.append(frames[:, index])
            masks.append(mask[:, index])
        return torch.cat(aligned, dim=-1), masks[0] & masks[1]


def build_encoder(kind: str, clap: str | None, whisper: str | None, device: str = "cpu",
                  dtype: str = "float32") -> ClapEncoder | WhisperEncoder | BothEncoder:
    """The frozen encoder named by kind ('clap', 'whisper' or 'both') from the given ids or folders."""
    needed = {"clap": ("clap",), "whisper": ("whisper",), "both": ("clap", "whisper")}
    if kind not in needed:
        raise ValueError(f"audio encoder is {kind!r}; expected one of {sorted(needed)}")
    paths = {"clap": clap, "whisper": whisper}
    missing = [name for name in needed[kind] if not paths[name]]
    if missing:
        raise ValueError(f"audio encoder {kind!r} needs a {' and a '.join(missing)} id or folder")
    settings = lambda path: EncoderSettings(path, device, dtype)  # noqa: E731
    if kind == "clap":
        return ClapEncoder(settings(clap))
    if kind == "whisper":
        return WhisperEncoder(settings(whisper))
    return BothEncoder(ClapEncoder(settings(clap)), WhisperEncoder(settings(whisper)))
