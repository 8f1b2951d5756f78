"""Merge a sweep's finished cells into one table: seeds pooled, CIs, and paired tests against the default cell."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from shared.stats import mcnemar, mean_ci, mean_std, paired_diff_ci, welch_t
from stage_a.data import AUDIO_FAMILIES

SUCCESS_AUDIO_GAIN_PTS = 3.0
SUCCESS_VL_TOLERANCE_PTS = 1.0
SUCCESS_SEEDS = 3


def _load(cells, cells_dir: Path) -> tuple[dict[str, list[dict]], list[str], list[str]]:
    """Finished runs per cell label (summary + predictions keyed by (seed, id)), failed and missing cells."""
    runs: dict[str, list[dict]] = defaultdict(list)
    failed, missing = [], []
    for cell in cells:
        run_dir = cells_dir / cell.name
        if (run_dir / "FAILED.txt").is_file():
            failed.append(cell.name)
        elif not (run_dir / "summary.json").is_file():
            missing.append(cell.name)
        else:
            summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
            records = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
            runs[cell.label].append({"seed": cell.seed, "summary": summary,
                                     "records": {(cell.seed, r["id"]): r for r in records}})
    return runs, failed, missing


def _scores(runs: list[dict], audio: bool) -> dict[tuple, dict]:
    return {key: r for run in runs for key, r in run["records"].items() if (r["family"] in AUDIO_FAMILIES) == audio}


def _paired(mine: dict[tuple, dict], ref: dict[tuple, dict]) -> dict:
    keys = sorted(set(mine) & set(ref))
    if not keys:
        return {"n": 0}
    a, b = [mine[k]["score"] for k in keys], [ref[k]["score"] for k in keys]
    paired, mc = paired_diff_ci(a, b), mcnemar(a, b)
    return {"n": len(keys), "diff_pts": 100 * paired["mean_diff"], "ci95_pts": [100 * x for x in paired["ci95"]],
            "p_paired": paired["p_value"], "p_mcnemar": mc["p_value"]}


def _row(label: str, runs: list[dict], ref_runs: list[dict]) -> dict:
    audio, vl = _scores(runs, audio=True), _scores(runs, audio=False)
    seed_audio = [run["summary"]["audio_acc"]["mean"] for run in runs]
    seed_degr = [run["summary"]["vl_degradation_pts"] for run in runs]
    audio_ci = mean_ci([r["score"] for r in audio.values()])
    vl_delta = paired_diff_ci([r["score"] for r in vl.values()], [r["base_score"] for r in vl.values()])
    vs_audio = _paired(audio, _scores(ref_runs, audio=True))
    vs_vl = _paired(vl, _scores(ref_runs, audio=False))
    ref_seed_audio = [run["summary"]["audio_acc"]["mean"] for run in ref_runs]
    welch = welch_t(seed_audio, ref_seed_audio) if len(seed_audio) > 1 and len(ref_seed_audio) > 1 else None
    stats_a, stats_d = mean_std(seed_audio), mean_std(seed_degr)
    return {
        "cell": label, "seeds": len(runs),
        "audio_acc": 100 * stats_a["mean"], "audio_acc_std": 100 * stats_a["std"],
        "audio_ci_lo": 100 * audio_ci["ci95"][0], "audio_ci_hi": 100 * audio_ci["ci95"][1],
        "audio_acc_base": 100 * float(np.mean([run["summary"]["audio_acc_base"] for run in runs])),
        "vl_degradation_pts": stats_d["mean"], "vl_degradation_std": stats_d["std"],
        "vl_delta_ci_lo": 100 * vl_delta["ci95"][0], "vl_delta_ci_hi": 100 * vl_delta["ci95"][1],
        "vl_acc_with_audio": 100 * float(np.mean([run["summary"]["vl_acc_with_audio"] for run in runs])),
        "gate0_max_abs_logit_diff": max(run["summary"]["gate0_max_abs_logit_diff"] for run in runs),
        "trainable_params": runs[0]["summary"].get("trainable_params"),
        "train_seconds": float(np.mean([run["summary"]["train_seconds"] for run in runs])),
        "audio_vs_default_pts": vs_audio.get("diff_pts"), "audio_p_paired": vs_audio.get("p_paired"),
        "audio_p_mcnemar": vs_audio.get("p_mcnemar"), "audio_p_welch": welch["p_value"] if welch else None,
        "vl_vs_default_pts": vs_vl.get("diff_pts"), "vl_p_paired": vs_vl.get("p_paired"),
        "vl_p_mcnemar": vs_vl.get("p_mcnemar"),
    }


def merge_cells(sweep, cells, cells_dir: Path) -> dict:
    """One row per cell with finished runs, the failed and missing cells, and the success criteria."""
    runs, failed, missing = _load(cells, cells_dir)
    if not runs:
        raise ValueError(f"no finished cells under {cells_dir}; expected at least one summary.json")
    ref = runs.get(sweep.default, [])
    rows = [_row(label, runs[label], ref) for label in sweep.cells if label in runs]
    table = {"rows": rows, "failed": failed, "missing": missing, "default": sweep.default}
    if sweep.criteria and "original_vl" in runs and sweep.default in runs:
        by = {row["cell"]: row for row in rows}
        gain = by[sweep.default]["audio_acc"] - by["original_vl"]["audio_acc"]
        table["criteria"] = {
            "audio_gain_pts": {"value": gain, "target": SUCCESS_AUDIO_GAIN_PTS, "met": gain >= SUCCESS_AUDIO_GAIN_PTS},
            "vl_degradation_pts": {"value": by[sweep.default]["vl_degradation_pts"], "target": SUCCESS_VL_TOLERANCE_PTS,
                                   "met": by[sweep.default]["vl_degradation_pts"] <= SUCCESS_VL_TOLERANCE_PTS},
            "seeds": {"value": by[sweep.default]["seeds"], "target": SUCCESS_SEEDS,
                      "met": by[sweep.default]["seeds"] >= SUCCESS_SEEDS},
        }
    return table


def _f(value, digits: int = 2) -> str:
    if value is None:
        return "—"
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"


def _p(value) -> str:
    return "—" if value is None else ("<0.0001" if value < 1e-4 else f"{value:.4f}")


def render_markdown(sweep, table: dict) -> str:
    """The sweep's results as Markdown: one row per cell, then failures and the success criteria."""
    lines = [f"# Sweep `{sweep.name}` (training preset `{sweep.train_preset}`, seeds {list(sweep.seeds)}, "
             f"default cell `{sweep.default}`)", "",
             "Accuracies in %, mean ± std over seeds, [95% bootstrap CI over the pooled (seed, question) scores]. "
             "Δ columns compare with the default cell on the same questions and seeds: paired bootstrap p, "
             "McNemar p, and Welch's t over seed means.", "",
             "| cell | seeds | audio acc | Δ audio vs default (pts) | p paired / McNemar / Welch | VL degradation (pts) "
             "| Δ VL vs default (pts), p paired | gate-0 diff | trainable params | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        lines.append(
            f"| {r['cell']} | {r['seeds']} | {_f(r['audio_acc'])} ± {_f(r['audio_acc_std'])} "
            f"[{_f(r['audio_ci_lo'])}, {_f(r['audio_ci_hi'])}] | {_f(r['audio_vs_default_pts'])} "
            f"| {_p(r['audio_p_paired'])} / {_p(r['audio_p_mcnemar'])} / {_p(r['audio_p_welch'])} "
            f"| {_f(r['vl_degradation_pts'])} ± {_f(r['vl_degradation_std'])} "
            f"[{_f(-r['vl_delta_ci_hi'])}, {_f(-r['vl_delta_ci_lo'])}] "
            f"| {_f(r['vl_vs_default_pts'])}, {_p(r['vl_p_paired'])} | {r['gate0_max_abs_logit_diff']:g} "
            f"| {r['trainable_params']} | {_f(r['train_seconds'], 0)} |")
    if table["failed"] or table["missing"]:
        lines += ["", f"Failed cells: {table['failed'] or 'none'}; not finished: {table['missing'] or 'none'}."]
    if "criteria" in table:
        lines += ["", "Success criteria (default cell vs original VL):", ""]
        for name, c in table["criteria"].items():
            lines.append(f"- {name}: {_f(c['value'])} (target {c['target']}): {'met' if c['met'] else 'NOT met'}")
    return "\n".join(lines) + "\n"
