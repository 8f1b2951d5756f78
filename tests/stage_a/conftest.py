"""Shared fixtures for Stage A tests: tiny LLaVA and BLIP-2 checkpoints with processors, saved like hub models."""

from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    BlipImageProcessorPil,
    OPTConfig,
    PreTrainedTokenizerFast,
)

from shared.world.spec import WorldSpec
from shared.world.vl_model import VLModelConfig, build_base_vl, build_processor, format_prompt

QUERIES = 4
WORDS = ["<pad>", "<s>", "</s>", "<unk>", "question:", "answer:", "what", "color", "is", "the", "circle?"]
IMAGE_TOKEN = len(WORDS)  # Blip2Processor appends "<image>" to the vocabulary


def save_tiny_blip2(path: Path) -> Path:
    """Write model and processor to path; returns path."""
    torch.manual_seed(0)
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")
    processor = Blip2Processor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                               tokenizer=fast, num_query_tokens=QUERIES)
    config = Blip2Config(
        vision_config=Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=16),
        qformer_config=Blip2QFormerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, encoder_hidden_size=32),
        text_config=OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=2,
                              vocab_size=IMAGE_TOKEN + 1, word_embed_proj_dim=32, max_position_embeddings=64,
                              pad_token_id=0, bos_token_id=1, eos_token_id=2),
        num_query_tokens=QUERIES, image_token_index=IMAGE_TOKEN,
    )
    Blip2ForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def blip2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_blip2(tmp_path_factory.mktemp("blip2"))


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaVA (3 LM layers, hidden size 32) with the embedded world's processor."""
    torch.manual_seed(0)
    spec = WorldSpec(size="micro")
    path = tmp_path_factory.mktemp("llava")
    build_base_vl(spec, VLModelConfig(vision_dim=32, text_dim=32, vision_layers=1, text_layers=3)).save_pretrained(path)
    build_processor(spec).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def llava_inputs() -> dict:
    """Two (image, question) pairs processed for the tiny LLaVA."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(2)]
    prompts = [format_prompt(q) for q in ("what color is the circle?", "is the sound high or low?")]
    return dict(build_processor(WorldSpec(size="micro"))(images=images, text=prompts, return_tensors="pt", padding=True))
