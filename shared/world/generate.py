"""Write the world's data to disk: PNG images, WAV clips, and one manifest per split.

Layout under `data_dir`:
    images/{split}/{index:05d}.png    audio/{split}/{index:05d}.wav
    {split}.jsonl          questions in the common sample schema (paths relative to data_dir)
    {split}.scenes.jsonl   one line per scene: objects, sound events, SNR, caption, media paths
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from shared.data.audio_io import write_audio
from shared.data.schema import Sample, write_manifest
from shared.loading import load_jsonl
from shared.world.scenes import Scene, render_image, sample_scene, scene_rng
from shared.world.sounds import caption, synthesize
from shared.world.questions import annotate, scene_questions
from shared.world.spec import WorldSpec

log = logging.getLogger(__name__)


def scene_samples(spec: WorldSpec, scene: Scene, image: str, audio: str) -> list[Sample]:
    """The question samples of one scene; every one carries the scene's image and audio."""
    rng = scene_rng(spec, scene.split, scene.index, stream=4)
    samples = []
    for q in scene_questions(scene, spec):
        samples.append(Sample(
            id=f"world/{scene.key}/{q.family}.{q.qtype}",
            question=q.text,
            answers=annotate(q, spec, rng),
            family=q.family,
            qtype=q.qtype,
            source="world",
            image=image,
            audio=audio,
            audio_start=0.0,
            audio_end=spec.clip_seconds,
            meta={"scene": scene.key, "answer": q.answer},
        ))
    return samples


def _write_png(path: Path, pixels: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(pixels).save(tmp)
    os.replace(tmp, path)


def generate_split(spec: WorldSpec, split: str, data_dir: Path) -> int:
    """Render and write one split; returns the number of question samples."""
    samples, scenes = [], []
    (data_dir / "images" / split).mkdir(parents=True, exist_ok=True)
    (data_dir / "audio" / split).mkdir(parents=True, exist_ok=True)
    for index in tqdm(range(spec.splits[split]), desc=f"world {split}", unit="scene"):
        scene = sample_scene(spec, split, index)
        image = f"images/{split}/{index:05d}.png"
        audio = f"audio/{split}/{index:05d}.wav"
        _write_png(data_dir / image, render_image(spec, scene))
        write_audio(data_dir / audio, synthesize(spec, scene), spec.sample_rate)
        samples.extend(scene_samples(spec, scene, image, audio))
        scenes.append({**scene.to_json(), "key": scene.key, "caption": caption(scene),
                       "image": image, "audio": audio})
    write_manifest(samples, data_dir / f"{split}.jsonl")
    tmp = data_dir / f"{split}.scenes.jsonl.tmp"
    tmp.write_text("".join(json.dumps(s) + "\n" for s in scenes), encoding="utf-8")
    os.replace(tmp, data_dir / f"{split}.scenes.jsonl")
    log.info("world %s: %d scenes, %d questions", split, len(scenes), len(samples))
    return len(samples)


def read_scenes(data_dir: Path, split: str) -> list[dict]:
    """The scene records of a split, media paths made absolute."""
    path = Path(data_dir) / f"{split}.scenes.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"scene file {path} does not exist; run `safe-world build` first")
    records = [record for _, record in load_jsonl(path, "scene records written by `safe-world build`")]
    for r in records:
        r["image"] = str(Path(data_dir) / r["image"])
        r["audio"] = str(Path(data_dir) / r["audio"])
    return records
