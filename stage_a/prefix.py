"""Prefix fusion, kept for comparison with the gated cross-attention adapter.

The k audio tokens are spliced into the LM's input embeddings just before the image tokens
(LLaVA / BLIP-2 style): "question: … <audio × k><image × N> answer:". SAFE inserts k placeholder
ids itself (the caller's prompt stays unchanged), and a hook on the LM's input embedding, present
only during the call, writes gate_b × token into those positions at prefill time. The returned logits and generated
sequences drop the placeholder positions, so they line up with the caller's input ids.

Every per-token input (attention mask, `token_type_ids`, `mm_token_type_ids`) is spliced with the
ids (SLOT_VALUES: a slot is attended and is a text token), so two-way attention blocks and
multimodal positions stay aligned with the tokens they describe.

Samples without audio (or with gate 0) never see a placeholder: the batch is split and they
run the bare base model, so they stay bit-identical to it. Splitting takes per-row tensors by
row, per-image ones (LLaVA-NeXT `image_sizes`, flat `pixel_values` when some rows have no image)
by image, and batch-packed ones (Qwen2-VL `pixel_values` with `image_grid_thw`) by each image's
grid share; images belong to rows in order, one contiguous run of placeholder tokens each. A prefix adapter has no weights of
its own; only the projector (and optional LoRA) learn. Losses are computed by the caller from
the returned logits, so `labels` is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def image_token_id(base: nn.Module) -> int | None:
    """The id of the image placeholder in the base model's input ids, if it has one."""
    config = base.config
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None


# Per-token inputs spliced with the audio slots, and the value a slot takes there: it is attended, and it is a
# text token (type 0 is text in Qwen2-VL's mm_token_type_ids and Gemma3's token_type_ids, and the bidirectional
# prefix, which holds image and prompt, in PaliGemma's). input_ids slots get a placeholder id instead.
SLOT_VALUES = {"attention_mask": 1, "token_type_ids": 0, "mm_token_type_ids": 0}
# Position inputs are derived from the spliced ids by the model itself; given explicitly they would be stale.
POSITION_KEYS = ("position_ids", "cache_position")
# Batch-packed tensors (one row per patch, all images of the batch together) and the grid metadata that sizes
# each image's share (t × h × w patches), keyed by the media kind whose tokens mark the images in input_ids.
PACKED = {"pixel_values": ("image_grid_thw", "image"), "pixel_values_videos": ("video_grid_thw", "video")}
# Per-image metadata (one row per image), by media kind.
PER_IMAGE = {"image_grid_thw": "image", "image_sizes": "image", "video_grid_thw": "video"}


def media_token_ids(base: nn.Module) -> dict[str, int | None]:
    """The image and video placeholder ids of the base model's input ids (None where it has none)."""
    video = getattr(base.config, "video_token_id", None)
    return {"image": image_token_id(base), "video": None if video is None else int(video)}


def _slot_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int,
                 image_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(slots, source): a (B, L + k) mask of the audio slots and, elsewhere, the source position of each token."""
    length = input_ids.shape[1]
    anchor = attention_mask.bool().int().argmax(1)
    if image_id is not None:
        is_image = input_ids == image_id
        anchor = torch.where(is_image.any(1), is_image.int().argmax(1), anchor)
    pos = torch.arange(length + k, device=input_ids.device)[None, :]
    slots = (pos >= anchor[:, None]) & (pos < anchor[:, None] + k)
    source = torch.where(pos < anchor[:, None], pos, pos - k).clamp(0, length - 1)
    return slots, source


def _spliced(tensor: torch.Tensor, slots: torch.Tensor, source: torch.Tensor, fill: int) -> torch.Tensor:
    return torch.where(slots, fill, tensor.gather(1, source))


def splice_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int,
               image_id: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Insert k placeholder ids before each row's first image token (else its first attended token).

    Returns the new ids, the new attention mask (1 = attend) and a (B, L + k) mask of the audio slots.
    """
    slots, source = _slot_layout(input_ids, attention_mask, k, image_id)
    placeholder = 1 if image_id == 0 else 0  # any id other than the image token; its embedding is replaced
    return _spliced(input_ids, slots, source, placeholder), _spliced(attention_mask, slots, source, 1), slots


