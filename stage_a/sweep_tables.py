"""Merge a sweep's finished cells into one table: run means, two-level bootstrap CIs, tests against the default.

A run is one (world, seed) training of a cell; without named worlds, runs are seeds. CIs and p-values
come from `shared.stats.hierarchical_bootstrap` / `paired_hierarchical_bootstrap` over the cell's
runs x test questions: a run's questions share one trained model, so they are not independent items.
Comparisons pair each run of a cell with the default cell's run on the same world and seed, question
by question. McNemar is reported only when a comparison has a single paired run.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from shared.loading import load_json, load_jsonl
from shared.stats import hierarchical_bootstrap, mcnemar, mean_std, paired_hierarchical_bootstrap, welch_t
from stage_a.data import AUDIO_FAMILIES

RUN_FILE = "a file of a finished stage_a-sweep cell (a stage_a-train run folder)"
# Success criteria: the seed's (gain over the original VL model, 3 seeds) and issue 13's targets for the default.
SUCCESS_AUDIO_GAIN_PTS = 3.0
SUCCESS_VL_TOLERANCE_PTS = 0.5
SUCCESS_SEEDS = 3
SUCCESS_AUDIO_ACC = 80.0
SUCCESS_GAP_TO_FULL_FT_PTS = -1.0
SUCCESS_OVER_LORA_ONLY_PTS = 10.0
SUCCESS_P = 0.01
SUCCESS_ORDER_ACC = 60.0
SUCCESS_ABOVE_FLOOR_PTS = 20.0

Run = tuple[str, int]  # (world preset, "" when the sweep names none; seed)
ByRun = dict[Run, dict[str, dict]]  # run -> question id -> prediction record


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
            summary = load_json(run_dir / "summary.json", RUN_FILE)
            records = load_jsonl(run_dir / "predictions.jsonl", RUN_FILE)
            runs[cell.label].append({"run": (cell.world, cell.seed), "summary": summary,
                                     "records": {r["id"]: r for _, r in records}})
    return runs, failed, missing


def _by_run(runs: list[dict], audio: bool) -> ByRun:
    """Each run's audio (or VL) prediction records by question id."""
    return {run["run"]: {qid: r for qid, r in run["records"].items() if (r["family"] in AUDIO_FAMILIES) == audio}
            for run in runs}


def _name(run: Run) -> str:
    return f"world {run[0]} seed {run[1]}" if run[0] else f"seed {run[1]}"


def _rows(by_run: ByRun, keys: list[Run], field: str) -> list[np.ndarray]:
    """One row of `field` per run, questions in id order (each run may have its own test questions)."""
    return [np.array([by_run[key][qid][field] for qid in sorted(by_run[key])], dtype=np.float64) for key in keys]


def _paired(label: str, mine: ByRun, ref: ByRun, group: str) -> dict:
    """The cell against the default cell: each run both made, question by question."""
    keys = sorted(set(mine) & set(ref))
    if not keys:
        return {"seeds": 0}
    for key in keys:
        if set(mine[key]) != set(ref[key]):
            odd = sorted(set(mine[key]) ^ set(ref[key]))
            raise ValueError(f"cell {label} ({group}) {_name(key)}: {len(odd)} questions not shared with the default "
                             f"cell's {_name(key)} (first {odd[0]!r}); expected the same test questions per run")
    a, b = _rows(mine, keys, "score"), _rows(ref, keys, "score")
    test = paired_hierarchical_bootstrap(a, b)
    return {"seeds": len(keys), "diff_pts": 100 * test["mean_diff"], "ci95_pts": [100 * x for x in test["ci95"]],
            "p_hier": test["p_value"], "p_mcnemar": mcnemar(a[0], b[0])["p_value"] if len(keys) == 1 else None}


def per_world(runs: list[dict]) -> dict[str, dict[str, float]] | None:
    """Audio accuracy and VL degradation per world (mean and std over its seeds), or None without named worlds."""
    worlds = sorted({run["run"][0] for run in runs})
    if worlds == [""]:
        return None
    out = {}
    for world in worlds:
        mine = [run["summary"] for run in runs if run["run"][0] == world]
        audio = mean_std([s["audio_acc"]["mean"] for s in mine])
        degr = mean_std([s["vl_degradation_pts"] for s in mine])
        out[world] = {"seeds": len(mine), "audio_acc": 100 * audio["mean"], "audio_acc_std": 100 * audio["std"],
                      "vl_degradation_pts": degr["mean"], "vl_degradation_std": degr["std"]}
    return out


