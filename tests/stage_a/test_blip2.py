"""SAFE around a real tiny BLIP-2 (OPT decoder) loaded with from_pretrained: exact at gate 0 and without audio."""

from pathlib import Path

import numpy as np
import torch
from transformers import AutoProcessor, Blip2ForConditionalGeneration

from stage_a.fusion import FusionConfig
from stage_a.model import BridgeConfig, SafeModel
from stage_a.projector import ProjectorConfig
from stage_a.prompting import build_prompt


def test_blip2_gate_zero_and_no_audio_are_exact(blip2_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(blip2_dir)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    prompts = [build_prompt(processor, "what color is the circle?")] * 2
    inputs = dict(processor(images=images, text=prompts, return_tensors="pt", padding=True))
    base = Blip2ForConditionalGeneration.from_pretrained(blip2_dir).eval()
    reference = base(**inputs).logits
    reference_gen = base.generate(**inputs, max_new_tokens=3, do_sample=False)
    model = SafeModel(Blip2ForConditionalGeneration.from_pretrained(blip2_dir),
                      BridgeConfig(ProjectorConfig(audio_dim=16, hidden_size=32), FusionConfig(placement="late")))
    with torch.no_grad():
        for block in model.fusion.blocks.values():
            block.out.weight.normal_(0, 1.0)
    frames = torch.randn(2, 8, 16)
    assert model.fusion.layer_indices == [2]
    assert torch.equal(model(**inputs).logits, reference)
    assert torch.equal(model(audio_frames=frames, k=4, gate=0.0, **inputs).logits, reference)
    assert torch.equal(model.generate(audio_frames=frames, k=4, gate=0.0, max_new_tokens=3, do_sample=False, **inputs),
                       reference_gen)
    assert not torch.allclose(model(audio_frames=frames, k=4, gate=1.0, **inputs).logits, reference)
