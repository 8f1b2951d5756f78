"""Cost profiles (stage_b.cost_profiles) at real scale without weights.

LLaVA-1.5-7B/13B, LAION-CLAP HTSAT-tiny and Whisper-large-v3 are built from configs/hub on torch's meta device
(nothing is allocated) and FlopCounterMode counts their forwards; every profile must equal those counts exactly.
Meta tensors hold no values, so two value checks cannot run there: LlavaModel.get_placeholder_mask compares the
image-token count with the image features (skipped with transformers' own TRANSFORMERS_DISABLE_TORCH_CHECK=1
switch), and the causal-mask builder inspects an attention mask (none is passed: batch 1, no padding, same FLOPs).
The projector checks that its frame mask is left-aligned and a fusion block skips rows without audio, both
data-dependent, so those two run for real on CPU at the real widths (their weights are tens of MB, left
uninitialised with to_empty); the rest of the bridge (prefix positions, LoRA) runs on meta.
"""

import dataclasses
import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode
from transformers import ClapModel, WhisperFeatureExtractor, WhisperModel

from envs.outcome_table import OPTIONAL_KEYS, OutcomeTable
from envs.reward_scale import RewardScale
from shared.clap_convert import PRESETS, laion_feature_extractor
from shared.loading import file_sha256
from shared.clap_features import features_from_mels, mel_features
from stage_a.bridge_size import default_settings, encoder_profile, hub_config, image_tokens, meta_base
from stage_a.flops import CPU_SDPA, BridgeShape, projector_shape_flops
from stage_a.fusion import FusionBlock
from stage_a.model import SafeModel
from stage_a.projector import AudioProjector, ProjectorConfig
from stage_a.setup import bridge_config
from stage_b import cost_profiles
from stage_b.cost_profiles import (EMBEDDED, PREFIX_SUFFIX, PROFILE_DIR, action_parts, apply_cost_profile,
                                   base_config, encoder_gflops, load_profile, profile_names, table_parts)
from stage_b.frontier import oracle_choice
from stage_b.live import main as live_main
from stage_b.pareto import main as pareto_main, read_csv
from stage_b.sweep_config import ParetoConfig

ANALYTIC = [name for name in profile_names() if load_profile(name).kind == "analytic"]
CROSS_ATTENTION = [name for name in ANALYTIC if load_profile(name).fusion_mode == "cross_attention"]
LLAVA_7B_TOTAL = 7_063_427_072  # llava-hf/llava-1.5-7b-hf, published (also tests/stage_a/test_bridge_size.py)
TEXT_TOKENS = (11, 24)  # the embedded world's prompts have 11-15; a longer one too
EXACT = 1e-9


