"""Prefix fusion, kept for comparison with the gated cross-attention adapter.

The k audio tokens are spliced into the LM's input embeddings just before the image tokens
(LLaVA / BLIP-2 style): "question: … <audio × k><image × N> answer:". SAFE inserts k placeholder
ids itself (the caller's prompt stays unchanged), and a hook on the LM's input embedding, present
only during the call, writes gate_b × token into those positions at prefill time. The returned logits and generated
sequences drop the placeholder positions, so they line up with the caller's input ids.

Samples without audio (or with gate 0) never see a placeholder: the batch is split and they
run the bare base model, so they stay bit-identical to it. A prefix adapter has no weights of
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


def splice_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int,
               image_id: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Insert k placeholder ids before each row's first image token (else its first attended token).

    Returns the new ids, the new attention mask (1 = attend) and a (B, L + k) mask of the audio slots.
    """
    batch, length = input_ids.shape
    anchor = attention_mask.bool().int().argmax(1)
    if image_id is not None:
        is_image = input_ids == image_id
        anchor = torch.where(is_image.any(1), is_image.int().argmax(1), anchor)
    pos = torch.arange(length + k, device=input_ids.device)[None, :]
    slots = (pos >= anchor[:, None]) & (pos < anchor[:, None] + k)
    source = torch.where(pos < anchor[:, None], pos, pos - k).clamp(0, length - 1)
    placeholder = 1 if image_id == 0 else 0  # any id other than the image token; its embedding is replaced
    ids = torch.where(slots, placeholder, input_ids.gather(1, source))
    mask = torch.where(slots, 1, attention_mask.gather(1, source))
    return ids, mask, slots


def _rows(inputs: dict, rows: torch.Tensor, batch: int) -> dict:
    return {k: v[rows] if torch.is_tensor(v) and v.dim() and v.shape[0] == batch else v for k, v in inputs.items()}


class PrefixSplicer(nn.Module):
    """Writes audio tokens into spliced placeholder slots of the LM's input embeddings."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.layer_indices: list[int] = []
        self.image_id = image_token_id(base)
        self.pad_id = int(getattr(base.generation_config, "pad_token_id", None) or 0)
        self._embedding = [base.get_input_embeddings()]  # a plain list: not a submodule of the splicer

    def run(self, method: Callable[..., Any], inputs: dict, tokens: torch.Tensor, active: torch.Tensor,
            gate: torch.Tensor, generate: bool, lora_scope: Callable[[torch.Tensor], Any]) -> Any:
        """Inactive rows run the bare base; active rows run with k spliced audio tokens; rows are merged."""
        if "labels" in inputs:
            raise ValueError("prefix fusion does not take labels; compute the loss from the returned logits")
        if "input_ids" not in inputs:
            raise ValueError("prefix fusion needs input_ids to place the audio tokens")
        batch, length = inputs["input_ids"].shape
        if not active.any():
            return method(**inputs)
        sub = _rows(inputs, active, batch)
        k = tokens.shape[1]
        ids, mask, slots = splice_ids(sub["input_ids"], sub.get("attention_mask", torch.ones_like(sub["input_ids"])),
                                      k, self.image_id)
        audio = tokens[active] * gate[active].to(tokens.dtype)[:, None, None]

        def splice(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if output.shape[:2] != slots.shape:
                return None  # decoding steps after the prefill carry no audio slots
            return output.masked_scatter(slots[..., None], audio.to(output.dtype))

        handle = self._embedding[0].register_forward_hook(splice)
        try:
            with lora_scope(torch.ones(int(active.sum()), dtype=torch.bool, device=active.device)):
                out = method(**{**sub, "input_ids": ids, "attention_mask": mask})
        finally:
            handle.remove()
        rest = method(**_rows(inputs, ~active, batch)) if not active.all() else None
        if generate:
            return self._merge_sequences(out, ids, slots, length, rest, active)
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
