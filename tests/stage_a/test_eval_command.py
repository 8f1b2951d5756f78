"""`stage_a-eval` on a micro-world run: predictions, metrics with CIs, the report, and the base alone."""

import json
from pathlib import Path

import pytest

from stage_a.eval_command import main as eval_main
from stage_a.train import main as train_main

FIELDS = {"id", "question", "answers", "family", "qtype", "k", "gate", "raw", "answer", "score",
          "base_raw", "base_answer", "base_score"}


def _args(paths: dict[str, str]) -> list[str]:
    return [x for k, v in paths.items() for x in (f"--{k}", v)]


@pytest.fixture(scope="module")
def run_dir(micro_paths: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert train_main(["--preset", "stage_a_micro", "--out_dir", str(out), *_args(micro_paths)]) == 0
    return out / "stage_a_micro"


def test_checkpoint_eval_writes_predictions_metrics_and_report(run_dir: Path, micro_paths: dict,
                                                               capsys: pytest.CaptureFixture) -> None:
    assert eval_main(["--checkpoint", str(run_dir), "--preset", "stage_a_micro", *_args(micro_paths),
                      "--gate", "0.5", "--k", "4", "--report", "--ks", "4,8"]) == 0
    out = run_dir / "eval"
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert records and all(set(r) == FIELDS and r["k"] == 4 and r["gate"] == 0.5 for r in records)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["n"] == len(records) and len(metrics["overall"]["ci95"]) == 2
    assert set(metrics["per_family"]) == {"audio", "audio_visual", "visual"}
    assert all("ci95" in v for v in metrics["per_qtype"].values())
    assert set(metrics["vs_base"]["overall"]) == {"paired", "mcnemar"}
    assert (out / "report.md").is_file() and (out / "accuracy_vs_k.png").is_file()
    assert "p (McNemar)" in capsys.readouterr().out


def test_base_model_alone_is_a_valid_subject(micro_paths: dict, tmp_path: Path) -> None:
    assert eval_main(["--preset", "stage_a_micro", *_args(micro_paths), "--out", str(tmp_path)]) == 0
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert all(r["score"] == r["base_score"] and r["raw"] == r["base_raw"] for r in records)
    assert json.loads((tmp_path / "metrics.json").read_text())["subject"] == "base model (no audio)"


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no adapter.safetensors there"):
        eval_main(["--checkpoint", str(tmp_path), "--preset", "stage_a_micro"])
