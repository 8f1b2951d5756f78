"""Analytic FLOP counts (stage_a.flops) against torch's FlopCounterMode on real tiny models, batch size 1."""

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoProcessor,
    Blip2ForConditionalGeneration,
    LlavaForConditionalGeneration,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from shared.config import load_config
from shared.encoders import BothEncoder, ClapEncoder, EncoderSettings, WhisperEncoder, build_encoder
from stage_a.config import TrainConfig
from stage_a.flops import (
    CPU_SDPA,
    base_prefill_flops,
    bridge_flops,
    encoder_flops,
    lora_flops,
    projector_flops,
    safe_flops,
    whisper_flops,
    whisper_mel_flops,
)
from stage_a.fusion import FusionConfig
from stage_a.lora import LoraSettings
from stage_a.model import BridgeConfig, SafeModel, lm_hidden_size
from stage_a.projector import ProjectorConfig
from stage_a.prompting import build_prompt, sample_image
from stage_a.setup import build_setup

TOL = 0.10
KS = (4, 8, 16)
QUESTION = "what color is the circle?"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def profile(fn: Callable[[], object]) -> int:
    """FlopCounterMode's total for fn, with CPU fused attention counted like the GPU kernels."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def assert_close(analytic: float, measured: float, what: str) -> None:
    ratio = analytic / measured
    assert abs(ratio - 1) <= TOL, f"{what}: analytic {analytic:.6g} vs profiler {measured:.6g} FLOPs, ratio {ratio:.4f}"


def one_prompt(processor) -> dict:
    """One (image, question) pair in the base model's own prompt convention, batch size 1 (no padding)."""
    return dict(processor(images=[sample_image(processor, 0)], text=[build_prompt(processor, QUESTION)],
                          return_tensors="pt"))


@pytest.fixture(scope="module")
def micro(micro_paths: dict[str, str]) -> tuple:
    """The micro world's SAFE model (stage_a_micro config, LoRA included), its CLAP encoder and one input."""
    torch.manual_seed(0)
    setup = build_setup(load_config(TrainConfig, "stage_a_micro", micro_paths), splits=())
    encoder = build_encoder("clap", micro_paths["model.clap"], None)
    sr = encoder.feature_extractor.sampling_rate
    wave = np.random.default_rng(0).normal(0, 0.1, int(encoder.max_seconds * sr)).astype(np.float32)
    frames, mask = encoder.encode([wave], sr)
    return setup.model.eval(), encoder, one_prompt(setup.processor), frames, mask, wave, sr


def test_micro_world_base_bridge_and_encoder_match_the_profiler(micro) -> None:
    model, encoder, inputs, frames, mask, wave, sr = micro
    prompt, audio_frames = inputs["input_ids"].shape[1], frames.shape[1]
    measured_encoder = profile(lambda: encoder.encode([wave], sr))
    assert_close(encoder_flops(encoder), measured_encoder, "micro CLAP encoder")
    # No audio: the base plus the LoRA branches, which the wrapper evaluates (times zero) on every call.
    no_audio = profile(lambda: model(**inputs))
    assert lora_flops(model.base, prompt) > 0
    assert safe_flops(model, encoder, 0, prompt, audio_frames) == pytest.approx(no_audio, rel=1e-9)
    assert safe_flops(model, encoder, 0, prompt, audio_frames) == pytest.approx(
        base_prefill_flops(model.base, prompt) + lora_flops(model.base, prompt), rel=1e-12)
    for k in KS:
        measured = profile(lambda: model(audio_frames=frames, frame_mask=mask, k=k, gate=1.0, **inputs))
        assert_close(safe_flops(model, encoder, k, prompt, audio_frames), measured + measured_encoder, f"micro k={k}")
        assert_close(bridge_flops(model, k, prompt, audio_frames), measured - no_audio, f"micro bridge k={k}")


def _tiny_safe(kind: str, path: Path, mode: str, lora: int) -> tuple[SafeModel, dict]:
    torch.manual_seed(0)
    cls = LlavaForConditionalGeneration if kind == "llava" else Blip2ForConditionalGeneration
    base = cls.from_pretrained(path).eval()
    bridge = BridgeConfig(ProjectorConfig(audio_dim=24, hidden_size=lm_hidden_size(base), k_max=16, depth=3),
                          FusionConfig(mode=mode, rank=8, placement="all"), LoraSettings(rank=lora))
    return SafeModel(base, bridge).eval(), one_prompt(AutoProcessor.from_pretrained(path))


