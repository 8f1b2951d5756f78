"""Fixtures shared by every test folder: the micro embedded world and config overrides pointing at it."""

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def micro_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The micro embedded world (data, tiny base VL model and CLAP), built once per session in about a second."""
    from shared.config import load_config
    from shared.world.build import WorldConfig, build_world

    return build_world(load_config(WorldConfig, "world_micro"), world_dir=tmp_path_factory.mktemp("micro_world"))


@pytest.fixture(scope="session")
def micro_paths(micro_world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Config overrides that point a Stage A run at the micro world and a session feature cache."""
    return {"model.base_vl": str(micro_world / "models" / "vl"), "model.clap": str(micro_world / "models" / "clap"),
            **{f"data.{s}": str(micro_world / "data" / f"{s}.jsonl") for s in ("train", "val", "test")},
            "data.feature_cache": str(tmp_path_factory.mktemp("features"))}


@pytest.fixture(scope="session")
def converted_world(micro_world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The micro world in the official layouts (`safe-world export`), each format and split converted and checked
    (16 kHz, strict) by `safe-data`: {"official", "summary", "ids", "manifests", "converted"}, keyed (format, split)."""
    import json

    from shared.data.cli import main as data_main
    from shared.data.schema import read_manifest
    from shared.world.export import FORMATS, IDS, export_world
    from shared.world.spec import SPLITS

    root = tmp_path_factory.mktemp("converted_world")
    summary = export_world(micro_world, root / "official")
    manifests, converted = {}, {}
    for name in FORMATS:
        for split in SPLITS:
            manifest = root / "manifests" / f"{name}_{split}.jsonl"
            args = summary["formats"][name]["splits"][split]["convert_args"]
            assert data_main(["convert", *args, "--out", str(manifest)]) == 0, (name, split)
            assert data_main(["check", str(manifest), "--sample-rate", "16000", "--strict-sample-rate"]) == 0, (name, split)
            manifests[name, split], converted[name, split] = manifest, read_manifest(manifest)
    return {"official": root / "official", "summary": summary, "ids": json.loads((root / "official" / IDS).read_text()),
            "manifests": manifests, "converted": converted}


@pytest.fixture(scope="session")
def table_path(micro_paths: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micro-world Stage A run (stage_a_micro preset) and its test outcome table (actions 0, 4, 8), built once."""
    from stage_a.train import main as train_main
    from stage_b.outcomes import main as outcomes_main

    out = tmp_path_factory.mktemp("runs")
    args = [x for k, v in micro_paths.items() for x in (f"--{k}", v)]
    assert train_main(["--preset", "stage_a_micro", "--out_dir", str(out), *args]) == 0
    assert outcomes_main(["--checkpoint", str(out / "stage_a_micro"), "--preset", "stage_a_micro", "--ks", "4,8",
                          "--batch-size", "32", *args]) == 0
    return out / "stage_a_micro" / "outcomes_test.npz"


@pytest.fixture(scope="session")
def policy_dir(table_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PPO policy (alpha 0.1, 512 steps) trained on `table_path`, saved by stage_b-train's code."""
    from stage_b.train import PolicyConfig, train_policy

    out = tmp_path_factory.mktemp("policy") / "alpha0.1"
    train_policy(PolicyConfig(str(table_path), timesteps=512, n_envs=2, eval_every=512), out, tensorboard=False)
    return out


def _truncated_png(path: Path, side: int = 48) -> Path:
    """A PNG of random pixels cut to half its bytes: it opens and reports its size, its pixels do not decode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


@pytest.fixture
def truncated_png() -> Callable[..., Path]:
    """Write a truncated PNG (`path`, `side`): a header that promises pixels the file does not hold."""
    return _truncated_png
