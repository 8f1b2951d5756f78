"""Gate-0 exactness on mixed batches, shared by `stage_a-check` and the Stage A evaluator.

A scalar gate 0 (or no audio) makes SafeModel call the bare base before any bridge code runs, so
checking it only catches drift in the base weights. The decisive check runs MIXED batches instead:
every question appears twice, side by side, with the same prompt, image and audio frames, once at
gate 0 and once at gate > 0 (a per-sample gate tensor). The projector, the fusion blocks, the LoRA
scope and the torch.where row selection all run, and the gate-0 rows must still equal the bare base
on the same batch bit for bit (prefix fusion runs gate-0 rows as their own batch, so there the
reference is the bare base on those rows alone, `reference_inputs`).
"""

from __future__ import annotations

import torch
from torch import nn

from stage_a.model import SafeModel
from stage_a.prefix import PrefixSplicer, media_token_ids, select_rows


PARTNER_GATE = 1.0  # the gate of each gate-0 row's twin in a mixed batch


def max_abs_diff(values: torch.Tensor, reference: torch.Tensor) -> float:
    """max |values - reference|, where equal entries (also equal infinities) count 0 and a NaN counts as infinite,
    so a NaN in a gate-0 row can never read as exact."""
    diff = torch.where(values == reference, 0.0, (values.float() - reference.float()).abs())
    inf = float("inf")
    return float(torch.nan_to_num(diff, nan=inf, posinf=inf).max()) if diff.numel() else 0.0


def twin_rows(rows: list[int]) -> list[int]:
    """Each row twice, side by side: [a, a, b, b, ...] (the first of each pair runs at gate 0)."""
    return [i for i in rows for _ in range(2)]


def twin_gates(pairs: int, gate: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """(2 * pairs,) per-sample gates [0, gate, 0, gate, ...] for a batch of `twin_rows`."""
    if not 0 < gate <= 1:
        raise ValueError(f"mixed-batch partner gate is {gate}; expected a value in (0, 1]")
    return torch.tensor([0.0, gate], device=device).repeat(pairs)


def reference_inputs(model: SafeModel, inputs: dict, rows: torch.Tensor) -> dict:
    """The batch the selected rows of a mixed batch really run in, for their reference: the whole batch, or with
    prefix fusion (which splits gate-0 from gate > 0 rows) those rows alone."""
    if isinstance(model.fusion, PrefixSplicer):
        return select_rows(inputs, rows, media_token_ids(model.base))
    return inputs


def reference_rows(model: SafeModel, rows: torch.Tensor) -> torch.Tensor:
    """Which rows of the outputs on `reference_inputs(model, inputs, rows)` line up with the selected rows."""
    if isinstance(model.fusion, PrefixSplicer):
        return torch.ones(int(rows.sum()), dtype=torch.bool, device=rows.device)
    return rows


@torch.no_grad()
def fill_zero_init(model: SafeModel, seed: int, std: float = 1.0) -> None:
    """Fill the bridge's zero-initialised outputs (fusion W_out, LoRA B) with seeded noise, so a fresh bridge acts
    and gate-0 exactness cannot come for free from the zero init."""
    generator = torch.Generator().manual_seed(seed)
    zero_init: list[nn.Parameter] = [p for n, p in model.fusion.named_parameters() if n.endswith("out.weight")]
    zero_init += [p for n, p in model.base.named_parameters() if ".lora_B." in n]
    for param in zero_init:
        param.copy_(torch.randn(param.shape, generator=generator) * std)
