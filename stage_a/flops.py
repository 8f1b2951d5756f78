"""Analytic FLOP counts of answering one question with SAFE, read from the model configs.

Every function returns FLOPs (not GFLOPs; divide by 1e9) for ONE sample (batch size 1, no padding).

Counting convention (the same as torch.utils.flop_counter.FlopCounterMode):
- a matmul (linear layer, bmm, attention's Q K^T and A V) of an (m x p) by (p x n) product costs 2 m p n;
  bias adds are free, so addmm counts like mm;
- attention over q queries and s keys of total width w (heads x head size) costs 4 q s w
  (2 q s w for Q K^T plus 2 q s w for A V), with no discount for causal or padding masks;
- a convolution costs 2 x (output elements) x (in_channels / groups) x kernel volume;
- elementwise ops, norms, softmax, activations, embeddings, pooling, interpolation: 0.
FlopCounterMode has no formula for CPU's fused attention kernel
(aten._scaled_dot_product_flash_attention_for_cpu) and counts it as 0; give it the same formula as the
GPU kernels (custom_mapping, see `CPU_SDPA`) to compare, as tests/stage_a/test_flops.py does.

Notation: lin(n, a, b) = 2 n a b (n rows through an a -> b linear); att(q, s, w) = 4 q s w.

Total for one question, S = prompt tokens (text + image placeholders), k audio tokens, T encoder frames:
  safe_flops = base(S) + lora(S)                              if k == 0 (no audio, no encoder)
             = base(S) + lora(S) + bridge(k, S, T) + encoder  if k >= 1
  lora(S) is there even without audio: the SafeModel wrapper evaluates the LoRA branches on every call and
  multiplies them by zero when no sample carries audio (exact, but not free), so that is what is charged.
  `flops_parts` gives the four terms separately. The bridge and LoRA terms depend only on a `BridgeShape` (the
  projector's Linear sizes, fusion mode, rank and block count, the LoRA Linear sizes): `BridgeShape.of` reads it
  from a built SafeModel, and a bridge described by numbers (a cost profile, stage_b.cost_profiles) is counted by
  the same `*_shape_flops` functions without building anything.

base(S) = vision + connector + LM(S):
  ViT (CLIP, BLIP-2 vision) with patches P = (image/patch)^2, N = P + 1 tokens (CLS), width d, MLP m, L layers:
      conv 2 P d c p^2 + L [4 lin(N, d, d) + 2 lin(N, d, m) + att(N, N, d)]
  LLaVA connector over its image features F (P, or N with strategy "full"), input width d x (feature layers):
      lin(F, d_in, H) + lin(F, H, H)
  BLIP-2 connector, Q query tokens of width q, Q-Former MLP m_q: every layer 4 lin(Q, q, q) + att(Q, Q, q)
      + 2 lin(Q, q, m_q), every cross_attention_frequency-th layer also 2 lin(Q, q, q) + 2 lin(N, d, q)
      + att(Q, N, q); then the language projection lin(Q, q, H)
  LM(S), L layers of width H, h heads of size e, g kv heads, MLP width I, vocabulary V:
      L [lin(S, H, h e) x 2 (q, o) + lin(S, H, g e) x 2 (k, v) + att(S, S, h e) + MLP] + lm_head
      Llama-style MLP (gate, up, down) = 3 lin(S, H, I); OPT MLP (fc1, fc2) = 2 lin(S, H, ffn_dim),
      plus OPT's project_in / project_out lin(S, E, H) each when word_embed_proj_dim E != H.
      lm_head = lin(S, H or E, V): a plain forward returns logits for every position (logits_to_keep=0);
      generate's prefill keeps only the last one (all_logits=False gives lin(1, ., V)).

bridge(k, S, T), audio width C, projector MLP dims D_0 = C + 16 (time code), D_1 .. D_n = H:
  projector = 2 k T C (segment-average weights (k x T) @ frames (T x C)) + sum_i lin(k, D_i, D_(i+1))
  cross_attention fusion, rank r, per block after each chosen decoder layer (FusionAdapter.layer_indices):
      lin(S, H, r) (q) + 2 lin(k, H, r) (k, v) + att(S, k, r) + lin(S, r, H) (out)
  prefix fusion: LM(S + k) - LM(S) (the k spliced positions through every LM layer, lm_head included)
  prefix fusion also runs LoRA over the k extra positions: lora(S + k) - lora(S)
lora(S), peft rank r on LM projections a -> b: lin(S, a, r) + lin(S, r, b) per wrapped module (0 without LoRA)
  Exactly affine in k >= 1 in cross_attention mode (a + b k); prefix mode adds attention terms quadratic in k.

encoder, one clip padded to the encoder's full window. CLAP's log-mel extraction runs in numpy (0); Whisper's
  feature extractor runs in torch when torch is installed, so for a shared.encoders.WhisperEncoder its mel filterbank
  matmul is added: lin(n_samples / hop, n_fft / 2 + 1, mel bins) (the STFT itself is an FFT: 0). A bare
  WhisperModel or config gets the network alone.
  CLAP HTSAT (transformers ClapModel.get_audio_features): patch conv 2 G^2 D_0 c p^2 on a G x G grid; stage i
      (width D_i = D_0 2^i, resolution R_i = G / 2^i, window w_i = min(window, R_i), W_i = ceil(R_i / w_i)^2
      windows of w_i^2 tokens, padded) costs per block 4 lin(W_i w_i^2, D_i, D_i) + W_i att(w_i^2, w_i^2, D_i)
      + 2 lin(R_i^2, D_i, mlp_ratio D_i); patch merging after every stage but the last lin(R_i^2 / 4, 4 D_i, 2 D_i);
      the audio projection head on the pooled vector lin(1, hidden, proj) + lin(1, proj, proj).
  Whisper encoder, M = max_source_positions, width d, mel bins n, ffn f, L layers:
      conv1 2 (2M) d n 3 + conv2 2 M d d 3 + L [4 lin(M, d, d) + att(M, M, d) + 2 lin(M, d, f)]
  both: CLAP + Whisper.

Deliberately left out: the decode steps after the prefill (generate's later tokens), batch padding,
the fused-CLAP variant (enable_fusion=True) and encoder-decoder (T5) BLIP-2 language models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import sdpa_flop_count

from stage_a.prefix import PrefixSplicer


def lin(rows: float, d_in: float, d_out: float) -> float:
    """FLOPs of `rows` vectors through a d_in -> d_out linear layer."""
    return 2.0 * rows * d_in * d_out


def att(queries: float, keys: float, width: float) -> float:
    """FLOPs of attention scores plus weighted values (Q K^T and A V) over all heads of total width."""
    return 4.0 * queries * keys * width


def cpu_sdpa_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FlopCounterMode formula for the CPU fused attention kernel, the same as for the GPU kernels."""
    return sdpa_flop_count(query, key, value)


