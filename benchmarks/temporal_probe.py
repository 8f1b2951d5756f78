"""Benchmark: where the order of two sounds is lost between the embedded world's CLAP frames and the LM.

Run: python benchmarks/temporal_probe.py [--world DIR] [--bridge runs/stage_a/best ...] [--ks 4 8 16]
Reads an already built world (never builds one) and its cached CLAP frames (stage_a's feature cache; a clip
missing there is encoded once and cached). Every `audio.order` clip ("which comes first, the A or the B?")
of the train, val and test splits is used: probes train on train, pick their L2 strength on val and are
scored on test, where the answer is predicted between the two kinds the question names (chance 0.5).

Probes (multinomial logistic regression over the three kinds, features standardised on train), each on one
view of a clip:
- encoder frames: the whole-clip mean (cannot know order: a sanity check that should sit at chance), the
  means of the first and second half of the frames, all frames flattened in order, the means over the frames
  each event covers (ground-truth spans: do frames at an event's time carry its kind?), and the raw segment
  means the projector pools at each k (pooling alone, no MLP);
- each trained bridge's projector tokens at each k: flattened in order, and their mean;
- the fusion: how much of each token is its time code (tokens recomputed with the segments' time codes
  reversed), whether a fusion block's output changes when the token order is reversed (cross-attention has
  no position on its keys), and an attention readout (learned queries over the tokens, permutation
  invariant like the fusion) that must find order in the token values alone, on the tokens and on each
  block's rank-r value projections;
- the LM side: what each bridge's own run answered to the test order questions (its predictions.jsonl:
  the first kind, the second, or neither), and the input-embedding norms of the frozen base's question words
  (words only audio questions use were never trained: the base VL learns visual questions only).
Where the events sit comes from the clean signal: `synthesize` of the scene at a very high SNR draws the same
random stream as the world's clip, so its non-zero samples are the pulses of the saved clip.
Accuracies carry a percentile-bootstrap 95 % CI over test clips (shared.stats.mean_ci). Two controls must sit at
chance: the whole-clip mean and the flattened frames in a random time order. About 50 s on one thread.
Results go to benchmarks/results/temporal_probe.json.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from shared.benchmark import save_result
from shared.encoders import ClapEncoder, EncoderSettings
from shared.features import AudioRef, valid_frames_encoder
from shared.loading import load_json, load_safetensors
from shared.logs import setup_logging
from shared.stats import mean_ci
from shared.world.build import default_world_dir
from shared.world.scenes import Scene, SceneObject, SoundEvent
from shared.world.sounds import synthesize
from shared.world.spec import SOUND_OF_SHAPE, WorldSpec
from stage_a.fusion import FusionBlock, FusionConfig
from stage_a.model import BRIDGE_FILE, CONFIG_FILE, WEIGHTS_FILE
from stage_a.projector import AudioProjector, ProjectorConfig, segment_weights, time_code
from stage_a.setup import feature_cache

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "temporal_probe.json"
BRIDGES = (ROOT / "runs" / "stage_a" / "best", ROOT / "runs" / "i13" / "ignore_full" / "best")
KINDS = tuple(SOUND_OF_SHAPE.values())
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
CLEAN_SNR_DB = 300.0
PULSE_THRESHOLD = 1e-4
EVENT_GAP_SECONDS = 0.2  # pulses of one event are 0.12 s apart, events at least 0.3 s (shared.world.sounds)
SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)


@dataclass
class OrderClip:
    """One order clip: its frames (T, C), the two kinds in time order and the seconds each event spans."""

    key: str
    frames: torch.Tensor
    kinds: tuple[str, str]
    spans: tuple[tuple[float, float], tuple[float, float]]


def world_spec(world: Path) -> WorldSpec:
    """The WorldSpec a built world was made from (its build.json)."""
    record_path = world / "build.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path} does not exist; expected a built world (run `safe-world build`)")
    spec = dict(json.loads(record_path.read_text(encoding="utf-8"))["spec"])
    spec["snr_db"] = tuple(spec["snr_db"])
    return WorldSpec(**spec)


def event_spans(spec: WorldSpec, record: dict) -> tuple[tuple[float, float], tuple[float, float]]:
    """[start, end) seconds of the two events of a scene record, from its clean (noise-free) signal."""
    scene = Scene(record["split"], record["index"], tuple(SceneObject(**o) for o in record["objects"]),
                  tuple(SoundEvent(**e) for e in record["events"]), CLEAN_SNR_DB)
    on = np.flatnonzero(np.abs(synthesize(spec, scene)) > PULSE_THRESHOLD)
    breaks = np.flatnonzero(np.diff(on) > EVENT_GAP_SECONDS * spec.sample_rate)
    if len(breaks) != 1:
        raise ValueError(f"scene {record['key']}: the clean signal has {len(breaks) + 1} sound groups; "
                         "expected 2 events")
    sr = spec.sample_rate
    return (on[0] / sr, (on[breaks[0]] + 1) / sr), (on[breaks[0] + 1] / sr, (on[-1] + 1) / sr)


def load_clips(world: Path, spec: WorldSpec, encoder: ClapEncoder) -> dict[str, list[OrderClip]]:
    """The order clips of every split with their cached frames and event spans."""
    cache = feature_cache(encoder, "")
    clips = {}
    for split in SPLITS:
        lines = (world / "data" / f"{split}.scenes.jsonl").read_text(encoding="utf-8").splitlines()
        records = [r for r in map(json.loads, lines) if len(r["events"]) == 2]
        refs = [AudioRef(str(world / "data" / r["audio"]), 0.0, spec.clip_seconds) for r in records]
        frames = cache.features(refs, valid_frames_encoder(encoder, spec.sample_rate))
        clips[split] = [OrderClip(r["key"], f.float(), (r["events"][0]["kind"], r["events"][1]["kind"]),
                                  event_spans(spec, r)) for r, f in zip(records, frames)]
    log.info("order clips: %s (feature cache %d hits, %d encoded)", {s: len(c) for s, c in clips.items()},
             cache.hits, cache.misses)
    return clips


def frames_covering(span: tuple[float, float], frame_seconds: float, frames: int) -> list[int]:
    """Indices of the frames that overlap [start, end) seconds."""
    first = int(span[0] // frame_seconds)
    last = int(np.ceil(span[1] / frame_seconds - 1e-9))
    return list(range(first, min(last, frames)))


def layout(clips: list[OrderClip], frame_seconds: float) -> dict:
    """How many valid frames order clips have and where their events sit."""
    lengths = np.array([c.frames.shape[0] for c in clips])
    spans = np.array([[s for span in c.spans for s in span] for c in clips])
    covered = [[len(frames_covering(span, frame_seconds, c.frames.shape[0])) for span in c.spans] for c in clips]
    half = lengths * frame_seconds / 2
    describe = lambda a: {"min": round(float(a.min()), 3), "median": round(float(np.median(a)), 3),  # noqa: E731
                          "max": round(float(a.max()), 3)}
    return {
        "clips": len(clips), "frame_seconds": frame_seconds, "valid_frames": describe(lengths),
        "event1_seconds": {"start": describe(spans[:, 0]), "end": describe(spans[:, 1])},
        "event2_seconds": {"start": describe(spans[:, 2]), "end": describe(spans[:, 3])},
        "frames_per_event": {"event1": describe(np.array(covered)[:, 0]), "event2": describe(np.array(covered)[:, 1])},
        "last_sound_seconds": describe(spans[:, 3]),
        "share_event2_ends_in_first_half": round(float(np.mean(spans[:, 3] <= half)), 4),
        "share_event2_starts_in_first_half": round(float(np.mean(spans[:, 2] < half)), 4),
    }


def _labels(clips: list[OrderClip]) -> tuple[torch.Tensor, torch.Tensor]:
    """The first kind's index and a (N, 3) mask of the two kinds the question names."""
    first = torch.tensor([KINDS.index(c.kinds[0]) for c in clips])
    named = torch.zeros(len(clips), len(KINDS), dtype=torch.bool)
    for i, c in enumerate(clips):
        named[i, [KINDS.index(k) for k in c.kinds]] = True
    return first, named


