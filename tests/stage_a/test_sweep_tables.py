"""Sweep tables from stored cell outputs: hierarchical CIs over seeds, seed-paired tests, McNemar for one seed only."""

import json
from pathlib import Path

import numpy as np
import pytest

from shared.stats import mean_ci, paired_diff_ci
from stage_a.sweep import SweepConfig, cells_of
from stage_a.sweep_tables import merge_cells, render_markdown

N_AUDIO, N_VL = 2500, 200


def _write_cell(run_dir: Path, audio_acc: float, rng: np.random.Generator, drop_question: bool = False) -> None:
    """A finished cell as stage_a-train leaves it: summary.json and predictions.jsonl (right/wrong scores)."""
    audio = (rng.random(N_AUDIO) < audio_acc).astype(float)
    vl = (rng.random(N_VL) < 0.99).astype(float)
    records = [{"id": f"q{i:04d}", "family": "audio", "score": s, "base_score": 0.0} for i, s in enumerate(audio)]
    records += [{"id": f"v{i:04d}", "family": "visual", "score": s, "base_score": 1.0} for i, s in enumerate(vl)]
    if drop_question:
        records = records[1:]
    summary = {"audio_acc": {"mean": float(audio.mean())}, "vl_degradation_pts": 100 * (1 - float(vl.mean())),
               "audio_acc_base": 0.0, "vl_acc_with_audio": float(vl.mean()), "gate0_max_abs_logit_diff": 0.0,
               "trainable_params": 10, "train_seconds": 1.0}
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _sweep(tmp_path: Path, accuracy: dict[str, list[float]], **bad) -> tuple[SweepConfig, dict]:
    """Cells with the given per-seed audio accuracies, merged into a table."""
    seeds = tuple(range(len(next(iter(accuracy.values())))))
    sweep = SweepConfig(name="synthetic", seeds=seeds, cells={label: {} for label in accuracy}, default="ref")
    rng = np.random.default_rng(0)
    for cell in cells_of(sweep):
        drop = bad.get("drop") == cell.name
        _write_cell(tmp_path / cell.name, accuracy[cell.label][cell.seed], rng, drop_question=drop)
    return sweep, merge_cells(sweep, cells_of(sweep), tmp_path)


def _audio_scores(cell_dir: Path) -> np.ndarray:
    records = map(json.loads, (cell_dir / "predictions.jsonl").open())
    return np.array([r["score"] for r in records if r["family"] == "audio"])


def test_seed_spread_widens_the_cell_ci_and_keeps_a_mixed_difference_insignificant(tmp_path: Path) -> None:
    # "wobbly" beats "ref" by 12 points on seed 0, loses 2 on seed 1 and ties on seed 2: the pooled
    # (seed, question) pairs call the +3.3 points significant, the seeds do not.
    sweep, table = _sweep(tmp_path, {"ref": [0.5, 0.5, 0.5], "wobbly": [0.62, 0.48, 0.50]})
    ref, wobbly = table["rows"]
    mine = np.concatenate([_audio_scores(tmp_path / f"wobbly-seed{s}") for s in range(3)])
    theirs = np.concatenate([_audio_scores(tmp_path / f"ref-seed{s}") for s in range(3)])
    pooled_ci, pooled_diff = mean_ci(mine)["ci95"], paired_diff_ci(mine, theirs)
    assert wobbly["audio_ci_hi"] - wobbly["audio_ci_lo"] > 2.5 * 100 * (pooled_ci[1] - pooled_ci[0])
    assert pooled_diff["p_value"] < 0.01
    assert wobbly["audio_vs_default_pts"] == pytest.approx(100 * pooled_diff["mean_diff"])
    assert wobbly["paired_seeds"] == 3 and wobbly["audio_p_mcnemar"] is None
    assert wobbly["audio_vs_default_ci_lo"] < 0 < wobbly["audio_vs_default_ci_hi"]
    assert wobbly["audio_p_hier"] > 0.1
    assert (ref["audio_vs_default_pts"], ref["audio_p_hier"]) == (0.0, 1.0)
    text = render_markdown(sweep, table)
    assert "p hier. / McNemar / Welch" in text and "| wobbly | 3 |" in text


