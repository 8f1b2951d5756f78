"""`stage_a-explain`: what a SAFE bridge attends to, with the attribution checked for faithfulness.

On a family-stratified subset of a split (about --questions audio and audio-visual questions, and
the VL questions of the same draw): each fusion block's residual_scale and the size of its update
relative to the hidden state (at the answer position and over the prompt), the blocks' attention
over the k audio tokens at the answer position per question type (with each token's time span);
occlusion of time windows of the clip by a silent clip's frames (captum), deletion and insertion
curves of the occlusion and attention rankings against random orders (paired CI of the area), and
their rank correlation; confusions and the questions audio hurts; and, on the embedded world,
audio-visual accuracy by scene condition (association bias). The target printed: deleting the
top-attributed (occlusion) windows first gives a lower accuracy area than random orders, with a
95 % CI excluding equality; exit 1 when it is not met.

Writes explain.json, explain.md and figures (png) atomically into --out (default <checkpoint>/explain);
an existing --out is refused unless --overwrite is given. `--json` prints explain.json's summary.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import numpy as np

from shared.checkpoint import atomic_directory
from shared.cli import ArgumentParser, InputError, add_overwrite_flag, check_number, console, refuse_overwrite
from shared.config import load_config, parse_overrides
from shared.logs import setup_logging
from stage_a.checkpointing import bridge_folder
from stage_a.config import TrainConfig
from stage_a.explanations import ExplainSettings, explain, select_rows, summarize
from stage_a.model import bridge_k_max
from stage_a.readouts import BlockReadout
from stage_a.setup import build_setup

DEFAULT_QUESTIONS = 300
TARGET = "occlusion.deletion"


def _ci(entry: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    if entry is None:
        return "n/a"
    lo, hi = entry["ci95"]
    return f"{scale * entry['mean']:.{digits}f} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(str(c) for c in row) + " |" for row in rows]]


def target_met(summary: dict) -> bool | None:
    """True when deleting occlusion's top windows first has a lower area than random, CI excluding 0."""
    areas = summary["faithfulness"].get("areas")
    if not areas:
        return None
    entry = areas[TARGET]
    return bool(entry["excludes_0"] and entry["diff"]["mean_diff"] < 0)


def _spans(records: list[dict], qtype: str) -> list[str]:
    spans = {tuple(map(tuple, r["token_spans"])) for r in records if r["type"] == qtype}
    if len(spans) == 1:
        return [f"{a:.2f}-{b:.2f}s" for a, b in next(iter(spans))]
    return [f"tok {j}" for j in range(len(next(iter(spans))))]


