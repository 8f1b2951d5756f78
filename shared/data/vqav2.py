"""VQAv2 from its official files: a questions JSON, an annotations JSON and a COCO image folder.

Questions: `{"data_subtype": "val2014", "questions": [{"image_id", "question", "question_id"}]}`.
Annotations: `{"annotations": [{"question_id", "image_id", "question_type", "answer_type",
"multiple_choice_answer", "answers": [{"answer", "answer_confidence", "answer_id"}] * 10}]}`.
Images are `COCO_{split}_{image_id:012d}.jpg`; another extension can be given (`image_ext`),
e.g. "png" for lossless copies such as `safe-world export` writes.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from shared.data._io import file_suffix, get_field, get_text, load_json, make_sample
from shared.data.schema import ManifestError, Sample

log = logging.getLogger(__name__)

SOURCE = "vqav2"
# The test-dev questions live in the test2015 image set.
_IMAGE_SPLIT = {"test-dev2015": "test2015"}
_SPLIT_IN_NAME = re.compile(r"(train2014|val2014|test-dev2015|test2015)")


@dataclass(frozen=True)
class _Annotation:
    image_id: int
    question_type: str
    answer_type: str
    multiple_choice_answer: str
    answers: tuple[str, ...]
    confidences: tuple[str, ...]


def image_name(split: str, image_id: int, image_ext: str = "jpg") -> str:
    """COCO file name of an image, e.g. `COCO_val2014_000000262148.jpg`."""
    return f"COCO_{split}_{image_id:012d}{file_suffix(image_ext)}"


def load_vqav2(
    questions_path: str | os.PathLike,
    annotations_path: str | os.PathLike,
    image_dir: str | os.PathLike,
    split: str | None = None,
    image_ext: str = "jpg",
) -> list[Sample]:
    """One visual Sample per question, with all 10 human answers in their official order.

    `split` (e.g. "val2014") names the COCO image set; by default it is the questions file's
    `data_subtype`, or failing that the split named in the file name. `image_ext` is the image
    files' extension (official: jpg).
    """
    file_suffix(image_ext)
    questions_path, annotations_path = Path(questions_path), Path(annotations_path)
    qdoc = load_json(questions_path, "VQAv2 questions file")
    adoc = load_json(annotations_path, "VQAv2 annotations file")
    questions = get_field(qdoc, "questions", list, str(questions_path))
    records = get_field(adoc, "annotations", list, str(annotations_path))
    annotations = _index_annotations(records, annotations_path)
    split = split or _split_of(qdoc, questions_path)
    split = _IMAGE_SPLIT.get(split, split)

    samples, used = [], set()
    for index, record in enumerate(questions):
        qid = get_field(record, "question_id", int, f"{questions_path} question #{index}")
        where = f"{questions_path} question_id {qid}"
        image_id = get_field(record, "image_id", int, where)
        ann = annotations.get(qid)
        if ann is None:
            raise ManifestError(
                f"{annotations_path}: no annotation for question_id {qid} of {questions_path}; "
                "expected one annotation per question"
            )
        if ann.image_id != image_id:
            raise ManifestError(
                f"{where}: field 'image_id' is {image_id} but its annotation in {annotations_path} "
                f"has image_id {ann.image_id}; expected the same image"
            )
        used.add(qid)
        samples.append(
            make_sample(
                where,
                id=f"{SOURCE}-{qid}",
                question=get_text(record, "question", where),
                answers=ann.answers,
                family="visual",
                qtype=ann.answer_type,
                source=SOURCE,
                image=str(Path(image_dir) / image_name(split, image_id, image_ext)),
                meta={
                    "question_id": qid,
                    "image_id": image_id,
                    "question_type": ann.question_type,
                    "multiple_choice_answer": ann.multiple_choice_answer,
                    "answer_confidence": list(ann.confidences),
                },
            )
        )
    unused = len(annotations) - len(used)
    if unused:
        log.warning("%s: %d annotation(s) have no question in %s; ignored",
                    annotations_path, unused, questions_path)
    return samples


def _split_of(qdoc: dict, questions_path: Path) -> str:
    subtype = qdoc.get("data_subtype")
    if isinstance(subtype, str) and subtype:
        return subtype
    match = _SPLIT_IN_NAME.search(questions_path.name)
    if match:
        return match.group(1)
    raise ManifestError(
        f"{questions_path}: no 'data_subtype' field and no split in the file name; "
        "expected e.g. 'val2014' (pass split= / --split)"
    )


def _index_annotations(records: list, path: Path) -> dict[int, _Annotation]:
    out: dict[int, _Annotation] = {}
    for index, record in enumerate(records):
        qid = get_field(record, "question_id", int, f"{path} annotation #{index}")
        where = f"{path} annotation for question_id {qid}"
        if qid in out:
            raise ManifestError(f"{where}: question_id {qid} is annotated twice; expected once")
        raw_answers = get_field(record, "answers", list, where)
        if not raw_answers:
            raise ManifestError(f"{where}: field 'answers' is empty; expected the human answers")
        answers, confidences = [], []
        for k, item in enumerate(raw_answers):
            item_where = f"{where}, answers[{k}]"
            answers.append(get_field(item, "answer", str, item_where))
            confidences.append(get_field(item, "answer_confidence", str, item_where))
        out[qid] = _Annotation(
            image_id=get_field(record, "image_id", int, where),
            question_type=get_text(record, "question_type", where),
            answer_type=get_text(record, "answer_type", where),
            multiple_choice_answer=get_text(record, "multiple_choice_answer", where),
            answers=tuple(answers),
            confidences=tuple(confidences),
        )
    return out
