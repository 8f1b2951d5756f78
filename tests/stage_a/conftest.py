"""Shared fixtures for Stage A tests: tiny checkpoints with processors, saved like hub models.

LLaVA (the embedded world's), BLIP-2, and real VLM families (LLaVA-NeXT, Qwen2-VL, Idefics3, PaliGemma, Gemma3):
each family builder saves a real transformers model (hidden size 32, 2 LM layers) and its real processor
(PIL image backend, a word-level tokenizer with the special tokens the processor needs, a chat template in
the common shape where the family has one) with save_pretrained, so `from_pretrained` loads them like hub models.
`family_dir` builds them with vocabularies covering the micro world's questions and answers, so Stage A trains on them.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    BlipImageProcessorPil,
    OPTConfig,
    PreTrainedTokenizerFast,
)

from shared.world.spec import WorldSpec
from shared.world.vl_model import VLModelConfig, build_base_vl, build_processor, format_prompt

QUERIES = 4
WORDS = ["question:", "answer:", "what", "color", "is", "the", "circle?"]


def save_tiny_blip2(path: Path, words: list[str] = WORDS) -> Path:
    """Write model and processor to path; returns path."""
    torch.manual_seed(0)
    fast = tokenizer([], words)
    processor = Blip2Processor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                               tokenizer=fast, num_query_tokens=QUERIES)
    image_token = len(fast)  # Blip2Processor appends "<image>" to the vocabulary
    config = Blip2Config(
        vision_config=Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=16),
        qformer_config=Blip2QFormerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, encoder_hidden_size=32),
        text_config=OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=2,
                              vocab_size=image_token + 1, word_embed_proj_dim=32, max_position_embeddings=64,
                              pad_token_id=0, bos_token_id=1, eos_token_id=2),
        num_query_tokens=QUERIES, image_token_index=image_token,
    )
    Blip2ForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def blip2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_blip2(tmp_path_factory.mktemp("blip2"))


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaVA (3 LM layers, hidden size 32) with the embedded world's processor."""
    torch.manual_seed(0)
    spec = WorldSpec(size="micro")
    path = tmp_path_factory.mktemp("llava")
    build_base_vl(spec, VLModelConfig(vision_dim=32, text_dim=32, vision_layers=1, text_layers=3)).save_pretrained(path)
    build_processor(spec).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def llava_inputs() -> dict:
    """Two (image, question) pairs processed for the tiny LLaVA."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(2)]
    prompts = [format_prompt(q) for q in ("what color is the circle?", "is the sound high or low?")]
    processor = build_processor(WorldSpec(size="micro"))
    return dict(processor(images=images, text=prompts, return_tensors="pt", padding=True))


@pytest.fixture(scope="session")
def clap_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained CLAP of the embedded world, saved with its processor."""
    from shared.world.audio_model import build_clap
    from shared.world.clap_train import ClapTrainConfig

    path = tmp_path_factory.mktemp("clap")
    model, processor = build_clap(WorldSpec(size="micro"), ClapTrainConfig())
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def manifest_words(data_dir: Path) -> list[str]:
    """Every question and answer of the sample manifests in data_dir (train, val, test)."""
    words = []
    for split in ("train", "val", "test"):
        for line in (data_dir / f"{split}.jsonl").read_text().splitlines():
            sample = json.loads(line)
            words += [sample["question"], *sample["answers"]]
    return words


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory: pytest.TempPathFactory, llava_dir: Path, micro_world: Path):
    """family name -> folder of its tiny checkpoint, built on first use; its vocabulary covers the micro world's
    questions and answers (the LLaVA is the world's own, whose tokenizer is the world's)."""
    built = {"llava": llava_dir}
    words = [*FAMILY_WORDS, *manifest_words(micro_world / "data")]

    def get(name: str) -> Path:
        if name not in built:
            builder = save_tiny_blip2 if name == "blip2" else globals()[f"save_{name}"]
            built[name] = builder(tmp_path_factory.mktemp(name), words)
        return built[name]
    return get


@pytest.fixture(scope="session")
def qwen_inputs():
    """qwen2_vl_inputs, for tests (Qwen2VLProcessor itself needs torchvision)."""
    return qwen2_vl_inputs


FAMILY_WORDS = ["what", "color", "is", "the", "circle?", "how", "many", "times", "does", "sound", "repeat?",
                "question:", "answer:", "user", "assistant", "answer", "en", "red", "blue", "user:", "assistant:",
                "Question", "Answer"]
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 2, "max_position_embeddings": 512}
# A chat template in the common shape: user turn with {"type": "image"} / {"type": "text"} parts.
CHAT = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
        "{{ IMAGE }}{% else %}{{ c['text'] }}{% endif %} {% endfor %}{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}")


def split_words(texts: list[str]) -> list[str]:
    """The distinct words of texts, split like the world's tokenizer (whitespace, punctuation apart)."""
    split = pre_tokenizers.Whitespace()
    return list(dict.fromkeys(word for text in texts for word, _ in split.pre_tokenize_str(text)))


