"""Train the world's Whisper (a small captioner) to write each clip's caption, then save it.

Why captioning: the decoder can only write "two high chirps then one low tone" by cross-attending
to encoder frames, so the frames must carry each event's kind, pitch, pulse count and order; with
the encoder's fixed sinusoidal positions, order is where in time a frame sits. It is also how the
real Whisper's encoder learnt (sequence to sequence), so Stage A sees the same kind of frames.

Log-mel inputs of all train clips are extracted once; training runs by step count from a seeded
generator, so a seed fixes the weights. Quality is measured against the same candidates as the CLAP's
retrieval: the decoder writes each test clip's caption, each step restricted to words that keep it one
of the split's distinct captions, and `shared.world.clap_train.retrieval_metrics` scores it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor, WhisperForConditionalGeneration

from shared.checkpoint import atomic_directory
from shared.cli import check_number
from shared.data.audio_io import load_audio
from shared.world.audio_model import all_captions
from shared.world.clap_train import LOAD_CHUNK, retrieval_metrics, run_steps
from shared.world.generate import read_scenes
from shared.world.spec import WorldSpec
from shared.world.whisper_model import build_whisper, fold_input_standardization, standardize_input

log = logging.getLogger(__name__)
METRICS_FILE = "whisper_metrics.json"
IGNORE = -100  # label of a padded caption position (WhisperForConditionalGeneration's loss skips it)


@dataclass
class WhisperTrainConfig:
    """Model sizes, front end, steps, learning rate, batch size and seed of the world's Whisper."""

    seed: int = 0
    d_model: int = 64
    encoder_layers: int = 2
    decoder_layers: int = 2
    heads: int = 4
    ffn_dim: int = 256
    num_mel_bins: int = 64
    hop_seconds: float = 0.02
    dropout: float = 0.0
    steps: int = 1200
    batch_size: int = 32
    lr: float = 3e-3  # 1e-3 reached caption top-1 0.66 in 1200 steps on the default world, 3e-3 0.94
    weight_decay: float = 0.0
    warmup_steps: int = 50
    eval_split: str = "test"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "d_model", "encoder_layers", "decoder_layers", "heads", "ffn_dim",
                     "num_mel_bins"):
            check_number(f"whisper.{name}", getattr(self, name), ge=1, integer=True)
        if self.d_model % self.heads:
            raise ValueError(f"WhisperTrainConfig.d_model {self.d_model} is not divisible by heads {self.heads}; "
                             "expected a multiple")
        for name in ("lr", "hop_seconds"):
            check_number(f"whisper.{name}", getattr(self, name), gt=0)
        check_number("whisper.dropout", self.dropout, ge=0, lt=1)
        check_number("whisper.weight_decay", self.weight_decay, ge=0)


def load_features(extractor: WhisperFeatureExtractor, data_dir: Path, split: str) -> tuple[torch.Tensor, list[dict]]:
    """Log-mel inputs (N, mels, frames) of every clip of a split, extracted once, with the scene records."""
    scenes = read_scenes(data_dir, split)
    if not scenes:
        raise ValueError(f"split {split!r} in {data_dir} has no scenes; expected at least one")
    sr = extractor.sampling_rate
    parts = []
    for i in tqdm(range(0, len(scenes), LOAD_CHUNK), desc=f"whisper mels {split}", unit="chunk"):
        waves = [load_audio(s["audio"], sr) for s in scenes[i:i + LOAD_CHUNK]]
        parts.append(extractor(waves, sampling_rate=sr, return_tensors="pt")["input_features"])
    return torch.cat(parts), scenes


def caption_labels(tokenizer: PreTrainedTokenizerFast, captions: list[str]) -> torch.Tensor:
    """Decoder targets (C, L): each caption's word ids then </s>, padded with IGNORE (the decoder starts at <s>)."""
    ids = [tokenizer(c)["input_ids"][1:] for c in captions]  # drop the template's <s>: it is decoder_start_token_id
    unknown = [c for c, row in zip(captions, ids) if tokenizer.unk_token_id in row]
    if unknown:
        raise ValueError(f"captions {unknown[:3]} have words outside the caption vocabulary; expected world captions")
    labels = torch.full((len(ids), max(map(len, ids))), IGNORE)
    for row, seq in zip(labels, ids):
        row[:len(seq)] = torch.tensor(seq)
    return labels


def scene_labels(scenes: list[dict], captions: list[str]) -> torch.Tensor:
    """Index of each scene's caption in `captions`; a caption outside the grammar is an error."""
    index = {c: i for i, c in enumerate(captions)}
    missing = sorted({s["caption"] for s in scenes} - index.keys())
    if missing:
        raise ValueError(f"captions {missing[:3]} are not in the world's caption grammar; expected world captions")
    return torch.tensor([index[s["caption"]] for s in scenes])


