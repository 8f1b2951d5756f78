"""Occlusion and faithfulness on planted ground truth: one window carries everything, so a faithful ranking
deletes accuracy at once and a reversed one does not; and occlusion of a real micro-world SAFE model."""

import numpy as np
import pytest
import torch

from shared.config import load_config
from shared.dataset_metrics import DatasetScorer
from stage_a.attribution import (Windows, compare, deletion_masks, faithfulness, insertion_masks, mixed_frames,
                                 occlusion, ranking, spearman)
from stage_a.config import TrainConfig
from stage_a.explanations import ExplainSettings, Explainer, clip_seconds
from stage_a.setup import build_setup


def test_windows_partition_the_frames() -> None:
    windows = Windows.of(13, 4)  # 4 frames per window: [0, 4), [4, 8), [8, 12), [12, 13)
    assert (windows.size, windows.count) == (4, 4)
    assert [windows.bounds(j) for j in range(4)] == [(0, 4), (4, 8), (8, 12), (12, 13)]
    assert windows.per_window(np.arange(13.0)).tolist() == [6.0, 22.0, 38.0, 12.0]
    keep = windows.frame_keep(np.array([[True, False, True, False]]))
    assert keep.tolist() == [[True] * 4 + [False] * 4 + [True] * 4 + [False]]
    assert Windows.of(5, 16).count == 5  # never an empty window


@pytest.mark.parametrize("frames, count, carrier", [(16, 16, 5), (13, 4, 3), (13, 4, 1)])
def test_occlusion_finds_the_one_window_that_carries_everything(frames: int, count: int, carrier: int) -> None:
    torch.manual_seed(0)
    windows = Windows.of(frames, count)
    clip, baseline = torch.randn(1, frames, 6), torch.randn(1, frames, 6)
    a, b = windows.bounds(carrier)

    def planted(x: torch.Tensor) -> torch.Tensor:  # only the carrier window's frames matter
        assert x.shape[1] == frames  # the padding to whole windows never reaches the model
        return (x[:, a:b] - baseline[:, a:b]).pow(2).sum((1, 2))

    scores = occlusion(planted, clip, baseline, windows)
    assert scores.shape == (windows.count,)
    assert scores[carrier] == pytest.approx(float(planted(clip)), rel=1e-5)
    assert np.abs(np.delete(scores, carrier)).max() < 1e-6
    assert ranking(scores)[0] == carrier


def test_deletion_and_insertion_masks() -> None:
    order = np.array([2, 0, 1])
    assert deletion_masks(order).tolist() == [[True, True, True], [True, True, False], [False, True, False],
                                              [False, False, False]]
    assert insertion_masks(order).tolist() == [[False, False, False], [False, False, True], [True, False, True],
                                               [True, True, True]]
    frames, baseline = torch.ones(1, 5, 2), torch.zeros(1, 5, 2)
    mixed = mixed_frames(frames, baseline, deletion_masks(order), Windows.of(5, 3))  # windows [0,2) [2,4) [4,5)
    assert mixed[1, :, 0].tolist() == [1, 1, 1, 1, 0] and mixed[3].abs().sum() == 0


def _planted_questions(n: int = 24, windows: int = 8) -> list[dict]:
    """Questions whose answer is right exactly while their one important window is kept; `truth` ranks it first,
    `reversed` last, each with the other windows in a seeded random order."""
    rng = np.random.default_rng(0)
    out = []
    for q in range(n):
        important = int(rng.integers(windows))
        truth = rng.random(windows)
        truth[important] = 2.0

        def scorer(keep: np.ndarray, important: int = important) -> np.ndarray:
            return keep[:, important].astype(float)

        out.append(faithfulness(scorer, {"truth": truth, "reversed": -truth}, n_random=4, seed=q))
    return out


def test_faithfulness_separates_a_true_ranking_from_random_and_reversed() -> None:
    per_question = _planted_questions()
    windows = 8
    for q in per_question:
        assert q["truth"]["deletion"]["curve"] == [1.0] + [0.0] * windows  # accuracy drops at the first step
        assert q["reversed"]["deletion"]["curve"] == [1.0] * windows + [0.0]
        assert q["truth"]["insertion"]["curve"] == [0.0] + [1.0] * windows
    truth = compare(per_question, "truth", "deletion")
    assert truth["ranked"]["mean"] == pytest.approx(1 / (windows + 1))
    assert truth["diff"]["mean_diff"] < 0 and truth["excludes_0"] and truth["diff"]["ci95"][1] < 0
    backwards = compare(per_question, "reversed", "deletion")
    assert backwards["diff"]["mean_diff"] > 0 and backwards["excludes_0"]
    inserted = compare(per_question, "truth", "insertion")
    assert inserted["diff"]["mean_diff"] > 0 and inserted["excludes_0"]


def test_random_orders_are_seeded_and_every_mask_is_scored_once() -> None:
    calls = []

    def scorer(keep: np.ndarray) -> np.ndarray:
        calls.append(len(keep))
        assert len(np.unique(keep, axis=0)) == len(keep)
        return keep[:, 0].astype(float)  # depends on where window 0 falls in each order

    first = faithfulness(scorer, {"a": np.arange(6.0)}, n_random=3, seed=7)
    assert len(calls) == 1
    assert first == faithfulness(scorer, {"a": np.arange(6.0)}, n_random=3, seed=7)
    assert first["random"] != faithfulness(scorer, {"a": np.arange(6.0)}, n_random=3, seed=8)["random"]


def test_spearman_is_undefined_for_a_constant_attribution() -> None:
    assert spearman(np.ones(4), np.arange(4.0)) is None
    assert spearman(np.arange(4.0), np.arange(4.0) ** 2) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def explainer(micro_paths: dict[str, str]) -> Explainer:
    setup = build_setup(load_config(TrainConfig, "stage_a_micro", micro_paths), splits=("test",))
    torch.manual_seed(3)
    with torch.no_grad():
        for block in setup.model.fusion.blocks.values():
            block.out.weight.normal_(0, 0.5)
    return Explainer(setup, setup.test, ExplainSettings(k=8, windows=4, n_random=2), 16000)


def test_occlusion_of_a_real_model_against_the_silent_clip(explainer: Explainer) -> None:
    split = explainer.split
    i = next(j for j, s in enumerate(split.samples) if s.family == "audio")
    batch = explainer.collator.prompt_batch(split, [i])
    valid = int(batch.frame_mask[0].sum())
    frames = batch.frames[:, :valid]
    silent = explainer.silent(clip_seconds(split, i))
    assert silent.shape == frames.shape[1:] and not torch.equal(silent, frames[0])
    readout = explainer.readouts([i])[i]
    windows = Windows.of(valid, 4)
    target = explainer._target(batch.inputs, readout["token"])
    scores = occlusion(target, frames, silent[None], windows)
    assert scores.shape == (windows.count,) and np.isfinite(scores).all() and np.abs(scores).max() > 0
    assert np.abs(occlusion(target, frames, frames.clone(), windows)).max() == 0  # baseline = clip: no drop
    record = explainer.attribute(i, readout, DatasetScorer([split.samples[i]]))
    assert record["occlusion"] == pytest.approx(scores.tolist())
    assert len(record["windows_s"]) == windows.count and record["windows_s"][-1][1] == pytest.approx(
        clip_seconds(split, i))
    assert set(record["faithfulness"]) == {"occlusion", "attention", "random"}
