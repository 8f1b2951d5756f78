"""`stage_a-check`: does SAFE wrap this base VL model safely?

Builds SAFE around the model and compares its logits and greedy generations with the bare base
model's (torch.equal). Unless a trained bridge is given, the bridge's zero-initialised outputs
(fusion W_out, LoRA B) are first filled with random values, so exactness cannot come for free from
the zero init. The decisive check is a MIXED batch: each sample question twice, side by side with
the same image and audio, once at gate 0 and once at gate 1 (a per-sample gate tensor), so the
projector, the fusion blocks, the LoRA scope and the torch.where row selection all run; the gate-0
rows must equal the bare base on the same batch, and the gate-1 rows must change and equal the same
rows with every row at gate 1 (a row selected wrongly shows there). A scalar gate 0
and "no audio" are checked too, labelled for what they are: SAFE calls the base before any bridge
code there, so they only catch drift in the base weights. Also lists where adapters sit, counts
trainable vs frozen parameters and the parameter memory of each component.

Exit codes: 0 exact (and gate 1 changes the output), 1 exactness failed or gate 1 changed nothing,
2 unusable model or bad arguments (a one-line message on stderr says what was missing and what to pass).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from shared.cli import EXIT_FINDING, EXIT_INPUT, EXIT_OK, ArgumentParser, check_number, console
from shared.config import load_config
from shared.encoders import build_encoder
from shared.logs import setup_logging
from shared.world.build import WorldConfig, build_world
from stage_a.config import DTYPES, TrainConfig
from stage_a.exactness import (PARTNER_GATE, fill_zero_init, max_abs_diff, reference_inputs, reference_rows, twin_gates,
                               twin_rows)
from stage_a.fusion import MODES, PLACEMENTS, FusionConfig
from stage_a.lora import AudioOnlyLora, LoraSettings
from stage_a.model import BridgeConfig, SafeModel, bridge_k_max, lm_hidden_size
from stage_a.prefix import PrefixSplicer, media_token_ids, select_rows
from stage_a.projector import ProjectorConfig
from stage_a.prompting import build_prompt, model_inputs, sample_image
from stage_a.setup import check_model_path

QUESTIONS = ("what color is the circle?", "how many times does the sound repeat?")
TWINS = twin_rows(list(range(len(QUESTIONS))))  # the mixed batch: each question at gate 0, then at gate 1
DECISIVE = "mixed_gate0_rows"
RANDOM_K_MAX = 16  # the random bridge's projector serves k = 1..16
CHECK_PATHS = {  # which code each check reaches (the table's "path" column and the JSON's check_paths)
    DECISIVE: "bridge, decisive: gate-0 rows beside gate-1 twins run projector, fusion, LoRA scope and torch.where",
    "gate0": "shortcut: a scalar gate 0 calls the base before any bridge code; catches base-weight drift only",
    "no_audio": "shortcut: no audio calls the base before any bridge code; catches base-weight drift only",
}


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


@torch.no_grad()
def _outputs(model: torch.nn.Module, inputs: dict, gen: dict, **audio) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and greedy generations of a model (the bare base, or SAFE with `audio`) on inputs."""
    return model(**audio, **inputs).logits, model.generate(**audio, **inputs, **gen)


def _compare(outputs: tuple[torch.Tensor, torch.Tensor], reference: tuple[torch.Tensor, torch.Tensor],
             pad: int | None) -> dict:
    (logits, tokens), (ref_logits, ref_tokens) = outputs, reference
    return {"logits": bool(torch.equal(logits, ref_logits)), "generate": _same_tokens(tokens, ref_tokens, pad),
            "max_abs_logit_diff": max_abs_diff(logits, ref_logits)}


def _bridge_settings(args: argparse.Namespace) -> tuple[FusionConfig, LoraSettings]:
    """The random bridge's fusion and LoRA settings from the flags (their checks name a bad rank or target)."""
    return (FusionConfig(mode=args.fusion_mode, rank=args.rank, placement=args.placement, layers_path=args.layers_path),
            LoraSettings(rank=args.lora_rank, targets=tuple(args.lora_targets)))


def _random_bridge(base: torch.nn.Module, audio_dim: int, args: argparse.Namespace) -> SafeModel:
    """A seeded fresh bridge with its zero-initialised outputs filled, so exactness is not a gift of the zero init."""
    torch.manual_seed(0)
    fusion, lora = _bridge_settings(args)
    projector = ProjectorConfig(audio_dim, lm_hidden_size(base), k_max=RANDOM_K_MAX)
    model = SafeModel(base, BridgeConfig(projector, fusion, lora))
    fill_zero_init(model, seed=0)
    return model


