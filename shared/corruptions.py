"""Audio corruptions: additive noise at an exact SNR and time masking (pure numpy), used by `stage_a-robust`, by
training-side augmentation (stage_a.augment) and by the world encoder's mixture training (shared.world.clap_train).

A `Corruption` is applied to a clip's waveform before the frozen encoder:
- noise: white (the world's own noise type), pink (1/f power spectrum, out of domain: the world only
  ever mixes white noise), or babble (a mix of >= BABBLE_CLIPS other clips of the split, each at unit
  RMS and circularly shifted). The noise is scaled so that the clip's SNR, defined over the whole clip as
  10*log10(mean(clean^2) / mean(noise^2)), is exactly the request; the sum is neither clipped nor
  renormalised, so the clean part keeps its level (the world's clips peak at 0.9, and loud noise can
  exceed 1.0: the encoder reads floats, so nothing is lost).
- mask: exactly round(fraction * n) samples set to zero, as one contiguous span at a random position or
  as scattered MASK_CHUNK_SECONDS chunks on a grid from the clip's start (the last one partial if needed).

Every random draw comes from `corruption_rng(name, clip_key, seed)`, a generator derived from a SHA-256
of the corruption's name, the clip's key and the seed: results are reproducible and independent of the
order clips are processed in.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

KINDS = ("clean", "noise", "mask")
NOISE_TYPES = ("white", "babble", "pink")
LAYOUTS = ("contiguous", "scattered")
STANDARD_SNRS = (20.0, 10.0, 5.0, 0.0, -5.0, -10.0)
STANDARD_FRACTIONS = (0.25, 0.5, 0.75)
BABBLE_CLIPS = 3
MASK_CHUNK_SECONDS = 0.05
_NOISE_NAME = re.compile(r"noise-(?P<type>[a-z]+)-(?P<snr>-?\d+(?:\.\d+)?)dB")
_MASK_NAME = re.compile(r"mask-(?P<layout>[a-z]+)-(?P<pct>\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class Corruption:
    """One corruption: clean; noise of a type at snr_db; or a mask of a fraction of the clip in a layout."""

    kind: str = "clean"
    noise: str | None = None
    snr_db: float | None = None
    fraction: float | None = None
    layout: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"corruption kind is {self.kind!r}; expected one of {KINDS}")
        noise_fields, mask_fields = (self.noise, self.snr_db), (self.fraction, self.layout)
        if self.kind == "noise":
            if self.noise not in NOISE_TYPES:
                raise ValueError(f"noise corruption: noise is {self.noise!r}; expected one of {NOISE_TYPES}")
            if self.snr_db is None or not np.isfinite(self.snr_db):
                raise ValueError(f"noise corruption: snr_db is {self.snr_db!r}; expected a finite number of dB")
        if self.kind == "mask":
            if self.layout not in LAYOUTS:
                raise ValueError(f"mask corruption: layout is {self.layout!r}; expected one of {LAYOUTS}")
            if self.fraction is None or not 0.0 < self.fraction <= 1.0:
                raise ValueError(f"mask corruption: fraction is {self.fraction!r}; expected a number in (0, 1]")
        unused = {"noise": mask_fields, "mask": noise_fields, "clean": noise_fields + mask_fields}[self.kind]
        if any(v is not None for v in unused):
            raise ValueError(f"{self.kind} corruption {self!r} sets fields of another kind; expected them None")

    @property
    def name(self) -> str:
        """A stable name, e.g. 'clean', 'noise-white-0dB', 'noise-pink--5dB', 'mask-scattered-50'."""
        if self.kind == "noise":
            return f"noise-{self.noise}-{self.snr_db:g}dB"
        if self.kind == "mask":
            return f"mask-{self.layout}-{100 * self.fraction:g}"
        return "clean"


CLEAN = Corruption()


def parse_corruption(name: str) -> Corruption:
    """The corruption a `.name` names (its inverse)."""
    if name == "clean":
        return CLEAN
    if m := _NOISE_NAME.fullmatch(name):
        return Corruption("noise", noise=m["type"], snr_db=float(m["snr"]))
    if m := _MASK_NAME.fullmatch(name):
        return Corruption("mask", fraction=float(m["pct"]) / 100, layout=m["layout"])
    raise ValueError(f"corruption name {name!r} is unknown; expected 'clean', 'noise-<{'|'.join(NOISE_TYPES)}>-<snr>dB' "
                     f"or 'mask-<{'|'.join(LAYOUTS)}>-<percent>'")


STANDARD: tuple[Corruption, ...] = (
    CLEAN,
    *(Corruption("noise", noise=t, snr_db=s) for t in NOISE_TYPES for s in STANDARD_SNRS),
    *(Corruption("mask", fraction=f, layout=layout) for layout in LAYOUTS for f in STANDARD_FRACTIONS),
)


def corruption_rng(name: str, clip_key: str, seed: int = 0) -> np.random.Generator:
    """The generator of one (corruption, clip): from a SHA-256 of both names and the seed."""
    digest = hashlib.sha256(f"{name}\0{clip_key}\0{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def snr_db(clean: np.ndarray, noise: np.ndarray) -> float:
    """10*log10(mean(clean^2) / mean(noise^2)) over the whole clip."""
    return float(10 * np.log10(np.mean(np.square(clean, dtype=np.float64)) / np.mean(np.square(noise, dtype=np.float64))))


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """n samples of Gaussian white noise."""
    return rng.standard_normal(n)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """n samples of 1/f noise: Gaussian white noise with its spectrum's power divided by frequency (DC removed)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    spectrum[0] = 0.0
    spectrum[1:] /= np.sqrt(freqs[1:])
    return np.fft.irfft(spectrum, n)


