"""What a Stage B policy sees of a question before it decides: one extractor for table rows and raw requests.

`stage_b-outcomes` stores these features for every question of a split (through SafeRunner), and a served
policy computes them for a new request (stage_b.chooser) with the same function, so the two cannot drift:
- the mean LM input embedding over the prompt's real tokens (padding excluded);
- the image's per-channel mean and std of the processor's pixel values;
- audio-preview statistics of the raw wave: duration (s), RMS energy, zero-crossing rate, spectral centroid (kHz).
Nothing here runs the audio encoder or the LM: deciding must stay cheaper than answering.
"""

from __future__ import annotations

import numpy as np
import torch

PREVIEW_COLUMNS = ("audio_duration_s", "audio_rms", "audio_zero_crossing_rate", "audio_centroid_khz")


def audio_preview(wave: np.ndarray, sample_rate: int) -> list[float]:
    """Duration (s), RMS energy, zero-crossing rate and spectral centroid (kHz): cheap, no encoder."""
    spectrum = np.abs(np.fft.rfft(wave))
    freqs = np.fft.rfftfreq(len(wave), 1.0 / sample_rate)
    centroid = float((spectrum * freqs).sum() / max(spectrum.sum(), 1e-12)) / 1000.0
    crossings = float(np.mean(np.abs(np.diff(np.signbit(wave).astype(np.int8))))) if len(wave) > 1 else 0.0
    return [len(wave) / sample_rate, float(np.sqrt(np.mean(wave ** 2))), crossings, centroid]


@torch.no_grad()
def query_features(embeddings: torch.nn.Module, inputs: dict[str, torch.Tensor],
                   previews: list[list[float]]) -> np.ndarray:
    """(B, D) float32 features of a prompt batch (`inputs` from the processor, any padding side) and its previews."""
    mask = inputs["attention_mask"].bool()
    token_embeds = embeddings(inputs["input_ids"]).float()
    question = (token_embeds * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    pixels = inputs["pixel_values"].float()
    if pixels.dim() != 4:
        raise ValueError(f"pixel_values has shape {tuple(pixels.shape)}; the policy features expect (B, C, H, W) "
                         "images (processors that pack patches or tile images are not supported yet)")
    image = torch.cat([pixels.mean((2, 3)), pixels.std((2, 3))], dim=1)
    if len(previews) != question.shape[0]:
        raise ValueError(f"{len(previews)} audio previews for a batch of {question.shape[0]} prompts")
    return np.concatenate([question.cpu().numpy(), image.cpu().numpy(), np.asarray(previews, dtype=np.float64)],
                          axis=1).astype(np.float32)


def feature_columns(embedding_dim: int, channels: int = 3) -> dict[str, int]:
    """The feature groups in column order, with their widths."""
    return {"question_embedding_mean": embedding_dim, "image_channel_mean_std": 2 * channels,
            **dict.fromkeys(PREVIEW_COLUMNS, 1)}
