"""laion-clap checkpoint conversion: every key of the documented layout maps, bad keys are named."""

from pathlib import Path

import pytest
import torch

from shared.clap_convert import convert_checkpoint, convert_key, main
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
