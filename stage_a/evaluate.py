"""Stage A evaluation on a fixed question set: audio gain, VL retention and gate-0 exactness.

The untouched base model is measured once, when the evaluator is built: its greedy answers
without audio (the audio questions' no-audio floor and the VL reference) and its next-token
logits at the end of each VL prompt. Each evaluation then measures SAFE with audio attached to
every question (gate 1, k = k_eval) and, on VL questions, at gate 0: its answers and the max
|logit diff| to the stored base logits, which must be exactly 0. Retention is the paired
difference of VL accuracy with audio vs the base on the same questions.

The gate-0 figures come from MIXED batches (stage_a.exactness): each VL question at gate 0 beside
its twin at gate 1, same prompt, image and audio frames, so the projector, fusion blocks, LoRA
scope and torch.where row selection all run. The base logits and answers they are compared with
are the bare base's on those same batches, measured once. A NaN in a gate-0 row counts as an
infinite logit difference.

Each question is scored with its dataset's metric (`shared.dataset_metrics`, keyed by the
sample's source: VQA accuracy for the world and VQAv2, exact match for GQA, ...). The accuracy
figures (audio, VL, per family and type) average the questions of accuracy-type datasets;
caption datasets (CIDEr-D) are reported only per dataset (`per_dataset`), with every dataset.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from shared.dataset_metrics import DatasetScorer, check_sample, dataset_summary
from shared.stats import mean_ci, paired_diff_ci
from stage_a.data import AUDIO_FAMILIES, Batch, Collator, Split
from stage_a.exactness import PARTNER_GATE, max_abs_diff, reference_inputs, reference_rows, twin_gates, twin_rows
from stage_a.model import SafeModel

log = logging.getLogger(__name__)


def shuffled_audio(batch: Batch, seed: int) -> Batch:
    """The batch with its audio rows permuted (the random-audio baseline): same clips, wrong questions."""
    perm = torch.randperm(len(batch.ids), generator=torch.Generator().manual_seed(seed))
    return Batch(batch.inputs, batch.labels, batch.is_vl, batch.frames[perm], batch.frame_mask[perm], batch.ids)


def eval_rows(split: Split, size: int, seed: int) -> list[int]:
    """A fixed, family-stratified subset of `size` rows (all rows if size is 0 or larger than the split)."""
    if size <= 0 or size >= len(split):
        return list(range(len(split)))
    rng = np.random.default_rng(seed)
    by_family: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(split.samples):
        by_family[s.family].append(i)
    rows: list[int] = []
    for family, members in sorted(by_family.items()):
        take = max(1, round(size * len(members) / len(split)))
        rows += sorted(rng.choice(members, size=min(take, len(members)), replace=False).tolist())
    return sorted(rows)


@dataclass
class EvalSettings:
    """How evaluation runs: k, batch size, answer and caption lengths, and the random-audio switch."""

    k: int = 8
    batch_size: int = 128
    max_new_tokens: int = 4
    caption_max_new_tokens: int = 30
    shuffle_audio: bool = False
    use_audio: bool = True
    gate: float = 1.0


def _batches(collator: Collator, split: Split, rows: list[int], settings: EvalSettings,
             device: torch.device | str, desc: str) -> Iterator[tuple[list[int], Batch]]:
    size = settings.batch_size
    for start in tqdm(range(0, len(rows), size), desc=desc, unit="batch", leave=False, disable=len(rows) <= size):
        chunk = rows[start: start + size]
        batch = collator.prompt_batch(split, chunk)
        if settings.shuffle_audio:
            batch = shuffled_audio(batch, seed=start)
        yield chunk, batch.to(device)


def _audio_kwargs(batch: Batch, settings: EvalSettings, audio: bool, gate: float) -> dict:
    if not (audio and settings.use_audio):
        return {}
    return {"audio_frames": batch.frames, "frame_mask": batch.frame_mask, "k": settings.k, "gate": gate}


@torch.no_grad()
def generate_answers(model: SafeModel, collator: Collator, split: Split, rows: list[int], settings: EvalSettings,
                     device: torch.device | str = "cpu", audio: bool = True, gate: float = 1.0) -> dict[int, str]:
    """Greedy answers per row, with audio at `gate` or without audio; captions get their own, longer budget."""
    captions = [i for i in rows if split.samples[i].family == "caption"]
    questions = [i for i in rows if split.samples[i].family != "caption"]
    out: dict[int, str] = {}
    for group, length in ((questions, settings.max_new_tokens), (captions, settings.caption_max_new_tokens)):
        for chunk, batch in _batches(collator, split, group, settings, device, "answering"):
            generated = model.generate(**_audio_kwargs(batch, settings, audio, gate), **batch.inputs,
                                       max_new_tokens=length, do_sample=False)
            out.update(zip(chunk, collator.decode(generated, batch.inputs["input_ids"].shape[1])))
    return out


class Evaluator:
    """Measures SAFE against the base model on fixed rows of one split."""

    def __init__(self, model: SafeModel, collator: Collator, split: Split, rows: list[int],
                 settings: EvalSettings, device: torch.device | str = "cpu") -> None:
        if not rows:
            raise ValueError(f"{split.name} evaluation has no rows; expected at least one question")
        self.model, self.collator, self.split, self.rows = model, collator, split, rows
        self.settings, self.device = settings, device
        self.scorer = DatasetScorer([split.samples[i] for i in rows])
        self.accuracy_rows = [i for i in rows if check_sample(split.samples[i]).accuracy]
        self.vl_rows = [i for i in self.accuracy_rows if split.is_vl(i)]
        self.audio_rows = [i for i in self.accuracy_rows if split.samples[i].family in AUDIO_FAMILIES]
        self.base_raw = self._generate(rows, audio=False, gate=0.0)
        self.base_scores = self._score(self.base_raw)
        # The bare base on the mixed batches' gate-0 rows: last-position logits (vl_rows order) and answers.
        self.base_logits, self.base_gate0_raw = self._mixed_pass(bare=True) if self.vl_rows else (None, {})

    def _generate(self, rows: list[int], audio: bool, gate: float) -> dict[int, str]:
        return generate_answers(self.model, self.collator, self.split, rows, self.settings, self.device, audio, gate)

    def _score(self, raw: dict[int, str]) -> dict[int, float]:
        return {i: self.scorer.score(self.split.samples[i], text) for i, text in raw.items()}

    @torch.no_grad()
    def _mixed_pass(self, bare: bool) -> tuple[torch.Tensor, dict[int, str]]:
        """Last-position logits and answers of the gate-0 rows of mixed batches (each VL row at gate 0 beside its
        gate-1 twin): from SAFE, or with `bare` from the bare base on the inputs those rows must match."""
        size = max(1, self.settings.batch_size // 2)  # twins double the rows
        logits, answers = [], {}
        for start in tqdm(range(0, len(self.vl_rows), size), desc="mixed gate 0/1", unit="batch", leave=False,
                          disable=len(self.vl_rows) <= size):
            chunk = self.vl_rows[start: start + size]
            batch = self.collator.prompt_batch(self.split, twin_rows(chunk)).to(self.device)
            gates = twin_gates(len(chunk), PARTNER_GATE, self.device)
            off = gates == 0
            if bare:
                inputs, rows = reference_inputs(self.model, batch.inputs, off), reference_rows(self.model, off)
                forward, generate, audio = self.model.base, self.model.base.generate, {}
            else:
                inputs, rows, forward, generate = batch.inputs, off, self.model, self.model.generate
                audio = {"audio_frames": batch.frames, "frame_mask": batch.frame_mask, "k": self.settings.k,
                         "gate": gates}
            logits.append(forward(**audio, **inputs).logits[rows, -1].float().cpu())
            generated = generate(**audio, **inputs, max_new_tokens=self.settings.max_new_tokens, do_sample=False)
            answers.update(zip(chunk, self.collator.decode(generated[rows], inputs["input_ids"].shape[1])))
        return torch.cat(logits), answers

    def base_summary(self) -> dict:
        """Accuracy of the base model without audio: VL reference and the audio questions' floor."""
        return {"vl_acc_base": self._mean(self.base_scores, self.vl_rows),
                "audio_acc_base": self._mean(self.base_scores, self.audio_rows)}

    @staticmethod
    def _mean(scores: dict[int, float], rows: list[int]) -> float | None:
        return float(np.mean([scores[i] for i in rows])) if rows else None

    def run(self, detail: bool = False) -> dict:
        """SAFE with audio (at settings.gate) on every row, and at gate 0 on VL rows in mixed batches (each beside
        its gate-1 twin; `gate0_mixed_rows` rows, `gate0_answers_differ` of them answered unlike the bare base);
        paired retention delta.

        With `detail`, also per-family and per-type accuracy, each dataset with its own metric (`per_dataset`)
        and the per-question `predictions`.
        """
        was_training = self.model.training
        self.model.eval()
        raw = self._generate(self.rows, audio=True, gate=self.settings.gate)
        safe = self._score(raw)
        result = {"audio_acc": mean_ci([safe[i] for i in self.audio_rows]) if self.audio_rows else None,
                  **self.base_summary(), "n": {"audio": len(self.audio_rows), "vl": len(self.vl_rows)}}
        if self.vl_rows:
            logits, answers = self._mixed_pass(bare=False)
            gate0 = self._score(answers)
            retention = paired_diff_ci([safe[i] for i in self.vl_rows], [self.base_scores[i] for i in self.vl_rows])
            result |= {
                "vl_acc_with_audio": self._mean(safe, self.vl_rows),
                "vl_acc_gate0": self._mean(gate0, self.vl_rows),
                "gate0_max_abs_logit_diff": max_abs_diff(logits, self.base_logits),
                "gate0_mixed_rows": len(self.vl_rows),
                "gate0_answers_differ": sum(answers[i] != self.base_gate0_raw[i] for i in self.vl_rows),
                "vl_degradation_pts": 0.0 - 100.0 * retention["mean_diff"],  # 0.0 - x: no "-0.0" in reports
                "vl_delta_ci95_pts": [100.0 * x for x in retention["ci95"]],
            }
        self.model.train(was_training)
        if detail:
            result["per_family"] = self._grouped(safe, lambda s: s.family)
            result["per_family_base"] = self._grouped(self.base_scores, lambda s: s.family)
            result["per_qtype"] = self._grouped(safe, lambda s: f"{s.family}.{s.qtype}")
            result["per_qtype_base"] = self._grouped(self.base_scores, lambda s: f"{s.family}.{s.qtype}")
            result["predictions"] = [self._record(i, raw[i], safe[i]) for i in self.rows]
            result["per_dataset"] = dataset_summary(result["predictions"])
        return result

    def _record(self, i: int, raw: str, score: float) -> dict:
        s = self.split.samples[i]
        return {"id": s.id, "question": s.question, "answers": list(s.answers), "family": s.family, "qtype": s.qtype,
                "source": s.source, "metric": check_sample(s).name, "k": self.settings.k, "gate": self.settings.gate,
                "raw": raw, "answer": self.scorer.answer(s, raw), "score": score, "base_raw": self.base_raw[i],
                "base_answer": self.scorer.answer(s, self.base_raw[i]), "base_score": self.base_scores[i]}

    def _grouped(self, scores: dict[int, float], key) -> dict[str, dict]:
        groups: dict[str, list[float]] = defaultdict(list)
        for i in self.accuracy_rows:
            groups[key(self.split.samples[i])].append(scores[i])
        return {name: mean_ci(v) for name, v in sorted(groups.items())}
