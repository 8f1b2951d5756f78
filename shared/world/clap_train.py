"""Train the world's audio encoder (small ClapModel) contrastively on clip-caption pairs, then save it.

Mel inputs of all train clips are extracted once and cached as one tensor; training then runs by
step count from a seeded generator, so a seed fixes the weights. Each step contrasts the batch's
clips with the batch's distinct captions, so two clips with the same caption are never treated as
negatives of each other.

With `mix_copies` > 0 the pool also holds that many babble mixtures of every train clip (other train clips
mixed in at an SNR drawn from `mix_snr_db`, shared.corruptions), each captioned by its own clip: the encoder
learns to describe the loudest source of a mixture of the world's sounds. Steps stay the same, so mixtures
replace a share of the clean batches.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import ClapModel, ClapProcessor

from shared.checkpoint import atomic_directory
from shared.cli import check_number
from shared.clap_features import clap_text_embeddings, features_from_mels, mel_features
from shared.corruptions import Corruption, corrupt_clip, corruption_rng
from shared.data.audio_io import load_audio
from shared.world.audio_model import all_captions, build_clap, caption_events
from shared.world.generate import read_scenes
from shared.world.scenes import SoundEvent
from shared.world.spec import WorldSpec

log = logging.getLogger(__name__)
METRICS_FILE = "clap_metrics.json"
LOAD_CHUNK = 256
MAX_LOGIT_SCALE = 100.0


@dataclass
class ClapTrainConfig:
    """Model sizes, steps, learning rates, batch size and seed of the audio encoder's training."""

    seed: int = 0
    audio_dim: int = 32
    audio_depths: tuple[int, ...] = (1, 1, 1, 1)
    audio_heads: tuple[int, ...] = (2, 2, 4, 8)
    audio_mlp_ratio: float = 2.0
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_mlp_ratio: int = 2
    projection_dim: int = 64
    dropout: float = 0.0
    frequency_code: float = 2.0
    train_frequency_code: bool = False
    steps: int = 900
    batch_size: int = 48
    audio_lr: float = 5e-4
    text_lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    eval_split: str = "test"
    mix_copies: int = 0
    mix_snr_db: tuple[float, float] = (0.0, 10.0)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "audio_dim", "text_dim", "projection_dim"):
            check_number(f"clap.{name}", getattr(self, name), ge=1, integer=True)
        for name in ("audio_lr", "text_lr"):
            check_number(f"clap.{name}", getattr(self, name), gt=0)
        check_number("clap.dropout", self.dropout, ge=0, lt=1)
        check_number("clap.weight_decay", self.weight_decay, ge=0)
        check_number("clap.mix_copies", self.mix_copies, ge=0, integer=True)
        low, high = self.mix_snr_db
        if not (np.isfinite(low) and np.isfinite(high) and low <= high):
            raise ValueError(f"clap.mix_snr_db is {list(self.mix_snr_db)}; expected [low, high] finite dB, low <= high")


def load_mels(
    processor: ClapProcessor, data_dir: Path, split: str, sample_rate: int
) -> tuple[torch.Tensor, list[dict]]:
    """Mel inputs (N, 1, frames, mels) of every clip of a split, extracted once, with the scene records."""
    scenes = read_scenes(data_dir, split)
    if not scenes:
        raise ValueError(f"split {split!r} in {data_dir} has no scenes; expected at least one")
    parts = []
    for i in tqdm(range(0, len(scenes), LOAD_CHUNK), desc=f"clap mels {split}", unit="chunk"):
        waves = [load_audio(s["audio"], sample_rate) for s in scenes[i:i + LOAD_CHUNK]]
        parts.append(mel_features(processor, waves, sample_rate))
    return torch.cat(parts), scenes


def mixture_snr(key: str, copy: int, cfg: ClapTrainConfig) -> float:
    """The SNR (dB, to 0.1) of one clip's mixture copy: uniform in cfg.mix_snr_db from the clip's own generator."""
    return float(np.round(corruption_rng(f"mix-snr-{copy}", key, cfg.seed).uniform(*cfg.mix_snr_db), 1))


def mixture_wave(key: str, copy: int, keys: list[str], load: Callable[[str], np.ndarray], sample_rate: int,
                 cfg: ClapTrainConfig) -> np.ndarray:
    """One clip's mixture copy: babble of other clips of `keys` at `mixture_snr`, chosen and shifted by
    shared.corruptions (seeded by the clip, the copy and cfg.seed)."""
    corruption = Corruption("noise", noise="babble", snr_db=mixture_snr(key, copy, cfg))
    return corrupt_clip(corruption, load(key), key, keys, load, sample_rate=sample_rate, seed=cfg.seed * 1000 + copy)


