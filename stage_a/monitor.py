"""Training-run monitoring: a metrics log that survives resumes, and gradient health checks.

RunLogger writes every metric to `metrics.jsonl` (the record of truth: plain text, one JSON object
per line, NaN/inf kept as strings) and mirrors numeric values to TensorBoard and, optionally,
wandb. On resume it drops lines past the checkpoint's step, so a resumed run's log equals that of
an uninterrupted one.

GradientMonitor reports per-component gradient norms (projector, fusion, LoRA, ...) and warns
about the two failures that otherwise go unnoticed: a trainable component whose gradients have
vanished (e.g. a closed gate cutting it off), and any gradient reaching the frozen base model.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from shared.checkpoint import atomic_write_text
from shared.logs import wandb_mode

if TYPE_CHECKING:
    from stage_a.model import SafeModel

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
WANDB_ID_FILE = "wandb_run_id"


def _plain(value: Any, key: str) -> Any:
    """value with tensors and numpy scalars turned into Python numbers; TypeError for anything unloggable."""
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)) and math.prod(value.shape) == 1:
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"metric {key!r} is {type(value).__name__} ({value!r:.80}); "
                    "expected numbers, strings, one-element tensors, or dicts/lists of them")


def _json_safe(value: Any) -> Any:
    """value with non-finite floats written as "nan", "inf" or "-inf" (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def flatten_numeric(values: dict, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(tag, number) for every numeric leaf of nested dicts, keys joined with '/'; other leaves skipped."""
    for key, value in values.items():
        tag = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from flatten_numeric(value, tag)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield tag, float(value)


class RunLogger:
    """Metrics of one run: JSONL always, TensorBoard optionally, wandb optionally."""

    def __init__(self, run_dir: Path, config: dict, *, tensorboard: bool = True, wandb: bool = False,
                 project: str = "safe", run_name: str | None = None, main_process: bool = True,
                 resume_step: int | None = None) -> None:
        self.active = main_process
        self._file = self._tb = self._wandb = None
        if not main_process:
            return
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / CONFIG_FILE, json.dumps(config, indent=2, default=str) + "\n")
        self.metrics_path = self.run_dir / METRICS_FILE
        if resume_step is not None and self.metrics_path.exists():
            self._truncate(resume_step)
        elif self.metrics_path.exists():
            log.warning("%s exists and no resume_step was given; appending to it", self.metrics_path)
        self._file = open(self.metrics_path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise RuntimeError("tensorboard=True but tensorboard is not installed; "
                                   "`pip install tensorboard` or pass tensorboard=False") from err
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)
        if wandb:
            self._wandb = self._init_wandb(config, project, run_name, resume_step)

    def _truncate(self, resume_step: int) -> None:
        """Rewrite metrics.jsonl keeping lines with step <= resume_step; unreadable lines are dropped."""
        lines = self.metrics_path.read_text().splitlines()
        kept, broken = [], 0
        for line in lines:
            try:
                if json.loads(line)["step"] <= resume_step:
                    kept.append(line + "\n")
            except (json.JSONDecodeError, KeyError, TypeError):
                broken += 1
        if broken:
            log.warning("%s: dropped %d unreadable lines (e.g. cut off by a crash)", self.metrics_path, broken)
        log.info("%s: resuming at step %d, kept %d lines, dropped %d later ones",
                 self.metrics_path, resume_step, len(kept), len(lines) - len(kept) - broken)
        atomic_write_text(self.metrics_path, "".join(kept))

    def _init_wandb(self, config: dict, project: str, run_name: str | None, resume_step: int | None) -> Any:
        """Start (or, on resume, continue) the wandb run whose id is kept in run_dir."""
        try:
            import wandb
        except ImportError as err:
            raise RuntimeError("wandb=True but wandb is not installed; `pip install wandb` "
                               "(or `pip install safe-av[wandb]`), or pass wandb=False") from err
        id_file = self.run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if resume_step is not None and id_file.exists() else None
        run = wandb.init(project=project, name=run_name, config=config, dir=str(self.run_dir),
                         mode=wandb_mode(), id=run_id, resume="allow" if run_id else None)
        atomic_write_text(id_file, f"{run.id}\n")
        return run

    def log(self, step: int, kind: str, values: dict) -> None:
        """One JSONL line {"step", "kind", **values}; numeric leaves also go to TensorBoard/wandb as kind/key."""
        if not self.active:
            return
        if {"step", "kind"} & set(values):
            raise ValueError(f"metrics of kind {kind!r} use the key 'step' or 'kind'; expected other names")
        plain = _plain(values, kind)
        self._file.write(json.dumps({"step": step, "kind": kind, **_json_safe(plain)}, allow_nan=False) + "\n")
        self._file.flush()
        scalars = dict(flatten_numeric(plain, kind))
        if self._tb is not None:
            for tag, value in scalars.items():
                self._tb.add_scalar(tag, value, global_step=step)
        if self._wandb is not None and scalars:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        """Flush and close every sink; safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _sum_of_squares(grads: Iterable[torch.Tensor]) -> float:
    """Sum of squared L2 norms of grads, with one device sync at the end."""
    total: torch.Tensor | None = None
    for grad in grads:
        square = torch.linalg.vector_norm(grad, dtype=torch.float32).square()
        total = square if total is None else total + square.to(total.device)
    return 0.0 if total is None else float(total)


class GradientMonitor:
    """Per-component gradient norms, with warnings for vanishing gradients and for any gradient on the frozen base."""

    def __init__(self, components: dict[str, list[torch.nn.Parameter]], base: Iterable[tuple[str, torch.nn.Parameter]],
                 vanish_threshold: float = 1e-10, patience: int = 50) -> None:
        if patience < 1:
            raise ValueError(f"patience is {patience}; expected at least 1 step")
        self.components = {name: list(params) for name, params in components.items() if len(params) > 0}
        self.base = list(base)
        self.vanish_threshold = vanish_threshold
        self.patience = patience
        self.below = {name: 0 for name in self.components}
        self.base_grad_steps = 0

    def observe(self) -> dict[str, float]:
        """Gradient L2 norm per component and of the base; call after backward, before the optimizer step."""
        norms = {}
        for name, params in self.components.items():
            norms[name] = math.sqrt(_sum_of_squares(p.grad for p in params if p.grad is not None))
            self._track_vanishing(name, norms[name])
        with_grad = [(n, p.grad) for n, p in self.base if p.grad is not None]
        norms["base"] = math.sqrt(_sum_of_squares(g for _, g in with_grad))
        offenders = [n for n, g in with_grad if torch.linalg.vector_norm(g, ord=math.inf) != 0]  # NaN counts
        if offenders:
            self.base_grad_steps += 1
            log.warning("frozen base received gradients in %d parameters (e.g. %s); base grad norm %.3g",
                        len(offenders), ", ".join(offenders[:3]), norms["base"])
        return norms

    def _track_vanishing(self, name: str, norm: float) -> None:
        """Count consecutive steps below the threshold; warn once when the count reaches patience."""
        if not norm < self.vanish_threshold:  # NaN is a problem, but not a vanished gradient
            self.below[name] = 0
            return
        self.below[name] += 1
        if self.below[name] == self.patience:
            log.warning("gradients of %r have vanished: norm below %g for %d consecutive steps",
                        name, self.vanish_threshold, self.patience)

    def state_dict(self) -> dict[str, int]:
        return {**{f"below/{name}": count for name, count in self.below.items()},
                "base_grad_steps": self.base_grad_steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(f"GradientMonitor state has keys {sorted(state)}; expected {sorted(expected)} "
                             "(were the trainable components changed since the checkpoint?)")
        self.below = {name: int(state[f"below/{name}"]) for name in self.components}
        self.base_grad_steps = int(state["base_grad_steps"])


def components(model: SafeModel, trained_base: set[str]) -> dict[str, list[torch.nn.Parameter]]:
    """Parameters the config trains, per component, for gradient monitoring; `trained_base` names the base's own."""
    return {"projector": list(model.projector.parameters()), "fusion": list(model.fusion.parameters()),
            "lora": [p for n, p in model.base.named_parameters() if ".lora_" in n],
            "base_lm": [p for n, p in model.base.named_parameters() if n in trained_base]}


def frozen_base(model: SafeModel, trained_base: set[str]) -> list[tuple[str, torch.nn.Parameter]]:
    """Base parameters the config keeps frozen: any gradient on them is a bug the monitor reports."""
    return [(n, p) for n, p in model.base.named_parameters() if ".lora_" not in n and n not in trained_base]