def test_a_single_seed_comparison_reports_mcnemar(tmp_path: Path) -> None:
    _, table = _sweep(tmp_path, {"ref": [0.4], "better": [0.6]})
    better = table["rows"][1]
    assert better["paired_seeds"] == 1 and better["audio_p_mcnemar"] < 0.001 and better["audio_p_hier"] < 0.01
    assert better["audio_p_welch"] is None


def test_a_seed_with_other_questions_than_the_default_is_an_error_naming_cell_and_seed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cell other \(audio\) seed 1: 1 questions not shared with the default "
                                         r"cell's seed 1 \(first 'q0000'\)"):
        _sweep(tmp_path, {"ref": [0.5, 0.5], "other": [0.5, 0.5]}, drop="ref-seed1")


def test_per_type_accuracy_is_averaged_over_seeds_beside_its_floor(tmp_path: Path) -> None:
    sweep, _ = _sweep(tmp_path, {"ref": [0.5, 0.5], "other": [0.6, 0.7]})
    for cell, orders in (("ref", (0.40, 0.60)), ("other", (0.70, 0.90))):
        for seed, order in enumerate(orders):
            path = tmp_path / f"{cell}-seed{seed}" / "summary.json"
            summary = json.loads(path.read_text())
            summary["per_qtype"] = {"audio.order": {"mean": order}, "visual.count": {"mean": 1.0}}
            summary["per_qtype_base"] = {"audio.order": {"mean": 0.1}, "visual.count": {"mean": 1.0}}
            path.write_text(json.dumps(summary))
    table = merge_cells(sweep, cells_of(sweep), tmp_path)
    ref, other = table["rows"]
    assert ref["per_qtype"] == {"audio.order": pytest.approx({"mean": 50.0, "std": 100 * np.std([.4, .6], ddof=1),
                                                              "floor": 10.0})}
    assert other["per_qtype"]["audio.order"]["mean"] == pytest.approx(80.0)
    text = render_markdown(sweep, table)
    assert "| floor | 10.0 |" in text and "| other | 80.0 ± 14.1 |" in text


def test_cells_without_per_type_figures_give_no_per_type_table(tmp_path: Path) -> None:
    sweep, table = _sweep(tmp_path, {"ref": [0.5, 0.5]})
    assert table["rows"][0]["per_qtype"] is None and "per question type" not in render_markdown(sweep, table)


def test_worlds_multiply_the_runs_pair_world_with_world_and_report_each_world(tmp_path: Path) -> None:
    sweep = SweepConfig(name="two_worlds", seeds=(0, 1), worlds=("world", "world_seed1"),
                        cells={"ref": {}, "other": {"lr": 0.1}}, default="ref")
    cells = cells_of(sweep)
    assert [c.name for c in cells[:4]] == ["ref-world-seed0", "ref-world-seed1", "ref-world_seed1-seed0",
                                           "ref-world_seed1-seed1"]
    assert ("world", "world_seed1") in cells[2].overrides and ("lr", "0.1") in cells[6].overrides
    accuracy = {("ref", "world"): 0.5, ("ref", "world_seed1"): 0.7, ("other", "world"): 0.6,
                ("other", "world_seed1"): 0.7}
    rng = np.random.default_rng(0)
    for cell in cells:
        _write_cell(tmp_path / cell.name, accuracy[cell.label, cell.world], rng)
    ref, other = merge_cells(sweep, cells, tmp_path)["rows"]
    assert other["seeds"] == 4 and other["paired_seeds"] == 4
    assert set(other["per_world"]) == {"world", "world_seed1"} and other["per_world"]["world"]["seeds"] == 2
    assert other["per_world"]["world"]["audio_acc"] == pytest.approx(60, abs=2)
    assert other["per_world"]["world_seed1"]["audio_acc"] == pytest.approx(70, abs=2)
    assert other["audio_vs_default_pts"] == pytest.approx(5, abs=1.5)  # +10 on one world, 0 on the other
    text = render_markdown(sweep, merge_cells(sweep, cells, tmp_path))
    assert "| world: audio acc | world: VL degr. | world_seed1: audio acc |" in text and "| other | 4 |" in text