@pytest.fixture(autouse=True)
def meta_friendly(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No image-token count check (it reads tensor values, which meta tensors lack); one torch thread."""
    monkeypatch.setenv("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def counted(fn) -> int:
    """FlopCounterMode's total for fn (CPU fused attention counted like the GPU kernels)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


@functools.cache
def meta_safe(name: str) -> SafeModel:
    """The SafeModel the default recipe (configs/stage_a.yaml) builds on the profile's base, in its fusion mode."""
    profile, settings = load_profile(name), default_settings()
    settings = dataclasses.replace(settings, fusion=dataclasses.replace(settings.fusion, mode=profile.fusion_mode))
    base = meta_base(base_config(profile))
    with torch.device("meta"):
        return SafeModel(base, bridge_config(settings, profile.shape.audio_dim, base)).eval()


def prompt(name: str, positions: int) -> dict:
    """Meta inputs of one question: `positions` tokens holding the base's image placeholders, and one image."""
    profile, config = load_profile(name), base_config(load_profile(name))
    ids = torch.zeros(1, positions, dtype=torch.long)
    ids[0, 1:1 + profile.image_tokens] = config.image_token_id
    side = config.vision_config.image_size
    return {"input_ids": ids.to("meta"), "pixel_values": torch.empty(1, 3, side, side, device="meta"),
            "logits_to_keep": 1}  # generate's prefill: the last logit only, as the table counts it


def parts(name: str, k: int, text_tokens: int) -> dict[str, float]:
    """The profile's FLOPs (not GFLOPs) by part for one question of `text_tokens` text tokens, as tables get them."""
    return {part: gflops * 1e9 for part, gflops in action_parts(load_profile(name), k, text_tokens).items()}


def test_names_and_an_unknown_one() -> None:
    combinations = ("llava-1.5-13b+clap-htsat", "llava-1.5-13b+clap-or-whisper", "llava-1.5-13b+whisper-large-v3",
                    "llava-1.5-7b+clap-htsat", "llava-1.5-7b+clap-or-whisper", "llava-1.5-7b+whisper-large-v3")
    assert profile_names() == [EMBEDDED, *(f"{c}{m}" for c in combinations for m in ("", "-prefix"))]
    with pytest.raises(ValueError, match=r"^--cost-profile is 'llava-7b'; expected one of \['embedded', .*\]$"):
        load_profile("llava-7b")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("k_max"), r"the file has missing keys \['k_max'\] and unknown keys \[\]"),
    (lambda d: d["bridge"].update(lora_layers=0), r"bridge\.lora_layers is 0; expected an integer >= 1"),
    (lambda d: d["bridge"].update(fusion_layers=[0, 32]), r"bridge\.fusion_layers is \[0, 32\]; expected decoder"),
    (lambda d: d["bridge"].update(projector=[[784, 4096, 1]]), r"bridge\.projector\[\] is \[784, 4096, 1\]"),
    (lambda d: d.update(ks=[4, 32]), r"ks \[4, 32\] exceed k_max 16"),
])
def test_a_bad_profile_file_is_named(edit, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = yaml.safe_load((PROFILE_DIR / "llava-1.5-7b+clap-htsat.yaml").read_text())
    edit(data)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setattr(cost_profiles, "PROFILE_DIR", tmp_path)
    with pytest.raises(ValueError, match=rf"^cost profile {tmp_path / 'bad.yaml'}: {message}"):
        cost_profiles.load_profile.__wrapped__("bad")


@pytest.mark.parametrize("name", ANALYTIC)
def test_each_profile_is_the_default_recipe_on_the_real_models(name: str) -> None:
    """The file's numbers equal the SafeModel stage_a builds on the real config, and the encoder's real frames."""
    profile, model = load_profile(name), meta_safe(name)
    real = BridgeShape.of(model)
    assert dataclasses.replace(real, lora=()) == dataclasses.replace(profile.shape, lora=())
    assert sorted(real.lora) == sorted(profile.shape.lora) and len(real.lora) > 0
    if profile.fusion_mode == "cross_attention":
        assert list(profile.fusion_layers) == model.fusion.layer_indices
    assert profile.k_max == model.projector.config.k_max == default_settings().k_max
    assert profile.image_tokens == image_tokens(base_config(profile)) == base_config(profile).image_seq_length
    encoder = encoder_profile(profile.encoder)
    assert (profile.encoder_frames, profile.shape.audio_dim) == (encoder["frames"], encoder["frame_dim"])


def test_the_clap_config_is_laion_htsat_tiny() -> None:
    """configs/hub/laion/clap-htsat-unfused has the HTSAT-tiny sizes of shared.clap_convert (parity-tested)."""
    audio = hub_config("laion/clap-htsat-unfused").audio_config
    tiny = PRESETS["htsat-tiny"]
    assert (audio.patch_embeds_hidden_size, list(audio.depths), list(audio.num_attention_heads)) == (
        tiny["patch_embeds_hidden_size"], tiny["depths"], tiny["num_attention_heads"])
    assert not audio.enable_fusion and audio.hidden_size == 768 and audio.spec_size == 256


@pytest.mark.parametrize("name", CROSS_ATTENTION)
def test_prefill_and_lora_match_the_profiler_on_meta(name: str) -> None:
    """The real LLaVA forward (vision tower, connector, LM, last logit) and SAFE's no-audio call (LoRA x 0)."""
    profile = load_profile(name)
    text = TEXT_TOKENS[1]
    expected, inputs = parts(name, 0, text), prompt(name, profile.image_tokens + text)
    assert counted(functools.partial(meta_base(base_config(profile)), **inputs)) == pytest.approx(expected["base"],
                                                                                                  rel=EXACT)
    call = counted(functools.partial(meta_safe(name), **inputs))
    assert call == pytest.approx(expected["base"] + expected["lora"], rel=EXACT)
    assert expected["bridge"] == expected["encoder"] == 0.0
    assert parts(f"{name}{PREFIX_SUFFIX}", 0, text) == expected  # no audio: the fusion mode changes nothing


@pytest.mark.parametrize("encoder", ["laion/clap-htsat-unfused", "openai/whisper-large-v3"])
def test_encoders_match_the_profiler_on_meta(encoder: str) -> None:
    """One full window through the real encoder as shared.encoders runs it (Whisper's mel filterbank in torch)."""
    name = next(n for n in ANALYTIC if load_profile(n).encoder == encoder)
    config = hub_config(encoder)
    if encoder.startswith("laion/"):
        with torch.device("meta"):
            model = ClapModel(config).eval()
        front = laion_feature_extractor(config)
        mels = mel_features(front, [np.zeros(front.nb_max_samples, np.float32)], front.sampling_rate).to("meta")
        measured = counted(lambda: features_from_mels(model, mels))
    else:
        with torch.device("meta"):
            model = WhisperModel(config).get_encoder().eval()
        front, features = WhisperFeatureExtractor(feature_size=config.num_mel_bins), []
        silent = np.zeros(front.n_samples, np.float32)
        mel = counted(lambda: features.append(front([silent], sampling_rate=front.sampling_rate,
                                                    return_tensors="pt")["input_features"]))
        assert mel > 0  # the filterbank matmul, the only FLOPs of the front end
        measured = mel + counted(lambda: model(features[0].to("meta")))
    assert encoder_gflops(load_profile(name)) * 1e9 == pytest.approx(measured, rel=EXACT)


@pytest.mark.parametrize("name", ANALYTIC)
def test_bridge_matches_the_profiler_at_real_width(name: str) -> None:
    """Projector and fusion blocks at the real widths (CPU), prefix positions and their LoRA on the meta model."""
    profile, settings = load_profile(name), default_settings()
    hidden = base_config(profile).text_config.hidden_size
    with torch.device("meta"):
        projector = AudioProjector(ProjectorConfig(profile.shape.audio_dim, hidden, k_max=profile.k_max,
                                                   depth=settings.projector_depth))
    projector = projector.to_empty(device="cpu").eval()
    frames = torch.randn(1, profile.encoder_frames, profile.shape.audio_dim)
    text = TEXT_TOKENS[0]
    s = profile.image_tokens + text
    prefix = profile.fusion_mode == "prefix"
    no_audio = counted(functools.partial(meta_safe(name), **prompt(name, s))) if prefix else None
    block = FusionBlock(hidden, settings.fusion).eval()
    for k in (profile.ks[0], profile.ks[-1]) if prefix else profile.ks:  # a meta forward per k in prefix mode
        measured_projector = counted(functools.partial(projector, frames, k))
        assert projector_shape_flops(profile.shape, k, profile.encoder_frames) == pytest.approx(measured_projector,
                                                                                                rel=EXACT)
        if prefix:  # the k spliced positions through every layer (LoRA active), lm_head on the last one only
            rest = counted(functools.partial(meta_safe(name), **prompt(name, s + k))) - no_audio
        else:
            one = counted(functools.partial(block, torch.randn(1, s, hidden), torch.randn(1, k, hidden),
                                            torch.ones(1, k, dtype=torch.bool), torch.ones(1)))
            rest = len(meta_safe(name).fusion.layer_indices) * one
        assert parts(name, k, text)["bridge"] == pytest.approx(measured_projector + rest, rel=EXACT)


def test_known_magnitudes() -> None:
    """LLaVA-1.5-7B on ~600 tokens is ~8 TFLOPs, 2 x params x tokens; Whisper-large-v3's encoder ~2.3 TFLOPs."""
    name = "llava-1.5-7b+clap-htsat"
    prefill = parts(name, 0, 600 - load_profile(name).image_tokens)["base"]
    assert 8.0e12 < prefill < 8.8e12
    assert prefill / (2 * LLAVA_7B_TOTAL * 600) == pytest.approx(1.0, abs=0.03)  # attention and ViT add < 3 %
    whisper = encoder_gflops(load_profile("llava-1.5-7b+whisper-large-v3")) * 1e9
    with torch.device("meta"):
        params = sum(p.numel() for p in WhisperModel(hub_config("openai/whisper-large-v3")).get_encoder().parameters())
    assert 2 * params * 1500 < whisper < 1.25 * 2 * params * 1500  # + attention over 1500 frames


def test_the_issue_ordering(table_path: Path) -> None:
    """Embedded: the encoder costs many times the base; LLaVA-7B + CLAP: the base costs hundreds of CLAP encoders,
    so k barely matters; Whisper-large-v3 is a quarter of the base (a seventh of 13B's); prefix fusion makes k cost
    more than CLAP."""
    table = OutcomeTable.load(table_path)
    assert table.provenance["encoder_gflops"] > 10 * table.gflops[:, 0].max()
    text = int(np.median(table.text_tokens))
    clap = action_parts(load_profile("llava-1.5-7b+clap-htsat"), 16, text)
    assert clap["base"] > 500 * clap["encoder"] > 500 * clap["bridge"]
    whisper = action_parts(load_profile("llava-1.5-7b+whisper-large-v3"), 16, text)
    assert 0.2 < whisper["encoder"] / whisper["base"] < 0.35
    prefix = action_parts(load_profile("llava-1.5-7b+clap-htsat-prefix"), 16, text)
    assert prefix["bridge"] > 10 * prefix["encoder"]
    thirteen = action_parts(load_profile("llava-1.5-13b+clap-htsat"), 16, text)
    assert 1.8 < thirteen["base"] / clap["base"] < 2.0
    thirteen_whisper = action_parts(load_profile("llava-1.5-13b+whisper-large-v3"), 16, text)
    assert thirteen_whisper["encoder"] == whisper["encoder"] and thirteen_whisper["base"] == thirteen["base"]
    assert 0.1 < thirteen_whisper["encoder"] / thirteen_whisper["base"] < 0.2  # half the 7B share: the base doubles


def test_applying_a_profile_changes_only_gflops(table_path: Path) -> None:
    table = OutcomeTable.load(table_path)
    embedded = apply_cost_profile(table, EMBEDDED)
    assert np.array_equal(embedded.gflops, table.gflops) and embedded.provenance["cost_profile"]["name"] == EMBEDDED
    name = "llava-1.5-7b+whisper-large-v3-prefix"
    profiled = apply_cost_profile(table, name)
    assert all(getattr(table, key) is not None for key in OPTIONAL_KEYS)  # latency repeats and text tokens are kept
    for field in dataclasses.fields(OutcomeTable):
        if field.name not in ("gflops", "provenance"):
            assert np.array_equal(getattr(profiled, field.name), getattr(table, field.name)), field.name
    assert profiled.provenance == {**table.provenance, "cost_profile": load_profile(name).describe()}
    expected = [[sum(action_parts(load_profile(name), int(k), int(t)).values()) for k in table.actions]
                for t in table.text_tokens]
    np.testing.assert_allclose(profiled.gflops, expected, rtol=1e-6)
    assert (profiled.gflops > 1000 * table.gflops).all()
    assert sum(table_parts(table, name).values()) == pytest.approx(profiled.gflops, rel=1e-6)
    assert apply_cost_profile(profiled, name) is profiled
    with pytest.raises(ValueError, match=r"already carries cost profile 'llava-1\.5-7b\+whisper-large-v3-prefix'"):
        apply_cost_profile(profiled, "llava-1.5-7b+clap-htsat")


def test_a_table_without_text_tokens_is_refused_by_name(table_path: Path) -> None:
    table = dataclasses.replace(OutcomeTable.load(table_path), text_tokens=None)
    assert apply_cost_profile(table, EMBEDDED).text_tokens is None  # the embedded profile needs no recount
    checkpoint = table.provenance["checkpoint"]
    rebuild = re.escape(f"`stage_b-outcomes --checkpoint {checkpoint} --split test --overwrite`")
    with pytest.raises(ValueError, match=rf"^this outcome table has no 'text_tokens' column, .*; rebuild the table "
                                         rf"with {rebuild}$"):
        apply_cost_profile(table, "llava-1.5-13b+clap-htsat")


@pytest.mark.parametrize("flags, message", [
    (["--cost-profile", "llava"], "--cost-profile is 'llava'; expected one of ['embedded', "),
    (["--cost-profile", "llava-1.5-7b+clap-htsat", "--components", "alpha,gamma"],
     "--components has ['gamma'] with --cost-profile llava-1.5-7b+clap-htsat: the profile recounts compute only"),
])
def test_pareto_refuses_bad_profile_flags_in_one_line(tmp_path: Path, flags: list[str], message: str,
                                                      capsys: pytest.CaptureFixture) -> None:
    assert pareto_main(["--table", str(tmp_path / "none.npz"), "--out", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_the_derived_grid_is_the_profiled_tables(table_path: Path, tmp_path: Path) -> None:
    """Under a real profile the alpha grid and reward scale come from the recounted costs: at the grid's top the
    oracle skips audio on every training question, which the embedded table's grid (its audio increment is hundreds
    of times larger in the reward's units) stops far short of. Audio answers the audio questions here, so that
    skipping it costs something (the micro model gains nothing from audio)."""
    source = OutcomeTable.load(table_path)
    score, needs_audio = source.score.copy(), source.family != "visual"
    score[needs_audio, 0], score[needs_audio, 1:] = 0.0, 1.0
    planted = dataclasses.replace(source, score=score).save(tmp_path / table_path.name)
    name = "llava-1.5-7b+clap-htsat"
    sweep = ParetoConfig(planted, tmp_path, seeds=(0,), components=("alpha",), cost_profile=name).profiled()
    assert sweep.table == (tmp_path / "tables" / table_path.name).resolve()
    grid, table = sweep.weight_grids["alpha"], OutcomeTable.load(sweep.table)
    config = sweep.policy("alpha", grid["top"], 0)
    rows, scale = config.rows(table).train, config.reward_scale(table)
    assert grid["scale"] == scale.to_json() and scale.gflops > 1000  # the profile's GFLOPs, not the embedded ones
    cost = table.gflops[rows] / scale.gflops
    assert grid["unreachable_rows"] == 0 and grid["weights"][-2] == grid["top"]
    assert (oracle_choice(table.score[rows], cost, grid["top"]) == 0).all()
    assert (oracle_choice(table.score[rows], cost, grid["weights"][-3]) > 0).any()  # the top is where it happens
    embedded = ParetoConfig(planted, tmp_path, seeds=(0,), components=("alpha",)).weight_grids["alpha"]
    assert grid["top"] > 100 * embedded["top"] > 0
    audio = oracle_choice(table.score[rows], cost, embedded["top"]) > 0
    assert audio.any() and np.array_equal(audio, needs_audio[rows])  # still audio wherever audio answers


def test_pareto_sweeps_the_profiled_table(table_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Policies, their reward scale, the baselines and a budget all use OUT/tables/<table>, recounted; a rerun
    rewrites it with the same bytes and reuses every policy; live mode, which runs the table's own models, refuses
    such a policy."""
    name = "llava-1.5-7b+clap-htsat"
    args = ["--table", str(table_path), "--out", str(tmp_path), "--cost-profile", name, "--seeds", "0",
            "--alphas", "0,300", "--budget", "0.5", "--timesteps", "512", "--n-envs", "2", "--workers", "2"]
    assert pareto_main(args) == 0
    rows = read_csv(tmp_path / "pareto.csv")
    assert {r["method"] for r in rows if r["method"].startswith(("ppo-", "random-"))} == {"ppo-alpha", "random-alpha"}
    profiled_path = tmp_path / "tables" / table_path.name
    profiled = OutcomeTable.load(profiled_path)
    assert profiled.provenance["cost_profile"]["name"] == name
    record = json.loads((tmp_path / "policies" / "alpha-w0-seed0" / "policy.json").read_text())
    assert record["config"]["table"] == str(profiled_path.resolve())
    assert record["table_sha256"] == file_sha256(profiled_path)
    train_rows = np.setdiff1d(np.arange(profiled.n_rows), np.concatenate([record["val_rows"], record["test_rows"]]))
    assert record["reward_scale"] == RewardScale.fit(profiled, train_rows).to_json()
    held_out = record["test_rows"]
    never = next(r for r in rows if r["method"] == "never")
    assert never["gflops_per_query"] == pytest.approx(profiled.gflops[held_out, 0].mean(), rel=1e-6)
    baselines = [r for r in rows if r["method"].startswith(("supervised-", "bandit-", "cascade"))]
    assert {r["method"] for r in baselines} == {"supervised-alpha", "bandit-alpha", "cascade"}
    assert all(r["gflops_per_query"] >= never["gflops_per_query"] * (1 - 1e-6) for r in baselines)
    budget = read_csv(tmp_path / "budget.csv")
    assert {r["method"] for r in budget} >= {"ppo", "never"}
    assert next(r for r in budget if r["method"] == "never")["gflops_per_query"] == pytest.approx(
        never["gflops_per_query"], rel=1e-6)
    report = json.loads((tmp_path / "pareto.json").read_text())
    assert report["cost_profile"] == name and report["table_provenance"]["cost_profile"]["name"] == name
    digest = file_sha256(profiled_path)
    assert pareto_main(args) == 0  # the recount is rewritten, byte for byte: same SHA-256, so nothing retrains
    assert file_sha256(profiled_path) == digest
    rerun = json.loads((tmp_path / "pareto.json").read_text())["train_seconds"]
    assert rerun["trained"] == 0 and rerun["policies"] == 3
    capsys.readouterr()
    assert live_main(["--policy", str(tmp_path / "policies" / "alpha-w0-seed0")]) == 2  # before SAFE is loaded
    assert f"carries cost profile '{name}'" in capsys.readouterr().err
