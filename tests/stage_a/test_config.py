"""Stage A configs are validated when they load, before any world is built or model loaded."""

import time
from pathlib import Path

import pytest

from shared.config import ConfigError, load_config
from stage_a.config import TrainConfig
from stage_a.train import main


def test_a_nan_lr_fails_at_once_without_touching_the_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    world, out = tmp_path / "world", tmp_path / "runs"
    monkeypatch.setenv("SAFE_WORLD_DIR", str(world))  # a late check would build the micro world here first
    start = time.perf_counter()
    assert main(["--preset", "stage_a_micro", "--world", "world_micro", "--out_dir", str(out), "--lr", "nan"]) == 2
    assert time.perf_counter() - start < 1.0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lr is nan; expected a finite number > 0" in err
    assert not world.exists() and not out.exists()
    assert main(["--preset", "stage_a_micro", "--world", "world_micro", "--out_dir", str(out), "--stop-after", "-1"]) == 2
    assert capsys.readouterr().err == "stage_a-train: --stop-after is -1; expected an integer >= 0\n"
    assert not world.exists() and not out.exists()


@pytest.mark.parametrize("key, value, message", [
    ("lr", "inf", "lr is inf; expected a finite number > 0"),
    ("lr", "0", "lr is 0.0; expected a finite number > 0"),
    ("weight_decay", "-0.1", "weight_decay is -0.1; expected a finite number >= 0"),
    ("label_smoothing", "1.5", "label_smoothing is 1.5; expected a finite number >= 0 and <= 1"),
    ("tolerance_pts", "nan", "tolerance_pts is nan; expected a finite number"),
    ("kl_weight", "nan", "retention kl_weight is nan; expected a finite number >= 0"),
    ("fisher_weight", "-1", "retention fisher_weight is -1.0; expected a finite number >= 0"),
    ("kl_temperature", "0", "retention kl_temperature is 0.0; expected a finite number > 0"),
    ("nullspace_energy", "1", "retention nullspace_energy is 1.0; expected a finite number > 0 and < 1"),
    ("retention", "strong", "retention variant 'strong' is unknown"),
    ("steps", "-1", "steps is -1; expected an integer >= 0"),
    ("seed", "-3", "seed is -3; expected an integer >= 0"),
    ("eval_batch_size", "0", "eval_batch_size is 0; expected an integer >= 1"),
    ("vanish_patience", "0", "vanish_patience is 0; expected an integer >= 1"),
    ("mix.batch_size", "0", "'mix': mixing batch_size is 0; expected an integer >= 1"),
    ("mix.audio_fraction", "nan", "'mix': mixing audio_fraction is nan; expected a finite number >= 0 and <= 1"),
    ("model.fusion.heads", "0", "'model.fusion': fusion heads is 0; expected an integer >= 1"),
    ("model.fusion.residual_scale", "nan", "fusion residual_scale is nan; expected a finite number > 0"),
    ("model.lora.alpha", "0", "'model.lora': lora alpha is 0.0; expected a finite number > 0"),
    ("model.projector_depth", "7", "'model': projector depth is 7; expected 2 to 5 layers"),
    ("data.eval_size", "-1", "'data': data.eval_size is -1; expected an integer >= 0"),
    ("data.sample_rate", "0", "data.sample_rate is 0; expected an integer >= 1"),
])
def test_bad_values_are_named_with_their_range(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, "stage_a_micro", {key: value})
    assert message in str(err.value)


def test_the_shipped_presets_and_valid_overrides_load() -> None:
    cfg = load_config(TrainConfig, "stage_a", {"lr": "1e-4", "kl_weight": "0", "label_smoothing": "0.1",
                                               "tolerance_pts": "-1", "grad_clip": "0"})
    assert cfg.lr == 1e-4 and cfg.kl_weight == 0.0 and cfg.grad_clip == 0.0
