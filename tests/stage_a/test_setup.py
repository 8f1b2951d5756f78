"""Stage A setup: named paths checked first, which paths need the embedded world, and which parameters full
fine-tuning unfreezes."""

import pytest
from transformers import AutoModelForImageTextToText

from shared.cli import InputError
from shared.config import ConfigError, load_config
from stage_a.config import TrainConfig
from stage_a.setup import check_paths, resolve_paths, unfreeze_language_model


def test_only_the_loaded_splits_fall_back_to_the_world(micro_paths: dict) -> None:
    # A world preset that does not exist: any attempt to build the embedded world fails loudly.
    cfg = load_config(TrainConfig, "stage_a_micro", {**micro_paths, "data.train": "", "data.val": "",
                                                     "world": "no_such_world"})
    paths = resolve_paths(cfg, ("test",))
    assert paths["test"] == micro_paths["data.test"] and paths["train"] == "" and paths["val"] == ""
    with pytest.raises(ConfigError, match="no_such_world"):
        resolve_paths(cfg, ("train", "test"))


def test_named_paths_are_checked_before_the_world(micro_paths: dict, tmp_path) -> None:
    values = {**micro_paths, "world": "no_such_world"}
    for key, value, named in (("model.base_vl", str(tmp_path / "vl"), "no such folder, and not a hub id"),
                              ("model.clap", "./clap", "no such folder"),
                              ("data.test", str(tmp_path / "test.jsonl"), "does not exist")):
        with pytest.raises((InputError, FileNotFoundError), match=f"{value}.*{named}"):
            resolve_paths(load_config(TrainConfig, "stage_a_micro", {**values, key: value}), ("test",))


def test_hub_ids_unused_encoders_and_unloaded_splits_are_not_paths_to_check(micro_paths: dict, tmp_path) -> None:
    cfg = load_config(TrainConfig, "stage_a_micro", {
        **micro_paths, "model.base_vl": "llava-hf/llava-1.5-7b-hf", "model.clap": "laion/clap-htsat-unfused",
        "model.whisper": str(tmp_path / "whisper"), "data.train": str(tmp_path / "train.jsonl")})
    check_paths(cfg, ("test",))  # the whisper folder is not used by a clap run; the train split is not loaded
    with pytest.raises(FileNotFoundError, match="train.jsonl does not exist"):
        check_paths(cfg, ("train", "test"))


@pytest.mark.parametrize("family, lm", [("llava_next", "model.language_model."), ("idefics3", "model.text_model."),
                                        ("blip2", "language_model.model.decoder.")])
def test_full_fine_tuning_unfreezes_the_language_model_of_each_family(family: str, lm: str, family_dir) -> None:
    base = AutoModelForImageTextToText.from_pretrained(family_dir(family)).requires_grad_(False)
    names = unfreeze_language_model(base)
    trainable = {n for n, p in base.named_parameters() if p.requires_grad}
    assert names and trainable == set(names) and all(n.startswith(lm) for n in names)
    assert any(".layers." in n for n in names) and not any("vision" in n for n in names)