def _row(label: str, runs: list[dict], ref_runs: list[dict]) -> dict:
    audio, vl = _by_run(runs, audio=True), _by_run(runs, audio=False)
    keys = sorted(audio)
    for group, by_run in (("audio", audio), ("VL", vl)):
        empty = [key for key in keys if not by_run[key]]
        if empty:
            raise ValueError(f"cell {label} {_name(empty[0])}: no {group} questions in predictions.jsonl; "
                             "expected at least one")
    audio_ci = hierarchical_bootstrap(_rows(audio, keys, "score"))
    vl_delta = paired_hierarchical_bootstrap(_rows(vl, keys, "score"), _rows(vl, keys, "base_score"))
    vs_audio = _paired(label, audio, _by_run(ref_runs, audio=True), "audio")
    vs_vl = _paired(label, vl, _by_run(ref_runs, audio=False), "VL")
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
    rows = [{**_row(label, runs[label], ref), "per_qtype": per_qtype(runs[label]),
             "per_world": per_world(runs[label])} for label in sweep.cells if label in runs]
    table = {"rows": rows, "failed": failed, "missing": missing, "default": sweep.default}
    if sweep.criteria and sweep.default in runs:
        table["criteria"] = criteria({row["cell"]: row for row in rows}, sweep.default)
    if sweep.default in runs:
        table["finding"] = finding(sweep.default, rows)
    return table


def finding(default: str, rows: list[dict]) -> str:
    """The sweep in one line: the default's audio accuracy, then each other cell's paired Δ [95% CI] and VL
    degradation; a Δ whose 95% CI excludes 0 is marked * (the shifted-bootstrap p can disagree with the
    percentile CI at the edge when a few seeds make the bootstrap distribution lumpy; the line follows the CI)."""
    ref = next(r for r in rows if r["cell"] == default)
    parts = [f"`{default}` (default) {_f(ref['audio_acc'], 1)} ± {_f(ref['audio_acc_std'], 1)}, "
             f"VL {_f(ref['vl_degradation_pts'])}"]
    for r in rows:
        if r["cell"] == default or not r["paired_seeds"]:
            continue
        star = "*" if r["audio_vs_default_ci_lo"] > 0 or r["audio_vs_default_ci_hi"] < 0 else ""
        parts.append(f"`{r['cell']}` {r['audio_vs_default_pts']:+.1f}{star} [{r['audio_vs_default_ci_lo']:+.1f}, "
                     f"{r['audio_vs_default_ci_hi']:+.1f}], VL {_f(r['vl_degradation_pts'])}")
    return "; ".join(parts)


OPS = {">=": float.__ge__, "<=": float.__le__, "<": float.__lt__, "==": float.__eq__}


def _target(value: float, op: str, target: float) -> dict:
    return {"value": value, "op": op, "target": target, "met": bool(OPS[op](float(value), float(target)))}


def criteria(by: dict[str, dict], default: str) -> dict[str, dict]:
    """The default cell against every success target its sweep has the cells for (baselines by cell name)."""
    me = by[default]
    out = {"audio_acc": _target(me["audio_acc"], ">=", SUCCESS_AUDIO_ACC),
           "vl_degradation_pts": _target(me["vl_degradation_pts"], "<=", SUCCESS_VL_TOLERANCE_PTS),
           "seeds": _target(me["seeds"], ">=", SUCCESS_SEEDS),
           "gate0_max_abs_logit_diff": _target(me["gate0_max_abs_logit_diff"], "==", 0)}
    if "original_vl" in by:
        out["audio_gain_pts"] = _target(me["audio_acc"] - by["original_vl"]["audio_acc"], ">=", SUCCESS_AUDIO_GAIN_PTS)
    if "full_ft" in by and by["full_ft"]["paired_seeds"]:  # rows hold (cell - default)
        out["vs_full_ft_pts"] = _target(-by["full_ft"]["audio_vs_default_pts"], ">=", SUCCESS_GAP_TO_FULL_FT_PTS)
    if "lora_only" in by and by["lora_only"]["paired_seeds"]:
        out["over_lora_only_pts"] = _target(-by["lora_only"]["audio_vs_default_pts"], ">=", SUCCESS_OVER_LORA_ONLY_PTS)
        out["over_lora_only_p_hier"] = _target(by["lora_only"]["audio_p_hier"], "<", SUCCESS_P)
    types = me.get("per_qtype") or {}
    if "audio.order" in types:
        out["order_acc"] = _target(types["audio.order"]["mean"], ">=", SUCCESS_ORDER_ACC)
    if types:
        margin = min(t["mean"] - t["floor"] for t in types.values())
        out["every_type_above_floor_pts"] = _target(margin, ">=", SUCCESS_ABOVE_FLOOR_PTS)
    return out


