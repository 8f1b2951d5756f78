"""SAFE around a real tiny BLIP-2 (OPT decoder) saved and reloaded with from_pretrained: exact at gate 0."""

from pathlib import Path

import pytest
import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    OPTConfig,
)

from stage_a.fusion import FusionConfig
from stage_a.model import BridgeConfig, SafeModel
from stage_a.projector import ProjectorConfig

IMAGE_TOKEN, QUERIES = 99, 4


@pytest.fixture(scope="module")
def blip2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = Blip2Config(
        vision_config=Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=16),
        qformer_config=Blip2QFormerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, encoder_hidden_size=32),
        text_config=OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=2,
                              vocab_size=100, word_embed_proj_dim=32, max_position_embeddings=64),
        num_query_tokens=QUERIES, image_token_index=IMAGE_TOKEN,
    )
    path = tmp_path_factory.mktemp("blip2")
    Blip2ForConditionalGeneration(config).save_pretrained(path)
    return path


def test_blip2_gate_zero_and_no_audio_are_exact(blip2_dir: Path) -> None:
    torch.manual_seed(1)
    inputs = {
        "pixel_values": torch.randn(2, 3, 32, 32),
        "input_ids": torch.cat([torch.full((2, QUERIES), IMAGE_TOKEN), torch.randint(3, 90, (2, 6))], dim=1),
    }
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
