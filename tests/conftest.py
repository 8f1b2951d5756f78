"""Fixtures shared by every test folder: the micro embedded world and config overrides pointing at it."""

from pathlib import Path

import pytest


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
