"""Questions of the embedded world in three families, with VQA-style annotator answers.

Families and their types:
- visual (answerable from the image): color, shape, where, count, exists;
- audio (needs the sound): repeats, pitch, kind, order;
- audio_visual (needs both): visible, color, where.
Only questions with a unique answer are asked.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from shared.world.scenes import Scene, scene_rng
from shared.world.spec import COLORS, PITCHES, SHAPES, SOUND_OF_SHAPE, WorldSpec, position_name

NUM_ANNOTATORS = 10

SYNONYMS: dict[str, tuple[str, ...]] = {
    "1": ("one",), "2": ("two",), "3": ("three",), "4": ("four",), "5": ("five",),
    "center": ("middle",), "top left": ("upper left",), "top right": ("upper right",),
    "purple": ("violet",), "buzz": ("buzzing",), "tone": ("beep",), "chirp": ("sweep",),
    "yes": ("yeah",), "high": ("high pitched",), "low": ("low pitched",),
}

ANSWER_SPACE: dict[str, tuple[str, ...]] = {
    "color": COLORS,
    "shape": SHAPES,
    "where": tuple(position_name(r, c) for r in range(3) for c in range(3)),
    "count": ("1", "2", "3"),
    "exists": ("yes", "no"),
    "repeats": ("1", "2", "3", "4", "5"),
    "pitch": PITCHES,
    "kind": tuple(SOUND_OF_SHAPE.values()),
    "order": tuple(SOUND_OF_SHAPE.values()),
    "visible": ("yes", "no"),
}


@dataclass(frozen=True)
class Question:
    family: str
    qtype: str
    text: str
    answer: str


def _visual(scene: Scene, rng: np.random.Generator) -> list[Question]:
    objs = scene.objects
    shape_counts = Counter(o.shape for o in objs)
    color_counts = Counter(o.color for o in objs)
    qs = [Question("visual", "count", "how many objects are there?", str(len(objs)))]
    # Prefer the objects that need binding: their shape or color is shared with another object.
    ambiguous = [o for o in objs if shape_counts[o.shape] > 1 or color_counts[o.color] > 1]
    target = objs[int(rng.integers(len(objs)))] if not ambiguous else ambiguous[int(rng.integers(len(ambiguous)))]
    qs.append(Question("visual", "where", f"where is the {target.color} {target.shape}?", target.position))
    unique_shapes = [o for o in objs if shape_counts[o.shape] == 1]
    if unique_shapes:
        o = unique_shapes[int(rng.integers(len(unique_shapes)))]
        qs.append(Question("visual", "color", f"what color is the {o.shape}?", o.color))
    unique_colors = [o for o in objs if color_counts[o.color] == 1]
    if unique_colors:
        o = unique_colors[int(rng.integers(len(unique_colors)))]
        qs.append(Question("visual", "shape", f"what shape is the {o.color} object?", o.shape))
    present = {(o.shape, o.color) for o in objs}
    if rng.random() < 0.5:
        shape, color = sorted(present)[int(rng.integers(len(present)))]
        answer = "yes"
    else:
        # Hard negatives share the shape or the color with an object that is there.
        near = sorted({(o.shape, c) for o in objs for c in COLORS} | {(s, o.color) for o in objs for s in SHAPES})
        absent = [p for p in near if p not in present]
        shape, color = absent[int(rng.integers(len(absent)))]
        answer = "no"
    qs.append(Question("visual", "exists", f"is there a {color} {shape}?", answer))
    return qs


def _audio(scene: Scene, rng: np.random.Generator) -> list[Question]:
    if len(scene.events) == 2:
        first, second = scene.events
        options = [first.kind, second.kind]
        rng.shuffle(options)
        return [Question("audio", "order", f"which comes first, the {options[0]} or the {options[1]}?", first.kind)]
    (event,) = scene.events
    return [
        Question("audio", "repeats", "how many times does the sound repeat?", str(event.repeats)),
        Question("audio", "pitch", "is the sound high or low?", event.pitch),
        Question("audio", "kind", "what kind of sound is it?", event.kind),
    ]


def _audio_visual(scene: Scene) -> list[Question]:
    if len(scene.events) != 1:
        return []
    shape = scene.events[0].shape
    sources = [o for o in scene.objects if o.shape == shape]
    qs = [Question("audio_visual", "visible", "is the object making the sound visible?",
                   "yes" if sources else "no")]
    if len(sources) == 1:
        (src,) = sources
        qs.append(Question("audio_visual", "color", "what color is the object making the sound?", src.color))
        qs.append(Question("audio_visual", "where", "where is the object making the sound?", src.position))
    return qs


def scene_questions(scene: Scene, spec: WorldSpec) -> list[Question]:
    """Every question asked about a scene, in a fixed order."""
    rng = scene_rng(spec, scene.split, scene.index, stream=3)
    return _visual(scene, rng) + _audio(scene, rng) + _audio_visual(scene)


def annotate(question: Question, spec: WorldSpec, rng: np.random.Generator) -> tuple[str, ...]:
    """Ten annotator answers: mostly the canonical one, some synonyms, a few mistakes."""
    space = ANSWER_SPACE[question.qtype]
    answers = []
    for _ in range(NUM_ANNOTATORS):
        u = rng.random()
        if u < spec.annotator_error_rate:
            wrong = [a for a in space if a != question.answer]
            answers.append(wrong[int(rng.integers(len(wrong)))])
        elif u < spec.annotator_error_rate + spec.synonym_rate and question.answer in SYNONYMS:
            options = SYNONYMS[question.answer]
            answers.append(options[int(rng.integers(len(options)))])
        else:
            answers.append(question.answer)
    return tuple(answers)
