"""Explain a SAFE bridge on a fixed set of questions: readouts, occlusion, faithfulness, failures, association bias.

`explain` runs everything `stage_a-explain` reports on the rows of one split (see stage_a.explain):
SAFE's and the base's greedy answers (scored by each dataset's metric); per question one forward at
gate 1 with the fusion blocks' readouts (stage_a.readouts); and on audio and audio-visual questions
occlusion over time windows of the clip against a silent clip's frames, deletion and insertion
curves of the occlusion and attention rankings against random orders (stage_a.attribution), and
the rank correlation of the two attributions. `summarize` turns the per-question records into
per-type means with 95 % CIs, confusions, "audio hurts" counts and the association-bias table.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from shared.data.audio_io import audio_info
from shared.dataset_metrics import DatasetScorer, check_sample
from shared.metrics import CORRECT
from shared.stats import mean_ci
from shared.world.generate import read_scenes
from shared.world.spec import SHAPE_OF_SOUND
from stage_a.attribution import Windows, compare, faithfulness, mixed_frames, occlusion, spearman
from stage_a.data import Split
from stage_a.evaluate import EvalSettings, eval_rows, generate_answers
from stage_a.readouts import BlockReadout, frame_attention, prompt_readouts, token_spans
from stage_a.setup import Setup

log = logging.getLogger(__name__)
ATTRIBUTED = ("audio", "audio_visual")  # the families that get occlusion and faithfulness
EXAMPLES = 5


@dataclass
class ExplainSettings:
    """k, time windows, random orders per question, seed, batch size and answer length."""

    k: int = 8
    windows: int = 16
    n_random: int = 4
    seed: int = 0
    batch_size: int = 128
    max_new_tokens: int = 4


def select_rows(split: Split, questions: int, seed: int) -> list[int]:
    """A family-stratified subset (stage_a.evaluate.eval_rows) holding about `questions` audio and audio-visual
    questions and the VL questions of the same draw; accuracy-type datasets only."""
    attributed = sum(s.family in ATTRIBUTED for s in split.samples)
    if not attributed:
        raise ValueError(f"{split.name} split has no audio or audio-visual questions; expected some to explain")
    size = min(len(split), round(questions * len(split) / attributed))
    return [i for i in eval_rows(split, size, seed) if check_sample(split.samples[i]).accuracy]


def silent_frames(setup: Setup, sample_rate: int, seconds: float) -> torch.Tensor:
    """The frozen encoder's valid frames (T, C) of a silent clip `seconds` long: occlusion's "no sound here"."""
    frames, mask = setup.encoder.encode([np.zeros(round(seconds * sample_rate), dtype=np.float32)], sample_rate)
    return frames[0][mask[0].bool()].float()


def clip_seconds(split: Split, i: int) -> float:
    """The length in seconds of the audio window question i is paired with."""
    ref = split.clip(i)
    end = audio_info(ref.path).duration if ref.end is None else ref.end
    return end - ref.start


def _repeat(inputs: dict, n: int) -> dict:
    return {key: value.repeat(n, *([1] * (value.dim() - 1))) for key, value in inputs.items()}


class Explainer:
    """Runs the per-question analyses of one SAFE model on one split."""

    def __init__(self, setup: Setup, split: Split, settings: ExplainSettings, sample_rate: int,
                 device: torch.device | str = "cpu") -> None:
        self.setup, self.split, self.settings, self.device = setup, split, settings, device
        self.model, self.collator = setup.model, setup.collator
        self.readout = BlockReadout(self.model)
        self.sample_rate = sample_rate
        self._silent: dict[float, torch.Tensor] = {}

    def silent(self, seconds: float) -> torch.Tensor:
        """Silent frames for a clip length, computed once per length."""
        if seconds not in self._silent:
            self._silent[seconds] = silent_frames(self.setup, self.sample_rate, seconds).to(self.device)
        return self._silent[seconds]

    def answers(self, rows: list[int], scorer: DatasetScorer, audio: bool) -> dict[int, dict]:
        """Greedy answers (raw, parsed, score) with audio at gate 1 or without audio."""
        eval_settings = EvalSettings(k=self.settings.k, batch_size=self.settings.batch_size,
                                     max_new_tokens=self.settings.max_new_tokens)
        raw = generate_answers(self.model, self.collator, self.split, rows, eval_settings, self.device, audio=audio)
        return {i: {"raw": text, "answer": scorer.answer(self.split.samples[i], text),
                    "score": scorer.score(self.split.samples[i], text)} for i, text in raw.items()}

    def readouts(self, rows: list[int]) -> dict[int, dict]:
        """Per row: the clean first answer token and, per block, relative update norms and answer attention."""
        out: dict[int, dict] = {}
        size = self.settings.batch_size
        for start in tqdm(range(0, len(rows), size), desc="readouts", unit="batch", leave=False):
            chunk = rows[start: start + size]
            batch = self.collator.prompt_batch(self.split, chunk).to(self.device)
            logits, blocks = prompt_readouts(self.model, self.readout, batch.inputs, batch.frames, batch.frame_mask,
                                             self.settings.k)
            for r, i in enumerate(chunk):
                spans = token_spans(batch.frame_mask[r].cpu(), self.settings.k, clip_seconds(self.split, i))
                out[i] = {"token": int(logits[r].argmax()), "token_spans": spans,
                          "blocks": {layer: {"norm_answer": float(b["norm_answer"][r]),
                                             "norm_prompt": float(b["norm_prompt"][r]),
                                             "attention": b["attention"][r].tolist()} for layer, b in blocks.items()}}
        return out

    def _target(self, inputs: dict, token: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(frames: torch.Tensor) -> torch.Tensor:
            mask = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
            logits = self.model(audio_frames=frames, frame_mask=mask, k=self.settings.k, gate=1.0,
                                **_repeat(inputs, frames.shape[0])).logits[:, -1].float()
            return logits.log_softmax(-1)[:, token]
        return forward

    def _scorer(self, i: int, inputs: dict, frames: torch.Tensor, baseline: torch.Tensor, windows: Windows,
                scorer: DatasetScorer) -> Callable[[np.ndarray], np.ndarray]:
        sample = self.split.samples[i]
        prompt_length = inputs["input_ids"].shape[1]

        def score(keep: np.ndarray) -> np.ndarray:
            out = []
            for start in range(0, len(keep), self.settings.batch_size):
                mixed = mixed_frames(frames, baseline, keep[start: start + self.settings.batch_size], windows)
                mask = torch.ones(mixed.shape[:2], dtype=torch.bool, device=mixed.device)
                generated = self.model.generate(audio_frames=mixed, frame_mask=mask, k=self.settings.k, gate=1.0,
                                                **_repeat(inputs, mixed.shape[0]),
                                                max_new_tokens=self.settings.max_new_tokens, do_sample=False)
                out += [scorer.score(sample, text) for text in self.collator.decode(generated, prompt_length)]
            return np.array(out)
        return score

    @torch.no_grad()
    def attribute(self, i: int, readout: dict, scorer: DatasetScorer) -> dict:
        """Occlusion and attention per window of question i's clip, their rank correlation and faithfulness."""
        batch = self.collator.prompt_batch(self.split, [i]).to(self.device)
        valid = int(batch.frame_mask[0].sum())
        frames = batch.frames[:, :valid].float()
        baseline = self.silent(clip_seconds(self.split, i))[None]
        if baseline.shape != frames.shape:
            raise ValueError(f"sample {self.split.samples[i].id!r}: the silent clip of the same length encodes to "
                             f"{tuple(baseline.shape[1:])} frames, the clip to {tuple(frames.shape[1:])}; expected "
                             "equal shapes (the encoder's frames depend only on the clip's length)")
        windows = Windows.of(valid, self.settings.windows)
        occ = occlusion(self._target(batch.inputs, readout["token"]), frames, baseline, windows)
        mask = torch.ones(valid, dtype=torch.bool)
        per_frame = np.mean([frame_attention(torch.tensor(b["attention"]), mask, self.settings.k).numpy()
                             for b in readout["blocks"].values()], axis=0)
        att = windows.per_window(per_frame)
        faith = faithfulness(self._scorer(i, batch.inputs, frames, baseline, windows, scorer),
                             {"occlusion": occ, "attention": att}, self.settings.n_random, self.settings.seed + i)
        seconds = clip_seconds(self.split, i) / valid
        return {"windows_s": [[a * seconds, b * seconds] for a, b in map(windows.bounds, range(windows.count))],
                "occlusion": occ.tolist(), "attention": att.tolist(), "spearman": spearman(att, occ),
                "faithfulness": faith}


