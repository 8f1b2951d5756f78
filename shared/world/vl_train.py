"""Train the world's base VL model in stages, like LLaVA, then save it as a hub-style directory.

Stages (all by step counts, so a seed fixes the weights):
1. vision pretraining: per-patch heads read shape and color of the cell under each patch from the
   scene metadata, making the CLIP tower "pretrained" (the heads are dropped afterwards);
2. instruction tuning: projector and LM learn visual VQA (train split, visual family only,
   loss on answer tokens) with the tower frozen.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from shared.checkpoint import atomic_directory
from shared.cli import check_number
from shared.data.schema import Sample, read_manifest
from shared.logs import setup_logging
from shared.metrics import vqa_accuracy
from shared.world.generate import read_scenes
from shared.world.spec import COLORS, SHAPES, WorldSpec
from shared.world.vl_model import (
    PATCH_SIZE,
    VLModelConfig,
    answer_questions,
    build_base_vl,
    build_processor,
    format_prompt,
)

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass
class VLTrainConfig:
    """Model sizes, per-stage steps and learning rates, batch size and seed of base VL training."""

    model: VLModelConfig = field(default_factory=VLModelConfig)
    seed: int = 0
    batch_size: int = 64
    vision_steps: int = 400
    vqa_steps: int = 2500
    vision_lr: float = 2e-3
    vqa_lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    eval_batch_size: int = 256
    threads: int = 1

    def __post_init__(self) -> None:
        for name, low in (("seed", 0), ("batch_size", 1), ("vision_steps", 0), ("vqa_steps", 0), ("warmup_steps", 0),
                          ("eval_batch_size", 1), ("threads", 1)):
            check_number(f"vl.{name}", getattr(self, name), ge=low, integer=True)
        for name in ("vision_lr", "vqa_lr"):
            check_number(f"vl.{name}", getattr(self, name), gt=0)
        check_number("vl.weight_decay", self.weight_decay, ge=0)


@dataclass
class VisualQA:
    """Tokenised visual questions of a split, with the scene images they refer to."""

    pixel_values: torch.Tensor
    cell_shape: torch.Tensor
    cell_color: torch.Tensor
    image_index: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def visual_samples(data_dir: Path, split: str) -> list[Sample]:
    """The visual-family samples of a split's manifest."""
    return [s for s in read_manifest(Path(data_dir) / f"{split}.jsonl") if s.family == "visual"]


