"""Scenes of the embedded world: which objects, where, which sounds, and their rendering."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from shared.world.spec import (
    COLORS,
    MAX_REPEATS,
    PITCHES,
    SHAPE_OF_SOUND,
    SHAPES,
    SOUND_OF_SHAPE,
    SPLITS,
    WorldSpec,
    position_name,
)

RGB = {
    "red": (215, 45, 45),
    "green": (45, 175, 70),
    "blue": (55, 90, 225),
    "yellow": (225, 205, 40),
    "purple": (150, 60, 190),
}
BACKGROUND = 24


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    row: int
    col: int

    @property
    def position(self) -> str:
        return position_name(self.row, self.col)


@dataclass(frozen=True)
class SoundEvent:
    """A train of identical pulses from one sound kind."""

    kind: str
    pitch: str
    repeats: int

    @property
    def shape(self) -> str:
        return SHAPE_OF_SOUND[self.kind]


@dataclass(frozen=True)
class Scene:
    split: str
    index: int
    objects: tuple[SceneObject, ...]
    events: tuple[SoundEvent, ...]
    snr_db: float

    @property
    def key(self) -> str:
        return f"{self.split}/{self.index:05d}"

    def to_json(self) -> dict:
        return asdict(self)


def scene_rng(spec: WorldSpec, split: str, index: int, stream: int) -> np.random.Generator:
    """Independent, order-free random stream for one scene (layout, pixels or audio)."""
    return np.random.default_rng([spec.seed, SPLITS.index(split), index, stream])


def _sample_objects(rng: np.random.Generator, spec: WorldSpec, exclude: str | None,
                    require: str | None) -> tuple[SceneObject, ...]:
    """1-3 objects on distinct cells with distinct (shape, color); `require` appears exactly once."""
    n = int(rng.integers(1, 4))
    cells = rng.choice(spec.grid * spec.grid, size=n, replace=False)
    free_shapes = [s for s in SHAPES if s not in (exclude, require)]
    shapes = [require] if require else []
    while len(shapes) < n:
        shapes.append(str(rng.choice(free_shapes)))
    rng.shuffle(shapes)
    objects, used = [], set()
    for shape, cell in zip(shapes, cells):
        color = str(rng.choice([c for c in COLORS if (shape, c) not in used]))
        used.add((shape, color))
        objects.append(SceneObject(shape, color, int(cell) // spec.grid, int(cell) % spec.grid))
    return tuple(objects)


def _sample_event(rng: np.random.Generator, kind: str) -> SoundEvent:
    return SoundEvent(kind, str(rng.choice(PITCHES)), int(rng.integers(1, MAX_REPEATS + 1)))


def sample_scene(spec: WorldSpec, split: str, index: int) -> Scene:
    """Draw one scene deterministically from (seed, split, index)."""
    rng = scene_rng(spec, split, index, stream=0)
    kinds = list(SOUND_OF_SHAPE.values())
    if rng.random() < spec.two_event_rate:
        first, second = rng.choice(kinds, size=2, replace=False)
        events = (_sample_event(rng, str(first)), _sample_event(rng, str(second)))
        objects = _sample_objects(rng, spec, exclude=None, require=None)
    else:
        event = _sample_event(rng, str(rng.choice(kinds)))
        events = (event,)
        offscreen = rng.random() < spec.offscreen_sound_rate
        objects = _sample_objects(
            rng, spec,
            exclude=event.shape if offscreen else None,
            require=None if offscreen else event.shape,
        )
    lo, hi = spec.snr_db
    return Scene(split, index, objects, events, round(float(rng.uniform(lo, hi)), 2))


def _shape_mask(shape: str, size: int, cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy**2 + dx**2 <= radius**2
    if shape == "square":
        half = radius * 0.85
        return (np.abs(dy) <= half) & (np.abs(dx) <= half)
    if shape == "triangle":
        top, bottom = cy - radius, cy + radius
        rel = (yy - top) / (bottom - top)
        return (rel >= 0) & (rel <= 1) & (np.abs(dx) <= rel * radius)
    raise ValueError(f"shape {shape!r} is unknown; expected one of {SHAPES}")


def render_image(spec: WorldSpec, scene: Scene) -> np.ndarray:
    """RGB uint8 image of the scene: objects with small jitter inside their grid cells."""
    rng = scene_rng(spec, scene.split, scene.index, stream=1)
    size, cell = spec.image_size, spec.cell
    img = np.full((size, size, 3), BACKGROUND, dtype=np.float32)
    img += rng.normal(0.0, 6.0, size=img.shape)
    radius = cell * 0.36
    jitter = cell * 0.5 - radius - 1
    for obj in scene.objects:
        cy = (obj.row + 0.5) * cell + rng.uniform(-jitter, jitter)
        cx = (obj.col + 0.5) * cell + rng.uniform(-jitter, jitter)
        mask = _shape_mask(obj.shape, size, cy, cx, radius)
        shade = np.array(RGB[obj.color], dtype=np.float32) * rng.uniform(0.85, 1.1)
        img[mask] = shade + rng.normal(0.0, 4.0, size=(int(mask.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)
