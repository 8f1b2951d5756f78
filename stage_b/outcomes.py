"""`stage_b-outcomes`: the outcome table Stage B trains on, built once from a Stage A checkpoint.

For every question of a split and every action (no audio, or audio with k tokens for k in K):
- `score`: SAFE's greedy answer scored by its dataset's metric (`shared.dataset_metrics`);
- `gflops`: compute of the prompt forward (prefill) counted analytically from the model configs
  (stage_a.flops) for the question's own prompt length and audio frames, plus, for audio actions,
  the frozen encoder on one full window (encoders pad every clip to their window). The analytic
  and FlopCounterMode counts of the first question are kept in the provenance (`flops_check`);
- `latency_repeats_ms`: per timed repeat r (`--repeats` of them), the wall time of the batched
  greedy generation divided by the batch's questions, plus for audio actions repeat r of the
  encoder's time per clip (a batch of full windows); every question of a batch shares its values;
- `latency_ms`: the median of those repeats per question and action;
- `confidence`: the base model's no-audio probability of its first answer token;
- `text_tokens`: each prompt's tokens that are not image placeholders (stage_b.cost_profiles recounts the
  question on a real base model from it).
Features known before the decision go in `features`: the mean LM input embedding of the
question, per-channel image mean and std, and audio-preview statistics (duration, RMS energy,
zero-crossing rate, spectral centroid). The table is an .npz (no pickle) read by envs.OutcomeTable.
An interrupted build resumes from its partial table (`<out>.partial.npz`); a finished --out table is
refused (exit 2) unless --overwrite is given.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from envs.outcome_table import OutcomeTable
from shared.checkpoint import atomic_write_npz
from shared.cli import (ArgumentParser, InputError, add_overwrite_flag, check_number, console, number_list,
                        refuse_overwrite)
from shared.config import load_config, parse_overrides
from shared.loading import load_npz
from shared.logs import setup_logging
from stage_a.checkpointing import bridge_folder, bridge_hash
from stage_a.config import TrainConfig
from stage_a.flops import CPU_SDPA
from stage_a.model import bridge_k_max
from stage_b.runner import SafeRunner

log = logging.getLogger(__name__)
ENCODER_BATCH = 8
STATE_ARRAYS = ("score", "gflops", "latency_ms", "latency_repeats_ms", "confidence", "text_tokens")  # partial table


def encoder_ms_per_clip(runner: SafeRunner, repeats: int) -> np.ndarray:
    """The frozen encoder's wall time per clip on a batch of full windows, once per repeat, in ms."""
    waves = [runner.full_window()] * ENCODER_BATCH
    runner.encoder.encode(waves[:1], runner.sample_rate)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.encoder.encode(waves, runner.sample_rate)
        times.append(time.perf_counter() - start)
    return 1000 * np.array(times) / ENCODER_BATCH


def profiler_check(runner: SafeRunner, ks: list[int]) -> dict:
    """Analytic vs FlopCounterMode GFLOPs of the first question's prefill (generate, one token) per action,
    and of the encoder on one full window: the formula's audit trail, kept in the table's provenance."""
    batch = runner.batch([0])
    check = {}
    for k in [0, *ks]:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as counter:
            runner.model.generate(**runner.audio_inputs(batch, k), **batch.inputs, max_new_tokens=1, do_sample=False)
        analytic = runner.gflops(batch, k)[0] - (runner.encoder_gflops if k else 0.0)
        check[f"k{k}"] = {"analytic": analytic, "profiler": counter.get_total_flops() / 1e9}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as counter:
        runner.encoder.encode([runner.full_window()], runner.sample_rate)
    check["encoder"] = {"analytic": runner.encoder_gflops, "profiler": counter.get_total_flops() / 1e9}
    return check


def _resume(partial: Path, key: dict) -> dict[str, np.ndarray] | None:
    """The arrays of an interrupted build of the same table, or None; a partial file of another table is an error."""
    if not partial.is_file():
        return None
    state = load_npz(partial, "a partial table written by stage_b-outcomes (delete it to start over)")
    saved = json.loads(state.pop("key").item()) if "key" in state else None
    if saved != key:
        raise ValueError(f"{partial} holds a partial table for {saved}, not {key}; delete it to start over")
    missing = [name for name in ("done", *STATE_ARRAYS, "features") if name not in state]
    if missing:
        raise ValueError(f"{partial} was written without {missing}; delete it to start over")
    log.info("resuming %s: %d of %d questions already done", partial, int(state["done"]), key["rows"])
    return state