def mixed_mels(processor: ClapProcessor, scenes: list[dict], sample_rate: int, cfg: ClapTrainConfig) -> torch.Tensor:
    """Mel inputs (cfg.mix_copies * N, 1, frames, mels) of every clip's `mixture_wave`s, copy by copy."""
    keys = [s["audio"] for s in scenes]

    def load(key: str) -> np.ndarray:
        return load_audio(key, sample_rate)

    parts = []
    for copy in range(cfg.mix_copies):
        for i in tqdm(range(0, len(keys), LOAD_CHUNK), desc=f"clap mixtures {copy + 1}/{cfg.mix_copies}", unit="chunk"):
            waves = [mixture_wave(key, copy, keys, load, sample_rate, cfg) for key in keys[i:i + LOAD_CHUNK]]
            parts.append(mel_features(processor, waves, sample_rate))
    return torch.cat(parts)


def _sequence(events: tuple[SoundEvent, ...], attribute: str) -> tuple:
    """One attribute of each event, in order."""
    return tuple(getattr(e, attribute) for e in events)


def retrieval_metrics(predicted: list[str], truth: list[str]) -> dict:
    """Top-1 accuracy and per-attribute accuracies; an attribute is right when its whole event sequence is."""
    if not truth or len(predicted) != len(truth):
        raise ValueError(f"got {len(predicted)} predictions for {len(truth)} captions; expected as many, at least one")
    parse = caption_events()
    unknown = sorted({c for c in predicted + truth if c not in parse})
    if unknown:
        raise ValueError(f"captions {unknown[:3]} are not in the world's caption grammar; expected world captions")
    n = len(truth)
    metrics = {"top1": sum(p == t for p, t in zip(predicted, truth)) / n}
    for name, attribute in (("kind", "kind"), ("pitch", "pitch"), ("repeats", "repeats")):
        hits = sum(_sequence(parse[p], attribute) == _sequence(parse[t], attribute) for p, t in zip(predicted, truth))
        metrics[name] = hits / n
    metrics["num_events"] = sum(len(parse[p]) == len(parse[t]) for p, t in zip(predicted, truth)) / n
    return {k: round(v, 4) for k, v in metrics.items()}


def retrieve(model: ClapModel, processor: ClapProcessor, mels: torch.Tensor, captions: list[str]) -> list[str]:
    """For each clip, the candidate caption with the highest audio-text cosine similarity."""
    audio = features_from_mels(model, mels)[1]
    text = clap_text_embeddings(model, processor, captions)
    return [captions[i] for i in (audio @ text.T).argmax(dim=1).tolist()]


def evaluate_retrieval(model: ClapModel, processor: ClapProcessor, data_dir: Path, split: str) -> dict:
    """Audio-to-text top-1 on a split, ranking each clip against the split's distinct captions."""
    mels, scenes = load_mels(processor, Path(data_dir), split, processor.feature_extractor.sampling_rate)
    truth = [s["caption"] for s in scenes]
    candidates = sorted(set(truth))
    was_training = model.training
    model.eval()
    predicted = retrieve(model, processor, mels, candidates)
    model.train(was_training)
    return {"split": split, "clips": len(truth), "candidates": len(candidates), **retrieval_metrics(predicted, truth)}


def _optimizer(model: ClapModel, cfg: ClapTrainConfig) -> torch.optim.Optimizer:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    audio = [p for n, p in trainable if n.startswith(("audio_", "logit_scale_a"))]
    text = [p for n, p in trainable if not n.startswith(("audio_", "logit_scale_a"))]
    return torch.optim.AdamW(
        [{"params": audio, "lr": cfg.audio_lr}, {"params": text, "lr": cfg.text_lr}], weight_decay=cfg.weight_decay
    )


def contrastive_step_loss(
    model: ClapModel, mels: torch.Tensor, labels: torch.Tensor, text_inputs: dict
) -> torch.Tensor:
    """Symmetric InfoNCE between a batch's clips and its distinct captions (a repeated caption is no negative)."""
    present, inverse = torch.unique(labels, return_inverse=True)
    audio = F.normalize(model.audio_projection(model.audio_model(input_features=mels).pooler_output), dim=-1)
    texts = model.text_model(**{k: v[present] for k, v in text_inputs.items()}).pooler_output
    similarity = audio @ F.normalize(model.text_projection(texts), dim=-1).T
    scale_a = model.logit_scale_a.exp().clamp(max=MAX_LOGIT_SCALE)
    scale_t = model.logit_scale_t.exp().clamp(max=MAX_LOGIT_SCALE)
    audio_to_text = F.cross_entropy(scale_a * similarity, inverse)
    positives = (inverse[None, :] == torch.arange(len(present))[:, None]).float()
    log_probs = torch.log_softmax(scale_t * similarity.T, dim=1)
    text_to_audio = -((log_probs * positives).sum(1) / positives.sum(1)).mean()
    return (audio_to_text + text_to_audio) / 2


