"""Benchmark: SAFE's memory, analytic for real hub models and measured on the embedded world.

Run: python benchmarks/memory.py [--bridge runs/stage_a] [--base DIR --clap DIR] [--batch 32] [--k 8] [--limit N]
Writes benchmarks/results/memory.json and prints a short table.

Analytic (stage_a.bridge_size, meta device): LLaVA-1.5-7B / -13B with LAION-CLAP HTSAT-base (unfused, as in
laion/larger_clap_music_and_speech) and Whisper-large-v3 encoders, the default preset's bridge: parameters by part,
bytes, bridge as % of the base, and the extra activations per request at k = 4 / 8 / 16.

Measured, each figure in a fresh subprocess (so one measurement's memory never inflates another's):
- `serve_k{K}` / `serve_k0`: SafePipeline.from_pretrained(bridge), the RSS after each of its load steps (base,
  encoder, bridge; the pipeline's own functions are wrapped, not re-implemented), parameter bytes per component, then
  the test split answered in batches; the peak RSS of the process. k0 answers with no audio (encoder loaded, unused).
- `base_only`: the bare base VL model loaded alone and answering the same prompts: what SAFE adds is measured against it.
- `profile`: activation memory per component for one batch (see `peak_by_label`).
Peak RSS is the kernel's high-water mark of the process's own memory map (VmHWM in /proc/self/status): getrusage's
ru_maxrss is not used because Linux carries the parent's high-water mark into a child across exec.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import torch
from PIL import Image
from torch.profiler import ProfilerActivity, profile, record_function

from shared.benchmark import save_result
from shared.config import load_config
from shared.data.schema import read_manifest
from shared.logs import setup_logging
from shared.world.build import WorldConfig, build_world
import stage_a.pipeline as pipeline  # imported before any RSS is read, by every worker
from stage_a.bridge_size import BASES, ENCODERS, bridge_report
from stage_a.prompting import build_prompt, model_inputs
from stage_a.setup import load_base

log = logging.getLogger("benchmarks.memory")
MB = 2**20
MEMORY_EVENT = "[memory]"


def rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / MB, 1)


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) * 1024 / MB, 1)
    raise RuntimeError("/proc/self/status has no VmHWM line; expected a Linux kernel")


def param_mb(params: Iterator[torch.nn.Parameter]) -> float:
    return round(sum(p.numel() * p.element_size() for p in params) / MB, 3)


def peak_by_label(prof: profile, labels: list[str]) -> dict[str, dict[str, int]]:
    """Per record_function label: the peak of live tensor bytes above the bytes live when it started, over its calls.

    The profiler (profile_memory=True) logs every CPU tensor allocation (+bytes) and free (-bytes) with a timestamp;
    their running sum is the live bytes. For each call of a label, `peak_bytes` is the running sum's highest point
    inside the call minus its value at the call's start (the call's working set: outputs and temporaries of everything
    inside it, nested labels included), and `retained_bytes` what is still live at its end. Parameters and tensors
    allocated before the call count for nothing.
    """
    events = list(prof.profiler.kineto_results.events())
    memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == MEMORY_EVENT)
    times = [t for t, _ in memory]
    live, total = [], 0
    for _, nbytes in memory:
        total += nbytes
        live.append(total)
    out = {}
    for label in labels:
        peaks, retained = [0], [0]
        for event in (e for e in events if e.name() == label):
            start, end = event.start_ns(), event.start_ns() + event.duration_ns()
            first = next((i for i, t in enumerate(times) if t >= start), len(times))
            before = live[first - 1] if first else 0
            inside = [live[i] for i in range(first, len(times)) if times[i] <= end]
            peaks.append(max(inside, default=before) - before)
            retained.append((inside[-1] if inside else before) - before)
        calls = sum(1 for e in events if e.name() == label)
        out[label] = {"calls": calls, "peak_bytes": max(peaks), "retained_bytes": max(retained)}
    return out


@contextmanager
def after_call(owner: Any, name: str, record: Callable[[], None]) -> Iterator[None]:
    """Within this block, calling owner.<name> runs it and then `record()`."""
    original = getattr(owner, name)
    saved = vars(owner)[name]  # a class keeps its classmethod descriptor, restored as it was

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        record()
        return result

    setattr(owner, name, staticmethod(wrapped) if isinstance(owner, type) else wrapped)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def labelled(owner: Any, name: str, label: str) -> None:
    """Make every call of owner.<name> a profiler range named `label` (an instance attribute: this process only)."""
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with record_function(label):
            return original(*args, **kwargs)

    setattr(owner, name, wrapped)


def load_pipeline(args: argparse.Namespace, steps: dict[str, float] | None = None) -> Any:
    """SafePipeline.from_pretrained(args.bridge); with `steps`, the RSS after its base, encoder and bridge loads."""
    steps = {} if steps is None else steps
    with (after_call(pipeline, "load_base", lambda: steps.setdefault("after_base_mb", rss_mb())),
          after_call(pipeline, "build_encoder", lambda: steps.setdefault("after_encoder_mb", rss_mb())),
          after_call(pipeline.SafeModel, "from_bridge", lambda: steps.setdefault("after_bridge_mb", rss_mb()))):
        return pipeline.SafePipeline.from_pretrained(args.bridge, base=args.base, clap=args.clap)


def batches(args: argparse.Namespace) -> list[list[Any]]:
    samples = read_manifest(args.manifest)
    samples = samples[: args.limit] if args.limit else samples
    return [samples[i:i + args.batch] for i in range(0, len(samples), args.batch)]


def worker_serve(args: argparse.Namespace) -> dict:
    """Load the pipeline step by step, then answer the split in batches at k = args.k."""
    steps = {"after_imports_mb": rss_mb()}
    pipe = load_pipeline(args, steps)
    steps["peak_after_load_mb"] = peak_rss_mb()
    model = pipe.model
    lora = [p for n, p in model.base.named_parameters() if ".lora_" in n]
    params = {"base": param_mb(p for n, p in model.base.named_parameters() if ".lora_" not in n),
              "encoder": param_mb(p for m in pipe.encoder.modules() for p in m.parameters()),
              "projector": param_mb(model.projector.parameters()), "fusion": param_mb(model.fusion.parameters()),
              "lora": param_mb(iter(lora))}
    start, answered = time.perf_counter(), 0
    for batch in batches(args):
        answered += len(pipe.answer([pipe.prepare(s.image, s.audio, s.question, args.k) for s in batch]))
    return {"rss": {**steps, "after_serving_mb": rss_mb(), "peak_mb": peak_rss_mb()}, "param_mb": params,
            "questions": answered, "seconds": round(time.perf_counter() - start, 1), "k": args.k}


def worker_base_only(args: argparse.Namespace) -> dict:
    """The bare base VL model alone (no SAFE, no encoder) answering the same prompts as the pipeline."""
    steps = {"after_imports_mb": rss_mb()}
    base, processor = load_base(args.base, "float32", "cpu")
    steps["after_base_mb"] = rss_mb()
    start, answered = time.perf_counter(), 0
    with torch.no_grad():
        for batch in batches(args):
            images = [Image.open(s.image).convert("RGB") for s in batch]
            inputs = model_inputs(processor, [build_prompt(processor, s.question) for s in batch], images, "left")
            answered += len(base.generate(**inputs, max_new_tokens=pipeline.MAX_NEW_TOKENS, do_sample=False))
    return {"rss": {**steps, "after_serving_mb": rss_mb(), "peak_mb": peak_rss_mb()},
            "param_mb": {"base": param_mb(base.parameters())}, "questions": answered,
            "seconds": round(time.perf_counter() - start, 1)}


def worker_profile(args: argparse.Namespace) -> dict:
    """Activation memory per component for one batch, with audio at k and without (see `peak_by_label`)."""
    pipe = load_pipeline(args)
    model, base = pipe.model, pipe.model.base
    labelled(pipe.encoder, "encode", "encoder")
    labelled(model.projector, "forward", "projector")
    for block in model.fusion.blocks.values():
        labelled(block, "forward", "fusion_block")
    for label, module in (("vision_tower", base.model.vision_tower), ("connector", base.model.multi_modal_projector),
                          ("language_model", base.model.language_model), ("lm_head", base.lm_head)):
        labelled(module, "forward", label)
    batch = batches(args)[0]
    with_audio = [pipe.prepare(s.image, s.audio, s.question, args.k) for s in batch]
    without = [pipe.prepare(s.image, s.audio, s.question, 0) for s in batch]
    for requests in (with_audio, without):  # warm-up: one-off allocations stay out of the figures
        pipe.answer(requests)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with record_function("answer_with_audio"):
            pipe.answer(with_audio)
        with record_function("answer_without_audio"):
            pipe.answer(without)
    labels = ["answer_with_audio", "answer_without_audio", "encoder", "projector", "fusion_block", "vision_tower",
              "connector", "language_model", "lm_head"]
    # The method on a known allocation: 1 MB allocated and freed inside a label must read exactly 1 MB.
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as check:
        with record_function("known_1mb"):
            block = torch.empty(MB, dtype=torch.uint8)
            del block
    return {"batch": len(batch), "k": args.k, "components": peak_by_label(prof, labels),
            "method_check_bytes": peak_by_label(check, ["known_1mb"])["known_1mb"]["peak_bytes"]}


WORKERS = {"serve": worker_serve, "base_only": worker_base_only, "profile": worker_profile}


def spawn(args: argparse.Namespace, worker: str, k: int) -> dict:
    """Run one worker in a fresh Python process and return its JSON result."""
    cmd = [sys.executable, __file__, "--worker", worker, "--bridge", str(args.bridge), "--manifest", str(args.manifest),
           "--batch", str(args.batch), "--k", str(k), "--limit", str(args.limit), "--base", args.base]
    cmd += ["--clap", args.clap] if args.clap else []
    log.info("measuring %s (k=%d) in a fresh process", worker, k)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"worker {worker} exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def analytic() -> list[dict]:
    return [bridge_report(base, encoder) for base in BASES for encoder in ENCODERS]


def table(result: dict) -> str:
    lines = [f"{'base':<28} {'encoder':<36} {'bridge MB fp32':>14} {'% of base':>9} {'encoder MB fp32':>15} "
             f"{'extra MB deployed':>17}"]
    for r in result["analytic"]:
        lines.append(f"{r['base']:<28} {r['encoder']:<36} {r['mb']['bridge']['float32']:>14.1f} "
                     f"{r['bridge_pct_of_base']:>9.3f} {r['mb']['encoder']['float32']:>15.1f} "
                     f"{r['deployed_mb']['extra_over_base']:>17.1f}")
    m = result["measured"]
    lines += ["", "embedded world (MB):  peak RSS  base only {b}  SAFE k=0 {z}  SAFE k={k} {s}".format(
        b=m["base_only"]["rss"]["peak_mb"], z=m["serve_k0"]["rss"]["peak_mb"], k=result["k"],
        s=m[f"serve_k{result['k']}"]["rss"]["peak_mb"])]
    for label, c in m["profile"]["components"].items():
        lines.append(f"  activation peak {label:<22} {c['peak_bytes'] / MB:>9.3f} MB over {c['calls']} calls")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bridge", type=Path, default=Path("runs/stage_a"))
    parser.add_argument("--base", default=None, help="base VL folder (default: the embedded world's)")
    parser.add_argument("--clap", default=None, help="CLAP folder for a bridge written without a record")
    parser.add_argument("--manifest", type=Path, default=None, help="questions (default: the world's test split)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--limit", type=int, default=0, help="answer only the first N questions (0: all)")
    parser.add_argument("--worker", choices=sorted(WORKERS), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "memory.json")
    args = parser.parse_args()
    setup_logging()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return
    world = build_world(load_config(WorldConfig, "world"))
    args.base = args.base or str(world / "models" / "vl")
    args.manifest = args.manifest or world / "data" / "test.jsonl"
    measured = {"base_only": spawn(args, "base_only", 0), "serve_k0": spawn(args, "serve", 0),
                f"serve_k{args.k}": spawn(args, "serve", args.k), "profile": spawn(args, "profile", args.k)}
    peak = lambda name: measured[name]["rss"]["peak_mb"]  # noqa: E731
    result = {"benchmark": "memory", "bridge": str(args.bridge), "base": args.base, "manifest": str(args.manifest),
              "batch": args.batch, "k": args.k, "mb": "2**20 bytes", "analytic": analytic(), "measured": measured,
              "safe_over_base_peak_mb": {"k0": round(peak("serve_k0") - peak("base_only"), 1),
                                         f"k{args.k}": round(peak(f"serve_k{args.k}") - peak("base_only"), 1)}}
    save_result(result, args.out)
    print(table(result))


if __name__ == "__main__":
    main()
