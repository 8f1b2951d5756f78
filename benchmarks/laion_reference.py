"""Build a laion-clap checkpoint and reference embeddings with laion-clap's OWN code.

NOT part of the project: this script imports `laion_clap`, which the project never depends on.
It runs only in a throwaway venv (the laion-clap package pins numpy<2, imports torchvision and
downloads roberta-base; none of that may touch the project's venv):

    python3 -m venv /tmp/laion_venv && . /tmp/laion_venv/bin/activate
    pip install torch==2.13.0 "numpy<2" torchlibrosa h5py tqdm braceexpand pandas pillow wget \
        webdataset ftfy "transformers==4.30.2"       # the transformers laion-clap was written for
    pip install --no-deps laion-clap==1.1.7
    HF_HUB_OFFLINE=1 python benchmarks/laion_reference.py --size micro --out tests/fixtures/clap/laion_micro
    HF_HUB_OFFLINE=1 python benchmarks/laion_reference.py --size micro --fusion --out tests/fixtures/clap/laion_micro_fusion

What it writes to --out:
  laion_clap.pt    `torch.save({"state_dict": {"module." + key: tensor}, "epoch": 0})`, the layout of
                   laion's released checkpoints (DDP prefix, HTSAT `attn_mask` buffers, RoBERTa
                   `position_ids`, the STFT/mel front end, HTSAT's head, the `*_transform` MLPs);
  reference.npz    `clip` (int16; the float clip is int16 / 32767, laion's own quantisation, so its
                   int16 round trip leaves it unchanged) at 48 kHz, and `embeddings` (one row per
                   clip in `seconds`): laion's `get_audio_features` (rand_trunc, repeatpad) followed by
                   `CLAP.get_audio_embedding`. Clip i is the first `seconds[i]` seconds of `clip`.
                   For --fusion, whose front end needs torchaudio (no build exists for torch 2.13),
                   the model is checked at the HTSAT input instead: `mel` (float16-exact, frames x 64)
                   and `fusion_embeddings` for `mel_fusion` = fusion_channels(mel), once not longer
                   and once longer (so the AFF fusion block runs);
  laion_config.json the laion model config and the reduced sizes used.

The crop is made deterministic: laion's rand_trunc draws the start with
`np.random.randint(0, overflow + 1)`; this script pins that draw to 0 (the first 10 s), which is the
crop the project's front end always takes (`shared.clap_features.mel_features`).
Sizes: `micro` is a reduced HTSAT (same 256 x 256 spectrogram image, window 8, 4 stages, 8-dim
patches) and a 2-layer 16-dim RoBERTa, built by laion's classes (`CLAP`, `HTSAT_Swin_Transformer`)
and transformers' `RobertaModel` (laion's own text branch class); `tiny` and `base` are laion's
HTSAT-tiny / HTSAT-base at full size, with a 2-layer RoBERTa of roberta-base's width (the text
branch does not enter audio embeddings). All weights are random, seeded.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
import transformers  # before the torchvision stand-in: transformers probes for the real package


def _stand_in_torchvision() -> None:
    """A stand-in torchvision: laion's audio branch imports it but never uses it."""
    root = types.ModuleType("torchvision")
    for name in ("ops", "ops.misc", "datasets", "transforms"):
        module = types.ModuleType(f"torchvision.{name}")
        sys.modules[f"torchvision.{name}"] = module
    sys.modules["torchvision"] = root
    root.ops, root.datasets, root.transforms = (sys.modules[f"torchvision.{n}"] for n in ("ops", "datasets", "transforms"))

    class FrozenBatchNorm2d(torch.nn.Module):
        """Only referenced by laion's freeze_batch_norm_2d, which this script never calls."""

    sys.modules["torchvision.ops.misc"].FrozenBatchNorm2d = FrozenBatchNorm2d
    transforms = sys.modules["torchvision.transforms"]
    for name in ("Normalize", "Compose", "RandomResizedCrop", "InterpolationMode", "ToTensor", "Resize", "CenterCrop"):
        setattr(transforms, name, type(name, (), {}))


