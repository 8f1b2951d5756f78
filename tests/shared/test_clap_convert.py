"""laion-clap checkpoint conversion: every key of the documented layout maps, bad keys are named,
and checkpoints written by laion-clap's own code (tests/fixtures/clap) give laion's embeddings."""

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import ClapFeatureExtractor

from shared.clap_convert import convert_checkpoint, convert_key, main, preset_config
from shared.clap_reference import LAION_SR, prepare, parity, reference_config
from shared.encoders import ClapEncoder, EncoderSettings
from shared.world.audio_model import build_clap
from shared.world.clap_train import ClapTrainConfig
from shared.world.spec import WorldSpec


def _to_laion(key: str) -> str:
    """The laion-clap name of a ClapModel key, written from the laion-clap layout (the test's inverse)."""
    if key.startswith("text_model."):
        return "text_branch." + key[len("text_model."):]
    if key.startswith("audio_model.audio_encoder."):
        key = "audio_branch." + key[len("audio_model.audio_encoder."):]
        for hf, laion in ((".layernorm_before.", ".norm1."), (".layernorm_after.", ".norm2."),
                          (".attention.output.dense.", ".attn.proj."), (".attention.self.", ".attn."),
                          (".intermediate.dense.", ".mlp.fc1."), (".output.dense.", ".mlp.fc2."),
                          (".batch_norm.", ".bn0.")):
            key = key.replace(hf, laion)
        return key
    return key.replace("_projection.linear1.", "_projection.0.").replace("_projection.linear2.", "_projection.2.")


@pytest.fixture(scope="module")
def original() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_clap(WorldSpec(size="micro"), ClapTrainConfig())[0].eval()


def _laion_file(model: torch.nn.Module, path: Path, extra: dict | None = None) -> Path:
    state, fused = {}, {}
    for key, value in model.state_dict().items():
        laion = _to_laion(key)
        for part in ("query", "key", "value"):
            if f".attn.{part}." in laion:
                fused.setdefault(laion.replace(f".attn.{part}.", ".attn.qkv."), {})[part] = value
                break
        else:
            state["module." + laion] = value
    for key, parts in fused.items():
        state["module." + key] = torch.cat([parts["query"], parts["key"], parts["value"]])
    state.update({
        "module.audio_branch.spectrogram_extractor.stft.conv_real.weight": torch.zeros(3),
        "module.audio_branch.logmel_extractor.melW": torch.zeros(3),
        "module.audio_branch.tscam_conv.weight": torch.zeros(3),
        "module.audio_branch.head.weight": torch.zeros(3),
        "module.text_transform.sequential.0.weight": torch.zeros(3),
        "module.text_branch.embeddings.position_ids": torch.arange(3),
        **(extra or {}),
    })
    torch.save({"state_dict": state, "epoch": 3}, path)
    return path


def test_every_key_maps_and_the_model_is_reproduced(original: torch.nn.Module, tmp_path: Path) -> None:
    converted = convert_checkpoint(_laion_file(original, tmp_path / "clap.pt"), original.config)
    for key, value in original.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key
    features = torch.randn(2, 1, 400, 32)
    assert torch.equal(converted.get_audio_features(input_features=features).pooler_output,
                       original.get_audio_features(input_features=features).pooler_output)


