"""The embedded world's audio encoder: a small LAION-CLAP-architecture `ClapModel` and its processor.

The model is transformers' `ClapModel` (HTSAT audio tower + RoBERTa-style text tower) built from
config with random weights; the processor is a `ClapProcessor` made of a `ClapFeatureExtractor`
set up for the world's clips and a word-level caption tokenizer with RoBERTa's special ids.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapProcessor,
    ClapTextConfig,
    PreTrainedTokenizerFast,
)

from shared.world.scenes import Scene, SoundEvent
from shared.world.sounds import caption
from shared.world.spec import MAX_REPEATS, PITCHES, SOUND_OF_SHAPE, WorldSpec

if TYPE_CHECKING:
    from shared.world.clap_train import ClapTrainConfig

# RoBERTa's special tokens and ids, which ClapTextConfig's defaults (bos=0, pad=1, eos=2) expect.
SPECIAL_TOKENS: dict[str, int] = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
# HTSAT settings that learn on this world (field notes): others fail in the relative position bias.
SPEC_SIZE = 128
WINDOW_SIZE = 4
NUM_MEL_BINS = 32
FREQUENCY_MIN = 50.0
FREQUENCY_MAX_FRACTION = 0.45
HOP_SECONDS = 0.01
FFT_SECONDS = 0.025
MAX_TOKENS = 30


def caption_events() -> dict[str, tuple[SoundEvent, ...]]:
    """Every caption the world can produce (one event, or two of distinct kinds) mapped to its events."""
    kinds = tuple(SOUND_OF_SHAPE.values())
    events = [SoundEvent(k, p, r) for k in kinds for p in PITCHES for r in range(1, MAX_REPEATS + 1)]
    sequences = [(e,) for e in events] + [(a, b) for a in events for b in events if a.kind != b.kind]
    return {caption(Scene("train", 0, (), seq, 0.0)): seq for seq in sequences}


def all_captions() -> list[str]:
    """Every caption the world can produce, in a fixed order."""
    return list(caption_events())


def caption_vocabulary() -> list[str]:
    """The caption words, sorted; derived from the world's constants, not from data files."""
    return sorted({word for text in all_captions() for word in text.split()})


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level caption tokenizer: lowercased, whitespace-split, wrapped as `<s> ... </s>`."""
    vocab = dict(SPECIAL_TOKENS)
    for word in caption_vocabulary():
        vocab[word] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        special_tokens=[("<s>", SPECIAL_TOKENS["<s>"]), ("</s>", SPECIAL_TOKENS["</s>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=MAX_TOKENS,
    )


def build_feature_extractor(spec: WorldSpec) -> ClapFeatureExtractor:
    """Log-mel front end for the world's clips: no repeat-padding, no fusion, clips of exactly clip_seconds."""
    if not float(spec.clip_seconds).is_integer():
        raise ValueError(
            f"spec.clip_seconds is {spec.clip_seconds}; expected a whole number of seconds "
            "(ClapFeatureExtractor's max_length_s)"
        )
    sr = spec.sample_rate
    samples = int(spec.clip_seconds) * sr
    spec_width = SPEC_SIZE * (SPEC_SIZE // NUM_MEL_BINS)
    hop = max(round(HOP_SECONDS * sr), math.ceil(samples / (spec_width - 1)))
    return ClapFeatureExtractor(
        feature_size=NUM_MEL_BINS,
        sampling_rate=sr,
        hop_length=hop,
        max_length_s=int(spec.clip_seconds),
        fft_window_size=2 ** math.ceil(math.log2(FFT_SECONDS * sr)),
        frequency_min=FREQUENCY_MIN,
        frequency_max=FREQUENCY_MAX_FRACTION * sr,
        truncation="rand_trunc",
        padding="pad",
    )


def build_clap(spec: WorldSpec, cfg: ClapTrainConfig) -> tuple[ClapModel, ClapProcessor]:
    """A randomly initialised small ClapModel and its ClapProcessor; seeded by cfg.seed."""
    tokenizer = build_tokenizer()
    stages = len(cfg.audio_depths)
    if len(cfg.audio_heads) != stages:
        raise ValueError(
            f"audio_heads has {len(cfg.audio_heads)} entries and audio_depths {stages}; "
            "expected one head count per stage"
        )
    text_config = ClapTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_dim,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        intermediate_size=cfg.text_mlp_ratio * cfg.text_dim,
        max_position_embeddings=tokenizer.model_max_length + SPECIAL_TOKENS["<pad>"] + 1,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
    )
    audio_config = ClapAudioConfig(
        window_size=WINDOW_SIZE,
        num_mel_bins=NUM_MEL_BINS,
        spec_size=SPEC_SIZE,
        patch_embeds_hidden_size=cfg.audio_dim,
        depths=list(cfg.audio_depths),
        num_attention_heads=list(cfg.audio_heads),
        hidden_size=cfg.audio_dim * 2 ** (stages - 1),
        hidden_dropout_prob=cfg.dropout,
        mlp_ratio=cfg.audio_mlp_ratio,
        enable_fusion=False,
    )
    config = ClapConfig(
        text_config=text_config.to_dict(), audio_config=audio_config.to_dict(), projection_dim=cfg.projection_dim,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = ClapModel(config)
    # HTSAT has no absolute position embedding, so a patch cannot tell which mel band it sits in;
    # a fixed ramp on the input BatchNorm's shift gives every band its own offset (a frequency code):
    # measured on the default world, pitch retrieval after 500 steps went from chance to 0.68 with it.
    with torch.no_grad():
        model.audio_model.audio_encoder.batch_norm.bias.copy_(
            torch.linspace(-cfg.frequency_code, cfg.frequency_code, NUM_MEL_BINS)
        )
    processor = ClapProcessor(feature_extractor=build_feature_extractor(spec), tokenizer=tokenizer)
    return model, processor
