"""Outcome tables of corrupted audio: the held-out rows of a table, re-answered by SAFE on corrupted features.

For a corruption (shared.corruptions, or "mismatched": every clip swapped for one of another file) the table keeps
the measured gflops, latency and no-audio scores, and recomputes:
- the score of every audio action (k > 0): SAFE (the table's provenance checkpoint and split, gate 1) answering on
  the corrupted features, made by stage_a.robust_conditions (corrupted_split: a separately keyed feature cache;
  mismatched_split: a seeded derangement across files); "clean" answers on the split's own cached features;
- the audio-preview feature columns (stage_b.policy_features) from the corrupted wave (mismatched: the swapped clip's).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from envs.outcome_table import OutcomeTable
from shared.config import load_config
from shared.data.audio_io import load_audio
from stage_a.config import TrainConfig
from shared.corruptions import corrupt_clip, parse_corruption
from stage_a.data import Split
from stage_a.robust_conditions import (
    clip_file,
    clip_key,
    corrupted_split,
    mismatched_split,
)
from stage_b.policy_features import PREVIEW_COLUMNS, audio_preview
from stage_b.runner import SafeRunner

log = logging.getLogger(__name__)
MISMATCHED = "mismatched"


def check_condition(name: str) -> str:
    """`name` if it is a corruption name (shared.corruptions) or 'mismatched'; else the parser's ValueError."""
    if name != MISMATCHED:
        parse_corruption(name)
    return name


def preview_slice(table: OutcomeTable) -> slice:
    """The feature columns of the audio preview, located from the table's recorded feature groups."""
    groups = table.provenance.get("features")
    if not isinstance(groups, dict) or list(groups)[-len(PREVIEW_COLUMNS):] != list(PREVIEW_COLUMNS):
        raise ValueError(f"table provenance 'features' is {groups!r}; expected feature groups ending in "
                         f"{PREVIEW_COLUMNS} (a table written by stage_b-outcomes)")
    start = sum(groups.values()) - len(PREVIEW_COLUMNS)
    if sum(groups.values()) != table.features.shape[1]:
        raise ValueError(f"table provenance 'features' sums to {sum(groups.values())} columns, but the table has "
                         f"{table.features.shape[1]}")
    return slice(start, start + len(PREVIEW_COLUMNS))


def table_runner(table: OutcomeTable, root: Path) -> tuple[SafeRunner, str]:
    """SafeRunner on the table's provenance checkpoint (relative paths from `root`), preset, overrides and split,
    and the config's feature cache root."""
    prov = table.provenance
    missing = [k for k in ("checkpoint", "split", "preset") if k not in prov]
    if missing:
        raise ValueError(f"table provenance lacks {missing}; expected a table written by stage_b-outcomes")
    cfg = load_config(TrainConfig, prov["preset"], prov.get("overrides") or {})
    checkpoint = Path(prov["checkpoint"])
    runner = SafeRunner(cfg, checkpoint if checkpoint.is_absolute() else root / checkpoint, prov["split"])
    return runner, cfg.data.feature_cache


class CorruptedTables:
    """One SafeRunner for a table, making (and caching in a folder) its corrupted tables over given rows."""

    def __init__(self, table: OutcomeTable, runner: SafeRunner, cache_root: str, folder: Path, seed: int = 0,
                 batch_size: int = 64) -> None:
        self.table, self.runner, self.cache_root, self.folder = table, runner, cache_root, folder
        self.seed, self.batch_size = seed, batch_size
        self.previews = preview_slice(table)
        self.sample_rate = runner.sample_rate
        data = runner.data
        self.keys = [clip_key(r) for r in data.clips]
        self.refs = dict(zip(self.keys, data.clips))
        self.pool = sorted(self.refs)
        self.load = functools.lru_cache(maxsize=64)(self._load)

    def _load(self, key: str) -> np.ndarray:
        ref = self.refs[key]
        return load_audio(ref.path, self.sample_rate, ref.start, ref.end)

    def runner_rows(self, rows: np.ndarray) -> list[int]:
        """The runner's split row of each table row (by sample id); a missing id is an error naming it."""
        out = []
        for i in rows:
            sample_id = str(self.table.ids[i])
            if sample_id not in self.runner.row_of:
                raise ValueError(f"table row {i} (id {sample_id!r}) is not in the runner's split "
                                 f"{self.table.provenance['split']!r}; expected the table's own split")
            out.append(self.runner.row_of[sample_id])
        return out

    def path(self, name: str, rows: np.ndarray) -> Path:
        """The cache file of one condition over `rows`: keyed by checkpoint, rows and seed."""
        digest = hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:10]
        ckpt = str(self.table.provenance.get("checkpoint_hash", "nohash"))[:10]
        return self.folder / f"{name}-{ckpt}-rows{digest}-seed{self.seed}.npz"

    def get(self, name: str, rows: np.ndarray) -> OutcomeTable:
        """The corrupted table of condition `name` over table `rows` (row j is table row rows[j]): read from the
        cache folder if built before, else built and saved there atomically."""
        path = self.path(check_condition(name), rows)
        if path.is_file():
            log.info("condition %s: read from %s", name, path)
            return OutcomeTable.load(path)
        table = self.build(name, rows)
        table.save(path)
        return table

    def split_and_previews(self, name: str, split_rows: list[int]) -> tuple[Split, list[list[float]]]:
        """The split whose features the audio actions answer on, and each row's audio preview, under `name`."""
        data = self.runner.data
        clips = [data.feature_index[i] for i in split_rows]
        if name == MISMATCHED:
            split, perm = mismatched_split(data, self.seed)
            return split, [audio_preview(self.load(self.keys[perm[j]]), self.sample_rate) for j in clips]
        corruption = parse_corruption(name)
        if corruption.kind == "clean":
            return data, [self.runner.preview(i) for i in split_rows]
        split = corrupted_split(data, corruption, split_rows, self.runner.encoder,
                                self.cache_root, self.sample_rate, self.seed)
        waves = {j: corrupt_clip(corruption, self.load(self.keys[j]), self.keys[j], self.pool, self.load,
                                 sample_rate=self.sample_rate, seed=self.seed, group=clip_file) for j in set(clips)}
        return split, [audio_preview(waves[j], self.sample_rate) for j in clips]

    def build(self, name: str, rows: np.ndarray) -> OutcomeTable:
        """Re-answer every audio action of `rows` on the condition's features; copy everything else."""
        rows = np.asarray(rows, dtype=np.int64)
        out = self.table.subset(rows)
        split_rows = self.runner_rows(rows)
        split, previews = self.split_and_previews(name, split_rows)
        score, features = out.score.copy(), out.features.copy()
        features[:, self.previews] = np.asarray(previews, dtype=np.float32)
        audio = [a for a, k in enumerate(out.actions) if k > 0]
        starts = range(0, len(rows), self.batch_size)
        for begin in tqdm(starts, desc=f"{name} outcomes", unit="batch", leave=False):
            chunk = split_rows[begin:begin + self.batch_size]
            batch = self.runner.collator.prompt_batch(split, chunk)
            for a in audio:
                answers, _ = self.runner.answer(batch, int(out.actions[a]))
                score[begin:begin + len(chunk), a] = self.runner.scores(chunk, answers)
        provenance = {**out.provenance, "robust": {"condition": name, "seed": self.seed,
                                                   "source_rows": rows.tolist()}}
        return dataclasses.replace(out, score=score, features=features, provenance=provenance)
