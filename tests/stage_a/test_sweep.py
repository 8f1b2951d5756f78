"""`stage_a-sweep` on the micro world: parallel cells, one cell per task index, merge, failing cells reported."""

import json
from pathlib import Path

import pytest
import yaml

from stage_a.sweep import main


@pytest.fixture
def preset(micro_paths: dict[str, str], tmp_path: Path) -> Path:
    path = tmp_path / "sweep_micro.yaml"
    path.write_text(yaml.safe_dump({
        "name": "micro", "train_preset": "stage_a_micro", "seeds": [0, 1],
        "common": {**micro_paths, "steps": 2, "eval_every": 2, "data.test_size": 24},
        "default": "full", "cells": {"full": {"retention": "full"}, "none": {"retention": "none"}},
    }))
    return path


def test_task_indices_run_one_cell_each_and_merge_recovers_the_table(preset: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    assert main(["--preset", str(preset), "--out", str(out), "--task-index", "2", "--num-tasks", "4"]) == 0
    assert sorted(p.name for p in (out / "cells").iterdir()) == ["none-seed0"]
    for index in (0, 1, 3):
        assert main(["--preset", str(preset), "--out", str(out), "--task-index", str(index), "--num-tasks", "4"]) == 0
    assert main(["--preset", str(preset), "--out", str(out), "--merge"]) == 0
    table = json.loads((out / "results.json").read_text())
    assert [r["cell"] for r in table["rows"]] == ["full", "none"] and all(r["seeds"] == 2 for r in table["rows"])
    full = table["rows"][0]
    assert full["audio_vs_default_pts"] == 0.0 and full["audio_p_hier"] == 1.0 and full["paired_seeds"] == 2
    assert full["audio_p_mcnemar"] is None  # McNemar only for single-seed comparisons
    assert (out / "results.csv").read_text().startswith("cell,seeds,audio_acc")
    assert "| none | 2 |" in (out / "results.md").read_text()
    # The overrides common to every cell, from the preset and --set, are named in both outputs.
    assert main(["--preset", str(preset), "--out", str(out), "--merge", "--set", "model.audio_encoder", "both"]) == 0
    assert json.loads((out / "results.json").read_text())["common"]["model.audio_encoder"] == "both"
    assert "`--model.audio_encoder both`" in (out / "results.md").read_text().split("\n\n")[1]


def test_a_failing_cell_is_reported_and_does_not_stop_the_others(preset: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(preset.read_text())
    data["seeds"] = [0]
    data["cells"]["broken"] = {"data.test": str(tmp_path / "gone.jsonl")}  # a valid config whose run fails
    preset.write_text(yaml.safe_dump(data))
    out = tmp_path / "sweep"
    assert main(["--preset", str(preset), "--out", str(out), "--jobs", "2"]) == 1
    assert "gone.jsonl does not exist" in (out / "cells" / "broken-seed0" / "FAILED.txt").read_text()
    table = json.loads((out / "results.json").read_text())
    assert table["failed"] == ["broken-seed0"] and [r["cell"] for r in table["rows"]] == ["full", "none"]


def test_short_preset_names_and_unknown_presets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # `default` resolves to configs/sweep_default.yaml, which finds no finished cells here
    assert main(["--preset", "default", "--out", str(tmp_path), "--merge"]) == 2
    assert "stage_a-sweep: no finished cells" in capsys.readouterr().err
    assert main(["--preset", "no_such_sweep", "--out", str(tmp_path), "--merge"]) == 2


def test_a_cell_with_a_bad_config_stops_the_sweep_before_any_cell_runs(preset: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sweep"
    assert main(["--preset", str(preset), "--out", str(out), "--set", "lr", "nan"]) == 2
    assert "sweep cell full-seed0: config section 'TrainConfig': lr is nan" in capsys.readouterr().err
    data = yaml.safe_load(preset.read_text())
    data["cells"]["broken"] = {"mix.audio_fraction": 7}
    preset.write_text(yaml.safe_dump(data))
    assert main(["--preset", str(preset), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sweep cell broken-seed0: " in err and "mixing audio_fraction is 7.0" in err
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--jobs", "0"], "--jobs is 0; expected an integer >= 1"),
    (["--threads", "-1"], "--threads is -1; expected an integer >= 0"),
    (["--num-tasks", "0"], "--num-tasks is 0; expected an integer >= 1"),
    (["--task-index", "4", "--num-tasks", "4"], "--task-index is 4; expected None or an integer >= 0 and < 4"),
])
def test_bad_numbers_exit_2(preset: Path, tmp_path: Path, flags: list[str], message: str,
                            capsys: pytest.CaptureFixture) -> None:
    assert main(["--preset", str(preset), "--out", str(tmp_path / "sweep"), *flags]) == 2
    assert capsys.readouterr().err == f"stage_a-sweep: {message}\n"
    assert not (tmp_path / "sweep").exists()
