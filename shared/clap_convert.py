"""Convert a laion-clap `.pt` checkpoint (the original package's key layout) into a `ClapModel` folder.

The mapping follows the documented layouts of the two implementations (and is tested on checkpoints
written by laion-clap's own model classes, `tests/fixtures/clap/`, built by `benchmarks/laion_reference.py`):
- `text_branch.*` is a RoBERTa model: same keys under `text_model.*`;
- `audio_branch.*` is HTSAT, under `audio_model.audio_encoder.*`, with renames
  `norm1`/`norm2` -> `layernorm_before`/`layernorm_after`, `attn.proj` -> `attention.output.dense`,
  other `attn.*` -> `attention.self.*`, `mlp.fc1`/`mlp.fc2` -> `intermediate.dense`/`output.dense`,
  `bn0` -> `batch_norm`, and the fused `attn.qkv` split into query, key and value; the fusion
  layers of `aff_2d` checkpoints (`patch_embed.fusion_model.*`, `patch_embed.mel_conv2d.*`) keep
  their names;
- `{text,audio}_projection.0` / `.2` (Linear, ReLU, Linear) -> `linear1` / `linear2`;
- `logit_scale_a`, `logit_scale_t` keep their names.
Known keys with no counterpart in `ClapModel` are dropped: the STFT/log-mel front end (the
feature extractor computes it), HTSAT's classification head (`tscam_conv`, `head`), the
`*_transform` MLPs, and `position_ids` (the buffer that breaks laion-clap on newer transformers).
The shifted-window blocks' `attn_mask` buffers are checked against the mask transformers
recomputes and then dropped; RoBERTa's `token_type_ids` buffer, which laion's files lack, keeps
ClapModel's zeros (RoBERTa has one token type). laion's `iaff_2d`, `daf_2d` and 1-D fusion types
have no ClapModel counterpart (it implements the AFF 2-D block only): such checkpoints are refused
naming their keys. Anything else unknown, or any `ClapModel` key left unfilled, is an error naming
the keys. The checkpoint is read with `torch.load(weights_only=True)`: no pickle code runs.

Next to the weights, the folder gets laion's front end as a `ClapFeatureExtractor` preprocessor
config (48 kHz, n_fft 1024, hop 480, 64 mels from 50 Hz to 14 kHz, 10 s, `repeatpad`, and
`rand_trunc`, or `fusion` for fusion checkpoints), so `shared.encoders.ClapEncoder` loads it as is.
A tokenizer is copied only from `--tokenizer` (laion's is roberta-base's; nothing is downloaded).
An OUT folder that already holds files is refused (exit 2) unless --overwrite is given.
"""

from __future__ import annotations

import logging
import math
import re
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapTextConfig

from shared.cli import ArgumentParser, add_overwrite_flag, console, refuse_overwrite
from shared.loading import load_torch

log = logging.getLogger(__name__)
DROPPED = re.compile(r"(spectrogram_extractor|logmel_extractor|tscam_conv|\.head\.|_transform\.|position_ids)")
AUDIO_RENAMES = (
    (".norm1.", ".layernorm_before."), (".norm2.", ".layernorm_after."),
    (".attn.proj.", ".attention.output.dense."), (".attn.", ".attention.self."),
    (".mlp.fc1.", ".intermediate.dense."), (".mlp.fc2.", ".output.dense."),
    (".bn0.", ".batch_norm."),
)
PROJECTION = re.compile(r"^(text|audio)_projection\.(0|2)\.")
ATTN_MASK = re.compile(r"^audio_model\.audio_encoder\.layers\.(\d+)\.blocks\.(\d+)\.attn_mask$")
# Buffers ClapModel builds itself: laion's files lack them or hold them under dropped names.
REBUILT = ("position_ids", "token_type_ids", "num_batches_tracked")
# laion fusion types ClapModel does not implement, recognised by a key fragment.
UNSUPPORTED_FUSION = {"fusion_model.local_att2.": "iaff", "fusion_model.global_att2.": "iaff", "mel_conv1d.": "1-D"}
# laion's HTSAT sizes (clap_module/htsat.py create_htsat_model) with a roberta-base text branch.
PRESETS = {
    "htsat-tiny": dict(patch_embeds_hidden_size=96, depths=[2, 2, 6, 2], num_attention_heads=[4, 8, 16, 32]),
    "htsat-base": dict(patch_embeds_hidden_size=128, depths=[2, 2, 12, 2], num_attention_heads=[4, 8, 16, 32]),
}


