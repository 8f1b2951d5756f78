"""Stage A setup: which paths need the embedded world, and which parameters full fine-tuning unfreezes."""

import pytest
from transformers import AutoModelForImageTextToText

from shared.config import ConfigError, load_config
from stage_a.config import TrainConfig
from stage_a.setup import resolve_paths, unfreeze_language_model


def test_only_the_loaded_splits_fall_back_to_the_world(micro_paths: dict) -> None:
    # A world preset that does not exist: any attempt to build the embedded world fails loudly.
    cfg = load_config(TrainConfig, "stage_a_micro", {**micro_paths, "data.train": "", "data.val": "",
                                                     "world": "no_such_world"})
    paths = resolve_paths(cfg, ("test",))
    assert paths["test"] == micro_paths["data.test"] and paths["train"] == "" and paths["val"] == ""
    with pytest.raises(ConfigError, match="no_such_world"):
        resolve_paths(cfg, ("train", "test"))


@pytest.mark.parametrize("family, lm", [("llava_next", "model.language_model."), ("idefics3", "model.text_model."),
                                        ("blip2", "language_model.model.decoder.")])
def test_full_fine_tuning_unfreezes_the_language_model_of_each_family(family: str, lm: str, family_dir) -> None:
    base = AutoModelForImageTextToText.from_pretrained(family_dir(family)).requires_grad_(False)
    names = unfreeze_language_model(base)
    trainable = {n for n, p in base.named_parameters() if p.requires_grad}
    assert names and trainable == set(names) and all(n.startswith(lm) for n in names)
    assert any(".layers." in n for n in names) and not any("vision" in n for n in names)
