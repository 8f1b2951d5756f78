"""`stage_a-check` on a tiny LLaVA and a tiny CLAP saved to disk and loaded by path."""

import json
from pathlib import Path

import pytest
import torch

from shared.world.audio_model import build_clap
from shared.world.clap_train import ClapTrainConfig
from shared.world.spec import WorldSpec
from stage_a import check
from stage_a.check import main
from stage_a.model import SafeModel

SPEC = WorldSpec(size="micro")


@pytest.fixture(scope="module")
def dirs(llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    clap = tmp_path_factory.mktemp("clap")
    model, processor = build_clap(SPEC, ClapTrainConfig())
    model.save_pretrained(clap)
    processor.save_pretrained(clap)
    return llava_dir, clap


def test_check_reports_exactness_placement_and_parameters(dirs, capsys: pytest.CaptureFixture) -> None:
    vl, clap = dirs
    code = main(["--base-vl", str(vl), "--clap", str(clap), "--placement", "late", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["exact"] is True and report["gate1_changes_logits"] is True
    assert all(c["logits"] and c["generate"] and c["max_abs_logit_diff"] == 0.0 for c in report["checks"].values())
    assert set(report["checks"]) == {"gate0", "no_audio", "mixed_gate0_rows"} and report["mixed_gate1_rows_change"]
    assert report["decisive_check"] == "mixed_gate0_rows" and set(report["check_paths"]) == set(report["checks"])
    assert report["adapter_layers"] == [2] and report["base_class"] == "LlavaForConditionalGeneration"
    params = report["params"]
    assert report["lora_rank"] == 16 and params["lora"] > 0 and params["frozen"] > 0
    assert params["trainable"] == params["projector"] + params["fusion"] + params["lora"]
    assert set(report["param_memory_mb"]) == {"base_vl", "projector", "fusion", "lora", "audio_encoder"}


def test_check_table_output(dirs, capsys: pytest.CaptureFixture) -> None:
    vl, clap = dirs
    assert main(["--base-vl", str(vl), "--clap", str(clap)]) == 0
    out = capsys.readouterr().out
    assert "gate0" in out and "no_audio" in out and "exact: True" in out
    assert "bridge, decisive" in out and "base-weight drift only" in out


def test_unusable_model_or_arguments_exit_2_with_one_line(dirs, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    vl, clap = dirs
    cases = [(["--base-vl", str(vl), "--clap", str(clap), "--layers-path", "model.nope"],
              "layers path 'model.nope' is not a non-empty module list in LlavaForConditionalGeneration; pass"),
             (["--base-vl", str(tmp_path / "missing"), "--clap", str(clap)], str(tmp_path / "missing"))]
    for argv, message in cases:
        assert main(argv) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("stage_a-check: ")]
        assert len(lines) == 1 and message in lines[0], lines  # (other stderr lines are progress bars)
    with pytest.raises(SystemExit) as bad_argument:
        main(["--base-vl", str(vl), "--fusion-mode", "nope"])
    assert bad_argument.value.code == 2


@pytest.mark.parametrize("flags, message", [
    (["--k", "0"], "--k is 0; expected an integer >= 1 and <= 16"),
    (["--k", "17"], "--k is 17; expected an integer >= 1 and <= 16"),
    (["--max-new-tokens", "0"], "--max-new-tokens is 0; expected an integer >= 1"),
    (["--rank", "3"], "fusion rank is 3 with 2 heads; expected a positive multiple of heads"),
    (["--lora-rank", "-1"], "lora rank (0 = off) is -1; expected an integer >= 0"),
    (["--base-vl", "./no/such/model"], "--base-vl is './no/such/model': no such folder, and not a hub id"),
])
def test_bad_arguments_exit_2_before_the_world_is_built(flags: list[str], message: str,
                                                        capsys: pytest.CaptureFixture) -> None:
    assert main(["--world", "no_such_world", *flags]) == 2  # building the world would fail on its preset instead
    assert capsys.readouterr().err.startswith(f"stage_a-check: {message}")


def test_k_is_checked_against_a_saved_bridges_k_max(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "safe_config.json").write_text(json.dumps({"projector": {"k_max": 8}}))
    assert main(["--world", "no_such_world", "--bridge", str(tmp_path), "--k", "12"]) == 2
    assert "--k is 12; expected an integer >= 1 and <= 8" in capsys.readouterr().err


def test_layers_path_override_reaches_the_adapter(dirs, capsys: pytest.CaptureFixture) -> None:
    vl, clap = dirs
    assert main(["--base-vl", str(vl), "--clap", str(clap), "--layers-path", "model.language_model.layers",
                 "--placement", "early", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["adapter_layers"] == [0]


def test_check_on_a_tiny_blip2_folder(dirs, blip2_dir: Path, capsys: pytest.CaptureFixture) -> None:
    _, clap = dirs
    assert main(["--base-vl", str(blip2_dir), "--clap", str(clap), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["base_class"] == "Blip2ForConditionalGeneration" and report["exact"] is True
    assert report["gate1_changes_logits"] is True and report["adapter_layers"] == [0, 1, 2]


def test_check_in_prefix_mode(dirs, capsys: pytest.CaptureFixture) -> None:
    vl, clap = dirs
    assert main(["--base-vl", str(vl), "--clap", str(clap), "--fusion-mode", "prefix", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fusion_mode"] == "prefix" and report["exact"] is True and report["gate1_changes_logits"] is True
    assert report["adapter_layers"] == [] and report["params"]["fusion"] == 0


def test_check_exits_non_zero_when_the_wrapper_alters_the_base(dirs, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    """A wrapper that touches a base weight (a 0.1% change to one LM norm) must fail the check."""
    class Tampering(SafeModel):
        def __init__(self, base: torch.nn.Module, bridge) -> None:
            super().__init__(base, bridge)
            with torch.no_grad():
                next(p for n, p in base.named_parameters() if "language_model" in n and "norm" in n).mul_(1.001)

    monkeypatch.setattr(check, "SafeModel", Tampering)
    vl, clap = dirs
    assert main(["--base-vl", str(vl), "--clap", str(clap), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["exact"] is False and report["checks"]["no_audio"]["max_abs_logit_diff"] > 0


def test_whisper_and_both_default_to_the_embedded_worlds_encoders(micro_world: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("SAFE_WORLD_DIR", str(micro_world))
    for kind in ("whisper", "both"):
        assert main(["--world", "world_micro", "--audio-encoder", kind, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["exact"] is True and "whisper" in report["audio_encoder"].lower()
        assert report["base_vl"] == str(micro_world / "models" / "vl")
