"""`safe-world`: build the embedded audio-visual world, describe or verify one that was built, or
export it in the official dataset layouts (`safe-world export --out DIR`, see shared/world/export.py)."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from shared.cli import ArgumentParser, InputError, console
from shared.config import load_config, parse_overrides
from shared.data.schema import read_manifest
from shared.loading import load_safetensors
from shared.logs import setup_logging
from shared.world.build import WorldConfig, build_world, default_world_dir, read_record
from shared.world.export import export_world, format_summary
from shared.world.spec import SPLITS
from shared.world.vl_train import PROBE_FILE, probe_logits

DEFAULT_PRESET = "world"


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="safe-world",
        description="Build or describe SAFE's embedded audio-visual world: procedural scenes, sounds and "
                    "questions, a small LLaVA-architecture base VL model and small CLAP and Whisper audio encoders.",
        epilog="Config keys can be overridden after the options, e.g. `safe-world build --world.seed 3 "
               "--vl.batch_size 32`. The world folder is --dir, else $SAFE_WORLD_DIR, else the user cache dir.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("build", "build what is missing or stale (rebuilds only parts whose spec changed)"),
                       ("info", "describe a built world: sizes, families, answers, model quality"),
                       ("verify", "reload the base VL model with from_pretrained and compare its logits "
                                  "bit-for-bit with those recorded when it was trained"),
                       ("export", "write a built world's questions and media in the official layouts of VQAv2, "
                                  "GQA, AudioCaps, Clotho-AQA and MUSIC-AVQA, for `safe-data convert`")):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--preset", default=DEFAULT_PRESET,
                         help="config preset name in configs/ or a YAML path (default: %(default)s)")
        cmd.add_argument("--dir", type=Path, default=None, help="world folder")
        cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")
        cmd.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        if name == "build":
            cmd.add_argument("--force", action="store_true", help="rebuild every part")
            cmd.add_argument("--data-only", action="store_true",
                             help="build only the data folder (images, clips, manifests), train no model")
        if name == "export":
            cmd.add_argument("--out", type=Path, required=True, help="export folder (new or empty)")
            cmd.add_argument("--overwrite", "--force", dest="force", action="store_true",
                             help="replace a previous export in --out")
            cmd.add_argument("--link", action="store_true",
                             help="hard-link media files instead of copying them (same file system only)")
    return parser


def world_info(world_dir: Path) -> dict:
    """Facts about a built world, read from its manifests and build record."""
    record = read_record(world_dir)
    if not record:
        raise FileNotFoundError(f"no world at {world_dir} (missing build.json); run `safe-world build` first")
    splits = {}
    answers: dict[str, Counter] = {}
    for split in SPLITS:
        samples = read_manifest(world_dir / "data" / f"{split}.jsonl", resolve_paths=False)
        splits[split] = {
            "scenes": len({s.meta["scene"] for s in samples}),
            "questions": len(samples),
            "families": dict(sorted(Counter(s.family for s in samples).items())),
            "types": dict(sorted(Counter(f"{s.family}.{s.qtype}" for s in samples).items())),
        }
        for s in samples:
            answers.setdefault(f"{s.family}.{s.qtype}", Counter())[s.meta["answer"]] += 1
    parts = record.get("parts", {})
    return {
        "world_dir": str(world_dir),
        "spec": record.get("spec"),
        "splits": splits,
        "answers": {k: dict(v.most_common()) for k, v in sorted(answers.items())},
        "base_vl": parts.get("vl", {}),
        "audio_encoder": parts.get("clap", {}),
        "whisper": parts.get("whisper", {}),
        "data_build_seconds": parts.get("data", {}).get("seconds"),
        "last_build_seconds": record.get("last_build_seconds"),
    }


def verify_base_vl(world_dir: Path) -> dict:
    """Reload models/vl like a hub model and compare its probe logits with the recorded ones."""
    model_dir = world_dir / "models" / "vl"
    probe = model_dir / PROBE_FILE
    if not probe.is_file():
        raise FileNotFoundError(f"no recorded logits at {probe}; run `safe-world build` first")
    recorded = load_safetensors(probe, "the probe logits written by `safe-world build`").get("logits")
    if recorded is None:
        raise InputError(f"{probe}: holds no tensor 'logits'; expected the probe logits written by `safe-world build`")
    # The logits were recorded single-threaded; CPU kernels reduce in a thread-count-dependent order.
    torch.set_num_threads(1)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    fresh = probe_logits(model, processor, world_dir / "data", n=recorded.shape[0])
    same_shape = fresh.shape == recorded.shape
    return {"model_dir": str(model_dir), "shape": list(recorded.shape), "identical": same_shape and torch.equal(fresh, recorded),
            "max_abs_diff": float((fresh - recorded).abs().max()) if same_shape else None}


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_info(info: dict) -> str:
    """The info as a plain-text table."""
    lines = [f"world: {info['world_dir']}", "", f"{'split':<6} {'scenes':>7} {'questions':>10}  families"]
    for split, s in info["splits"].items():
        fams = ", ".join(f"{k}={v}" for k, v in s["families"].items())
        lines.append(f"{split:<6} {s['scenes']:>7} {s['questions']:>10}  {fams}")
    lines += ["", "questions per type (train / val / test):"]
    for t in info["splits"]["train"]["types"]:
        counts = " / ".join(str(info["splits"][sp]["types"].get(t, 0)) for sp in SPLITS)
        lines.append(f"  {t:<24} {counts}")
    lines += ["", "answer distribution (all splits):"]
    for t, dist in info["answers"].items():
        lines.append(f"  {t:<24} " + ", ".join(f"{a}:{n}" for a, n in dist.items()))
    lines.append("")
    for title, part in (("base VL model", info["base_vl"]), ("audio encoder", info["audio_encoder"]),
                        ("whisper", info["whisper"])):
        flat = {k: v for k, v in part.items() if not isinstance(v, (dict, list)) and k != "hash"}
        lines.append(f"{title}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(flat.items())))
        for k, v in sorted(part.items()):
            if isinstance(v, dict) and k not in ("recipe", "config"):
                lines.append(f"  {k}: " + ", ".join(f"{kk}={_fmt(vv)}" for kk, vv in sorted(v.items())))
    lines.append(f"data build: {info['data_build_seconds']} s; last build: {info['last_build_seconds']} s")
    return "\n".join(lines)


@console("safe-world")
def main(argv: list[str] | None = None) -> int:
    args, extra = _parser().parse_known_args(argv)
    setup_logging(args.verbose)
    config = load_config(WorldConfig, args.preset, parse_overrides(extra))
    world_dir = args.dir or default_world_dir(config.world, config.clap)
    if args.command == "build":
        build_world(config, world_dir, force=args.force, data_only=args.data_only)
    if args.command == "export":
        summary = export_world(world_dir, args.out, link=args.link, force=args.force)
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
        return 0
    info = verify_base_vl(world_dir) if args.command == "verify" else world_info(world_dir)
    if args.command == "verify":
        print(json.dumps(info, indent=2))
        return 0 if info["identical"] else 1
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
