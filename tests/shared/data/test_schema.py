"""The sample schema and JSONL manifests: round trip, path resolution, error messages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shared.data.schema import ManifestError, Sample, check_manifest_file, majority_answer, read_manifest, write_manifest


def _sample(**over) -> Sample:
    base = dict(id="s1", question="What is playing?", answers=("cello", "a cello"), family="audio_visual",
                qtype="Existential", source="test", image=None, frames=("f/1.jpg", "f/2.jpg"),
                frame_times=(0.0, 1.0), audio="a/x.wav", audio_start=0.5, audio_end=4.0, meta={"k": [1, 2]})
    base.update(over)
    return Sample(**base)


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    samples = [_sample(), _sample(id="s2", family="visual", image="/abs/img.jpg", frames=(), frame_times=(),
                                  audio=None, audio_start=0.0, audio_end=None, meta={})]
    path = write_manifest(samples, tmp_path / "m.jsonl")
    back = read_manifest(path, resolve_paths=False)
    assert back == samples
    assert [s.meta for s in back] == [{"k": [1, 2]}, {}]
    assert not (tmp_path / "m.jsonl.tmp").exists()


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path: Path) -> None:
    path = write_manifest([_sample(image="img/a.jpg"), _sample(id="s2", audio="/data/b.wav")],
                          tmp_path / "sub" / "m.jsonl")
    first, second = read_manifest(path)
    root = tmp_path / "sub"
    assert first.image == str(root / "img/a.jpg")
    assert first.audio == str(root / "a/x.wav")
    assert first.frames == (str(root / "f/1.jpg"), str(root / "f/2.jpg"))
    assert second.audio == "/data/b.wav"


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text("\n" + json.dumps(_sample().to_json()) + "\n\n", encoding="utf-8")
    assert [s.id for s in read_manifest(path)] == ["s1"]


def _bad_manifest(tmp_path: Path, change: dict) -> Path:
    obj = {**_sample().to_json(), **change}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_sample(id="ok").to_json()) + "\n" + json.dumps(obj) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"answers": "cello"}, "field 'answers' is 'cello'"),
        ({"colour": "red"}, "unknown field(s) ['colour']"),
    ],
)
def test_bad_fields_name_file_and_line(tmp_path: Path, change: dict, message: str) -> None:
    path = _bad_manifest(tmp_path, change)
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    assert f"{path}:2: " in str(err.value) and message in str(err.value)


VALUE_ERRORS = [
    ({"family": "smell"}, "sample 's1': field 'family' is 'smell'"),
    ({"frame_times": [0.0]}, "sample 's1': 2 'frames' but 1 'frame_times'"),
    ({"audio_end": 0.5}, "sample 's1': audio window [0.5, 0.5] is empty"),
    ({"id": ""}, "field 'id' is empty"),
]


@pytest.mark.parametrize(("change", "message"), VALUE_ERRORS)
def test_bad_values_name_sample_and_field(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ManifestError, match=re.escape(message)):
        read_manifest(_bad_manifest(tmp_path, change))


@pytest.mark.parametrize(("change", "message"), [
    ({"audio_start": "abc"}, "field 'audio_start' is 'abc'; expected a finite number of seconds >= 0"),
    ({"audio_start": -1.0}, "field 'audio_start' is -1.0; expected a finite number of seconds >= 0"),
    ({"audio_start": True}, "field 'audio_start' is True"),
    ({"audio_end": "4"}, "field 'audio_end' is '4'; expected a finite number of seconds >= 0 or null"),
    ({"frame_times": ["0", 1.0]}, "field 'frame_times' is ['0', 1.0]; expected a list of int or float"),
    ({"frame_times": [float("nan"), 1.0]}, "field 'frame_times' holds nan; expected finite numbers of seconds"),
    ({"audio_end": float("inf")}, "field 'audio_end' is inf; expected a finite number of seconds >= 0 or null"),
    ({"frames": "f/1.jpg"}, "field 'frames' is 'f/1.jpg'; expected a list of str"),
    ({"id": 5}, "field 'id' is 5; expected str"),
    ({"image": 3}, "field 'image' is 3; expected str or null"),
    ({"meta": []}, "field 'meta' is []; expected dict"),
])
def test_wrong_types_name_file_line_field_and_expectation(tmp_path: Path, change: dict, message: str) -> None:
    path = _bad_manifest(tmp_path, change)
    with pytest.raises(ManifestError, match=re.escape(f"{path}:2: {message}")):
        read_manifest(path)


@pytest.mark.parametrize("line", ["5", "null", '["a"]', '"s1"'])
def test_a_line_that_is_not_an_object_is_named(tmp_path: Path, line: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_sample().to_json()) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=re.escape(f"{path}:2: line is {line}; expected a JSON object")):
        read_manifest(path)


def test_bad_values_name_file_and_line(tmp_path: Path) -> None:
    path = _bad_manifest(tmp_path, {"family": "smell"})
    with pytest.raises(ManifestError, match=re.escape(f"{path}:2")):
        read_manifest(path)


def test_missing_field_and_invalid_json_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    obj = _sample().to_json()
    del obj["qtype"]
    path.write_text(json.dumps(obj) + "\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"bad\.jsonl:1: missing field\(s\) \['qtype'\]"):
        read_manifest(path)
    path.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"bad\.jsonl:1: not valid JSON"):
        read_manifest(path)


def test_a_line_that_is_not_an_object_or_not_text_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps([_sample().to_json()]) + "\n", encoding="utf-8")  # a JSON array, not JSON lines
    with pytest.raises(ManifestError, match=r"bad\.jsonl:1: line is \[\{.*\}\]; expected a JSON object"):
        read_manifest(path)
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ManifestError, match=r"bad\.jsonl is not UTF-8 text"):
        read_manifest(path)


def test_check_manifest_file_reads_the_first_sample_only(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text("\n" + json.dumps(_sample().to_json()) + "\n{not json\n", encoding="utf-8")
    assert check_manifest_file(path) == path  # read_manifest names line 3
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"m\.jsonl is empty"):
        check_manifest_file(path)
    with pytest.raises(FileNotFoundError, match=f"manifest {tmp_path} is not a file"):
        check_manifest_file(tmp_path)


def test_missing_manifest_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_manifest(tmp_path / "nope.jsonl")


def test_every_sample_names_its_dataset() -> None:
    with pytest.raises(ManifestError, match=r"sample 's1': field 'source' is empty; expected the dataset's name"):
        _sample(source="")


@pytest.mark.parametrize(("media", "visual"), [
    (dict(image="i.png", frames=(), frame_times=()), True),  # an image
    ({}, True),  # the default sample's two frames
    (dict(frames=(), frame_times=()), False),  # audio only
])
def test_has_visual_is_image_or_frames(media: dict, visual: bool) -> None:
    assert _sample(**media).has_visual is visual


@pytest.mark.parametrize(("answers", "expected"), [
    (("2", "two", "2"), "2"), (("no", "yes", "yes", "no"), "no"), (("a",), "a"), (("x", "y", "y"), "y")])
def test_majority_answer_is_the_most_frequent_first_on_ties(answers: tuple[str, ...], expected: str) -> None:
    from stage_a.data import target_answer

    assert majority_answer(answers) == expected
    assert target_answer(_sample(answers=answers)) == expected  # the target Stage A trains on


def test_majority_answer_of_nothing_is_an_error() -> None:
    with pytest.raises(ManifestError, match="q7: no answers"):
        majority_answer([], "q7")
