"""Frame features and embeddings of any frozen transformers `ClapModel` (LAION-CLAP or the embedded world's).

The front end follows the folder's own `ClapFeatureExtractor` settings (`mel_features`); HTSAT's last
hidden state becomes time-ordered frames (`frames_from_hidden`); everything runs in batches of
`BATCH_SIZE` on a model in eval mode (a model in training mode is refused).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import ClapFeatureExtractor, ClapModel, ClapProcessor

from shared.data.audio_io import resample

BATCH_SIZE = 64


def mel_features(
    processor: ClapProcessor | ClapFeatureExtractor, waves: np.ndarray | Sequence[np.ndarray], sample_rate: int
) -> torch.Tensor:
    """Log-mel inputs (B, C, frames, mels) for HTSAT, following the feature extractor's saved settings.

    Short clips are filled as its `padding` says (the world saves "pad": zeros, since repeating a clip
    would add pulses; laion saves "repeatpad"). Long clips under `rand_trunc` keep their first
    `max_length_s` seconds: laion draws the crop start at random, which a frozen encoder feeding a
    feature cache cannot do, and the head keeps frame t at [t, t+1) * frame_seconds of the clip.
    Under `fusion` (laion's fusion checkpoints) the C = 4 channels are the padded clip's mel four
    times, as laion has it for clips up to `max_length_s`; longer clips are refused, because laion
    picks their fusion chunks at random.
    """
    fe = getattr(processor, "feature_extractor", processor)
    if fe.truncation not in ("rand_trunc", "fusion"):
        raise ValueError(f"feature extractor truncation is {fe.truncation!r}; expected 'rand_trunc' or 'fusion'")
    if isinstance(waves, np.ndarray) and waves.ndim != 2:
        raise ValueError(f"waves has shape {waves.shape}; expected (B, N) mono clips")
    clips = []
    for i, wave in enumerate(waves):
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"waves[{i}] has shape {wave.shape}; expected a 1-D mono clip")
        wave = resample(wave, sample_rate, fe.sampling_rate)
        if wave.shape[0] > fe.nb_max_samples and fe.truncation == "fusion":
            raise ValueError(
                f"waves[{i}] has {wave.shape[0]} samples at {fe.sampling_rate} Hz; expected at most "
                f"{fe.nb_max_samples} ({fe.max_length_s} s) under 'fusion' truncation (window longer clips first)"
            )
        clips.append(wave[:fe.nb_max_samples])
    if not clips:
        raise ValueError("waves is empty; expected at least one clip")
    parts = [
        fe(clips[i:i + BATCH_SIZE], sampling_rate=fe.sampling_rate, truncation=fe.truncation, padding=fe.padding,
           return_tensors="pt")["input_features"]
        for i in range(0, len(clips), BATCH_SIZE)
    ]
    return torch.cat(parts)


def _require_frozen(model: ClapModel) -> None:
    """Refuse a model in training mode: BatchNorm would use batch statistics and dropout would be on."""
    if model.training:
        raise ValueError("model is in training mode; expected a frozen encoder (call model.eval() first)")


def frames_from_hidden(last_hidden_state: torch.Tensor) -> torch.Tensor:
    """HTSAT's (B, C, F, T) last_hidden_state to (B, T, C), averaging the F frequency rows."""
    # HTSAT folds the spectrogram into 4 time chunks stacked along frequency; transformers' encoder
    # unfolds them again, so the last axis is chunk-major time: frame t covers clip_seconds * [t, t+1) / T.
    # (B, C, 1, 16) at spec_size 128 with 4 stages; the tests check the order on shifted sounds.
    if last_hidden_state.ndim != 4:
        raise ValueError(f"last_hidden_state has shape {tuple(last_hidden_state.shape)}; expected (B, C, F, T)")
    return last_hidden_state.mean(dim=2).transpose(1, 2).contiguous()


@torch.no_grad()
def features_from_mels(model: ClapModel, mels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame features (B, T, C) and unit-norm projected embeddings (B, D) of cached mel inputs, batched."""
    _require_frozen(model)
    frames, embeds = [], []
    fusion = model.config.audio_config.enable_fusion
    for i in range(0, len(mels), BATCH_SIZE):
        batch = mels[i:i + BATCH_SIZE]
        # mel_features never makes a "longer" fusion input (see there), so no row takes the fusion branch.
        is_longer = torch.zeros(len(batch), 1, dtype=torch.bool) if fusion else None
        out = model.get_audio_features(input_features=batch, is_longer=is_longer)
        frames.append(frames_from_hidden(out.last_hidden_state))
        embeds.append(out.pooler_output)
    return torch.cat(frames), torch.cat(embeds)


def clap_frame_features(
    model: ClapModel, processor: ClapProcessor | ClapFeatureExtractor, waves: np.ndarray, sample_rate: int
) -> torch.Tensor:
    """Frozen encoder features (B, T, C) in true temporal order for waves (B, N) float32 at sample_rate."""
    return features_from_mels(model, mel_features(processor, waves, sample_rate))[0]


def clap_audio_embeddings(
    model: ClapModel, processor: ClapProcessor | ClapFeatureExtractor, waves: np.ndarray, sample_rate: int
) -> torch.Tensor:
    """Unit-norm pooled audio embeddings (B, D) in the joint audio-text space."""
    return features_from_mels(model, mel_features(processor, waves, sample_rate))[1]


@torch.no_grad()
def clap_text_embeddings(model: ClapModel, processor: ClapProcessor, texts: Sequence[str]) -> torch.Tensor:
    """Unit-norm caption embeddings (B, D) in the joint audio-text space."""
    if not texts:
        raise ValueError("texts is empty; expected at least one caption")
    _require_frozen(model)
    parts = []
    for i in range(0, len(texts), BATCH_SIZE):
        enc = processor.tokenizer(list(texts[i:i + BATCH_SIZE]), padding=True, truncation=True, return_tensors="pt")
        out = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        parts.append(out.pooler_output)
    return torch.cat(parts)
