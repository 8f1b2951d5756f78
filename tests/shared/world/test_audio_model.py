"""The world's audio encoder: tokenizer, processor, training, saving, reloading and frame features."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import ClapModel, ClapProcessor, ClapTextConfig

from shared.clap_features import clap_audio_embeddings, clap_frame_features, mel_features
from shared.data.audio_io import load_audio
from shared.world.audio_model import SPECIAL_TOKENS, all_captions, build_clap, build_tokenizer, caption_events
from shared.corruptions import snr_db
from shared.world.clap_train import (ClapTrainConfig, fit_clap, mixed_mels, mixture_snr, mixture_wave,
                                      retrieval_metrics, save_clap, train_clap)
from shared.world.generate import generate_split, read_scenes
from shared.world.scenes import Scene
from shared.world.sounds import caption
from shared.world.spec import WorldSpec

SPEC = WorldSpec(size="micro")
TINY = ClapTrainConfig(
    audio_dim=8, audio_heads=(1, 1, 2, 2), text_dim=16, text_layers=1, text_heads=2, projection_dim=16,
    steps=3, batch_size=8, warmup_steps=1,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world") / "data"
    for split in ("train", "test"):
        generate_split(SPEC, split, root)
    return root


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("models") / "clap"
    return train_clap(data_dir, out, SPEC, TINY), out


def _pulses(sample_rate: int, seconds: float, starts: list[float], freq: float = 1000.0) -> np.ndarray:
    """Quiet noise with 0.12 s tone pulses at the given start times."""
    rng = np.random.default_rng(0)
    wave = 0.01 * rng.standard_normal(int(seconds * sample_rate))
    t = np.arange(int(0.12 * sample_rate)) / sample_rate
    for start in starts:
        i = int(start * sample_rate)
        wave[i:i + len(t)] += 0.8 * np.sin(2 * np.pi * freq * t)
    return wave.astype(np.float32)


def test_tokenizer_uses_roberta_special_ids_and_covers_every_caption(data_dir: Path) -> None:
    tok = build_tokenizer()
    text_defaults = ClapTextConfig()
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert (text_defaults.bos_token_id, text_defaults.pad_token_id, text_defaults.eos_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens(list(range(4))) == list(SPECIAL_TOKENS)
    world_captions = {s["caption"] for split in ("train", "test") for s in read_scenes(data_dir, split)}
    assert world_captions <= set(all_captions())
    for text in all_captions():
        ids = tok(text).input_ids
        assert ids[0] == 0 and ids[-1] == 2
        assert tok.unk_token_id not in ids, text
        assert len(ids) == len(text.split()) + 2
    assert tok("two low whistles").input_ids[3] == tok.unk_token_id
    padded = tok(["one low tone", "two low tones then one high buzz"], padding=True).input_ids
    assert padded[0][5:] == [tok.pad_token_id] * 4


def test_caption_grammar_inverts_the_generator() -> None:
    events = caption_events()
    assert len(events) == 30 + 6 * 10 * 10
    for text, seq in events.items():
        assert caption(Scene("test", 0, (), seq, 0.0)) == text


def test_retrieval_metrics_score_each_attribute() -> None:
    metrics = retrieval_metrics(
        ["two low tones", "one high buzz then three low tones", "one high chirp"],
        ["three low tones", "one high buzz then three low tones", "one low buzz then one high chirp"],
    )
    assert metrics == {"top1": 0.3333, "kind": 0.6667, "pitch": 0.6667, "repeats": 0.3333, "num_events": 0.6667}
    with pytest.raises(ValueError, match="grammar"):
        retrieval_metrics(["one loud tone"], ["one low tone"])


def test_training_runs_and_saves_a_hub_style_directory(trained: tuple[dict, Path]) -> None:
    metrics, out = trained
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    retrieval = metrics["retrieval"]
    assert retrieval["clips"] == SPEC.splits["test"] and retrieval["candidates"] >= 1
    for key in ("top1", "kind", "pitch", "repeats", "num_events"):
        assert 0.0 <= retrieval[key] <= 1.0
    assert metrics["params"] == sum(p.numel() for p in ClapModel.from_pretrained(out).parameters())
    assert metrics["train_seconds"] >= 0 and np.isfinite(metrics["final_loss"])


def test_reloaded_model_gives_bit_identical_embeddings(data_dir: Path, tmp_path: Path) -> None:
    model, processor, info = fit_clap(data_dir, SPEC, TINY)
    save_clap(model, processor, tmp_path / "clap", info)
    waves = np.stack([load_audio(s["audio"], SPEC.sample_rate) for s in read_scenes(data_dir, "test")])
    reloaded = ClapModel.from_pretrained(tmp_path / "clap")
    reprocessor = ClapProcessor.from_pretrained(tmp_path / "clap")
    assert not reloaded.training
    before = clap_audio_embeddings(model, processor, waves, SPEC.sample_rate)
    after = clap_audio_embeddings(reloaded, reprocessor, waves, SPEC.sample_rate)
    assert before.shape == (len(waves), TINY.projection_dim)
    assert torch.equal(before, after)
    assert reprocessor.tokenizer("three high chirps").input_ids == processor.tokenizer("three high chirps").input_ids


def test_same_seed_gives_identical_weights_and_another_seed_does_not(data_dir: Path) -> None:
    first = fit_clap(data_dir, SPEC, TINY)[0].state_dict()
    second = fit_clap(data_dir, SPEC, TINY)[0].state_dict()
    other = fit_clap(data_dir, SPEC, dataclasses.replace(TINY, seed=1))[0].state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_mixtures_hold_other_clips_at_the_drawn_snr(data_dir: Path) -> None:
    cfg = dataclasses.replace(TINY, mix_copies=2, mix_snr_db=(-5.0, 10.0))
    keys = [s["audio"] for s in read_scenes(data_dir, "train")]
    load = lambda key: load_audio(key, SPEC.sample_rate)  # noqa: E731
    snrs = {(key, copy): mixture_snr(key, copy, cfg) for key in keys for copy in range(2)}
    assert all(-5.0 <= v <= 10.0 for v in snrs.values()) and len(set(snrs.values())) > len(keys)
    for key in keys[:4]:
        clean = load(key)
        for copy in range(2):
            mix = mixture_wave(key, copy, keys, load, SPEC.sample_rate, cfg)
            assert abs(snr_db(clean, mix.astype(np.float64) - clean) - snrs[(key, copy)]) < 0.01
        assert np.array_equal(mix, mixture_wave(key, 1, keys, load, SPEC.sample_rate, cfg))
        assert not np.array_equal(mix, mixture_wave(key, 0, keys, load, SPEC.sample_rate, cfg))


def test_mixture_training_adds_the_mixtures_to_the_pool(data_dir: Path) -> None:
    mixing = dataclasses.replace(TINY, mix_copies=1)
    model, processor, info = fit_clap(data_dir, SPEC, mixing)
    scenes = read_scenes(data_dir, "train")
    assert info["mixtures"] == info["train_clips"] == len(scenes)
    mixed = mixed_mels(processor, scenes, SPEC.sample_rate, mixing)
    keys = [s["audio"] for s in scenes]
    load = lambda key: load_audio(key, SPEC.sample_rate)  # noqa: E731
    assert mixed.shape[0] == len(scenes)
    for j in (0, len(keys) - 1):
        expected = mel_features(processor, [mixture_wave(keys[j], 0, keys, load, SPEC.sample_rate, mixing)],
                                SPEC.sample_rate)[0]
        assert torch.equal(mixed[j], expected)
        assert not torch.equal(expected, mel_features(processor, [load(keys[j])], SPEC.sample_rate)[0])
    clean = fit_clap(data_dir, SPEC, TINY)[0].state_dict()
    assert not all(torch.equal(clean[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("bad", [{"mix_copies": -1}, {"mix_snr_db": (10.0, 0.0)}, {"mix_snr_db": (0.0, float("inf"))}])
def test_bad_mixture_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match=f"clap.{next(iter(bad))}"):
        ClapTrainConfig(**bad)


def test_frame_features_keep_time_in_order(trained: tuple[dict, Path]) -> None:
    out = trained[1]
    model, processor = ClapModel.from_pretrained(out), ClapProcessor.from_pretrained(out)
    sr = SPEC.sample_rate
    early = _pulses(sr, SPEC.clip_seconds, [0.2, 0.5, 0.8, 1.1])
    late = _pulses(sr, SPEC.clip_seconds, [2.2, 2.5, 2.8, 3.1])
    quiet = _pulses(sr, SPEC.clip_seconds, [])
    frames = clap_frame_features(model, processor, np.stack([early, late, quiet]), sr)
    assert frames.shape == (3, 16, model.config.audio_config.hidden_size)
    half = frames.shape[1] // 2
    change_early = (frames[0] - frames[2]).norm(dim=-1)
    change_late = (frames[1] - frames[2]).norm(dim=-1)
    assert change_early[:half].sum() > change_early[half:].sum()
    assert change_late[half:].sum() > change_late[:half].sum()
    assert int(change_early.argmax()) < half <= int(change_late.argmax())
    # The late pulses are the early ones 2 s later: the response moves by 2 s worth of frames.
    frame_seconds = SPEC.clip_seconds / frames.shape[1]
    position = torch.arange(frames.shape[1], dtype=torch.float32)
    early_mass = (change_early - change_early.median()).clamp(min=0)
    late_mass = (change_late - change_late.median()).clamp(min=0)
    shift = (late_mass @ position) / late_mass.sum() - (early_mass @ position) / early_mass.sum()
    assert abs(float(shift) * frame_seconds - 2.0) < frame_seconds


def test_short_clips_are_zero_padded_never_repeated(trained: tuple[dict, Path]) -> None:
    processor = ClapProcessor.from_pretrained(trained[1])
    fe = processor.feature_extractor
    assert (fe.padding, fe.truncation, fe.sampling_rate) == ("pad", "rand_trunc", SPEC.sample_rate)
    sr = SPEC.sample_rate
    short = _pulses(sr, 1.0, [0.2, 0.5])
    padded = np.pad(short, (0, int(SPEC.clip_seconds * sr) - len(short)))
    mels = mel_features(processor, [short, padded], sr)
    assert torch.equal(mels[0], mels[1])
    repeated = fe([short], sampling_rate=sr, padding="repeatpad", return_tensors="pt")["input_features"][0]
    assert not torch.allclose(mels[0], repeated)
    tail = mels[0, 0, mels.shape[2] // 2:]
    assert float(tail.max() - tail.min()) == 0.0
    longer = np.concatenate([padded, np.ones(sr, np.float32)])  # rand_trunc keeps a long clip's head, always
    assert torch.equal(mel_features(processor, [longer], sr)[0], mels[1])


def test_build_clap_rejects_mismatched_stage_settings() -> None:
    with pytest.raises(ValueError, match="audio_heads"):
        build_clap(SPEC, dataclasses.replace(TINY, audio_heads=(1, 1)))
