"""Prompts in each base model's own convention, and model inputs for every modality mix.

Rows without an image follow `no_image_policy`: "text_only" where the prompt's image placeholder
marks where images go (a row without one simply has no image, and the model runs text-only rows
in a batch mixed with image rows); "blank_image" where the processor inserts image tokens into
every row itself (BLIP-2, PaliGemma), so every row needs an image: such rows get `blank_image`,
a constant mid-grey (RGB 128, 128, 128) image at the processor's size.

`unbatchable_images` runs images through the same `model_inputs` a batch takes, each beside
`blank_image`, so a split never holds an image its processor cannot batch: e.g. the embedded
world's LLaVA processor neither resizes nor crops (do_resize=False, do_center_crop=False), so it
keeps every image at its own size and cannot stack a 1x1 (or any non-48x48) image beside a 48x48 one.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from transformers import Blip2Processor, InstructBlipProcessor, PaliGemmaProcessor

from shared.world.vl_model import PROMPT

POLICIES = ("text_only", "blank_image")
BLANK_RGB = (128, 128, 128)
# Processors that put image tokens into every row themselves, with their plain-text prompt.
_SELF_PLACING = {Blip2Processor: "Question: {question} Answer:", InstructBlipProcessor: "Question: {question} Answer:",
                 PaliGemmaProcessor: "{image}answer en {question}"}
# What processors raise on images they cannot take (ragged pixel arrays, extreme aspect ratios, ...).
PROCESSOR_ERRORS = (ValueError, TypeError, RuntimeError, IndexError)
PROBE_CHUNK = 16  # image sizes per probing call; a failing chunk is probed size by size


def _self_placing_template(processor) -> str | None:
    return next((t for cls, t in _SELF_PLACING.items() if isinstance(processor, cls)), None)


def build_prompt(processor, question: str, image: bool = True) -> str:
    """The prompt in the model's own convention; image=False gives its text-only prompt (no image placeholder).

    - processors that insert image tokens themselves: BLIP-2 "Question: … Answer:", PaliGemma "<image>answer en …"
      (the same text with or without an image: they always take one, see `no_image_policy`);
    - chat template (LLaVA-1.5, Qwen2-VL, Idefics3, Gemma3, most hub VLMs): a user turn with the image and question;
    - no template but an image token (the embedded world's LLaVA): "question: … <image> answer:".
    """
    question = question.strip()
    template = _self_placing_template(processor)
    if template is not None:
        return template.format(image=getattr(processor, "image_token", ""), question=question)
    if getattr(processor, "chat_template", None):
        content = [{"type": "image"}] if image else []
        messages = [{"role": "user", "content": [*content, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    image_token = getattr(processor, "image_token", None)
    if image_token is None:
        raise ValueError(f"{type(processor).__name__} has no chat template and no image token; "
                         "expected a processor with a chat template, an image token, or one of "
                         f"{[c.__name__ for c in _SELF_PLACING]}")
    prompt = PROMPT.format(question=question)
    return prompt if image else " ".join(prompt.replace(image_token, " ").split())


def no_image_policy(processor) -> str:
    """"text_only" if rows without an image can run text-only beside image rows, else "blank_image"."""
    return "blank_image" if _self_placing_template(processor) is not None else "text_only"


def _image_size(processor) -> tuple[int, int]:
    """(height, width) of an image the processor takes without resizing it much, for every family.

    Qwen2-VL-style processors (a merge_size) read size["shortest_edge"] as a minimum pixel count: the
    side is the smallest multiple of patch_size × merge_size holding that many pixels.
    """
    image_processor = processor.image_processor
    size = image_processor.size  # a dict or transformers' SizeDict; both have .get
    if getattr(image_processor, "merge_size", None) and size.get("shortest_edge"):
        factor = image_processor.patch_size * image_processor.merge_size
        side = math.ceil(math.sqrt(size["shortest_edge"]) / factor) * factor
        return side, side
    tile = getattr(image_processor, "max_image_size", None) or {}
    edge = size.get("shortest_edge") or tile.get("longest_edge") or size.get("longest_edge") or 224
    return size.get("height") or edge, size.get("width") or edge


def blank_image(processor) -> Image.Image:
    """The image given to rows without one under the "blank_image" policy: constant RGB 128 grey."""
    height, width = _image_size(processor)
    return Image.new("RGB", (width, height), BLANK_RGB)


def sample_image(processor, seed: int = 0) -> Image.Image:
    """A random RGB image at the size the image processor expects."""
    height, width = _image_size(processor)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def model_inputs(processor, texts: list[str], images: list[Image.Image | None], padding_side: str,
                 answers: list[str] | None = None) -> dict:
    """The processor's tensors for one batch, images nested per sample (flat-list processors flatten them).

    Rows whose image is None follow `no_image_policy`: "text_only" rows must carry a prompt built with
    image=False; "blank_image" rows get `blank_image`. With `answers` (training), each row is its prompt followed
    by its answer and EOS as the model is trained: PaliGemma's answer is its causal suffix (after the prompt's
    "\n" separator, token_type_ids 1), elsewhere "<prompt> <answer><eos>". Labels the processor adds on its own
    (PaliGemma) are dropped: the caller builds its own.
    """
    if len(texts) != len(images) or (answers is not None and len(answers) != len(texts)):
        raise ValueError(f"model_inputs got {len(texts)} texts, {len(images)} images and "
                         f"{'no' if answers is None else len(answers)} answers; expected one image (or None) "
                         "and, when given, one answer per text")
    policy = no_image_policy(processor)
    if policy == "blank_image":
        images = [blank_image(processor) if image is None else image for image in images]
    nested = [[image] if image is not None else [] for image in images]
    extra = {}
    if answers is not None and isinstance(processor, PaliGemmaProcessor):
        extra["suffix"] = answers  # the processor appends EOS and marks the suffix in token_type_ids
    elif answers is not None:
        eos = getattr(processor, "tokenizer", processor).eos_token or ""
        texts = [f"{text} {answer}{eos}" for text, answer in zip(texts, answers)]
    inputs = processor(text=texts, images=nested if any(nested) else None, return_tensors="pt", padding=True,
                       padding_side=padding_side, **extra)
    inputs.pop("labels", None)
    return dict(inputs)


def unbatchable_images(processor, images: dict[str, Image.Image]) -> dict[str, str]:
    """{path: reason} for the RGB images the processor cannot batch beside an image of its own size (`blank_image`).

    Whether a processor can batch an image depends on its size, not its pixels, so one image per distinct size is
    probed: PROBE_CHUNK sizes at a time, each chunk beside the reference, and one by one when a chunk fails.
    """
    reference, prompt = blank_image(processor), build_prompt(processor, "what is shown?")

    def failure(chunk: list[Image.Image]) -> str | None:
        try:
            model_inputs(processor, [prompt] * (len(chunk) + 1), [reference, *chunk], "right")
        except PROCESSOR_ERRORS as err:
            return f"{type(err).__name__}: {' '.join(str(err).split())}"
        return None

    by_size: dict[tuple[int, int], list[str]] = {}
    for path, image in images.items():
        by_size.setdefault(image.size, []).append(path)
    sizes, bad = list(by_size), {}
    for start in range(0, len(sizes), PROBE_CHUNK):
        chunk = {size: images[by_size[size][0]] for size in sizes[start: start + PROBE_CHUNK]}
        if failure(list(chunk.values())) is None:
            continue
        for (width, height), image in chunk.items():
            reason = failure([image])
            if reason:
                bad |= {path: f"{width}x{height} px beside the processor's {reference.width}x{reference.height} "
                              f"image: {reason}" for path in by_size[width, height]}
    return bad
