"""`safe-world export`: the embedded world's questions and media in the official dataset layouts.

The real converters (`safe-data convert FORMAT`) read the exported files back, so the real-data
path runs end to end without downloads. Each world split (train, val, test) becomes one file
set per format under OUT:

    vqav2/v2_OpenEnded_mscoco_{split}_questions.json, v2_mscoco_{split}_annotations.json,
          {split}/COCO_{split}_{image_id:012d}.png            visual questions, 10 answers
    gqa/{split}_balanced_questions.json, images/{imageId}.png  visual questions, majority answer
    audiocaps/{split}.csv, audio/{youtube_id}.wav              one caption per scene clip
    clotho_aqa/clotho_aqa_{split}.csv, audio_files/{file_name} audio questions, one row per answer
    music_avqa/avqa-{split}.json, audio/{video_id}.wav,
               frames/{video_id}/000001.png ...                every question, majority answer
    summary.json     per format and split: questions (and AudioCaps captions) exported, per
                     family.type the questions a format cannot hold ("not_exported"), media
                     files written, and the `safe-data convert` arguments that read them back
    world_ids.json   per format and split: each exported record's official key -> world sample id
                     (the scene key for AudioCaps clips)

Choices:
- Images stay lossless: the world's PNG files are copied byte for byte (JPEG would change
  pixels), so the converters are run with `--image-ext png` (`--frame-ext png` for
  MUSIC-AVQA); the official .jpg stays their default.
- Ids are official-style numbers: scene n (1-based, counted over train, val, test in order)
  is image n; its k-th question (in the world manifest's order) has question_id n*1000 + k,
  so ids never collide across splits and the manifests can be merged.
- Single-answer formats (GQA, MUSIC-AVQA) get the majority of the 10 annotator answers
  (`majority_answer`, the same target Stage A trains on); VQAv2 and Clotho-AQA keep all 10
  (Clotho-AQA has 3 annotators per question; writing all 10 rows keeps the same majority).
- VQAv2 `answer_type` follows the answers (yes/no, number, other); `question_type` holds the
  world's type (count, where, color, shape, exists), as GQA's `types.detailed` and
  MUSIC-AVQA's `type[1]` do; MUSIC-AVQA's `type[0]` is the family (Visual, Audio, Audio-Visual).
- AudioCaps clips are the world's 4 s clips, already cut, with start_time 0: read them with
  `--clips-are-cut --clip-seconds 4` (the clip length is taken from the world's samples).
- MUSIC-AVQA frames are 1 fps: the scene image repeated once per second of the clip.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from shared.data.audiocaps import COLUMNS as AUDIOCAPS_COLUMNS
from shared.data.clotho_aqa import COLUMNS as CLOTHO_COLUMNS
from shared.data.music_avqa import FAMILY_OF_TYPE
from shared.data.schema import Sample, majority_answer, read_manifest
from shared.world.generate import read_scenes
from shared.world.spec import SPLITS

log = logging.getLogger(__name__)

FORMATS = ("vqav2", "gqa", "audiocaps", "clotho_aqa", "music_avqa")
SUMMARY, IDS = "summary.json", "world_ids.json"
QUESTIONS_PER_SCENE = 1000
MODALITY_OF_FAMILY = {family: modality for modality, family in FAMILY_OF_TYPE.items()}
GQA_SEMANTIC = {"count": "obj", "exists": "obj", "where": "rel", "color": "attr", "shape": "attr"}
NOT_HELD = {
    "vqav2": "VQAv2 holds image questions only",
    "gqa": "GQA holds image questions only",
    "audiocaps": "AudioCaps holds clip captions, not questions",
    "clotho_aqa": "Clotho-AQA holds audio-only questions",
    "music_avqa": "MUSIC-AVQA holds Audio, Visual and Audio-Visual questions only",
}


@dataclass
class _Scene:
    """One world scene: its official-style number, media and questions (world manifest order)."""

    split: str
    number: int
    key: str
    image: Path
    audio: Path
    caption: str
    questions: list[Sample]

    def question_id(self, k: int) -> int:
        return self.number * QUESTIONS_PER_SCENE + k


@dataclass
class _Part:
    """What one format wrote for one split."""

    questions: int = 0
    captions: int = 0
    files: int = 0
    not_exported: Counter = field(default_factory=Counter)
    ids: list[dict] = field(default_factory=list)
    convert_args: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"questions": self.questions, "captions": self.captions,
                "not_exported": dict(sorted(self.not_exported.items())), "files": self.files,
                "convert_args": self.convert_args}


class _Media:
    """Copies (or hard-links) world media into the export, counting files written."""

    def __init__(self, link: bool) -> None:
        self.link = link

    def put(self, src: Path, dst: Path, part: _Part) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if self.link:
            os.link(src, dst)
        else:
            shutil.copyfile(src, dst)
        part.files += 1


def export_world(world_dir: str | os.PathLike, out_dir: str | os.PathLike, *, link: bool = False,
                 force: bool = False) -> dict:
    """Write every split of the world in each official format under `out_dir`; returns the summary."""
    world_dir, out_dir = Path(world_dir), Path(out_dir)
    data_dir = world_dir / "data"
    if not (data_dir / f"{SPLITS[0]}.jsonl").is_file():
        raise FileNotFoundError(f"no world data at {data_dir}; run `safe-world build --dir {world_dir}` first")
    _prepare(out_dir, force)
    media = _Media(link)
    writers: dict[str, Callable[[str, list[_Scene], Path, _Media, float], _Part]] = {
        "vqav2": _vqav2, "gqa": _gqa, "audiocaps": _audiocaps, "clotho_aqa": _clotho_aqa,
        "music_avqa": _music_avqa,
    }
    summary: dict = {"world_dir": str(world_dir), "out": str(out_dir), "world": {},
                     "formats": {name: {"not_held": NOT_HELD[name], "splits": {}} for name in FORMATS}}
    ids: dict = {name: {} for name in FORMATS}
    first = 1
    for split in SPLITS:
        scenes = _scenes(data_dir, split, first)
        first += len(scenes)
        clip_seconds = _clip_seconds(scenes, split)
        summary["world"][split] = {"scenes": len(scenes), "questions": sum(len(s.questions) for s in scenes),
                                   "clip_seconds": clip_seconds}
        for name, write in writers.items():
            part = write(split, scenes, out_dir / name, media, clip_seconds)
            summary["formats"][name]["splits"][split] = part.to_json()
            ids[name][split] = part.ids
    _write_json(out_dir / IDS, ids)
    _write_json(out_dir / SUMMARY, summary)
    log.info("exported %s to %s", world_dir, out_dir)
    return summary


def _prepare(out_dir: Path, force: bool) -> None:
    """Refuse a non-empty OUT unless `force`; with it, remove only what an export writes."""
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise FileExistsError(f"export folder {out_dir} is not empty; expected a new folder "
                                  "(or pass --overwrite, alias --force, to replace a previous export)")
        for name in FORMATS:
            if (out_dir / name).is_dir():
                shutil.rmtree(out_dir / name)
        for name in (SUMMARY, IDS):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def _scenes(data_dir: Path, split: str, first: int) -> list[_Scene]:
    """The split's scenes numbered from `first`, each with its questions."""
    manifest = data_dir / f"{split}.jsonl"
    by_scene: dict[str, list[Sample]] = {}
    for sample in read_manifest(manifest):
        by_scene.setdefault(sample.meta["scene"], []).append(sample)
    scenes = []
    for i, record in enumerate(read_scenes(data_dir, split)):
        questions = by_scene.pop(record["key"], [])
        if len(questions) > QUESTIONS_PER_SCENE:
            raise ValueError(f"{manifest}: scene {record['key']} has {len(questions)} questions; "
                             f"expected at most {QUESTIONS_PER_SCENE}")
        scenes.append(_Scene(split, first + i, record["key"], Path(record["image"]), Path(record["audio"]),
                             record["caption"], questions))
    if by_scene:
        raise ValueError(f"{manifest}: questions of scene(s) {sorted(by_scene)[:5]} have no record in "
                         f"{split}.scenes.jsonl; expected every question's scene")
    return scenes