def test_a_run_missing_a_question_names_its_world_and_seed(tmp_path: Path) -> None:
    sweep = SweepConfig(name="two_worlds", seeds=(0,), worlds=("world", "world_seed1"),
                        cells={"ref": {}, "other": {}}, default="ref")
    rng = np.random.default_rng(0)
    for cell in cells_of(sweep):
        _write_cell(tmp_path / cell.name, 0.5, rng, drop_question=cell.name == "ref-world_seed1-seed0")
    with pytest.raises(ValueError, match=r"cell other \(audio\) world world_seed1 seed 0: 1 questions not shared"):
        merge_cells(sweep, cells_of(sweep), tmp_path)


def test_success_criteria_judge_the_default_against_each_baseline_it_has(tmp_path: Path) -> None:
    sweep, _ = _sweep(tmp_path, {"ref": [0.85, 0.86, 0.84], "full_ft": [0.87, 0.85, 0.86],
                                 "lora_only": [0.70, 0.72, 0.71], "original_vl": [0.1, 0.1, 0.1]})
    sweep.criteria = True
    for seed in range(3):  # the default's order type: 0.55 on average, against a floor of 0
        path = tmp_path / f"ref-seed{seed}" / "summary.json"
        summary = json.loads(path.read_text())
        summary["per_qtype"] = {"audio.order": {"mean": 0.55}, "audio.kind": {"mean": 0.9}}
        summary["per_qtype_base"] = {"audio.order": {"mean": 0.0}, "audio.kind": {"mean": 0.8}}
        path.write_text(json.dumps(summary))
    table = merge_cells(sweep, cells_of(sweep), tmp_path)
    c = table["criteria"]
    assert c["audio_acc"]["met"] and c["seeds"]["met"] and c["audio_gain_pts"]["met"]
    assert c["vs_full_ft_pts"]["value"] == pytest.approx(-1.0, abs=1.0)
    assert c["over_lora_only_pts"]["met"] and c["over_lora_only_p_hier"]["met"]
    assert c["order_acc"] == {"value": pytest.approx(55.0), "op": ">=", "target": 60.0, "met": False}
    assert c["every_type_above_floor_pts"]["value"] == pytest.approx(10.0) and not c["every_type_above_floor_pts"]["met"]
    text = render_markdown(sweep, table)
    assert "- order_acc: 55.00 (target >= 60.0): NOT met" in text and "- over_lora_only_p_hier: " in text


def test_the_one_line_finding_gives_each_cell_its_paired_delta_and_marks_those_whose_ci_excludes_zero(tmp_path: Path) -> None:
    sweep, table = _sweep(tmp_path, {"ref": [0.5, 0.5, 0.5], "better": [0.6, 0.61, 0.6], "wobbly": [0.62, 0.48, 0.5]})
    rows = {r["cell"]: r for r in table["rows"]}
    line = table["finding"]
    assert line.startswith(f"`ref` (default) {rows['ref']['audio_acc']:.1f}")
    better, wobbly = rows["better"], rows["wobbly"]
    assert (f"`better` {better['audio_vs_default_pts']:+.1f}* [{better['audio_vs_default_ci_lo']:+.1f}, "
            f"{better['audio_vs_default_ci_hi']:+.1f}]") in line
    assert better["audio_vs_default_ci_lo"] > 0 and wobbly["audio_vs_default_ci_lo"] < 0 < wobbly["audio_vs_default_ci_hi"]
    assert f"`wobbly` {wobbly['audio_vs_default_pts']:+.1f} [" in line
    assert f"In one line (Δ audio vs default, pts [95% CI], * CI excludes 0; VL degradation, pts): {line}" \
        in render_markdown(sweep, table)


@pytest.mark.parametrize("name", ["summary.json", "predictions.jsonl"])
def test_a_cell_file_cut_off_mid_write_is_named(tmp_path: Path, name: str) -> None:
    sweep = SweepConfig(name="synthetic", seeds=(0,), cells={"ref": {}, "other": {}}, default="ref")
    rng = np.random.default_rng(0)
    for cell in cells_of(sweep):
        _write_cell(tmp_path / cell.name, 0.5, rng)
    damaged = tmp_path / cells_of(sweep)[1].name / name
    damaged.write_text(damaged.read_text()[:-30])
    with pytest.raises(ValueError, match=rf"^{damaged}: not a readable JSON (lines )?file \(truncated or corrupt: "):
        merge_cells(sweep, cells_of(sweep), tmp_path)
