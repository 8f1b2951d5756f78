"""`stage_b-outcomes`: the outcome table Stage B trains on, built once from a Stage A checkpoint.

For every question of a split and every action (no audio, or audio with k tokens for k in K):
- `score`: the VQA score of SAFE's greedy answer;
- `gflops`: compute of the prompt forward (prefill), counted with torch's FlopCounterMode on
  the actual batch and divided by its size, plus, for audio actions, the frozen encoder's count
  on one full window (encoders pad every clip to their window, so it is the same per clip);
- `latency_ms`: wall time of the batched greedy generation per question (median over
  `--repeats`), plus the encoder's measured time per clip for audio actions.
Features known before the decision go in `features`: the mean LM input embedding of the
question, per-channel image mean and std, and audio-preview statistics (duration, RMS energy,
zero-crossing rate, spectral centroid). The table is an .npz (no pickle) read by envs.OutcomeTable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from envs.outcome_table import OutcomeTable
from shared.answers import parse_answer
from shared.config import ConfigError, load_config, parse_overrides
from shared.data.audio_io import load_audio
from shared.encoders import build_encoder
from shared.logs import setup_logging
from shared.metrics import vqa_accuracy
from stage_a.config import TrainConfig
from stage_a.eval_command import bridge_folder
from stage_a.model import WEIGHTS_FILE
from stage_a.setup import build_setup

log = logging.getLogger(__name__)


def audio_preview(wave: np.ndarray, sample_rate: int) -> list[float]:
    """Duration (s), RMS energy, zero-crossing rate and spectral centroid (kHz): cheap, no encoder."""
    spectrum = np.abs(np.fft.rfft(wave))
    freqs = np.fft.rfftfreq(len(wave), 1.0 / sample_rate)
    centroid = float((spectrum * freqs).sum() / max(spectrum.sum(), 1e-12)) / 1000.0
    crossings = float(np.mean(np.abs(np.diff(np.signbit(wave).astype(np.int8))))) if len(wave) > 1 else 0.0
    return [len(wave) / sample_rate, float(np.sqrt(np.mean(wave ** 2))), crossings, centroid]


def _gflops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


@torch.no_grad()
def build_table(cfg: TrainConfig, checkpoint: Path, split: str, ks: list[int], batch_size: int,
                repeats: int) -> OutcomeTable:
    """Score, count and time every (question, action) of `split`, batched."""
    setup = build_setup(cfg, splits=(split,), bridge_dir=checkpoint)
    data, model, collator = getattr(setup, split), setup.model.eval(), setup.collator
    encoder = build_encoder(cfg.model.audio_encoder, setup.paths["clap"], setup.paths["whisper"])
    sr = cfg.data.sample_rate
    window = np.zeros(int(getattr(encoder, "max_seconds", 30.0) * sr), dtype=np.float32)
    encoder_gflops = _gflops(lambda: encoder.encode([window], sr))
    start = time.perf_counter()
    encoder.encode([window], sr)
    encoder_ms = 1000 * (time.perf_counter() - start)
    actions = [0, *ks]
    n = len(data)
    score, gflops, latency = (np.zeros((n, len(actions)), np.float32) for _ in range(3))
    embed = model.base.get_input_embeddings()
    features = []
    previews = {}
    for begin in tqdm(range(0, n, batch_size), desc="outcomes", unit="batch"):
        rows = list(range(begin, min(n, begin + batch_size)))
        batch = collator.prompt_batch(data, rows)
        for a, k in enumerate(actions):
            audio = {} if k == 0 else {"audio_frames": batch.frames, "frame_mask": batch.frame_mask, "k": k, "gate": 1.0}
            times, out = [], None
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                out = model.generate(**audio, **batch.inputs, max_new_tokens=4, do_sample=False)
                times.append(time.perf_counter() - t0)
            answers = collator.decode(out, batch.inputs["input_ids"].shape[1])
            for j, i in enumerate(rows):
                score[i, a] = vqa_accuracy(parse_answer(answers[j]), list(data.samples[i].answers))
            per_sample = _gflops(lambda: model(**audio, **batch.inputs)) / len(rows)
            gflops[rows, a] = per_sample + (encoder_gflops if k else 0.0)
            latency[rows, a] = 1000 * statistics.median(times) / len(rows) + (encoder_ms if k else 0.0)
        mask = batch.inputs["attention_mask"].bool()
        token_embeds = embed(batch.inputs["input_ids"]).float()
        question = (token_embeds * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        pixels = batch.inputs["pixel_values"].float()
        image = torch.cat([pixels.mean((2, 3)), pixels.std((2, 3))], dim=1)
        for j, i in enumerate(rows):
            sample = data.samples[i]
            if sample.audio not in previews:
                previews[sample.audio] = audio_preview(load_audio(sample.audio, sr, sample.audio_start, sample.audio_end), sr)
            features.append(np.concatenate([question[j].numpy(), image[j].numpy(), previews[sample.audio]]))
    digest = hashlib.sha256((checkpoint / WEIGHTS_FILE).read_bytes()).hexdigest()[:16]
    provenance = {"checkpoint": str(checkpoint), "checkpoint_hash": digest, "split": split, "actions": actions,
                  "manifest": setup.paths[split], "encoder_gflops": encoder_gflops, "encoder_ms": encoder_ms,
                  "features": ["question_embedding_mean"] * int(question.shape[1]) + ["image_mean_std"] * 6
                  + ["audio_duration", "audio_rms", "audio_zcr", "audio_centroid_khz"]}
    samples = data.samples
    return OutcomeTable(ids=np.array([s.id for s in samples]), family=np.array([s.family for s in samples]),
                        qtype=np.array([s.qtype for s in samples]), actions=np.array(actions, dtype=np.int64),
                        score=score, gflops=gflops, latency_ms=latency,
                        features=np.stack(features).astype(np.float32), provenance=provenance)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stage_b-outcomes", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="bridge folder or stage_a-train run folder")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--preset", default="stage_a", help="training preset naming the base model and data")
    parser.add_argument("--ks", default="4,8,16", help="audio token counts of the audio actions")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats per batch (median)")
    parser.add_argument("--out", type=Path, default=None, help="table path (default: <checkpoint>/outcomes_<split>.npz)")
    args, rest = parser.parse_known_args(argv)
    setup_logging()
    try:
        cfg = load_config(TrainConfig, args.preset, parse_overrides(rest))
    except ConfigError as err:
        print(f"stage_b-outcomes: {err}", file=sys.stderr)
        return 2
    bridge = bridge_folder(args.checkpoint)
    table = build_table(cfg, bridge, args.split, [int(k) for k in args.ks.split(",")], args.batch_size, args.repeats)
    out = args.out or args.checkpoint / f"outcomes_{args.split}.npz"
    table.save(out)
    print(json.dumps({"table": str(out), "rows": len(table.ids), "actions": table.actions.tolist(),
                      "mean_score": table.score.mean(0).round(4).tolist(),
                      "mean_gflops": table.gflops.mean(0).round(4).tolist(),
                      "mean_latency_ms": table.latency_ms.mean(0).round(3).tolist()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