def _f(value, digits: int = 2) -> str:
    if value is None:
        return "—"
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"


def _p(value) -> str:
    return "—" if value is None else ("<0.0001" if value < 1e-4 else f"{value:.4f}")


def render_markdown(sweep, table: dict) -> str:
    """The sweep's results as Markdown: one row per cell, then failures and the success criteria."""
    worlds = f", worlds {list(sweep.worlds)}" if sweep.worlds else ""
    common = "".join(f" `--{key} {value}`" for key, value in sweep.common.items())
    unit = "run (world × seed)" if sweep.worlds else "seed"
    lines = [f"# Sweep `{sweep.name}` (training preset `{sweep.train_preset}`, seeds {list(sweep.seeds)}{worlds}, "
             f"default cell `{sweep.default}`)", "",
             *([f"Every cell with{common} (the preset's `common` and `--set`).", ""] if common else []),
             f"Accuracies in %, mean ± std over {unit}s, [95% hierarchical-bootstrap CI: {unit}s resampled, then "
             f"questions within each]. Δ columns compare with the default cell, each {unit} paired with the same "
             f"{unit} of the default and question by question: Δ with its hierarchical-bootstrap 95% CI; p hier. = "
             f"two-sided hierarchical-bootstrap p; McNemar = McNemar p, only when a single {unit} is paired "
             f"(— otherwise); Welch = Welch's t over the {unit} means. VL degradation: mean ± std over {unit}s "
             "[hierarchical 95% CI of base − with-audio VL accuracy].", "",
             *([f"In one line (Δ audio vs default, pts [95% CI], * CI excludes 0; VL degradation, pts): "
                f"{table['finding']}", ""] if "finding" in table else []),
             f"| cell | {'runs' if sweep.worlds else 'seeds'} | audio acc | Δ audio vs default (pts) [95% CI] "
             "| p hier. / McNemar / Welch "
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
    by_world = [r for r in table["rows"] if r.get("per_world")]
    if by_world:
        names = list(sweep.worlds)
        header = " | ".join(f"{w}: audio acc | {w}: VL degr." for w in names)
        lines += ["", "Per world (independent `safe-world build`s): audio accuracy and VL degradation, mean ± std "
                  "over that world's seeds.", "", f"| cell | {header} |", "|---" * (2 * len(names) + 1) + "|"]
        for r in by_world:
            parts = [f"{_f(w['audio_acc'])} ± {_f(w['audio_acc_std'])} | {_f(w['vl_degradation_pts'])} ± "
                     f"{_f(w['vl_degradation_std'])}" if (w := r["per_world"].get(name)) else "— | —"
                     for name in names]
            lines.append(f"| {r['cell']} | " + " | ".join(parts) + " |")
    typed = [r for r in table["rows"] if r.get("per_qtype")]
    if typed:
        types = sorted({t for r in typed for t in r["per_qtype"]})
        floors = typed[0]["per_qtype"]
        lines += ["", f"Audio accuracy per question type, % (mean ± std over {unit}s); floor: the base model without "
                  "audio (averaged over worlds when there are several).",
                  "", "| cell | " + " | ".join(types) + " |", "|---" * (len(types) + 1) + "|",
                  "| floor | " + " | ".join(_f(floors[t]["floor"], 1) if t in floors else "—" for t in types) + " |"]
        for r in typed:
            cells_text = [f"{_f(r['per_qtype'][t]['mean'], 1)} ± {_f(r['per_qtype'][t]['std'], 1)}"
                          if t in r["per_qtype"] else "—" for t in types]
            lines.append(f"| {r['cell']} | " + " | ".join(cells_text) + " |")
    if table["failed"] or table["missing"]:
        lines += ["", f"Failed cells: {table['failed'] or 'none'}; not finished: {table['missing'] or 'none'}."]
    if "criteria" in table:
        lines += ["", f"Success criteria (default cell `{sweep.default}`; gaps and leads are paired differences, "
                  "in points):", ""]
        for name, c in table["criteria"].items():
            value = _p(c["value"]) if name.endswith("_p_hier") else _f(c["value"])
            lines.append(f"- {name}: {value} (target {c['op']} {c['target']}): {'met' if c['met'] else 'NOT met'}")
    return "\n".join(lines) + "\n"