def _cell_labels(scenes: list[dict], grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell class ids, 0 for an empty cell: shape in 1..len(SHAPES), color in 1..len(COLORS)."""
    shape = torch.zeros(len(scenes), grid * grid, dtype=torch.long)
    color = torch.zeros_like(shape)
    for i, scene in enumerate(scenes):
        for obj in scene["objects"]:
            cell = obj["row"] * grid + obj["col"]
            shape[i, cell] = SHAPES.index(obj["shape"]) + 1
            color[i, cell] = COLORS.index(obj["color"]) + 1
    return shape, color


def load_visual_qa(data_dir: Path, split: str, processor: LlavaProcessor, spec: WorldSpec) -> VisualQA:
    """Load every image of a split into one tensor and tokenise its visual questions with answers."""
    if spec.cell != PATCH_SIZE:
        raise ValueError(f"spec cell size is {spec.cell} px (image_size {spec.image_size} / grid {spec.grid}); "
                         f"expected the vision patch size {PATCH_SIZE}, one patch per grid cell")
    scenes = read_scenes(data_dir, split)
    images = [Image.open(s["image"]).convert("RGB") for s in scenes]
    pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    cell_shape, cell_color = _cell_labels(scenes, spec.grid)
    index_of = {s["key"]: i for i, s in enumerate(scenes)}
    samples = visual_samples(data_dir, split)
    if not samples:
        raise ValueError(f"split {split!r} under {data_dir} has no visual questions; expected at least one")
    image_text = processor.replace_image_token({"pixel_values": pixel_values[:1]}, 0)
    tok = processor.tokenizer
    prompts = tok([format_prompt(s.question).replace(processor.image_token, image_text) for s in samples])["input_ids"]
    answers = tok([s.meta["answer"] for s in samples], add_special_tokens=False)["input_ids"]
    length = max(len(p) + len(a) + 1 for p, a in zip(prompts, answers))
    input_ids = torch.full((len(samples), length), tok.pad_token_id, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        target = a + [tok.eos_token_id]
        input_ids[i, : len(p) + len(target)] = torch.tensor(p + target)
        labels[i, len(p): len(p) + len(target)] = torch.tensor(target)
    unknown = (input_ids == tok.unk_token_id).any(dim=1).nonzero().flatten().tolist()
    if unknown:
        bad = samples[unknown[0]]
        raise ValueError(f"sample {bad.id!r}: question {bad.question!r} or answer {bad.meta['answer']!r} has words "
                         "outside the world vocabulary; expected only words of world_vocabulary()")
    image_index = torch.tensor([index_of[s.meta["scene"]] for s in samples])
    return VisualQA(pixel_values, cell_shape, cell_color, image_index, input_ids,
                    (input_ids != tok.pad_token_id).long(), labels)


def _schedule(opt: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then cosine decay to zero over `steps`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + float(np.cos(np.pi * (step - warmup) / max(1, steps - warmup))))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """`steps` index batches drawn from successive seeded permutations of range(n)."""
    order = torch.randperm(n, generator=gen)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        yield order[pos: pos + batch_size]
        pos += batch_size


def _run(name: str, steps: int, lr: float, loss_fn: Callable[[torch.Tensor], torch.Tensor],
         params: list[nn.Parameter], cfg: VLTrainConfig, n: int, gen: torch.Generator) -> float:
    """One AdamW stage of `steps` steps over seeded batches of range(n); returns its last-50-step mean loss."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    sched = _schedule(opt, steps, cfg.warmup_steps)
    recent: list[float] = []
    bar = tqdm(_batches(n, cfg.batch_size, steps, gen), total=steps, desc=f"base VL {name}", unit="step")
    for idx in bar:
        loss = loss_fn(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        recent = (recent + [loss.item()])[-50:]
        bar.set_postfix(loss=f"{np.mean(recent):.3f}", refresh=False)
    final = float(np.mean(recent)) if recent else float("nan")
    log.info("base VL %s: %d steps, final loss %.4f", name, steps, final)
    return final


def pretrain_vision(model: LlavaForConditionalGeneration, data: VisualQA, cfg: VLTrainConfig,
                    gen: torch.Generator) -> float:
    """Stage 1: per-patch heads for the shape, color (or empty) and grid cell under each patch."""
    tower = model.model.vision_tower
    cells = data.cell_shape.shape[1]
    sizes = (len(SHAPES) + 1, len(COLORS) + 1, cells)
    heads = nn.Linear(tower.config.hidden_size, sum(sizes))
    params = list(tower.parameters()) + list(heads.parameters())
    cell_ids = torch.arange(cells)

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        hidden = tower(data.pixel_values[idx], output_hidden_states=True).hidden_states[-1][:, 1:]
        shape, color, cell = heads(hidden).split(sizes, dim=-1)
        targets = (data.cell_shape[idx], data.cell_color[idx], cell_ids.expand(len(idx), cells))
        return sum(F.cross_entropy(o.flatten(0, 1), t.flatten()) for o, t in zip((shape, color, cell), targets))

    return _run("vision", cfg.vision_steps, cfg.vision_lr, loss_fn, params, cfg, len(data.pixel_values), gen)


def _vqa_loss(model: LlavaForConditionalGeneration, data: VisualQA) -> Callable[[torch.Tensor], torch.Tensor]:
    """Answer-token loss of a batch of question indices."""
    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        mask = data.attention_mask[idx]
        width = int(mask.sum(1).max())
        return model(input_ids=data.input_ids[idx, :width], attention_mask=mask[:, :width],
                     pixel_values=data.pixel_values[data.image_index[idx]], labels=data.labels[idx, :width]).loss
    return loss_fn


def train_vqa(model: LlavaForConditionalGeneration, data: VisualQA, cfg: VLTrainConfig,
              gen: torch.Generator) -> float:
    """Stage 2: projector and LM on visual VQA with the pretrained tower frozen."""
    model.model.vision_tower.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    loss = _run("vqa", cfg.vqa_steps, cfg.vqa_lr, _vqa_loss(model, data), params, cfg, len(data.input_ids), gen)
    model.model.vision_tower.requires_grad_(True)
    return loss


def evaluate_visual(model: LlavaForConditionalGeneration, processor: LlavaProcessor, data_dir: Path,
                    split: str, batch_size: int = 256) -> dict:
    """VQA accuracy of greedy answers on a split's visual questions, overall and per type."""
    samples = visual_samples(data_dir, split)
    if not samples:
        raise ValueError(f"split {split!r} under {data_dir} has no visual questions")
    model.eval()
    scores: dict[str, list[float]] = defaultdict(list)
    cache: dict[str, Image.Image] = {}
    for start in range(0, len(samples), batch_size):
        chunk = samples[start: start + batch_size]
        for s in chunk:
            if s.image not in cache:
                cache[s.image] = Image.open(s.image).convert("RGB")
        images = [cache[s.image] for s in chunk]
        preds = answer_questions(model, processor, images, [s.question for s in chunk])
        for s, pred in zip(chunk, preds):
            scores[s.qtype].append(vqa_accuracy(pred, list(s.answers)))
    per_type = {q: float(np.mean(v)) for q, v in sorted(scores.items())}
    overall = float(np.mean([x for v in scores.values() for x in v]))
    return {"split": split, "accuracy": overall, "per_type": per_type, "n": len(samples)}


PROBE_FILE = "probe_logits.safetensors"


@torch.no_grad()
def probe_logits(model: LlavaForConditionalGeneration, processor: LlavaProcessor, data_dir: Path,
                 n: int = 16) -> torch.Tensor:
    """Logits on the first n visual val questions: the fingerprint a reloaded model must reproduce."""
    samples = visual_samples(Path(data_dir), "val")[:n]
    inputs = processor(images=[Image.open(s.image).convert("RGB") for s in samples],
                       text=[format_prompt(s.question) for s in samples], return_tensors="pt", padding=True)
    return model.eval()(**inputs).logits


def save_base_vl(model: LlavaForConditionalGeneration, processor: LlavaProcessor, data_dir: Path,
                 out_dir: Path) -> None:
    """save_pretrained model and processor, plus the probe logits a reload must reproduce, atomically."""
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        save_file({"logits": probe_logits(model, processor, data_dir).contiguous()}, str(tmp / PROBE_FILE))


def fit_base_vl(data_dir: Path, spec: WorldSpec, cfg: VLTrainConfig) -> tuple[LlavaForConditionalGeneration,
                                                                              LlavaProcessor, dict]:
    """Build and train the base VL model in memory; returns it in eval mode, its processor and losses."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    processor = build_processor(spec)
    model = build_base_vl(spec, cfg.model)
    start = time.perf_counter()
    data = load_visual_qa(Path(data_dir), "train", processor, spec)
    loaded = time.perf_counter()
    log.info("base VL: %d train questions on %d images, %d params", len(data.input_ids),
             len(data.pixel_values), model.num_parameters())
    model.train()
    vision_loss = pretrain_vision(model, data, cfg, gen)
    vqa_loss = train_vqa(model, data, cfg, gen)
    stats = {"load_seconds": loaded - start, "train_seconds": time.perf_counter() - loaded,
             "vision_loss": vision_loss, "vqa_loss": vqa_loss}
    return model.eval(), processor, stats


def train_base_vl(data_dir: Path, out_dir: Path, spec: WorldSpec, cfg: VLTrainConfig) -> dict:
    """Train the base VL model on the visual train questions, save it to out_dir, return test metrics."""
    model, processor, stats = fit_base_vl(data_dir, spec, cfg)
    save_base_vl(model, processor, Path(data_dir), Path(out_dir))
    test = evaluate_visual(model, processor, Path(data_dir), "test", cfg.eval_batch_size)
    log.info("base VL: test accuracy %.4f %s, trained in %.1f s", test["accuracy"], test["per_type"],
             stats["train_seconds"])
    return {"test_accuracy": test["accuracy"], "test_per_type": test["per_type"], "test_n": test["n"],
            "params": model.num_parameters(), **stats, "config": asdict(cfg)}


def main(argv: list[str] | None = None) -> None:
    """Quality check: train on a generated world's data, save the model, print its visual test metrics."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("data_dir", type=Path, help="a generated world's data folder (with train/test manifests)")
    parser.add_argument("out_dir", type=Path, help="where the hub-style model directory is written")
    parser.add_argument("--seed", type=int, default=VLTrainConfig.seed)
    parser.add_argument("--world-seed", type=int, default=WorldSpec.seed, help="seed the world was generated with")
    args = parser.parse_args(argv)
    setup_logging()
    metrics = train_base_vl(args.data_dir, args.out_dir, WorldSpec(seed=args.world_seed), VLTrainConfig(seed=args.seed))
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