def babble_noise(sources: Sequence[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """Sum of the sources, each tiled or cut to n samples, set to unit RMS and circularly shifted at random."""
    if len(sources) < BABBLE_CLIPS:
        raise ValueError(f"babble needs at least {BABBLE_CLIPS} other clips; got {len(sources)}")
    mix = np.zeros(n)
    for j, source in enumerate(sources):
        source = np.asarray(source, dtype=np.float64)
        rms = np.sqrt(np.mean(source**2)) if len(source) else 0.0
        if rms == 0.0:
            raise ValueError(f"babble source {j} is silent (or empty); expected a clip with signal")
        tiled = np.resize(source, n) / rms
        mix += np.roll(tiled, int(rng.integers(n)))
    return mix


def choose_babble(rng: np.random.Generator, own: str, pool: Sequence[str], group: Callable[[str], str] = str,
                  count: int = BABBLE_CLIPS) -> list[str]:
    """`count` distinct keys of the pool outside the own clip's group (e.g. its scene or file), chosen by rng."""
    others = sorted({k for k in pool if group(k) != group(own)})
    if len(others) < count:
        raise ValueError(f"babble for clip {own!r}: only {len(others)} clips of other groups in the pool; "
                         f"expected at least {count}")
    return [others[i] for i in rng.choice(len(others), size=count, replace=False)]


def scaled_noise(clean: np.ndarray, noise: np.ndarray, snr: float) -> np.ndarray:
    """The noise scaled so that snr_db(clean, result) is exactly `snr`."""
    signal_power = float(np.mean(np.square(clean, dtype=np.float64)))
    noise_power = float(np.mean(np.square(noise, dtype=np.float64)))
    if signal_power == 0.0 or noise_power == 0.0:
        raise ValueError(f"cannot set an SNR with signal power {signal_power} and noise power {noise_power}; "
                         "expected both nonzero")
    return noise * np.sqrt(signal_power / (noise_power * 10 ** (snr / 10)))


def mask_indices(corruption: Corruption, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean (n,) mask of the samples a mask corruption zeroes: exactly round(fraction * n) of them."""
    count = int(round(corruption.fraction * n))  # type: ignore[operator]
    mask = np.zeros(n, dtype=bool)
    if corruption.layout == "contiguous":
        start = int(rng.integers(n - count + 1))
        mask[start:start + count] = True
        return mask
    chunk = max(1, int(round(MASK_CHUNK_SECONDS * sample_rate)))
    remaining = count
    for c in rng.permutation(-(-n // chunk)):
        if remaining == 0:
            break
        start = int(c) * chunk
        take = min(remaining, min(n, start + chunk) - start)
        mask[start:start + take] = True
        remaining -= take
    return mask


def apply(corruption: Corruption, wave: np.ndarray, rng: np.random.Generator, *, sample_rate: int,
          babble: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """The corrupted float32 wave (see the module docstring); `babble`: the other clips of a babble noise."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or len(wave) == 0:
        raise ValueError(f"wave has shape {wave.shape}; expected a non-empty mono (n,) array")
    if corruption.kind == "clean":
        return wave.copy()
    if corruption.kind == "mask":
        out = wave.copy()
        out[mask_indices(corruption, len(wave), sample_rate, rng)] = 0.0
        return out
    if corruption.noise == "babble":
        if babble is None:
            raise ValueError(f"{corruption.name} needs the babble clips; expected babble=[>= {BABBLE_CLIPS} waves]")
        noise = babble_noise(babble, len(wave), rng)
    else:
        noise = (white_noise if corruption.noise == "white" else pink_noise)(len(wave), rng)
    return (wave + scaled_noise(wave, noise, corruption.snr_db)).astype(np.float32)  # type: ignore[arg-type]


def corrupt_clip(corruption: Corruption, wave: np.ndarray, clip_key: str, pool: Sequence[str],
                 load: Callable[[str], np.ndarray], *, sample_rate: int, seed: int = 0,
                 group: Callable[[str], str] = str) -> np.ndarray:
    """`apply` with the clip's own generator; babble clips are chosen from `pool` (outside the clip's group)
    by that generator and read with `load`."""
    rng = corruption_rng(corruption.name, clip_key, seed)
    babble = None
    if corruption.noise == "babble":
        babble = [load(k) for k in choose_babble(rng, clip_key, pool, group)]
    return apply(corruption, wave, rng, sample_rate=sample_rate, babble=babble)
