"""Prefix fusion: audio tokens spliced into the input embeddings of real tiny LLaVA and BLIP-2 models."""

from pathlib import Path

import pytest
import torch
from transformers import Blip2ForConditionalGeneration, Blip2Processor, LlavaForConditionalGeneration

from stage_a.fusion import FusionConfig
from stage_a.model import BridgeConfig, SafeModel
from stage_a.prefix import splice_ids
from stage_a.projector import ProjectorConfig
from stage_a.prompting import build_prompt, sample_image

GEN = {"max_new_tokens": 3, "do_sample": False}


def _prefix(base: torch.nn.Module) -> SafeModel:
    torch.manual_seed(5)
    bridge = BridgeConfig(ProjectorConfig(audio_dim=24, hidden_size=32, k_max=16), FusionConfig(mode="prefix"))
    return SafeModel(base, bridge)


def test_splice_places_k_slots_before_the_first_image_token() -> None:
    ids = torch.tensor([[0, 5, 9, 9, 6], [4, 5, 6, 9, 9]])
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    new_ids, new_mask, slots = splice_ids(ids, mask, 2, image_id=9)
    assert new_ids.tolist() == [[0, 5, 0, 0, 9, 9, 6], [4, 5, 6, 0, 0, 9, 9]]
    assert new_mask.tolist() == [[0, 1, 1, 1, 1, 1, 1], [1] * 7]
    assert slots.sum(1).tolist() == [2, 2] and slots[0, 2:4].all() and slots[1, 3:5].all()
    text_only, _, slots = splice_ids(ids, mask, 1, image_id=None)
    assert text_only[0].tolist() == [0, 0, 5, 9, 9, 6] and slots[0, 1]  # first attended position


def test_no_audio_and_gate_zero_equal_base_and_audio_changes_logits(llava_dir: Path, llava_inputs: dict) -> None:
    model = _prefix(LlavaForConditionalGeneration.from_pretrained(llava_dir))
    reference = LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()
    ref_logits, ref_tokens = reference(**llava_inputs).logits, reference.generate(**llava_inputs, **GEN)
    frames = torch.randn(2, 16, 24)
    assert torch.equal(model(**llava_inputs).logits, ref_logits)
    assert torch.equal(model(audio_frames=frames, gate=0.0, **llava_inputs).logits, ref_logits)
    assert torch.equal(model.generate(audio_frames=frames, gate=0.0, **llava_inputs, **GEN), ref_tokens)
    with_audio = model(audio_frames=frames, k=4, **llava_inputs).logits
    assert with_audio.shape == ref_logits.shape and not torch.allclose(with_audio, ref_logits)
    assert model.generate(audio_frames=frames, k=4, **llava_inputs, **GEN).shape[1] == ref_tokens.shape[1]


def test_mixed_batch_equals_per_sample_runs(llava_dir: Path, llava_inputs: dict) -> None:
    model = _prefix(LlavaForConditionalGeneration.from_pretrained(llava_dir))
    frames, gate = torch.randn(2, 16, 24), torch.tensor([0.0, 0.7])
    mixed = model(audio_frames=frames, k=8, gate=gate, **llava_inputs).logits
    for row in range(2):
        alone = {k: v[row:row + 1] for k, v in llava_inputs.items()}
        single = model(audio_frames=frames[row:row + 1], k=8, gate=gate[row:row + 1], **alone).logits
        torch.testing.assert_close(mixed[row:row + 1], single, rtol=1e-5, atol=1e-5)
    generated = model.generate(audio_frames=frames, k=8, gate=gate, **llava_inputs, **GEN)
    alone = {k: v[1:] for k, v in llava_inputs.items()}
    assert torch.equal(generated[1:], model.generate(audio_frames=frames[1:], k=8, gate=gate[1:], **alone, **GEN))


def test_projector_learns_through_the_spliced_tokens(llava_dir: Path, llava_inputs: dict) -> None:
    model = _prefix(LlavaForConditionalGeneration.from_pretrained(llava_dir))
    model(audio_frames=torch.randn(2, 16, 24), k=4, **llava_inputs).logits[:, -1].logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())
    assert all(p.grad is None for p in model.base.parameters())
    with pytest.raises(ValueError, match="does not take labels"):
        model(audio_frames=torch.randn(2, 16, 24), labels=llava_inputs["input_ids"], **llava_inputs)


def test_prefix_on_blip2_and_save_reload(blip2_dir: Path, tmp_path: Path) -> None:
    processor = Blip2Processor.from_pretrained(blip2_dir)
    inputs = dict(processor(images=[sample_image(processor, i) for i in range(2)],
                            text=[build_prompt(processor, "what color is the circle?")] * 2, return_tensors="pt"))
    model = _prefix(Blip2ForConditionalGeneration.from_pretrained(blip2_dir))
    reference = Blip2ForConditionalGeneration.from_pretrained(blip2_dir).eval()
    frames = torch.randn(2, 10, 24)
    assert torch.equal(model(audio_frames=frames, gate=0.0, **inputs).logits, reference(**inputs).logits)
    assert torch.equal(model.generate(**inputs, **GEN), reference.generate(**inputs, **GEN))
    with_audio = model(audio_frames=frames, k=4, **inputs).logits
    assert with_audio.shape == reference(**inputs).logits.shape
    fresh = SafeModel.from_bridge(Blip2ForConditionalGeneration.from_pretrained(blip2_dir), model.save_bridge(tmp_path / "b"))
    assert fresh.bridge_config.fusion.mode == "prefix"
    assert torch.equal(fresh(audio_frames=frames, k=4, **inputs).logits, with_audio)
    assert torch.equal(fresh.generate(audio_frames=frames, k=4, **inputs, **GEN),
                       model.generate(audio_frames=frames, k=4, **inputs, **GEN))
