"""Shared fixtures for Stage A tests: a tiny BLIP-2 (OPT decoder) and processor saved like a hub checkpoint."""

from pathlib import Path

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
