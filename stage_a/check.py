"""`stage_a-check`: does SAFE wrap this base VL model safely?

Builds SAFE around the model, then checks on sample inputs that gate 0 and "no audio" give
logits and greedy generations identical (torch.equal) to the bare base model. Unless a
trained bridge is given, the adapter's zero-initialised outputs are first filled with random
values, so exactness cannot come for free from the zero init; gate 1 must then change the
logits, which shows the adapter is really wired in. A batch mixing gate-0 and gate-1 rows must
keep its gate-0 rows exact and change its gate-1 rows. Also lists where adapters sit, counts
trainable vs frozen parameters and the parameter memory of each component.

Exit codes: 0 exact (and gate 1 changes the output), 1 exactness failed or gate 1 changed nothing,
2 unusable model or bad arguments (a one-line message on stderr says what was missing and what to pass).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from shared.config import load_config
from shared.encoders import build_encoder
from shared.logs import setup_logging
from shared.world.build import WorldConfig, build_world
from stage_a.fusion import MODES, PLACEMENTS, FusionAdapter, FusionConfig
from stage_a.model import BridgeConfig, SafeModel, lm_hidden_size
from stage_a.prefix import media_token_ids, select_rows
from stage_a.projector import ProjectorConfig
from stage_a.prompting import build_prompt, model_inputs, sample_image

QUESTIONS = ("what color is the circle?", "how many times does the sound repeat?")
MIXED_GATES = (0.0, 1.0)  # one gate per question in the mixed-batch check
EXIT_EXACT, EXIT_UNSAFE, EXIT_UNUSABLE = 0, 1, 2


def _mb(module: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20


def _same_tokens(tokens: torch.Tensor, reference: torch.Tensor, pad: int | None) -> bool:
    """Equal generations, row by row, once trailing padding is stripped (split batches may pad to another width)."""
    def rows(t: torch.Tensor) -> list[list[int]]:
        out = [row.tolist() for row in t]
        for row in out:
            while row and pad is not None and row[-1] == pad:
                row.pop()
        return out
    return rows(tokens) == rows(reference)


def run_check(args: argparse.Namespace) -> dict:
    """Build SAFE around the base model and measure exactness, placement, parameters and memory."""
    world_clap = None
    if args.base_vl is None or (args.audio_encoder != "whisper" and args.clap is None):
        world = build_world(load_config(WorldConfig, "world"))
        world_clap = str(world / "models" / "clap")
        args.base_vl = args.base_vl or str(world / "models" / "vl")
    if args.base_vl.startswith((".", "/", "~")) and not Path(args.base_vl).expanduser().is_dir():
        raise ValueError(f"--base-vl {args.base_vl} is not a folder; pass an existing model folder or a hub id")
    dtype = getattr(torch, args.dtype)
    processor = AutoProcessor.from_pretrained(args.base_vl)
    inputs = model_inputs(processor, [build_prompt(processor, q) for q in QUESTIONS],
                          [sample_image(processor, i) for i in range(len(QUESTIONS))], padding_side="left")
    inputs = {k: v.to(args.device) for k, v in inputs.items()}
    # References come from the bare model first; SAFE then wraps that same model (one copy in memory).
    base = AutoModelForImageTextToText.from_pretrained(args.base_vl, dtype=dtype).to(args.device).eval()
    pad = base.generation_config.pad_token_id
    with torch.no_grad():
        ref_logits = base(**inputs).logits
    ref_tokens = base.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    # Prefix mode runs gate-0 rows as their own batch (stage_a.prefix): their reference is the bare base on those rows.
    off = torch.tensor(MIXED_GATES, device=args.device) == 0
    alone = select_rows(inputs, off, media_token_ids(base))
    with torch.no_grad():
        alone_ref = (base(**alone).logits, base.generate(**alone, max_new_tokens=args.max_new_tokens, do_sample=False))

    # As in training, the frozen encoder runs in float32 whatever the base's dtype (its features are cached).
    encoder = build_encoder(args.audio_encoder, args.clap or world_clap, args.whisper, args.device, "float32")
    rng = np.random.default_rng(0)
    waves = [rng.normal(0, 0.1, 16000 * 2).astype(np.float32) for _ in QUESTIONS]
    frames, frame_mask = encoder.encode(waves, 16000)
    if args.bridge:
        model = SafeModel.from_bridge(base, args.bridge, encoder, strict=not args.no_strict)
    else:
        torch.manual_seed(0)
        fusion = FusionConfig(mode=args.fusion_mode, rank=args.rank, placement=args.placement,
                              layers_path=args.layers_path)
        model = SafeModel(base, BridgeConfig(ProjectorConfig(encoder.dim, lm_hidden_size(base), k_max=16), fusion))
        if isinstance(model.fusion, FusionAdapter):
            with torch.no_grad():
                for block in model.fusion.blocks.values():
                    block.out.weight.normal_(0.0, 1.0)
    model.projector.to(args.device)  # the bridge keeps its own (float32) dtype and casts at the boundaries
    model.fusion.to(args.device)
    audio = {"audio_frames": frames.to(args.device), "frame_mask": frame_mask.to(args.device), "k": args.k}
    mixed_gate = torch.tensor(MIXED_GATES, device=args.device)
    gen = {"max_new_tokens": args.max_new_tokens, "do_sample": False}
    with torch.no_grad():
        cases = {
            "gate0": (model(gate=0.0, **audio, **inputs).logits, model.generate(gate=0.0, **audio, **inputs, **gen)),
            "no_audio": (model(**inputs).logits, model.generate(**inputs, **gen)),
        }
        gate1 = model(gate=1.0, **audio, **inputs).logits
        mixed = (model(gate=mixed_gate, **audio, **inputs).logits, model.generate(gate=mixed_gate, **audio, **inputs, **gen))
    exact = {name: {"logits": bool(torch.equal(lg, ref_logits)), "generate": _same_tokens(tok, ref_tokens, pad),
                    "max_abs_logit_diff": float((lg - ref_logits).abs().max())}
             for name, (lg, tok) in cases.items()}
    on = mixed_gate > 0
    split = model.bridge_config.fusion.mode == "prefix"
    mixed_ref_logits, mixed_ref_tokens = alone_ref if split else (ref_logits[off], ref_tokens[off])
    exact["mixed_gate0_rows"] = {"logits": bool(torch.equal(mixed[0][off], mixed_ref_logits)),
                                 "generate": _same_tokens(mixed[1][off], mixed_ref_tokens, pad),
                                 "max_abs_logit_diff": float((mixed[0][off] - mixed_ref_logits).abs().max())}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "base_vl": args.base_vl, "base_class": type(base).__name__, "audio_encoder": encoder.identity,
        "exact": all(v["logits"] and v["generate"] for v in exact.values()), "checks": exact,
        "adapter_weights": args.bridge or "random (zero-init outputs filled, so exactness is not trivial)",
        "gate1_changes_logits": not bool(torch.equal(gate1, ref_logits)),
        "mixed_gate1_rows_change": not bool(torch.equal(mixed[0][on], ref_logits[on])),
        "mixed_gate0_reference": ("the bare base on the gate-0 rows alone (prefix mode splits the batch)" if split
                                  else "the bare base on the whole batch"),
        "fusion_mode": model.bridge_config.fusion.mode, "adapter_layers": model.fusion.layer_indices, "k": args.k,
        "params": {"trainable": trainable, "frozen": sum(p.numel() for p in model.base.parameters()),
                   "projector": sum(p.numel() for p in model.projector.parameters()),
                   "fusion": sum(p.numel() for p in model.fusion.parameters()),
                   "audio_encoder": sum(p.numel() for m in encoder.modules() for p in m.parameters())},
        "param_memory_mb": {"base_vl": round(_mb(model.base), 3), "projector": round(_mb(model.projector), 3),
                            "fusion": round(_mb(model.fusion), 3),
                            "audio_encoder": round(sum(_mb(m) for m in encoder.modules()), 3)},
    }


def format_table(report: dict) -> str:
    lines = [f"base VL: {report['base_vl']} ({report['base_class']})", f"audio encoder: {report['audio_encoder']}",
             f"adapter weights: {report['adapter_weights']}",
             f"adapters after decoder layers: {report['adapter_layers']}" if report["fusion_mode"] != "prefix"
             else f"prefix fusion: {report['k']} audio tokens spliced into the input embeddings",
             "", f"{'check':<16} {'logits':>7} {'generate':>9} {'max|diff|':>10}"]
    for name, c in report["checks"].items():
        lines.append(f"{name:<16} {str(c['logits']):>7} {str(c['generate']):>9} {c['max_abs_logit_diff']:>10.3g}")
    lines += [f"gate 1 changes logits: {report['gate1_changes_logits']}; "
              f"in the mixed batch, gate-1 rows change: {report['mixed_gate1_rows_change']}", "",
              f"{'component':<14} {'params':>12} {'memory MB':>10}"]
    params, mem = report["params"], report["param_memory_mb"]
    for comp in ("base_vl", "audio_encoder", "projector", "fusion"):
        count = params["frozen"] if comp == "base_vl" else params[comp]
        lines.append(f"{comp:<14} {count!s:>12} {mem[comp]:>10.3f}")
    lines.append(f"trainable {params['trainable']} vs frozen {params['frozen']}; exact: {report['exact']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stage_a-check", description=__doc__.splitlines()[0])
    parser.add_argument("--base-vl", default=None, help="hub id or folder of the base VL model (default: the embedded world's)")
    parser.add_argument("--audio-encoder", choices=("clap", "whisper", "both"), default="clap")
    parser.add_argument("--clap", default=None, help="ClapModel id or folder (default: the embedded world's)")
    parser.add_argument("--whisper", default=None, help="WhisperModel id or folder")
    parser.add_argument("--bridge", default=None, help="a saved SAFE bridge folder to check instead of random adapters")
    parser.add_argument("--no-strict", action="store_true",
                        help="with --bridge: load a bridge recorded for another base model or encoder, with a warning")
    parser.add_argument("--k", type=int, default=8, help="audio tokens (default: %(default)s)")
    parser.add_argument("--fusion-mode", choices=MODES, default="cross_attention")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--placement", choices=PLACEMENTS, default="middle")
    parser.add_argument("--layers-path", default=None,
                        help="dotted path of the LM's decoder-layer list where it is not found (e.g. model.text_model.layers)")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        report = run_check(args)
    except (ValueError, OSError, ImportError) as err:
        print(f"stage_a-check: {_unusable(err, args.base_vl)}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    safe = report["exact"] and report["gate1_changes_logits"] and report["mixed_gate1_rows_change"]
    return EXIT_EXACT if safe else EXIT_UNSAFE


def _unusable(err: BaseException, base_vl: str | None) -> str:
    """One line saying why the model or arguments cannot be checked and what to do."""
    message = " ".join(str(err).split())
    if isinstance(err, ImportError) and "torchvision" in message.lower():
        return (f"the processor of {base_vl} needs torchvision, which is not installed; install a torchvision build "
                f"matching torch {torch.__version__} (for CPU: pip install torchvision --index-url "
                "https://download.pytorch.org/whl/cpu), or check a model whose processor does not need it")
    return message

if __name__ == "__main__":
    sys.exit(main())