def tokenizer(specials: list[str], words: list[str], bos: str = "<s>", **special_map: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the words of `words` plus the given special tokens (matched anywhere in the text)."""
    vocab = ["<pad>", bos, "</s>", "<unk>", *specials, *split_words(words)]
    model = Tokenizer(models.WordLevel({w: i for i, w in enumerate(dict.fromkeys(vocab))}, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<pad>", bos_token=bos, eos_token="</s>",
                                   unk_token="<unk>", additional_special_tokens=specials, **special_map)


def chat(image: str) -> str:
    return CHAT.replace("{{ IMAGE }}", image)


def _save(model: torch.nn.Module, processor, path: Path) -> Path:
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_llava_next(path: Path, words: list[str] = FAMILY_WORDS) -> Path:
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessorPil, LlavaNextProcessor)
    torch.manual_seed(0)
    tok = tokenizer(["<image>"], words)
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                 image_grid_pinpoints=[[32, 32]])
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=16,
                                   num_additional_image_tokens=1,
                                   vision_feature_select_strategy="default", chat_template=chat("<image>"))
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=32, patch_size=16),
        text_config=LlamaConfig(vocab_size=len(tok), pad_token_id=0, bos_token_id=1, eos_token_id=2, **TEXT),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=[[32, 32]],
        vision_feature_select_strategy="default", vision_feature_layer=-1)
    return _save(LlavaNextForConditionalGeneration(config), processor, path)


QWEN_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def save_qwen2_vl(path: Path, words: list[str] = FAMILY_WORDS) -> Path:
    """Model, tokenizer and image processor; Qwen2VLProcessor itself cannot be built here (it needs torchvision)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil
    torch.manual_seed(0)
    tok = tokenizer(QWEN_SPECIALS, words)
    ids = {name: tok.convert_tokens_to_ids(name) for name in QWEN_SPECIALS}
    config = Qwen2VLConfig(
        text_config={**TEXT, "vocab_size": len(tok), "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
                     "rope_parameters": {"rope_type": "default", "mrope_section": [2, 2, 4], "rope_theta": 10000.0}},
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "patch_size": 14,
                       "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        pad_token_id=0, bos_token_id=1, eos_token_id=2)
    Qwen2VLForConditionalGeneration(config).save_pretrained(path)
    tok.save_pretrained(path)
    Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56).save_pretrained(path)
    (path / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}))
    return path


def qwen2_vl_inputs(path: Path, questions: list[str], images: list) -> dict:
    """What Qwen2VLProcessor returns (left-padded), built from its tokenizer and image processor."""
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil
    tok = AutoTokenizer.from_pretrained(path)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    present = [image for image in images if image is not None]
    vision = dict(image_processor(images=present, return_tensors="pt")) if present else {}
    counts = iter((vision["image_grid_thw"].prod(-1) // image_processor.merge_size ** 2).tolist() if present else [])
    texts = [f"user: <|vision_start|> {'<|image_pad|> ' * next(counts)}<|vision_end|> {q} assistant:"
             if image is not None else f"user: {q} assistant:" for q, image in zip(questions, images)]
    tok.padding_side = "left"
    text = dict(tok(texts, return_tensors="pt", padding=True))
    text["mm_token_type_ids"] = (text["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>")).long()
    return {**text, **vision}


def save_idefics3(path: Path, words: list[str] = FAMILY_WORDS) -> Path:
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                              Idefics3Processor, Idefics3VisionConfig, LlamaConfig)
    torch.manual_seed(0)
    tok = tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"], words)
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 32}, max_image_size={"longest_edge": 32},
                                                do_image_splitting=False)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=1,
                                  chat_template=chat("<image>"))
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=16),
        text_config=LlamaConfig(vocab_size=len(tok), pad_token_id=0, bos_token_id=1, eos_token_id=2, **TEXT),
        scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=0)
    return _save(Idefics3ForConditionalGeneration(config), processor, path)


def save_paligemma(path: Path, words: list[str] = FAMILY_WORDS) -> Path:
    from transformers import (GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor,
                              SiglipImageProcessorPil, SiglipVisionConfig)
    torch.manual_seed(0)
    tok = tokenizer(["<image>", "\n"], words, bos="<bos>")  # "\n" ends the prompt, as in Gemma's vocabulary
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    image_processor.image_seq_length = 4
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=32, patch_size=16, projection_dim=32),
        text_config=GemmaConfig(vocab_size=len(processor.tokenizer), head_dim=16, pad_token_id=0, bos_token_id=1,
                                eos_token_id=2, **TEXT),
        image_token_index=tok.convert_tokens_to_ids("<image>"), projection_dim=32)
    config.text_config.num_image_tokens = 4
    return _save(PaliGemmaForConditionalGeneration(config), processor, path)


GEMMA3_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}


def save_gemma3(path: Path, words: list[str] = FAMILY_WORDS) -> Path:
    """Gemma3: a SigLIP tower pooled to 4 image tokens, one sliding and one global LM layer; the chat template's
    image placeholder is the boi token, which the processor expands to boi, 4 image tokens (token type 1), eoi."""
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor,
                              Gemma3TextConfig, SiglipVisionConfig)
    torch.manual_seed(0)
    tok = tokenizer(list(GEMMA3_TOKENS.values()), words, bos="<bos>", **GEMMA3_TOKENS)  # tok.boi_token etc.
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
                                tokenizer=tok, image_seq_length=4, chat_template=chat(GEMMA3_TOKENS["boi_token"]))
    ids = {name: tok.convert_tokens_to_ids(token) for name, token in GEMMA3_TOKENS.items()}
    config = Gemma3Config(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=32, patch_size=16),
        text_config=Gemma3TextConfig(vocab_size=len(tok), head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                                     layer_types=["sliding_attention", "full_attention"], pad_token_id=0,
                                     bos_token_id=1, eos_token_id=2, **TEXT),
        mm_tokens_per_image=4, boi_token_index=ids["boi_token"], eoi_token_index=ids["eoi_token"],
        image_token_index=ids["image_token"])
    return _save(Gemma3ForConditionalGeneration(config), processor, path)