def _fit(x: torch.Tensor, y: torch.Tensor, l2: float, seed: int) -> torch.nn.Linear:
    """Multinomial logistic regression by full-batch L-BFGS with an L2 penalty on the weights."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], len(KINDS))
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=200, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y) + l2 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


def _correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, named: torch.Tensor) -> np.ndarray:
    """Per clip 1.0 when the higher-scored of the two named kinds is the first one."""
    with torch.no_grad():
        logits = model(x).masked_fill(~named, float("-inf"))
    return (logits.argmax(-1) == y).float().numpy()


def _scores(model: torch.nn.Module, x: dict[str, torch.Tensor], y: dict[str, tuple[torch.Tensor, torch.Tensor]],
            seed: int) -> dict:
    """Test accuracy with its 95 % CI over test clips, and train accuracy (how much the probe overfits)."""
    test = mean_ci(_correct(model, x["test"], *y["test"]), seed=seed)
    return {"test_accuracy": round(test["mean"], 4), "ci95": [round(v, 4) for v in test["ci95"]], "n": test["n"],
            "train_accuracy": round(float(_correct(model, x["train"], *y["train"]).mean()), 4)}


def probe(features: dict[str, torch.Tensor], clips: dict[str, list[OrderClip]], seed: int) -> dict:
    """Train on train, choose the L2 strength on val, score on test: accuracy with a 95 % CI over test clips."""
    mean, std = features["train"].mean(0), features["train"].std(0).clamp(min=1e-6)
    x = {s: (features[s] - mean) / std for s in SPLITS}
    y = {s: _labels(clips[s]) for s in SPLITS}
    best = None
    for l2 in L2_GRID:
        model = _fit(x["train"], y["train"][0], l2, seed)
        val = float(_correct(model, x["val"], *y["val"]).mean())
        if best is None or val > best[0]:
            best = (val, l2, model)
    val, l2, model = best
    return {**_scores(model, x, y, seed), "val_accuracy": round(val, 4), "l2": l2, "dims": int(x["train"].shape[1])}


def frame_views(clip: OrderClip, frame_seconds: float, ks: list[int],
                rng: torch.Generator) -> dict[str, torch.Tensor]:
    """Views of one clip's frames: mean, halves, flattened (also in a random time order: a control that must
    fall to chance), event spans and the projector's raw segment means."""
    f = clip.frames
    half = f.shape[0] // 2
    views = {"mean": f.mean(0), "halves": torch.cat([f[:half].mean(0), f[half:].mean(0)]), "flat": f.reshape(-1),
             "flat_time_shuffled": f[torch.randperm(f.shape[0], generator=rng)].reshape(-1),
             "event_spans": torch.cat([f[frames_covering(s, frame_seconds, f.shape[0])].mean(0) for s in clip.spans])}
    mask = torch.ones(1, f.shape[0], dtype=torch.bool)
    for k in ks:
        views[f"segments_k{k}"] = (segment_weights(mask, k)[0].float() @ f).reshape(-1)
    return views


