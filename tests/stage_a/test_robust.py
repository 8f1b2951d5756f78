"""`stage_a-robust` on the micro world with a fresh bridge whose fusion weights are random and nonzero."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import stage_a.model
from shared.config import load_config
from shared.world.generate import read_scenes
from shared.world.questions import _audio_visual
from shared.world.scenes import Scene, SceneObject, SoundEvent
from stage_a.config import TrainConfig
from shared.corruptions import parse_corruption
from stage_a.evaluate import EvalSettings
from stage_a.exactness import fill_zero_init
from stage_a.robust import main as robust_main
from stage_a.robust_conditions import (corrupted_split, derangement, implied_answers, mismatched_split,
                                       missing_audio_pass, probe_rates)
from stage_a.setup import build_setup

PRESET = "stage_a_micro"


def _args(paths: dict[str, str]) -> list[str]:
    return [x for k, v in paths.items() for x in (f"--{k}", v)]


@pytest.fixture(scope="module")
def setup(micro_paths: dict[str, str]):
    """The micro world's base with a fresh bridge whose zero-initialised outputs hold seeded noise, so audio acts."""
    cfg = load_config(TrainConfig, PRESET, micro_paths)
    built = build_setup(cfg, splits=("test",))
    fill_zero_init(built.model, seed=0, std=3.0)
    return built


