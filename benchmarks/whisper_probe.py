"""Benchmark: do the world's Whisper frames carry the clip's content? Linear probes on pooled frames.

Run: python benchmarks/whisper_probe.py [--dir WORLD] [--out benchmarks/results/whisper_probe.json]
Encodes every train and test clip of a built default world with the frozen encoders Stage A uses
(shared.encoders: the world's Whisper, an untrained Whisper of the same recipe as a control, the
world's CLAP), pools each clip's valid frames, fits a multinomial logistic regression on the train
clips and reports its test accuracy per attribute of the clip's sound, next to the majority class
(chance). Attributes: the first event's kind, pitch and pulse count, the number of events, and, on
two-event clips only, which kind comes first (order; mean pooling cannot see it, so that probe
also reads the first-half and second-half means of the clip's valid frames).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from shared.benchmark import save_result
from shared.config import load_config
from shared.data.audio_io import load_audio
from shared.encoders import build_encoder
from shared.logs import setup_logging
from shared.world.build import WorldConfig, build_world
from shared.world.generate import read_scenes
from shared.world.whisper_model import build_whisper
from shared.world.whisper_train import save_whisper

log = logging.getLogger(__name__)
CHUNK = 64
PROBE_STEPS = 300
WEIGHT_DECAY = 1e-3
ATTRIBUTES: dict[str, Callable[[dict], str | int]] = {
    "kind": lambda s: s["events"][0]["kind"],
    "pitch": lambda s: s["events"][0]["pitch"],
    "repeats": lambda s: s["events"][0]["repeats"],
    "num_events": lambda s: len(s["events"]),
}


def pooled_frames(encoder, scenes: list[dict], sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per clip: the mean of its valid frames, and the means of their first and second halves side by side."""
    means, halves = [], []
    for i in range(0, len(scenes), CHUNK):
        waves = [load_audio(s["audio"], sample_rate) for s in scenes[i:i + CHUNK]]
        frames, mask = encoder.encode(waves, sample_rate)
        for clip, valid in zip(frames, mask):
            kept = clip[valid]
            middle = len(kept) // 2
            means.append(kept.mean(0))
            halves.append(torch.cat([kept[:middle].mean(0), kept[middle:].mean(0)]))
    return torch.stack(means), torch.stack(halves)


def probe_accuracy(train_x: torch.Tensor, train_y: list, test_x: torch.Tensor, test_y: list) -> dict:
    """Test accuracy of a logistic regression fitted on standardised train features, and the majority-class rate."""
    classes = sorted(set(train_y) | set(test_y), key=str)
    ytr = torch.tensor([classes.index(y) for y in train_y])
    yte = torch.tensor([classes.index(y) for y in test_y])
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(0)
    linear = torch.nn.Linear(xtr.shape[1], len(classes))
    optimizer = torch.optim.Adam(linear.parameters(), lr=0.05, weight_decay=WEIGHT_DECAY)
    for _ in range(PROBE_STEPS):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(linear(xtr), ytr).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (linear(xte).argmax(1) == yte).float().mean().item()
    majority = max(sum(1 for y in test_y if y == c) for c in classes) / len(test_y)
    return {"accuracy": round(accuracy, 4), "majority": round(majority, 4), "classes": len(classes),
            "test_clips": len(test_y)}


def probe_encoder(encoder, train: list[dict], test: list[dict], sample_rate: int) -> dict:
    """Every attribute's probe on one encoder's pooled frames."""
    start = time.perf_counter()
    (tr_mean, tr_halves), (te_mean, te_halves) = (pooled_frames(encoder, s, sample_rate) for s in (train, test))
    result = {name: probe_accuracy(tr_mean, [f(s) for s in train], te_mean, [f(s) for s in test])
              for name, f in ATTRIBUTES.items()}
    pairs = [[i for i, s in enumerate(split) if len(s["events"]) == 2] for split in (train, test)]
    first = [[split[i]["events"][0]["kind"] for i in idx] for split, idx in zip((train, test), pairs)]
    for name, (tr, te) in (("order_mean_pool", (tr_mean, te_mean)), ("order_halves", (tr_halves, te_halves))):
        result[name] = probe_accuracy(tr[pairs[0]], first[0], te[pairs[1]], first[1])
    result["dim"], result["seconds"] = encoder.dim, round(time.perf_counter() - start, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="world folder (default: the default world's)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "whisper_probe.json")
    args = parser.parse_args()
    setup_logging()
    torch.set_num_threads(1)
    config = load_config(WorldConfig, "world")
    world = build_world(config, args.dir)
    data, sr = world / "data", config.world.sample_rate
    train, test = read_scenes(data, "train"), read_scenes(data, "test")
    with tempfile.TemporaryDirectory() as tmp:
        untrained, extractor, tokenizer = build_whisper(config.world, config.whisper)
        save_whisper(untrained, extractor, tokenizer, Path(tmp) / "untrained", {"untrained": True})
        encoders = {"whisper": build_encoder("whisper", None, str(world / "models" / "whisper")),
                    "whisper_untrained": build_encoder("whisper", None, str(Path(tmp) / "untrained")),
                    "clap": build_encoder("clap", str(world / "models" / "clap"), None)}
        probes = {}
        for name, encoder in encoders.items():
            probes[name] = probe_encoder(encoder, train, test, sr)
            log.info("%s: %s", name, {k: v["accuracy"] for k, v in probes[name].items() if isinstance(v, dict)})
    save_result({"benchmark": "whisper_probe", "world": str(world), "train_clips": len(train),
                 "probe": f"logistic regression on standardised pooled frames, Adam {PROBE_STEPS} full-batch steps",
                 "encoders": probes}, args.out)


if __name__ == "__main__":
    main()
