"""Domain-shifted variants of the embedded world: one split's data rendered with other spec values, no models.

The robustness study evaluates the base world's models on a variant the models never saw. `SHIFTS` names the
standard ones; every shift but `seed` keeps each scene, image, question and answer and changes only its sound:

- seed:   another seed (the base spec's seed + 1): new scenes from the same distribution.
- reverb: RT60 0.3 s, a small furnished room, its reverberant energy equal to the direct sound's. The tail of a
          pulse fills the next 0.12 s gap but decays by 24 dB (60 dB x 0.12 / 0.3) across it. An onset counter
          (tests/shared/world/test_variants.py) finds every pulse in 567 of the 600 test scenes at 40 dB SNR
          (dry: 600; RT60 0.2 s: 579, 0.5 s: 526, 1 s: 231): longer rooms start to hide the count.
- pitch:  x1.41, half an octave up. Low pulses end at 592 Hz, below the geometric middle (615 Hz) of the
          default low (260-420 Hz) and high (900-1400 Hz) ranges, so "high or low" keeps its answer even for a
          listener who kept the default world's boundary; the highest chirp ends at 3.9 kHz, below Nyquist.
- tempo:  x0.75, faster. Five pulses then last 0.81 s, less than four default pulses (0.84 s): an encoder that
          counts by an event's length is fooled, one that counts pulses is not; pulses stay 90 ms, gaps 90 ms.
- timbre: "unseen" waveforms (triangle tone, sawtooth buzz, FM chirp) that keep each kind's defining trait.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from shared.checkpoint import atomic_directory, atomic_write_text
from shared.cli import InputError
from shared.locks import folder_lock
from shared.world.generate import generate_split
from shared.world.spec import SPLITS, WorldSpec

log = logging.getLogger(__name__)
SEED_STEP = 1
RECORD = "variant.json"
SHIFTS: dict[str, dict] = {
    "seed": {"seed": WorldSpec.seed + SEED_STEP},
    "reverb": {"reverb_seconds": 0.3},
    "pitch": {"pitch_factor": 1.41},
    "tempo": {"tempo_factor": 0.75},
    "timbre": {"timbre": "unseen"},
}


def shift_overrides(spec: WorldSpec, shift: str) -> dict:
    """The spec overrides of a standard shift for the base world `spec` (the seed shift is relative to its seed)."""
    if shift not in SHIFTS:
        raise InputError(f"shift {shift!r} is unknown; expected one of {list(SHIFTS)}")
    return {"seed": spec.seed + SEED_STEP} if shift == "seed" else dict(SHIFTS[shift])


def variant_spec(spec: WorldSpec, overrides: dict) -> WorldSpec:
    """`spec` with `overrides` applied (validated like any spec); a new size brings its own split sizes."""
    valid = [f.name for f in dataclasses.fields(WorldSpec)]
    for key in overrides:
        if key not in valid:
            raise InputError(f"variant override {key!r} is not a world spec field; expected one of {valid}")
    if "size" in overrides and "splits" not in overrides:
        overrides = {**overrides, "splits": {}}
    return dataclasses.replace(spec, **overrides)


def variant_split(spec: WorldSpec, overrides: dict, split: str, root: Path) -> Path:
    """Write one split of the variant `spec` + `overrides` (images, clips, manifest, scenes, and variant.json) into
    root/<data_hash[:12]>/<split>/ atomically, or reuse it if already there; returns the split's manifest path."""
    if split not in SPLITS:
        raise InputError(f"split {split!r} is unknown; expected one of {list(SPLITS)}")
    variant = variant_spec(spec, overrides)
    data_hash = variant.data_hash()
    folder = Path(root) / data_hash[:12]
    manifest = folder / split / f"{split}.jsonl"
    with folder_lock(folder, "a world variant", wait=True):
        if manifest.is_file():
            log.info("world variant %s %s: reusing %s", data_hash[:12], split, manifest.parent)
            return manifest
        start = time.perf_counter()
        with atomic_directory(folder / split) as tmp:
            questions = generate_split(variant, split, tmp)
            record = {"base": dataclasses.asdict(spec), "overrides": overrides, "spec": dataclasses.asdict(variant),
                      "data_hash": data_hash, "split": split, "questions": questions,
                      "seconds": round(time.perf_counter() - start, 1)}
            atomic_write_text(tmp / RECORD, json.dumps(record, indent=2, sort_keys=True))
    log.info("world variant %s %s: %d questions in %.1f s at %s", data_hash[:12], split, questions,
             time.perf_counter() - start, manifest.parent)
    return manifest
