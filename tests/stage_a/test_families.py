"""Real VLM families (tiny local checkpoints): stage_a-check in both fusion modes, prompting, splicing and splitting."""

import json
import re
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from shared.config import load_config
from stage_a.check import main
from stage_a.config import TrainConfig
from stage_a.fusion import FusionConfig, decoder_layers_path
from stage_a.lora import AudioOnlyLora, LoraSettings
from stage_a.model import BridgeConfig, SafeModel
from stage_a.prefix import PrefixSplicer, media_token_ids, select_rows, splice_inputs
from stage_a.projector import ProjectorConfig
from stage_a.train import StageATrainer, main as train_main
from stage_a.prompting import blank_image, build_prompt, model_inputs, no_image_policy, sample_image

CHECKED = ("llava_next", "idefics3", "paligemma", "gemma3")
GEN = {"max_new_tokens": 3, "do_sample": False}
QWEN_QUESTIONS = ("what color is the circle?", "how many times")


@pytest.mark.parametrize("mode", ["cross_attention", "prefix"])
@pytest.mark.parametrize("family", CHECKED)
def test_check_passes_on_each_family(family: str, mode: str, family_dir, clap_dir: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    code = main(["--base-vl", str(family_dir(family)), "--clap", str(clap_dir), "--fusion-mode", mode, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    assert report["exact"] and report["gate1_changes_logits"] and report["mixed_gate1_rows_change"]
    assert report["checks"]["mixed_gate0_rows"] == {"logits": True, "generate": True, "max_abs_logit_diff": 0.0}


@pytest.mark.parametrize("family,path,policy", [
    ("llava_next", "model.language_model.layers", "text_only"), ("idefics3", "model.text_model.layers", "text_only"),
    ("paligemma", "model.language_model.layers", "blank_image"), ("blip2", "language_model.model.decoder.layers",
                                                                  "blank_image"),
    ("gemma3", "model.language_model.layers", "text_only")])
def test_layers_lora_and_no_image_policy(family: str, path: str, policy: str, family_dir) -> None:
    folder = family_dir(family)
    base = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert decoder_layers_path(base) == path and no_image_policy(processor) == policy
    lora = AudioOnlyLora(base, LoraSettings(rank=2))
    assert lora.branches and all(name.startswith(path + ".") for name in lora.branches)
    assert blank_image(processor).getpixel((0, 0)) == (128, 128, 128)
    assert blank_image(processor).size == sample_image(processor).size


def test_layers_path_override_and_message(family_dir) -> None:
    base = AutoModelForImageTextToText.from_pretrained(family_dir("idefics3"))
    assert decoder_layers_path(base, "model.text_model.layers") == "model.text_model.layers"
    assert decoder_layers_path(base, "model.vision_model.encoder.layers") == "model.vision_model.encoder.layers"
    hint = "'model.nope' is not a non-empty module list.*--layers-path.*--model.fusion.layers_path"
    with pytest.raises(ValueError, match=hint):
        SafeModel(base, BridgeConfig(ProjectorConfig(audio_dim=24, hidden_size=32, k_max=16),
                                     FusionConfig(layers_path="model.nope")))


@pytest.mark.parametrize("family", ["llava_next", "idefics3", "gemma3"])
def test_text_only_rows_beside_image_rows(family: str, family_dir) -> None:
    """A text-only row in a batch with an image row gives the logits it has alone (model_inputs, right padding)."""
    folder = family_dir(family)
    processor, base = AutoProcessor.from_pretrained(folder), AutoModelForImageTextToText.from_pretrained(folder).eval()
    texts = [build_prompt(processor, "what color is the circle?"),
             build_prompt(processor, "how many times", image=False)]
    assert processor.image_token not in texts[1]
    mixed = model_inputs(processor, texts, [sample_image(processor), None], padding_side="right")
    alone = model_inputs(processor, texts[1:], [None], padding_side="right")
    n = alone["input_ids"].shape[1]
    torch.testing.assert_close(base(**mixed).logits[1, :n], base(**alone).logits[0], rtol=1e-5, atol=1e-5)


def test_paligemma_inputs_drop_processor_labels_and_fill_blank_images(family_dir) -> None:
    processor = AutoProcessor.from_pretrained(family_dir("paligemma"))
    texts = [build_prompt(processor, "what color is the circle?")] * 2
    raw = processor(images=[sample_image(processor)] * 2, text=texts, return_tensors="pt")
    assert "labels" in raw  # the processor adds them on its own
    inputs = model_inputs(processor, texts, [sample_image(processor), None], padding_side="left")
    assert "labels" not in inputs and inputs["pixel_values"].shape[0] == 2
    assert "token_type_ids" in inputs


def test_prefix_splices_token_types_with_the_ids(family_dir) -> None:
    processor = AutoProcessor.from_pretrained(family_dir("paligemma"))
    inputs = model_inputs(processor, [build_prompt(processor, "what color is the circle?")],
                          [sample_image(processor)], padding_side="left")
    inputs["token_type_ids"][0, -1] = 1  # a suffix token, as with a training target
    spliced, slots = splice_inputs(inputs, 3, processor.image_token_id)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert spliced[key].shape == slots.shape and torch.equal(spliced[key][~slots], inputs[key].flatten())
    assert spliced["token_type_ids"][slots].eq(0).all() and spliced["attention_mask"][slots].eq(1).all()
    with pytest.raises(ValueError, match="cannot splice the per-token input 'odd_ids'"):
        splice_inputs({**inputs, "odd_ids": inputs["input_ids"]}, 3, processor.image_token_id)


def test_gemma3_prefix_keeps_the_bidirectional_image_block_aligned(family_dir) -> None:
    """Audio tokens equal to word embeddings give the logits of those words inserted before the image tokens, with
    token type 0: Gemma3's image tokens attend to each other both ways, and the slots stay outside that block."""
    folder = family_dir("gemma3")
    processor, base = AutoProcessor.from_pretrained(folder), AutoModelForImageTextToText.from_pretrained(folder).eval()
    texts = [build_prompt(processor, "what color is the circle?"), build_prompt(processor, "how many times", False)]
    inputs = model_inputs(processor, texts, [sample_image(processor), None], padding_side="left")
    words = torch.tensor(processor.tokenizer.convert_tokens_to_ids(["red", "blue", "sound"]))
    with torch.no_grad():
        tokens = base.get_input_embeddings()(words)[None].expand(2, -1, -1)
        logits = PrefixSplicer(base).run(base, inputs, tokens, torch.tensor([True, True]), torch.ones(2), False,
                                         lambda rows: nullcontext()).logits
    image_id, pixels = base.config.image_token_id, iter(inputs["pixel_values"])
    assert inputs["token_type_ids"].eq(inputs["input_ids"] == image_id).all() and inputs["token_type_ids"].any()
    for row in range(2):
        kept = inputs["attention_mask"][row].bool()
        ids, types = inputs["input_ids"][row][kept], inputs["token_type_ids"][row][kept]
        at = int((ids == image_id).int().argmax()) if (ids == image_id).any() else 0
        reference = {"input_ids": torch.cat([ids[:at], words, ids[at:]])[None],
                     "token_type_ids": torch.cat([types[:at], torch.zeros_like(words), types[at:]])[None]}
        if at:
            reference["pixel_values"] = next(pixels)[None]
        with torch.no_grad():
            expected = base(**reference).logits[0]
        keep = torch.ones(len(expected), dtype=torch.bool)
        keep[at:at + len(words)] = False
        torch.testing.assert_close(logits[row][kept], expected[keep], rtol=1e-5, atol=1e-5)


def test_qwen2_vl_prefix_splits_packed_pixels_and_splices_mm_types(family_dir, qwen_inputs) -> None:
    folder = family_dir("qwen2_vl")
    base = AutoModelForImageTextToText.from_pretrained(folder).eval()
    reference = AutoModelForImageTextToText.from_pretrained(folder).eval()
    torch.manual_seed(5)
    model = SafeModel(base, BridgeConfig(ProjectorConfig(audio_dim=24, hidden_size=32, k_max=16),
                                         FusionConfig(mode="prefix")))
    small = sample_image(_QwenSize(), 0)
    image = small.resize((56, 56))
    inputs = qwen_inputs(folder, list(QWEN_QUESTIONS), [image, small])  # two images with different grids
    assert inputs["pixel_values"].shape[0] == int(inputs["image_grid_thw"].prod(-1).sum())
    frames = torch.randn(2, 10, 24)
    ref_logits, ref_tokens = reference(**inputs).logits, reference.generate(**inputs, **GEN)
    for gate in (torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])):
        off = gate == 0
        logits = model(audio_frames=frames, k=4, gate=gate, **inputs).logits
        alone_ref = select_rows(inputs, off, media_token_ids(reference))  # gate-0 rows run as their own batch
        assert torch.equal(logits[off], reference(**alone_ref).logits)
        assert not torch.equal(logits[~off], ref_logits[~off])
        torch.testing.assert_close(logits[off], ref_logits[off], rtol=1e-5, atol=1e-5)
        generated = model.generate(audio_frames=frames, k=4, gate=gate, **inputs, **GEN)
        assert torch.equal(generated[off], reference.generate(**alone_ref, **GEN))
        row = int((~off).nonzero())
        alone = qwen_inputs(folder, [QWEN_QUESTIONS[row]], [[image, small][row]])
        single = model(audio_frames=frames[row:row + 1], k=4, **alone).logits
        n = alone["input_ids"].shape[1]
        torch.testing.assert_close(logits[row, -n:], single[0], rtol=1e-4, atol=1e-4)


def test_qwen2_vl_cross_attention_keeps_gate0_rows_exact_in_a_mixed_batch(family_dir, qwen_inputs) -> None:
    folder = family_dir("qwen2_vl")
    base = AutoModelForImageTextToText.from_pretrained(folder).eval()
    reference = AutoModelForImageTextToText.from_pretrained(folder).eval()
    torch.manual_seed(6)
    model = SafeModel(base, BridgeConfig(ProjectorConfig(audio_dim=24, hidden_size=32, k_max=16), FusionConfig()))
    with torch.no_grad():
        for block in model.fusion.blocks.values():
            block.out.weight.normal_()  # so that exactness is not a gift of the zero-initialised output
    small = sample_image(_QwenSize(), 0)
    inputs = qwen_inputs(folder, list(QWEN_QUESTIONS), [small.resize((56, 56)), small])
    frames = torch.randn(2, 10, 24)
    ref_logits, ref_tokens = reference(**inputs).logits, reference.generate(**inputs, **GEN)
    assert model.fusion.layer_indices
    for gate in (torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])):
        off = gate == 0
        logits = model(audio_frames=frames, k=4, gate=gate, **inputs).logits
        assert torch.equal(logits[off], ref_logits[off]) and not torch.equal(logits[~off], ref_logits[~off])
        generated = model.generate(audio_frames=frames, k=4, gate=gate, **inputs, **GEN)
        assert torch.equal(generated[off], ref_tokens[off])


