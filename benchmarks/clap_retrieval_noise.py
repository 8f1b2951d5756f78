"""Benchmark: a world CLAP's audio-to-caption retrieval on test clips, clean and under `stage_a-robust`'s corruptions.

Run: python benchmarks/clap_retrieval_noise.py [--world DIR] [--conditions clean noise-babble-0dB ...] [--out FILE]
Reads an already built world (never builds one). Each test clip is corrupted exactly as `stage_a-robust` does it
(shared.corruptions.corrupt_clip, seed 0, babble from other test clips), then ranked against the split's distinct
captions (shared.world.clap_train.retrieve). Retrieval uses the pooled clip embedding, not the frames the bridge
reads, so it shows what the encoder keeps of a clip, not what SAFE answers. About 40 s per condition on one thread.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from transformers import ClapModel, ClapProcessor

from shared.clap_features import mel_features
from shared.corruptions import corrupt_clip, parse_corruption
from shared.data.audio_io import load_audio
from shared.world.build import default_world_dir
from shared.world.clap_train import LOAD_CHUNK, retrieval_metrics, retrieve
from shared.world.generate import read_scenes
from shared.world.spec import WorldSpec

log = logging.getLogger(__name__)


def retrieval_under(world: Path, conditions: list[str]) -> dict[str, dict]:
    """Retrieval metrics of the world's CLAP on its test clips under each named corruption."""
    model = ClapModel.from_pretrained(world / "models" / "clap").eval()
    processor = ClapProcessor.from_pretrained(world / "models" / "clap")
    sample_rate = processor.feature_extractor.sampling_rate
    scenes = read_scenes(world / "data", "test")
    keys, truth = [s["audio"] for s in scenes], [s["caption"] for s in scenes]

    def load(key: str) -> np.ndarray:
        return load_audio(key, sample_rate)

    results = {}
    for name in conditions:
        corruption = parse_corruption(name)
        waves = [corrupt_clip(corruption, load(k), k, keys, load, sample_rate=sample_rate) for k in keys]
        mels = torch.cat([mel_features(processor, waves[i:i + LOAD_CHUNK], sample_rate)
                          for i in range(0, len(waves), LOAD_CHUNK)])
        with torch.no_grad():
            results[name] = retrieval_metrics(retrieve(model, processor, mels, sorted(set(truth))), truth)
        log.info("%s: %s", name, results[name])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=default_world_dir(WorldSpec()))
    parser.add_argument("--conditions", nargs="+", default=["clean", "noise-babble-0dB", "noise-pink-0dB"])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    results = {"world": str(args.world), "retrieval": retrieval_under(args.world, args.conditions)}
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, sort_keys=True), encoding="utf-8")


if __name__ == "__main__":
    main()