def _clip_seconds(scenes: list[_Scene], split: str) -> float:
    """The one audio window length of the split's questions (the world's clip length)."""
    lengths = {s.audio_end - s.audio_start for scene in scenes for s in scene.questions
               if s.audio_end is not None}
    if len(lengths) != 1:
        raise ValueError(f"world split {split}: audio windows have lengths {sorted(lengths)}; "
                         "expected one clip length")
    return lengths.pop()


def _type_key(sample: Sample) -> str:
    return f"{sample.family}.{sample.qtype}"


def _answer_type(answer: str) -> str:
    """VQAv2's answer_type of an answer: yes/no, number or other."""
    if answer.lower() in ("yes", "no"):
        return "yes/no"
    return "number" if answer.isdigit() else "other"


def _held(scene: _Scene, families, part: _Part) -> Iterator[tuple[int, Sample]]:
    """(index, question) of the scene's questions a format holds; the others are counted as not exported."""
    for k, s in enumerate(scene.questions):
        if s.family in families:
            yield k, s
        else:
            part.not_exported[_type_key(s)] += 1


def _vqav2(split: str, scenes: list[_Scene], out: Path, media: _Media, clip_seconds: float) -> _Part:
    part = _Part()
    questions, annotations = [], []
    for scene in scenes:
        image_written = False
        for k, s in _held(scene, ("visual",), part):
            if not image_written:
                media.put(scene.image, out / split / f"COCO_{split}_{scene.number:012d}.png", part)
                image_written = True
            qid, answer = scene.question_id(k), majority_answer(s.answers, s.id)
            questions.append({"image_id": scene.number, "question": s.question, "question_id": qid})
            annotations.append({
                "question_type": s.qtype, "multiple_choice_answer": answer,
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                            for i, a in enumerate(s.answers)],
                "image_id": scene.number, "answer_type": _answer_type(answer), "question_id": qid,
            })
            part.ids.append({"question_id": qid, "world_id": s.id})
    part.questions = len(questions)
    common = {"data_type": "mscoco", "data_subtype": split, "info": {"description": "SAFE embedded world"}}
    qpath = _write_json(out / f"v2_OpenEnded_mscoco_{split}_questions.json",
                        {**common, "task_type": "Open-Ended", "questions": questions})
    apath = _write_json(out / f"v2_mscoco_{split}_annotations.json", {**common, "annotations": annotations})
    part.convert_args = ["vqav2", "--questions", str(qpath), "--annotations", str(apath),
                         "--images", str(out / split), "--image-ext", "png"]
    return part


