"""Training checkpoints: everything needed to resume a Stage A run exactly, written atomically.

A checkpoint folder holds the bridge (adapter.safetensors + safe_config.json with the bridge's record), the optimizer
and scheduler state (torch.save, read back with weights_only=True), tensors of the retention
state and data bookkeeping (safetensors), the base LM's weights when it is trained (the
full fine-tuning baseline), and a JSON state: the trainer's `TrainState` (step, best result, history,
data counts, ...) with the sampler, gradient-monitor and loss-scaler states beside it. The folder is
written under a temporary name and renamed into place. Reading one back goes through shared.loading, so a
truncated or corrupt file is named (exit 2) rather than raised from inside safetensors, torch or json.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors.torch import save_file

from shared.checkpoint import atomic_directory, readable_folder
from shared.cli import InputError
from shared.loading import load_json, load_safetensors, load_torch
from stage_a.model import CONFIG_FILE, WEIGHTS_FILE, SafeModel

OPTIMIZER_FILE = "optimizer.pt"
TENSORS_FILE = "state.safetensors"
BASE_LM_FILE = "base_lm.safetensors"
STATE_FILE = "state.json"
CHECKPOINT_PART = "this part of a checkpoint folder written by stage_a-train"
CHECKPOINT_FILES = (WEIGHTS_FILE, OPTIMIZER_FILE, TENSORS_FILE, STATE_FILE)  # besides the base LM's, when trained


def trained_base_params(model: SafeModel) -> dict[str, torch.Tensor]:
    """Base parameters that require grad (only the full fine-tuning baseline has any), LoRA excluded."""
    return {n: p for n, p in model.base.named_parameters() if p.requires_grad and ".lora_" not in n}


def bridge_hash(folder: Path) -> str:
    """The first 16 hex digits of the SHA-256 of a bridge folder's weights: the id outcome tables and policies record."""
    return hashlib.sha256((Path(folder) / WEIGHTS_FILE).read_bytes()).hexdigest()[:16]


def bridge_folder(path: Path) -> Path:
    """A bridge folder itself, or a run folder's best bridge (see shared.checkpoint.readable_folder)."""
    for candidate in (readable_folder(path), readable_folder(Path(path) / "best")):
        if (candidate / WEIGHTS_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no {WEIGHTS_FILE} there or in {path / 'best'}; "
                            "expected a bridge folder or a stage_a-train run folder")


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns; the caller restores each part."""

    bridge: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    tensors: dict[str, torch.Tensor]
    base_lm: dict[str, torch.Tensor]
    state: dict
    bridge_config: dict = field(default_factory=dict)  # safe_config.json: the bridge's config and record


@dataclass
class BestEval:
    """The best evaluation within the VL tolerance so far: its step, audio accuracy and VL degradation."""

    step: int
    audio_acc: float
    vl_degradation_pts: float


@dataclass
class TrainState:
    """A run's progress and bookkeeping; its fields are the top-level keys of state.json beside the parts'
    states (`PART_KEYS`), as the trainer's plain dict wrote them, so older checkpoints resume unchanged."""

    step: int = 0
    bad_steps: int = 0  # non-finite losses in a row
    best: BestEval | None = None
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per evaluation
    train_seconds: float = 0.0
    stopped_early: bool = False
    breaches: int = 0  # evaluations in a row beyond the VL tolerance
    drawn: int = 0  # training rows drawn so far
    family_counts: dict[str, int] = field(default_factory=dict)
    qtype_counts: dict[str, int] = field(default_factory=dict)

    PART_KEYS = ("sampler", "monitor", "scaler")  # the loss scaler's is absent from checkpoints older than it

    def to_json(self, parts: dict[str, dict]) -> dict:
        """The state.json object: these fields and the parts' states (sampler, monitor, scaler)."""
        unknown = sorted(set(parts) - set(self.PART_KEYS))
        if unknown:
            raise ValueError(f"checkpoint parts {unknown} are unknown; expected {list(self.PART_KEYS)}")
        return {**asdict(self), **parts}

    @classmethod
    def from_json(cls, data: dict, source: str) -> tuple["TrainState", dict[str, dict]]:
        """The state and the parts' states read back from a state.json object; `source` names it in errors."""
        names = {f.name for f in fields(cls)}
        missing = sorted((names | {"sampler", "monitor"}) - set(data))
        unknown = sorted(set(data) - names - set(cls.PART_KEYS))
        if missing or unknown:
            raise ValueError(f"{source}: training state is missing keys {missing} and has unknown keys {unknown}; "
                             f"expected {sorted(names)} and the parts {list(cls.PART_KEYS)}")
        values = {name: data[name] for name in names}
        if values["best"] is not None:
            best_keys = [f.name for f in fields(BestEval)]
            if not isinstance(values["best"], dict) or sorted(values["best"]) != sorted(best_keys):
                raise ValueError(f"{source}: training state 'best' is {values['best']!r}; expected null or an object "
                                 f"with keys {best_keys}")
            values["best"] = BestEval(**values["best"])
        return cls(**values), {key: data[key] for key in cls.PART_KEYS if key in data}


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


def missing_files(folder: Path) -> list[str]:
    """The files of a complete checkpoint that `folder` lacks (all of them when there is no such folder)."""
    folder = readable_folder(folder)
    return [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]


def load_checkpoint(folder: Path) -> Checkpoint:
    """Read a checkpoint folder (safetensors and weights-only torch.load; nothing is unpickled)."""
    folder = readable_folder(folder)
    missing = missing_files(folder)
    if missing:
        raise FileNotFoundError(f"checkpoint {folder} is incomplete: missing {missing}")
    opt = load_torch(folder / OPTIMIZER_FILE, CHECKPOINT_PART)
    if not isinstance(opt, dict) or not {"optimizer", "scheduler"} <= opt.keys():
        raise InputError(f"{folder / OPTIMIZER_FILE}: holds no 'optimizer' and 'scheduler' states; "
                         f"expected {CHECKPOINT_PART}")
    base_file, config_file = folder / BASE_LM_FILE, folder / CONFIG_FILE
    return Checkpoint(load_safetensors(folder / WEIGHTS_FILE, CHECKPOINT_PART), opt["optimizer"], opt["scheduler"],
                      load_safetensors(folder / TENSORS_FILE, CHECKPOINT_PART),
                      load_safetensors(base_file, CHECKPOINT_PART) if base_file.is_file() else {},
                      load_json(folder / STATE_FILE, CHECKPOINT_PART),
                      load_json(config_file, CHECKPOINT_PART) if config_file.is_file() else {})
