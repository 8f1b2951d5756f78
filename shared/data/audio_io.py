"""Audio I/O on soundfile: windowed mono reads, exact rational resampling, pad/trim.

Only the requested window is read from disk (soundfile seeks to the first frame), so a 10 s
clip out of an hour-long file costs 10 s of decoding.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

# soundfile raises SoundFileError subclasses (LibsndfileError is also a RuntimeError) for
# unreadable files and OSError-family errors for file-system problems.
_READ_ERRORS = (sf.SoundFileError, RuntimeError, OSError)


class AudioError(ValueError):
    """An audio file that cannot give the requested samples; the message names the file."""


@dataclass(frozen=True)
class AudioInfo:
    """Header facts about an audio file."""

    path: str
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read the header of an audio file (no samples are decoded)."""
    path = _existing(path)
    try:
        info = sf.info(str(path))
    except _READ_ERRORS as err:
        raise AudioError(f"audio file {path} is unreadable: {err}; expected a readable audio file") from err
    if info.samplerate <= 0:
        raise AudioError(f"audio file {path} has sample rate {info.samplerate}; expected a positive rate")
    return AudioInfo(str(path), int(info.samplerate), int(info.channels), int(info.frames))


def load_audio(
    path: str | os.PathLike, sample_rate: int, start: float = 0.0, end: float | None = None
) -> np.ndarray:
    """Read [start, end) seconds of a file as float32 mono at `sample_rate`.

    `end=None` means the end of the file. A window whose end lies past the end of the file
    is read up to the end of the file (the result is shorter; see `pad_or_trim`); a window
    that starts at or after the end of the file raises AudioError.
    """
    path = _existing(path)
    if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise AudioError(f"audio file {path}: sample_rate is {sample_rate!r}; expected a positive int")
    _check_window(path, start, end)
    try:
        with sf.SoundFile(str(path)) as fh:
            file_rate, total = fh.samplerate, fh.frames
            first, last = window_frames(start, end, file_rate, total)
            if first >= total:
                raise AudioError(
                    f"audio file {path}: window start {start}s is at or after the end of the file "
                    f"({total / file_rate:.3f}s); expected start < duration"
                )
            _seek(fh, first)
            data = fh.read(last - first, dtype="float32", always_2d=True)
    except _READ_ERRORS as err:
        raise AudioError(f"audio file {path} is unreadable: {err}; expected a readable audio file") from err
    if data.shape[0] == 0:
        raise AudioError(
            f"audio file {path}: window [{start}, {end}) s gave 0 samples; expected at least one"
        )
    return resample(to_mono(data), file_rate, sample_rate)


def window_frames(start: float, end: float | None, rate: int, total: int) -> tuple[int, int]:
    """[first, last) frame numbers of the window [start, end) s in a file of `total` frames (end clipped to it)."""
    return int(round(start * rate)), total if end is None else min(total, int(round(end * rate)))


def declared_frames(path: str | os.PathLike) -> int | None:
    """The frame count a RIFF/WAVE file's header declares (data chunk size / block align), which libsndfile
    silently lowers to the frames actually present when the file is truncated; None for other formats and
    for streamed WAVs whose data size is left open (0xFFFFFFFF)."""
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            return None
        block_align = 0
        while len(chunk := fh.read(8)) == 8:
            name, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if name == b"data":
                return size // block_align if block_align and size != 0xFFFFFFFF else None
            padded = size + (size & 1)  # chunks are padded to an even size
            if name == b"fmt ":
                block_align = int.from_bytes(fh.read(padded)[12:14], "little")
            else:
                fh.seek(padded, os.SEEK_CUR)
    return None


def to_mono(data: np.ndarray) -> np.ndarray:
    """(frames, channels) samples as one mono channel: the mean of the channels."""
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file {path} does not exist; expected an existing file")
    return path


def _check_window(path: Path, start: float, end: float | None) -> None:
    if not math.isfinite(start) or start < 0:
        raise AudioError(f"audio file {path}: window start is {start!r}; expected a finite value >= 0")
    if end is not None and (not math.isfinite(end) or end <= start):
        raise AudioError(f"audio file {path}: window end is {end!r}; expected a finite value > start={start}")


def _seek(fh: sf.SoundFile, frame: int) -> None:
    """Seek to `frame`, or read and discard up to it when the format cannot seek."""
    if frame == 0:
        return
    if fh.seekable():
        fh.seek(frame)
        return
    remaining = frame
    while remaining > 0:
        got = fh.read(min(remaining, 1 << 16), dtype="float32", always_2d=True).shape[0]
        if got == 0:
            break
        remaining -= got


def resample(wave: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample a 1-D signal by the exact rational factor target/orig (polyphase filter)."""
    if orig_rate <= 0 or target_rate <= 0:
        raise AudioError(f"resample: rates are {orig_rate} -> {target_rate}; expected positive ints")
    wave = np.asarray(wave, dtype=np.float32)
    if orig_rate == target_rate:
        return wave
    g = math.gcd(int(orig_rate), int(target_rate))
    return resample_poly(wave, target_rate // g, orig_rate // g).astype(np.float32, copy=False)


def pad_or_trim(wave: np.ndarray, num_samples: int) -> np.ndarray:
    """Zero-pad at the end, or cut the end, so that the last axis has `num_samples` samples."""
    if num_samples < 0:
        raise ValueError(f"pad_or_trim: num_samples is {num_samples}; expected >= 0")
    wave = np.asarray(wave)
    have = wave.shape[-1]
    if have >= num_samples:
        return wave[..., :num_samples]
    pad = [(0, 0)] * (wave.ndim - 1) + [(0, num_samples - have)]
    return np.pad(wave, pad)


def write_audio(path: str | os.PathLike, wave: np.ndarray, sample_rate: int) -> Path:
    """Write a mono (1-D) or (frames, channels) float wave as 16-bit PCM WAV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim not in (1, 2):
        raise AudioError(f"write_audio {path}: wave has shape {wave.shape}; expected (n,) or (n, channels)")
    sf.write(str(path), wave, int(sample_rate), subtype="PCM_16", format="WAV")
    return path