@pytest.fixture(scope="module")
def bridge(setup, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return setup.model.save_bridge(tmp_path_factory.mktemp("bridge") / "bridge")


@pytest.fixture(scope="module")
def settings() -> EvalSettings:
    return EvalSettings(k=8, batch_size=16)


def test_missing_audio_is_identical_to_the_base_and_a_leak_is_caught(setup, settings, monkeypatch) -> None:
    rows = list(range(len(setup.test)))
    run = missing_audio_pass(setup.model, setup.collator, setup.test, rows, settings, "cpu")
    assert set(run["missing"]) == set(run["base"]) == set(rows)
    assert all(run["missing"][i] == run["base"][i] for i in rows)
    assert run["present_differ"] > 0  # the rows with audio really ran the bridge: the check is not vacuous
    # Plant a leak: rows without valid frames count as active, so their (masked) audio reaches the LM.
    monkeypatch.setattr(stage_a.model, "active_samples", lambda gate, mask: gate > 0)
    leaked = missing_audio_pass(setup.model, setup.collator, setup.test, rows, settings, "cpu")
    assert sum(leaked["missing"][i] != leaked["base"][i] for i in rows) > 0


def test_missing_audio_needs_mixed_batches(setup, settings) -> None:
    with pytest.raises(ValueError, match="at least 2 rows"):
        missing_audio_pass(setup.model, setup.collator, setup.test, [0], settings, "cpu")


@pytest.mark.parametrize("n", [2, 3, 10, 101])
def test_derangement_has_no_fixed_point_and_stays_off_its_own_file(n: int) -> None:
    for seed in range(20):
        perm = derangement([f"file{i}" for i in range(n)], np.random.default_rng(seed))
        assert sorted(perm) == list(range(n)) and all(p != i for i, p in enumerate(perm))
    groups = [f"file{i // 2}" for i in range(2 * n)]  # two windows per file
    perm = derangement(groups, np.random.default_rng(0))
    assert all(groups[p] != groups[i] for i, p in enumerate(perm))
    with pytest.raises(ValueError, match="at least 2 files"):
        derangement(["same"] * n, np.random.default_rng(0))


def test_mismatched_split_gives_every_clip_another_clips_features(setup) -> None:
    split, perm = mismatched_split(setup.test, seed=0)
    assert all(split.features[j] is setup.test.features[perm[j]] and perm[j] != j for j in range(len(perm)))
    assert all(split.clips[j].path != split.clips[perm[j]].path for j in range(len(perm)))


def test_corrupted_features_are_cached_apart_and_reused(setup, micro_paths) -> None:
    split, cfg = setup.test, load_config(TrainConfig, PRESET, micro_paths)
    root = Path(cfg.data.feature_cache)
    clean_entries = {p: p.stat().st_mtime_ns for p in root.rglob("*.safetensors")}
    rows = split.indices(audio=True)[:6]
    corruption = parse_corruption("noise-babble-0dB")
    first = corrupted_split(split, corruption, rows, setup.encoder, str(root), cfg.data.sample_rate, seed=0)
    used = {split.feature_index[i] for i in rows}
    assert all((first.features[j] is None) == (j not in used) for j in range(len(split.clips)))
    assert all(not torch.equal(first.features[j], split.features[j]) for j in used)
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*.safetensors")}
    assert {p: after[p] for p in clean_entries} == clean_entries  # clean entries untouched
    assert len(after) == len(clean_entries) + len(used)  # the corrupted ones stored apart
    again = corrupted_split(split, corruption, rows, setup.encoder, str(root), cfg.data.sample_rate, seed=0)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.safetensors")} == after  # reused, not re-encoded
    assert all(torch.equal(first.features[j], again.features[j]) for j in used)
    other_seed = corrupted_split(split, corruption, rows, setup.encoder, str(root), cfg.data.sample_rate, seed=1)
    assert any(not torch.equal(first.features[j], other_seed.features[j]) for j in used)


CONDITIONS = "clean,noise,mask,missing,mismatched,shift"


def test_cli_writes_json_markdown_and_plot_and_resumes(bridge: Path, micro_paths: dict, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "robust"
    argv = ["--checkpoint", str(bridge), "--preset", PRESET, "--size", "60", "--out", str(out),
            "--variant-root", str(tmp_path / "variants"), *_args(micro_paths)]
    assert robust_main(argv) == 0
    text = capsys.readouterr().out
    report = json.loads((out / "robustness.json").read_text())
    assert (out / "robustness.md").read_text() in text and (out / "accuracy_vs_snr.png").stat().st_size > 0
    names = set(report["conditions"])
    assert {"clean", "noise-white-0dB", "noise-pink--10dB", "noise-babble-20dB", "mask-scattered-75", "missing",
            "mismatched"} <= names
    missing = report["conditions"]["missing"]["missing"]
    assert missing["identical_answers"] == missing["identical_scores"] == missing["n"] == report["settings"]["questions"]
    noisy = report["conditions"]["noise-white-0dB"]["summary"]
    assert "visual" not in noisy and {"audio", "audio_visual", "audio+av"} <= set(noisy)
    assert {"acc", "base", "vs_base", "vs_clean"} <= set(noisy["audio+av"])
    assert "visual" in report["conditions"]["mismatched"]["summary"]
    assert any("identical" in t["target"] for t in report["targets"])
    assert sum("0 dB" in t["target"] for t in report["targets"]) == 3
    shifts = {n for n in names if n.startswith("shift-")}
    if importlib.util.find_spec("shared.world.variants"):  # the world variants' branch is merged
        assert shifts and report["shift_skipped"] is None
        assert all({"audio", "visual"} <= set(report["conditions"][n]["summary"]) for n in shifts)
    else:
        assert not shifts and "not available" in report["shift_skipped"]
    # Resume: finished conditions are read back, a deleted one is computed again.
    folder = out / "conditions"
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    (folder / "mask-contiguous-50.json").unlink()
    assert robust_main(argv) == 0
    after = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert set(after) == set(stamps)
    assert all(after[n] == stamps[n] for n in stamps if n != "mask-contiguous-50.json")
    # Other settings are refused unless --overwrite, which starts over.
    changed = [*argv[:argv.index("--size") + 1], "1", *argv[argv.index("--size") + 2:]]
    changed[changed.index("--size") + 1] = "20"
    assert robust_main([*changed, "--conditions", "missing"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert robust_main([*changed, "--conditions", "missing", "--overwrite"]) == 0
    assert {p.name for p in folder.iterdir()} == {"base.json", "clean.json", "missing.json"}


def test_bad_arguments_are_named(bridge: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert robust_main(["--checkpoint", str(bridge), "--size", "-1", "--out", str(tmp_path / "o")]) == 2
    assert "--size is -1" in capsys.readouterr().err
    assert robust_main(["--checkpoint", str(bridge), "--conditions", "noise,blur", "--out", str(tmp_path / "o")]) == 2
    assert "--conditions" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_probe_implies_what_the_world_would_ask_of_this_image_with_the_swapped_sound(setup, micro_world) -> None:
    """The oracle: the world's own audio-visual questions on a scene with this image's objects and the swapped
    clip's events."""
    split = setup.test
    mismatched, perm = mismatched_split(split, seed=0)
    scenes = read_scenes(micro_world / "data", "test")
    rows = list(range(len(split)))
    implied = implied_answers(split, rows, perm, scenes)
    by_key = {s["key"]: s for s in scenes}
    by_audio = {str(Path(s["audio"]).resolve()): s for s in scenes}
    expected = {}
    for i in rows:
        sample = split.samples[i]
        if sample.family != "audio_visual":
            continue
        own = by_key[sample.meta["scene"]]
        swapped = by_audio[str(Path(split.clips[perm[split.feature_index[i]]].path).resolve())]
        hybrid = Scene("test", 0, tuple(SceneObject(**o) for o in own["objects"]),
                       tuple(SoundEvent(**e) for e in swapped["events"]), 0.0)
        asked = {q.qtype: q.answer for q in _audio_visual(hybrid)}
        if sample.qtype in asked and asked[sample.qtype] != sample.meta["answer"]:
            expected[i] = asked[sample.qtype]
    assert implied == expected and implied
    rates = probe_rates(split, implied, {i: implied[i] for i in implied})
    assert all(r["follows_wrong_audio"] == 1.0 and r["follows_truth"] == 0.0 for r in rates.values())


def test_a_bridge_refused_at_load_leaves_no_folder_to_block_the_retry(bridge: Path, micro_paths: dict, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "robust"
    argv = ["--checkpoint", str(bridge), "--preset", PRESET, "--size", "20", "--conditions", "missing",
            "--out", str(out), *_args(micro_paths)]
    assert robust_main([*argv, "--model.audio_encoder", "both"]) != 0  # trained on CLAP alone: refused at load
    capsys.readouterr()
    assert not (out / "settings.json").exists()
    assert robust_main(argv) == 0
    assert json.loads((out / "settings.json").read_text())["overrides"] == _args(micro_paths)
