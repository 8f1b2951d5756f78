"""The pre-decision features a policy observes: audio-preview statistics and the extractor's shape and masking."""

import numpy as np
import pytest
import torch

from stage_b.policy_features import audio_preview, feature_columns, query_features


def test_audio_preview_statistics() -> None:
    sr = 16000
    t = np.arange(sr) / sr
    duration, rms, zcr, centroid = audio_preview(np.sin(2 * np.pi * 1000 * t).astype(np.float32), sr)
    assert duration == 1.0 and rms == pytest.approx(1 / np.sqrt(2), rel=1e-3)
    assert zcr == pytest.approx(2000 / sr, rel=0.01) and centroid == pytest.approx(1.0, rel=0.02)


def test_question_embedding_ignores_padding_on_either_side() -> None:
    torch.manual_seed(0)
    embeddings = torch.nn.Embedding(10, 4)
    pixels = torch.rand(1, 3, 5, 5)
    tokens = torch.tensor([[3, 4, 5]])
    alone = query_features(embeddings, {"input_ids": tokens, "attention_mask": torch.ones(1, 3),
                                        "pixel_values": pixels}, [[1.0, 0.1, 0.2, 0.3]])
    for ids, mask in (([[0, 0, 3, 4, 5]], [[0, 0, 1, 1, 1]]), ([[3, 4, 5, 0, 0]], [[1, 1, 1, 0, 0]])):
        padded = query_features(embeddings, {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
                                             "pixel_values": pixels}, [[1.0, 0.1, 0.2, 0.3]])
        np.testing.assert_allclose(padded, alone, rtol=0, atol=1e-7)
    assert alone.shape == (1, sum(feature_columns(4).values())) and alone.dtype == np.float32
    np.testing.assert_allclose(alone[0, 4:7], pixels.mean((2, 3))[0].numpy(), atol=1e-7)
    assert alone[0, -4:].tolist() == pytest.approx([1.0, 0.1, 0.2, 0.3])


def test_packed_pixel_values_are_refused_by_name() -> None:
    inputs = {"input_ids": torch.tensor([[1]]), "attention_mask": torch.ones(1, 1), "pixel_values": torch.rand(4, 8)}
    with pytest.raises(ValueError, match=r"pixel_values has shape \(4, 8\)"):
        query_features(torch.nn.Embedding(2, 4), inputs, [[0.0] * 4])