def test_unknown_keys_are_named(original: torch.nn.Module, tmp_path: Path) -> None:
    path = _laion_file(original, tmp_path / "bad.pt", {"module.mystery.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unknown key\(s\), e.g. \['module.mystery.weight'\]"):
        convert_checkpoint(path, original.config)
    path = _laion_file(original, tmp_path / "stray.pt", {"module.audio_branch.surprise.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"1 are unexpected \(e.g. \['audio_model.audio_encoder.surprise.weight'\]\)"):
        convert_checkpoint(path, original.config)


def test_missing_key_is_named(original: torch.nn.Module, tmp_path: Path) -> None:
    path = _laion_file(original, tmp_path / "short.pt")
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["state_dict"]["module.logit_scale_a"]
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"1 ClapModel key\(s\) are missing \(e.g. \['logit_scale_a'\]\)"):
        convert_checkpoint(path, original.config)


def test_key_rules() -> None:
    assert convert_key("module.audio_branch.layers.0.blocks.1.mlp.fc2.weight") == \
        "audio_model.audio_encoder.layers.0.blocks.1.output.dense.weight"
    assert convert_key("text_projection.2.bias") == "text_projection.linear2.bias"
    assert convert_key("audio_branch.logmel_extractor.melW") is None


def test_cli_writes_a_loadable_model(original: torch.nn.Module, tmp_path: Path) -> None:
    original.config.save_pretrained(tmp_path / "cfg")
    assert main([str(_laion_file(original, tmp_path / "c.pt")), str(tmp_path / "cfg"), str(tmp_path / "out")]) == 0
    reloaded = type(original).from_pretrained(tmp_path / "out")
    assert torch.equal(reloaded.logit_scale_a, original.logit_scale_a)
    assert main([str(tmp_path / "missing.pt"), str(tmp_path / "cfg"), str(tmp_path / "o2")]) == 2


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "clap"


def _laion_fixture(name: str, tmp_path: Path) -> tuple[Path, Path, dict, dict]:
    return prepare(FIXTURES / name, tmp_path / name)


def test_laion_checkpoint_converts_to_a_folder_clap_encoder_loads(tmp_path: Path) -> None:
    checkpoint, config, _, reference = _laion_fixture("laion_micro", tmp_path)
    assert main([str(checkpoint), str(config), str(tmp_path / "out")]) == 0
    fe = ClapFeatureExtractor.from_pretrained(tmp_path / "out")
    assert (fe.sampling_rate, fe.fft_window_size, fe.hop_length, fe.frequency_min, fe.frequency_max,
            fe.feature_size, fe.max_length_s, fe.truncation, fe.padding) == \
        (48000, 1024, 480, 50, 14000, 64, 10, "rand_trunc", "repeatpad")
    encoder = ClapEncoder(EncoderSettings(str(tmp_path / "out")))
    clip = reference["clip"].astype(np.float32) / 32767.0
    frames, mask = encoder.encode([clip[:4 * LAION_SR], clip], LAION_SR)
    assert frames.shape[0] == 2 and mask[1].all() and not mask[0].all()


def test_embeddings_match_laion_on_4_and_12_second_clips(tmp_path: Path) -> None:
    """Our converted model + our front end vs laion's get_audio_features + CLAP.get_audio_embedding."""
    result = parity(FIXTURES / "laion_micro", tmp_path)
    assert set(result["max_abs_diff"]) == {"clip_4s", "clip_12s"}
    assert max(result["max_abs_diff"].values()) <= 1e-4, result
    assert result["laion_rows_max_abs_diff"] > 1e-2  # the bound is not met by a constant output


def test_fusion_checkpoint_matches_laion_at_the_htsat_input(tmp_path: Path) -> None:
    result = parity(FIXTURES / "laion_micro_fusion", tmp_path)
    assert ClapFeatureExtractor.from_pretrained(tmp_path / "converted").truncation == "fusion"
    assert max(result["max_abs_diff"].values()) <= 1e-4, result
    assert result["laion_rows_max_abs_diff"] > 1e-3  # the "longer" row ran the AFF fusion block


def test_attn_mask_must_equal_the_recomputed_one(tmp_path: Path) -> None:
    checkpoint, config, record, _ = _laion_fixture("laion_micro", tmp_path)
    state = torch.load(checkpoint, weights_only=True)
    key = "module.audio_branch.layers.1.blocks.1.attn_mask"
    state["state_dict"][key] = torch.zeros_like(state["state_dict"][key])
    torch.save(state, checkpoint)
    assert main([str(checkpoint), str(config), str(tmp_path / "out")]) == 2
    with pytest.raises(ValueError, match="layers.1.blocks.1.attn_mask differs from the shifted-window mask"):
        convert_checkpoint(checkpoint, reference_config(record))


def test_unsupported_fusion_types_are_named(tmp_path: Path) -> None:
    checkpoint, config, _, _ = _laion_fixture("laion_micro_fusion", tmp_path)
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"]["module.audio_branch.patch_embed.fusion_model.local_att2.0.weight"] = torch.zeros(1)
    torch.save(state, checkpoint)
    with pytest.raises(ValueError, match=r"laion's iaff fusion .*implements only aff_2d"):
        convert_checkpoint(checkpoint, preset_config("htsat-tiny-fusion"))


def test_presets_are_laions_htsat_sizes() -> None:
    tiny, base = preset_config("htsat-tiny"), preset_config("htsat-base-fusion")
    assert (tiny.audio_config.hidden_size, tiny.audio_config.depths, tiny.audio_config.enable_fusion) == \
        (768, [2, 2, 6, 2], False)
    assert (base.audio_config.hidden_size, base.audio_config.depths, base.audio_config.enable_fusion) == \
        (1024, [2, 2, 12, 2], True)
    with pytest.raises(ValueError, match="config preset is 'htsat-huge'"):
        preset_config("htsat-huge")


@pytest.mark.parametrize("content", ["empty", "text", "truncated", "directory", "not a state dict"])
def test_bad_files_give_one_line_and_exit_2(content: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "bad.pt"
    if content == "empty":
        path.write_bytes(b"")
    elif content == "text":
        path.write_text("hello\n")
    elif content == "truncated":
        path.write_bytes((FIXTURES / "laion_micro" / "laion_clap.pt").read_bytes()[:100_000])
    elif content == "directory":
        path.mkdir()
    else:
        torch.save({"epoch": 3, "name": "run"}, path)
    preset_dir = tmp_path / "cfg"
    preset_config("htsat-tiny").save_pretrained(preset_dir)
    assert main([str(path), str(preset_dir), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"safe-convert-clap: {path}") and err.count("\n") == 1, err
    assert {"empty": "empty file (0 bytes)", "text": "not a torch.save file", "truncated": "truncated or corrupt",
            "directory": "a folder; expected", "not a state dict": "without a tensor state dict"}[content] in err, err
    assert not (tmp_path / "out").exists()
