"""`stage_a-train`: train the SAFE bridge with retention, evaluate every `eval_every` steps, keep the best.

One step, top to bottom:
1. the sampler draws the global batch (audio-dependent and VL questions, all with audio attached);
   under Accelerate each process takes its share (rows rank::world);
2. k is drawn from `k_choices` and the gate follows its warmup schedule;
3. loss = answer cross-entropy (VL rows only with `vl_labels: use`)
          + λ_KL · KL(base at gate 0 ‖ SAFE) on VL answer positions
          + λ_F · Σ F (θ − θ*)²  (online EWC, re-estimated every `fisher_every` steps);
4. a non-finite loss skips the step (three in a row stop the run, naming the batch ids);
5. backward, per-component gradient norms, clipping, AdamW, and the null-space projection of the
   update of protected projections (bases refreshed every `nullspace_every` steps).

Precision: a float32 bridge and float32 losses over a base in `model.dtype` (stage_a.model). float16
adds dynamic loss scaling (torch.amp.GradScaler: overflowing steps are skipped and the scale halves;
it is logged and checkpointed); bfloat16 has float32's range and needs none.

Every `eval_every` steps: audio accuracy, VL accuracy with audio and at gate 0 (whose max |logit
diff| to the base must be 0), and the paired VL retention delta. A degradation beyond
`tolerance_pts` (at `stop_patience` evaluations in a row) stops the run; the best checkpoint
within tolerance is kept. The final summary
measures that checkpoint on the test split and goes to runs/<name>/summary.json.

The command holds the run folder's lock (shared.locks) from start to end: a second `stage_a-train` on the
same --out_dir/--name exits 2 at once naming the holder; a killed run's lock is released by the kernel.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from safetensors.torch import save_file
from tqdm import tqdm

from shared.checkpoint import atomic_directory, atomic_write_text, readable_folder
from shared.cli import ArgumentParser, InputError, check_number, console
from shared.config import load_config, parse_overrides, to_dict
from shared.loading import load_safetensors
from shared.locks import folder_lock
from shared.logs import setup_logging
from stage_a.augment import augmented_split, choose_copies
from stage_a.checkpointing import (BASE_LM_FILE, STATE_FILE, BestEval, Checkpoint, TrainState, load_checkpoint,
                                   missing_files, save_checkpoint, trained_base_params)
from stage_a.config import TrainConfig, gate_value, lr_factor, retention_settings
from stage_a.data import Batch
from stage_a.evaluate import EvalSettings, Evaluator, eval_rows, generate_answers, shuffled_audio
from stage_a.losses import answer_loss, answer_positions
from stage_a.model import BRIDGE_FILE, WEIGHTS_FILE
from stage_a.model_card import write_model_card
from stage_a.monitor import GradientMonitor, RunLogger, components, frozen_base
from stage_a.prefix import media_token_ids, select_rows
from stage_a.provenance import verify_record
from stage_a.retention import RetentionTerms, distill_loss
from stage_a.sampler import MixSampler
from stage_a.setup import build_setup
from stage_a.summary import format_summary

log = logging.getLogger(__name__)
MAX_BAD_STEPS = 3
PREDICTIONS_FILE = "predictions.jsonl"


class StageATrainer:
    """Holds one run's model, optimizer, retention state and bookkeeping; `run()` trains and summarises."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, strict: bool = True) -> None:
        """`resume` continues the run's checkpoint, which must record this base and encoder unless not `strict`."""
        self.run_dir = Path(cfg.out_dir) / cfg.name
        self.ckpt_dir = self.run_dir / "checkpoint"
        has_checkpoint = readable_folder(self.ckpt_dir).exists()
        if has_checkpoint and not resume:
            raise FileExistsError(f"run {self.run_dir} already has a checkpoint; pass --resume to continue it "
                                  "or choose another --name")
        missing = missing_files(self.ckpt_dir) if resume else []
        if missing:  # checked before anything loads
            lack = f"lacks {', '.join(missing)}" if self.ckpt_dir.is_dir() else "does not exist"
            raise InputError(f"--resume: run folder {self.run_dir} has no checkpoint to resume ({self.ckpt_dir} {lack}); "
                             "expected a run that stage_a-train checkpointed with this --out_dir and --name")
        self.cfg, self.acc = cfg, Accelerator()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        with self.acc.main_process_first():
            self.setup = build_setup(cfg, self.acc.device)
            if cfg.augment.copies:  # corrupted feature copies of the train split only, encoded once and cached
                self.setup.train = augmented_split(self.setup.train, cfg.augment, self.setup.encoder,
                                                   cfg.data.feature_cache, cfg.data.sample_rate)
        self.model = self.setup.model
        checkpoint = self._read_checkpoint(strict) if resume else None  # a bad one fails before any evaluation
        self.media_ids = media_token_ids(self.model.base)
        self.retention = retention_settings(cfg)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in self.params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in self.params if p.dim() < 2], "weight_decay": 0.0}]  # no decay on norms, biases
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        self.scaler = torch.amp.GradScaler(self.acc.device.type, enabled=cfg.model.dtype == "float16")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps))
        trained_base = set(self.setup.trained_base)
        self.monitor = GradientMonitor(components(self.model, trained_base), frozen_base(self.model, trained_base),
                                       patience=cfg.vanish_patience)
        train = self.setup.train
        audio_rows = train.indices(audio=True)
        self.sampler = MixSampler(audio_rows, train.indices(audio=False), cfg.mix,
                                  [f"{train.samples[i].family}.{train.samples[i].qtype}" for i in audio_rows])
        self.eval_settings = EvalSettings(k=cfg.k_eval, batch_size=cfg.eval_batch_size,
                                          shuffle_audio=cfg.shuffle_audio, use_audio=cfg.use_audio)
        self.targets = self._training_targets()
        vl_rows = train.indices(audio=False)
        calib = torch.randperm(len(vl_rows), generator=torch.Generator().manual_seed(cfg.seed))
        self.calibration = [vl_rows[i] for i in calib[: cfg.mix.batch_size * max(
            self.retention.fisher_batches, self.retention.nullspace_batches)].tolist()]
        self.terms = RetentionTerms(self.model, self.retention, self.calibration, cfg.mix.batch_size)
        # Both evaluators measure the untouched base now, before training or a restored checkpoint changes
        # anything (the full fine-tuning baseline trains the base LM itself).
        self.evaluator = Evaluator(self.model, self.setup.collator, self.setup.val,
                                   eval_rows(self.setup.val, cfg.data.eval_size, cfg.seed), self.eval_settings,
                                   self.acc.device)
        test = self.setup.test
        self.test_evaluator = Evaluator(self.model, self.setup.collator, test,
                                        eval_rows(test, cfg.data.test_size, cfg.seed), self.eval_settings, self.acc.device)
        self.state = TrainState()
        self.seen = torch.zeros(len(train), dtype=torch.bool)
        if checkpoint is not None:
            self._restore(checkpoint)
        self.logger = RunLogger(self.run_dir, to_dict(cfg), tensorboard=cfg.tensorboard, wandb=cfg.wandb,
                                run_name=cfg.name, main_process=self.acc.is_main_process,
                                resume_step=self.state.step if resume else None)
        self.ddp_model, self.optimizer = self.acc.prepare(self.model, self.optimizer)

    def _training_targets(self) -> list[str]:
        """Answers trained on: gold, except VL rows under `vl_labels: ignore`, which get the base's own answers."""
        train = self.setup.train
        targets = list(train.targets)
        if self.cfg.data.vl_labels == "ignore":
            vl = train.indices(audio=False)
            answers = generate_answers(self.model, self.setup.collator, train, vl, self.eval_settings,
                                       self.acc.device, audio=False)
            for i in vl:
                targets[i] = answers[i]
            log.info("vl_labels=ignore: %d VL questions distil towards the base model's own answers", len(vl))
        return targets

    # --- one training step -------------------------------------------------------------------
    def _batch(self, step: int) -> tuple[Batch, list[int], int, float]:
        rows = self.sampler.batch(step)
        local = rows[self.acc.process_index::self.acc.num_processes]
        gen = torch.Generator().manual_seed(self.cfg.seed * 65_537 + step)
        k = self.cfg.k_choices[int(torch.randint(len(self.cfg.k_choices), (1,), generator=gen))]
        copies = None
        if self.cfg.augment.copies:
            copies = choose_copies(self.setup.train, rows, self.cfg.augment, self.cfg.seed, step)
            copies = copies[self.acc.process_index::self.acc.num_processes]
        batch = self.setup.collator.train_batch(self.setup.train, local, [self.targets[i] for i in local], copies)
        if self.cfg.shuffle_audio:
            batch = shuffled_audio(batch, seed=step)
        return batch.to(self.acc.device), rows, k, gate_value(self.cfg.gate_schedule, step, self.cfg.gate_warmup_steps)

    def _audio(self, batch: Batch, k: int, gate: float) -> dict:
        if not self.cfg.use_audio:
            return {}
        return {"audio_frames": batch.frames, "frame_mask": batch.frame_mask, "k": k, "gate": gate}

    def _refresh_retention(self, step: int, k: int) -> dict:
        """Re-estimate the Fisher and the null-space bases on calibration VL questions with audio (gate 1)."""
        def forward(rows: list[int]) -> tuple[Batch, torch.Tensor]:
            batch = self.setup.collator.train_batch(self.setup.train, rows, [self.targets[i] for i in rows])
            batch = batch.to(self.acc.device)
            return batch, self.model(**self._audio(batch, k, 1.0), **batch.inputs).logits

        def nll(rows: list[int]) -> torch.Tensor:
            batch, logits = forward(rows)
            return answer_loss(logits, batch.labels, torch.ones_like(batch.is_vl), 0.0)
        return self.terms.refresh(step, nll, forward)

    def train_step(self, step: int) -> dict:
        batch, rows, k, gate = self._batch(step)
        info = self._refresh_retention(step, k)
        r, cfg = self.retention, self.cfg
        logits = self.ddp_model(**self._audio(batch, k, gate), **batch.inputs).logits
        labelled = ~batch.is_vl | torch.tensor(cfg.data.vl_labels == "use", device=batch.is_vl.device)
        ce = answer_loss(logits, batch.labels, labelled, cfg.label_smoothing)
        kl = logits.sum() * 0
        if r.kl_weight > 0 and batch.is_vl.any():
            vl = batch.is_vl
            with torch.no_grad():
                # VL rows only; per-image tensors follow their rows (rows without an image have none)
                teacher = self.model(**select_rows(batch.inputs, vl, self.media_ids)).logits
            kl = distill_loss(logits[vl], teacher, answer_positions(batch.labels[vl]), r.kl_temperature, r.kl_kind)
        ewc = self.terms.penalty(logits)
        loss = ce + r.kl_weight * kl + r.fisher_weight * ewc
        finite = bool(self.acc.gather(torch.isfinite(loss.detach()).float().reshape(1)).min() > 0)
        if not finite:
            self.state.bad_steps += 1
            ids = batch.ids
            log.warning("step %d: non-finite loss %s, step skipped (batch ids %s...)", step, loss.item(), ids[:5])
            if self.state.bad_steps >= MAX_BAD_STEPS:
                raise FloatingPointError(f"{MAX_BAD_STEPS} non-finite losses in a row, last at step {step}; "
                                         f"batch ids: {ids}")
            return {"skipped": True, "loss": float("nan")}
        self.state.bad_steps = 0
        self._count(rows)
        n_audio = sum(self.setup.train.samples[i].family != "visual" for i in rows)
        info |= {"k": k, "gate": gate, "audio_ratio": n_audio / len(rows), "target_ratio": self.sampler.fraction(step)}
        if not loss.requires_grad:  # gate 0 (or no audio): the bridge is not in the graph; no optimizer step
            return {"loss": loss.item(), "ce": ce.item(), "kl": 0.0, "ewc": 0.0, "lr": self.scheduler.get_last_lr()[0],
                    "bridge_active": False, **info}
        self.acc.backward(self.scaler.scale(loss))
        self.scaler.unscale_(self.optimizer)
        norms = self.monitor.observe()
        if cfg.grad_clip > 0:
            self.acc.clip_grad_norm_(self.params, cfg.grad_clip)
        self.terms.before_update()
        if self.scaler.is_enabled():
            info["loss_scale"] = self.scaler.get_scale()
        self.scaler.step(self.optimizer)  # skipped (weights unchanged) when a float16 gradient overflowed
        self.scaler.update()
        self.terms.after_update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item(), "ce": ce.item(), "kl": kl.detach().item(), "ewc": ewc.item(),
                "lr": self.scheduler.get_last_lr()[0], "grad_norm": norms, "bridge_active": True, **info}

    def _count(self, rows: list[int]) -> None:
        samples, state = self.setup.train.samples, self.state
        state.family_counts = dict(Counter(state.family_counts) + Counter(samples[i].family for i in rows))
        state.qtype_counts = dict(Counter(state.qtype_counts)
                                  + Counter(f"{samples[i].family}.{samples[i].qtype}" for i in rows))
        self.seen[rows] = True
        state.drawn += len(rows)

    # --- evaluation, checkpoints ---------------------------------------------------------------
    def evaluate(self, step: int) -> dict:
        result = self.evaluator.run()
        self.state.history.append({"step": step, "audio_acc": result["audio_acc"]["mean"],
                                   **{k: result[k] for k in ("vl_degradation_pts", "gate0_max_abs_logit_diff")}})
        ok = result["vl_degradation_pts"] <= self.cfg.tolerance_pts
        best = self.state.best
        if ok and (best is None or result["audio_acc"]["mean"] > best.audio_acc):
            self.state.best = BestEval(step, result["audio_acc"]["mean"], result["vl_degradation_pts"])
            if self.acc.is_main_process:
                self._save_best()
        self.state.breaches = 0 if ok else self.state.breaches + 1
        if self.state.breaches >= self.cfg.stop_patience:
            self.state.stopped_early = True
        data = {"epochs": self.state.drawn / len(self.setup.train), "unique_seen": int(self.seen.sum()),
                "family_counts": self.state.family_counts, "qtype_counts": self.state.qtype_counts}
        self.logger.log(step, "data", data)
        self.logger.log(step, "eval", result)
        return result

    def _save_best(self) -> None:
        """The bridge (and the base LM, when it is trained) of the best evaluation so far."""
        with atomic_directory(self.run_dir / "best") as tmp:
            self.model.write_bridge(tmp)
            base = trained_base_params(self.model)
            if base:
                save_file({k: v.detach().cpu().contiguous() for k, v in base.items()}, str(tmp / BASE_LM_FILE))

    def _load_best(self) -> None:
        best = readable_folder(self.run_dir / "best")
        self.model.load_trainable_state(load_safetensors(best / WEIGHTS_FILE, BRIDGE_FILE), str(best))
        if (best / BASE_LM_FILE).is_file():
            self.model.base.load_state_dict(load_safetensors(best / BASE_LM_FILE, BRIDGE_FILE), strict=False)

    def checkpoint(self) -> None:
        if not self.acc.is_main_process:
            return
        tensors = {"seen": self.seen, **self.terms.state_dict()}
        state = self.state.to_json({"sampler": self.sampler.state_dict(), "monitor": self.monitor.state_dict(),
                                    "scaler": self.scaler.state_dict()})
        save_checkpoint(self.ckpt_dir, self.model, self.optimizer, self.scheduler, tensors, state)

    def _read_checkpoint(self, strict: bool) -> Checkpoint:
        """The run's checkpoint, whose bridge record must name this base and encoder (a warning if not `strict`)."""
        ckpt = load_checkpoint(self.ckpt_dir)
        verify_record(ckpt.bridge_config.get("record"), self.model.base, self.setup.encoder, str(self.ckpt_dir), strict)
        return ckpt

    def _restore(self, ckpt: Checkpoint) -> None:
        self.model.load_trainable_state(ckpt.bridge, str(self.ckpt_dir))
        if ckpt.base_lm:
            self.model.base.load_state_dict(ckpt.base_lm, strict=False)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.scheduler.load_state_dict(ckpt.scheduler)
        self.terms.load_state_dict(ckpt.tensors)
        self.seen = ckpt.tensors["seen"].bool()
        self.state, parts = TrainState.from_json(ckpt.state, str(self.ckpt_dir / STATE_FILE))
        self.sampler.load_state_dict(parts["sampler"])
        self.monitor.load_state_dict(parts["monitor"])
        scaler = parts.get("scaler")
        if self.scaler.is_enabled():
            if not scaler:
                raise ValueError(f"checkpoint {self.ckpt_dir} has no loss-scaler state; expected one for "
                                 "model.dtype float16 (it was written by a run in another dtype)")
            self.scaler.load_state_dict(scaler)
        log.info("resumed %s at step %d", self.run_dir, self.state.step)

    # --- the run -------------------------------------------------------------------------------
    def run(self, stop_after: int = 0) -> dict | None:
        """Train to `cfg.steps` (or stop early), then summarise on the test split; None if stopped by stop_after."""
        cfg, start = self.cfg, self.state.step
        bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="stage A", unit="step",
                   disable=not self.acc.is_main_process)
        clock, last_eval = time.perf_counter(), {}
        for step in bar:
            metrics = self.train_step(step)
            self.state.step = step + 1
            if (step + 1) % cfg.log_every == 0:  # records carry the number of steps done, as checkpoints do
                self.logger.log(step + 1, "train", metrics)
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                last_eval = self.evaluate(step + 1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", audio=f"{last_eval.get('audio_acc', {}).get('mean', 0):.3f}",
                            vl_delta=f"{-last_eval.get('vl_degradation_pts', 0.0):+.2f}", refresh=False)
            session_end = bool(stop_after) and step + 1 - start == stop_after
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps or self.state.stopped_early or session_end:
                self.state.train_seconds += time.perf_counter() - clock
                clock = time.perf_counter()
                self.checkpoint()
            if self.state.stopped_early:
                log.warning("VL degradation %.2f pts exceeds the tolerance %.2f at step %d: stopping; best checkpoint "
                            "within tolerance: %s", last_eval["vl_degradation_pts"], cfg.tolerance_pts, step + 1,
                            self.state.best)
                break
            if session_end:
                log.info("stopping after %d steps of this session (--stop-after); --resume continues", stop_after)
                self.logger.close()
                return None
        self.state.train_seconds += time.perf_counter() - clock
        return self.summarise()

    def summarise(self) -> dict:
        best = self.state.best
        if best is not None:
            self._load_best()
        elif self.state.step > 0:
            log.warning("no evaluation stayed within the %.2f-point tolerance; summarising the last weights",
                        self.cfg.tolerance_pts)
        result = self.test_evaluator.run(detail=True)
        predictions = result.pop("predictions")
        trained = self.cfg.use_audio and self.state.step > 0
        summary = {**result, "split": "test", "trainable_params": sum(p.numel() for p in self.params) if trained else 0, "retention_variant": self.cfg.retention,
                   "retention": dataclasses.asdict(self.retention), "k_eval": self.cfg.k_eval,
                   "model_dtype": self.cfg.model.dtype, "augment": dataclasses.asdict(self.cfg.augment),
                   "train_seconds": round(self.state.train_seconds, 2), "steps": self.state.step,
                   "best_step": best.step if best else None, "within_tolerance": best is not None,
                   "stopped_early": self.state.stopped_early, "vl_labels": self.cfg.data.vl_labels,
                   **self.terms.summary(),
                   "excluded": {s.name: s.excluded for s in (self.setup.train, self.setup.val, self.setup.test)},
                   "inputs": {**self.setup.collator.provenance(),
                              **{s.name: s.composition() for s in (self.setup.train, self.setup.val, self.setup.test)}},
                   "history": self.state.history, "base_grad_steps": self.monitor.base_grad_steps}
        if self.acc.is_main_process:
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
            atomic_write_text(self.run_dir / PREDICTIONS_FILE, "".join(json.dumps(r) + "\n" for r in predictions))
            if best is not None:
                write_model_card(self.run_dir)
        self.logger.log(self.state.step, "summary", summary)
        self.logger.close()
        return summary