def epoch_batches(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless batches of indices into n items: seeded permutations, one per epoch, the last short batch dropped."""
    generator = torch.Generator().manual_seed(seed)
    order, cursor = torch.randperm(n, generator=generator), 0
    while True:
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(n, generator=generator), 0
        yield order[cursor:cursor + batch_size]
        cursor += batch_size


def run_steps(step_loss: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer, cfg: Any,
              n: int, desc: str) -> list[float]:
    """cfg.steps optimizer steps of `step_loss(batch indices)` over `epoch_batches` of n items with `lr_factor`'s
    schedule (cfg: steps, batch_size, seed and the schedule's fields); returns the loss of every step."""
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
    batches, losses = epoch_batches(n, cfg.batch_size, cfg.seed), []
    bar = tqdm(range(cfg.steps), desc=desc, unit="step")
    for step in bar:
        loss = step_loss(next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    return losses


def lr_factor(step: int, cfg: ClapTrainConfig) -> float:
    """Linear warmup over warmup_steps, then cosine decay to zero at cfg.steps."""
    warmup = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    return warmup * 0.5 * (1.0 + math.cos(math.pi * step / max(cfg.steps, 1)))


def _train_loop(model: ClapModel, mels: torch.Tensor, labels: torch.Tensor, text_inputs: dict,
                cfg: ClapTrainConfig) -> list[float]:
    """Run cfg.steps optimizer steps over reshuffled epochs; returns the loss of every step."""
    if cfg.batch_size > len(mels):
        raise ValueError(f"batch_size is {cfg.batch_size} but there are {len(mels)} train clips; expected <= clips")
    if not cfg.train_frequency_code:
        model.audio_model.audio_encoder.batch_norm.requires_grad_(False)
    model.train()
    return run_steps(lambda batch: contrastive_step_loss(model, mels[batch], labels[batch], text_inputs),
                     _optimizer(model, cfg), cfg, len(mels), "clap train")


def save_clap(model: ClapModel, processor: ClapProcessor, out_dir: Path, metrics: dict) -> None:
    """save_pretrained model, processor and metrics into out_dir, atomically."""
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True), encoding="utf-8")


def fit_clap(data_dir: Path, spec: WorldSpec, cfg: ClapTrainConfig) -> tuple[ClapModel, ClapProcessor, dict]:
    """Build and train the encoder on the train split; returns it frozen (eval, no grad) with training facts."""
    torch.set_num_threads(1)
    model, processor = build_clap(spec, cfg)
    start = time.perf_counter()
    mels, scenes = load_mels(processor, Path(data_dir), "train", spec.sample_rate)
    feature_seconds = time.perf_counter() - start
    captions = all_captions()
    index = {c: i for i, c in enumerate(captions)}
    missing = sorted({s["caption"] for s in scenes} - index.keys())
    if missing:
        raise ValueError(
            f"train captions {missing[:3]} are not in the world's caption grammar; expected world captions"
        )
    labels = torch.tensor([index[s["caption"]] for s in scenes])
    if cfg.mix_copies:
        mels = torch.cat([mels, mixed_mels(processor, scenes, spec.sample_rate, cfg)])
        labels = labels.repeat(1 + cfg.mix_copies)
    text_inputs = dict(processor.tokenizer(captions, padding=True, return_tensors="pt"))
    log.info("clap: %d train clips (%d of them mixtures), %d captions, %d parameters", len(mels),
             len(mels) - len(scenes), len(captions), model.num_parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        train_start = time.perf_counter()
        losses = _train_loop(model, mels, labels, text_inputs, cfg)
        train_seconds = time.perf_counter() - train_start
    model.eval()
    model.requires_grad_(False)
    info = {
        "params": model.num_parameters(),
        "train_seconds": round(train_seconds, 1),
        "feature_seconds": round(feature_seconds, 1),
        "train_clips": len(scenes),
        "mixtures": len(mels) - len(scenes),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
    }
    return model, processor, info


def train_clap(data_dir: Path, out_dir: Path, spec: WorldSpec, cfg: ClapTrainConfig) -> dict:
    """Train, freeze, evaluate and save the audio encoder; returns its metrics."""
    model, processor, info = fit_clap(data_dir, spec, cfg)
    evaluation = evaluate_retrieval(model, processor, data_dir, cfg.eval_split)
    metrics = {"retrieval": evaluation, **info, "recipe": asdict(cfg)}
    save_clap(model, processor, Path(out_dir), metrics)
    log.info("clap: %s top-1 %.3f after %.1f s of training; saved to %s", cfg.eval_split, evaluation["top1"],
             info["train_seconds"], out_dir)
    return metrics