def frame_probes(clips: dict[str, list[OrderClip]], frame_seconds: float, ks: list[int], seed: int) -> dict:
    """Every frame view's probe."""
    rng = torch.Generator().manual_seed(seed)
    views = {s: [frame_views(c, frame_seconds, ks, rng) for c in clips[s]] for s in SPLITS}
    return {name: probe({s: torch.stack([v[name] for v in views[s]]) for s in SPLITS}, clips, seed)
            for name in views["train"][0]}


def load_bridge(bridge: Path) -> tuple[AudioProjector, list[FusionBlock], list[int]]:
    """A saved bridge's projector, fusion blocks (safetensors weights, eval mode) and their decoder layers."""
    config = load_json(bridge / CONFIG_FILE, BRIDGE_FILE)
    state = load_safetensors(bridge / WEIGHTS_FILE, BRIDGE_FILE)
    projector = AudioProjector(ProjectorConfig(**config["projector"]))
    projector.load_state_dict({k.removeprefix("projector."): v for k, v in state.items()
                               if k.startswith("projector.")})
    fusion_config = FusionConfig(**{k: tuple(v) if k == "layers" else v for k, v in config["fusion"].items()})
    blocks = []
    for layer in config["record"]["bridge"]["layers"]:
        block = FusionBlock(projector.config.hidden_size, fusion_config)
        prefix = f"fusion.blocks.{layer}."
        block.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
        blocks.append(block.eval())
    return projector.eval(), blocks, config["record"]["bridge"]["layers"]


