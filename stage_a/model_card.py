"""The model card (README.md) of a run's best bridge: what it was trained on, how it measured, how to load it.

Rendered from the run's config.json, summary.json and the bridge record (safe_config.json). Every figure is written
as it is stored in summary.json (JSON number form), so the card and the summary never disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.checkpoint import atomic_write_text
from shared.loading import load_json
from stage_a.model import CONFIG_FILE as BRIDGE_CONFIG_FILE
from stage_a.monitor import CONFIG_FILE as RUN_CONFIG_FILE
from stage_a.provenance import digest_key

CARD_FILE = "README.md"
SUMMARY_FILE = "summary.json"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a model card needs the run's config, summary and best bridge")
    return load_json(path, "a file of a stage_a-train run folder")


def _num(value: float | int | None) -> str:
    """A figure exactly as summary.json stores it."""
    return "not measured" if value is None else json.dumps(value)


def _ci(entry: dict | None) -> str:
    """A mean_ci entry as `mean (95% CI [lo, hi], n=N)`."""
    if entry is None:
        return "not measured"
    lo, hi = entry["ci95"]
    return f"{_num(entry['mean'])} (95% CI [{_num(lo)}, {_num(hi)}], n={entry['n']})"


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "none (no weight files on disk; cannot be verified)"


def _training_data(config: dict, summary: dict) -> list[str]:
    data = config["data"]
    lines = []
    for split in ("train", "val", "test"):
        manifest = data[split] or f"embedded world `{config['world']}` ({split} split)"
        counts = summary["inputs"][split]["sources"]
        per = ", ".join(f"{source} {n}" for source, n in counts.items())
        lines.append(f"- {split}: {manifest} — {per}")
    return lines


def _figures(summary: dict) -> list[str]:
    lines = [f"- audio + AV accuracy: {_ci(summary['audio_acc'])}",
             f"- audio + AV accuracy of the base alone: {_num(summary.get('audio_acc_base'))}"]
    if "vl_degradation_pts" in summary:
        lo, hi = summary["vl_delta_ci95_pts"]
        lines += [f"- VL degradation (points): {_num(summary['vl_degradation_pts'])} "
                  f"(VL delta 95% CI [{_num(lo)}, {_num(hi)}] points)",
                  f"- VL accuracy at gate 0: {_num(summary['vl_acc_gate0'])}",
                  f"- gate-0 max |logit diff| vs the base: {_num(summary['gate0_max_abs_logit_diff'])}"]
    else:
        lines.append("- VL figures: not measured (the test split has no VL rows)")
    lines += ["", "| dataset | metric | SAFE (95% CI) | base |", "|---|---|---|---|"]
    for source, entry in summary["per_dataset"].items():
        lines.append(f"| {source} | {entry['metric']} | {_ci(entry['value'])} | {_num(entry['base']['mean'])} |")
    return lines


def render_model_card(config: dict, summary: dict, record: dict, bridge_dir: Path) -> str:
    """The card's markdown text."""
    base, encoder, bridge = record["base"], record.get("encoder"), record["bridge"]
    base_digest = digest_key(base)
    encoder_line = (f"{json.dumps(encoder['identity'])}, weights sha256 {_short(encoder['weights_sha256'])}"
                    if encoder else "not recorded")
    lines = [f"# SAFE bridge `{config['name']}`", "",
             "Audio bridge for a frozen vision-language model, trained by `stage_a-train`.", "",
             "## Base and encoder", "",
             f"- base: `{base['id']}`, {base_digest.replace('_', ' ')} {_short(base.get(base_digest))}",
             f"- audio encoder: {encoder_line}",
             f"- SAFE version: {record.get('safe_version') or 'not installed as a package'}", "",
             "## Bridge", "",
             f"- k_max: {bridge['k_max']}, fusion mode: {bridge['fusion_mode']}, layers: {bridge['layers']}",
             f"- retention variant: {summary['retention_variant']}",
             f"- steps: {summary['steps']}, best step: {summary['best_step']}, seed: {config['seed']}", "",
             "## Training data (samples per dataset)", "", *_training_data(config, summary), "",
             f"## Measured on the test split (k = {summary['k_eval']})", "", *_figures(summary), "",
             "## How to load it", "", "```python", "from stage_a.pipeline import SafePipeline",
             f'pipe = SafePipeline.from_pretrained("{bridge_dir}")', "```", "",
             "```sh", f"safe-answer --bridge {bridge_dir} --image scene.png --audio clip.wav --question \"...\"",
             "```", ""]
    return "\n".join(lines)


def write_model_card(run_dir: str | Path) -> Path:
    """Render runs/<name>/best/README.md from the run's config, summary and best bridge; returns its path."""
    run_dir = Path(run_dir)
    best = run_dir / "best"
    config = _read_json(run_dir / RUN_CONFIG_FILE)
    summary = _read_json(run_dir / SUMMARY_FILE)
    record = _read_json(best / BRIDGE_CONFIG_FILE).get("record")
    if record is None:
        raise ValueError(f"{best / BRIDGE_CONFIG_FILE}: no 'record' key; expected a bridge written by write_bridge")
    return atomic_write_text(best / CARD_FILE, render_model_card(config, summary, record, best))
