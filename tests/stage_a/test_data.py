"""Stage A data: answer-only labels, cached features, corrupt audio counted and excluded, missing images named."""

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoProcessor

from shared.encoders import build_encoder
from shared.features import FeatureCache
from stage_a.data import IGNORE, Collator, load_split, target_answer


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
    with pytest.raises(ValueError, match="'answers' is empty"):
        target_answer(Sample("y", "q?", (), "visual", "t", "s"))
