"""World variants for the robustness study: the standard shifts keep every question and answer and stay
answerable, variant_split writes one split once, and bad overrides are refused naming them."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from shared.cli import InputError
from shared.world.generate import generate_split
from shared.world.scenes import sample_scene
from shared.world.sounds import synthesize
from shared.world.spec import BASE_HZ, WorldSpec
from shared.world.variants import SHIFTS, shift_overrides, variant_split

MICRO = WorldSpec(size="micro")


@pytest.fixture(scope="module")
def base_test_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The micro world's test split, unshifted."""
    folder = tmp_path_factory.mktemp("base")
    generate_split(MICRO, "test", folder)
    return folder


@pytest.mark.parametrize("shift", [s for s in SHIFTS if s != "seed"])
def test_a_rendering_shift_changes_every_clip_and_nothing_else(shift: str, base_test_split: Path,
                                                               tmp_path: Path) -> None:
    manifest = variant_split(MICRO, SHIFTS[shift], "test", tmp_path)
    folder = manifest.parent
    for name in ("test.jsonl", "test.scenes.jsonl"):
        assert (folder / name).read_text() == (base_test_split / name).read_text(), name
    images = sorted((base_test_split / "images" / "test").iterdir())
    assert len(images) == MICRO.splits["test"]
    assert all(p.read_bytes() == (folder / "images" / "test" / p.name).read_bytes() for p in images)
    clips = sorted((base_test_split / "audio" / "test").iterdir())
    assert all(p.read_bytes() != (folder / "audio" / "test" / p.name).read_bytes() for p in clips)


def test_the_seed_shift_is_another_world_next_to_the_base_seed(base_test_split: Path, tmp_path: Path) -> None:
    assert shift_overrides(WorldSpec(seed=3), "seed") == {"seed": 4}
    assert shift_overrides(MICRO, "pitch") == SHIFTS["pitch"]
    manifest = variant_split(MICRO, shift_overrides(MICRO, "seed"), "test", tmp_path)
    assert manifest.read_text() != (base_test_split / "test.jsonl").read_text()
    with pytest.raises(InputError, match="shift 'echo' is unknown; expected one of \\['seed', 'reverb'"):
        shift_overrides(MICRO, "echo")


def _onsets(wave: np.ndarray, sample_rate: int) -> int:
    """Pulse onsets: 10 ms frames whose energy rose by more than 10 dB over 20 ms, at least 60 ms apart."""
    hop = sample_rate // 100
    energy = np.array([np.mean(wave[i:i + hop] ** 2) for i in range(0, len(wave) - hop, hop)])
    level = 10 * np.log10(energy + 1e-12)
    count, last = 0, -100
    for frame in np.flatnonzero(level[2:] - level[:-2] > 10):
        count += frame - last > 5
        last = frame
    return count


@pytest.mark.parametrize("shift", ["none", *SHIFTS])
def test_pulses_stay_countable_under_every_standard_shift(shift: str) -> None:
    base = WorldSpec(snr_db=(40.0, 40.0))
    spec = base if shift == "none" else dataclasses.replace(base, **shift_overrides(base, shift))
    scenes = [sample_scene(spec, "train", i) for i in range(100)]
    right = sum(_onsets(synthesize(spec, s), spec.sample_rate) == sum(e.repeats for e in s.events) for s in scenes)
    assert right >= (100 if shift in ("none", "seed", "pitch", "tempo", "timbre") else 95)


def test_the_pitch_shift_keeps_low_below_high() -> None:
    middle = math.sqrt(BASE_HZ["low"][1] * BASE_HZ["high"][0])
    factor = SHIFTS["pitch"]["pitch_factor"]
    assert BASE_HZ["low"][1] * factor < middle < BASE_HZ["high"][0] * factor


def test_variant_split_writes_that_split_once_and_reuses_it(tmp_path: Path) -> None:
    overrides = {"reverb_seconds": 0.3}
    manifest = variant_split(MICRO, overrides, "val", tmp_path)
    folder = tmp_path / dataclasses.replace(MICRO, **overrides).data_hash()[:12]
    assert manifest == folder / "val" / "val.jsonl"
    assert sorted(p.name for p in manifest.parent.iterdir()) == [
        "audio", "images", "val.jsonl", "val.scenes.jsonl", "variant.json"]
    assert [p.name for p in (manifest.parent / "audio").iterdir()] == ["val"]
    assert len(list((manifest.parent / "audio" / "val").iterdir())) == MICRO.splits["val"]
    record = json.loads((manifest.parent / "variant.json").read_text())
    assert record["overrides"] == overrides and record["spec"]["reverb_seconds"] == 0.3 and record["split"] == "val"
    before = {p: p.stat().st_mtime_ns for p in manifest.parent.rglob("*")}
    assert variant_split(MICRO, overrides, "val", tmp_path) == manifest
    assert {p: p.stat().st_mtime_ns for p in manifest.parent.rglob("*")} == before
    assert variant_split(MICRO, overrides, "test", tmp_path) == folder / "test" / "test.jsonl"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["test", "val"]


@pytest.mark.parametrize("overrides, split, message", [
    ({"reverb": 0.3}, "test", "variant override 'reverb' is not a world spec field; expected one of ['seed'"),
    ({"tempo_factor": 2.0}, "test", "world.tempo_factor is 2.0; expected <= 1.316"),
    ({"timbre": "metal"}, "test", "world.timbre is 'metal'; expected one of ['default', 'unseen']"),
    ({}, "dev", "split 'dev' is unknown; expected one of ['train', 'val', 'test']"),
])
def test_bad_overrides_are_refused_before_anything_is_written(overrides: dict, split: str, message: str,
                                                              tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        variant_split(MICRO, overrides, split, tmp_path)
    assert message in str(err.value)
    assert not any(tmp_path.iterdir())
