"""The embedded world's base VL model: a tiny LLaVA (CLIP tower + Llama LM) with a word-level processor.

It stands in for a pretrained production VLM: built from config (no download), trained by
`shared.world.vl_train`, saved with `save_pretrained` and loaded back exactly like a hub model with
`LlavaForConditionalGeneration.from_pretrained(dir)` and `AutoProcessor.from_pretrained(dir)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from shared.world.questions import ANSWER_SPACE, SYNONYMS
from shared.world.sounds import NUMBER_WORDS
from shared.world.spec import COLORS, COLS, PITCHES, ROWS, SHAPES, SOUND_OF_SHAPE, WorldSpec

PAD, BOS, EOS, UNK, IMAGE = "<pad>", "<s>", "</s>", "<unk>", "<image>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, IMAGE)
# The question comes before the image so every image token can see what is asked: binding
# ("where is the red square?") then becomes a per-token match instead of a conjunctive attention lookup.
PROMPT = "question: {question} " + IMAGE + " answer:"
# The fixed words of the question templates in shared.world.questions and of the prompt.
TEMPLATE_WORDS = (
    "how many objects are there where is the what color shape object a "
    "which comes first or does sound repeat times high low kind of it making visible "
    "question answer then ? : , ."
).split()
PATCH_SIZE = 16
MAX_TEXT_TOKENS = 128


@dataclass
class VLModelConfig:
    """Sizes of the tiny LLaVA: CLIP vision tower, projector and Llama LM."""

    vision_dim: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_dim: int = 128
    text_layers: int = 2
    text_heads: int = 4
    mlp_ratio: int = 2
    max_positions: int = MAX_TEXT_TOKENS


def world_vocabulary() -> list[str]:
    """Every word of every world question and answer (all families, with synonyms), sorted."""
    words: set[str] = set(TEMPLATE_WORDS)
    phrases = [*SHAPES, *COLORS, *ROWS, *COLS, *PITCHES, *SOUND_OF_SHAPE.values(), *NUMBER_WORDS]
    for answers in ANSWER_SPACE.values():
        phrases.extend(answers)
    for canonical, synonyms in SYNONYMS.items():
        phrases.extend((canonical, *synonyms))
    phrases.extend(kind + ("es" if kind.endswith("z") else "s") for kind in SOUND_OF_SHAPE.values())
    phrases.extend(str(n) for n in range(11))
    for phrase in phrases:
        words.update(phrase.lower().split())
    return sorted(words)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the world vocabulary: lowercase, punctuation split, BOS prepended."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in world_vocabulary():
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    core.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="left",
        model_max_length=MAX_TEXT_TOKENS,
    )


def build_processor(spec: WorldSpec) -> LlavaProcessor:
    """LlavaProcessor: CLIP image processor at the world's size (no resize, no crop) + word tokenizer."""
    if spec.image_size % PATCH_SIZE:
        raise ValueError(f"spec.image_size is {spec.image_size}; expected a multiple of the patch size {PATCH_SIZE}")
    side = {"height": spec.image_size, "width": spec.image_size}
    image_processor = CLIPImageProcessorPil(
        do_resize=False, size=side, do_center_crop=False, crop_size=side,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=build_tokenizer(), patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token=IMAGE,
    )


def build_base_vl(spec: WorldSpec, cfg: VLModelConfig) -> LlavaForConditionalGeneration:
    """A randomly initialised tiny LLaVA sized for the world's images and vocabulary."""
    tokenizer = build_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_dim, intermediate_size=cfg.mlp_ratio * cfg.vision_dim,
        num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
        image_size=spec.image_size, patch_size=PATCH_SIZE, projection_dim=cfg.vision_dim,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_dim, intermediate_size=cfg.mlp_ratio * cfg.text_dim,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads, max_position_embeddings=cfg.max_positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_layer=-1, vision_feature_select_strategy="default",
        image_seq_length=(spec.image_size // PATCH_SIZE) ** 2,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def format_prompt(question: str) -> str:
    """The model's prompt for one question; the answer words and EOS follow it."""
    return PROMPT.format(question=question.strip())


def _as_pil(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] == 3 and image.dtype == np.uint8:
        return Image.fromarray(image)
    raise TypeError(f"image is {type(image).__name__}; expected a PIL image or an HxWx3 uint8 array")


@torch.no_grad()
def answer_questions(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    images: Sequence[Image.Image | np.ndarray],
    questions: Sequence[str],
    max_new_tokens: int = 4,
) -> list[str]:
    """Greedy answers for a batch of (image, question) pairs: only the new tokens, specials stripped."""
    if len(images) != len(questions):
        raise ValueError(f"got {len(images)} images and {len(questions)} questions; expected one image per question")
    if not questions:
        return []
    inputs = processor(
        images=[_as_pil(im) for im in images], text=[format_prompt(q) for q in questions],
        return_tensors="pt", padding=True,
    )
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    texts = processor.batch_decode(new_tokens, skip_special_tokens=True)
    return [" ".join(t.split()) for t in texts]
