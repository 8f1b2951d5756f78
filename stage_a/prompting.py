"""Prompts in each base model's own convention, and a sample image its processor accepts."""

from __future__ import annotations

import numpy as np
from PIL import Image
from transformers import Blip2Processor

from shared.world.vl_model import format_prompt


def build_prompt(processor, question: str) -> str:
    """The prompt in the model's own convention:

    - BLIP-2 (whose processor inserts the query tokens itself): "Question: … Answer:";
    - chat template (LLaVA-1.5 and most hub VLMs): a user turn with an image and the question;
    - no template but an image token (the embedded world's LLaVA): "question: … <image> answer:".
    """
    if isinstance(processor, Blip2Processor):
        return f"Question: {question} Answer:"
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    if getattr(processor, "image_token", None) is None:
        raise ValueError(f"{type(processor).__name__} has no chat template and no image token; "
                         "expected a LLaVA-style or BLIP-2 processor")
    return format_prompt(question)


def sample_image(processor, seed: int = 0) -> Image.Image:
    """A random RGB image at the size the image processor expects."""
    size = processor.image_processor.size  # a dict or transformers' SizeDict; both have .get
    edge = size.get("shortest_edge")
    height, width = size.get("height") or edge or 224, size.get("width") or edge or 224
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)