def run_check(args: argparse.Namespace) -> dict:
    """Build SAFE around the base model and measure exactness, placement, parameters and memory."""
    needs_clap = args.audio_encoder != "whisper" and args.clap is None
    needs_whisper = args.audio_encoder != "clap" and args.whisper is None
    if args.base_vl is None or needs_clap or needs_whisper:  # the embedded world's models fill what is not named
        world = build_world(load_config(WorldConfig, args.world))
        args.base_vl = args.base_vl or str(world / "models" / "vl")
        args.clap = str(world / "models" / "clap") if needs_clap else args.clap
        args.whisper = str(world / "models" / "whisper") if needs_whisper else args.whisper
    dtype = getattr(torch, args.dtype)
    processor = AutoProcessor.from_pretrained(args.base_vl)
    prompts = [build_prompt(processor, q) for q in QUESTIONS]
    images = [sample_image(processor, i) for i in range(len(QUESTIONS))]
    inputs = {k: v.to(args.device) for k, v in model_inputs(processor, prompts, images, padding_side="left").items()}
    twins = {k: v.to(args.device) for k, v in model_inputs(processor, [prompts[i] for i in TWINS],
                                                           [images[i] for i in TWINS], padding_side="left").items()}
    gates = twin_gates(len(QUESTIONS), PARTNER_GATE, args.device)
    off = gates == 0
    gen = {"max_new_tokens": args.max_new_tokens, "do_sample": False}
    # References come from the bare model first; SAFE then wraps that same model (one copy in memory). Prefix mode
    # runs gate-0 rows as their own batch (stage_a.prefix): there their reference is the bare base on those rows alone.
    base = AutoModelForImageTextToText.from_pretrained(args.base_vl, dtype=dtype).to(args.device).eval()
    pad = base.generation_config.pad_token_id
    ref = {"batch": _outputs(base, inputs, gen), "twins": _outputs(base, twins, gen),
           "twins_gate0_alone": _outputs(base, select_rows(twins, off, media_token_ids(base)), gen)}

    # As in training, the frozen encoder runs in float32 whatever the base's dtype (its features are cached).
    encoder = build_encoder(args.audio_encoder, args.clap, args.whisper, args.device, "float32")
    rng = np.random.default_rng(0)
    waves = [rng.normal(0, 0.1, 16000 * 2).astype(np.float32) for _ in QUESTIONS]
    frames, frame_mask = encoder.encode(waves, 16000)
    if args.bridge:
        model = SafeModel.from_bridge(base, args.bridge, encoder, strict=not args.no_strict)
    else:
        model = _random_bridge(base, encoder.dim, args)
    model.projector.to(args.device)  # the bridge keeps its own (float32) dtype and casts at the boundaries
    model.fusion.to(args.device)
    frames, frame_mask = frames.to(args.device), frame_mask.to(args.device)
    audio = {"audio_frames": frames, "frame_mask": frame_mask, "k": args.k}
    index = torch.tensor(TWINS, device=args.device)
    twin_audio = {"audio_frames": frames[index], "frame_mask": frame_mask[index], "k": args.k}
    mixed = _outputs(model, twins, gen, gate=gates, **twin_audio)
    split = isinstance(model.fusion, PrefixSplicer)
    mixed_ref = ref["twins_gate0_alone"] if split else (ref["twins"][0][off], ref["twins"][1][off])
    exact = {DECISIVE: _compare((mixed[0][off], mixed[1][off]), mixed_ref, pad),
             "gate0": _compare(_outputs(model, inputs, gen, gate=0.0, **audio), ref["batch"], pad),
             "no_audio": _compare(_outputs(model, inputs, gen), ref["batch"], pad)}
    # A gate-1 row must not care whether its neighbours are at gate 0: same output as with every row at gate 1
    # (on the batch those rows run in: the whole batch, or alone in prefix mode). Rows selected wrongly show here.
    on = ~off
    on_audio = {k: v[on] if split and torch.is_tensor(v) else v for k, v in twin_audio.items()}
    with torch.no_grad():
        gate1 = model(gate=1.0, **audio, **inputs).logits
        all_gate1 = model(gate=1.0, **on_audio, **reference_inputs(model, twins, on)).logits[reference_rows(model, on)]
    lora_params = list(AudioOnlyLora.state(model.base).values())
    lora, lora_mb = sum(p.numel() for p in lora_params), sum(p.numel() * p.element_size() for p in lora_params) / 2**20
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "base_vl": args.base_vl, "base_class": type(base).__name__, "audio_encoder": encoder.identity,
        "exact": all(v["logits"] and v["generate"] for v in exact.values()), "checks": exact,
        "decisive_check": DECISIVE, "check_paths": CHECK_PATHS,
        "adapter_weights": args.bridge or "random (zero-init outputs filled, so exactness is not trivial)",
        "gate1_changes_logits": not bool(torch.equal(gate1, ref["batch"][0])),
        "mixed_gate1_rows_change": not bool(torch.equal(mixed[0][on], ref["twins"][0][on])),
        "mixed_gate1_rows_equal_all_gate1": bool(torch.equal(mixed[0][on], all_gate1)),
        "mixed_gate0_reference": ("the bare base on the gate-0 rows alone (prefix mode splits the batch)" if split
                                  else "the bare base on the whole mixed batch"),
        "fusion_mode": model.bridge_config.fusion.mode, "adapter_layers": model.fusion.layer_indices, "k": args.k,
        "lora_rank": model.bridge_config.lora.rank,
        "params": {"trainable": trainable, "frozen": sum(p.numel() for p in model.base.parameters()) - lora,
                   "projector": sum(p.numel() for p in model.projector.parameters()),
                   "fusion": sum(p.numel() for p in model.fusion.parameters()), "lora": lora,
                   "audio_encoder": sum(p.numel() for m in encoder.modules() for p in m.parameters())},
        "param_memory_mb": {"base_vl": round(_mb(model.base) - lora_mb, 3), "projector": round(_mb(model.projector), 3),
                            "fusion": round(_mb(model.fusion), 3), "lora": round(lora_mb, 3),
                            "audio_encoder": round(sum(_mb(m) for m in encoder.modules()), 3)},
    }


