"""`safe-world export` on the micro world, read back by the real converters: same data, nothing lost."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path
from typing import Callable, Iterable

import pytest

from shared.data.cli import main as data_main
from shared.data.clotho_aqa import question_type
from shared.data.schema import Sample, majority_answer, read_manifest
from shared.world.cli import main as world_main
from shared.world.export import FORMATS, GQA_SEMANTIC, SUMMARY
from shared.world.generate import read_scenes
from shared.world.spec import SPLITS

FAMILY_OF_MODALITY = {"Visual": "visual", "Audio": "audio", "Audio-Visual": "audio_visual"}


@pytest.fixture(scope="module")
def exported(micro_world: Path, converted_world: dict) -> dict:
    """The micro world exported, each format and split converted and checked through `safe-data` (conftest)."""
    world = {split: {s.id: s for s in read_manifest(micro_world / "data" / f"{split}.jsonl")} for split in SPLITS}
    scenes = {split: {r["key"]: r for r in read_scenes(micro_world / "data", split)} for split in SPLITS}
    return {"summary": converted_world["summary"], "converted": converted_world["converted"], "world": world,
            "scenes": scenes, "ids": converted_world["ids"], "out": converted_world["official"]}


def _by_question_id(record: dict) -> str:
    return str(record["question_id"])


def _pairs(exported: dict, name: str, split: str, record_key: Callable[[dict], object] = _by_question_id,
           sample_key: Callable[[Sample], object] = lambda s: str(s.meta["question_id"])
           ) -> list[tuple[Sample, Sample]]:
    """(converted, native world) sample pairs, matched through world_ids.json by the official key."""
    world_id = {record_key(r): r["world_id"] for r in exported["ids"][name][split]}
    pairs = [(s, exported["world"][split][world_id[sample_key(s)]]) for s in exported["converted"][name, split]]
    assert len({w.id for _, w in pairs}) == len(pairs)
    return pairs


def test_no_world_question_is_lost_without_being_counted(exported: dict) -> None:
    summary = exported["summary"]
    assert json.loads((exported["out"] / SUMMARY).read_text()) == summary
    for split in SPLITS:
        world = exported["world"][split]
        assert summary["world"][split]["questions"] == len(world)
        for name in FORMATS:
            part = summary["formats"][name]["splits"][split]
            assert part["questions"] + sum(part["not_exported"].values()) == len(world), (name, split)
            samples = exported["converted"][name, split]
            assert len(samples) == part["questions"] + part["captions"], (name, split)
        parts = {name: summary["formats"][name]["splits"][split] for name in FORMATS}
        assert set(parts["vqav2"]["not_exported"]) == _types_outside(world.values(), "visual")
        assert set(parts["clotho_aqa"]["not_exported"]) == _types_outside(world.values(), "audio")
        assert parts["music_avqa"]["not_exported"] == {}
        assert parts["audiocaps"]["captions"] == len(exported["scenes"][split])


def _types_outside(samples: Iterable[Sample], family: str) -> set[str]:
    """The family.type keys of the questions not in `family`."""
    return {f"{s.family}.{s.qtype}" for s in samples if s.family != family}


def test_vqav2_round_trip_keeps_questions_all_answers_and_images(exported: dict) -> None:
    for split in SPLITS:
        pairs = _pairs(exported, "vqav2", split)
        assert {w.id for _, w in pairs} == {w.id for w in exported["world"][split].values() if w.family == "visual"}
        for got, native in pairs:
            assert (got.question, got.answers, got.family) == (native.question, native.answers, "visual")
            assert got.meta["question_type"] == native.qtype
            assert got.meta["multiple_choice_answer"] == majority_answer(native.answers)
            answer = got.meta["multiple_choice_answer"]
            assert got.qtype == ("yes/no" if answer in ("yes", "no") else "number" if answer.isdigit() else "other")
            assert got.source == "vqav2" and got.audio is None
            assert filecmp.cmp(got.image, native.image, shallow=False)


def test_gqa_round_trip_keeps_the_majority_answer_and_types(exported: dict) -> None:
    for split in SPLITS:
        pairs = _pairs(exported, "gqa", split)
        assert len(pairs) == sum(w.family == "visual" for w in exported["world"][split].values())
        for got, native in pairs:
            assert (got.question, got.answers, got.family) == (native.question, (majority_answer(native.answers),),
                                                             "visual")
            assert (got.meta["detailed"], got.meta["semantic"]) == (native.qtype, GQA_SEMANTIC[native.qtype])
            assert got.qtype == ("verify" if got.answers[0] in ("yes", "no") else "query")
            assert filecmp.cmp(got.image, native.image, shallow=False)


def test_audiocaps_round_trip_is_one_caption_per_scene_clip(exported: dict) -> None:
    for split in SPLITS:
        scene_of = {r["youtube_id"]: r["world_id"] for r in exported["ids"]["audiocaps"][split]}
        samples = exported["converted"]["audiocaps", split]
        assert sorted(scene_of[s.meta["youtube_id"]] for s in samples) == sorted(exported["scenes"][split])
        for got in samples:
            scene = exported["scenes"][split][scene_of[got.meta["youtube_id"]]]
            assert (got.answers, got.family, got.source) == ((scene["caption"],), "caption", "audiocaps")
            assert (got.audio_start, got.audio_end) == (0.0, exported["summary"]["world"][split]["clip_seconds"])
            assert filecmp.cmp(got.audio, scene["audio"], shallow=False)


def test_clotho_aqa_round_trip_keeps_audio_questions_and_all_answers(exported: dict) -> None:
    for split in SPLITS:
        pairs = _pairs(exported, "clotho_aqa", split, lambda r: (r["file_name"], r["question"]),
                       lambda s: (s.meta["file_name"], s.question))
        assert {w.id for _, w in pairs} == {w.id for w in exported["world"][split].values() if w.family == "audio"}
        for got, native in pairs:
            assert (got.question, got.answers, got.family) == (native.question, native.answers, "audio")
            assert got.qtype == question_type(native.answers) and got.image is None and not got.frames
            assert filecmp.cmp(got.audio, native.audio, shallow=False)


def test_music_avqa_round_trip_keeps_every_family_with_1fps_frames(exported: dict) -> None:
    for split in SPLITS:
        pairs = _pairs(exported, "music_avqa", split)
        assert {w.id for _, w in pairs} == set(exported["world"][split])
        seconds = exported["summary"]["world"][split]["clip_seconds"]
        for got, native in pairs:
            assert (got.question, got.answers) == (native.question, (majority_answer(native.answers),))
            assert (got.family, got.qtype) == (native.family, native.qtype)
            assert FAMILY_OF_MODALITY[got.meta["type"][0]] == native.family
            assert got.frame_times == tuple(float(t) for t in range(int(seconds)))
            assert all(filecmp.cmp(frame, native.image, shallow=False) for frame in got.frames)
            assert filecmp.cmp(got.audio, native.audio, shallow=False)


def test_merged_manifest_of_exports_keeps_every_sample(exported: dict, tmp_path: Path, capsys) -> None:
    """VQAv2 for retention + Clotho-AQA for audio: ids never collide across formats and splits."""
    manifests = exported["out"].parent / "manifests"  # where conftest's converted_world wrote them
    inputs = [str(manifests / f"{name}_{split}.jsonl") for name in ("vqav2", "clotho_aqa") for split in SPLITS]
    out = tmp_path / "mixed.jsonl"
    assert data_main(["merge", *inputs, "--shuffle", "--seed", "1", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    merged = read_manifest(out)
    expected = sum(len(exported["converted"][name, split]) for name in ("vqav2", "clotho_aqa") for split in SPLITS)
    assert len(merged) == expected and {s.source for s in merged} == {"vqav2", "clotho_aqa"}
    assert data_main(["check", str(out)]) == 0


def test_cli_export_prints_counts_and_refuses_a_non_empty_folder(micro_world: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "official"
    assert world_main(["export", "--dir", str(micro_world), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "music_avqa" in printed and "not exported" in printed and "audio_visual" in printed
    assert world_main(["export", "--dir", str(micro_world), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "--force" in err
    (out / "vqav2" / "stale.json").write_text("{}")
    assert world_main(["export", "--dir", str(micro_world), "--out", str(out), "--force", "--link", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(out)
    assert not (out / "vqav2" / "stale.json").exists()
    clip = next((out / "clotho_aqa" / "audio_files").iterdir())
    assert clip.stat().st_nlink > 1  # hard-linked, not copied


def test_cli_export_of_a_missing_world_exits_2(tmp_path: Path, capsys) -> None:
    assert world_main(["export", "--dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no world data" in err and "safe-world build" in err
