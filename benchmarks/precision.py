"""Benchmark: a trained SAFE bridge at inference precisions: float32, bf16 autocast, bf16 weights, INT8 (torchao).

Run: python benchmarks/precision.py [--checkpoint runs/stage_a] [--preset stage_a] [--size 0] [--repeats 7]
     [--threads 1] [--bigger-lm] [--out benchmarks/results/precision.json]

Every variant answers the test split exactly as `stage_a-eval` does (stage_a.evaluate.Evaluator: greedy answers,
gate 1, k = k_eval, each question scored by its dataset's metric), and is compared with float32 on the same
questions: paired bootstrap (shared.stats.paired_diff_ci) and McNemar. Variants:
- fp32: the reference; bf16-autocast: float32 weights, generation inside torch.autocast("cpu", torch.bfloat16);
- bf16-weights: the base loaded in bfloat16 (`--model.dtype bfloat16`), float32 bridge;
- int8-{weight,dynamic}-{base,bridge,both}: stage_a.quantize on a float32 model (base = the LM's Linear layers
  and its head; the vision tower, connector and embeddings stay float32; bridge = projector, fusion, LoRA).
Gate-0 exactness: SAFE at gate 0 (audio attached) against a separately loaded bare base of the same precision
(same dtype, same quantization, same autocast), full logits on every VL question; must be bit-identical.
Latency: the same greedy generation with audio (encoder excluded: its features come from the float32 cache),
per question, at the eval batch size on a fixed stratified subset and at batch size 1 on a smaller one; the
variants are timed round-robin, one pass each per repeat, so drift on a shared machine hits them alike; the
figure is the median over repeats. Everything runs on `--threads` torch threads (default 1: on a shared 2-core
machine two threads contend with other processes and single timings swing by 10x). Memory: parameter bytes of the base (LoRA excluded) and of the bridge, counting
torchao tensors by their int8 data and scales (stage_a.quantize.tensor_bytes).
`--bigger-lm` adds, clearly apart, a latency-only sweep of random Llama LMs of growing width (no SAFE, no data) at
float32 vs the two INT8 schemes, to show where INT8 starts to pay on this CPU.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared.benchmark import save_result
from shared.config import load_config, parse_overrides
from shared.dataset_metrics import METRICS_BY_NAME
from shared.logs import setup_logging
from shared.stats import mcnemar, mean_ci, paired_diff_ci
from stage_a.checkpointing import bridge_folder
from stage_a.config import TrainConfig
from stage_a.data import AUDIO_FAMILIES, Batch, Collator, Split
from stage_a.evaluate import EvalSettings, Evaluator, eval_rows
from stage_a.model import SafeModel
from stage_a.quantize import SCHEMES, base_linear_names, component_bytes, quantize, quantize_base, tensor_bytes
from stage_a.setup import build_setup, load_base

log = logging.getLogger("benchmarks.precision")
ISSUE_TARGET = {"max_accuracy_loss_pts": 0.5, "min_speedup": 1.3}


@dataclass(frozen=True)
class Variant:
    """How one precision variant is built: base dtype, autocast, and an optional (target, scheme) quantization."""

    name: str
    dtype: str = "float32"
    autocast: bool = False
    target: str | None = None
    scheme: str | None = None

    def context(self) -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.autocast else nullcontext()


VARIANTS = (Variant("fp32"), Variant("bf16-autocast", autocast=True), Variant("bf16-weights", dtype="bfloat16"),
            *(Variant(f"{scheme}-{target}", target=target, scheme=scheme)
              for scheme in SCHEMES for target in ("base", "bridge", "both")))


def build_variant(variant: Variant, base_path: str, bridge: Path, encoder: Any) -> tuple[SafeModel, torch.nn.Module]:
    """The SAFE model of a variant and the bare base of the same precision (the gate-0 reference)."""
    base, _ = load_base(base_path, variant.dtype, "cpu")
    model = SafeModel.from_bridge(base, bridge, encoder).eval()
    bare, _ = load_base(base_path, variant.dtype, "cpu")
    if variant.target is not None:
        quantize(model, variant.target, variant.scheme)
        if variant.target != "bridge":
            quantize_base(bare, variant.scheme, model.bridge_config.fusion.layers_path)
    return model, bare


def prompt_batches(collator: Collator, split: Split, rows: list[int], size: int) -> list[Batch]:
    return [collator.prompt_batch(split, rows[i: i + size]) for i in range(0, len(rows), size)]


@torch.no_grad()
def gate0_exactness(model: SafeModel, bare: torch.nn.Module, batches: list[Batch], k: int) -> dict:
    """SAFE at gate 0 with audio attached vs the bare same-precision base: full logits on every batch."""
    equal, diff = True, 0.0
    for batch in batches:
        safe = model(audio_frames=batch.frames, frame_mask=batch.frame_mask, k=k, gate=0.0, **batch.inputs).logits
        ref = bare(**batch.inputs).logits
        equal &= torch.equal(safe, ref)
        diff = max(diff, (safe.float() - ref.float()).abs().max().item())
    return {"bit_identical": equal, "max_abs_logit_diff": diff, "n": sum(len(b.ids) for b in batches)}


def evaluate(variant: Variant, model: SafeModel, collator: Collator, split: Split, rows: list[int],
             settings: EvalSettings) -> dict:
    """stage_a-eval's figures for one variant: per-question scores, audio / VL accuracy and the evaluator's summary."""
    start = time.perf_counter()
    with variant.context():
        result = Evaluator(model, collator, split, rows, settings).run(detail=True)
    predictions = result.pop("predictions")
    log.info("%s evaluated in %.0f s", variant.name, time.perf_counter() - start)
    return {"predictions": predictions, "summary": result}


def scores(predictions: list[dict], audio: bool) -> list[float]:
    """Per-question scores of the accuracy-type questions: audio and audio-visual ones, or the visual (VL) ones."""
    return [p["score"] for p in predictions if METRICS_BY_NAME[p["metric"]].accuracy
            and (p["family"] in AUDIO_FAMILIES if audio else p["family"] == "visual")]


def compare(variant: list[float], reference: list[float]) -> dict:
    """Variant minus float32 on the same questions, in points: paired bootstrap CI and p, McNemar p."""
    paired, test = paired_diff_ci(variant, reference), mcnemar(variant, reference)
    return {"delta_pts": 100 * paired["mean_diff"], "ci95_pts": [100 * x for x in paired["ci95"]],
            "p_paired": paired["p_value"], "p_mcnemar": test["p_value"],
            "questions_lost": test["b01"], "questions_gained": test["b10"]}  # right only in float32 / only here


@torch.no_grad()
def timed_generation(model: SafeModel, variant: Variant, batches: list[Batch], k: int) -> float:
    """Seconds per question of one pass of greedy generation with audio over `batches`."""
    start = time.perf_counter()
    with variant.context():
        for batch in batches:
            model.generate(audio_frames=batch.frames, frame_mask=batch.frame_mask, k=k, gate=1.0, **batch.inputs,
                           max_new_tokens=EvalSettings.max_new_tokens, do_sample=False)
    return (time.perf_counter() - start) / sum(len(b.ids) for b in batches)


def latencies(models: dict[str, tuple[Variant, SafeModel]], batches: list[Batch], k: int, repeats: int) -> dict:
    """Median ms per question of each variant, timed round-robin (one warm-up pass each first)."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for repeat in range(repeats + 1):
        for name, (variant, model) in models.items():
            seconds = timed_generation(model, variant, batches, k)
            if repeat:
                times[name].append(1000 * seconds)
    return {name: {"median_ms": statistics.median(t), "runs_ms": [round(x, 4) for x in t]} for name, t in times.items()}