def markdown(summary: dict, records: list[dict], meta: dict) -> str:
    """explain.md: every table of the summary."""
    scope = (f"{meta['questions']} questions ({meta['attributed']} audio / audio-visual) of {meta['data']}, k = "
             f"{meta['k']}, {meta['windows']} occlusion windows, {meta['n_random']} random orders per question; "
             f"{meta['seconds']:.0f} s.")
    lines = [f"# What the bridge attends to: {meta['checkpoint']}", "", scope, "", "## Fusion blocks: relative update norm ||update|| / ||h||", "",
             "residual_scale per block: " + ", ".join(f"layer {k}: {v:g}" for k, v in summary["residual_scales"].items()),
             ""]
    rows = [[qtype, layer, entry["norm_answer"]["n"], _ci(entry["norm_answer"]), _ci(entry["norm_prompt"])]
            for qtype, blocks in summary["layers"].items() for layer, entry in blocks.items()]
    lines += _table(["type", "layer", "n", "answer position", "prompt mean"], rows)
    lines += ["", "## Attention over the audio tokens at the answer position (heads averaged)", ""]
    for qtype, blocks in summary["layers"].items():
        spans = _spans(records, qtype)
        lines += [f"**{qtype}**", ""] + _table(["layer", *spans], [[layer, *(f"{a:.3f}" for a in entry["attention"])]
                                                                   for layer, entry in blocks.items()]) + [""]
    faith = summary["faithfulness"]
    if faith:
        lines += ["## Faithfulness: curve areas (mean accuracy over deletion / insertion steps)", ""]
        lines += _table(["order", "curve", "n", "ranked", "random", "ranked - random [95% CI]", "excludes 0"],
                        [[*key.split("."), e["ranked"]["n"], _ci(e["ranked"]), _ci(e["random"]),
                          f"{e['diff']['mean_diff']:+.3f} [{e['diff']['ci95'][0]:+.3f}, {e['diff']['ci95'][1]:+.3f}]",
                          "yes" if e["excludes_0"] else "no"] for key, e in faith["areas"].items()])
        target = f"{'MET' if meta['target_met'] else 'NOT MET'}"
        lines += ["", f"Target (deletion area of top occlusion windows < random, CI excluding 0): {target}", "",
                  "## Rank correlation of attention and occlusion (Spearman, per question)", ""]
        lines += _table(["type", "rho [95% CI]", "undefined (constant)"],
                        [[t, _ci(e["spearman"]), e["undefined"]] for t, e in faith["spearman"].items()])
    lines += ["", "## Failure modes", ""]
    by_type = {}
    for r in records:
        by_type.setdefault(r["type"], []).append(r)
    fail_rows = []
    for qtype, entry in summary["failures"].items():
        safe = np.mean([r["safe"]["score"] for r in by_type[qtype]])
        base = np.mean([r["base"]["score"] for r in by_type[qtype]])
        wrong = sorted(((n, t, p) for t, preds in entry["confusion"].items() for p, n in preds.items() if p != t),
                       reverse=True)[:4]
        fail_rows.append([qtype, entry["n"], f"{100 * safe:.1f}", f"{100 * base:.1f}", entry["audio_hurts"],
                          entry["audio_helps"], "; ".join(f"{t}->{p or '(empty)'} x{n}" for n, t, p in wrong)])
    lines += _table(["type", "n", "SAFE %", "base %", "audio hurts", "audio helps", "top confusions (truth->SAFE)"],
                    fail_rows)
    examples = [e for entry in summary["failures"].values() for e in entry["examples"]][:10]
    if examples:
        lines += ["", "Questions the base got right and SAFE (with audio) got wrong:", ""]
        lines += _table(["id", "question", "truth", "base", "SAFE"],
                        [[e["id"], e["question"], e["truth"], e["base"], e["safe"]] for e in examples])
    if summary["association_bias"]:
        lines += ["", "## Association bias (audio-visual world questions, SAFE accuracy %)", ""]
        lines += _table(["condition", "n (yes)", "yes", "n (no)", "no"],
                        [[name, (s["yes"] or {}).get("n", 0), _ci(s["yes"], 100, 1), (s["no"] or {}).get("n", 0),
                          _ci(s["no"], 100, 1)] for name, s in summary["association_bias"].items()])
    lines += ["", "Figures: attention_by_type.png, occlusion_by_type.png, faithfulness_curves.png", ""]
    return "\n".join(lines)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def figures(summary: dict, records: list[dict]) -> dict[str, bytes]:
    """Mean attention over token time per type and block, mean occlusion over window time per type, and the mean
    deletion / insertion curves, as png bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    layers = list(next(iter(summary["layers"].values())))
    fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 3.5), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
        for qtype, blocks in summary["layers"].items():
            spans = next(r["token_spans"] for r in records if r["type"] == qtype)
            ax.plot([(a + b) / 2 for a, b in spans], blocks[layer]["attention"], marker="o", label=qtype)
        ax.set(title=f"fusion block after layer {layer}", xlabel="token centre (s)", ylabel="attention")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    out["attention_by_type.png"] = _png(fig)
    plt.close(fig)
    attributed = [r for r in records if "attribution" in r]
    if attributed:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
        for qtype in sorted({r["type"] for r in attributed}):
            members = [r["attribution"] for r in attributed if r["type"] == qtype]
            centres = [(a + b) / 2 for a, b in members[0]["windows_s"]]
            ax.plot(centres, np.mean([m["occlusion"] for m in members], axis=0), marker=".", label=qtype)
        ax.set(title="occlusion: drop of log p(answer token)", xlabel="window centre (s)", ylabel="mean drop")
        ax.legend(fontsize=7)
        fig.tight_layout()
        out["occlusion_by_type.png"] = _png(fig)
        plt.close(fig)
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        for ax, kind in zip(axes, ("deletion", "insertion")):
            for name in ("occlusion", "attention", "random"):
                curve = summary["faithfulness"]["mean_curves"][f"{name}.{kind}"]
                ax.plot(range(len(curve)), curve, label=name)
            ax.set(title=kind, xlabel="windows replaced" if kind == "deletion" else "windows restored",
                   ylabel="accuracy")
            ax.legend()
        fig.tight_layout()
        out["faithfulness_curves.png"] = _png(fig)
        plt.close(fig)
    return out


@console("stage_a-explain")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="stage_a-explain", description=__doc__.splitlines()[0],
                            epilog="Config keys of the preset can be overridden: --model.base_vl ID ...")
    parser.add_argument("--checkpoint", type=Path, required=True, help="bridge folder or stage_a-train run folder")
    parser.add_argument("--preset", default="stage_a", help="training preset naming the base model and data")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--questions", type=int, default=DEFAULT_QUESTIONS,
                        help="about this many audio + audio-visual questions (stratified; default %(default)s)")
    parser.add_argument("--windows", type=int, default=ExplainSettings.windows, help="occlusion time windows")
    parser.add_argument("--random-orders", type=int, default=ExplainSettings.n_random,
                        help="random deletion / insertion orders per question")
    parser.add_argument("--k", type=int, default=None, help="audio tokens (default: the preset's k_eval)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <checkpoint>/explain)")
    add_overwrite_flag(parser, "its explanation")
    parser.add_argument("--report", action="store_true", help="print explain.md's tables (default: a short summary)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of tables")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-v", "--verbose", action="store_true")
    args, rest = parser.parse_known_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(TrainConfig, args.preset, parse_overrides(rest))
    try:
        bridge = bridge_folder(args.checkpoint)
    except FileNotFoundError as err:
        raise InputError(f"--checkpoint {err}") from err
    check_number("--questions", args.questions, ge=1, integer=True)
    check_number("--windows", args.windows, ge=2, integer=True)
    check_number("--random-orders", args.random_orders, ge=1, integer=True)
    check_number("--k", args.k, ge=1, le=bridge_k_max(bridge), integer=True, optional=True)
    out = args.out or args.checkpoint / "explain"
    refuse_overwrite(out, args.overwrite)
    started = time.monotonic()
    setup = build_setup(cfg, args.device, splits=(args.split,), bridge_dir=bridge)
    split = getattr(setup, args.split)
    settings = ExplainSettings(k=args.k or cfg.k_eval, windows=args.windows, n_random=args.random_orders,
                               seed=cfg.seed, batch_size=cfg.eval_batch_size)
    rows = select_rows(split, args.questions, cfg.seed)
    records = explain(setup, split, rows, settings, cfg.data.sample_rate, args.device)
    summary = summarize(records, BlockReadout(setup.model).residual_scales(), Path(setup.paths[args.split]))
    met = target_met(summary)
    meta = {"checkpoint": str(bridge), "data": setup.paths[args.split], "questions": len(records),
            "attributed": sum("attribution" in r for r in records), "k": settings.k, "windows": settings.windows,
            "n_random": settings.n_random, "seed": settings.seed, "target_met": met,
            "seconds": time.monotonic() - started}
    report = markdown(summary, records, meta)
    with atomic_directory(out) as tmp:
        (tmp / "explain.json").write_text(json.dumps({"meta": meta, "summary": summary, "questions": records},
                                                     indent=1), encoding="utf-8")
        (tmp / "explain.md").write_text(report, encoding="utf-8")
        for name, data in figures(summary, records).items():
            (tmp / name).write_bytes(data)
    if args.json:
        print(json.dumps({"meta": meta, "summary": summary}, indent=2))
    elif args.report:
        print(report)
    else:
        areas = summary["faithfulness"].get("areas", {})
        for key, e in areas.items():
            print(f"{key:<20} ranked {_ci(e['ranked'])}  random {_ci(e['random'])}  diff {e['diff']['mean_diff']:+.3f} "
                  f"[{e['diff']['ci95'][0]:+.3f}, {e['diff']['ci95'][1]:+.3f}]")
        print(f"target (occlusion deletion < random, CI excluding 0): {'MET' if met else 'NOT MET'}")
    print(f"written to {out} ({meta['seconds']:.0f} s)")
    return 1 if met is False else 0


if __name__ == "__main__":
    sys.exit(main())