class _QwenSize:
    """A stand-in processor carrying Qwen2-VL's image processor (its full processor needs torchvision)."""

    def __init__(self) -> None:
        from transformers import Qwen2VLImageProcessorPil
        self.image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56)


def test_sample_image_reads_qwen_pixel_budgets() -> None:
    assert sample_image(_QwenSize()).size == (28, 28)  # min_pixels 784 -> 28 x 28, not 784 x 784


def test_check_exits_2_on_a_processor_that_needs_torchvision(family_dir, clap_dir: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    assert main(["--base-vl", str(family_dir("qwen2_vl")), "--clap", str(clap_dir)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("stage_a-check: ")]
    assert len(lines) == 1 and "needs torchvision" in lines[0] and "pip install torchvision" in lines[0], lines


TRAINED = ("llava", "llava_next", "idefics3", "paligemma", "blip2", "gemma3")
TRAIN_RUN = {"steps": 2, "eval_every": 2, "log_every": 1, "warmup_steps": 1, "gate_warmup_steps": 1,
             "mix.batch_size": 4, "data.eval_size": 6, "data.test_size": 6, "eval_batch_size": 6, "retention": "kl",
             "k_choices": "[4]", "k_eval": 4}


@pytest.mark.parametrize("mode", ["cross_attention", "prefix"])
@pytest.mark.parametrize("family", TRAINED)
def test_stage_a_train_on_each_family(family: str, mode: str, family_dir, micro_paths: dict, tmp_path: Path) -> None:
    """The trainer's own loop on the micro world: it trains the bridge, gate 0 stays exact, a saved bridge reloads."""
    folder = family_dir(family)
    overrides = {**micro_paths, **TRAIN_RUN, "out_dir": str(tmp_path), "model.base_vl": str(folder),
                 "model.fusion.mode": mode, "model.fusion.layers_path": decoder_layers_path(
                     AutoModelForImageTextToText.from_pretrained(folder))}
    trainer = StageATrainer(load_config(TrainConfig, "stage_a_micro", {k: str(v) for k, v in overrides.items()}))
    before = {k: v.detach().clone() for k, v in trainer.model.trainable_state().items()}
    summary = trainer.run()
    after = trainer.model.trainable_state()
    assert summary["steps"] == 2 and any(not torch.equal(before[k], after[k]) for k in before)
    assert summary["gate0_max_abs_logit_diff"] == 0.0
    assert summary["inputs"]["no_image_policy"] == no_image_policy(trainer.setup.processor)
    split = trainer.setup.val
    batch = trainer.setup.collator.train_batch(split, list(range(4)))
    run = {"audio_frames": batch.frames, "frame_mask": batch.frame_mask, "k": 4, "gate": 1.0, **batch.inputs}
    reloaded = SafeModel.from_bridge(AutoModelForImageTextToText.from_pretrained(folder),
                                     trainer.model.save_bridge(tmp_path / "bridge"))
    gate, model = torch.tensor([0.0, 1.0, 0.0, 1.0]), trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(**run).logits, model(**run).logits)
        # The trainer measures gate 0 as a scalar (the bare path); per-row gate-0 rows beside gate-1 rows run the
        # trained bridge and must still equal the bare base (on their own rows in prefix mode, which splits the batch).
        mixed = model(**{**run, "gate": gate}).logits
        off = gate == 0
        alone = select_rows(batch.inputs, off, media_token_ids(model.base)) if mode == "prefix" else batch.inputs
        reference = model.base(**alone).logits
        assert torch.equal(mixed[off], reference if mode == "prefix" else reference[off])
        assert not torch.equal(mixed[~off], model.base(**batch.inputs).logits[~off])


def test_paligemma_answers_are_a_causal_suffix_after_the_separator(family_dir) -> None:
    """The answer follows PaliGemma's "\n" separator with token type 1, so prompt positions cannot see it."""
    folder = family_dir("paligemma")
    processor, base = AutoProcessor.from_pretrained(folder), AutoModelForImageTextToText.from_pretrained(folder).eval()
    prompt = build_prompt(processor, "what color is the circle?")
    newline = processor.tokenizer.convert_tokens_to_ids("\n")
    logits = []
    for answer in ("red", "blue"):
        inputs = model_inputs(processor, [prompt], [sample_image(processor)], padding_side="right", answers=[answer])
        tail = processor.tokenizer(f"{answer}</s>", add_special_tokens=False)["input_ids"]
        assert inputs["input_ids"][0, -3:].tolist() == [newline, *tail] and "labels" not in inputs
        assert inputs["token_type_ids"][0, -2:].eq(1).all() and inputs["token_type_ids"][0, :-2].eq(0).all()
        with torch.no_grad():
            logits.append(base(**inputs).logits[0, :-2])
    assert torch.equal(logits[0], logits[1])  # positions before the answer do not depend on it


def test_train_layers_path_override_reaches_the_adapter(micro_paths: dict, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    args = ["--preset", "stage_a_micro", "--out_dir", str(tmp_path), "--model.fusion.layers_path", "model.nope",
            *[x for k, v in micro_paths.items() for x in (f"--{k}", v)]]
    assert train_main(args) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert re.search("^stage_a-train: .*'model.nope' is not a non-empty module list.*--model.fusion.layers_path", err)
