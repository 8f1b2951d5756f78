"""`safe-world build / info / verify` on a micro world: build, reuse, partial rebuild, reload, errors."""

import json
import shutil
from pathlib import Path

import pytest

import dataclasses

from shared.config import load_config
from shared.world.build import WorldConfig, read_record
from shared.world.clap_train import ClapTrainConfig
from shared.world.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    world_dir = tmp_path_factory.mktemp("world")
    assert main(["build", "--preset", "world_micro", "--dir", str(world_dir)]) == 0
    return world_dir


def test_build_writes_data_models_and_record(world: Path) -> None:
    record = read_record(world)
    assert set(record["parts"]) == {"data", "vl", "clap", "whisper"}
    for part in ("vl", "clap", "whisper"):
        assert (world / "models" / part / "config.json").is_file()
        assert (world / "models" / part / "model.safetensors").is_file()
    assert not list(world.glob("*.tmp")) and not list((world / "models").glob(".*"))


def test_info_json_reports_families_and_model_quality(world: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["info", "--preset", "world_micro", "--dir", str(world), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["splits"]["test"]["families"]) == {"visual", "audio", "audio_visual"}
    assert info["splits"]["train"]["scenes"] == 24
    assert 0.0 <= info["base_vl"]["test_accuracy"] <= 1.0
    assert info["base_vl"]["params"] > 0 and info["audio_encoder"]["params"] > 0
    assert 0.0 <= info["audio_encoder"]["retrieval"]["top1"] <= 1.0
    assert info["answers"]["visual.count"]


def test_verify_reloads_base_model_with_identical_logits(world: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["verify", "--preset", "world_micro", "--dir", str(world)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["identical"] is True and result["max_abs_diff"] == 0.0


@pytest.mark.parametrize("command, name", [("info", "build.json"), ("verify", "models/vl/probe_logits.safetensors")])
def test_a_truncated_record_or_probe_exits_2_naming_it(world: Path, tmp_path: Path, command: str, name: str,
                                                       capsys: pytest.CaptureFixture) -> None:
    copy = shutil.copytree(world, tmp_path / "world")
    (copy / name).write_bytes((copy / name).read_bytes()[: (copy / name).stat().st_size // 2])
    capsys.readouterr()
    assert main([command, "--preset", "world_micro", "--dir", str(copy)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("safe-world:")]
    assert len(lines) == 1 and lines[0].startswith(f"safe-world: {copy / name}: not a readable "), lines


def test_unchanged_spec_rebuilds_nothing_and_changed_recipe_rebuilds_one_part(world: Path) -> None:
    before = read_record(world)
    assert main(["build", "--preset", "world_micro", "--dir", str(world)]) == 0
    assert read_record(world) == before
    assert main(["build", "--preset", "world_micro", "--dir", str(world), "--clap.seed", "1"]) == 0
    after = read_record(world)
    assert after["last_build_parts"] == ["clap"]
    assert after["parts"]["vl"] == before["parts"]["vl"]
    assert after["parts"]["clap"]["hash"] != before["parts"]["clap"]["hash"]


# The default world's CLAP hash as recorded by worlds built before mixture training existed (build.json, 2026-11).
DEFAULT_CLAP_HASH = "a2443ea96ae1b316697a3a36d0f1764dd6bff100c86915d8145bf6d6408d6c3e"


def test_mixture_settings_change_the_clap_hash_only_when_mixtures_are_on() -> None:
    config = load_config(WorldConfig, "world")
    assert config.part_hashes()["clap"] == DEFAULT_CLAP_HASH
    idle = dataclasses.replace(config, clap=dataclasses.replace(config.clap, mix_snr_db=(-5.0, 5.0)))
    assert idle.part_hashes() == config.part_hashes()
    mixing = dataclasses.replace(config, clap=dataclasses.replace(config.clap, mix_copies=1))
    assert mixing.part_hashes()["clap"] != DEFAULT_CLAP_HASH
    assert {k: v for k, v in mixing.part_hashes().items() if k != "clap"} == {
        k: v for k, v in config.part_hashes().items() if k != "clap"}


def test_bad_config_value_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["build", "--preset", "world_micro", "--dir", str(tmp_path), "--world.size", "huge"]) == 2
    err = capsys.readouterr().err
    assert "world" in err and "'huge'" in err and "micro" in err
    assert not (tmp_path / "build.json").exists()


@pytest.mark.parametrize("key, value, message", [
    ("world.grid", "0", "world.grid is 0; expected an integer >= 1"),
    ("world.clip_seconds", "-1", "world.clip_seconds is -1.0; expected a finite number > 0"),
    ("world.synonym_rate", "1.5", "world.synonym_rate is 1.5; expected a finite number >= 0 and <= 1"),
    ("world.splits", "{train: -3}", "world.splits.train is -3; expected an integer >= 0"),
    ("world.snr_db", "[-5, .inf]", "config key 'world.snr_db': value (-5.0, inf) is not valid; expected finite numbers"),
    ("vl.vqa_lr", "nan", "vl.vqa_lr is nan; expected a finite number > 0"),
    ("vl.batch_size", "0", "vl.batch_size is 0; expected an integer >= 1"),
    ("clap.dropout", "1", "clap.dropout is 1.0; expected a finite number >= 0 and < 1"),
    ("whisper.lr", "inf", "whisper.lr is inf; expected a finite number > 0"),
])
def test_bad_numbers_exit_2_before_anything_is_built(tmp_path: Path, key: str, value: str, message: str,
                                                     capsys: pytest.CaptureFixture) -> None:
    assert main(["build", "--preset", "world_micro", "--dir", str(tmp_path / "w"), f"--{key}", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "w").exists()


def test_info_on_missing_world_says_how_to_build(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "--preset", "world_micro", "--dir", str(tmp_path / "none")]) == 2
    assert "safe-world build" in capsys.readouterr().err


def test_world_dir_defaults_to_env_var_then_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from shared.world.build import default_world_dir
    from shared.world.spec import WorldSpec

    monkeypatch.setenv("SAFE_WORLD_DIR", str(tmp_path / "w"))
    assert default_world_dir(WorldSpec()) == tmp_path / "w"
    monkeypatch.delenv("SAFE_WORLD_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_world_dir(WorldSpec(size="micro", seed=2)) == tmp_path / "cache" / "safe" / "world" / "micro-seed2"
    shifted = WorldSpec(size="micro", seed=2, reverb_seconds=0.3)
    assert default_world_dir(shifted) == tmp_path / "cache" / "safe" / "world" / f"micro-seed2-{shifted.data_hash()[:12]}"
    mixing = default_world_dir(WorldSpec(), ClapTrainConfig(mix_copies=2))
    assert mixing.name.startswith("default-seed0-clapmix-")
    assert default_world_dir(WorldSpec(), ClapTrainConfig(mix_copies=1)) != mixing
    assert default_world_dir(WorldSpec(), ClapTrainConfig()) == default_world_dir(WorldSpec())


def test_data_only_builds_a_shifted_worlds_data_and_a_later_build_adds_the_models(tmp_path: Path) -> None:
    from shared.world.spec import WorldSpec

    args = ["build", "--preset", "world_micro", "--dir", str(tmp_path), "--world.reverb_seconds", "0.3",
            "--world.timbre", "unseen"]
    assert main([*args, "--data-only"]) == 0
    record = read_record(tmp_path)
    assert set(record["parts"]) == {"data"} and not (tmp_path / "models").exists()
    assert (record["spec"]["reverb_seconds"], record["spec"]["timbre"]) == (0.3, "unseen")
    assert record["parts"]["data"]["hash"] == WorldSpec(size="micro", reverb_seconds=0.3, timbre="unseen").data_hash()
    assert main([*args, "--data-only"]) == 0
    assert read_record(tmp_path) == record
    assert main(args) == 0
    after = read_record(tmp_path)
    assert sorted(after["last_build_parts"]) == ["clap", "vl", "whisper"] and after["parts"]["data"] == record["parts"]["data"]