def splice_inputs(inputs: dict, k: int, image_id: int | None) -> tuple[dict, torch.Tensor]:
    """Every per-token input (a (B, L) tensor like input_ids) spliced with k audio slots; returns it and the slots.

    Per-token keys outside SLOT_VALUES and explicit position inputs are refused: their slot values are unknown.
    """
    ids = inputs["input_ids"]
    given = [key for key in POSITION_KEYS if inputs.get(key) is not None]
    if given:
        raise ValueError(f"prefix fusion got {given}; expected none: the model derives positions from the spliced ids")
    mask = inputs.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    slots, source = _slot_layout(ids, mask, k, image_id)
    out = {**inputs, "input_ids": _spliced(ids, slots, source, 1 if image_id == 0 else 0),
           "attention_mask": _spliced(mask, slots, source, 1)}
    for key, value in inputs.items():
        if key in ("input_ids", "attention_mask") or not torch.is_tensor(value) or value.shape != ids.shape:
            continue
        if key not in SLOT_VALUES:
            raise ValueError(f"prefix fusion cannot splice the per-token input {key!r} (shape {tuple(value.shape)}); "
                             f"expected only input_ids and {list(SLOT_VALUES)}")
        out[key] = _spliced(value, slots, source, SLOT_VALUES[key])
    return out, slots


def media_per_row(input_ids: torch.Tensor, token_id: int | None) -> torch.Tensor:
    """(B,) number of images (or videos) per row: each is one contiguous run of its placeholder token."""
    if token_id is None:
        return torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    marked = input_ids == token_id
    starts = marked & ~torch.nn.functional.pad(marked[:, :-1], (1, 0), value=False)
    return starts.sum(1)


def select_rows(inputs: dict, rows: torch.Tensor, media_ids: dict[str, int | None]) -> dict:
    """The inputs of the rows where `rows` is True: per-row tensors by row, per-image and packed ones by image.

    Images belong to rows in order (media_per_row); packed tensors are cut per image by their grid metadata.
    A tensor that fits none of these layouts, or could be per row or per image, is an error naming its key.
    """
    ids = inputs["input_ids"]
    batch = ids.shape[0]
    counts = {kind: media_per_row(ids, token_id) for kind, token_id in media_ids.items()}
    keep = {kind: rows.repeat_interleave(c) for kind, c in counts.items()}  # per image: does its row stay?
    out = {}
    for key, value in inputs.items():
        if not torch.is_tensor(value) or value.dim() == 0:
            out[key] = value
            continue
        if value.shape[:2] == ids.shape:  # per-token: input_ids, masks, token types
            out[key] = value[rows]
            continue
        if key in PACKED and PACKED[key][0] in inputs:
            grid_key, kind = PACKED[key]
            sizes = inputs[grid_key].prod(-1)
            if int(sizes.sum()) != value.shape[0] or len(sizes) != len(keep[kind]):
                raise ValueError(f"{key} has {value.shape[0]} rows for {grid_key} {inputs[grid_key].tolist()} and "
                                 f"{len(keep[kind])} {kind}s in input_ids; expected one grid row per {kind} and "
                                 "t*h*w rows of patches each")
            parts = value.split(sizes.tolist())
            out[key] = torch.cat([part for part, kept in zip(parts, keep[kind].tolist()) if kept])
            continue
        kind = PER_IMAGE.get(key, "image")
        per_image = value.shape[0] == len(keep[kind])
        per_row = value.shape[0] == batch
        if per_row and per_image and not bool((counts[kind] == 1).all()):
            raise ValueError(f"{key} has {batch} rows, as many as the batch and as its {kind}s "
                             f"({counts[kind].tolist()} per row); cannot tell how to split it: expected "
                             "one image per row, or a different count of images and rows")
        if key in PER_IMAGE or (per_image and not per_row):
            if not per_image:
                raise ValueError(f"{key} has {value.shape[0]} rows for {len(keep[kind])} {kind}s in input_ids; "
                                 f"expected one row per {kind}")
            out[key] = value[keep[kind]]
        elif per_row:
            out[key] = value[rows]
        else:
            raise ValueError(f"{key} has {value.shape[0]} rows; expected {batch} (one per row) or "
                             f"{len(keep[kind])} (one per {kind} in input_ids)")
    return out


