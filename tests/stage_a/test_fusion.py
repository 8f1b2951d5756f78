"""Gated fusion on a real (tiny) LLaVA: exactness at gate 0 and without audio, per-sample gates."""

import numpy as np
import pytest
import torch

from shared.world.spec import WorldSpec
from shared.world.vl_model import VLModelConfig, build_base_vl, build_processor, format_prompt
from stage_a.fusion import FusionAdapter, FusionConfig, find_decoder_layers, resolve_layers

SPEC = WorldSpec(size="micro")
QUESTIONS = ["what color is the circle?", "how many objects are there?", "where is the red square?"]


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    model = build_base_vl(SPEC, VLModelConfig(vision_dim=32, text_dim=32, vision_layers=1, text_layers=3)).eval()
    model.requires_grad_(False)
    processor = build_processor(SPEC)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in QUESTIONS]
    inputs = processor(images=images, text=[format_prompt(q) for q in QUESTIONS], return_tensors="pt", padding=True)
    return model, inputs


def _adapter(model, trained: bool = True) -> FusionAdapter:
    torch.manual_seed(1)
    adapter = FusionAdapter(model, model.config.text_config.hidden_size, FusionConfig(rank=8, heads=2, layers=(0, 2)))
    if trained:  # stand-in for training: make the zero-initialised output non-zero
        with torch.no_grad():
            for block in adapter.blocks.values():
                block.out.weight.normal_(0, 1.0)
    return adapter


def _audio(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(2)
    return torch.randn(batch, 4, 32), torch.ones(batch, 4, dtype=torch.bool)


def test_gate_zero_and_no_audio_are_bit_identical(base) -> None:
    model, inputs = base
    reference = model(**inputs).logits
    adapter = _adapter(model)
    tokens, mask = _audio(len(QUESTIONS))
    with adapter.audio(tokens, mask, gate=0.0):
        assert torch.equal(model(**inputs).logits, reference)
    with adapter.audio(tokens, torch.zeros_like(mask), gate=1.0):
        assert torch.equal(model(**inputs).logits, reference)
    with adapter.audio(tokens, mask, gate=1.0):
        assert not torch.allclose(model(**inputs).logits, reference)
    assert torch.equal(model(**inputs).logits, reference)  # outside the context: base path
    assert all(not layer._forward_hooks for layer in find_decoder_layers(model))  # hooks live only in the context


def test_zero_initialised_adapter_is_exact_at_gate_one(base) -> None:
    model, inputs = base
    reference = model(**inputs).logits
    adapter = _adapter(model, trained=False)
    with adapter.audio(*_audio(len(QUESTIONS)), gate=1.0):
        assert torch.equal(model(**inputs).logits, reference)


def test_per_sample_gate_and_mixed_batch_match_single_runs(base) -> None:
    model, inputs = base
    adapter = _adapter(model)
    tokens, mask = _audio(len(QUESTIONS))
    gate = torch.tensor([1.0, 0.0, 0.5])
    with adapter.audio(tokens, mask, gate):
        mixed = model(**inputs).logits
    for i in range(len(QUESTIONS)):
        one = {k: v[i:i + 1] for k, v in inputs.items()}
        with adapter.audio(tokens[i:i + 1], mask[i:i + 1], gate[i:i + 1]):
            alone = model(**one).logits
        assert torch.allclose(mixed[i:i + 1], alone, atol=1e-5)
    assert torch.equal(mixed[1], model(**inputs).logits[1])


def test_generate_honours_the_gate(base) -> None:
    model, inputs = base
    reference = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    adapter = _adapter(model)
    with adapter.audio(*_audio(len(QUESTIONS)), gate=0.0):
        assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False), reference)


def test_placement_presets_and_errors(base) -> None:
    model, _ = base
    assert len(find_decoder_layers(model)) == 3
    assert resolve_layers(FusionConfig(placement="early"), 32) == [0, 3, 6]
    assert resolve_layers(FusionConfig(placement="late"), 32) == [21, 24, 27]
    assert resolve_layers(FusionConfig(placement="middle"), 3) == [1]
    assert resolve_layers(FusionConfig(placement="all"), 2) == [0, 1]
    assert resolve_layers(FusionConfig(placement="all", max_blocks=4), 32) == [0, 8, 16, 24]
    with pytest.raises(ValueError, match=r"fusion layers \[5\] are out of range; the LM has 3 layers"):
        resolve_layers(FusionConfig(layers=(1, 5)), 3)
    with pytest.raises(ValueError, match="cannot locate the decoder layers of Linear; searched"):
        find_decoder_layers(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="placement is 'top'"):
        FusionConfig(placement="top")


def test_training_moves_only_the_adapter_and_reaches_every_part(base) -> None:
    """Step 1: only W_out (zero-initialised) gets gradient, since q/k/v act through it; from step 2 all do."""
    model, inputs = base
    frozen = {n: p.clone() for n, p in model.named_parameters()}
    adapter = _adapter(model, trained=False)
    tokens, mask = _audio(len(QUESTIONS))
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-2)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    reached = {}
    for step in range(3):
        opt.zero_grad()
        with adapter.audio(tokens, mask, gate=1.0):
            model(**inputs, labels=labels).loss.backward()
        for name, p in adapter.named_parameters():
            if p.grad is not None and p.grad.abs().sum() > 0:
                reached.setdefault(name, step)
        opt.step()
    names = {n for n, _ in adapter.named_parameters()}
    assert set(reached) == names
    assert {n for n, s in reached.items() if s == 0} == {n for n in names if n.endswith("out.weight")}
    assert all(not p.requires_grad and torch.equal(p, frozen[n]) for n, p in model.named_parameters())
