"""The embedded world's specification: every knob that changes what gets built, and its hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from shared.cli import check_number

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

    @property
    def cell(self) -> int:
        return self.image_size // self.grid

    def data_hash(self) -> str:
        return stable_hash({"spec": asdict(self), "generator": GENERATOR_VERSION})