@torch.no_grad()
def tokens_with_code(projector: AudioProjector, frames: torch.Tensor, k: int, code: torch.Tensor) -> torch.Tensor:
    """The projector's tokens (B, k, H) of full-length clips with a given (k, TIME_CODE_DIM) time code."""
    mask = torch.ones(frames.shape[:2], dtype=torch.bool)
    pooled = segment_weights(mask, k).float() @ projector.norm(frames)
    return projector.mlp(torch.cat([pooled, code.expand(frames.shape[0], -1, -1)], dim=-1))


def attention_readout(tokens: dict[str, torch.Tensor], clips: dict[str, list[OrderClip]], seed: int,
                      queries: int = 4, steps: int = 300) -> dict:
    """A permutation-invariant reader like the fusion: learned queries attend over the tokens, then a linear head."""
    mean = tokens["train"].mean((0, 1))
    std = tokens["train"].std((0, 1)).clamp(min=1e-6)
    x = {s: (tokens[s] - mean) / std for s in SPLITS}
    y = {s: _labels(clips[s]) for s in SPLITS}
    hidden = x["train"].shape[-1]

    class Reader(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = torch.nn.Parameter(torch.randn(queries, hidden) / hidden ** 0.5)
            self.head = torch.nn.Linear(queries * hidden, len(KINDS))

        def forward(self, a: torch.Tensor) -> torch.Tensor:
            attn = torch.softmax(torch.einsum("qh,bkh->bqk", self.q, a) / hidden ** 0.5, dim=-1)
            return self.head(torch.einsum("bqk,bkh->bqh", attn, a).reshape(a.shape[0], -1))

    torch.manual_seed(seed)
    reader = Reader()
    opt = torch.optim.Adam(reader.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(reader(x["train"]), y["train"][0]).backward()
        opt.step()
    return {**_scores(reader, x, y, seed), "queries": queries, "steps": steps}


@torch.no_grad()
def fusion_order_blind(blocks: list[FusionBlock], tokens: torch.Tensor, seed: int) -> float:
    """Max abs change of each fusion block's output when the token order is reversed (LM-sized random queries)."""
    torch.manual_seed(seed)
    hidden = torch.randn(tokens.shape[0], 6, tokens.shape[-1])
    mask = torch.ones(tokens.shape[:2], dtype=torch.bool)
    gate = torch.ones(tokens.shape[0])
    return max(float((b(hidden, tokens, mask, gate) - b(hidden, tokens.flip(1), mask, gate)).abs().max())
               for b in blocks)


@torch.no_grad()
def time_code_share(projector: AudioProjector, frames: torch.Tensor, tokens: torch.Tensor, k: int) -> dict:
    """How much of the tokens is their time code: the median relative change when the codes are reversed, and
    the share of token variance between positions (what a token says about "when" rather than "what")."""
    drift = float((tokens - projector(frames, k)[0]).abs().max())
    if drift > 1e-5:
        raise RuntimeError(f"tokens_with_code differs from AudioProjector.forward by {drift} at k={k}; "
                           "expected the same tokens (the projector changed)")
    swapped = tokens_with_code(projector, frames, k, time_code(k).flip(0))
    change = (tokens - swapped).norm(dim=-1) / tokens.norm(dim=-1).clamp(min=1e-12)
    between = tokens.mean(0).var(0, unbiased=False).sum()
    total = tokens.reshape(-1, tokens.shape[-1]).var(0, unbiased=False).sum()
    return {"time_code_relative_change": round(float(change.median()), 4),
            "position_variance_share": round(float(between / total), 4)}


def bridge_probes(bridge: Path, clips: dict[str, list[OrderClip]], ks: list[int], seed: int) -> dict:
    """Token probes, time-code share, fusion order-blindness and the attention readout of one bridge at each k."""
    projector, blocks, layers = load_bridge(bridge)
    frames = {s: torch.stack([c.frames for c in clips[s]]) for s in SPLITS}
    result = {"bridge": str(bridge.relative_to(ROOT) if bridge.is_relative_to(ROOT) else bridge)}
    for k in ks:
        code = time_code(k)
        tokens = {s: tokens_with_code(projector, frames[s], k, code) for s in SPLITS}
        result[f"k{k}"] = {
            "tokens_flat": probe({s: t.reshape(len(t), -1) for s, t in tokens.items()}, clips, seed),
            "tokens_mean": probe({s: t.mean(1) for s, t in tokens.items()}, clips, seed),
            "attention_readout": attention_readout(tokens, clips, seed),
            **time_code_share(projector, frames["test"], tokens["test"], k),
            "fusion_reversed_tokens_max_abs_diff": fusion_order_blind(blocks, tokens["test"][:32], seed),
        }
        with torch.no_grad():
            values = [{s: block.v(t) for s, t in tokens.items()} for block in blocks]
        for layer, v in zip(layers, values):
            result[f"k{k}"][f"fusion_values_layer{layer}"] = {
                "flat": probe({s: t.reshape(len(t), -1) for s, t in v.items()}, clips, seed),
                "attention_readout": attention_readout(v, clips, seed)}
        log.info("%s k=%d: %s", bridge, k, {n: v for n, v in result[f"k{k}"].items() if not isinstance(v, dict)})
    return result


def answer_breakdown(run: Path, world: Path) -> dict:
    """What a run's test predictions answer to order questions: the first kind, the second, or something else."""
    path = run / "predictions.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected the predictions of the run that saved the bridge")
    lines = (world / "data" / "test.scenes.jsonl").read_text(encoding="utf-8").splitlines()
    kinds = {r["key"]: [e["kind"] for e in r["events"]] for r in map(json.loads, lines)}
    counts: Counter = Counter()
    answers: Counter = Counter()
    for row in map(json.loads, path.read_text(encoding="utf-8").splitlines()):
        if row["qtype"] != "order":
            continue
        first, second = kinds[row["id"].split("/", 1)[1].rsplit("/", 1)[0]]
        counts["first" if row["answer"] == first else "second" if row["answer"] == second else "neither"] += 1
        answers[row["answer"]] += 1
    total = sum(counts.values())
    return {"predictions": str(path), "n": total, "share": {c: round(counts[c] / total, 4) for c in
                                                            ("first", "second", "neither")},
            "top_answers": dict(answers.most_common(5))}


def question_words(world: Path) -> dict:
    """Input-embedding norms of the frozen base's question words: words seen in its (visual) training vs audio-only."""
    processor = AutoProcessor.from_pretrained(world / "models" / "vl")
    embeddings = AutoModelForImageTextToText.from_pretrained(world / "models" / "vl").get_input_embeddings().weight
    tokenizer = processor.tokenizer
    words: dict[str, set[str]] = {"visual": set(), "audio": set()}
    templates = {}
    for row in map(json.loads, (world / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()):
        family = "visual" if row["family"] == "visual" else "audio"
        tokens = tokenizer.tokenize(row["question"])
        words[family].update(tokens)
        templates.setdefault(row["qtype"] if family == "audio" else "", tokens)
    norm = lambda w: round(float(embeddings[tokenizer.convert_tokens_to_ids(w)].norm()), 4)  # noqa: E731
    audio_only = sorted(words["audio"] - words["visual"])
    return {"median_norm_visual_question_words": float(np.median([norm(w) for w in words["visual"]])),
            "median_norm_audio_only_words": float(np.median([norm(w) for w in audio_only])),
            "audio_only_words": audio_only,
            "order_question": {w: norm(w) for w in templates["order"]},
            "pitch_question": {w: norm(w) for w in templates["pitch"]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=default_world_dir(WorldSpec()))
    parser.add_argument("--bridge", type=Path, nargs="*", default=list(BRIDGES))
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    spec = world_spec(args.world)
    encoder = ClapEncoder(EncoderSettings(str(args.world / "models" / "clap")))
    clips = load_clips(args.world, spec, encoder)
    result = {
        "world": str(args.world), "seed": args.seed, "chance": 0.5,
        "clips": {s: len(c) for s, c in clips.items()},
        "layout_test": layout(clips["test"], encoder.frame_seconds),
        "frames": frame_probes(clips, encoder.frame_seconds, args.ks, args.seed),
        "bridges": [{**bridge_probes(b, clips, args.ks, args.seed),
                     "run_answers": answer_breakdown(b.parent, args.world)} for b in args.bridge],
        "question_words": question_words(args.world),
    }
    save_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