def explain(setup: Setup, split: Split, rows: list[int], settings: ExplainSettings, sample_rate: int,
            device: torch.device | str = "cpu") -> list[dict]:
    """One record per row: question, answers of SAFE and the base, readouts and (audio, AV) attributions."""
    explainer = Explainer(setup, split, settings, sample_rate, device)
    scorer = DatasetScorer([split.samples[i] for i in rows])
    safe, base = explainer.answers(rows, scorer, audio=True), explainer.answers(rows, scorer, audio=False)
    readouts = explainer.readouts(rows)
    records = []
    for i in tqdm(rows, desc="explaining", unit="question"):
        s = split.samples[i]
        record = {"id": s.id, "question": s.question, "family": s.family, "qtype": s.qtype, "type": f"{s.family}.{s.qtype}",
                  "source": s.source, "truth": split.targets[i], "scene": s.meta.get("scene"), "safe": safe[i],
                  "base": base[i], **readouts[i]}
        if s.family in ATTRIBUTED:
            record["attribution"] = explainer.attribute(i, readouts[i], scorer)
        records.append(record)
    return records


def _ci(values: list[float]) -> dict | None:
    return mean_ci(values) if values else None


def _by_type(records: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["type"]].append(r)
    return dict(sorted(groups.items()))


def layer_table(records: list[dict]) -> dict[str, dict]:
    """Per type and block: relative update norm at the answer position and over the prompt, mean attention."""
    out = {}
    for qtype, members in _by_type(records).items():
        out[qtype] = {layer: {"norm_answer": mean_ci([r["blocks"][layer]["norm_answer"] for r in members]),
                              "norm_prompt": mean_ci([r["blocks"][layer]["norm_prompt"] for r in members]),
                              "attention": np.mean([r["blocks"][layer]["attention"] for r in members], axis=0).tolist()}
                      for layer in members[0]["blocks"]}
    return out


