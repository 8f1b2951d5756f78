"""Typed configs: presets, overrides and the errors users see."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from shared.config import ConfigError, load_config, parse_overrides


@dataclass
class Optim:
    lr: float = 1e-3
    schedule: Literal["none", "linear", "cosine"] = "none"


@dataclass
class Run:
    steps: int = 10
    name: str = "run"
    snr: tuple[float, float] = (0.0, 1.0)
    resume: bool = False
    budget: int | None = None
    optim: Optim = field(default_factory=Optim)

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"steps is {self.steps}; expected > 0")


def test_preset_then_overrides(tmp_path: Path) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text("steps: 5\noptim:\n  lr: 0.01\n")
    cfg = load_config(Run, preset, parse_overrides(["--optim.schedule", "cosine", "--snr=[-5, 20]", "--budget", "null"]))
    assert cfg.steps == 5 and cfg.optim.lr == 0.01 and cfg.optim.schedule == "cosine"
    assert cfg.snr == (-5.0, 20.0) and cfg.budget is None


def test_scientific_float_and_bool_from_command_line() -> None:
    cfg = load_config(Run, None, parse_overrides(["--optim.lr", "3e-4", "--resume", "true"]))
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.resume is True


@pytest.mark.parametrize("overrides, message", [
    (["--steps", "ten"], r"'steps': value 'ten' is not valid; expected int"),
    (["--optim.schedule", "exp"], r"'optim.schedule': value 'exp' is not valid; expected one of 'none', 'linear', 'cosine'"),
    (["--stpes", "3"], r"unknown config key 'stpes' \(did you mean 'steps'\?\)"),
    (["--snr", "[1, 2, 3]"], r"'snr': value \[1, 2, 3\] has 3 items; expected 2"),
    (["--steps", "-1"], r"config section 'Run': steps is -1; expected > 0"),
    (["--optim", "3"], r"'optim': value '3' is not a mapping"),
    (["--optim.lr", "nan"], r"config key 'optim.lr': value nan is not valid; expected a finite number$"),
    (["--optim.lr=-.inf"], r"config key 'optim.lr': value -inf is not valid; expected a finite number$"),
    (["--snr", "[0, .inf]"], r"config key 'snr': value \(0.0, inf\) is not valid; expected finite numbers$"),
])
def test_errors_name_key_value_and_expectation(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(Run, None, parse_overrides(overrides))


def test_malformed_overrides_and_missing_preset() -> None:
    with pytest.raises(ConfigError, match="has no value"):
        parse_overrides(["--steps"])
    with pytest.raises(ConfigError, match="not of the form"):
        parse_overrides(["steps", "3"])
    with pytest.raises(ConfigError, match="preset 'nope' not found"):
        load_config(Run, "nope")


def test_presets_extend_other_presets(tmp_path) -> None:
    from stage_a.config import TrainConfig

    parent = tmp_path / "parent.yaml"
    parent.write_text("name: parent\nsteps: 10\nmix:\n  batch_size: 4\n  audio_fraction: 0.2\n")
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {parent}\nname: child\nmix:\n  audio_fraction: 0.5\n")
    cfg = load_config(TrainConfig, child)
    assert (cfg.name, cfg.steps, cfg.mix.batch_size, cfg.mix.audio_fraction) == ("child", 10, 4, 0.5)
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(TrainConfig, loop)