_stand_in_torchvision()
# laion's training/data.py loads three hub tokenizers at import time; its audio code never uses them.
for _tokenizer in (transformers.BertTokenizer, transformers.RobertaTokenizer, transformers.BartTokenizer):
    _tokenizer.from_pretrained = classmethod(lambda cls, *args, **kwargs: None)
# laion's modules import `clap_module` and `training` top-level; the package __init__ (hook.py) is skipped.
sys.path.insert(0, importlib.util.find_spec("laion_clap").submodule_search_locations[0])
from clap_module import model as laion_model  # noqa: E402
from clap_module.htsat import HTSAT_Swin_Transformer  # noqa: E402
from training import data as laion_data  # noqa: E402
from transformers import RobertaConfig, RobertaModel  # noqa: E402

SR = 48000
SECONDS = (4, 12)
SIZES = {
    "micro": dict(embed_dim=8, depths=[1, 2, 2, 1], num_heads=[1, 2, 4, 8], joint=16, text_width=16, class_num=4),
    "tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[4, 8, 16, 32], joint=512, text_width=768, class_num=527),
    "base": dict(embed_dim=128, depths=[2, 2, 12, 2], num_heads=[4, 8, 16, 32], joint=512, text_width=768,
                 class_num=527),
}


def audio_cfg(class_num: int) -> dict:
    """laion's HTSAT audio config (model_configs/HTSAT-tiny.json) with the given class count."""
    return dict(audio_length=1024, clip_samples=480000, mel_bins=64, sample_rate=SR, window_size=1024,
                hop_size=480, fmin=50, fmax=14000, class_num=class_num, model_type="HTSAT", model_name="tiny")