def htsat_config(patch_embeds_hidden_size: int, depths: list[int], num_attention_heads: list[int], fusion: bool,
                 projection_dim: int = 512, text_config: ClapTextConfig | None = None) -> ClapConfig:
    """A ClapConfig for a laion HTSAT of these sizes (spectrogram 256, window 8, 64 mels) and a RoBERTa text branch."""
    hidden = patch_embeds_hidden_size * 2 ** (len(depths) - 1)
    audio = ClapAudioConfig(patch_embeds_hidden_size=patch_embeds_hidden_size, depths=list(depths),
                            num_attention_heads=list(num_attention_heads), hidden_size=hidden,
                            enable_fusion=fusion, fusion_type="aff_2d" if fusion else None)
    text = (text_config or ClapTextConfig()).to_dict()
    return ClapConfig(text_config=text, audio_config=audio.to_dict(), projection_dim=projection_dim)


def preset_config(name: str) -> ClapConfig:
    """A ClapConfig for laion's HTSAT-tiny or HTSAT-base (suffix `-fusion` for aff_2d fusion checkpoints)."""
    size, fusion = name.removesuffix("-fusion"), name.endswith("-fusion")
    if size not in PRESETS:
        raise ValueError(f"config preset is {name!r}; expected one of {sorted(PRESETS)}, optionally with '-fusion'")
    return htsat_config(**PRESETS[size], fusion=fusion)


def laion_feature_extractor(config: ClapConfig) -> ClapFeatureExtractor:
    """laion-clap's front end (training/data.py get_audio_features, HTSAT audio_cfg) for this model."""
    return ClapFeatureExtractor(
        feature_size=config.audio_config.num_mel_bins, sampling_rate=48000, hop_length=480, max_length_s=10,
        fft_window_size=1024, frequency_min=50, frequency_max=14000,
        truncation="fusion" if config.audio_config.enable_fusion else "rand_trunc", padding="repeatpad",
    )


def convert_key(key: str) -> str | None:
    """The ClapModel name of a laion-clap key; None for a known key that ClapModel lacks."""
    key = key.removeprefix("module.")
    if DROPPED.search(key):
        return None
    if key.startswith("text_branch."):
        return "text_model." + key[len("text_branch."):]
    if key.startswith("audio_branch."):
        new = "audio_model.audio_encoder." + key[len("audio_branch."):]
        for old, repl in AUDIO_RENAMES:
            new = new.replace(old, repl)
        return new
    match = PROJECTION.match(key)
    if match:
        return f"{match.group(1)}_projection.linear{1 if match.group(2) == '0' else 2}." + key[match.end():]
    if key in ("logit_scale_a", "logit_scale_t"):
        return key
    raise KeyError(key)


def convert_state_dict(laion: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename laion-clap keys to ClapModel keys, splitting fused qkv projections."""
    for fragment, kind in UNSUPPORTED_FUSION.items():
        found = [k for k in laion if fragment in k]
        if found:
            raise ValueError(f"checkpoint uses laion's {kind} fusion (e.g. {found[:3]}); transformers' ClapModel "
                             "implements only aff_2d fusion (patch_embed.fusion_model local_att/global_att)")
    out, unknown = {}, []
    for key, value in laion.items():
        try:
            new = convert_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if new is None:
            continue
        if ".attention.self.qkv." in new:
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[new.replace(".qkv.", f".{name}.")] = part.clone()
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"laion-clap checkpoint has {len(unknown)} unknown key(s), e.g. {unknown[:5]}; "
                         "expected the documented laion-clap layout (text_branch, audio_branch, projections)")
    return out


def load_laion_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a laion-clap .pt file (bare, or under 'state_dict'), loaded without pickle code."""
    checkpoint = load_torch(path, "a laion-clap .pt checkpoint saved with torch.save")
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: holds {type(checkpoint).__name__} without a tensor state dict; "
                         "expected a laion-clap checkpoint (tensors, bare or under 'state_dict')")
    return state