def faithfulness_table(records: list[dict]) -> dict:
    """Top-vs-random deletion and insertion areas for the occlusion and attention orders, and Spearman per type."""
    attributed = [r for r in records if "attribution" in r]
    if not attributed:
        return {}
    faith = [r["attribution"]["faithfulness"] for r in attributed]
    out = {f"{name}.{kind}": compare(faith, name, kind) for name in ("occlusion", "attention")
           for kind in ("deletion", "insertion")}
    rho = {}
    for qtype, members in _by_type(attributed).items():
        values = [r["attribution"]["spearman"] for r in members if r["attribution"]["spearman"] is not None]
        rho[qtype] = {"spearman": _ci(values), "undefined": len(members) - len(values)}
    return {"areas": out, "spearman": rho,
            "mean_curves": {f"{name}.{kind}": np.mean([f[name][kind]["curve"] for f in faith], axis=0).tolist()
                            for name in ("occlusion", "attention", "random") for kind in ("deletion", "insertion")}}


def failures(records: list[dict]) -> dict:
    """Per type: confusion counts (truth -> SAFE's answer) and the questions audio hurts (base right, SAFE wrong)."""
    out = {}
    for qtype, members in _by_type(records).items():
        confusion: dict[str, Counter] = defaultdict(Counter)
        for r in members:
            confusion[r["truth"]][r["safe"]["answer"]] += 1
        hurt = [r for r in members if r["base"]["score"] >= CORRECT > r["safe"]["score"]]
        out[qtype] = {"n": len(members), "confusion": {t: dict(c.most_common()) for t, c in sorted(confusion.items())},
                      "audio_hurts": len(hurt), "audio_helps": sum(r["safe"]["score"] >= CORRECT > r["base"]["score"]
                                                                   for r in members),
                      "examples": [{"id": r["id"], "question": r["question"], "truth": r["truth"],
                                    "base": r["base"]["answer"], "safe": r["safe"]["answer"]} for r in hurt[:EXAMPLES]]}
    return out


def scene_conditions(scene: dict) -> dict[str, bool | None]:
    """For a one-sound scene: is the sounding object's shape in the image, does another object share the source's
    colour (None without exactly one source), are there distractors (more than one object), and is there more than
    one object of the sound's shape (another candidate source)."""
    shape = SHAPE_OF_SOUND[scene["events"][0]["kind"]]
    sources = [o for o in scene["objects"] if o["shape"] == shape]
    others = [o for o in scene["objects"] if o["shape"] != shape]
    return {"source_visible": bool(sources),
            "color_shared": any(o["color"] == sources[0]["color"] for o in others) if len(sources) == 1 else None,
            "distractors": len(scene["objects"]) > 1,
            "several_candidates": len(sources) > 1}


def association_bias(records: list[dict], manifest: Path) -> dict:
    """Audio-visual world questions: SAFE's accuracy with each scene condition true vs false, with counts and CIs;
    the scene records are the world's beside the split's manifest ({split}.scenes.jsonl)."""
    av = [r for r in records if r["family"] == "audio_visual" and r["source"] == "world" and r["scene"]]
    if not av:
        return {}
    split = Path(manifest).name.removesuffix(".jsonl")
    scenes = {s["key"]: s for s in read_scenes(Path(manifest).parent, split)}
    missing = sorted({r["scene"] for r in av} - scenes.keys())
    if missing:
        raise ValueError(f"{Path(manifest).parent}/{split}.scenes.jsonl lacks scenes {missing[:5]}; expected a record for the "
                         "scene of every world question")
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"yes": [], "no": []})
    for r in av:
        for name, value in scene_conditions(scenes[r["scene"]]).items():
            if value is not None:
                groups[name]["yes" if value else "no"].append(r["safe"]["score"])
    return {name: {side: _ci(values) for side, values in sides.items()} for name, sides in groups.items()}


def summarize(records: list[dict], residual_scales: dict[int, float], manifest: Path) -> dict:
    """Every table of the explanation, from the per-question records."""
    return {"residual_scales": residual_scales, "layers": layer_table(records),
            "faithfulness": faithfulness_table(records), "failures": failures(records),
            "association_bias": association_bias(records, manifest)}