def _gqa(split: str, scenes: list[_Scene], out: Path, media: _Media, clip_seconds: float) -> _Part:
    part = _Part()
    records = {}
    for scene in scenes:
        image_written = False
        for k, s in _held(scene, ("visual",), part):
            if s.qtype not in GQA_SEMANTIC:
                raise ValueError(f"world question {s.id}: type {s.qtype!r} has no GQA semantic type; "
                                 f"expected one of {sorted(GQA_SEMANTIC)}")
            if not image_written:
                media.put(scene.image, out / "images" / f"{scene.number}.png", part)
                image_written = True
            qid, answer = str(scene.question_id(k)), majority_answer(s.answers, s.id)
            structural = "verify" if answer in ("yes", "no") else "query"
            records[qid] = {"imageId": str(scene.number), "question": s.question, "answer": answer,
                            "types": {"structural": structural, "semantic": GQA_SEMANTIC[s.qtype],
                                      "detailed": s.qtype},
                            "isBalanced": True}
            part.ids.append({"question_id": qid, "world_id": s.id})
    part.questions = len(records)
    path = _write_json(out / f"{split}_balanced_questions.json", records)
    part.convert_args = ["gqa", "--questions", str(path), "--images", str(out / "images"), "--image-ext", "png"]
    return part


def _youtube_id(scene: _Scene) -> str:
    """An 11-character YouTube-style id for the scene's clip."""
    return f"world{scene.number:06d}"


