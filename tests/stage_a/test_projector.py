"""Audio projector: one set of weights for every k, temporal tokens, exact masking."""

import pytest
import torch

from stage_a.projector import AudioProjector, ProjectorConfig, segment_weights


@pytest.fixture
def projector() -> AudioProjector:
    torch.manual_seed(0)
    return AudioProjector(ProjectorConfig(audio_dim=12, hidden_size=20, k_max=16, depth=3)).eval()


def test_same_weights_serve_every_k(projector: AudioProjector) -> None:
    frames = torch.randn(2, 16, 12)
    for k in (1, 4, 8, 16):
        tokens, mask = projector(frames, k)
        assert tokens.shape == (2, k, 20) and mask.all()


def test_tokens_follow_temporal_order(projector: AudioProjector) -> None:
    frames = torch.randn(1, 16, 12)
    reversed_frames = frames.flip(1)
    for k in (4, 8, 16):
        assert not torch.allclose(projector(frames, k)[0], projector(reversed_frames, k)[0])
    # A single pooled token cannot tell the order apart.
    assert torch.allclose(projector(frames, 1)[0], projector(reversed_frames, 1)[0], atol=1e-6)


def test_padded_frames_contribute_exactly_zero(projector: AudioProjector) -> None:
    frames = torch.randn(1, 10, 12)
    padded = torch.cat([frames, torch.full((1, 6, 12), float("nan"))], dim=1)
    mask = torch.tensor([[True] * 10 + [False] * 6])
    for k in (4, 8, 16):
        assert torch.equal(projector(frames, k)[0], projector(padded, k, mask)[0])


def test_clip_without_frames_gives_zero_tokens_and_false_mask(projector: AudioProjector) -> None:
    tokens, mask = projector(torch.randn(2, 8, 12), 4, torch.tensor([[True] * 8, [False] * 8]))
    assert mask[0].all() and not mask[1].any()
    assert torch.equal(tokens[1], torch.zeros(4, 20))


def test_segments_cover_valid_frames_evenly() -> None:
    w = segment_weights(torch.tensor([[True] * 8 + [False] * 2]), 4)
    assert torch.allclose(w.sum(-1), torch.ones(1, 4, dtype=w.dtype))
    assert torch.equal(w[0, :, 8:], torch.zeros(4, 2, dtype=w.dtype))
    assert (w[0] > 0).sum(-1).tolist() == [2, 2, 2, 2]
    # Fewer frames than tokens: no empty segment.
    short = segment_weights(torch.tensor([[True] * 3]), 8)
    assert ((short[0] > 0).sum(-1) >= 1).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 1}, "depth is 1; expected 2 to 5"),
    ({"depth": 6}, "depth is 6; expected 2 to 5"),
    ({"k_max": 0}, "k_max is 0"),
])
def test_bad_config_is_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProjectorConfig(audio_dim=4, hidden_size=4, **kwargs)


def test_bad_inputs_are_rejected(projector: AudioProjector) -> None:
    with pytest.raises(ValueError, match="k is 17; expected 1 to k_max=16"):
        projector(torch.randn(1, 8, 12), 17)
    with pytest.raises(ValueError, match=r"expected \(batch, time, 12\)"):
        projector(torch.randn(1, 8, 5), 4)
    with pytest.raises(ValueError, match="valid frames first"):
        projector(torch.randn(1, 4, 12), 2, torch.tensor([[False, True, True, True]]))


def test_depth_sets_number_of_linear_layers() -> None:
    for depth in (2, 5):
        proj = AudioProjector(ProjectorConfig(audio_dim=4, hidden_size=8, depth=depth))
        assert sum(isinstance(m, torch.nn.Linear) for m in proj.mlp) == depth
