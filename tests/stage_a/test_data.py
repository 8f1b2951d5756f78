"""Stage A data: answer-only labels, cached features, corrupt audio counted and excluded, missing images named."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor

from shared.encoders import build_encoder
from shared.features import FeatureCache
from stage_a.data import IGNORE, Collator, load_split, target_answer, visual_input


@pytest.fixture(scope="module")
def parts(micro_world: Path, tmp_path_factory: pytest.TempPathFactory):
    encoder = build_encoder("clap", str(micro_world / "models" / "clap"), None)
    cache = FeatureCache(tmp_path_factory.mktemp("cache"), encoder.identity, "w")
    return encoder, cache, AutoProcessor.from_pretrained(micro_world / "models" / "vl")


def test_labels_hold_only_the_answer_and_eos(micro_world: Path, parts) -> None:
    encoder, cache, processor = parts
    split = load_split("val", micro_world / "data" / "val.jsonl", encoder, cache, 16000)
    batch = Collator(processor).train_batch(split, [0, 1, 2])
    tok = processor.tokenizer
    for row, i in enumerate([0, 1, 2]):
        answer = batch.labels[row][batch.labels[row] != IGNORE].tolist()
        assert tok.decode(answer, skip_special_tokens=False).split() == [*split.targets[i].split(), tok.eos_token]
    assert batch.frames.shape[0] == 3 and batch.frame_mask.any(1).all()
    assert cache.misses == len(set(split.feature_index)) and split.excluded["excluded"] == 0


def test_corrupt_audio_is_counted_and_excluded_never_turned_into_vl(micro_world: Path, parts, tmp_path: Path) -> None:
    encoder, cache, _ = parts
    data = tmp_path / "data"
    shutil.copytree(micro_world / "data", data)
    wav = data / "audio" / "val" / "00003.wav"
    wav.write_bytes(b"\0" * 64 + wav.read_bytes()[64:])
    split = load_split("val", data / "val.jsonl", encoder, cache, 16000)
    scene_questions = sum(json.loads(line)["meta"]["scene"] == "val/00003"
                          for line in (data / "val.jsonl").read_text().splitlines())
    assert split.excluded["excluded"] == scene_questions > 0
    assert split.excluded["counts"] == {"unreadable_audio": scene_questions}
    assert not any(s.meta["scene"] == "val/00003" for s in split.samples)


def test_missing_image_is_named(micro_world: Path, parts, tmp_path: Path) -> None:
    encoder, cache, _ = parts
    data = tmp_path / "data"
    shutil.copytree(micro_world / "data", data)
    (data / "images" / "val" / "00002.png").unlink()
    split = load_split("val", data / "val.jsonl", encoder, cache, 16000)
    assert split.excluded["counts"].get("missing_file", 0) > 0
    assert not any(s.image and s.image.endswith("val/00002.png") for s in split.samples)


def test_target_answer_is_the_most_frequent() -> None:
    from shared.data.schema import Sample
    sample = Sample("x", "q?", ("a", "b", "b", "c"), "visual", "t", "s")
    assert target_answer(sample) == "b"
    assert target_answer(Sample("c", "q?", ("a hum", "a buzz", "a buzz", "a hum"), "caption", "t", "s")) == "a hum"
    with pytest.raises(ValueError, match="'answers': no answers"):
        target_answer(Sample("y", "q?", (), "visual", "t", "s"))


# --- every modality mix: image, frames-only and audio-only samples from several datasets in one manifest ---------

def target_answer_of(row: dict) -> str:
    return max(row["answers"], key=row["answers"].count)


def _mixed_manifest(world: Path, split: str, out: Path) -> Path:
    """The micro world's split recast as a mixed manifest: VQAv2-like VL questions (half without audio),
    MUSIC-AVQA-like frames-only AV questions (own scene's image at t = 2 s between two other scenes'),
    Clotho-AQA-like audio-only questions and AudioCaps-like captions (no visual input)."""
    data = world / "data"
    rows = [json.loads(line) for line in (data / f"{split}.jsonl").read_text().splitlines()]
    images = sorted({str(data / r["image"]) for r in rows})
    mixed = []
    for n, row in enumerate(rows):
        row = {**row, "image": str(data / row["image"]), "audio": str(data / row["audio"])}
        if row["family"] == "visual":
            row["source"] = "vqav2"
            if n % 2:
                row |= {"audio": None, "audio_start": 0.0, "audio_end": None}
        elif row["family"] == "audio_visual":
            others = [p for p in images if p != row["image"]]
            row |= {"source": "music_avqa", "answers": [target_answer_of(row)], "frames": [others[n % len(others)], row["image"], others[-1 - n % len(others)]],
                    "frame_times": [0.0, 2.0, 4.0], "image": None, "audio_end": None}
        else:
            row |= {"source": "clotho_aqa", "image": None}
            answer = row["answers"][0]
            mixed.append({**row, "id": row["id"] + "/caption", "question": "what do you hear?", "family": "caption",
                          "qtype": "caption", "source": "audiocaps", "answers": [answer, "tone", answer]})
        mixed.append(row)
    path = out / f"{split}_mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in mixed))
    return path


def test_frames_only_samples_show_the_frame_nearest_the_middle_of_the_audio(micro_world: Path) -> None:
    from shared.data.schema import Sample
    wav = str(micro_world / "data" / "audio" / "val" / "00000.wav")  # 4 s
    frames = ("f0.png", "f1.png", "f2.png")
    sample = lambda **kw: Sample("x", "q?", ("a",), "audio_visual", "t", "music_avqa", frames=frames,  # noqa: E731
                                 frame_times=(0.0, 1.0, 3.0), **kw)
    assert visual_input(sample(audio=wav), {}) == "f1.png"  # whole file: centre 2.0 s, a tie of 1.0 and 3.0: earlier
    assert visual_input(sample(audio=wav, audio_end=0.8), {}) == "f0.png"  # centre 0.4 s
    assert visual_input(sample(audio=wav, audio_start=1.0, audio_end=9.0), {}) == "f2.png"  # end clipped to 4: 2.5 s
    assert visual_input(sample(), {}) == "f1.png"  # no audio: the middle of the frames' span, 1.5 s
    assert visual_input(Sample("y", "q?", ("a",), "audio", "t", "clotho_aqa", audio=wav), {}) is None


def test_mixed_manifest_loads_and_batches_every_modality_mix(micro_world: Path, parts, tmp_path: Path) -> None:
    encoder, cache, processor = parts
    manifest = _mixed_manifest(micro_world, "val", tmp_path)
    written = [json.loads(line) for line in manifest.read_text().splitlines()]
    split = load_split("val", manifest, encoder, cache, 16000)
    assert len(split) == len(written) and split.excluded["excluded"] == 0  # nothing lost, nothing converted
    kinds = {"image": sum(r["image"] is not None for r in written), "frame": sum(bool(r["frames"]) for r in written)}
    composition = split.composition()
    assert composition["visual_input"] == {**kinds, "none": len(written) - sum(kinds.values())}
    assert composition["sources"] == {s: sum(r["source"] == s for r in written)
                                      for s in ("audiocaps", "clotho_aqa", "music_avqa", "vqav2")}
    assert "middle of the audio window" in composition["frame_rule"]
    for i, row in enumerate(written):
        assert split.samples[i].id == row["id"]
        shown = split.visuals[i]
        if row["frames"]:
            assert shown == row["frames"][1]  # the scene's own image, at the middle of the 4 s clip
        assert (shown is None) == (row["family"] in ("audio", "caption"))
        assert split.samples[i].has_audio == (row["audio"] is not None)  # audio-only stays audio-only
    assert split.targets[[s.family for s in split.samples].index("caption")] == written[
        [r["family"] for r in written].index("caption")]["answers"][0]
    collator = Collator(processor)
    assert collator.provenance() == {"no_image_policy": "text_only", "blank_image": None}
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    rows = [next(i for i, s in enumerate(split.samples) if s.family == f) for f in ("visual", "audio_visual", "audio",
                                                                                   "caption")]
    for batch in (collator.train_batch(split, rows), collator.prompt_batch(split, rows)):
        with_image = (batch.inputs["input_ids"] == image_id).any(1).tolist()
        assert with_image == [True, True, False, False]
        assert batch.inputs["pixel_values"].shape[0] == 2 and batch.frame_mask.any(1).all()
    train = collator.train_batch(split, rows)
    for row, i in enumerate(rows):
        answer = train.labels[row][train.labels[row] != IGNORE].tolist()
        assert processor.tokenizer.decode(answer).split()[:-1] == split.targets[i].split()
    only_audio = collator.prompt_batch(split, rows[2:])
    assert "pixel_values" not in only_audio.inputs and only_audio.inputs["input_ids"].shape[0] == 2


def test_blank_image_policy_for_processors_that_always_take_an_image(micro_world: Path, parts, blip2_dir: Path,
                                                                     tmp_path: Path) -> None:
    encoder, cache, _ = parts
    split = load_split("val", _mixed_manifest(micro_world, "val", tmp_path), encoder, cache, 16000)
    collator = Collator(AutoProcessor.from_pretrained(blip2_dir))
    assert collator.provenance()["no_image_policy"] == "blank_image"
    assert "(128, 128, 128)" in collator.provenance()["blank_image"]
    rows = [next(i for i, s in enumerate(split.samples) if s.family == f) for f in ("visual", "audio", "caption")]
    pixels = collator.prompt_batch(split, rows).inputs["pixel_values"]
    assert pixels.shape[0] == 3 and torch.equal(pixels[1], pixels[2]) and not torch.equal(pixels[0], pixels[1])
    assert pixels[1].unique().numel() == 3  # one constant value per channel: the blank grey image


def test_mixed_manifest_trains_and_records_its_inputs(micro_world: Path, micro_paths: dict, tmp_path: Path) -> None:
    from shared.config import load_config
    from stage_a.config import TrainConfig
    from stage_a.train import StageATrainer

    data = {f"data.{s}": str(_mixed_manifest(micro_world, s, tmp_path)) for s in ("train", "val", "test")}
    values = {"out_dir": str(tmp_path), **micro_paths, **data, "steps": 3, "eval_every": 3, "data.test_size": 24,
              "mix.audio_fraction": 0.5}
    trainer = StageATrainer(load_config(TrainConfig, "stage_a_micro", {k: str(v) for k, v in values.items()}))
    before = {k: v.clone() for k, v in trainer.model.trainable_state().items()}
    summary = trainer.run()
    assert any(not torch.equal(v, trainer.model.trainable_state()[k]) for k, v in before.items())
    assert summary["gate0_max_abs_logit_diff"] == 0.0 and summary["steps"] == 3
    inputs = summary["inputs"]
    assert inputs["no_image_policy"] == "text_only" and inputs["train"]["visual_input"]["none"] > 0
    assert set(inputs["train"]["sources"]) == {"audiocaps", "clotho_aqa", "music_avqa", "vqav2"}
    predictions = (tmp_path / "stage_a_micro" / "predictions.jsonl").read_text().splitlines()
    assert {json.loads(line)["family"] for line in predictions} == {"audio", "audio_visual", "caption", "visual"}
