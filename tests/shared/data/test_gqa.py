"""GQA loader on a fixture in the official question-file format."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.data.gqa import load_gqa
from shared.data.schema import ManifestError


def _record(image_id: str, question: str, answer: str, structural: str) -> dict:
    return {
        "semantic": [], "entailed": [], "equivalent": [], "isBalanced": True, "annotations": {},
        "imageId": image_id, "question": question, "answer": answer, "fullAnswer": f"It is {answer}.",
        "types": {"structural": structural, "semantic": "attr", "detailed": "colorObj"},
        "groups": {"global": None, "local": "10c-color"},
    }


def _file(tmp_path: Path, make_json, records: dict | list | None = None) -> Path:
    if records is None:
        records = {
            "20968078": _record("n161313", "What color is the car?", "red", "query"),
            "201307251": _record("n1234", "Is the sky blue?", "yes", "verify"),
        }
    return make_json(tmp_path / "testdev_balanced_questions.json", records)


def test_loads_questions_in_file_order(tmp_path: Path, make_json) -> None:
    samples = load_gqa(_file(tmp_path, make_json), tmp_path / "images")
    assert [s.id for s in samples] == ["gqa-20968078", "gqa-201307251"]
    car = samples[0]
    assert car.question == "What color is the car?"
    assert car.answers == ("red",)
    assert (car.family, car.qtype, car.source) == ("visual", "query", "gqa")
    assert car.image == str(tmp_path / "images" / "n161313.jpg")
    assert car.meta == {"question_id": "20968078", "image_id": "n161313", "semantic": "attr",
                        "detailed": "colorObj", "full_answer": "It is red."}
    assert samples[1].qtype == "verify"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"answer": None}, "question 20968078: missing field 'answer'"),
        ({"imageId": ""}, "question 20968078: field 'imageId' is empty"),
        ({"types": {"semantic": "attr", "detailed": "x"}},
         "question 20968078, field 'types': missing field 'structural'"),
        ({"types": "query"}, "field 'types' is 'query'; expected dict"),
    ],
)
def test_malformed_records_name_file_record_and_field(tmp_path: Path, make_json, edited, change, message) -> None:
    record = edited(_record("n1", "Q?", "a", "query"), change)
    path = _file(tmp_path, make_json, {"20968078": record})
    with pytest.raises(ManifestError) as err:
        load_gqa(path, tmp_path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_wrong_top_level_and_missing_file(tmp_path: Path, make_json) -> None:
    with pytest.raises(ManifestError, match="top level is a JSON list"):
        load_gqa(_file(tmp_path, make_json, [_record("n1", "Q?", "a", "query")]), tmp_path)
    with pytest.raises(FileNotFoundError, match="GQA questions file .*absent.json"):
        load_gqa(tmp_path / "absent.json", tmp_path)


def test_image_extension_option(tmp_path: Path, make_json) -> None:
    samples = load_gqa(_file(tmp_path, make_json), tmp_path / "images", image_ext=".png")
    assert samples[0].image == str(tmp_path / "images" / "n161313.png")