@console("stage_a-train")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="stage_a-train", description=__doc__.splitlines()[0],
                                     epilog="Any config key can be overridden: --steps 500 --mix.audio_fraction 0.5")
    parser.add_argument("--preset", default="stage_a", help="preset name in configs/ or a YAML path (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    parser.add_argument("--stop-after", type=int, default=0,
                        help="end this session after N steps (checkpointed; default 0: run to the end)")
    parser.add_argument("--no-strict", action="store_true",
                        help="with --resume: continue a checkpoint trained on another base or encoder (a warning)")
    parser.add_argument("--wandb", action="store_true", help="log to wandb (offline without an API key)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args, rest = parser.parse_known_args(argv)
    check_number("--stop-after", args.stop_after, ge=0, integer=True)
    setup_logging(args.verbose)
    overrides = parse_overrides(rest)
    if args.wandb:
        overrides["wandb"] = "true"
    cfg = load_config(TrainConfig, args.preset, overrides)
    main_process = PartialState().is_main_process
    # One trainer per run folder: a second one on it stops here (exit 2) instead of training over the first.
    hint = "wait for it to end, or choose another --out_dir or --name"
    run_dir = Path(cfg.out_dir) / cfg.name
    with folder_lock(run_dir, "stage_a-train", wait=False, busy_hint=hint) if main_process else nullcontext():
        summary = StageATrainer(cfg, resume=args.resume, strict=not args.no_strict).run(stop_after=args.stop_after)
    if summary is not None and main_process:
        print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
