"""Merge a sweep's finished cells into one table: seed means, two-level bootstrap CIs, tests against the default.

CIs and p-values come from `shared.stats.hierarchical_bootstrap` / `paired_hierarchical_bootstrap`
over the cell's seeds x test questions: a seed's questions share one trained model, so they are
not independent items. Comparisons pair each seed of a cell with the same seed of the default
cell, question by question. McNemar is reported only when a comparison has a single paired seed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from shared.stats import hierarchical_bootstrap, mcnemar, mean_std, paired_hierarchical_bootstrap, welch_t
from stage_a.data import AUDIO_FAMILIES

SUCCESS_AUDIO_GAIN_PTS = 3.0
SUCCESS_VL_TOLERANCE_PTS = 1.0
SUCCESS_SEEDS = 3

BySeed = dict[int, dict[str, dict]]  # seed -> question id -> prediction record


def _load(cells, cells_dir: Path) -> tuple[dict[str, list[dict]], list[str], list[str]]:
    """Finished runs per cell label (summary + predictions keyed by question id), failed and missing cells."""
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
            runs[cell.label].append({"seed": cell.seed, "summary": summary, "records": {r["id"]: r for r in records}})
    return runs, failed, missing


def _by_seed(runs: list[dict], audio: bool) -> BySeed:
    """Each seed's audio (or VL) prediction records by question id."""
    return {run["seed"]: {qid: r for qid, r in run["records"].items() if (r["family"] in AUDIO_FAMILIES) == audio}
            for run in runs}


def _rows(by_seed: BySeed, seeds: list[int], field: str) -> list[np.ndarray]:
    """One row of `field` per seed, questions in id order (each seed may have its own test questions)."""
    return [np.array([by_seed[seed][qid][field] for qid in sorted(by_seed[seed])], dtype=np.float64) for seed in seeds]


def _paired(label: str, mine: BySeed, ref: BySeed, group: str) -> dict:
    """The cell against the default cell: each seed both ran, question by question."""
    seeds = sorted(set(mine) & set(ref))
    if not seeds:
        return {"seeds": 0}
    for seed in seeds:
        if set(mine[seed]) != set(ref[seed]):
            odd = sorted(set(mine[seed]) ^ set(ref[seed]))
            raise ValueError(f"cell {label} ({group}) seed {seed}: {len(odd)} questions not shared with the default "
                             f"cell's seed {seed} (first {odd[0]!r}); expected the same test questions per seed")
    a, b = _rows(mine, seeds, "score"), _rows(ref, seeds, "score")
    test = paired_hierarchical_bootstrap(a, b)
    return {"seeds": len(seeds), "diff_pts": 100 * test["mean_diff"], "ci95_pts": [100 * x for x in test["ci95"]],
            "p_hier": test["p_value"], "p_mcnemar": mcnemar(a[0], b[0])["p_value"] if len(seeds) == 1 else None}


def _row(label: str, runs: list[dict], ref_runs: list[dict]) -> dict:
    audio, vl = _by_seed(runs, audio=True), _by_seed(runs, audio=False)
    seeds = sorted(audio)
    for group, by_seed in (("audio", audio), ("VL", vl)):
        empty = [seed for seed in seeds if not by_seed[seed]]
        if empty:
            raise ValueError(f"cell {label} seed {empty[0]}: no {group} questions in predictions.jsonl; "
                             "expected at least one")
    audio_ci = hierarchical_bootstrap(_rows(audio, seeds, "score"))
    vl_delta = paired_hierarchical_bootstrap(_rows(vl, seeds, "score"), _rows(vl, seeds, "base_score"))
    vs_audio = _paired(label, audio, _by_seed(ref_runs, audio=True), "audio")
    vs_vl = _paired(label, vl, _by_seed(ref_runs, audio=False), "VL")
    seed_audio = [run["summary"]["audio_acc"]["mean"] for run in runs]
    seed_degr = [run["summary"]["vl_degradation_pts"] for run in runs]
    ref_seed_audio = [run["summary"]["audio_acc"]["mean"] for run in ref_runs]
    welch = welch_t(seed_audio, ref_seed_audio) if len(seed_audio) > 1 and len(ref_seed_audio) > 1 else None
    stats_a, stats_d = mean_std(seed_audio), mean_std(seed_degr)
    vs_ci = vs_audio.get("ci95_pts", [None, None])
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
        "paired_seeds": vs_audio["seeds"],
        "audio_vs_default_pts": vs_audio.get("diff_pts"),
        "audio_vs_default_ci_lo": vs_ci[0], "audio_vs_default_ci_hi": vs_ci[1],
        "audio_p_hier": vs_audio.get("p_hier"), "audio_p_mcnemar": vs_audio.get("p_mcnemar"),
        "audio_p_welch": welch["p_value"] if welch else None,
        "vl_vs_default_pts": vs_vl.get("diff_pts"), "vl_p_hier": vs_vl.get("p_hier"),
        "vl_p_mcnemar": vs_vl.get("p_mcnemar"),
    }


