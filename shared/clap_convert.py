"""Convert a laion-clap `.pt` checkpoint (the original package's key layout) into a `ClapModel`.

The mapping follows the documented layouts of the two implementations:
- `text_branch.*` is a RoBERTa model: same keys under `text_model.*`;
- `audio_branch.*` is HTSAT, under `audio_model.audio_encoder.*`, with renames
  `norm1`/`norm2` -> `layernorm_before`/`layernorm_after`, `attn.proj` -> `attention.output.dense`,
  other `attn.*` -> `attention.self.*`, `mlp.fc1`/`mlp.fc2` -> `intermediate.dense`/`output.dense`,
  `bn0` -> `batch_norm`, and the fused `attn.qkv` split into query, key and value;
- `{text,audio}_projection.0` / `.2` (Linear, ReLU, Linear) -> `linear1` / `linear2`;
- `logit_scale_a`, `logit_scale_t` keep their names.
Known keys with no counterpart in `ClapModel` are dropped: the STFT/log-mel front end (the
feature extractor computes it), HTSAT's classification head (`tscam_conv`, `head`), the
`*_transform` MLPs, and `position_ids` (the buffer that breaks laion-clap on newer transformers).
Anything else unknown, or any `ClapModel` key left unfilled, is an error naming the keys.
The checkpoint is read with `torch.load(weights_only=True)`: no pickle code runs.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from transformers import ClapConfig, ClapModel

DROPPED = re.compile(r"(spectrogram_extractor|logmel_extractor|tscam_conv|\.head\.|_transform\.|position_ids)")
AUDIO_RENAMES = (
    (".norm1.", ".layernorm_before."), (".norm2.", ".layernorm_after."),
    (".attn.proj.", ".attention.output.dense."), (".attn.", ".attention.self."),
    (".mlp.fc1.", ".intermediate.dense."), (".mlp.fc2.", ".output.dense."),
    (".bn0.", ".batch_norm."),
)
PROJECTION = re.compile(r"^(text|audio)_projection\.(0|2)\.")


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
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds {type(checkpoint).__name__}; expected a state dict")
    return state


def convert_checkpoint(path: str | Path, config: ClapConfig) -> ClapModel:
    """A ClapModel with every weight taken from the laion-clap checkpoint at path."""
    state = convert_state_dict(load_laion_checkpoint(path))
    model = ClapModel(config)
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state and not k.endswith(("position_ids", "num_batches_tracked")))
    extra = sorted(k for k in state if k not in expected)
    if missing or extra:
        raise ValueError(f"{path}: after conversion {len(missing)} ClapModel key(s) are missing (e.g. {missing[:5]}) "
                         f"and {len(extra)} are unexpected (e.g. {extra[:5]}); expected a checkpoint of this config")
    bad = [k for k in state if state[k].shape != expected[k].shape]
    if bad:
        k = bad[0]
        raise ValueError(f"{path}: {k} has shape {tuple(state[k].shape)}; expected {tuple(expected[k].shape)}")
    model.load_state_dict(state, strict=False)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="safe-convert-clap", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="laion-clap .pt file")
    parser.add_argument("config", help="ClapModel config: a hub id or folder with config.json (e.g. laion/clap-htsat-unfused)")
    parser.add_argument("out", type=Path, help="folder to write the ClapModel with save_pretrained")
    args = parser.parse_args(argv)
    try:
        model = convert_checkpoint(args.checkpoint, ClapConfig.from_pretrained(args.config))
    except (ValueError, FileNotFoundError) as err:
        print(f"safe-convert-clap: {err}", file=sys.stderr)
        return 2
    model.save_pretrained(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
