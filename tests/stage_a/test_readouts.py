"""Fusion readouts on a fresh micro-world SAFE model whose W_out is non-zero: the hooks' recomputed update is the
blocks' real one, attention is a distribution over the valid audio tokens, token spans follow the projector."""

import pytest
import torch

from shared.config import load_config
from stage_a.config import TrainConfig
from stage_a.readouts import BlockReadout, frame_attention, prompt_readouts, token_spans
from stage_a.setup import build_setup


@pytest.fixture(scope="module")
def setup(micro_paths: dict[str, str]):
    """The micro world's SAFE model with seeded non-zero fusion outputs, so audio changes the LM's states."""
    setup = build_setup(load_config(TrainConfig, "stage_a_micro", micro_paths), splits=("test",))
    torch.manual_seed(3)
    with torch.no_grad():
        for block in setup.model.fusion.blocks.values():
            block.out.weight.normal_(0, 0.5)
    return setup


def _batch(setup, n: int = 6):
    return setup.collator.prompt_batch(setup.test, list(range(n)))


def test_recomputed_update_equals_the_blocks_real_update(setup) -> None:
    batch, readout = _batch(setup), BlockReadout(setup.model)
    gates = torch.tensor([1.0, 0.5, 0.0, 1.0, 0.25, 1.0])
    with readout.capture():
        setup.model(audio_frames=batch.frames, frame_mask=batch.frame_mask, k=8, gate=gates, **batch.inputs)
    assert set(readout.calls) == set(setup.model.fusion.layer_indices)
    assert readout.check() < 1e-5
    for call in readout.calls.values():
        real = call.output - call.hidden
        assert torch.allclose(call.update, real, atol=1e-5)
        assert real[gates > 0].abs().max() > 1e-2  # the audio moves the hidden state: the comparison is not vacuous
        assert torch.equal(call.update[gates == 0], torch.zeros_like(call.update[gates == 0]))
    assert not any(block._forward_hooks for block in readout.blocks.values())  # hooks live only in the context


def test_check_fails_on_an_update_that_differs_from_the_block(setup) -> None:
    batch, readout = _batch(setup), BlockReadout(setup.model)
    with readout.capture():
        setup.model(audio_frames=batch.frames, frame_mask=batch.frame_mask, k=8, gate=1.0, **batch.inputs)
    call = next(iter(readout.calls.values()))
    call.update[0, -1, 0] += 1e-3
    with pytest.raises(RuntimeError, match="recomputed fusion update differs"):
        readout.check()


def test_attention_sums_to_one_over_the_valid_tokens(setup) -> None:
    batch, readout = _batch(setup, 4), BlockReadout(setup.model)
    ks = [2, 8, 5, 8]
    with readout.capture():
        setup.model(audio_frames=batch.frames, frame_mask=batch.frame_mask, k=ks, gate=1.0, **batch.inputs)
    readout.check()
    for call in readout.calls.values():
        for row, k in enumerate(ks):
            attention = call.attention[row]  # (heads, N, max k)
            assert torch.allclose(attention[..., :k].sum(-1), torch.ones(attention.shape[:-1]), atol=1e-6)
            assert torch.equal(attention[..., k:], torch.zeros_like(attention[..., k:]))


def test_prompt_readouts_give_norms_and_answer_attention(setup) -> None:
    batch, readout = _batch(setup), BlockReadout(setup.model)
    logits, blocks = prompt_readouts(setup.model, readout, batch.inputs, batch.frames, batch.frame_mask, k=8)
    assert logits.shape[0] == 6
    for entry in blocks.values():
        assert entry["attention"].shape == (6, 8)
        assert torch.allclose(entry["attention"].sum(-1), torch.ones(6, dtype=entry["attention"].dtype), atol=1e-6)
        assert (entry["norm_answer"] > 0).all() and (entry["norm_prompt"] > 0).all()
    assert readout.residual_scales() == {i: setup.model.bridge_config.fusion.residual_scale
                                         for i in setup.model.fusion.layer_indices}


def test_token_spans_follow_the_projector_segments() -> None:
    assert token_spans(torch.ones(16, dtype=torch.bool), 8, 4.0) == [(j * 0.5, (j + 1) * 0.5) for j in range(8)]
    mask = torch.arange(16) < 10  # 10 valid frames of 0.4 s: segments [0, 2), [2, 5), [5, 7), [7, 10)
    spans = [x for span in token_spans(mask, 4, 4.0) for x in span]
    assert spans == pytest.approx([0.0, 0.8, 0.8, 2.0, 2.0, 2.8, 2.8, 4.0])


def test_frame_attention_spreads_each_token_over_its_frames() -> None:
    per_frame = frame_attention(torch.tensor([0.5, 0.3, 0.2, 0.0]), torch.arange(12) < 10, 4)
    assert per_frame.sum().item() == pytest.approx(1.0)
    assert per_frame[:2].tolist() == pytest.approx([0.25, 0.25]) and per_frame[10:].abs().sum() == 0
