"""Stage A data: answer-only labels, cached features, corrupt audio counted and excluded, missing images named."""

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image
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
    split = load_split("val", micro_world / "data" / "val.jsonl", encoder, cache, 16000, processor)
    batch = Collator(processor).train_batch(split, [0, 1, 2])
    tok = processor.tokenizer
    for row, i in enumerate([0, 1, 2]):
        answer = batch.labels[row][batch.labels[row] != IGNORE].tolist()
        assert tok.decode(answer, skip_special_tokens=False).split() == [*split.targets[i].split(), tok.eos_token]
    assert batch.frames.shape[0] == 3 and batch.frame_mask.any(1).all()
    assert cache.misses == len(set(split.feature_index)) and split.excluded["excluded"] == 0


def test_corrupt_audio_is_counted_and_excluded_never_turned_into_vl(micro_world: Path, parts, tmp_path: Path) -> None:
    encoder, cache, processor = parts
    data = tmp_path / "data"
    shutil.copytree(micro_world / "data", data)
    wav = data / "audio" / "val" / "00003.wav"
    wav.write_bytes(b"\0" * 64 + wav.read_bytes()[64:])
    split = load_split("val", data / "val.jsonl", encoder, cache, 16000, processor)
    scene_questions = sum(json.loads(line)["meta"]["scene"] == "val/00003"
                          for line in (data / "val.jsonl").read_text().splitlines())
    assert split.excluded["excluded"] == scene_questions > 0
    assert split.excluded["counts"] == {"unreadable_audio": scene_questions}
    assert not any(s.meta["scene"] == "val/00003" for s in split.samples)


def test_missing_image_is_named(micro_world: Path, parts, tmp_path: Path) -> None:
    encoder, cache, processor = parts
    data = tmp_path / "data"
    shutil.copytree(micro_world / "data", data)
    (data / "images" / "val" / "00002.png").unlink()
    split = load_split("val", data / "val.jsonl", encoder, cache, 16000, processor)
    assert split.excluded["counts"].get("missing_file", 0) > 0
    assert not any(s.image and s.image.endswith("val/00002.png") for s in split.samples)


BAD_IMAGES = {"bad/truncated": "unreadable_image", "bad/one_pixel": "small_image", "bad/32px": "unprocessable_image",
              "bad/32px_twin": "unprocessable_image", "bad/32px_frame": "unprocessable_image"}


def _with_bad_images(world: Path, split: str, out: Path, truncated_png, scenes: int = 0) -> Path:
    """The world's split (its first `scenes` scenes; 0: all) plus a VL question per image that used to crash a batch
    (BAD_IMAGES: id -> kind): a truncated PNG, a 1x1 PNG, two 32x32 PNGs (above the size floor, but the world's
    processor neither resizes nor crops, so it batches only 48x48 images; one size is probed for both) and a
    frames-only question whose chosen (middle) frame is the first 32x32 PNG."""
    data = world / "data"
    rows = [json.loads(line) for line in (data / f"{split}.jsonl").read_text().splitlines()]
    kept = sorted({r["meta"]["scene"] for r in rows})[:scenes or None]
    rows = [{**r, "image": str(data / r["image"]), "audio": str(data / r["audio"])} for r in rows
            if r["meta"]["scene"] in kept]
    truncated_png(out / "truncated.png")
    Image.new("RGB", (1, 1), (200, 30, 30)).save(out / "one_pixel.png")
    Image.new("RGB", (32, 32), (200, 30, 30)).save(out / "32px.png")
    Image.new("RGB", (32, 32), (30, 30, 200)).save(out / "32px_twin.png")
    template = next(r for r in rows if r["family"] == "visual")
    bad = [{**template, "id": sid, "image": str(out / f"{sid.split('/')[1]}.png")} for sid in list(BAD_IMAGES)[:4]]
    av = next(r for r in rows if r["family"] == "audio_visual")
    bad.append({**av, "id": "bad/32px_frame", "image": None, "frames": [av["image"], str(out / "32px.png"), av["image"]],
                "frame_times": [0.0, 2.0, 4.0], "audio_start": 0.0, "audio_end": 4.0})
    rows[1:1] = bad
    path = out / f"{split}_bad_images.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_images_that_break_a_batch_are_excluded_with_their_ids(micro_world: Path, parts, tmp_path: Path,
                                                                truncated_png) -> None:
    encoder, cache, processor = parts
    manifest = _with_bad_images(micro_world, "val", tmp_path, truncated_png, scenes=2)
    split = load_split("val", manifest, encoder, cache, 16000, processor)
    assert {e["id"]: e["kinds"] for e in split.excluded["samples"]} == {sid: [k] for sid, k in BAD_IMAGES.items()}
    assert [e["index"] for e in split.excluded["samples"]] == [1, 2, 3, 4, 5]  # their lines in the manifest, 0-based
    assert split.excluded["counts"] == dict(Counter(BAD_IMAGES.values()))
    assert (split.excluded["total"], split.excluded["excluded"]) == (len(split) + 5, 5)
    assert not set(BAD_IMAGES) & {s.id for s in split.samples}
    collator = Collator(processor)
    for start in range(0, len(split), 32):  # every remaining row batches, for training and for generation
        rows = list(range(start, min(start + 32, len(split))))
        assert collator.train_batch(split, rows).inputs["pixel_values"].shape[1:] == (3, 48, 48)
        collator.prompt_batch(split, rows)