def lm_linear_bytes(model: SafeModel) -> int:
    """Bytes of the base LM's Linear weights (the part `quantize(..., "base")` converts)."""
    names = base_linear_names(model.base, model.bridge_config.fusion.layers_path)
    return sum(tensor_bytes(model.base.get_submodule(name).weight) for name in names)


@torch.no_grad()
def bigger_lm_sweep(widths: tuple[int, ...], batch: int, prompt: int, repeats: int) -> list[dict]:
    """Latency-only: random 2-layer Llama LMs of growing width, greedy 4 tokens, float32 vs INT8 (no SAFE, no data)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    rows = []
    for width in widths:
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=1000, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2,
                             num_attention_heads=max(1, width // 64), num_key_value_heads=max(1, width // 64))
        models = {"fp32": LlamaForCausalLM(config).eval()}
        for scheme in SCHEMES:
            models[scheme] = LlamaForCausalLM(config).eval()
            models[scheme].load_state_dict(models["fp32"].state_dict())
            quantize_base(models[scheme], scheme)
        ids = torch.randint(3, 1000, (batch, prompt))
        times: dict[str, list[float]] = {name: [] for name in models}
        for repeat in range(repeats + 1):
            for name, model in models.items():
                start = time.perf_counter()
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                               pad_token_id=0)
                if repeat:
                    times[name].append(1000 * (time.perf_counter() - start) / batch)
        medians = {name: statistics.median(t) for name, t in times.items()}
        rows.append({"hidden_size": width, "params": sum(p.numel() for p in models["fp32"].parameters()),
                     "ms_per_question": medians,
                     "speedup_vs_fp32": {s: medians["fp32"] / medians[s] for s in SCHEMES}})
        log.info("bigger LM width %d: %s", width, rows[-1]["speedup_vs_fp32"])
    return rows


def table(rows: list[dict]) -> str:
    """The printed summary: accuracy with CI, delta vs float32 with p, latency and speed-up, memory, gate 0."""
    head = (f"{'variant':<20} {'audio+AV acc [95% CI]':>25} {'Δ pts (p McN)':>15} {'VL acc':>7} {'Δ VL':>6} "
            f"{'ms/q b128':>9} {'x':>5} {'ms/q b1':>8} {'x':>5} {'base MB':>8} {'bridge KB':>9} {'gate0':>5}")
    lines = [head]
    for r in rows:
        acc, ci = 100 * r["audio_acc"]["mean"], [100 * x for x in r["audio_acc"]["ci95"]]
        delta = (f"{r['audio_vs_fp32']['delta_pts']:+.2f} ({r['audio_vs_fp32']['p_mcnemar']:.2f})"
                 if r["name"] != "fp32" else "—")
        lines.append(f"{r['name']:<20} {acc:7.2f} [{ci[0]:6.2f}, {ci[1]:6.2f}] {delta:>15} "
                     f"{100 * r['vl_acc']['mean']:7.2f} {r['vl_vs_fp32']['delta_pts']:+6.2f} "
                     f"{r['latency_batched_ms']:9.3f} {r['speedup_batched']:5.2f} {r['latency_b1_ms']:8.3f} "
                     f"{r['speedup_b1']:5.2f} {r['bytes']['base'] / 2**20:8.3f} {r['bytes']['bridge'] / 2**10:9.1f} "
                     f"{'exact' if r['gate0']['bit_identical'] else 'DIFF':>5}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/stage_a"), help="bridge or stage_a-train run folder")
    parser.add_argument("--preset", default="stage_a", help="the run's training preset (base model and data)")
    parser.add_argument("--size", type=int, default=0, help="a stratified subset of N test questions (0: all)")
    parser.add_argument("--latency-questions", type=int, default=256, help="questions timed at the eval batch size")
    parser.add_argument("--b1-questions", type=int, default=32, help="questions timed one at a time")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine 2 threads make timings erratic)")
    parser.add_argument("--bigger-lm", action="store_true", help="also the latency-only sweep of wider random LMs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "precision.json")
    args, rest = parser.parse_known_args()
    setup_logging()
    torch.set_num_threads(args.threads)
    cfg = load_config(TrainConfig, args.preset, parse_overrides(rest))
    bridge = bridge_folder(args.checkpoint)
    setup = build_setup(cfg, "cpu", splits=("test",), bridge_dir=bridge)
    split, collator = setup.test, setup.collator
    rows = eval_rows(split, args.size, cfg.seed)
    settings = EvalSettings(k=cfg.k_eval, batch_size=cfg.eval_batch_size)
    vl_rows = [i for i in rows if split.is_vl(i)]
    vl_batches = prompt_batches(collator, split, vl_rows, cfg.eval_batch_size)
    timed = prompt_batches(collator, split, eval_rows(split, args.latency_questions, cfg.seed + 1), cfg.eval_batch_size)
    timed_b1 = prompt_batches(collator, split, eval_rows(split, args.b1_questions, cfg.seed + 2), 1)
    results, models = [], {}
    for variant in VARIANTS:
        model, bare = build_variant(variant, setup.paths["base_vl"], bridge, setup.encoder)
        with variant.context():
            exact = gate0_exactness(model, bare, vl_batches, settings.k)
        evaluation = evaluate(variant, model, collator, split, rows, settings)
        models[variant.name] = (variant, model)
        results.append({"name": variant.name, "variant": vars(variant), "gate0": exact, **evaluation,
                        "bytes": {**component_bytes(model), "base_lm_linears": lm_linear_bytes(model)}})
        log.info("%s: gate 0 %s", variant.name, exact)
    batched = latencies(models, timed, settings.k, args.repeats)
    single = latencies(models, timed_b1, settings.k, args.repeats)
    reference = results[0]["predictions"]
    rows_out = []
    for r in results:
        predictions = r.pop("predictions")
        audio, vl = scores(predictions, audio=True), scores(predictions, audio=False)
        rows_out.append({
            **{k: v for k, v in r.items() if k != "summary"},
            "audio_acc": mean_ci(audio), "vl_acc": mean_ci(vl),
            "audio_vs_fp32": compare(audio, scores(reference, audio=True)),
            "vl_vs_fp32": compare(vl, scores(reference, audio=False)),
            "vl_degradation_pts": r["summary"]["vl_degradation_pts"],
            "evaluator_gate0_max_abs_logit_diff": r["summary"]["gate0_max_abs_logit_diff"],
            "latency_batched_ms": batched[r["name"]]["median_ms"], "latency_b1_ms": single[r["name"]]["median_ms"],
            "latency_runs_ms": {"batched": batched[r["name"]]["runs_ms"], "b1": single[r["name"]]["runs_ms"]},
            "speedup_batched": batched["fp32"]["median_ms"] / batched[r["name"]]["median_ms"],
            "speedup_b1": single["fp32"]["median_ms"] / single[r["name"]]["median_ms"],
        })
    int8 = [r for r in rows_out if r["variant"]["scheme"]]
    result = {
        "benchmark": "precision", "checkpoint": str(bridge), "preset": args.preset, "split": "test",
        "n": {"audio": rows_out[0]["audio_acc"]["n"], "vl": rows_out[0]["vl_acc"]["n"]}, "k": settings.k,
        "eval_batch_size": settings.batch_size, "repeats": args.repeats,
        "latency_questions": {"batched": sum(len(b.ids) for b in timed), "b1": len(timed_b1)},
        "issue_target": ISSUE_TARGET,
        "int8_meeting_target": [r["name"] for r in int8
                                if -r["audio_vs_fp32"]["delta_pts"] <= ISSUE_TARGET["max_accuracy_loss_pts"]
                                and r["speedup_batched"] >= ISSUE_TARGET["min_speedup"]],
        "variants": rows_out,
    }
    if args.bigger_lm:
        result["bigger_lm_latency_only"] = {
            "what": "random 2-layer Llama LMs (vocab 1000, MLP 4x width), batch 16, 32-token prompts, greedy 4 tokens; "
                    "latency only, no SAFE bridge, no accuracy",
            "rows": bigger_lm_sweep((128, 512, 1024, 2048), batch=16, prompt=32, repeats=args.repeats)}
    save_result(result, args.out)
    print(table(rows_out))


if __name__ == "__main__":
    main()