@torch.no_grad()
def decode_captions(model: WhisperForConditionalGeneration, features: torch.Tensor, labels: torch.Tensor) -> list[int]:
    """Index of the caption (row of labels (C, L)) the decoder writes for each clip, restricted to those captions.

    Greedy decoding where each step picks the likeliest word that still continues one of the candidates,
    so the answer is always one of them.
    """
    if len(torch.unique(labels, dim=0)) != len(labels):
        raise ValueError(f"labels hold {len(labels)} captions but only {len(torch.unique(labels, dim=0))} distinct; "
                         "expected distinct candidates")
    encoded = model.model.encoder(features).last_hidden_state
    alive = torch.ones(len(features), len(labels), dtype=torch.bool)
    written = torch.full((len(features), 1), model.config.decoder_start_token_id)
    for step in range(labels.shape[1]):
        token = labels[:, step]
        allowed = torch.zeros(len(features), model.config.vocab_size, dtype=torch.bool)
        rows, cols = torch.nonzero(alive & (token >= 0)[None, :], as_tuple=True)
        allowed[rows, token[cols]] = True
        if not allowed.any():
            break
        logits = model(encoder_outputs=(encoded,), decoder_input_ids=written).logits[:, -1]
        chosen = logits.masked_fill(~allowed, float("-inf")).argmax(dim=1)
        open_rows = allowed.any(dim=1)
        alive &= ~open_rows[:, None] | (token[None, :] == chosen[:, None])
        written = torch.cat([written, chosen[:, None]], dim=1)
    left = alive.sum(dim=1)
    if not bool((left == 1).all()):
        raise ValueError(f"decoding left {left.tolist()} candidates per clip; expected exactly one each "
                         "(labels must end in </s>, then IGNORE)")
    return alive.int().argmax(dim=1).tolist()


def evaluate_captions(model: WhisperForConditionalGeneration, extractor: WhisperFeatureExtractor,
                      tokenizer: PreTrainedTokenizerFast, data_dir: Path, split: str) -> dict:
    """Top-1 on a split: the decoder writes each clip's caption, restricted to the split's distinct captions."""
    features, scenes = load_features(extractor, Path(data_dir), split)
    truth = [s["caption"] for s in scenes]
    candidates = sorted(set(truth))
    was_training = model.training
    model.eval()
    chosen = decode_captions(model, features, caption_labels(tokenizer, candidates))
    model.train(was_training)
    predicted = [candidates[i] for i in chosen]
    return {"split": split, "clips": len(truth), "candidates": len(candidates), **retrieval_metrics(predicted, truth)}


def _train_loop(model: WhisperForConditionalGeneration, features: torch.Tensor, targets: torch.Tensor,
                cfg: WhisperTrainConfig) -> list[float]:
    """Run cfg.steps optimizer steps over reshuffled epochs; returns the loss of every step."""
    if cfg.batch_size > len(features):
        raise ValueError(f"whisper.batch_size is {cfg.batch_size} but there are {len(features)} train clips; "
                         "expected <= clips")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    model.train()
    return run_steps(lambda batch: model(input_features=features[batch], labels=targets[batch]).loss, optimizer, cfg,
                     len(features), "whisper train")


def fit_whisper(data_dir: Path, spec: WorldSpec, cfg: WhisperTrainConfig) -> tuple[
        WhisperForConditionalGeneration, WhisperFeatureExtractor, PreTrainedTokenizerFast, dict]:
    """Build and train the captioner on the train split; returns it frozen (eval, no grad) with training facts."""
    torch.set_num_threads(1)
    model, extractor, tokenizer = build_whisper(spec, cfg)
    start = time.perf_counter()
    features, scenes = load_features(extractor, Path(data_dir), "train")
    feature_seconds = time.perf_counter() - start
    captions = all_captions()
    targets = caption_labels(tokenizer, captions)[scene_labels(scenes, captions)]
    targets = targets[:, :int((targets != IGNORE).sum(1).max())]  # no column that is padding in every row
    log.info("whisper: %d train clips, %d parameters", len(features), model.num_parameters())
    standardize_input(model, features)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        train_start = time.perf_counter()
        losses = _train_loop(model, features, targets, cfg)
        train_seconds = time.perf_counter() - train_start
    fold_input_standardization(model)
    model.eval()
    model.requires_grad_(False)
    info = {
        "params": model.num_parameters(),
        "encoder_params": model.model.encoder.num_parameters(),
        "train_seconds": round(train_seconds, 1),
        "feature_seconds": round(feature_seconds, 1),
        "train_clips": len(features),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
    }
    return model, extractor, tokenizer, info


def save_whisper(model: WhisperForConditionalGeneration, extractor: WhisperFeatureExtractor,
                 tokenizer: PreTrainedTokenizerFast, out_dir: Path, metrics: dict) -> None:
    """save_pretrained model, feature extractor, tokenizer and metrics into out_dir, atomically."""
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        extractor.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True), encoding="utf-8")


def train_whisper(data_dir: Path, out_dir: Path, spec: WorldSpec, cfg: WhisperTrainConfig) -> dict:
    """Train, freeze, evaluate and save the world's Whisper; returns its metrics."""
    model, extractor, tokenizer, info = fit_whisper(data_dir, spec, cfg)
    evaluation = evaluate_captions(model, extractor, tokenizer, data_dir, cfg.eval_split)
    metrics = {"captions": evaluation, **info, "recipe": asdict(cfg)}
    save_whisper(model, extractor, tokenizer, Path(out_dir), metrics)
    log.info("whisper: %s caption top-1 %.3f after %.1f s of training; saved to %s", cfg.eval_split,
             evaluation["top1"], info["train_seconds"], out_dir)
    return metrics
