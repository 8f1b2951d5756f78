"""The embedded world's Whisper: a small `WhisperForConditionalGeneration` captioner and its front end.

The model is transformers' Whisper (conv stem + encoder with fixed sinusoidal positions, decoder with
cross-attention) built from config with random weights. Its decoder writes the world's clip captions
with the world's word-level caption tokenizer (`shared.world.audio_model.build_tokenizer`); its front
end is a `WhisperFeatureExtractor` whose window is the world's clip length. Stage A uses the encoder
alone (`shared.encoders.WhisperEncoder` loads the folder as a `WhisperModel`, as it would a hub id).

Whisper's log-mels of the world's noisy clips sit in a narrow band far from zero (mean 0.67, std 0.13
on the default world), and from that input the captioner never learnt to use the audio: its loss
stayed at the caption prior. So it trains with its first convolution seeing each mel bin standardised
over the train clips (`StandardizedConv1d`), which is folded into a plain `Conv1d` before saving: the
saved model is a standard Whisper fed by the standard front end, and gives the same outputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerFast, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

from shared.world.audio_model import SPECIAL_TOKENS, build_tokenizer
from shared.world.spec import WorldSpec

if TYPE_CHECKING:
    from shared.world.whisper_train import WhisperTrainConfig

# Whisper's two convolutions: the second has stride 2, so one encoder frame spans two mel hops.
CONV_STRIDE = 2
FFT_SECONDS = 0.025
MAX_TARGET_TOKENS = 16  # the longest caption ("five high chirps then five low buzzes") is 7 words + </s>


def build_feature_extractor(spec: WorldSpec, cfg: WhisperTrainConfig) -> WhisperFeatureExtractor:
    """Whisper's log-mel front end with a window of exactly the world's clip length."""
    if not float(spec.clip_seconds).is_integer():
        raise ValueError(f"spec.clip_seconds is {spec.clip_seconds}; expected a whole number of seconds "
                         "(WhisperFeatureExtractor's chunk_length)")
    hop = round(cfg.hop_seconds * spec.sample_rate)
    samples = int(spec.clip_seconds) * spec.sample_rate
    if hop < 1 or samples % (hop * CONV_STRIDE):
        raise ValueError(f"whisper.hop_seconds is {cfg.hop_seconds}; expected a hop that divides the "
                         f"{spec.clip_seconds} s clip into an even number of mel frames at {spec.sample_rate} Hz")
    return WhisperFeatureExtractor(feature_size=cfg.num_mel_bins, sampling_rate=spec.sample_rate, hop_length=hop,
                                   chunk_length=int(spec.clip_seconds), n_fft=round(FFT_SECONDS * spec.sample_rate))


def build_whisper(spec: WorldSpec, cfg: WhisperTrainConfig) -> tuple[WhisperForConditionalGeneration,
                                                                      WhisperFeatureExtractor, PreTrainedTokenizerFast]:
    """A randomly initialised small Whisper captioner, its feature extractor and tokenizer; seeded by cfg.seed."""
    extractor = build_feature_extractor(spec, cfg)
    tokenizer = build_tokenizer()
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=cfg.num_mel_bins,
        d_model=cfg.d_model,
        encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.heads,
        decoder_attention_heads=cfg.heads,
        encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim,
        max_source_positions=extractor.nb_max_frames // CONV_STRIDE,
        max_target_positions=MAX_TARGET_TOKENS,
        pad_token_id=SPECIAL_TOKENS["<pad>"],
        bos_token_id=SPECIAL_TOKENS["<s>"],
        eos_token_id=SPECIAL_TOKENS["</s>"],
        decoder_start_token_id=SPECIAL_TOKENS["<s>"],
        suppress_tokens=None,
        begin_suppress_tokens=None,
        dropout=cfg.dropout,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = WhisperForConditionalGeneration(config)
    return model, extractor, tokenizer


class StandardizedConv1d(nn.Conv1d):
    """A Conv1d trained as if its input were standardised per channel ((x - mean) / std), foldable into a plain one."""

    def __init__(self, conv: nn.Conv1d, mean: torch.Tensor, std: torch.Tensor) -> None:
        if mean.shape != (conv.in_channels,) or std.shape != (conv.in_channels,):
            raise ValueError(f"mean {tuple(mean.shape)} and std {tuple(std.shape)}; expected ({conv.in_channels},) "
                             "each, one per input channel")
        if not bool((std > 0).all()):
            raise ValueError(f"std has {int((std <= 0).sum())} channels <= 0; expected every channel to vary")
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        self.load_state_dict(conv.state_dict())
        self.register_buffer("input_mean", mean.detach().clone(), persistent=False)
        self.register_buffer("input_std", std.detach().clone(), persistent=False)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the plain conv on raw inputs that computes the same function."""
        weight = self.weight / self.input_std[None, :, None]
        return weight, self.bias - (weight * self.input_mean[None, :, None]).sum(dim=(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.folded()
        return F.conv1d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


def standardize_input(model: WhisperForConditionalGeneration, features: torch.Tensor) -> None:
    """Make the encoder's first conv see its input (features (N, mels, frames)) standardised per mel bin."""
    encoder = model.model.encoder
    encoder.conv1 = StandardizedConv1d(encoder.conv1, features.mean(dim=(0, 2)), features.std(dim=(0, 2)))


def fold_input_standardization(model: WhisperForConditionalGeneration) -> None:
    """Replace the StandardizedConv1d by the plain Conv1d it computes on raw inputs."""
    encoder = model.model.encoder
    conv = encoder.conv1
    if not isinstance(conv, StandardizedConv1d):
        raise ValueError(f"encoder.conv1 is a {type(conv).__name__}; expected a StandardizedConv1d to fold")
    plain = nn.Conv1d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
    with torch.no_grad():
        weight, bias = conv.folded()
        plain.weight.copy_(weight)
        plain.bias.copy_(bias)
    plain.requires_grad_(conv.weight.requires_grad)
    encoder.conv1 = plain