CPU_SDPA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa_flops}


def _config(model_or_config: Any) -> Any:
    """The config of a model, or the object itself when it already is a config."""
    return getattr(model_or_config, "config", model_or_config)


def vit_flops(vision: Any) -> tuple[float, int]:
    """(FLOPs, tokens) of a CLIP / BLIP-2 ViT tower on one image."""
    d, p, size = vision.hidden_size, vision.patch_size, vision.image_size
    patches = (size // p) ** 2
    tokens = patches + (0 if "siglip" in getattr(vision, "model_type", "") else 1)
    conv = 2.0 * patches * d * getattr(vision, "num_channels", 3) * p * p
    layer = 4 * lin(tokens, d, d) + 2 * lin(tokens, d, vision.intermediate_size) + att(tokens, tokens, d)
    return conv + vision.num_hidden_layers * layer, tokens


def lm_flops(text: Any, positions: int, all_logits: bool = True) -> float:
    """A decoder-only LM (Llama-style or OPT) over `positions` tokens, lm_head included."""
    d, layers, heads = text.hidden_size, text.num_hidden_layers, text.num_attention_heads
    head_in, extra = d, 0.0
    if text.model_type == "opt":
        per_layer = 4 * lin(positions, d, d) + att(positions, positions, d) + 2 * lin(positions, d, text.ffn_dim)
        embed = getattr(text, "word_embed_proj_dim", None) or d
        if embed != d:
            head_in, extra = embed, 2 * lin(positions, embed, d)
    else:
        head = getattr(text, "head_dim", None) or d // heads
        kv = getattr(text, "num_key_value_heads", None) or heads
        per_layer = (2 * lin(positions, d, heads * head) + 2 * lin(positions, d, kv * head)
                     + att(positions, positions, heads * head) + 3 * lin(positions, d, text.intermediate_size))
    return layers * per_layer + extra + lin(positions if all_logits else 1, head_in, text.vocab_size)


def qformer_flops(config: Any, image_tokens: int) -> float:
    """BLIP-2's Q-Former over its query tokens, cross-attending to the image tokens, plus the language projection."""
    qf, queries = config.qformer_config, config.num_query_tokens
    q, enc = qf.hidden_size, qf.encoder_hidden_size
    total = 0.0
    for i in range(qf.num_hidden_layers):
        total += 4 * lin(queries, q, q) + att(queries, queries, q) + 2 * lin(queries, q, qf.intermediate_size)
        if i % qf.cross_attention_frequency == 0:
            total += 2 * lin(queries, q, q) + 2 * lin(image_tokens, enc, q) + att(queries, image_tokens, q)
    return total + lin(queries, q, config.text_config.hidden_size)


def base_prefill_flops(base_model_or_config: Any, prompt_tokens: int, all_logits: bool = True) -> float:
    """The base VL model's forward over one prompt of `prompt_tokens` text + image tokens (one image)."""
    config = _config(base_model_or_config)
    if config.model_type not in ("llava", "blip-2"):
        raise ValueError(f"base model type {config.model_type!r} is not counted; expected 'llava' or 'blip-2'")
    text = config.text_config
    vision, tokens = vit_flops(config.vision_config)
    if config.model_type == "blip-2":
        if not getattr(config, "use_decoder_only_language_model", True):
            raise ValueError("BLIP-2 with an encoder-decoder LM is not counted; expected a decoder-only LM (e.g. OPT)")
        connector = qformer_flops(config, tokens)
    else:
        layers = config.vision_feature_layer
        width = config.vision_config.hidden_size * (1 if isinstance(layers, int) else len(layers))
        patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
        features = patches if config.vision_feature_select_strategy == "default" else tokens
        connector = lin(features, width, text.hidden_size) + lin(features, text.hidden_size, text.hidden_size)
    return vision + connector + lm_flops(text, prompt_tokens, all_logits)


@dataclass(frozen=True)
class BridgeShape:
    """A SAFE bridge as the numbers its FLOPs depend on, read from a built SafeModel (`of`) or given as data."""

    audio_dim: int                          # C, the encoder's frame width
    projector: tuple[tuple[int, int], ...]  # (in, out) of each projector Linear, in order: (C + 16, ..), .., (.., H)
    fusion_mode: str                        # "cross_attention" | "prefix"
    fusion_rank: int                        # r of every fusion block (unused in prefix mode)
    fusion_blocks: int                      # fusion blocks (0 in prefix mode)
    lora: tuple[tuple[int, int], ...] = ()  # (in, out) of every lora_A and lora_B Linear in the LM

    @classmethod
    def of(cls, safe_model: nn.Module) -> BridgeShape:
        """The shape of a built SafeModel."""
        prefix = isinstance(safe_model.fusion, PrefixSplicer)
        return cls(audio_dim=safe_model.projector.config.audio_dim,
                   projector=tuple((m.in_features, m.out_features) for m in safe_model.projector.mlp
                                   if isinstance(m, nn.Linear)),
                   fusion_mode="prefix" if prefix else "cross_attention",
                   fusion_rank=safe_model.bridge_config.fusion.rank,
                   fusion_blocks=0 if prefix else len(safe_model.fusion.layer_indices),
                   lora=lora_shapes(safe_model.base))


def lora_shapes(base: nn.Module) -> tuple[tuple[int, int], ...]:
    """(in, out) of every peft LoRA branch Linear (lora_A and lora_B) in `base`; () without LoRA."""
    return tuple((m.in_features, m.out_features) for name, m in base.named_modules()
                 if isinstance(m, nn.Linear) and (".lora_A." in name or ".lora_B." in name))


def projector_shape_flops(shape: BridgeShape, k: int, audio_frames: int) -> float:
    """The audio projector: segment averaging over the frames, then its MLP over the k tokens."""
    return 2.0 * k * audio_frames * shape.audio_dim + sum(lin(k, d_in, d_out) for d_in, d_out in shape.projector)


def lora_shape_flops(shapes: tuple[tuple[int, int], ...], positions: int) -> float:
    """LoRA branches (lora_A then lora_B Linears of the given shapes) over `positions` tokens."""
    return sum(lin(positions, d_in, d_out) for d_in, d_out in shapes)


def bridge_shape_flops(shape: BridgeShape, text: Any, k: int, prompt_tokens: int, audio_frames: int,
                       all_logits: bool = True) -> float:
    """What audio with k tokens adds to the no-audio call on an LM of config `text`: projector, fusion (or prefix
    positions and their LoRA)."""
    if k == 0:
        return 0.0
    total = projector_shape_flops(shape, k, audio_frames)
    if shape.fusion_mode == "prefix":
        longer = prompt_tokens + k
        total += lm_flops(text, longer, all_logits) - lm_flops(text, prompt_tokens, all_logits)
        return total + lora_shape_flops(shape.lora, longer) - lora_shape_flops(shape.lora, prompt_tokens)
    s, hidden, rank = prompt_tokens, text.hidden_size, shape.fusion_rank
    block = lin(s, hidden, rank) + 2 * lin(k, hidden, rank) + att(s, k, rank) + lin(s, rank, hidden)
    return total + shape.fusion_blocks * block


def projector_flops(safe_model: nn.Module, k: int, audio_frames: int) -> float:
    """The audio projector of a built SafeModel (`projector_shape_flops`)."""
    return projector_shape_flops(BridgeShape.of(safe_model), k, audio_frames)


def lora_flops(base: nn.Module, positions: int) -> float:
    """peft LoRA branches (lora_A then lora_B) on LM projections over `positions` tokens; 0 without LoRA."""
    return lora_shape_flops(lora_shapes(base), positions)


def bridge_flops(safe_model: nn.Module, k: int, prompt_tokens: int, audio_frames: int,
                 all_logits: bool = True) -> float:
    """What audio with k tokens adds to a built SafeModel's no-audio call (`bridge_shape_flops`)."""
    return bridge_shape_flops(BridgeShape.of(safe_model), safe_model.base.config.text_config, k, prompt_tokens,
                              audio_frames, all_logits)


def clap_flops(config: Any) -> float:
    """CLAP's HTSAT audio tower (unfused) plus its audio projection head on one full-window clip."""
    a = getattr(config, "audio_config", config)
    if getattr(a, "enable_fusion", False):
        raise ValueError("fused CLAP (enable_fusion=True) is not counted; expected an unfused HTSAT")
    pair = lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v, v)  # noqa: E731
    (kh, kw), (sh, sw), spec = pair(a.patch_size), pair(a.patch_stride), a.spec_size
    gh, gw = (spec + 2 * ((kh - sh) // 2) - kh) // sh + 1, (spec + 2 * ((kw - sw) // 2) - kw) // sw + 1
    total = 2.0 * gh * gw * a.patch_embeds_hidden_size * a.patch_embed_input_channels * kh * kw
    for i, depth in enumerate(a.depths):
        dim, h, w = a.patch_embeds_hidden_size * 2 ** i, gh // 2 ** i, gw // 2 ** i
        win = a.window_size if min(h, w) > a.window_size else min(h, w)
        windows = math.ceil(h / win) * math.ceil(w / win)
        block = (4 * lin(windows * win * win, dim, dim) + windows * att(win * win, win * win, dim)
                 + 2 * lin(h * w, dim, int(a.mlp_ratio * dim)))
        total += depth * block
        if i < len(a.depths) - 1:
            total += lin(math.ceil(h / 2) * math.ceil(w / 2), 4 * dim, 2 * dim)
    return total + lin(1, a.hidden_size, a.projection_dim) + lin(1, a.projection_dim, a.projection_dim)


def whisper_flops(config: Any) -> float:
    """Whisper's encoder (two convs + transformer layers) over its full window of max_source_positions."""
    d, m, ffn = config.d_model, config.max_source_positions, config.encoder_ffn_dim
    convs = 2.0 * (2 * m) * d * config.num_mel_bins * 3 + 2.0 * m * d * d * 3
    return convs + config.encoder_layers * (4 * lin(m, d, d) + att(m, m, d) + 2 * lin(m, d, ffn))


def whisper_mel_flops(extractor: Any) -> float:
    """WhisperFeatureExtractor's torch front end: the mel filterbank matmul over the padded window's STFT frames."""
    return lin(extractor.n_samples // extractor.hop_length, extractor.n_fft // 2 + 1, extractor.feature_size)


def encoder_flops(encoder: Any, extractor: Any = None) -> float:
    """A frozen audio encoder (shared.encoders Clap/Whisper/Both, a ClapModel, a WhisperModel or their configs).

    `extractor`: the feature extractor run before the network, when `encoder` does not hold it (e.g. a
    WhisperFeatureExtractor beside a WhisperConfig); shared.encoders.WhisperEncoder holds its own."""
    if hasattr(encoder, "parts"):
        return sum(encoder_flops(part) for part in encoder.parts)
    extractor = extractor or getattr(encoder, "extractor", None)  # WhisperEncoder runs its mel front end in torch
    front = whisper_mel_flops(extractor) if hasattr(extractor, "mel_filters") else 0.0
    for attr in ("model", "encoder"):  # ClapEncoder.model, WhisperEncoder.encoder, WhisperModel.encoder
        inner = getattr(encoder, attr, None)
        if isinstance(inner, nn.Module):
            encoder = inner
            break
    config = _config(encoder)
    audio = getattr(config, "audio_config", config)
    if hasattr(audio, "spec_size") and hasattr(audio, "depths"):
        return clap_flops(audio)
    if hasattr(config, "max_source_positions") and hasattr(config, "d_model"):
        return front + whisper_flops(config)
    raise ValueError(f"cannot count the FLOPs of {type(encoder).__name__}; expected a CLAP or Whisper encoder")


def flops_parts(base_config: Any, shape: BridgeShape, encoder: float, k: int, prompt_tokens: int,
                audio_frames: int, all_logits: bool = True) -> dict[str, float]:
    """One question by part: "base" prefill, "lora" branches, and with k >= 1 "bridge" and `encoder` (its FLOPs)."""
    audio = k >= 1
    return {"base": base_prefill_flops(base_config, prompt_tokens, all_logits),
            "lora": lora_shape_flops(shape.lora, prompt_tokens),
            "bridge": bridge_shape_flops(shape, base_config.text_config, k, prompt_tokens, audio_frames, all_logits),
            "encoder": encoder if audio else 0.0}


def safe_flops(safe_model: nn.Module, encoder: Any, k: int, prompt_tokens: int, audio_frames: int,
               all_logits: bool = True) -> float:
    """One question: the no-audio call (base prefill + LoRA branches), plus bridge and encoder when k >= 1."""
    parts = flops_parts(safe_model.base.config, BridgeShape.of(safe_model), encoder_flops(encoder) if k else 0.0, k,
                        prompt_tokens, audio_frames, all_logits)
    return sum(parts.values())
