"""laion-clap reference sets (written by laion's own code, `benchmarks/laion_reference.py`) and the
parity measure: our converted `ClapModel` + our front end against laion's embeddings.

A reference folder holds `laion_clap.pt` (laion's checkpoint layout; torchlibrosa's fixed STFT kernels
may be left out and are listed under "omitted" in `laion_config.json`), `laion_config.json` (sizes)
and `reference.npz` (see benchmarks/laion_reference.py for every array).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapTextConfig

from shared.clap_convert import htsat_config, main as convert_main
from shared.clap_features import clap_audio_embeddings
from shared.loading import load_json, load_npz, load_torch

LAION_SR = 48000
REFERENCE_FILE = "a file of a laion-clap reference folder written by benchmarks/laion_reference.py"


def reference_config(record: dict) -> ClapConfig:
    """The ClapConfig of a reference model: laion's HTSAT sizes and the small RoBERTa the script builds."""
    sizes = record["sizes"]
    text = ClapTextConfig(vocab_size=64, hidden_size=sizes["text_width"], num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=2 * sizes["text_width"], max_position_embeddings=40, layer_norm_eps=1e-5)
    return htsat_config(sizes["embed_dim"], sizes["depths"], sizes["num_heads"], record["fusion"],
                        projection_dim=sizes["joint"], text_config=text)


def prepare(folder: Path, work: Path) -> tuple[Path, Path, dict, dict[str, np.ndarray]]:
    """The reference's checkpoint (omitted keys restored, same shapes) and config folder under work,
    its record and its arrays."""
    folder, work = Path(folder), Path(work)
    record = load_json(folder / "laion_config.json", REFERENCE_FILE)
    checkpoint = load_torch(folder / "laion_clap.pt", REFERENCE_FILE)
    checkpoint["state_dict"].update({k: torch.zeros(shape) for k, shape in record["omitted"].items()})
    work.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, work / "laion_clap.pt")
    reference_config(record).save_pretrained(work / "config")
    return work / "laion_clap.pt", work / "config", record, load_npz(folder / "reference.npz", REFERENCE_FILE)


def fusion_channels(mel: torch.Tensor) -> torch.Tensor:
    """(T, F) mel -> (4, T, F): the same exact operations as benchmarks/laion_reference.py."""
    return torch.stack([mel, mel.flip(0), mel.roll(300, 0), mel * 0.5])


@torch.no_grad()
def parity(folder: Path, work: Path) -> dict:
    """Convert the reference with safe-convert-clap, then the max abs difference to laion's embeddings."""
    checkpoint, config, record, arrays = prepare(folder, work)
    out = Path(work) / "converted"
    if convert_main([str(checkpoint), str(config), str(out)]) != 0:
        raise ValueError(f"{checkpoint}: safe-convert-clap refused it (see its message above)")
    model = ClapModel.from_pretrained(out).eval()
    if record["fusion"]:
        mel_fusion = fusion_channels(torch.from_numpy(arrays["mel"]).float())[None]
        ours = torch.cat([model.get_audio_features(input_features=mel_fusion,
                                                   is_longer=torch.tensor([[longer]])).pooler_output
                          for longer in (False, True)])
        laion = torch.from_numpy(arrays["fusion_embeddings"])
        names = ["mel_not_longer", "mel_longer"]
    else:
        fe = ClapFeatureExtractor.from_pretrained(out)
        clip = arrays["clip"].astype(np.float32) / 32767.0  # laion's int16_to_float32
        ours = clap_audio_embeddings(model, fe, [clip[:s * LAION_SR] for s in arrays["seconds"]], LAION_SR)
        laion = torch.from_numpy(arrays["embeddings"])
        names = [f"clip_{s}s" for s in arrays["seconds"]]
    diff = (ours - laion).abs().amax(dim=1)
    return {"size": record["size"], "fusion": record["fusion"],
            "max_abs_diff": {n: float(d) for n, d in zip(names, diff)},
            "laion_rows_max_abs_diff": float((laion[0] - laion[1]).abs().max())}
