"""Benchmark: forward latency of the base VL model vs SAFE on the embedded world, k in {0, 4, 8, 16}.

Run: python benchmarks/stage_a_latency.py [--batch 16] [--repeats 30]
Measures, in one run on one machine: base forward; SAFE (the default preset's bridge: its projector, fusion
and LoRA, seeded and with its zero-initialised outputs filled) without audio and at gate 0 (target <= 1% over
base, which the fusion alone meets; the LoRA branches still run without audio, see the README); SAFE with audio
at k = 4, 8, 16; and for k = 8 the share of the audio
encoder, the projector, and the fusion blocks with the LoRA branches. Figures are medians over repeats, in ms per
batch; the gate-0 and no-audio overheads are medians of paired, back-to-back ratios to the base. Results go to
benchmarks/results/stage_a_latency.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from shared.config import load_config
from shared.data.audio_io import load_audio
from shared.data.schema import read_manifest
from shared.encoders import ClapEncoder, EncoderSettings
from shared.benchmark import save_result
from shared.logs import setup_logging
from shared.world.build import WorldConfig, build_world
from stage_a.config import TrainConfig
from stage_a.exactness import fill_zero_init
from stage_a.model import SafeModel
from stage_a.prompting import build_prompt
from stage_a.setup import bridge_config


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def paired_overhead(base_fn, fn, repeats: int) -> float:
    """Median of per-repeat (fn / base_fn - 1), timing the two back to back so drift cancels."""
    base_fn(), fn()
    ratios = []
    for _ in range(repeats):
        start = time.perf_counter()
        base_fn()
        mid = time.perf_counter()
        fn()
        ratios.append((time.perf_counter() - mid) / (mid - start) - 1)
    return round(statistics.median(ratios), 4)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stage_a_latency.json")
    args = parser.parse_args()
    setup_logging()
    world = build_world(load_config(WorldConfig, "world"))
    samples = read_manifest(world / "data" / "val.jsonl")[: args.batch]
    processor = AutoProcessor.from_pretrained(world / "models" / "vl")
    inputs = dict(processor(images=[Image.open(s.image).convert("RGB") for s in samples],
                            text=[build_prompt(processor, s.question) for s in samples], return_tensors="pt", padding=True))
    base = LlavaForConditionalGeneration.from_pretrained(world / "models" / "vl").eval()
    encoder = ClapEncoder(EncoderSettings(str(world / "models" / "clap")))
    waves = [load_audio(s.audio, 16000) for s in samples]
    frames, mask = encoder.encode(waves, 16000)
    torch.manual_seed(0)
    model = SafeModel(LlavaForConditionalGeneration.from_pretrained(world / "models" / "vl"),
                      bridge_config(load_config(TrainConfig, "stage_a").model, encoder.dim, base)).eval()
    fill_zero_init(model, seed=0, std=0.02)
    r = args.repeats
    base_ms = median_ms(lambda: base(**inputs), r)
    result = {"benchmark": "stage_a_latency", "batch": args.batch, "repeats": r, "threads": torch.get_num_threads(),
              "base_ms": base_ms,
              "no_audio_ms": median_ms(lambda: model(**inputs), r),
              "gate0_ms": median_ms(lambda: model(audio_frames=frames, frame_mask=mask, k=8, gate=0.0, **inputs), r)}
    for k in (4, 8, 16):
        result[f"audio_k{k}_ms"] = median_ms(lambda: model(audio_frames=frames, frame_mask=mask, k=k, gate=1.0, **inputs), r)
    encoder_ms = median_ms(lambda: encoder.encode(waves, 16000), max(3, r // 5))
    projector_ms = median_ms(lambda: model.projector(frames, 8, mask), r)
    fusion_ms = round(result["audio_k8_ms"] - projector_ms - base_ms, 3)  # the fusion blocks and the LoRA branches
    total_k8 = encoder_ms + result["audio_k8_ms"]
    result.update({
        "gate0_over_base": paired_overhead(lambda: base(**inputs), lambda: model(
            audio_frames=frames, frame_mask=mask, k=8, gate=0.0, **inputs), 10 * r),
        "no_audio_over_base": paired_overhead(lambda: base(**inputs), lambda: model(**inputs), 10 * r),
        "k8_breakdown_ms": {"base": base_ms, "encoder": encoder_ms, "projector": projector_ms,
                            "fusion_and_lora": fusion_ms},
        "k8_share": {name: round(ms / total_k8, 4) for name, ms in
                     (("base", base_ms), ("encoder", encoder_ms), ("projector", projector_ms),
                      ("fusion_and_lora", fusion_ms))},
        "k8_total_over_base": round(total_k8 / base_ms, 3),
        "param_mb": {name: round(sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20, 3)
                     for name, m in (("base", base), ("encoder", encoder.model), ("projector", model.projector),
                                     ("fusion", model.fusion))},
    })
    result["param_mb"]["lora"] = round(sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                                           if ".lora_" in name) / 2**20, 3)
    save_result(result, args.out)


if __name__ == "__main__":
    main()
