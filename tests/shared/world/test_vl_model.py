"""The world's base VL model: vocabulary, processor, staged training, hub-style save and reload."""

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from shared.data.schema import read_manifest
from shared.world.generate import generate_split
from shared.world.questions import scene_questions
from shared.world.scenes import sample_scene
from shared.world.spec import SPLITS, WorldSpec
from shared.world.vl_model import (
    IMAGE,
    VLModelConfig,
    answer_questions,
    build_processor,
    build_tokenizer,
    format_prompt,
    world_vocabulary,
)
from shared.world.vl_train import VLTrainConfig, fit_base_vl, load_visual_qa, save_base_vl, train_base_vl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)
MICRO = WorldSpec(size="micro")
TINY = VLTrainConfig(
    model=VLModelConfig(vision_dim=16, vision_layers=1, vision_heads=2, text_dim=32, text_layers=1, text_heads=2),
    batch_size=8, vision_steps=3, vqa_steps=4, warmup_steps=2, eval_batch_size=16,
)


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("micro_world")
    for split in SPLITS:
        generate_split(MICRO, split, data_dir)
    return data_dir


@pytest.fixture(scope="module")
def fitted(micro_dir: Path) -> tuple:
    return fit_base_vl(micro_dir, MICRO, TINY)


def _batch(processor, data_dir: Path, n: int = 4) -> tuple[list[Image.Image], list[str]]:
    samples = [s for s in read_manifest(data_dir / "test.jsonl") if s.family == "visual"][:n]
    return [Image.open(s.image).convert("RGB") for s in samples], [s.question for s in samples]


def test_vocabulary_covers_every_micro_question_and_answer(micro_dir: Path) -> None:
    tok = build_tokenizer()
    vocab = set(world_vocabulary())
    texts = []
    for split in SPLITS:
        for s in read_manifest(micro_dir / f"{split}.jsonl"):
            texts += [s.question, *s.answers]
    assert {s.family for split in SPLITS for s in read_manifest(micro_dir / f"{split}.jsonl")} >= {
        "visual", "audio", "audio_visual"}
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text
    assert len(vocab) == len(world_vocabulary()) and "<unk>" not in vocab


def test_vocabulary_covers_questions_of_many_default_scenes() -> None:
    tok = build_tokenizer()
    spec = WorldSpec()
    for i in range(300):
        for q in scene_questions(sample_scene(spec, "train", i), spec):
            ids = tok(f"{q.text} {q.answer}", add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids, q


def test_tokenizer_round_trips_multiword_answers() -> None:
    tok = build_tokenizer()
    ids = tok("top left", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == "top left"
    assert tok("What color?", add_special_tokens=False)["input_ids"] == tok.convert_tokens_to_ids(
        ["what", "color", "?"])


def test_processor_expands_image_token_to_one_per_patch() -> None:
    processor = build_processor(MICRO)
    image = np.zeros((MICRO.image_size, MICRO.image_size, 3), dtype=np.uint8)
    questions = ["how many objects are there?", "where is the red square?"]
    out = processor(images=[image, image], text=[format_prompt(q) for q in questions],
                    return_tensors="pt", padding=True)
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE)
    assert processor.image_token_id == image_id
    assert out["pixel_values"].shape == (2, 3, MICRO.image_size, MICRO.image_size)
    patches = (MICRO.image_size // 16) ** 2
    assert (out["input_ids"] == image_id).sum(dim=1).tolist() == [patches, patches]
    tok = processor.tokenizer
    for ids, mask in zip(out["input_ids"], out["attention_mask"]):
        real = ids[mask == 1].tolist()
        assert real[0] == tok.bos_token_id and tok.unk_token_id not in real
        assert tok.convert_ids_to_tokens(real[-2:]) == ["answer", ":"]


def test_train_base_vl_saves_a_hub_style_dir(micro_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "base_vl"
    metrics = train_base_vl(micro_dir, out, MICRO, TINY)
    assert {"model.safetensors", "config.json", "processor_config.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["base_vl"]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert set(metrics["test_per_type"]) <= {"count", "where", "color", "shape", "exists"}
    assert metrics["params"] > 0 and metrics["train_seconds"] > 0
    assert np.isfinite(metrics["vision_loss"]) and np.isfinite(metrics["vqa_loss"])


def test_reloaded_model_gives_bit_identical_logits(fitted: tuple, micro_dir: Path, tmp_path: Path) -> None:
    model, processor, _ = fitted
    save_base_vl(model, processor, micro_dir, tmp_path / "vl")
    model2 = LlavaForConditionalGeneration.from_pretrained(tmp_path / "vl").eval()
    processor2 = AutoProcessor.from_pretrained(tmp_path / "vl")
    images, questions = _batch(processor, micro_dir)
    prompts = [format_prompt(q) for q in questions]
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    inputs2 = processor2(images=images, text=prompts, return_tensors="pt", padding=True)
    assert all(torch.equal(inputs[k], inputs2[k]) for k in inputs)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, model2(**inputs2).logits)


def test_same_seed_gives_identical_weights_and_other_seed_differs(fitted: tuple, micro_dir: Path) -> None:
    first = fitted[0].state_dict()
    again = fit_base_vl(micro_dir, MICRO, TINY)[0].state_dict()
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = fit_base_vl(micro_dir, MICRO, replace(TINY, seed=1))[0].state_dict()
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_answer_questions_returns_vocabulary_strings_for_a_batch(fitted: tuple, micro_dir: Path) -> None:
    model, processor, _ = fitted
    images, questions = _batch(processor, micro_dir)
    answers = answer_questions(model, processor, images, questions, max_new_tokens=3)
    assert len(answers) == len(questions)
    vocab = set(world_vocabulary())
    for a in answers:
        assert isinstance(a, str) and len(a.split()) <= 3
        assert set(a.split()) <= vocab
    single = [answer_questions(model, processor, [im], [q], max_new_tokens=3)[0] for im, q in zip(images, questions)]
    assert single == answers


def test_answer_questions_rejects_mismatched_batch(fitted: tuple) -> None:
    model, processor, _ = fitted
    with pytest.raises(ValueError, match="one image per question"):
        answer_questions(model, processor, [], ["how many objects are there?"])


def test_load_rejects_a_world_whose_cells_are_not_patches(micro_dir: Path) -> None:
    spec = WorldSpec(size="micro", image_size=96)
    with pytest.raises(ValueError, match="cell size is 32 px"):
        load_visual_qa(micro_dir, "train", build_processor(spec), spec)
