"""MUSIC-AVQA loader on fixtures in the official JSON format (string-encoded lists, `anser`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.data.music_avqa import fill_placeholders, load_music_avqa
from shared.data.schema import ManifestError


def _record(qid: int, video: str, kind: list[str], question: str, values: list[str], answer: str) -> dict:
    return {"video_id": video, "question_id": qid, "type": json.dumps(kind), "question_content": question,
            "templ_values": json.dumps(values), "question_deleted": 0, "anser": answer}


RECORDS = [
    _record(7, "00000272", ["Audio-Visual", "Counting"], "How many <Object> are in the video?", ["cello"], "two"),
    _record(3, "00000272", ["Audio", "Comparative"], "Is the <Object> louder than the <Object>?",
            ["violin", "piano"], "no"),
    _record(5, "00001111", ["Visual", "Location"], "Where is the <FL> instrument?", ["first"], "left"),
]


def _file(tmp_path: Path, make_json, records: list | dict = RECORDS) -> Path:
    return make_json(tmp_path / "avqa-test.json", records)


def test_loads_records_in_order_with_filled_questions(tmp_path: Path, make_json) -> None:
    samples = load_music_avqa(_file(tmp_path, make_json), tmp_path / "audio")
    assert [s.id for s in samples] == ["music_avqa-7", "music_avqa-3", "music_avqa-5"]
    assert [s.question for s in samples] == [
        "How many cello are in the video?",
        "Is the violin louder than the piano?",
        "Where is the first instrument?",
    ]
    assert [(s.family, s.qtype) for s in samples] == [
        ("audio_visual", "Counting"), ("audio", "Comparative"), ("visual", "Location")]
    first = samples[0]
    assert first.answers == ("two",) and first.source == "music_avqa"
    assert first.audio == str(tmp_path / "audio" / "00000272.wav")
    assert (first.audio_start, first.audio_end) == (0.0, None)
    assert first.frames == () and first.image is None
    assert first.meta["template"] == "How many <Object> are in the video?"
    assert first.meta["type"] == ["Audio-Visual", "Counting"]


def test_frames_are_listed_with_times_index_minus_one(tmp_path: Path, make_json, make_image) -> None:
    for k in (1, 2, 3):
        make_image(tmp_path / "frames" / "00000272" / f"{k:06d}.jpg")
    make_image(tmp_path / "frames" / "00001111" / "000001.jpg")
    (tmp_path / "frames" / "00000272" / "notes.txt").write_text("not a frame")
    samples = load_music_avqa(_file(tmp_path, make_json), tmp_path, tmp_path / "frames")
    video = tmp_path / "frames" / "00000272"
    assert samples[0].frames == tuple(str(video / f"{k:06d}.jpg") for k in (1, 2, 3))
    assert samples[0].frame_times == (0.0, 1.0, 2.0)
    assert samples[1].frames == samples[0].frames
    assert samples[2].frame_times == (0.0,)


def test_num_frames_names_frames_without_listing(tmp_path: Path, make_json) -> None:
    samples = load_music_avqa(_file(tmp_path, make_json), tmp_path, tmp_path / "frames", num_frames=60)
    assert len(samples[0].frames) == 60 and samples[0].frame_times[-1] == 59.0
    assert samples[0].frames[-1] == str(tmp_path / "frames" / "00000272" / "000060.jpg")


def test_missing_frame_folder_is_named(tmp_path: Path, make_json) -> None:
    with pytest.raises(FileNotFoundError, match=r"frame folder .*00000272 does not exist"):
        load_music_avqa(_file(tmp_path, make_json), tmp_path, tmp_path / "frames")


def test_answer_spelling_and_list_fields_are_accepted(tmp_path: Path, make_json) -> None:
    record = {"video_id": "v1", "question_id": "q9", "type": ["Audio", "Counting"],
              "question_content": "Is there a voiceover?", "templ_values": "[]", "answer": "yes"}
    (sample,) = load_music_avqa(_file(tmp_path, make_json, [record]), tmp_path)
    assert (sample.id, sample.answers, sample.family) == ("music_avqa-q9", ("yes",), "audio")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"templ_values": '["cello", "piano"]'}, "field 'templ_values' has 2 value(s)"),
        ({"templ_values": "[cello"}, "field 'templ_values' is '[cello'; expected the text of a list"),
        ({"type": '["Smell", "Counting"]'}, "field 'type' is ['Smell', 'Counting']"),
        ({"type": '["Audio"]'}, "field 'type' is ['Audio']"),
        ({"anser": None}, "missing field 'anser'"),
        ({"video_id": 272}, "field 'video_id' is 272; expected str"),
    ],
)
def test_malformed_records_name_file_record_and_field(tmp_path: Path, make_json, edited, change, message) -> None:
    record = edited(RECORDS[0], change)
    path = _file(tmp_path, make_json, [RECORDS[1], record])
    with pytest.raises(ManifestError) as err:
        load_music_avqa(path, tmp_path)
    assert f"{path} question_id 7: " in str(err.value) and message in str(err.value)


def test_fill_placeholders_mixed_names() -> None:
    assert fill_placeholders("Is the <LL> <Object> on the <LR>?", ["left", "cello", "right"]) == \
        "Is the left cello on the right?"
    with pytest.raises(ManifestError, match="has 0 value"):
        fill_placeholders("Where is the <Object>?", [])


def test_wrong_top_level_and_missing_file(tmp_path: Path, make_json) -> None:
    with pytest.raises(ManifestError, match="top level is a JSON dict; expected a list"):
        load_music_avqa(_file(tmp_path, make_json, {"a": 1}), tmp_path)
    with pytest.raises(FileNotFoundError, match="avqa-val.json"):
        load_music_avqa(tmp_path / "avqa-val.json", tmp_path)


def test_frame_extension_option_lists_and_names_png_frames(tmp_path: Path, make_json, make_image) -> None:
    for k in (1, 2):
        make_image(tmp_path / "frames" / "00000272" / f"{k:06d}.png")
    make_image(tmp_path / "frames" / "00000272" / "000003.jpg")  # another extension: not a frame here
    make_image(tmp_path / "frames" / "00001111" / "000001.png")
    samples = load_music_avqa(_file(tmp_path, make_json), tmp_path, tmp_path / "frames", frame_ext="png")
    video = tmp_path / "frames" / "00000272"
    assert samples[0].frames == (str(video / "000001.png"), str(video / "000002.png"))
    named = load_music_avqa(_file(tmp_path, make_json), tmp_path, tmp_path / "frames", num_frames=1,
                            frame_ext="png")
    assert named[2].frames == (str(tmp_path / "frames" / "00001111" / "000001.png"),)
    with pytest.raises(FileNotFoundError, match=r"no frames named 000001\.jpg"):
        load_music_avqa(_file(tmp_path, make_json), tmp_path, tmp_path / "frames")
