"""`stage_a-eval`: per-question predictions and metrics with 95% CIs, for a SAFE checkpoint or the base alone.

Writes to --out: `predictions.jsonl` (question, answers, dataset and its metric, raw output, parsed
answer, score, family/type, k, gate, and the base model's answer and score on the same question) and
`metrics.json` (overall, per family and per type, each with a bootstrap CI, and SAFE vs the base
on the same questions: paired bootstrap and McNemar per family; and `per_dataset`: each dataset
with the metric it is scored by, SAFE's and the base's value with a 95% CI, and per type). Each
question is scored by its dataset's metric (`shared.dataset_metrics`); the overall, per-family and
per-type figures average accuracy-type datasets only, caption datasets (CIDEr-D) are reported per
dataset. `--json` prints metrics.json instead of the tables. `--report` adds a Markdown report with
examples, where audio helps or hurts, a counting confusion table and accuracy vs k.
Without --checkpoint the base model alone is evaluated (no audio). A bridge trained on another base model or
audio encoder is refused (exit 2, naming both) unless --no-strict is given, which only warns.
An --out folder that already holds files (an earlier evaluation) is refused (exit 2) unless --overwrite is given.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import defaultdict
from pathlib import Path

from shared.checkpoint import atomic_write_text
from shared.cli import (ArgumentParser, InputError, add_overwrite_flag, check_number, console, number_list,
                        refuse_overwrite)
from shared.config import load_config, parse_overrides
from shared.dataset_metrics import METRICS_BY_NAME, format_dataset_summary
from shared.logs import setup_logging
from shared.stats import mcnemar, mean_ci, paired_diff_ci
from stage_a.checkpointing import bridge_folder
from stage_a.config import TrainConfig
from stage_a.evaluate import EvalSettings, Evaluator, eval_rows
from stage_a.model import bridge_k_max
from stage_a.report import write_report
from stage_a.setup import build_setup


def compare_with_base(predictions: list[dict]) -> dict[str, dict]:
    """SAFE vs the base on the same questions, per family and overall: paired bootstrap and McNemar."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in predictions:
        groups[record["family"]].append(record)
        groups["overall"].append(record)
    out = {}
    for name, records in sorted(groups.items()):
        safe, base = [r["score"] for r in records], [r["base_score"] for r in records]
        out[name] = {"paired": paired_diff_ci(safe, base), "mcnemar": mcnemar(safe, base)}
    return out


def format_metrics(metrics: dict) -> str:
    """Per-family accuracy of SAFE and the base with CIs and the paired p-values, then each dataset's metric."""
    datasets = ["", "Per dataset, each with its own metric (accuracies in %):",
                format_dataset_summary(metrics["per_dataset"])]
    if "vs_base" not in metrics:
        return "\n".join(datasets[1:])
    lines = [f"{'family':<14} {'n':>6} {'SAFE':>8} {'95% CI':>17} {'base':>8} {'diff':>8} {'p (paired)':>11} {'p (McNemar)':>12}"]
    base = metrics["per_family_base"]
    for name, comp in metrics["vs_base"].items():
        acc = metrics["per_family"].get(name, metrics["overall"])
        ref = base.get(name, metrics["overall_base"])
        lo, hi = acc["ci95"]
        lines.append(f"{name:<14} {acc['n']:>6} {100 * acc['mean']:8.2f} [{100 * lo:6.2f}, {100 * hi:6.2f}] "
                     f"{100 * ref['mean']:8.2f} {100 * comp['paired']['mean_diff']:+8.2f} "
                     f"{comp['paired']['p_value']:11.4f} {comp['mcnemar']['p_value']:12.4f}")
    return "\n".join(lines + datasets)


@console("stage_a-eval")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="stage_a-eval", description=__doc__.splitlines()[0],
                                     epilog="Config keys of the preset can be overridden: --model.base_vl ID ...")
    parser.add_argument("--checkpoint", type=Path, default=None, help="bridge folder or stage_a-train run folder")
    parser.add_argument("--preset", default="stage_a", help="training preset naming the base model and data")
    parser.add_argument("--data", default=None, help="JSONL manifest to evaluate (default: the preset's test split)")
    parser.add_argument("--gate", type=float, default=1.0)
    parser.add_argument("--k", type=int, default=None, help="audio tokens (default: the preset's k_eval)")
    parser.add_argument("--size", type=int, default=0, help="a stratified subset of N questions (0: all)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <checkpoint>/eval or runs/eval_base)")
    add_overwrite_flag(parser, "its predictions, metrics and report")
    parser.add_argument("--report", action="store_true", help="also write report.md with examples and accuracy vs k")
    parser.add_argument("--ks", default="4,8,16", help="k values of the report's accuracy-vs-k section")
    parser.add_argument("--json", action="store_true", help="print metrics.json to stdout instead of the tables")
    parser.add_argument("--caption-tokens", type=int, default=EvalSettings.caption_max_new_tokens,
                        help="generation budget of caption samples (default: %(default)s; questions get 4)")
    parser.add_argument("--no-strict", action="store_true",
                        help="load a bridge recorded for another base model or encoder, with a warning")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-v", "--verbose", action="store_true")
    args, rest = parser.parse_known_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(TrainConfig, args.preset, parse_overrides(rest))
    if args.data:
        cfg.data.test = args.data
    try:
        bridge = bridge_folder(args.checkpoint) if args.checkpoint else None
    except FileNotFoundError as err:
        raise InputError(f"--checkpoint {err}") from err
    k_max = bridge_k_max(bridge) if bridge else cfg.model.k_max
    ks = number_list("--ks", args.ks, int, ge=1, le=k_max)
    check_number("--k", args.k, ge=1, le=k_max, integer=True, optional=True)
    check_number("--gate", args.gate, ge=0, le=1)
    check_number("--size", args.size, ge=0, integer=True)
    check_number("--caption-tokens", args.caption_tokens, ge=1, integer=True)
    out = args.out or (args.checkpoint / "eval" if args.checkpoint else Path(cfg.out_dir) / "eval_base")
    refuse_overwrite(out, args.overwrite)
    setup = build_setup(cfg, args.device, splits=("test",), bridge_dir=bridge, strict=not args.no_strict)
    settings = EvalSettings(k=args.k or cfg.k_eval, batch_size=cfg.eval_batch_size, gate=args.gate,
                            use_audio=bridge is not None, caption_max_new_tokens=args.caption_tokens)
    evaluator = Evaluator(setup.model, setup.collator, setup.test, eval_rows(setup.test, args.size, cfg.seed),
                          settings, args.device)
    result = evaluator.run(detail=True)
    predictions = result.pop("predictions")
    accuracy = [r for r in predictions if METRICS_BY_NAME[r["metric"]].accuracy]
    metrics = {"subject": str(bridge) if bridge else "base model (no audio)", "data": setup.paths["test"],
               "k": settings.k, "gate": settings.gate, **result}
    if accuracy:
        metrics |= {"overall": mean_ci([r["score"] for r in accuracy]),
                    "overall_base": mean_ci([r["base_score"] for r in accuracy]),
                    "vs_base": compare_with_base(accuracy)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in predictions))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    if args.report:
        by_k = {}
        for k in ks:
            evaluator.settings = dataclasses.replace(settings, k=k)
            by_k[k] = evaluator.run(detail=True)["predictions"]
        write_report(predictions, by_k if bridge else None, out)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(format_metrics(metrics))
        print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