def per_qtype(runs: list[dict]) -> dict[str, dict[str, float]] | None:
    """Audio question types' accuracy in % (mean and std over seeds) and their no-audio floor, or None when a
    run's summary has no per-type figures (runs written before summaries carried them)."""
    summaries = [run["summary"] for run in runs]
    if any("per_qtype" not in s or "per_qtype_base" not in s for s in summaries):
        return None
    types = sorted(t for t in summaries[0]["per_qtype"] if not t.startswith("visual."))
    out = {}
    for t in types:
        stats = mean_std([s["per_qtype"][t]["mean"] for s in summaries])
        out[t] = {"mean": 100 * stats["mean"], "std": 100 * stats["std"],
                  "floor": 100 * float(np.mean([s["per_qtype_base"][t]["mean"] for s in summaries]))}
    return out


def merge_cells(sweep, cells, cells_dir: Path) -> dict:
    """One row per cell with finished runs, the failed and missing cells, and the success criteria."""
    runs, failed, missing = _load(cells, cells_dir)
    if not runs:
        raise ValueError(f"no finished cells under {cells_dir}; expected at least one summary.json")
    ref = runs.get(sweep.default, [])
    rows = [{**_row(label, runs[label], ref), "per_qtype": per_qtype(runs[label])}
            for label in sweep.cells if label in runs]
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
             "Accuracies in %, mean ± std over seeds, [95% hierarchical-bootstrap CI: seeds resampled, then "
             "questions within each seed]. Δ columns compare with the default cell, each seed paired with the same "
             "seed and question by question: Δ with its hierarchical-bootstrap 95% CI; p hier. = two-sided "
             "hierarchical-bootstrap p; McNemar = McNemar p, only when a single seed is paired (— otherwise); "
             "Welch = Welch's t over the seed means. VL degradation: mean ± std over seeds [hierarchical 95% CI of "
             "base − with-audio VL accuracy].", "",
             "| cell | seeds | audio acc | Δ audio vs default (pts) [95% CI] | p hier. / McNemar / Welch "
             "| VL degradation (pts) | Δ VL vs default (pts), p hier. | gate-0 diff | trainable params | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        lines.append(
            f"| {r['cell']} | {r['seeds']} | {_f(r['audio_acc'])} ± {_f(r['audio_acc_std'])} "
            f"[{_f(r['audio_ci_lo'])}, {_f(r['audio_ci_hi'])}] | {_f(r['audio_vs_default_pts'])} "
            f"[{_f(r['audio_vs_default_ci_lo'])}, {_f(r['audio_vs_default_ci_hi'])}] "
            f"| {_p(r['audio_p_hier'])} / {_p(r['audio_p_mcnemar'])} / {_p(r['audio_p_welch'])} "
            f"| {_f(r['vl_degradation_pts'])} ± {_f(r['vl_degradation_std'])} "
            f"[{_f(-r['vl_delta_ci_hi'])}, {_f(-r['vl_delta_ci_lo'])}] "
            f"| {_f(r['vl_vs_default_pts'])}, {_p(r['vl_p_hier'])} | {r['gate0_max_abs_logit_diff']:g} "
            f"| {r['trainable_params']} | {_f(r['train_seconds'], 0)} |")
    typed = [r for r in table["rows"] if r.get("per_qtype")]
    if typed:
        types = sorted({t for r in typed for t in r["per_qtype"]})
        floors = typed[0]["per_qtype"]
        lines += ["", "Audio accuracy per question type, % (mean ± std over seeds); floor: the base model without audio.",
                  "", "| cell | " + " | ".join(types) + " |", "|---" * (len(types) + 1) + "|",
                  "| floor | " + " | ".join(_f(floors[t]["floor"], 1) if t in floors else "—" for t in types) + " |"]
        for r in typed:
            cells_text = [f"{_f(r['per_qtype'][t]['mean'], 1)} ± {_f(r['per_qtype'][t]['std'], 1)}"
                          if t in r["per_qtype"] else "—" for t in types]
            lines.append(f"| {r['cell']} | " + " | ".join(cells_text) + " |")
    if table["failed"] or table["missing"]:
        lines += ["", f"Failed cells: {table['failed'] or 'none'}; not finished: {table['missing'] or 'none'}."]
    if "criteria" in table:
        lines += ["", "Success criteria (default cell vs original VL):", ""]
        for name, c in table["criteria"].items():
            lines.append(f"- {name}: {_f(c['value'])} (target {c['target']}): {'met' if c['met'] else 'NOT met'}")
    return "\n".join(lines) + "\n"
