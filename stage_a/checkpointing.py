"""Training checkpoints: everything needed to resume a Stage A run exactly, written atomically.

A checkpoint folder holds the bridge (adapter.safetensors + safe_config.json), the optimizer
and scheduler state (torch.save, read back with weights_only=True), tensors of the retention
state and data bookkeeping (safetensors), the base LM's weights when it is trained (the
full fine-tuning baseline), and a JSON state (step, sampler position, monitor counters, best
result, history). The folder is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from shared.checkpoint import atomic_directory
from stage_a.model import WEIGHTS_FILE, SafeModel

OPTIMIZER_FILE = "optimizer.pt"
TENSORS_FILE = "state.safetensors"
BASE_LM_FILE = "base_lm.safetensors"
STATE_FILE = "state.json"


def trained_base_params(model: SafeModel) -> dict[str, torch.Tensor]:
    """Base parameters that require grad (only the full fine-tuning baseline has any), LoRA excluded."""
    return {n: p for n, p in model.base.named_parameters() if p.requires_grad and ".lora_" not in n}


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns; the caller restores each part."""

    bridge: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    tensors: dict[str, torch.Tensor]
    base_lm: dict[str, torch.Tensor]
    state: dict


def save_checkpoint(folder: Path, model: SafeModel, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, tensors: dict[str, torch.Tensor],
                    state: dict) -> None:
    """Write the whole training state atomically into `folder`."""
    with atomic_directory(folder) as tmp:
        model.write_bridge(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / OPTIMIZER_FILE)
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / TENSORS_FILE))
        base = trained_base_params(model)
        if base:
            save_file({k: v.detach().cpu().contiguous() for k, v in base.items()}, str(tmp / BASE_LM_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")


def load_checkpoint(folder: Path) -> Checkpoint:
    """Read a checkpoint folder (safetensors and weights-only torch.load; nothing is unpickled)."""
    needed = [folder / name for name in (WEIGHTS_FILE, OPTIMIZER_FILE, TENSORS_FILE, STATE_FILE)]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {folder} is incomplete: missing {missing}")
    opt = torch.load(folder / OPTIMIZER_FILE, weights_only=True)
    base_file = folder / BASE_LM_FILE
    return Checkpoint(load_file(str(folder / WEIGHTS_FILE)), opt["optimizer"], opt["scheduler"],
                      load_file(str(folder / TENSORS_FILE)),
                      load_file(str(base_file)) if base_file.is_file() else {},
                      json.loads((folder / STATE_FILE).read_text(encoding="utf-8")))
