"""The embedded world's data: determinism, families, answers, audio that matches its description."""

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from shared.data.audio_io import load_audio
from shared.data.schema import read_manifest
from shared.world.generate import generate_split, read_scenes
from shared.world.questions import scene_questions
from shared.world.scenes import render_image, sample_scene
from shared.world.sounds import GAP_SECONDS, PULSE_SECONDS, synthesize
from shared.world.spec import SHAPE_OF_SOUND, SPLITS, WorldSpec

MICRO = WorldSpec(size="micro")


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    for run in ("a", "b"):
        generate_split(MICRO, "val", tmp_path / run)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_other_seed_gives_other_world() -> None:
    other = WorldSpec(size="micro", seed=1)
    scenes = [sample_scene(MICRO, "train", i) for i in range(8)]
    assert scenes != [sample_scene(other, "train", i) for i in range(8)]


def test_scene_does_not_depend_on_split_size() -> None:
    # Scene i is the same in a micro and a default world, so sizes nest.
    assert sample_scene(MICRO, "test", 5) == sample_scene(WorldSpec(), "test", 5)
    assert np.array_equal(render_image(MICRO, sample_scene(MICRO, "test", 5)),
                          render_image(WorldSpec(), sample_scene(WorldSpec(), "test", 5)))


def test_splits_are_disjoint_and_tagged(tmp_path: Path) -> None:
    ids = {}
    for split in SPLITS:
        generate_split(MICRO, split, tmp_path)
        samples = read_manifest(tmp_path / f"{split}.jsonl")
        ids[split] = {s.id for s in samples}
        assert len(ids[split]) == len(samples)
        assert {s.family for s in samples} <= {"visual", "audio", "audio_visual"}
        assert all(len(s.answers) == 10 and s.qtype and Path(s.image).is_file() and Path(s.audio).is_file()
                   for s in samples)
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])


def test_all_families_and_types_occur() -> None:
    types = Counter()
    for i in range(200):
        scene = sample_scene(WorldSpec(), "train", i)
        types.update((q.family, q.qtype) for q in scene_questions(scene, WorldSpec()))
    expected = {("visual", t) for t in ("count", "where", "color", "shape", "exists")}
    expected |= {("audio", t) for t in ("repeats", "pitch", "kind", "order")}
    expected |= {("audio_visual", t) for t in ("visible", "color", "where")}
    assert expected == set(types)


def test_questions_have_unique_answers() -> None:
    for i in range(300):
        scene = sample_scene(WorldSpec(), "train", i)
        for q in scene_questions(scene, WorldSpec()):
            if q.qtype == "color" and q.family == "visual":
                shape = q.text.split()[-1].rstrip("?")
                assert sum(o.shape == shape for o in scene.objects) == 1
            if q.family == "audio_visual" and q.qtype != "visible":
                assert sum(o.shape == SHAPE_OF_SOUND[scene.events[0].kind] for o in scene.objects) == 1


def test_offscreen_sounds_occur_and_answer_no() -> None:
    answers = Counter()
    for i in range(200):
        scene = sample_scene(WorldSpec(), "train", i)
        for q in scene_questions(scene, WorldSpec()):
            if q.qtype == "visible":
                answers[q.answer] += 1
    assert answers["no"] > 10 and answers["yes"] > answers["no"]


def test_annotators_disagree_sometimes_with_synonyms(tmp_path: Path) -> None:
    generate_split(WorldSpec(size="micro", splits={"train": 60, "val": 1, "test": 1}), "train", tmp_path)
    samples = read_manifest(tmp_path / "train.jsonl")
    disagree = [s for s in samples if len(set(s.answers)) > 1]
    assert 0.1 < len(disagree) / len(samples) < 0.8
    assert any(a in {"two", "three", "one", "four", "five", "middle", "violet", "yeah"} for s in samples for a in s.answers)
    assert all(Counter(s.answers).most_common(1)[0][0] == s.meta["answer"] for s in samples)


@pytest.mark.parametrize("index", range(6))
def test_pulse_count_is_audible(index: int) -> None:
    # Count pulses from the clean signal's energy envelope; high-SNR scenes only.
    spec = WorldSpec(snr_db=(40.0, 40.0))
    scene = sample_scene(spec, "train", index)
    wave = synthesize(spec, scene)
    assert wave.shape == (int(spec.clip_seconds * spec.sample_rate),) and wave.dtype == np.float32
    hop = int(0.01 * spec.sample_rate)
    energy = np.array([np.mean(wave[i:i + hop] ** 2) for i in range(0, len(wave) - hop, hop)])
    on = energy > 0.25 * energy.max()
    onsets = int(np.sum(on[1:] & ~on[:-1]) + on[0])
    assert onsets == sum(e.repeats for e in scene.events)
    assert PULSE_SECONDS + GAP_SECONDS < 0.3


def test_scene_records_point_to_readable_clips(tmp_path: Path) -> None:
    generate_split(MICRO, "test", tmp_path)
    records = read_scenes(tmp_path, "test")
    assert len(records) == MICRO.splits["test"]
    wave = load_audio(records[0]["audio"], MICRO.sample_rate)
    assert len(wave) == int(MICRO.clip_seconds * MICRO.sample_rate)
    assert records[0]["caption"]
