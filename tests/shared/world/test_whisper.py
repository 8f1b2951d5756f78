"""The world's Whisper: saved and reloaded like a hub Whisper, deterministic, exact fold, incremental build."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoFeatureExtractor, AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

from shared.config import load_config
from shared.encoders import EncoderSettings, WhisperEncoder, build_encoder
from shared.world.audio_model import all_captions
from shared.world.build import RECORD, WorldConfig, build_world, read_record
from shared.world.spec import WorldSpec
from shared.world.whisper_model import StandardizedConv1d, build_whisper, fold_input_standardization, standardize_input
from shared.world.whisper_train import (
    IGNORE,
    WhisperTrainConfig,
    caption_labels,
    _train_loop,
    decode_captions,
    train_whisper,
)
from stage_a.config import TrainConfig
from stage_a.setup import resolve_paths

SR = 16000
MICRO = dict(d_model=16, encoder_layers=1, decoder_layers=1, heads=2, ffn_dim=32, num_mel_bins=16, steps=4,
             batch_size=8)


def _micro_config(**overrides: object) -> WhisperTrainConfig:
    return WhisperTrainConfig(**{**MICRO, **overrides})


def test_micro_world_whisper_loads_like_a_hub_whisper(micro_world: Path) -> None:
    folder = micro_world / "models" / "whisper"
    part = read_record(micro_world)["parts"]["whisper"]
    assert part["captions"]["clips"] == 8 and 0.0 <= part["captions"]["top1"] <= 1.0
    assert json.loads((folder / "whisper_metrics.json").read_text())["captions"] == part["captions"]
    extractor = AutoFeatureExtractor.from_pretrained(folder)
    assert isinstance(extractor, WhisperFeatureExtractor) and extractor.chunk_length == 4
    encoder = WhisperEncoder(EncoderSettings(str(folder)))
    assert encoder.frame_seconds == pytest.approx(0.04) and encoder.dim == 16
    waves = [np.random.default_rng(0).normal(0, 0.1, 4 * SR).astype(np.float32), np.zeros(SR, np.float32)]
    frames, mask = encoder.encode(waves, SR)
    assert frames.shape == (2, 100, 16) and mask.sum(1).tolist() == [100, 25]
    # The saved captioner's encoder is the one Stage A loads (WhisperModel from the same folder).
    captioner = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    features = extractor(waves, sampling_rate=SR, return_tensors="pt")["input_features"]
    with torch.no_grad():
        assert torch.equal(captioner.model.encoder(features).last_hidden_state, frames)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.decode(tokenizer("two high chirps")["input_ids"], skip_special_tokens=True) == "two high chirps"


def test_training_is_deterministic_given_the_seed(micro_world: Path, tmp_path: Path) -> None:
    data, spec = micro_world / "data", WorldSpec(size="micro")
    weights = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train_whisper(data, tmp_path / name, spec, _micro_config(seed=seed))
        weights.append(load_file(str(tmp_path / name / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_standardized_conv_folds_into_an_identical_plain_conv() -> None:
    torch.manual_seed(0)
    model, _, _ = build_whisper(WorldSpec(size="micro"), _micro_config())
    features = 0.7 + 0.1 * torch.randn(6, 16, 200)  # a narrow band far from zero, like the world's log-mels
    standardize_input(model, features)
    conv = model.model.encoder.conv1
    assert isinstance(conv, StandardizedConv1d)
    standardised = (features - features.mean(dim=(0, 2), keepdim=True)) / features.std(dim=(0, 2), keepdim=True)
    # Away from the padded edges it is a plain conv with the same weights on standardised inputs.
    plain_on_standardised = torch.nn.functional.conv1d(standardised, conv.weight, conv.bias, padding=1)
    with torch.no_grad():
        torch.testing.assert_close(conv(features)[..., 1:-1], plain_on_standardised[..., 1:-1])
        before = model.model.encoder(features).last_hidden_state
        fold_input_standardization(model)
        after = model.model.encoder(features).last_hidden_state
    assert type(model.model.encoder.conv1) is torch.nn.Conv1d
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="expected a StandardizedConv1d to fold"):
        fold_input_standardization(model)


def test_captioner_learns_and_constrained_decoding_matches_a_per_clip_search() -> None:
    """Train a micro captioner on synthetic features (one pattern per caption, one- and two-event captions),
    then check the batched constrained decoding against a plain per-clip search over the same candidates."""
    captions = all_captions()[:40:10] + all_captions()[300:340:10]
    assert {len(c.split()) for c in captions} == {3, 7}
    cfg = _micro_config(steps=300, lr=1e-2)
    model, _, tokenizer = build_whisper(WorldSpec(size="micro"), cfg)
    generator = torch.Generator().manual_seed(0)
    index = torch.arange(len(captions)).repeat(4)
    features = 3 * torch.randn(len(captions), 16, 1, generator=generator)[index]
    features = features + 0.3 * torch.randn(len(index), 16, 200, generator=generator)
    labels = caption_labels(tokenizer, captions)
    torch.manual_seed(0)
    _train_loop(model, features, labels[index], cfg)
    model.eval()
    chosen = decode_captions(model, features[:len(captions)], labels)
    assert sum(c == i for i, c in enumerate(chosen)) >= 6  # an untrained captioner ignores its input
    assert {len(captions[c].split()) for c in chosen} == {3, 7}  # rows finish at different steps
    for clip, index in enumerate(chosen):
        prefix, alive = [model.config.decoder_start_token_id], list(range(len(captions)))
        for step in range(labels.shape[1]):
            options = {int(labels[c, step]) for c in alive if labels[c, step] != IGNORE}
            if not options:
                break
            with torch.no_grad():
                logits = model(input_features=features[clip:clip + 1], decoder_input_ids=torch.tensor([prefix])).logits
            best = max(options, key=lambda t: float(logits[0, -1, t]))
            alive = [c for c in alive if labels[c, step] == best]
            prefix.append(best)
        assert alive == [index], clip


def test_caption_outside_the_vocabulary_and_repeated_candidates_are_errors() -> None:
    model, _, tokenizer = build_whisper(WorldSpec(size="micro"), _micro_config())
    with pytest.raises(ValueError, match=r"captions \['two loud chirps'\] have words outside the caption vocabulary"):
        caption_labels(tokenizer, ["two loud chirps"])
    labels = caption_labels(tokenizer, ["one low tone", "two high chirps", "one low tone"])
    with pytest.raises(ValueError, match="labels hold 3 captions but only 2 distinct"):
        decode_captions(model.eval(), torch.zeros(1, 16, 200), labels)


def test_bad_recipe_and_front_end_name_the_field() -> None:
    with pytest.raises(ValueError, match="d_model 16 is not divisible by heads 3"):
        _micro_config(heads=3)
    with pytest.raises(ValueError, match="hop_seconds is 0.03; expected a hop that divides"):
        build_whisper(WorldSpec(size="micro"), _micro_config(hop_seconds=0.03))


def test_an_existing_world_gains_the_whisper_alone(micro_world: Path, tmp_path: Path) -> None:
    world = tmp_path / "world"
    shutil.copytree(micro_world, world)
    record = read_record(world)
    del record["parts"]["whisper"]
    (world / RECORD).write_text(json.dumps(record), encoding="utf-8")
    shutil.rmtree(world / "models" / "whisper")
    kept = {p: (world / "models" / p / "model.safetensors").stat().st_mtime_ns for p in ("vl", "clap")}
    config = load_config(WorldConfig, "world_micro")
    build_world(config, world)
    after = read_record(world)
    assert after["last_build_parts"] == ["whisper"]
    assert {p: after["parts"][p] for p in ("data", "vl", "clap")} == {p: record["parts"][p] for p in ("data", "vl", "clap")}
    assert kept == {p: (world / "models" / p / "model.safetensors").stat().st_mtime_ns for p in ("vl", "clap")}
    assert load_file(str(world / "models" / "whisper" / "model.safetensors")).keys()
    # A changed whisper recipe rebuilds the whisper and nothing else.
    build_world(load_config(WorldConfig, "world_micro", {"whisper.seed": 1}), world)
    assert read_record(world)["last_build_parts"] == ["whisper"]


def test_stage_a_defaults_to_the_world_whisper(micro_world: Path, micro_paths: dict[str, str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFE_WORLD_DIR", str(micro_world))
    overrides = {k: v for k, v in micro_paths.items() if k != "model.clap"}
    for kind, expected in (("whisper", {"whisper"}), ("both", {"whisper", "clap"}), ("clap", {"clap"})):
        cfg = load_config(TrainConfig, "stage_a_micro", {**overrides, "model.audio_encoder": kind})
        paths = resolve_paths(cfg)
        models = micro_world / "models"
        assert {k for k in ("clap", "whisper") if paths[k]} == expected
        assert all(paths[k] == str(models / k) for k in expected)
    encoder = build_encoder("both", paths["clap"], str(micro_world / "models" / "whisper"))
    assert encoder.dim == 16 + build_encoder("clap", paths["clap"], None).dim