def build_laion(size: str, fusion: bool, seed: int) -> torch.nn.Module:
    """A laion `CLAP` with an HTSAT of the given size and a small RoBERTa text branch, seeded."""
    s = SIZES[size]
    text = RobertaConfig(vocab_size=64, hidden_size=s["text_width"], num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=2 * s["text_width"], max_position_embeddings=40, type_vocab_size=1,
                         pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(seed)
    laion_model.RobertaModel.from_pretrained = lambda name: RobertaModel(text, add_pooling_layer=True)
    acfg = audio_cfg(s["class_num"])
    width = s["embed_dim"] * 2 ** (len(s["depths"]) - 1)
    fusion_type = "aff_2d" if fusion else "None"
    # CLAP builds the full HTSAT-tiny for model_name "tiny"; the reduced sizes swap in laion's own
    # HTSAT class with other widths, and matching projections (CLAP hard-codes 768 for RoBERTa).
    model = laion_model.CLAP(embed_dim=width, audio_cfg=acfg,
                             text_cfg=dict(context_length=77, vocab_size=64, width=512, heads=8, layers=12,
                                           model_type="roberta"),
                             enable_fusion=fusion, fusion_type=fusion_type, joint_embed_shape=s["joint"])
    model.audio_branch = HTSAT_Swin_Transformer(
        spec_size=256, patch_size=4, patch_stride=(4, 4), num_classes=s["class_num"], embed_dim=s["embed_dim"],
        depths=s["depths"], num_heads=s["num_heads"], window_size=8, config=laion_model.CLAPAudioCfp(**acfg),
        enable_fusion=fusion, fusion_type=fusion_type)
    relu = torch.nn.ReLU()
    model.audio_projection = torch.nn.Sequential(torch.nn.Linear(width, s["joint"]), relu,
                                                 torch.nn.Linear(s["joint"], s["joint"]))
    model.text_projection = torch.nn.Sequential(torch.nn.Linear(s["text_width"], s["joint"]), relu,
                                                torch.nn.Linear(s["joint"], s["joint"]))
    with torch.no_grad():  # trained-looking BatchNorm statistics, so bn0 is not the identity
        model.audio_branch.bn0.running_mean.copy_(torch.linspace(-60.0, -20.0, 64))
        model.audio_branch.bn0.running_var.copy_(torch.linspace(50.0, 400.0, 64))
    return model.eval()


def make_clip(seconds: float) -> np.ndarray:
    """int16 test signal: chirps, AM tones, clicks; deterministic, content everywhere."""
    t = np.arange(int(seconds * SR)) / SR
    wave = 0.3 * np.sin(2 * np.pi * (200 * t + 150 * t ** 2))
    wave += 0.2 * np.sin(2 * np.pi * 3000 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    wave += 0.25 * (np.sin(2 * np.pi * 1.3 * t) > 0.95) * np.sin(2 * np.pi * 800 * t)
    return laion_data.float32_to_int16(wave.astype(np.float32))


def fusion_channels(mel: torch.Tensor) -> torch.Tensor:
    """(T, F) mel -> (4, T, F) mel_fusion with four different channels, by exact operations."""
    return torch.stack([mel, mel.flip(0), mel.roll(300, 0), mel * 0.5])


class PinnedCrop:
    """np.random.randint(0, overflow + 1) -> 0: laion's rand_trunc crop, made deterministic (the head)."""

    def __init__(self, random_module: types.ModuleType) -> None:
        self.random = random_module

    def __getattr__(self, name: str):
        return getattr(self.random, name)

    @staticmethod
    def randint(low: int, high: int | None = None, *args, **kwargs) -> int:
        if low != 0 or high is None:
            raise ValueError(f"unexpected randint({low}, {high}) in laion's front end; expected (0, overflow + 1)")
        return 0


@torch.no_grad()
def reference_embeddings(model: torch.nn.Module, clip: np.ndarray) -> np.ndarray:
    """laion's get_audio_features (rand_trunc, repeatpad) then CLAP.get_audio_embedding, per clip length."""
    laion_data.np = types.SimpleNamespace(**{**vars(np), "random": PinnedCrop(np.random)})
    wave = laion_data.int16_to_float32(clip)
    if not np.array_equal(laion_data.int16_to_float32(laion_data.float32_to_int16(wave)), wave):
        raise ValueError("the clip is not int16-exact; laion's quantisation would change it")
    rows = []
    for seconds in SECONDS:
        features = laion_data.get_audio_features({}, torch.from_numpy(wave[:seconds * SR]), 480000,
                                                 data_truncating="rand_trunc", data_filling="repeatpad",
                                                 audio_cfg=model.audio_cfg.__dict__)
        rows.append(model.get_audio_embedding([features])[0].numpy())
    return np.stack(rows)


@torch.no_grad()
def fusion_reference(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Embeddings of the fusion model from a fixed mel_fusion input, not longer and longer."""
    generator = torch.Generator().manual_seed(1)
    mel = (torch.randn(1001, 64, generator=generator) * 10 - 40).half().float()
    mel_fusion = fusion_channels(mel)
    rows = [model.get_audio_embedding([{"mel_fusion": mel_fusion, "longer": torch.tensor([longer])}])[0].numpy()
            for longer in (False, True)]
    return {"mel": mel.half().numpy(), "fusion_embeddings": np.stack(rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="micro")
    parser.add_argument("--fusion", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--full", action="store_true", help="keep the STFT kernels in the checkpoint")
    args = parser.parse_args(argv)
    model = build_laion(args.size, args.fusion, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    state = {"module." + k: v for k, v in model.state_dict().items()}
    # torchlibrosa's fixed STFT kernels are 4.2 MB of cos/sin that every converter drops by name;
    # the committed fixture leaves them out and records their keys and shapes (restore_omitted puts
    # same-shaped tensors back). --full keeps them, as in laion's released files.
    omitted = {} if args.full else {k: list(state.pop(k).shape) for k in list(state) if ".stft.conv_" in k}
    torch.save({"state_dict": state, "epoch": 0}, args.out / "laion_clap.pt")
    if args.fusion:
        arrays = fusion_reference(model)
    else:
        clip = make_clip(max(SECONDS))
        arrays = {"clip": clip, "seconds": np.array(SECONDS), "embeddings": reference_embeddings(model, clip)}
    np.savez_compressed(args.out / "reference.npz", **arrays)
    record = {"size": args.size, "fusion": args.fusion, "seed": args.seed, "sizes": SIZES[args.size],
              "audio_cfg": audio_cfg(SIZES[args.size]["class_num"]), "laion_clap": "1.1.7",
              "fusion_type": "aff_2d" if args.fusion else None, "omitted": omitted}
    (args.out / "laion_config.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(state)} keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())
