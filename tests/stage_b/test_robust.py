"""stage_b-robust on the micro world: corrupted outcome tables and the CLI end to end."""

import json
from pathlib import Path

import numpy as np
import pytest

from envs.outcome_table import OutcomeTable
from shared.corruptions import parse_corruption
from stage_a.robust_conditions import corrupted_split, mismatched_split
from stage_b.evaluate import SavedPolicy, evaluate_policy
from stage_b.robust import main as robust_main
from stage_b.robust_tables import CorruptedTables, preview_slice, table_runner


@pytest.fixture(scope="module")
def maker(table_path: Path, tmp_path_factory: pytest.TempPathFactory) -> CorruptedTables:
    """Corrupted tables of the micro outcome table, cached in a fresh folder."""
    table = OutcomeTable.load(table_path)
    runner, cache_root = table_runner(table, Path("."))
    return CorruptedTables(table, runner, cache_root, tmp_path_factory.mktemp("robust_tables"), batch_size=16)


@pytest.fixture(scope="module")
def rows(policy_dir: Path) -> np.ndarray:
    return np.asarray(SavedPolicy.load(policy_dir).record["test_rows"], dtype=np.int64)


def test_clean_reproduces_the_table_exactly(maker: CorruptedTables, rows: np.ndarray) -> None:
    clean = maker.build("clean", rows)
    original = maker.table.subset(rows)
    np.testing.assert_array_equal(clean.score, original.score)
    np.testing.assert_array_equal(clean.features, original.features)


@pytest.mark.parametrize("name", ["noise-white-0dB", "mismatched"])
def test_no_audio_and_costs_are_kept_previews_recomputed(maker: CorruptedTables, rows: np.ndarray, name: str) -> None:
    table = maker.build(name, rows)
    original = maker.table.subset(rows)
    np.testing.assert_array_equal(table.score[:, 0], original.score[:, 0])
    for key in ("gflops", "latency_ms", "latency_repeats_ms", "confidence", "ids"):
        np.testing.assert_array_equal(getattr(table, key), getattr(original, key))
    preview = preview_slice(table)
    np.testing.assert_array_equal(table.features[:, :preview.start], original.features[:, :preview.start])
    rms = preview.start + 1
    assert (table.features[:, rms] != original.features[:, rms]).mean() > 0.5
    np.testing.assert_allclose(table.features[:, preview.start], original.features[:, preview.start])  # duration


def test_audio_scores_are_those_of_the_corrupted_features(maker: CorruptedTables, rows: np.ndarray) -> None:
    """Every audio action's score is SAFE's on the corrupted split, computed here batch by batch on its own."""
    runner = maker.runner
    split_rows = maker.runner_rows(rows)
    name = "noise-pink--10dB"
    table = maker.build(name, rows)
    split = corrupted_split(runner.data, parse_corruption(name), split_rows, runner.encoder, maker.cache_root,
                            runner.sample_rate, 0)
    expected = maker.table.subset(rows).score.copy()
    for begin in range(0, len(split_rows), 16):
        chunk = split_rows[begin:begin + 16]
        batch = runner.collator.prompt_batch(split, chunk)
        for a, k in enumerate(table.actions):
            if k:
                expected[begin:begin + len(chunk), a] = runner.scores(chunk, runner.answer(batch, int(k))[0])
    np.testing.assert_array_equal(table.score, expected)
    assert (table.score[:, 1:] != maker.table.subset(rows).score[:, 1:]).any(), "the corruption changed no answer"


def test_mismatched_preview_is_the_swapped_clips(maker: CorruptedTables, rows: np.ndarray) -> None:
    table = maker.build("mismatched", rows)
    _, perm = mismatched_split(maker.runner.data, 0)
    clean = maker.table
    by_clip = {maker.runner.data.feature_index[r]: i for i, r in zip(rows, maker.runner_rows(rows))}
    preview = preview_slice(table)
    for j, r in enumerate(maker.runner_rows(rows)):
        swapped = perm[maker.runner.data.feature_index[r]]
        if swapped in by_clip:
            np.testing.assert_array_equal(table.features[j, preview], clean.features[by_clip[swapped], preview])


def test_cli_end_to_end(policy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "robust"
    args = ["--policy", str(policy_dir), "--corruptions", "clean,noise-white-0dB,mismatched", "--out", str(out),
            "--threads", "1", "--batch-size", "16"]
    assert robust_main(args) == 0
    report = json.loads((out / "robust.json").read_text())
    assert (out / "robust.md").read_text().startswith("# Stage B under corrupted audio")
    (entry,) = report["policies"]
    assert list(entry["conditions"]) == ["clean", "noise-white-0dB", "mismatched"]
    clean = entry["conditions"]["clean"]
    assert set(clean) == {"policy", "always-k8", "never", "oracle"}
    reference = evaluate_policy(policy_dir)
    assert clean["policy"]["accuracy"]["mean"] == pytest.approx(reference["accuracy"]["mean"])
    assert clean["policy"]["gflops_per_query"] == pytest.approx(reference["gflops_per_query"])
    assert clean["policy"]["drop_vs_clean"]["mean_diff"] == 0.0
    table = OutcomeTable.load(SavedPolicy.load(policy_dir).config.table)
    held_out = np.asarray(SavedPolicy.load(policy_dir).record["test_rows"])
    top = int(np.argmax(table.actions))
    no_gain = (table.score[held_out, top] <= table.score[held_out, 0]).mean()
    assert clean["always-k8"]["audio_no_gain"] == pytest.approx(no_gain)
    assert clean["never"]["audio_no_gain"] is None
    never = [c["never"]["accuracy"]["mean"] for c in entry["conditions"].values()]
    assert never == [never[0]] * 3
    assert clean["always-k8"]["audio_rate"] == 1.0 and clean["never"]["audio_rate"] == 0.0
    assert len(list((out / "tables").glob("*.npz"))) == 3
    capsys.readouterr()
    assert robust_main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    stamps = {p: p.stat().st_mtime_ns for p in (out / "tables").glob("*.npz")}
    assert robust_main([*args, "--overwrite"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "tables").glob("*.npz")} == stamps
    assert json.loads((out / "robust.json").read_text()) == report


def test_unknown_condition_is_named(policy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert robust_main(["--policy", str(policy_dir), "--corruptions", "clean,noise-brown-0dB",
                        "--out", str(tmp_path)]) == 2
    assert "noise-brown-0dB" in capsys.readouterr().err
