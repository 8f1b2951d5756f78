"""GQA from its official question files (e.g. `testdev_balanced_questions.json`).

The file is a JSON object keyed by question id; each value has `imageId`, `question`,
`answer`, `fullAnswer` and `types: {structural, semantic, detailed}`. Images are
`{imageId}.jpg` (another extension can be given, e.g. "png" for the lossless images of
`safe-world export`). GQA is scored by exact match, so the one answer is the only reference.
"""

from __future__ import annotations

import os
from pathlib import Path

from shared.data._io import file_suffix, get_field, get_text, load_json, make_sample
from shared.data.schema import ManifestError, Sample

SOURCE = "gqa"


def load_gqa(questions_path: str | os.PathLike, image_dir: str | os.PathLike,
             image_ext: str = "jpg") -> list[Sample]:
    """One visual Sample per question, in file order; qtype is the structural type."""
    suffix = file_suffix(image_ext)
    questions_path = Path(questions_path)
    doc = load_json(questions_path, "GQA questions file")
    if not isinstance(doc, dict):
        raise ManifestError(
            f"{questions_path}: top level is a JSON {type(doc).__name__}; "
            "expected an object keyed by question id"
        )
    samples = []
    for qid, record in doc.items():
        where = f"{questions_path} question {qid}"
        image_id = get_text(record, "imageId", where)
        types = get_field(record, "types", dict, where)
        types_where = f"{where}, field 'types'"
        meta = {
            "question_id": qid,
            "image_id": image_id,
            "semantic": get_text(types, "semantic", types_where),
            "detailed": get_text(types, "detailed", types_where),
        }
        if "fullAnswer" in record:
            meta["full_answer"] = get_field(record, "fullAnswer", str, where)
        samples.append(
            make_sample(
                where,
                id=f"{SOURCE}-{qid}",
                question=get_text(record, "question", where),
                answers=(get_text(record, "answer", where),),
                family="visual",
                qtype=get_text(types, "structural", types_where),
                source=SOURCE,
                image=str(Path(image_dir) / f"{image_id}{suffix}"),
                meta=meta,
            )
        )
    return samples
