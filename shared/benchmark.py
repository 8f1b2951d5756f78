"""Benchmark results: figures written with the machine they were measured on."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch


def machine_info() -> dict:
    """CPU count, processor, Python and torch versions, and torch's thread count."""
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def save_result(result: dict, out: Path) -> None:
    """Add the machine to `result`, write it as JSON to `out` and print it."""
    result = {**result, "machine": machine_info()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
