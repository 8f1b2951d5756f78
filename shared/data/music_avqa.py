"""MUSIC-AVQA from its official JSON files (`avqa-train.json`, `avqa-val.json`, `avqa-test.json`).

Each record: `{"video_id", "question_id", "type": "[\\"Audio-Visual\\", \\"Counting\\"]",
"question_content": "How many <Object> are in the video?", "templ_values": "[\\"cello\\"]",
"anser": "two"}`; `type` and `templ_values` are JSON *strings* holding lists, and the
answer field is spelled `anser` in the official release (`answer` is accepted too).

Media layout:
- audio: `{audio_dir}/{video_id}.wav`, the whole clip (window [0, end of file));
- frames: 1 frame per second, `{frames_dir}/{video_id}/000001.jpg`, `000002.jpg`, ...
  Frame number k (1-based) shows time k - 1 seconds, so `frame_times` are 0, 1, 2, ...
  Another frame extension can be given (`frame_ext`, e.g. "png" for lossless frames).
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path
from typing import Any

from shared.data._io import check_pattern, file_suffix, get_field, get_text, load_json, make_sample
from shared.data.schema import ManifestError, Sample

SOURCE = "music_avqa"
FAMILY_OF_TYPE = {"Audio": "audio", "Visual": "visual", "Audio-Visual": "audio_visual"}
PLACEHOLDER = re.compile(r"<[^<>]+>")


def load_music_avqa(
    json_path: str | os.PathLike,
    audio_dir: str | os.PathLike,
    frames_dir: str | os.PathLike | None = None,
    *,
    num_frames: int | None = None,
    audio_pattern: str = "{video_id}.wav",
    frame_ext: str = "jpg",
) -> list[Sample]:
    """One Sample per question, in file order; family from type[0], qtype = type[1].

    With `frames_dir`, each sample gets its video's 1-fps frames: `num_frames` of them
    (named, not looked for: `safe-data check` reports missing ones) or, when `num_frames`
    is None, every `NNNNNN.jpg` in `{frames_dir}/{video_id}/`, which must then exist.
    `frame_ext` is the frame files' extension (official: jpg).
    """
    suffix = file_suffix(frame_ext, "frame_ext")
    json_path = Path(json_path)
    check_pattern(audio_pattern, ("video_id",))
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames is {num_frames}; expected a positive count or None")
    records = load_json(json_path, "MUSIC-AVQA questions file")
    if not isinstance(records, list):
        raise ManifestError(f"{json_path}: top level is a JSON {type(records).__name__}; expected a list")
    frame_cache: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {}
    samples = []
    for index, record in enumerate(records):
        qid = get_field(record, "question_id", (int, str), f"{json_path} record #{index}")
        where = f"{json_path} question_id {qid}"
        video_id = get_text(record, "video_id", where)
        kind = _string_list(record, "type", where)
        if len(kind) != 2 or kind[0] not in FAMILY_OF_TYPE:
            raise ManifestError(
                f"{where}: field 'type' is {kind!r}; expected [modality, question type] with "
                f"modality one of {list(FAMILY_OF_TYPE)}"
            )
        template = get_text(record, "question_content", where)
        values = _string_list(record, "templ_values", where)
        frames, times = (), ()
        if frames_dir is not None:
            if video_id not in frame_cache:
                frame_cache[video_id] = _frames(Path(frames_dir) / video_id, num_frames, suffix)
            frames, times = frame_cache[video_id]
        samples.append(
            make_sample(
                where,
                id=f"{SOURCE}-{qid}",
                question=fill_placeholders(template, values, where),
                answers=(_answer(record, where),),
                family=FAMILY_OF_TYPE[kind[0]],
                qtype=kind[1],
                source=SOURCE,
                frames=frames,
                frame_times=times,
                audio=str(Path(audio_dir) / audio_pattern.format(video_id=video_id)),
                meta={"question_id": qid, "video_id": video_id, "type": kind, "template": template},
            )
        )
    return samples


def fill_placeholders(template: str, values: list[str], where: str = "question") -> str:
    """Replace `<Object>`, `<LOC>`, `<FL>`, ... in order with `values` (counts must match)."""
    found = PLACEHOLDER.findall(template)
    if len(found) != len(values):
        raise ManifestError(
            f"{where}: field 'templ_values' has {len(values)} value(s) {values!r} but the question "
            f"{template!r} has {len(found)} placeholder(s); expected one value per placeholder"
        )
    fill = iter(values)
    return PLACEHOLDER.sub(lambda _match: next(fill), template)


def _string_list(record: dict, name: str, where: str) -> list[str]:
    """A field holding a list of strings, either as a list or as its JSON text (official)."""
    value: Any = get_field(record, name, (str, list), where)
    if isinstance(value, str):
        value = _parse_list_text(value, name, where)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestError(f"{where}: field {name!r} is {record[name]!r}; expected a list of strings")
    return value


def _parse_list_text(text: str, name: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError) as err:
        raise ManifestError(
            f"{where}: field {name!r} is {text!r}; expected the text of a list of strings ({err})"
        ) from err


def _answer(record: dict, where: str) -> str:
    name = "anser" if "anser" in record or "answer" not in record else "answer"
    return get_text(record, name, where)


def _frames(video_dir: Path, num_frames: int | None,
            suffix: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Frame paths and times (frame k at k - 1 s) for one video; `suffix` is e.g. ".jpg"."""
    if num_frames is not None:
        found = [(k, video_dir / f"{k:06d}{suffix}") for k in range(1, num_frames + 1)]
    else:
        if not video_dir.is_dir():
            raise FileNotFoundError(
                f"frame folder {video_dir} does not exist; extract the frames or pass num_frames "
                "(--num-frames) so that missing frames are reported by `safe-data check`"
            )
        name = re.compile(r"^(\d+)" + re.escape(suffix) + "$")
        found = sorted((int(m.group(1)), p) for p in video_dir.iterdir() if (m := name.match(p.name)))
        if not found or found[0][0] < 1:
            raise FileNotFoundError(
                f"frame folder {video_dir} holds no frames named 000001{suffix}, 000002{suffix}, ...; "
                "expected 1-based 1-fps frames"
            )
    return tuple(str(p) for _, p in found), tuple(float(k - 1) for k, _ in found)