class PrefixSplicer(nn.Module):
    """Writes audio tokens into spliced placeholder slots of the LM's input embeddings."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.layer_indices: list[int] = []
        self.image_id = image_token_id(base)
        self.media_ids = media_token_ids(base)
        self.pad_id = int(getattr(base.generation_config, "pad_token_id", None) or 0)
        self._embedding = [base.get_input_embeddings()]  # a plain list: not a submodule of the splicer

    def run(self, method: Callable[..., Any], inputs: dict, tokens: torch.Tensor, active: torch.Tensor,
            gate: torch.Tensor, generate: bool, lora_scope: Callable[[torch.Tensor], Any]) -> Any:
        """Inactive rows run the bare base; active rows run with k spliced audio tokens; rows are merged."""
        if "labels" in inputs:
            raise ValueError("prefix fusion does not take labels (some processors, e.g. PaliGemma's, add them: build "
                             "inputs with stage_a.prompting.model_inputs, which drops them); compute the loss from "
                             "the returned logits")
        if "input_ids" not in inputs:
            raise ValueError("prefix fusion needs input_ids to place the audio tokens")
        batch, length = inputs["input_ids"].shape
        if not active.any():
            return method(**inputs)
        k = tokens.shape[1]
        spliced, slots = splice_inputs(select_rows(inputs, active, self.media_ids), k, self.image_id)
        audio = tokens[active] * gate[active].to(tokens.dtype)[:, None, None]

        def splice(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if output.shape[:2] != slots.shape:
                return None  # decoding steps after the prefill carry no audio slots
            return output.masked_scatter(slots[..., None], audio.to(output.dtype))

        handle = self._embedding[0].register_forward_hook(splice)
        try:
            with lora_scope(torch.ones(int(active.sum()), dtype=torch.bool, device=active.device)):
                out = method(**spliced)
        finally:
            handle.remove()
        rest = method(**select_rows(inputs, ~active, self.media_ids)) if not active.all() else None
        if generate:
            return self._merge_sequences(out, spliced["input_ids"], slots, length, rest, active)
        logits = out.logits[~slots].view(out.logits.shape[0], length, -1)
        if rest is not None:
            merged = logits.new_empty(batch, length, logits.shape[-1])
            merged[active], merged[~active] = logits, rest.logits
            logits = merged
        return type(out)(logits=logits)

    def _merge_sequences(self, spliced: torch.Tensor, ids: torch.Tensor, slots: torch.Tensor, length: int,
                         rest: torch.Tensor | None, active: torch.Tensor) -> torch.Tensor:
        """Drop the audio slots from echoed prompts (decoder-only LMs), then pad rows to one width."""
        sequences = spliced
        prompt = spliced[:, : ids.shape[1]]
        if prompt.shape == ids.shape and torch.equal(prompt, ids):
            sequences = torch.cat([prompt[~slots].view(len(prompt), length), spliced[:, ids.shape[1]:]], dim=1)
        if rest is None:
            return sequences
        width = max(sequences.shape[1], rest.shape[1])
        merged = sequences.new_full((len(active), width), self.pad_id)
        merged[active, : sequences.shape[1]] = sequences
        merged[~active, : rest.shape[1]] = rest
        return merged
