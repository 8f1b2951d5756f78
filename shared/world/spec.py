"""The embedded world's specification: every knob that changes what gets built, and its hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

from shared.cli import InputError, check_number

SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow", "purple")
# One sound kind per shape: the audio-visual link of the world.
SOUND_OF_SHAPE = {"circle": "tone", "square": "buzz", "triangle": "chirp"}
SHAPE_OF_SOUND = {v: k for k, v in SOUND_OF_SHAPE.items()}
PITCHES = ("low", "high")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
SPLITS = ("train", "val", "test")
MAX_REPEATS = 5
MAX_EVENTS = 2

# Sound timing and pitch (shared.world.sounds renders them; the spec checks that a scene fits its clip).
PULSE_SECONDS = 0.12
GAP_SECONDS = 0.12
RAMP_SECONDS = 0.006
BASE_HZ = {"low": (260.0, 420.0), "high": (900.0, 1400.0)}
FIRST_ONSET_SECONDS = (0.1, 0.5)  # the first event starts within this range
EVENT_GAP_RANGE = (0.3, 0.5)  # silence between two events, before tempo_factor
CHIRP_SWEEP = 2.0  # a chirp rises from its frequency to this multiple of it
LOWEST_HZ = 20.0
TIMBRES = ("default", "unseen")
# Rendering shifts: fields that change only how the audio sounds, never a question or answer (see variants.py).
# At their defaults they are left out of data_hash, so worlds built before they existed keep their hash.
RENDERING_SHIFTS = ("reverb_seconds", "pitch_factor", "tempo_factor", "timbre")

# Bump when generation code changes in a way that changes its output.
GENERATOR_VERSION = 1

SIZES: dict[str, dict[str, int]] = {
    "default": {"train": 3000, "val": 300, "test": 600},
    "micro": {"train": 24, "val": 8, "test": 8},
}


def position_name(row: int, col: int) -> str:
    """Canonical name of a 3x3 grid cell, e.g. 'top left' or 'center'."""
    if row == 1 and col == 1:
        return "center"
    return f"{ROWS[row]} {COLS[col]}"


def stable_hash(obj: object) -> str:
    """SHA-256 of the canonical JSON of obj."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class WorldSpec:
    """Everything that determines the world's images, sounds and questions."""

    seed: int = 0
    size: str = "default"
    image_size: int = 48
    grid: int = 3
    sample_rate: int = 16000
    clip_seconds: float = 4.0
    snr_db: tuple[float, float] = (-5.0, 20.0)
    offscreen_sound_rate: float = 0.2
    two_event_rate: float = 0.3
    synonym_rate: float = 0.08
    annotator_error_rate: float = 0.03
    splits: dict[str, int] = field(default_factory=dict)
    reverb_seconds: float = 0.0
    pitch_factor: float = 1.0
    tempo_factor: float = 1.0
    timbre: Literal["default", "unseen"] = "default"

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"world size {self.size!r} is unknown; expected one of {sorted(SIZES)}")
        for name, low in (("seed", 0), ("image_size", 1), ("grid", 1), ("sample_rate", 1)):
            check_number(f"world.{name}", getattr(self, name), ge=low, integer=True)
        check_number("world.clip_seconds", self.clip_seconds, gt=0)
        for name in ("offscreen_sound_rate", "two_event_rate", "synonym_rate", "annotator_error_rate"):
            check_number(f"world.{name}", getattr(self, name), ge=0, le=1)
        for split, count in self.splits.items():
            check_number(f"world.splits.{split}", count, ge=0, integer=True)
        if self.image_size % self.grid:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by grid {self.grid}; expected a multiple"
            )
        if not self.splits:
            object.__setattr__(self, "splits", dict(SIZES[self.size]))
        self._check_rendering()

    def _check_rendering(self) -> None:
        """Reverb, pitch, tempo and timbre must leave every pulse audible and every scene inside its clip."""
        check_number("world.reverb_seconds", self.reverb_seconds, ge=0, le=self.clip_seconds)
        check_number("world.pitch_factor", self.pitch_factor, gt=0)
        check_number("world.tempo_factor", self.tempo_factor, ge=2 * RAMP_SECONDS / PULSE_SECONDS)
        if self.timbre not in TIMBRES:
            raise InputError(f"world.timbre is {self.timbre!r}; expected one of {list(TIMBRES)}")
        nyquist = self.sample_rate / 2
        top = BASE_HZ["high"][1] * CHIRP_SWEEP
        if self.pitch_factor * top >= nyquist:
            raise InputError(f"world.pitch_factor is {self.pitch_factor!r}; expected < {nyquist / top:.4g} (the highest "
                             f"chirp, {top:g} Hz times the factor, must stay below the Nyquist frequency {nyquist:g} Hz)")
        if self.pitch_factor * BASE_HZ["low"][0] < LOWEST_HZ:
            raise InputError(f"world.pitch_factor is {self.pitch_factor!r}; expected >= {LOWEST_HZ / BASE_HZ['low'][0]:.4g} "
                             f"(the lowest pulse, {BASE_HZ['low'][0]:g} Hz times the factor, must stay >= {LOWEST_HZ:g} Hz)")
        limit = self.max_tempo_factor()
        if self.tempo_factor > limit:
            raise InputError(
                f"world.tempo_factor is {self.tempo_factor!r}; expected <= {limit:.4g} (the longest scene, {MAX_EVENTS} "
                f"events of {MAX_REPEATS} pulses starting at {FIRST_ONSET_SECONDS[1]:g} s, must end within "
                f"clip_seconds {self.clip_seconds:g})")

    def max_tempo_factor(self) -> float:
        """The largest tempo_factor for which the longest possible scene still ends within the clip."""
        event = MAX_REPEATS * PULSE_SECONDS + (MAX_REPEATS - 1) * GAP_SECONDS
        scaled = MAX_EVENTS * event + (MAX_EVENTS - 1) * EVENT_GAP_RANGE[1]
        return (self.clip_seconds - FIRST_ONSET_SECONDS[1]) / scaled

    @property
    def cell(self) -> int:
        return self.image_size // self.grid

    def rendering_shifts(self) -> dict[str, object]:
        """The rendering shifts that differ from their defaults, e.g. {'reverb_seconds': 0.5}."""
        defaults = {f.name: f.default for f in fields(self) if f.name in RENDERING_SHIFTS}
        return {name: getattr(self, name) for name in RENDERING_SHIFTS if getattr(self, name) != defaults[name]}

    def data_hash(self) -> str:
        spec = {k: v for k, v in asdict(self).items() if k not in RENDERING_SHIFTS}
        return stable_hash({"spec": {**spec, **self.rendering_shifts()}, "generator": GENERATOR_VERSION})
