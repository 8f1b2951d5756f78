"""Bridges that know their base: the record in safe_config.json and the check made when a bridge is loaded."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from transformers import ClapModel, LlavaForConditionalGeneration

from shared.config import load_config
from shared.encoders import build_encoder
from shared.world.build import WorldConfig, build_world
from stage_a.check import main as check_main
from stage_a.eval_command import main as eval_main
from stage_a.model import CONFIG_FILE, SafeModel
from stage_a.provenance import PROMPT_PROBE, SAMPLE_BYTES, BridgeMismatch, files_weights_hash, weights_fingerprint
from stage_a.train import main as train_main


def _args(paths: dict[str, str]) -> list[str]:
    return [x for k, v in paths.items() for x in (f"--{k}", v)]


@pytest.fixture(scope="module")
def bridge(micro_paths: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The best bridge of a short micro-world run."""
    out = tmp_path_factory.mktemp("runs")
    assert train_main(["--preset", "stage_a_micro", "--out_dir", str(out), "--steps", "2", "--eval_every", "2",
                       *_args(micro_paths)]) == 0
    return out / "stage_a_micro" / "best"


@pytest.fixture(scope="module")
def other_base(micro_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The micro world's VL model with one weight changed, saved (with its processor files) to another folder."""
    folder = tmp_path_factory.mktemp("other_vl")
    shutil.copytree(micro_world / "models" / "vl", folder, dirs_exist_ok=True)
    model = LlavaForConditionalGeneration.from_pretrained(folder)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1.0
    model.save_pretrained(folder)
    return folder


def _vl(micro_world: Path) -> Path:
    return micro_world / "models" / "vl"


def _encoder(micro_world: Path):
    return build_encoder("clap", str(micro_world / "models" / "clap"), None)


def test_bridge_records_base_encoder_bridge_prompt_and_version(bridge: Path, micro_world: Path) -> None:
    record = json.loads((bridge / CONFIG_FILE).read_text())["record"]
    assert record["base"] == {"id": str(_vl(micro_world)), "weights_fingerprint": weights_fingerprint(_vl(micro_world))}
    assert len(record["base"]["weights_fingerprint"]) == 64
    assert record["encoder"]["identity"].startswith(f"clap:{micro_world / 'models' / 'clap'}:sr")
    assert record["encoder"]["weights_sha256"]
    assert record["bridge"] == {"k_max": 16, "fusion_mode": "cross_attention", "layers": record["bridge"]["layers"],
                                "layers_path": "model.language_model.layers"} and record["bridge"]["layers"]
    assert record["prompt"]["no_image_policy"] == "text_only"
    assert PROMPT_PROBE in record["prompt"]["with_image"] and "<image>" in record["prompt"]["with_image"]
    assert "<image>" not in record["prompt"]["without_image"]
    assert record["safe_version"] == "0.1.0"


def test_same_base_and_encoder_load_silently_in_any_dtype_and_from_a_copy(
        bridge: Path, micro_world: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    copy = shutil.copytree(_vl(micro_world), tmp_path / "vl_copy")
    with caplog.at_level(logging.WARNING):
        for folder, dtype in ((_vl(micro_world), torch.float32), (_vl(micro_world), torch.bfloat16), (copy, torch.float32)):
            base = LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype)
            SafeModel.from_bridge(base, bridge, _encoder(micro_world))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_other_base_is_refused_naming_both_unless_not_strict(bridge: Path, other_base: Path, micro_world: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(BridgeMismatch) as err:
        SafeModel.from_bridge(LlavaForConditionalGeneration.from_pretrained(other_base), bridge, _encoder(micro_world))
    message = str(err.value)
    assert "\n" not in message and f"base {str(_vl(micro_world))!r}" in message and repr(str(other_base)) in message
    with caplog.at_level(logging.WARNING):
        model = SafeModel.from_bridge(LlavaForConditionalGeneration.from_pretrained(other_base), bridge,
                                      _encoder(micro_world), strict=False)
    assert isinstance(model, SafeModel)
    assert any(r.levelno == logging.WARNING and repr(str(other_base)) in r.getMessage() for r in caplog.records)


def test_other_encoder_is_refused_naming_both(bridge: Path, micro_world: Path, tmp_path: Path) -> None:
    clap = shutil.copytree(micro_world / "models" / "clap", tmp_path / "clap")
    model = ClapModel.from_pretrained(clap)
    with torch.no_grad():
        next(model.audio_model.parameters()).view(-1)[0] += 1.0
    model.save_pretrained(clap)
    with pytest.raises(BridgeMismatch, match=rf"encoder 'clap:{micro_world}/models/clap:.*'clap:{tmp_path}/clap:"):
        SafeModel.from_bridge(LlavaForConditionalGeneration.from_pretrained(_vl(micro_world)), bridge,
                              build_encoder("clap", str(clap), None))


def test_bridge_without_a_record_loads_with_a_warning(bridge: Path, micro_world: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    old = shutil.copytree(bridge, tmp_path / "old")
    config = json.loads((old / CONFIG_FILE).read_text())
    del config["record"]
    (old / CONFIG_FILE).write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        SafeModel.from_bridge(LlavaForConditionalGeneration.from_pretrained(_vl(micro_world)), old, _encoder(micro_world))
    assert any("cannot be verified" in r.getMessage() for r in caplog.records)


def test_eval_and_check_refuse_another_base_with_exit_2(bridge: Path, other_base: Path, micro_paths: dict,
                                                       micro_world: Path, capsys: pytest.CaptureFixture) -> None:
    paths = {**micro_paths, "model.base_vl": str(other_base)}
    assert eval_main(["--checkpoint", str(bridge), "--preset", "stage_a_micro", *_args(paths), "--size", "4",
                      "--out", str(bridge.parent / "eval_other")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("stage_a-eval:")]
    assert len(err) == 1 and repr(str(other_base)) in err[0] and repr(str(_vl(micro_world))) in err[0]
    clap = str(micro_world / "models" / "clap")
    assert check_main(["--base-vl", str(other_base), "--clap", clap, "--bridge", str(bridge)]) == 2
    assert repr(str(other_base)) in capsys.readouterr().err
    assert check_main(["--base-vl", str(other_base), "--clap", clap, "--bridge", str(bridge), "--no-strict"]) in (0, 1)


@pytest.fixture(scope="module")
def other_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second micro world (world seed 1): a base VL model of the same shapes, trained on other scenes."""
    return build_world(load_config(WorldConfig, "world_micro", {"world.seed": "1"}),
                       world_dir=tmp_path_factory.mktemp("other_world"))


def test_another_worlds_base_of_the_same_shapes_is_refused(bridge: Path, micro_world: Path, other_world: Path) -> None:
    other = LlavaForConditionalGeneration.from_pretrained(_vl(other_world))
    assert {n: p.shape for n, p in other.named_parameters()} == {
        n: p.shape for n, p in LlavaForConditionalGeneration.from_pretrained(_vl(micro_world)).named_parameters()}
    with pytest.raises(BridgeMismatch, match=f"base {str(_vl(micro_world))!r} .* loaded onto {str(_vl(other_world))!r}"):
        SafeModel.from_bridge(other, bridge, _encoder(micro_world))


def test_the_fingerprint_samples_every_tensor_of_the_weight_files(micro_world: Path, tmp_path: Path) -> None:
    """Equal for a copy; changed by one value at the start or the end of any tensor; blind to the middle of a large
    one (the price of reading ~2 * SAMPLE_BYTES per tensor instead of every byte)."""
    copy = shutil.copytree(_vl(micro_world), tmp_path / "vl")
    fingerprint = weights_fingerprint(copy)
    assert fingerprint == weights_fingerprint(_vl(micro_world))
    model = LlavaForConditionalGeneration.from_pretrained(copy)
    largest = max(model.parameters(), key=lambda p: p.numel())
    assert largest.numel() * largest.element_size() > 4 * SAMPLE_BYTES
    original = largest.detach().clone()
    for index, changed in ((0, True), (-1, True), (largest.numel() // 2, False)):
        with torch.no_grad():
            largest.copy_(original)
            largest.view(-1)[index] += 1.0
        model.save_pretrained(copy)
        assert (weights_fingerprint(copy) != fingerprint) is changed, index


def test_a_record_older_than_the_fingerprint_is_checked_with_its_full_hash(
        bridge: Path, other_base: Path, micro_world: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old = shutil.copytree(bridge, tmp_path / "old")
    config = json.loads((old / CONFIG_FILE).read_text())
    config["record"]["base"] = {"id": str(_vl(micro_world)), "weights_sha256": files_weights_hash(_vl(micro_world))}
    (old / CONFIG_FILE).write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        SafeModel.from_bridge(LlavaForConditionalGeneration.from_pretrained(_vl(micro_world)), old, _encoder(micro_world))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with pytest.raises(BridgeMismatch, match=r"\(weights sha256 [0-9a-f]{12}\) but is being loaded onto"):
        SafeModel.from_bridge(LlavaForConditionalGeneration.from_pretrained(other_base), old, _encoder(micro_world))