def _check_attn_masks(model: ClapModel, masks: dict[str, torch.Tensor], path: Path) -> None:
    """laion's saved shifted-window masks must equal the ones transformers recomputes at that resolution."""
    for key, saved in masks.items():
        layer, block = (int(g) for g in ATTN_MASK.match(key).groups())
        module = model.audio_model.audio_encoder.layers[layer].blocks[block]
        side = math.isqrt(saved.shape[0]) * int(module.window_size)
        expected = module.get_attn_mask(side, side, saved.dtype, saved.device)
        if expected is None or not torch.equal(expected, saved):
            raise ValueError(f"{path}: {key} differs from the shifted-window mask ClapModel computes for this config; "
                             "expected a checkpoint of this config (window size, shift, spectrogram size)")


def convert_checkpoint(path: str | Path, config: ClapConfig) -> ClapModel:
    """A ClapModel with every weight taken from the laion-clap checkpoint at path."""
    state = convert_state_dict(load_laion_checkpoint(path))
    masks = {k: state.pop(k) for k in list(state) if ATTN_MASK.match(k)}
    model = ClapModel(config)
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state and not k.endswith(REBUILT))
    extra = sorted(k for k in state if k not in expected)
    if missing or extra:
        hint = ""
        if any(".fusion_model." in k or ".mel_conv2d." in k for k in missing + extra):
            hint = f" (the config has enable_fusion={config.audio_config.enable_fusion}; the checkpoint disagrees)"
        raise ValueError(f"{path}: after conversion {len(missing)} ClapModel key(s) are missing (e.g. {missing[:5]}) "
                         f"and {len(extra)} are unexpected (e.g. {extra[:5]}); expected a checkpoint of this config"
                         + hint)
    bad = [k for k in state if state[k].shape != expected[k].shape]
    if bad:
        k = bad[0]
        raise ValueError(f"{path}: {k} has shape {tuple(state[k].shape)}; expected {tuple(expected[k].shape)}")
    _check_attn_masks(model, masks, Path(path))
    model.load_state_dict(state, strict=False)
    return model.eval()


def load_config(name: str) -> ClapConfig:
    """A preset name (see PRESETS) or a hub id / folder holding a ClapModel config.json."""
    if name.removesuffix("-fusion") in PRESETS:
        return preset_config(name)
    return ClapConfig.from_pretrained(name)


@console("safe-convert-clap")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="safe-convert-clap", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="laion-clap .pt file")
    parser.add_argument("config", help=f"ClapModel config: one of {sorted(PRESETS)} (+ '-fusion'), or a hub id or "
                                       "folder with config.json (e.g. laion/clap-htsat-unfused)")
    parser.add_argument("out", type=Path, help="folder to write the ClapModel and its preprocessor config")
    parser.add_argument("--tokenizer", help="folder or cached hub id of the text tokenizer to save alongside "
                                            "(laion's is roberta-base); without it the folder has no tokenizer")
    add_overwrite_flag(parser, "its model files")
    args = parser.parse_args(argv)
    refuse_overwrite(args.out, args.overwrite, flag="out")
    try:
        config = load_config(args.config)
        model = convert_checkpoint(args.checkpoint, config)
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else None
    except (ValueError, OSError) as err:
        print(f"safe-convert-clap: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    model.save_pretrained(args.out)
    laion_feature_extractor(config).save_pretrained(args.out)
    if tokenizer is not None:
        tokenizer.save_pretrained(args.out)
    else:
        log.info("no --tokenizer: %s holds the audio front end only (ClapEncoder needs no tokenizer)", args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
