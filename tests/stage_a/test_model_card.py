"""The model card a micro-world training run writes into its best bridge folder states the summary's figures."""

import json
import re
from pathlib import Path

import pytest

from stage_a.model_card import write_model_card
from stage_a.train import main as train_main


def _number(card: str, label: str) -> float:
    """The first number after `label` on its line in the card."""
    match = re.search(re.escape(label) + r"[^\n]*?(-?\d[\d.eE+-]*)", card)
    assert match, f"{label!r} not in the card"
    return float(match.group(1))


@pytest.fixture(scope="module")
def run_dir(micro_paths: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    args = [x for k, v in micro_paths.items() for x in (f"--{k}", v)]
    assert train_main(["--preset", "stage_a_micro", "--out_dir", str(out), *args]) == 0
    return out / "stage_a_micro"


def test_card_states_the_summary_figures(run_dir: Path) -> None:
    card = (run_dir / "best" / "README.md").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    record = json.loads((run_dir / "best" / "safe_config.json").read_text())["record"]
    audio = summary["audio_acc"]
    assert _number(card, "audio + AV accuracy:") == audio["mean"]
    assert f"95% CI [{json.dumps(audio['ci95'][0])}, {json.dumps(audio['ci95'][1])}], n={audio['n']}" in card
    assert _number(card, "VL degradation (points):") == summary["vl_degradation_pts"]
    assert _number(card, "gate-0 max |logit diff| vs the base:") == summary["gate0_max_abs_logit_diff"]
    assert summary["per_dataset"]
    for source, entry in summary["per_dataset"].items():
        assert _number(card, f"| {source} | {entry['metric']} |") == entry["value"]["mean"]
    assert f"retention variant: {summary['retention_variant']}" in card
    assert f"- base: `{record['base']['id']}`, weights fingerprint {record['base']['weights_fingerprint'][:12]}" in card
    assert f"k_max: {record['bridge']['k_max']}, fusion mode: {record['bridge']['fusion_mode']}" in card
    for source, n in summary["inputs"]["train"]["sources"].items():
        assert f"{source} {n}" in card
    assert "SafePipeline.from_pretrained" in card and "safe-answer --bridge" in card


def test_missing_summary_is_named(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "best").mkdir()
    (tmp_path / "config.json").write_text((run_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="summary.json: missing"):
        write_model_card(tmp_path)