def _audiocaps(split: str, scenes: list[_Scene], out: Path, media: _Media, clip_seconds: float) -> _Part:
    part = _Part()
    rows = []
    for scene in scenes:
        part.not_exported.update(_type_key(s) for s in scene.questions)
        youtube_id = _youtube_id(scene)
        media.put(scene.audio, out / "audio" / f"{youtube_id}.wav", part)
        rows.append((scene.number, youtube_id, 0, scene.caption))
        part.captions += 1
        part.ids.append({"youtube_id": youtube_id, "world_id": scene.key})
    path = _write_csv(out / f"{split}.csv", AUDIOCAPS_COLUMNS, rows)
    part.convert_args = ["audiocaps", "--csv", str(path), "--audio", str(out / "audio"), "--clips-are-cut",
                         "--clip-seconds", f"{clip_seconds:g}"]
    return part


def _clotho_aqa(split: str, scenes: list[_Scene], out: Path, media: _Media, clip_seconds: float) -> _Part:
    part = _Part()
    rows = []
    for scene in scenes:
        file_name = f"world_{scene.number:06d}.wav"
        asked: set[str] = set()
        for _, s in _held(scene, ("audio",), part):
            if s.question in asked:
                raise ValueError(f"world question {s.id}: {s.question!r} is asked twice about scene "
                                 f"{scene.key}; Clotho-AQA would merge the two into one question")
            if not asked:
                media.put(scene.audio, out / "audio_files" / file_name, part)
            asked.add(s.question)
            rows.extend((file_name, s.question, answer, "yes") for answer in s.answers)
            part.questions += 1
            part.ids.append({"file_name": file_name, "question": s.question, "world_id": s.id})
    path = _write_csv(out / f"clotho_aqa_{split}.csv", CLOTHO_COLUMNS, rows)
    part.convert_args = ["clotho-aqa", "--csv", str(path), "--audio", str(out / "audio_files")]
    return part


def _music_avqa(split: str, scenes: list[_Scene], out: Path, media: _Media, clip_seconds: float) -> _Part:
    part = _Part()
    records = []
    frames = max(1, math.ceil(clip_seconds))
    for scene in scenes:
        video_id = f"{scene.number:08d}"
        written = False
        for k, s in _held(scene, MODALITY_OF_FAMILY, part):
            if not written:
                media.put(scene.audio, out / "audio" / f"{video_id}.wav", part)
                for n in range(1, frames + 1):
                    media.put(scene.image, out / "frames" / video_id / f"{n:06d}.png", part)
                written = True
            qid = scene.question_id(k)
            records.append({"video_id": video_id, "question_id": qid,
                            "type": json.dumps([MODALITY_OF_FAMILY[s.family], s.qtype]),
                            "question_content": s.question, "templ_values": "[]",
                            "anser": majority_answer(s.answers, s.id)})
            part.ids.append({"question_id": qid, "world_id": s.id})
    part.questions = len(records)
    path = _write_json(out / f"avqa-{split}.json", records)
    part.convert_args = ["music-avqa", "--json", str(path), "--audio", str(out / "audio"),
                         "--frames", str(out / "frames"), "--frame-ext", "png"]
    return part


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def format_summary(summary: dict) -> str:
    """The export summary as a plain-text table: per format and split, exported and not exported."""
    lines = [f"exported {summary['world_dir']} to {summary['out']}", "",
             f"{'format':<11} {'split':<6} {'questions':>9} {'captions':>8} {'files':>6}  not exported"]
    for name, fmt in summary["formats"].items():
        for split, part in fmt["splits"].items():
            missing = Counter()
            for key, n in part["not_exported"].items():
                missing[key.split(".")[0]] += n
            text = ", ".join(f"{family} {n}" for family, n in sorted(missing.items())) or "-"
            lines.append(f"{name:<11} {split:<6} {part['questions']:>9} {part['captions']:>8} {part['files']:>6}"
                         f"  {text}")
    world = ", ".join(f"{split} {w['questions']}" for split, w in summary["world"].items())
    lines += ["", f"world questions: {world}; each split's questions = exported + not exported per format",
              f"details: {Path(summary['out']) / SUMMARY}"]
    return "\n".join(lines)
