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
