"""Frozen encoders on real tiny ClapModel / WhisperModel checkpoints saved and reloaded from disk."""

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

from shared.encoders import BothEncoder, ClapEncoder, EncoderSettings, WhisperEncoder
from shared.world.audio_model import build_clap
from shared.world.clap_train import ClapTrainConfig
from shared.world.spec import WorldSpec

SR = 16000


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, processor = build_clap(WorldSpec(size="micro"), ClapTrainConfig())
    path = tmp_path_factory.mktemp("clap")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                           max_source_positions=200, max_target_positions=32, vocab_size=100,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    path = tmp_path_factory.mktemp("whisper")
    WhisperModel(config).save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80, chunk_length=4).save_pretrained(path)
    return path


def _waves() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(0, 0.1, 4 * SR).astype(np.float32), rng.normal(0, 0.1, 2 * SR).astype(np.float32)]


def test_clap_frames_and_mask(clap_dir: Path) -> None:
    enc = ClapEncoder(EncoderSettings(str(clap_dir)))
    frames, mask = enc.encode(_waves(), SR)
    assert frames.shape == (2, 16, enc.dim) and enc.frame_seconds == pytest.approx(0.25)
    assert mask[0].all() and mask[1].sum() == 8
    assert not enc.model.training and not any(p.requires_grad for p in enc.model.parameters())


def test_whisper_frames_and_mask(whisper_dir: Path) -> None:
    enc = WhisperEncoder(EncoderSettings(str(whisper_dir)))
    frames, mask = enc.encode(_waves(), SR)
    assert frames.shape == (2, 200, 32) and enc.frame_seconds == pytest.approx(0.02)
    assert mask[0].all() and mask[1].sum() == 100
    with pytest.raises(ValueError, match="longer than Whisper's 4 s window"):
        enc.encode([np.zeros(5 * SR, dtype=np.float32)], SR)


def test_both_aligns_in_time_on_the_coarser_grid(clap_dir: Path, whisper_dir: Path) -> None:
    clap, whisper = ClapEncoder(EncoderSettings(str(clap_dir))), WhisperEncoder(EncoderSettings(str(whisper_dir)))
    both = BothEncoder(clap, whisper)
    frames, mask = both.encode(_waves(), SR)
    assert frames.shape == (2, 16, clap.dim + 32) and mask[1].sum() == 8
    whisper_frames, _ = whisper.encode(_waves(), SR)
    # Frame j of "both" carries Whisper's frame nearest to the centre of [0.25 j, 0.25 (j + 1)) s.
    assert torch.equal(frames[:, 3, clap.dim:], whisper_frames[:, int(3.5 * 0.25 / 0.02)])


def test_cached_valid_frames_round_trip(clap_dir: Path, tmp_path: Path) -> None:
    from shared.data.audio_io import write_audio
    from shared.features import AudioRef, FeatureCache, pad_frames, valid_frames_encoder, weights_hash

    enc = ClapEncoder(EncoderSettings(str(clap_dir)))
    refs = []
    for i, wave in enumerate(_waves()):
        refs.append(AudioRef(str(write_audio(tmp_path / f"{i}.wav", wave, SR))))
    cache = FeatureCache(tmp_path / "cache", enc.identity, weights_hash(enc.model))
    first = cache.features(refs, valid_frames_encoder(enc, SR))
    again = FeatureCache(tmp_path / "cache", enc.identity, weights_hash(enc.model))
    second = again.features(refs, valid_frames_encoder(enc, SR))
    assert (again.hits, again.misses) == (2, 0)
    frames, mask = pad_frames(second)
    direct, direct_mask = enc.encode(_waves(), SR)
    assert torch.equal(mask, direct_mask)
    assert torch.allclose(frames[mask], direct[direct_mask], atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_clap_front_end_follows_the_saved_padding(clap_dir: Path, tmp_path: Path) -> None:
    """The world's folder zero-pads (its saved padding "pad"); the same model saved with "repeatpad" repeats."""
    import shutil

    from transformers import ClapProcessor

    shutil.copytree(clap_dir, tmp_path / "repeat")
    processor = ClapProcessor.from_pretrained(clap_dir)  # transformers 5 keeps the extractor in processor_config.json
    fe = processor.feature_extractor
    fe.padding = "repeatpad"
    processor.save_pretrained(tmp_path / "repeat")
    world, repeat = ClapEncoder(EncoderSettings(str(clap_dir))), ClapEncoder(EncoderSettings(str(tmp_path / "repeat")))
    sr = fe.sampling_rate  # at the model's own rate, so no resampling edge effects
    short = np.random.default_rng(1).normal(0, 0.1, 2 * sr).astype(np.float32)  # 2 s of a 4 s window
    assert torch.allclose(repeat.encode_frames([short], sr), repeat.encode_frames([np.tile(short, 2)], sr), atol=1e-5)
    zero_padded = np.pad(short, (0, len(short)))
    assert torch.allclose(world.encode_frames([short], sr), world.encode_frames([zero_padded], sr), atol=1e-5)
    assert not torch.allclose(world.encode_frames([short], sr), repeat.encode_frames([short], sr), atol=1e-3)
    assert world.identity != repeat.identity and ":pad:" in world.identity