@torch.no_grad()
def build_table(cfg: TrainConfig, checkpoint: Path, split: str, ks: list[int], batch_size: int,
                repeats: int, partial: Path | None = None, save_every: int = 10) -> OutcomeTable:
    """Score, count and time every (question, action) of `split`, batched.

    With `partial`, progress is saved there atomically every `save_every` batches and a later call
    with the same checkpoint, split, actions, batch size and repeats resumes after the last saved batch
    (`main` removes the file once the finished table is saved). Repeat r of an audio action adds repeat r of the
    encoder's time, so each repeat is one timing of the whole answer and `latency_ms` is their median."""
    check_number("repeats", repeats, ge=1, integer=True)
    runner = SafeRunner(cfg, checkpoint, split)
    encoder_ms = encoder_ms_per_clip(runner, repeats)
    actions = [0, *ks]
    n = len(runner.data)
    digest = bridge_hash(checkpoint)
    key = {"checkpoint_hash": digest, "split": split, "actions": actions, "rows": n, "batch_size": batch_size,
           "repeats": repeats}
    state = (_resume(partial, key) if partial else None) or {
        "done": np.array(0), "confidence": np.zeros(n, np.float32), "text_tokens": np.zeros(n, np.int64),
        **{name: np.zeros((n, len(actions)), np.float32) for name in ("score", "gflops", "latency_ms")},
        "latency_repeats_ms": np.zeros((n, len(actions), repeats), np.float32)}
    score, gflops, latency, repeated, confidence, text_tokens = (state[name] for name in STATE_ARRAYS)
    features = [state["features"]] if "features" in state else []
    starts = range(int(state["done"]), n, batch_size)
    for step, begin in enumerate(tqdm(starts, desc="outcomes", unit="batch"), start=1):
        rows = list(range(begin, min(n, begin + batch_size)))
        batch = runner.batch(rows)
        for a, k in enumerate(actions):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                answers, first_token = runner.answer(batch, k)
                times.append(time.perf_counter() - start)
            score[rows, a] = runner.scores(rows, answers)
            gflops[rows, a] = runner.gflops(batch, k)
            per_repeat = (1000 * np.array(times) / len(rows) + (encoder_ms if k else 0.0)).astype(np.float32)
            repeated[rows, a] = per_repeat
            latency[rows, a] = np.median(per_repeat)
            if k == 0:
                confidence[rows] = first_token.numpy()
        text_tokens[rows] = runner.text_tokens(batch)
        features.append(runner.features(batch, rows))
        if partial and step % save_every == 0 and rows[-1] + 1 < n:
            arrays = dict(zip(STATE_ARRAYS, (score, gflops, latency, repeated, confidence, text_tokens)))
            atomic_write_npz(partial, {"key": np.array(json.dumps(key)), "done": np.array(rows[-1] + 1), **arrays,
                                       "features": np.concatenate(features)})
    provenance = {"checkpoint": str(checkpoint), "checkpoint_hash": digest, "split": split, "actions": actions,
                  "manifest": runner.setup.paths[split], "encoder_gflops": runner.encoder_gflops,
                  "encoder_ms": float(np.median(encoder_ms)), "encoder_ms_repeats": encoder_ms.tolist(),
                  "flops_check": profiler_check(runner, ks),
                  "features": runner.feature_columns()}
    samples = runner.data.samples
    return OutcomeTable(ids=np.array([s.id for s in samples]), family=np.array([s.family for s in samples]),
                        qtype=np.array([s.qtype for s in samples]), actions=np.array(actions, dtype=np.int64),
                        score=score, gflops=gflops, latency_ms=latency, features=np.concatenate(features),
                        provenance=provenance, confidence=confidence, latency_repeats_ms=repeated,
                        text_tokens=text_tokens)


@console("stage_b-outcomes")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="stage_b-outcomes", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/stage_a"),
                        help="bridge folder or stage_a-train run folder (default: runs/stage_a, the default run)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--preset", default="stage_a", help="training preset naming the base model and data")
    parser.add_argument("--ks", default="4,8,16", help="audio token counts of the audio actions: distinct, 1..k_max")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed repeats per batch, all kept in latency_repeats_ms (latency_ms: their median)")
    parser.add_argument("--save-every", type=int, default=10, help="batches between saves of the partial table")
    parser.add_argument("--out", type=Path, default=None, help="table path (default: <checkpoint>/outcomes_<split>.npz)")
    add_overwrite_flag(parser, "the finished table (a partial one is always resumed)")
    args, rest = parser.parse_known_args(argv)
    setup_logging()
    overrides = parse_overrides(rest)
    cfg = load_config(TrainConfig, args.preset, overrides)
    try:
        bridge = bridge_folder(args.checkpoint)
    except FileNotFoundError as err:
        raise InputError(f"--checkpoint {err}") from err
    out = args.out or args.checkpoint / f"outcomes_{args.split}.npz"
    refuse_overwrite(out, args.overwrite)
    ks = number_list("--ks", args.ks, int, ge=1, le=bridge_k_max(bridge))
    if len(set(ks)) < len(ks):
        raise InputError(f"--ks is {args.ks!r}: a k is repeated; expected distinct token counts (one action each)")
    for flag, value in (("--batch-size", args.batch_size), ("--repeats", args.repeats), ("--save-every", args.save_every)):
        check_number(flag, value, ge=1, integer=True)
    partial = out.with_name(f"{out.stem}.partial.npz")
    table = build_table(cfg, bridge, args.split, list(ks), args.batch_size, args.repeats, partial, args.save_every)
    table.provenance.update(preset=args.preset, overrides=overrides)
    table.save(out)
    partial.unlink(missing_ok=True)
    print(json.dumps({"table": str(out), "rows": len(table.ids), "actions": table.actions.tolist(),
                      "mean_score": table.score.mean(0).round(4).tolist(),
                      "mean_gflops": table.gflops.mean(0).round(4).tolist(),
                      "mean_latency_ms": table.latency_ms.mean(0).round(3).tolist(),
                      "p95_latency_ms": np.percentile(table.latency_repeats_ms, 95, axis=(0, 2)).round(3).tolist()},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
