"""Training-side audio augmentation (stage_a.augment) on the micro world: cached copies, train split only, seeded."""

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch

from shared.config import load_config
from stage_a.augment import CLEAN_COPY, augmented_split, choose_copies, draw_corruptions
from stage_a.config import AugmentConfig, TrainConfig
from stage_a.data import AUDIO_FAMILIES
from stage_a.train import StageATrainer, main

ON = {"augment.copies": 2, "augment.probability": 0.5, "augment.mask_fraction": 0.2}


def _config(paths: dict[str, str], out: Path, **overrides) -> TrainConfig:
    values = {"out_dir": str(out), **paths, **overrides}
    return load_config(TrainConfig, "stage_a_micro", {k: str(v) for k, v in values.items()})


@pytest.fixture(scope="module")
def trainers(micro_paths: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, StageATrainer]:
    out = tmp_path_factory.mktemp("augment_runs")
    return {"off": StageATrainer(_config(micro_paths, out, name="off")),
            "on": StageATrainer(_config(micro_paths, out, name="on", **ON))}


@pytest.mark.parametrize("key, value, field", [
    ("copies", -1, "augment.copies"), ("copies", 1.5, "augment.copies"), ("probability", 1.5, "augment.probability"),
    ("mask_fraction", -0.1, "augment.mask_fraction"), ("seed", -2, "augment.seed"), ("noise", ("hum",), "augment.noise"),
    ("noise", (), "augment.noise"), ("snr_db", (20.0, -5.0), "augment.snr_db"), ("snr_db", (0.0,), "augment.snr_db"), ("snr_db", (0.2, 0.8), "augment.snr_db"),
])
def test_bad_values_are_named(key: str, value, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        AugmentConfig(**{key: value})


def test_off_by_default_gives_the_batches_of_before(trainers: dict) -> None:
    trainer = trainers["off"]
    assert trainer.cfg.augment.copies == 0 and trainer.setup.train.augmented == []
    for step in range(3):
        batch, rows, _, _ = trainer._batch(step)
        before = trainer.setup.collator.train_batch(trainer.setup.train, rows, [trainer.targets[i] for i in rows])
        assert torch.equal(batch.frames, before.frames) and torch.equal(batch.frame_mask, before.frame_mask)
        assert all(torch.equal(batch.inputs[k], before.inputs[k]) for k in before.inputs)


def test_on_some_audio_rows_use_a_cached_copy(trainers: dict) -> None:
    trainer = trainers["on"]
    train = trainer.setup.train
    assert len(train.augmented) == 2
    augmented = clean = 0
    for step in range(6):
        batch, rows, _, _ = trainer._batch(step)
        copies = choose_copies(train, rows, trainer.cfg.augment, trainer.cfg.seed, step)
        for r, (i, c) in enumerate(zip(rows, copies)):
            j = train.feature_index[i]
            used = batch.frames[r][batch.frame_mask[r]]
            if c == CLEAN_COPY:
                assert torch.equal(used, train.features[j])
                clean += train.samples[i].family in AUDIO_FAMILIES
                continue
            assert train.samples[i].family in AUDIO_FAMILIES  # VL rows are never augmented
            assert torch.equal(used, train.augmented[c][j]) and not torch.equal(used, train.features[j])
            augmented += 1
    assert augmented > 0 and clean > 0  # probability 0.5: both kinds of audio rows occur


def test_copies_differ_and_are_drawn_per_clip_and_copy(trainers: dict) -> None:
    train = trainers["on"].setup.train
    j = train.feature_index[train.indices(audio=True)[0]]
    assert not torch.equal(train.augmented[0][j], train.augmented[1][j])
    cfg = trainers["on"].cfg.augment
    draws = {(c, key): draw_corruptions(cfg, key, c)[0] for c in range(2) for key in ("a@0:end", "b@0:end", "c@0:end")}
    assert all(-5 <= d[0].snr_db <= 20 and 0 < d[1].fraction <= 0.2 for d in draws.values())
    assert len({d[0].name for d in draws.values()}) > 1
    assert draw_corruptions(cfg, "a@0:end", 1)[0] == draws[(1, "a@0:end")]
    assert draw_corruptions(cfg, "a@0:end", 0)[1] != draw_corruptions(cfg, "a@0:end", 1)[1]


def test_validation_and_test_are_never_augmented(trainers: dict) -> None:
    setup = trainers["on"].setup
    assert setup.val.augmented == [] and setup.test.augmented == []
    assert trainers["on"].evaluator.split is setup.val and trainers["on"].evaluator.split.augmented == []


def test_copies_are_cached_and_reused(trainers: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    setup, cfg = trainers["on"].setup, AugmentConfig(copies=1, mask_fraction=0.1)
    clean, rate = dataclasses.replace(setup.train, augmented=[]), trainers["on"].cfg.data.sample_rate
    with caplog.at_level(logging.INFO, logger="stage_a.augment"):
        first = augmented_split(clean, cfg, setup.encoder, str(tmp_path), rate)
        assert "hits, 0 encoded" not in caplog.text
        caplog.clear()
        second = augmented_split(clean, cfg, setup.encoder, str(tmp_path), rate)
    assert " 0 hits" not in caplog.text and "hits, 0 encoded" in caplog.text
    used = [j for j, f in enumerate(first.augmented[0]) if f is not None]
    assert used and all(torch.equal(first.augmented[0][j], second.augmented[0][j]) for j in used)
    assert all(f is None for j, f in enumerate(first.augmented[0]) if j not in used)
    assert len({j for j in used}) == len({clean.feature_index[i] for i in clean.indices(audio=True)})


def test_short_run_with_augment_completes(micro_paths: dict[str, str], tmp_path: Path) -> None:
    args = ["--preset", "stage_a_micro", "--out_dir", str(tmp_path), "--name", "aug", "--steps", "4",
            *[x for k, v in {**micro_paths, **ON}.items() for x in (f"--{k}", str(v))]]
    assert main(args) == 0
    summary = json.loads((tmp_path / "aug" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["augment"]["copies"] == 2 and summary["augment"]["probability"] == 0.5
