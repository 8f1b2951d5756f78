"""Retention: keep the frozen VL model's answers while the audio bridge learns.

Gate-0 and no-audio samples are bit-identical to the base model by construction (stage_a.fusion),
but a VL question asked *with* audio attached runs through the bridge, and training on audio
questions can change its answer. Three independent mechanisms push against that drift:

- `distill_loss`: KL (or Jensen-Shannon) between the base model's and SAFE's temperature-softened
  answer distributions on VL questions with audio, scaled by T^2 so its size does not depend on T.
- `OnlineFisher`: diagonal EWC, penalising movement of each trainable parameter in proportion to
  how much the base model's VL answers depend on it. It is re-estimated online because the fusion's
  output projection W_out starts at zero: at initialisation only W_out gets gradient (q/k/v, the
  block LayerNorm and the projector are reached through W_out), so the first Fisher covers W_out
  alone, and later estimates, folded in with a decay, cover the parts that have started to matter.
- `NullSpaceProjector` (Adam-NSCL / GPM style): after each optimizer step, remove the part of a
  protected linear layer's update that acts on its VL input subspace (the top eigenvectors of the
  uncentred input covariance, holding `energy` of it), so the layer's outputs on those inputs stay
  as they were.

Which projections to protect with the null-space projector: those whose inputs are LM hidden states
on VL inputs, i.e. each fusion block's `q` (it reads LayerNorm(h)) and peft LoRA `lora_A` matrices
(they read the LM's hidden states). Do not protect `k`/`v`: they read audio tokens, which look the
same for VL and audio questions, so protecting them would block all learning; nor `out` (its inputs
are attention mixes, not VL states) nor the audio projector (its inputs are audio frames).

What it guarantees: one step leaves each protected layer's outputs on the calibration inputs
unchanged, up to the input energy not kept. What it does not: unprotected parts (k, v, out, the
block LayerNorm, the projector) still change VL outputs, and a LayerNorm update shifts the inputs
of `q` itself, so bases are refreshed periodically and KL/EWC remain necessary.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from configs.retention_variants import VARIANTS
from shared.cli import check_number

if TYPE_CHECKING:
    from stage_a.model import SafeModel

log = logging.getLogger(__name__)

KL_KINDS = ("kl", "jsd")


@dataclass
class RetentionConfig:
    """Weights and schedules of the three retention mechanisms; every weight 0 / False = off."""

    kl_weight: float = 0.0
    kl_temperature: float = 2.0
    kl_kind: str = "kl"
    fisher_weight: float = 0.0
    fisher_every: int = 100
    fisher_decay: float = 0.5
    fisher_batches: int = 4
    nullspace: bool = False
    nullspace_energy: float = 0.98
    nullspace_every: int = 200
    nullspace_batches: int = 4

    def __post_init__(self) -> None:
        for name, bounds in {"kl_weight": {"ge": 0}, "fisher_weight": {"ge": 0}, "kl_temperature": {"gt": 0},
                             "fisher_decay": {"ge": 0, "lt": 1}, "nullspace_energy": {"gt": 0, "lt": 1}}.items():
            check_number(f"retention {name}", getattr(self, name), **bounds)  # weights: 0 = off
        if self.kl_kind not in KL_KINDS:
            raise ValueError(f"retention kl_kind is {self.kl_kind!r}; expected one of {KL_KINDS}")
        for name in ("fisher_every", "fisher_batches", "nullspace_every", "nullspace_batches"):
            check_number(f"retention {name}", getattr(self, name), ge=1, integer=True)


def retention_variant(name: str) -> RetentionConfig:
    """A fresh config of the named preset (configs/retention_variants.py), so callers can modify it freely."""
    if name not in VARIANTS:
        raise ValueError(f"retention variant {name!r} is unknown; expected one of {sorted(VARIANTS)}")
    return RetentionConfig(**VARIANTS[name])


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per row from log-probabilities; entries with p = 0 contribute 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def distill_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float,
                 kind: str = "kl") -> Tensor:
    """T^2-scaled KL(teacher || student) or JSD of softened (B, L, V) logits, averaged over mask-True positions."""
    if student_logits.shape != teacher_logits.shape or mask.shape != student_logits.shape[:2]:
        raise ValueError(f"distill_loss got student {tuple(student_logits.shape)}, teacher "
                         f"{tuple(teacher_logits.shape)}, mask {tuple(mask.shape)}; expected (B, L, V), (B, L, V), (B, L)")
    if temperature <= 0:
        raise ValueError(f"distill_loss temperature is {temperature}; expected > 0")
    if kind not in KL_KINDS:
        raise ValueError(f"distill_loss kind is {kind!r}; expected one of {KL_KINDS}")
    mask = mask.bool()
    student = student_logits[mask].float()  # (N, V): unmasked positions never enter the computation
    if student.shape[0] == 0:
        return student.sum() * 0.0
    log_s = torch.log_softmax(student / temperature, dim=-1)
    log_t = torch.log_softmax(teacher_logits.detach()[mask].float() / temperature, dim=-1)
    if kind == "kl":
        per_token = _kl_rows(log_t, log_s)
    else:
        log_m = torch.logaddexp(log_t, log_s) - math.log(2.0)
        per_token = 0.5 * (_kl_rows(log_t, log_m) + _kl_rows(log_s, log_m))
    return per_token.mean() * temperature**2


class OnlineFisher:
    """Diagonal (online) EWC over named trainable parameters."""

    NORMALISATION = ("Each new estimate is divided by its mean over all entries of all parameters before it is "
                     "folded in, so every estimate, and hence the running Fisher, has mean entry 1 and the "
                     "penalty weight is independent of the loss scale.")

    def __init__(self, params: dict[str, nn.Parameter], decay: float) -> None:
        if not params:
            raise ValueError("OnlineFisher got no parameters; expected the bridge's trainable parameters")
        frozen = [name for name, p in params.items() if not p.requires_grad]
        if frozen:
            raise ValueError(f"OnlineFisher parameters {frozen} do not require grad; expected trainable parameters")
        if not 0 <= decay < 1:
            raise ValueError(f"OnlineFisher decay is {decay}; expected 0 <= decay < 1")
        self.params, self.decay = dict(params), decay
        self.fisher: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}
        self.estimates = 0

    def estimate(self, losses: Iterable[Callable[[], Tensor]]) -> dict[str, float]:
        """Fold in a new Fisher from calibration losses, re-anchor at the current values; returns coverage stats."""
        names, tensors = list(self.params), list(self.params.values())
        squares = [torch.zeros_like(p, dtype=torch.float32) for p in tensors]
        batches = 0
        for loss_fn in losses:
            loss = loss_fn()
            if not loss.requires_grad:
                raise ValueError(f"calibration loss {batches} does not depend on the tracked parameters; "
                                 "expected the NLL of a forward pass with audio attached (gate > 0)")
            for square, grad in zip(squares, torch.autograd.grad(loss, tensors, allow_unused=True)):
                if grad is not None:
                    square.add_(grad.detach().float().square())
            batches += 1
        if batches == 0:
            raise ValueError("OnlineFisher.estimate got no calibration losses; expected at least one")
        mean = sum(float(s.sum()) for s in squares) / sum(s.numel() for s in squares) / batches
        if mean > 0:
            new = [s / (batches * mean) for s in squares]
        else:
            log.warning("all calibration gradients are zero; the new Fisher estimate is all zeros")
            new = squares
        for name, f_new in zip(names, new):
            old = self.fisher.get(name)
            self.fisher[name] = f_new if old is None else self.decay * old + (1 - self.decay) * f_new
            self.anchor[name] = self.params[name].detach().clone()
        self.estimates += 1
        stats = self._stats()
        log.info("Fisher estimate %d from %d batches: coverage %.3f, mean %.3g, max %.3g",
                 self.estimates, batches, stats["coverage"], stats["mean"], stats["max"])
        return stats

    def _stats(self) -> dict[str, float]:
        flat = torch.cat([f.flatten() for f in self.fisher.values()])
        per_param = {f"coverage.{n}": float((f > 0).float().mean()) for n, f in self.fisher.items()}
        return {"coverage": float((flat > 0).float().mean()), "mean": float(flat.mean()),
                "max": float(flat.max()), **per_param}

    def penalty(self) -> Tensor:
        """Sum_i F_i (theta_i - theta*_i)^2, differentiable w.r.t. the live parameters; 0 before any estimate."""
        if not self.fisher:
            return torch.zeros((), device=next(iter(self.params.values())).device)
        terms = [(self.fisher[n] * (p.float() - self.anchor[n].float()).square()).sum() for n, p in self.params.items()]
        return torch.stack(terms).sum()

    def state_dict(self) -> dict[str, Tensor]:
        state = {f"fisher.{n}": f.contiguous() for n, f in self.fisher.items()}
        state.update({f"anchor.{n}": a.contiguous() for n, a in self.anchor.items()})
        state["estimates"] = torch.tensor(self.estimates, dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if "estimates" not in state:
            raise ValueError(f"OnlineFisher state has keys {sorted(state)}; expected an 'estimates' entry")
        count = int(state["estimates"])
        names = {f"{kind}.{n}" for kind in ("fisher", "anchor") for n in self.params} if count else set()
        missing, unexpected = sorted(names - set(state)), sorted(set(state) - names - {"estimates"})
        if missing or unexpected:
            raise ValueError(f"OnlineFisher state is missing keys {missing} and has unexpected keys {unexpected}; "
                             "expected 'estimates' plus fisher.<name> and anchor.<name> for every parameter")
        self.estimates = count
        self.fisher = {n: state[f"fisher.{n}"].to(device=p.device, dtype=torch.float32).clone()
                       for n, p in self.params.items() if count}
        self.anchor = {n: state[f"anchor.{n}"].to(device=p.device, dtype=p.dtype).clone()
                       for n, p in self.params.items() if count}


class NullSpaceProjector:
    """Adam-NSCL / GPM-style: keep optimizer updates of protected linear layers orthogonal to their VL input subspace."""

    def __init__(self, modules: dict[str, nn.Linear], energy: float) -> None:
        if not modules:
            raise ValueError("NullSpaceProjector got no modules; expected the fusion q / LoRA lora_A linears")
        wrong = [name for name, m in modules.items() if not isinstance(m, nn.Linear)]
        if wrong:
            raise ValueError(f"NullSpaceProjector modules {wrong} are not nn.Linear; expected linear layers")
        if not 0 < energy < 1:
            raise ValueError(f"NullSpaceProjector energy is {energy}; expected 0 < energy < 1")
        self.modules, self.energy = dict(modules), energy
        self.bases: dict[str, Tensor] = {}
        self._covariance: dict[str, Tensor] = {}
        self._rows: dict[str, int] = {}
        self._before: dict[str, Tensor] = {}

    @contextmanager
    def collect(self) -> Iterator[None]:
        """Within this block, forwards accumulate X^T X of each protected module's inputs (outputs unchanged)."""

        def hook_for(name: str) -> Callable[[nn.Module, tuple], None]:
            def hook(module: nn.Module, args: tuple) -> None:
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                if name not in self._covariance:
                    self._covariance[name] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
                    self._rows[name] = 0
                self._covariance[name].addmm_(x.T, x)
                self._rows[name] += x.shape[0]
            return hook

        handles = [m.register_forward_pre_hook(hook_for(name)) for name, m in self.modules.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def refresh(self) -> dict[str, int]:
        """Replace each basis with the top eigenvectors of the collected covariance; resets the accumulators."""
        for name in self.modules:
            if not self._rows.get(name):
                raise ValueError(f"no inputs were collected for protected module {name!r}; "
                                 "run calibration forwards inside collect()")
        for name, module in self.modules.items():
            values, vectors = torch.linalg.eigh(self._covariance[name].double())
            values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
            total = float(values.sum())
            rank = 0 if total == 0 else min(int((values.cumsum(0) < self.energy * total).sum()) + 1, len(values))
            self.bases[name] = vectors[:, :rank].to(device=module.weight.device, dtype=torch.float32).contiguous()
        self._covariance, self._rows = {}, {}
        log.info("null-space bases refreshed: ranks %s", self.ranks())
        return self.ranks()

    def snapshot(self) -> None:
        """Remember each protected weight; call right before optimizer.step()."""
        self._before = {name: self.modules[name].weight.detach().clone() for name in self.bases}

    @torch.no_grad()
    def project(self) -> None:
        """After optimizer.step(): W <- W - (dW U) U^T with dW = W - W_before; modules without a basis are left alone."""
        missing = [name for name in self.bases if name not in self._before]
        if missing:
            raise RuntimeError(f"project() found no snapshot for {missing}; call snapshot() before optimizer.step()")
        for name, basis in self.bases.items():
            weight = self.modules[name].weight
            delta = weight.float() - self._before[name].float()
            weight.sub_(((delta @ basis) @ basis.T).to(weight.dtype))
        self._before = {}

    def ranks(self) -> dict[str, int]:
        """Kept basis rank per protected module (0 before its first refresh)."""
        return {name: int(self.bases[name].shape[1]) if name in self.bases else 0 for name in self.modules}

    def state_dict(self) -> dict[str, Tensor]:
        return {f"basis.{name}": basis.contiguous() for name, basis in self.bases.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        unknown = sorted(k for k in state if not k.startswith("basis.") or k.removeprefix("basis.") not in self.modules)
        if unknown:
            raise ValueError(f"NullSpaceProjector state has unknown keys {unknown}; "
                             f"expected 'basis.<name>' for names in {sorted(self.modules)}")
        bases = {key.removeprefix("basis."): value for key, value in state.items()}
        for name, basis in bases.items():
            width = self.modules[name].in_features
            if basis.dim() != 2 or basis.shape[0] != width:
                raise ValueError(f"basis for {name!r} has shape {tuple(basis.shape)}; expected ({width}, rank)")
        self.bases = {name: basis.to(device=self.modules[name].weight.device, dtype=torch.float32).clone()
                      for name, basis in bases.items()}


def protected_projections(model: SafeModel) -> dict[str, torch.nn.Linear]:
    """Projections whose inputs are LM hidden states: fusion queries and LoRA A matrices (see stage_a.retention)."""
    out = {f"fusion.{i}.q": block.q for i, block in getattr(model.fusion, "blocks", {}).items()}
    for name, module in model.base.named_modules():
        if name.endswith("lora_A.default") and isinstance(module, torch.nn.Linear):
            out[name] = module
    return out


class RetentionTerms:
    """One run's EWC and null-space state: refreshed on calibration VL batches, applied around each step, checkpointed."""

    def __init__(self, model: SafeModel, settings: RetentionConfig, calibration: list[int], batch_size: int) -> None:
        self.settings = settings
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.fisher = OnlineFisher(named, settings.fisher_decay) if settings.fisher_weight > 0 else None
        protected = protected_projections(model) if settings.nullspace else {}
        self.nullspace = NullSpaceProjector(protected, settings.nullspace_energy) if protected else None
        if settings.nullspace and not protected:
            log.warning("null-space retention has no projection to protect (prefix mode without LoRA)")
        self.batches = [calibration[i: i + batch_size] for i in range(0, len(calibration), batch_size)]

    def refresh(self, step: int, nll: Callable[[list[int]], Tensor], forward: Callable[[list[int]], object]) -> dict:
        """Re-estimate the Fisher (from `nll` of calibration rows) and the null-space bases (hooks on `forward`)."""
        s, out = self.settings, {}
        if self.fisher is not None and step % s.fisher_every == 0:
            out["fisher"] = self.fisher.estimate([lambda rows=rows: nll(rows) for rows in self.batches[: s.fisher_batches]])
        if self.nullspace is not None and step % s.nullspace_every == 0:
            with torch.no_grad(), self.nullspace.collect():
                for rows in self.batches[: s.nullspace_batches]:
                    forward(rows)
            out["nullspace_rank"] = self.nullspace.refresh()
        return out

    def penalty(self, like: Tensor) -> Tensor:
        """The EWC penalty, or a zero in `like`'s graph without a Fisher."""
        return self.fisher.penalty() if self.fisher is not None else like.sum() * 0

    def before_update(self) -> None:
        if self.nullspace is not None:
            self.nullspace.snapshot()

    def after_update(self) -> None:
        """Project the optimizer's update of each protected projection onto its null space."""
        if self.nullspace is not None:
            self.nullspace.project()

    def state_dict(self) -> dict[str, Tensor]:
        out = {f"fisher/{k}": v for k, v in self.fisher.state_dict().items()} if self.fisher is not None else {}
        if self.nullspace is not None:
            out |= {f"nullspace/{k}": v for k, v in self.nullspace.state_dict().items()}
        return out

    def load_state_dict(self, tensors: dict[str, Tensor]) -> None:
        """Restore from a checkpoint's tensors (keys prefixed fisher/ and nullspace/; others are ignored)."""
        part = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if self.fisher is not None:
            self.fisher.load_state_dict(part("fisher/"))
        if self.nullspace is not None:
            self.nullspace.load_state_dict(part("nullspace/"))

    def summary(self) -> dict:
        return {"fisher_normalisation": OnlineFisher.NORMALISATION if self.fisher else None,
                "nullspace_ranks": self.nullspace.ranks() if self.nullspace else None}