def format_table(report: dict) -> str:
    lines = [f"base VL: {report['base_vl']} ({report['base_class']})", f"audio encoder: {report['audio_encoder']}",
             f"adapter weights: {report['adapter_weights']}",
             f"adapters after decoder layers: {report['adapter_layers']}" if report["fusion_mode"] != "prefix"
             else f"prefix fusion: {report['k']} audio tokens spliced into the input embeddings",
             "", f"{'check':<16} {'logits':>7} {'generate':>9} {'max|diff|':>10}  path"]
    for name, c in report["checks"].items():
        lines.append(f"{name:<16} {str(c['logits']):>7} {str(c['generate']):>9} {c['max_abs_logit_diff']:>10.3g}  "
                     f"{report['check_paths'][name]}")
    lines += [f"gate 1 changes logits: {report['gate1_changes_logits']}; "
              f"in the mixed batch, gate-1 rows change: {report['mixed_gate1_rows_change']} and equal an all-gate-1 "
              f"batch: {report['mixed_gate1_rows_equal_all_gate1']}", "",
              f"{'component':<14} {'params':>12} {'memory MB':>10}"]
    params, mem = report["params"], report["param_memory_mb"]
    for comp in ("base_vl", "audio_encoder", "projector", "fusion", "lora"):
        count = params["frozen"] if comp == "base_vl" else params[comp]
        lines.append(f"{comp:<14} {count!s:>12} {mem[comp]:>10.3f}")
    lines.append(f"trainable {params['trainable']} vs frozen {params['frozen']}; exact: {report['exact']}")
    return "\n".join(lines)


@console("stage_a-check")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="stage_a-check", description=__doc__.splitlines()[0])
    parser.add_argument("--base-vl", default=None, help="hub id or folder of the base VL model (default: the embedded world's)")
    parser.add_argument("--audio-encoder", choices=("clap", "whisper", "both"), default="clap")
    parser.add_argument("--clap", default=None, help="ClapModel id or folder (default: the embedded world's)")
    parser.add_argument("--whisper", default=None, help="WhisperModel id or folder (default: the embedded world's)")
    parser.add_argument("--world", default="world", help="world preset whose models fill what is not named")
    parser.add_argument("--bridge", default=None, help="a saved SAFE bridge folder to check instead of random adapters")
    parser.add_argument("--no-strict", action="store_true",
                        help="with --bridge: load a bridge recorded for another base model or encoder, with a warning")
    parser.add_argument("--k", type=int, default=8, help="audio tokens (default: %(default)s)")
    parser.add_argument("--fusion-mode", choices=MODES, default="cross_attention")
    default = load_config(TrainConfig, "stage_a").model  # the random bridge is shaped like stage_a-train's default
    parser.add_argument("--rank", type=int, default=default.fusion.rank, help="fusion rank (default: %(default)s)")
    parser.add_argument("--lora-rank", type=int, default=default.lora.rank,
                        help="audio-only LoRA rank of the random bridge, 0 for none (default: %(default)s)")
    parser.add_argument("--lora-targets", nargs="+", default=list(default.lora.targets),
                        help="LM projections LoRA wraps, or all-linear (default: %(default)s)")
    parser.add_argument("--placement", choices=PLACEMENTS, default=default.fusion.placement,
                        help="fusion placement (default: %(default)s)")
    parser.add_argument("--layers-path", default=None,
                        help="dotted path of the LM's decoder-layer list where it is not found (e.g. model.text_model.layers)")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    for flag, value in (("--base-vl", args.base_vl), ("--clap", args.clap), ("--whisper", args.whisper)):
        check_model_path(flag, value or "")  # before the world is built for what is not named
    check_number("--k", args.k, ge=1, le=bridge_k_max(args.bridge) if args.bridge else RANDOM_K_MAX, integer=True)
    check_number("--max-new-tokens", args.max_new_tokens, ge=1, integer=True)
    _bridge_settings(args)
    setup_logging()
    try:
        report = run_check(args)
    except (ValueError, OSError, ImportError) as err:
        print(f"stage_a-check: {_unusable(err, args.base_vl)}", file=sys.stderr)
        return EXIT_INPUT
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    safe = (report["exact"] and report["gate1_changes_logits"] and report["mixed_gate1_rows_change"]
            and report["mixed_gate1_rows_equal_all_gate1"])
    return EXIT_OK if safe else EXIT_FINDING


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
