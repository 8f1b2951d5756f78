"""VQAv2 loader on fixtures in the official questions/annotations format."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.data.schema import ManifestError
from shared.data.vqav2 import load_vqav2

QUESTIONS = "v2_OpenEnded_mscoco_val2014_questions.json"
ANNOTATIONS = "v2_mscoco_val2014_annotations.json"


def _annotation(qid: int, image_id: int, answers: list[str], answer_type: str, question_type: str) -> dict:
    return {
        "question_id": qid,
        "image_id": image_id,
        "question_type": question_type,
        "answer_type": answer_type,
        "multiple_choice_answer": answers[0],
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
    }


def _files(tmp_path: Path, make_json, questions: list[dict] | None = None, annotations: list[dict] | None = None,
           subtype: str | None = "val2014", q_name: str = QUESTIONS) -> tuple[Path, Path]:
    if questions is None:
        questions = [
            {"image_id": 262148, "question": "Where is he looking?", "question_id": 262148000},
            {"image_id": 42, "question": "Is it raining?", "question_id": 42001},
        ]
    if annotations is None:
        annotations = [
            _annotation(42001, 42, ["no"] * 9 + ["yes"], "yes/no", "is it"),
            _annotation(262148000, 262148, [f"down{i}" for i in range(10)], "other", "where is the"),
        ]
    qdoc = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "questions": questions}
    if subtype:
        qdoc["data_subtype"] = subtype
    return (make_json(tmp_path / q_name, qdoc),
            make_json(tmp_path / ANNOTATIONS, {"info": {}, "annotations": annotations}))


def test_loads_questions_in_order_with_all_answers(tmp_path: Path, make_json) -> None:
    q, a = _files(tmp_path, make_json)
    samples = load_vqav2(q, a, tmp_path / "val2014")
    assert [s.id for s in samples] == ["vqav2-262148000", "vqav2-42001"]
    first, second = samples
    assert first.question == "Where is he looking?"
    assert first.answers == tuple(f"down{i}" for i in range(10))
    assert (first.family, first.qtype, first.source) == ("visual", "other", "vqav2")
    assert first.image == str(tmp_path / "val2014" / "COCO_val2014_000000262148.jpg")
    assert first.meta["question_type"] == "where is the"
    assert first.meta["multiple_choice_answer"] == "down0"
    assert second.answers[-1] == "yes" and second.qtype == "yes/no"
    assert first.audio is None and first.frames == ()


def test_split_comes_from_argument_subtype_or_file_name(tmp_path: Path, make_json) -> None:
    q, a = _files(tmp_path, make_json, subtype=None)
    assert load_vqav2(q, a, tmp_path)[0].image.endswith("COCO_val2014_000000262148.jpg")
    assert load_vqav2(q, a, tmp_path, split="train2014")[0].image.endswith("COCO_train2014_000000262148.jpg")
    q2, a2 = _files(tmp_path, make_json, subtype=None, q_name="questions.json")
    with pytest.raises(ManifestError, match="no 'data_subtype' field"):
        load_vqav2(q2, a2, tmp_path)


def test_missing_files_are_named(tmp_path: Path, make_json) -> None:
    q, a = _files(tmp_path, make_json)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_vqav2(tmp_path / "nope.json", a, tmp_path)
    with pytest.raises(FileNotFoundError, match="VQAv2 annotations file .*missing.json"):
        load_vqav2(q, tmp_path / "missing.json", tmp_path)


@pytest.mark.parametrize(
    ("which", "field", "value", "message"),
    [
        ("question", "question", None, "question_id 42001: missing field 'question'"),
        ("question", "image_id", "42", "question_id 42001: field 'image_id' is '42'; expected int"),
        ("question", "image_id", 43, "field 'image_id' is 43 but its annotation"),
        ("annotation", "answer_type", None, "annotation for question_id 42001: missing field 'answer_type'"),
        ("annotation", "answers", [], "annotation for question_id 42001: field 'answers' is empty"),
        ("annotation", "answers", [{"answer_confidence": "yes"}], "answers[0]: missing field 'answer'"),
    ],
)
def test_malformed_records_name_file_record_and_field(tmp_path: Path, make_json, edited, which, field, value,
                                                       message) -> None:
    question = {"image_id": 42, "question": "Is it raining?", "question_id": 42001}
    annotation = _annotation(42001, 42, ["no"] * 10, "yes/no", "is it")
    if which == "question":
        question = edited(question, {field: value})
    else:
        annotation = edited(annotation, {field: value})
    q, a = _files(tmp_path, make_json, [question], [annotation])
    with pytest.raises(ManifestError) as err:
        load_vqav2(q, a, tmp_path)
    assert message in str(err.value)
    assert (q.name if which == "question" else a.name) in str(err.value)


def test_question_without_annotation_is_an_error(tmp_path: Path, make_json) -> None:
    q, a = _files(tmp_path, make_json, annotations=[_annotation(42001, 42, ["no"] * 10, "yes/no", "is it")])
    with pytest.raises(ManifestError, match="no annotation for question_id 262148000"):
        load_vqav2(q, a, tmp_path)


def test_not_json_is_named(tmp_path: Path, make_json) -> None:
    q, a = _files(tmp_path, make_json)
    q.write_text('{"questions": [', encoding="utf-8")
    with pytest.raises(ManifestError, match=rf"{q.name}: not valid JSON"):
        load_vqav2(q, a, tmp_path)


def test_image_extension_option_names_lossless_images(tmp_path: Path, make_json) -> None:
    q, a = _files(tmp_path, make_json)
    samples = load_vqav2(q, a, tmp_path / "img", image_ext="png")
    assert samples[0].image == str(tmp_path / "img" / "COCO_val2014_000000262148.png")
    with pytest.raises(ValueError, match=r"image_ext is 'p/ng'; expected a file extension"):
        load_vqav2(q, a, tmp_path / "img", image_ext="p/ng")
