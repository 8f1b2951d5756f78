"""Stage B's runner scores each question with its dataset's metric, and refuses caption datasets."""

import dataclasses
from pathlib import Path

import pytest

from shared.config import load_config
from shared.data.schema import read_manifest, write_manifest
from stage_a.checkpointing import bridge_folder
from stage_a.config import TrainConfig
from stage_a.train import main as train_main
from stage_b.runner import SafeRunner


@pytest.fixture(scope="module")
def checkpoint(micro_paths: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    args = [x for k, v in micro_paths.items() for x in (f"--{k}", v)]
    assert train_main(["--preset", "stage_a_micro", "--out_dir", str(out), "--steps", "1", *args]) == 0
    return bridge_folder(out / "stage_a_micro")


def _runner(micro_paths: dict[str, str], checkpoint: Path, manifest: Path) -> SafeRunner:
    cfg = load_config(TrainConfig, "stage_a_micro", {**micro_paths, "data.test": str(manifest)})
    return SafeRunner(cfg, checkpoint, "test")


def test_scores_follow_the_dataset(micro_paths: dict[str, str], checkpoint: Path, tmp_path: Path) -> None:
    samples = read_manifest(micro_paths["data.test"])[:3]
    mixed = [dataclasses.replace(samples[0], source="gqa", answers=("yes",)),
             dataclasses.replace(samples[1], source="clotho_aqa", answers=("yes", "yes", "no")),
             samples[2]]
    runner = _runner(micro_paths, checkpoint, write_manifest(mixed, tmp_path / "mixed.jsonl"))
    rows = [runner.row_of[s.id] for s in mixed]
    world_answer = samples[2].answers[0]
    # GQA exact match 1 (VQA accuracy would say 0), Clotho-AQA 2 of 3 annotators, the world's VQA accuracy.
    assert runner.scores(rows, ["Yes.", "yes", world_answer]) == pytest.approx([1.0, 2 / 3, 1.0])


def test_caption_datasets_are_refused(micro_paths: dict[str, str], checkpoint: Path, tmp_path: Path) -> None:
    samples = read_manifest(micro_paths["data.test"])[:2]
    caption = dataclasses.replace(samples[0], source="audiocaps", family="caption", qtype="caption",
                                  answers=("a high tone", "one tone"))
    manifest = write_manifest([caption, samples[1]], tmp_path / "captions.jsonl")
    with pytest.raises(ValueError, match=rf"dataset 'audiocaps', sample '{caption.id}' is scored with CIDEr-D"):
        _runner(micro_paths, checkpoint, manifest)
