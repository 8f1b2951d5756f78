"""A Stage A checkpoint ready to answer the questions of one split with any Stage B action.

Both the outcome table (`stage_b-outcomes`, batched) and live mode (`stage_b.live`, one question
at a time) answer through this class, so the two can only differ in batching and timing, never
in how a question is prompted, answered, scored or counted.

Each question is scored by its dataset's metric (`shared.dataset_metrics`): VQA accuracy for the
world and VQAv2, exact match for GQA, and so on. Stage B's reward is an accuracy, so a split
holding a caption dataset (CIDEr-D, not an accuracy) is refused when the runner is built.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from shared.data.audio_io import load_audio
from shared.dataset_metrics import DatasetScorer, check_sample
from shared.features import pad_frames, valid_frames_encoder
from stage_a.config import TrainConfig
from stage_a.data import Batch
from stage_a.flops import encoder_flops, safe_flops
from stage_a.prefix import image_token_id
from stage_a.setup import build_setup
from stage_b.policy_features import audio_preview, feature_columns, query_features

MAX_NEW_TOKENS = 4


class SafeRunner:
    """SAFE (base + bridge from `checkpoint`) with the frozen encoder and one checked split."""

    def __init__(self, cfg: TrainConfig, checkpoint: Path, split: str) -> None:
        setup = build_setup(cfg, splits=(split,), bridge_dir=checkpoint)
        self.setup = setup
        self.data = getattr(setup, split)
        for sample in self.data.samples:
            metric = check_sample(sample)
            if not metric.accuracy:
                raise ValueError(f"split {split!r}, dataset {sample.source!r}, sample {sample.id!r} is scored with "
                                 f"{metric.label}, not an accuracy; Stage B's reward needs accuracy-scored questions")
        self.scorer = DatasetScorer(self.data.samples)
        self.model = setup.model.eval()
        self.collator = setup.collator
        self.encoder = setup.encoder
        self.sample_rate = cfg.data.sample_rate
        self.row_of = {s.id: i for i, s in enumerate(self.data.samples)}
        self.encoder_gflops = encoder_flops(self.encoder) / 1e9
        self._gflops = functools.lru_cache(maxsize=None)(self._count_gflops)
        self._embed = self.model.base.get_input_embeddings()
        self._image_id = image_token_id(self.model.base)
        self._previews: dict = {}

    def batch(self, rows: list[int]) -> Batch:
        """Left-padded prompts of `rows` with their cached audio frames."""
        return self.collator.prompt_batch(self.data, rows)

    def encode(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the frozen encoder on the rows' audio now (live mode), as the cache did once."""
        return pad_frames(valid_frames_encoder(self.encoder, self.sample_rate)([self.data.clip(i) for i in rows]))

    def full_window(self) -> np.ndarray:
        """A silent clip of the encoder's whole window (every clip is padded to it)."""
        return np.zeros(int(self.encoder.max_seconds * self.sample_rate), dtype=np.float32)

    @staticmethod
    def audio_inputs(batch: Batch, k: int, frames: torch.Tensor | None = None,
                     frame_mask: torch.Tensor | None = None) -> dict:
        """SafeModel's audio keyword arguments for action k (none for k = 0); the batch's cached frames by default."""
        if k == 0:
            return {}
        return {"audio_frames": batch.frames if frames is None else frames,
                "frame_mask": batch.frame_mask if frame_mask is None else frame_mask, "k": k, "gate": 1.0}

    @torch.no_grad()
    def answer(self, batch: Batch, k: int, frames: torch.Tensor | None = None,
               frame_mask: torch.Tensor | None = None) -> tuple[list[str], torch.Tensor]:
        """Greedy answers with k audio tokens (k = 0: the base path), and the first answer token's probability."""
        out = self.model.generate(**self.audio_inputs(batch, k, frames, frame_mask), **batch.inputs,
                                  max_new_tokens=MAX_NEW_TOKENS, do_sample=False, output_scores=True,
                                  return_dict_in_generate=True)
        confidence = out.scores[0].float().softmax(-1).max(-1).values
        return self.collator.decode(out.sequences, batch.inputs["input_ids"].shape[1]), confidence

    def scores(self, rows: list[int], answers: list[str]) -> list[float]:
        """Each raw answer's score by its dataset's metric (VQA accuracy for the world) against the row's answers."""
        return [self.scorer.score(self.data.samples[i], a) for i, a in zip(rows, answers)]

    def gflops(self, batch: Batch, k: int) -> list[float]:
        """Analytic GFLOPs per row of generation's prefill (last logit only): its own unpadded prompt and frames,
        plus the encoder for audio."""
        tokens = batch.inputs["attention_mask"].sum(1).tolist()
        frames = batch.frame_mask.sum(1).tolist()
        return [self._gflops(k, int(t), int(f)) for t, f in zip(tokens, frames)]

    def text_tokens(self, batch: Batch) -> list[int]:
        """Per row, its unpadded prompt's tokens that are not image placeholders (the question and template)."""
        real = batch.inputs["attention_mask"].bool()
        if self._image_id is not None:
            real &= batch.inputs["input_ids"] != self._image_id
        return real.sum(1).tolist()

    def _count_gflops(self, k: int, prompt_tokens: int, audio_frames: int) -> float:
        """The formula for one (k, prompt length, frames); memoised per runner as `_gflops` (few distinct values)."""
        return safe_flops(self.model, self.encoder, k, prompt_tokens, audio_frames, all_logits=False) / 1e9

    def features(self, batch: Batch, rows: list[int]) -> np.ndarray:
        """Pre-decision features of `rows` (stage_b.policy_features), as a served policy computes them for a request."""
        return query_features(self._embed, batch.inputs, [self.preview(i) for i in rows])

    def preview(self, i: int) -> list[float]:
        """Audio-preview statistics of row i's clip, computed once per clip."""
        clip = self.data.clip(i)
        if clip not in self._previews:
            self._previews[clip] = audio_preview(load_audio(clip.path, self.sample_rate, clip.start, clip.end),
                                                 self.sample_rate)
        return self._previews[clip]

    def feature_columns(self) -> dict[str, int]:
        """The feature groups in column order, with their widths."""
        return feature_columns(self._embed.embedding_dim)
