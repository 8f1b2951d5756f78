"""Benchmark: how far a trained bridge's audio-only LoRA moves each LM projection, ‖ΔW‖ / ‖W‖ per module.

Run: python benchmarks/lora_delta.py --bridge runs/stage_a [--out benchmarks/results/lora_delta.json]
ΔW = (α / r) · B A is what LoRA adds to a projection W for rows with audio (rows without audio, and
gate-0 rows, use W alone). The base is the one the bridge records (safe_config.json), loaded with
`from_pretrained`; the bridge is loaded through `SafeModel.from_bridge`, which checks the base's weights.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText

from shared.benchmark import save_result
from shared.loading import load_json
from shared.logs import setup_logging
from stage_a.lora import ADAPTER
from stage_a.model import BRIDGE_FILE, CONFIG_FILE, SafeModel


def relative_deltas(model: SafeModel) -> dict[str, float]:
    """‖(α/r) B A‖_F / ‖W‖_F for every LoRA-wrapped projection, by module name."""
    out = {}
    for name, module in model.base.named_modules():
        if ADAPTER in getattr(module, "lora_A", {}):
            delta = module.get_delta_weight(ADAPTER)
            out[name] = float(delta.norm() / module.base_layer.weight.norm())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bridge", type=Path, required=True, help="a bridge folder or a stage_a-train run folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lora_delta.json")
    args = parser.parse_args()
    setup_logging()
    folder = args.bridge / "best" if (args.bridge / "best" / CONFIG_FILE).is_file() else args.bridge
    record = load_json(folder / CONFIG_FILE, BRIDGE_FILE)
    base = AutoModelForImageTextToText.from_pretrained(record["record"]["base"]["id"]).eval()
    with torch.no_grad():
        deltas = relative_deltas(SafeModel.from_bridge(base, folder))
    by_kind: dict[str, list[float]] = defaultdict(list)
    for name, value in deltas.items():
        by_kind[name.rsplit(".", 1)[-1]].append(value)
    save_result({"benchmark": "lora_delta", "bridge": str(folder), "lora": record["lora"],
                 "by_projection": {kind: {"mean": round(sum(v) / len(v), 3), "min": round(min(v), 3),
                                          "max": round(max(v), 3), "modules": len(v)}
                                   for kind, v in sorted(by_kind.items())},
                 "modules": {name: round(value, 4) for name, value in deltas.items()}}, args.out)


if __name__ == "__main__":
    main()