def test_the_processor_decides_what_it_can_batch(micro_world: Path, parts, blip2_dir: Path, tmp_path: Path,
                                                 truncated_png) -> None:
    """BLIP-2's processor resizes every image, so the 32x32 image stays; the broken and degenerate ones do not."""
    encoder, cache, _ = parts
    manifest = _with_bad_images(micro_world, "val", tmp_path, truncated_png, scenes=2)
    split = load_split("val", manifest, encoder, cache, 16000, AutoProcessor.from_pretrained(blip2_dir))
    assert split.excluded["counts"] == {"unreadable_image": 1, "small_image": 1}
    assert {"bad/32px", "bad/32px_twin", "bad/32px_frame"} <= {s.id for s in split.samples}


def test_a_split_with_nothing_usable_is_an_error(micro_world: Path, parts, tmp_path: Path, truncated_png) -> None:
    encoder, cache, processor = parts
    rows = [json.loads(line) for line in _with_bad_images(micro_world, "val", tmp_path, truncated_png, scenes=1)
            .read_text().splitlines() if json.loads(line)["id"] in BAD_IMAGES]
    manifest = tmp_path / "only_bad.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=f"val split: all 5 samples of {manifest} are excluded"):
        load_split("val", manifest, encoder, cache, 16000, processor)


def test_training_and_evaluation_run_on_the_rest(micro_world: Path, micro_paths: dict, tmp_path: Path,
                                                 truncated_png, capsys) -> None:
    """stage_a-train and stage_a-eval on a tiny manifest (two scenes) holding the bad images: no crash, the ids in the
    reports."""
    from stage_a.eval_command import main as eval_main
    from stage_a.train import main as train_main

    manifest = str(_with_bad_images(micro_world, "train", tmp_path, truncated_png, scenes=2))
    data = {f"--data.{s}": manifest for s in ("train", "val", "test")}
    args = [x for k, v in {**{f"--{k}": v for k, v in micro_paths.items()}, **data}.items() for x in (k, v)]
    assert train_main(["--preset", "stage_a_micro", "--out_dir", str(tmp_path), *args, "--steps", "2",
                       "--eval_every", "2"]) == 0
    summary = json.loads((tmp_path / "stage_a_micro" / "summary.json").read_text())
    for split in ("train", "val", "test"):
        assert {e["id"]: e["kinds"] for e in summary["excluded"][split]["samples"]} == {
            sid: [kind] for sid, kind in BAD_IMAGES.items()}, split
    assert summary["steps"] == 2
    out = tmp_path / "eval"
    assert eval_main(["--preset", "stage_a_micro", *args, "--out", str(out), "--json"]) == 0
    predicted = {json.loads(line)["id"] for line in (out / "predictions.jsonl").read_text().splitlines()}
    assert len(predicted) == summary["excluded"]["test"]["total"] - len(BAD_IMAGES)
    assert not predicted & set(BAD_IMAGES)


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
    split = load_split("val", manifest, encoder, cache, 16000, processor)
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
    encoder, cache, world_processor = parts
    split = load_split("val", _mixed_manifest(micro_world, "val", tmp_path), encoder, cache, 16000, world_processor)
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