@pytest.mark.parametrize("lora", [0, 4])
@pytest.mark.parametrize("mode", ["cross_attention", "prefix"])
@pytest.mark.parametrize("kind", ["llava", "blip2"])
def test_tiny_llava_and_blip2_in_both_fusion_modes(kind: str, mode: str, lora: int, llava_dir: Path,
                                                   blip2_dir: Path) -> None:
    model, inputs = _tiny_safe(kind, llava_dir if kind == "llava" else blip2_dir, mode, lora)
    prompt, frames = inputs["input_ids"].shape[1], torch.randn(1, 10, 24)
    bare = base_prefill_flops(model.base, prompt)
    call = bare + lora_flops(model.base, prompt)
    assert_close(bare, profile(lambda: model.base(**inputs)) - lora_flops(model.base, prompt), f"{kind} base")
    assert_close(call, profile(lambda: model(**inputs)), f"{kind} no-audio call")
    for k in (1, *KS):
        measured = profile(lambda: model(audio_frames=frames, k=k, gate=1.0, **inputs))
        assert_close(call + bridge_flops(model, k, prompt, 10), measured, f"{kind} {mode} lora={lora} k={k}")
    assert_close(projector_flops(model, 5, 10), profile(lambda: model.projector(frames, 5)), f"{kind} projector")


def test_generate_prefill_keeps_only_the_last_logit(llava_dir: Path, blip2_dir: Path) -> None:
    for cls, path in ((LlavaForConditionalGeneration, llava_dir), (Blip2ForConditionalGeneration, blip2_dir)):
        base = cls.from_pretrained(path).eval().requires_grad_(False)  # frozen, as SAFE keeps it
        inputs = one_prompt(AutoProcessor.from_pretrained(path))
        measured = profile(lambda: base.generate(**inputs, max_new_tokens=1, do_sample=False))
        analytic = base_prefill_flops(base.config, inputs["input_ids"].shape[1], all_logits=False)
        assert_close(analytic, measured, f"{cls.__name__} generate prefill")


def _tiny_whisper() -> WhisperModel:
    torch.manual_seed(0)
    config = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                           max_source_positions=200, max_target_positions=32, vocab_size=100,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    return WhisperModel(config).eval()


def test_whisper_and_both_encoders(micro_paths: dict[str, str], tmp_path: Path) -> None:
    model = _tiny_whisper()
    measured = profile(lambda: model.encoder(torch.zeros(1, 80, 400)))
    assert_close(encoder_flops(model), measured, "tiny Whisper encoder")
    assert encoder_flops(model.config) == whisper_flops(model.config) == encoder_flops(model.encoder)
    model.save_pretrained(tmp_path)
    WhisperFeatureExtractor(feature_size=80, chunk_length=4).save_pretrained(tmp_path)
    whisper = WhisperEncoder(EncoderSettings(str(tmp_path)))
    both = BothEncoder(ClapEncoder(EncoderSettings(micro_paths["model.clap"])), whisper)
    clip = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)  # 1 s, padded to each window
    assert_close(encoder_flops(whisper), profile(lambda: whisper.encode([clip], 16000)), "Whisper encoder object")
    assert_close(encoder_flops(both), profile(lambda: both.encode([clip], 16000)), "both encoders")
    assert encoder_flops(both) == encoder_flops(both.parts[0]) + encoder_flops(whisper)
    # The torch mel front end (filterbank matmul) is what separates the encoder object from the bare network.
    assert encoder_flops(whisper) == encoder_flops(model) + whisper_mel_flops(whisper.extractor)


def test_flops_grow_with_k_and_the_cross_attention_bridge_is_affine_in_k(llava_dir: Path) -> None:
    model, inputs = _tiny_safe("llava", llava_dir, "cross_attention", 4)
    prompt = inputs["input_ids"].shape[1]
    bridge = [bridge_flops(model, k, prompt, 10) for k in range(1, 17)]
    step = bridge[1] - bridge[0]
    assert step > 0 and bridge_flops(model, 0, prompt, 10) == 0.0
    assert all(b == pytest.approx(bridge[0] + i * step, rel=1e-12) for i, b in enumerate(bridge))
    # The projector alone is exactly proportional to k.
    assert all(projector_flops(model, k, 10) == pytest.approx(k * projector_flops(model, 1, 10)) for k in range(1, 17))
    encoder = _tiny_whisper().config
    totals = [safe_flops(model, encoder, k, prompt, 10) for k in range(0, 17)]
    assert totals[0] == base_prefill_flops(model.base, prompt) + lora_flops(model.base, prompt)
    assert all(b > a for a, b in zip(totals, totals[1:]))


def test_prefix_bridge_is_convex_in_k(llava_dir: Path) -> None:
    model, inputs = _tiny_safe("llava", llava_dir, "prefix", 0)
    prompt = inputs["input_ids"].shape[1]
    bridge = [bridge_flops(model, k, prompt, 10) for k in range(1, 17)]
    second = [a - 2 * b + c for a, b, c in zip(bridge, bridge[1:], bridge[2:])]
    assert all(d > 0 for d in second) and max(second) == pytest.approx(min(second))  # attention grows as (S + k)^2


def test_unsupported_models_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot count the FLOPs"):
        encoder_flops(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="is not counted"):
        base_prefill_flops(WhisperConfig(), 10)
