"""The outcome table: what every action would have cost and scored on every question, measured once.

Stage B learns *when audio is worth its cost*. Running SAFE inside the RL loop would make every
environment step a forward pass, so `stage_b-outcomes` measures each (question, action) pair once
and stores it in an `.npz` file; the environment then replays the table at millions of steps per
minute. This module owns the file format and its validation, so a table written by one commit is
checked field by field before any policy trains on it (a missing, empty, truncated or non-.npz file is
named by shared.loading). It depends on numpy and shared's atomic writer, checked loader and correctness
threshold only: the `envs` package never imports training code.

Arrays (N questions, A actions, D features):
- `ids`, `family` ("visual" | "audio" | "audio_visual"), `qtype`: (N,) unicode strings;
- `actions`: (A,) int64 audio-token counts, `actions[0] == 0` (no audio), distinct unless `action_names` is given;
- `score`: (N, A) in [0, 1]; `gflops`, `latency_ms`: (N, A) finite and > 0;
- `features`: (N, D) finite, known before the decision;
- `provenance`: a 0-d unicode array holding JSON (checkpoint hash, split, actions, ...);
- `confidence` (optional): (N,) in [0, 1], the base model's no-audio probability of its first answer
  token, a feature a policy may buy (see `charged_costs`);
- `latency_repeats_ms` (optional): (N, A, R) finite and > 0, the R timed repeats behind each
  `latency_ms` cell, which must be their median (tables built before it have `latency_ms` only);
- `text_tokens` (optional): (N,) integers >= 0, the prompt's tokens that are not image placeholders, so a
  cost profile (stage_b.cost_profiles) can count the same question on another base model;
- `action_names` (optional): (A,) distinct unicode names, for a table whose audio actions go through more than one
  bridge (stage_b.join): "none" for action 0, then "<encoder>-k<k>" (e.g. "clap-k4", "whisper-k16") with k the
  action's token count, so two actions may share a k. A table without names (one bridge, as stage_b-outcomes writes
  it) labels its actions "k<k>" (`action_labels`), exactly as before names existed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.checkpoint import atomic_write_npz
from shared.loading import load_npz
from shared.metrics import CORRECT

FAMILIES = ("visual", "audio", "audio_visual")
KEYS = ("ids", "family", "qtype", "actions", "score", "gflops", "latency_ms", "features", "provenance")
OPTIONAL_KEYS = ("confidence", "latency_repeats_ms", "text_tokens")  # per row
ACTION_KEYS = ("action_names",)  # optional, per action
NO_AUDIO = "none"  # the name of action 0 in a table with action names
ACTION_NAME = re.compile(r"^(?P<encoder>[a-z][a-z0-9_]*)-k(?P<k>[0-9]+)$")  # an audio action's name: <encoder>-k<k>
DEFAULT_TABLE = "runs/stage_a/outcomes_test.npz"  # what `stage_b-outcomes` writes for the default `stage_a-train` run
BUILD_HINT = ("build one with `stage_b-outcomes --checkpoint DIR --split S` (without arguments it reads the default "
              f"`stage_a-train` run in runs/stage_a and writes {DEFAULT_TABLE})")


@dataclass
class OutcomeTable:
    """Per-question, per-action score and cost, plus the features a policy observes before deciding."""

    ids: np.ndarray
    family: np.ndarray
    qtype: np.ndarray
    actions: np.ndarray
    score: np.ndarray
    gflops: np.ndarray
    latency_ms: np.ndarray
    features: np.ndarray
    provenance: dict
    confidence: np.ndarray | None = None
    latency_repeats_ms: np.ndarray | None = None
    text_tokens: np.ndarray | None = None
    action_names: np.ndarray | None = None

    def __post_init__(self) -> None:
        self._validate("OutcomeTable")

    @property
    def n_rows(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_actions(self) -> int:
        return int(self.actions.shape[0])

    @property
    def action_labels(self) -> list[str]:
        """Each action's name: `action_names`, or "k<k>" (k0 for no audio) in a table without names."""
        if self.action_names is None:
            return [f"k{k}" for k in self.actions.tolist()]
        return self.action_names.tolist()

    @property
    def action_encoders(self) -> list[str] | None:
        """Per action, the encoder its audio goes through ("" for no audio); None in a table without names (one
        bridge, whose encoder the table does not record)."""
        if self.action_names is None:
            return None
        return [""] + [ACTION_NAME.match(name)["encoder"] for name in self.action_names.tolist()[1:]]

    def _validate(self, source: str) -> None:
        """Coerce dtypes and check every field; errors name `source`, the field and the bad value."""
        for name in ("ids", "family", "qtype"):
            arr = np.asarray(getattr(self, name))
            if arr.ndim != 1 or arr.dtype.kind != "U":
                raise ValueError(f"{source}: '{name}' must be a 1-D unicode string array, "
                                 f"got shape {arr.shape} dtype {arr.dtype}")
            setattr(self, name, arr)
        n = self.ids.shape[0]
        if n < 1:
            raise ValueError(f"{source}: 'ids' is empty; expected at least one question")
        for name in ("family", "qtype"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{source}: '{name}' has shape {getattr(self, name).shape}, expected ({n},) like 'ids'")
        unknown = sorted(set(np.unique(self.family).tolist()) - set(FAMILIES))
        if unknown:
            raise ValueError(f"{source}: 'family' has values {unknown}, expected only {list(FAMILIES)}")
        actions = np.asarray(self.actions)
        if actions.ndim != 1 or actions.size < 1 or actions.dtype.kind not in "iu":
            raise ValueError(f"{source}: 'actions' must be a non-empty 1-D integer array, "
                             f"got shape {actions.shape} dtype {actions.dtype}")
        self.actions = actions.astype(np.int64)
        if self.actions[0] != 0:
            raise ValueError(f"{source}: 'actions'[0] = {int(self.actions[0])}, expected 0 (no audio)")
        if self.action_names is None:
            if (self.actions < 0).any() or np.unique(self.actions).size != self.actions.size:
                raise ValueError(f"{source}: 'actions' = {self.actions.tolist()}, expected distinct token counts >= 0")
        else:
            self.action_names = self._checked_names(source, np.asarray(self.action_names))
        a = self.actions.size
        for name, low, low_open, high in (("score", 0.0, False, 1.0), ("gflops", 0.0, True, None),
                                          ("latency_ms", 0.0, True, None)):
            arr = np.asarray(getattr(self, name))
            if arr.shape != (n, a):
                raise ValueError(f"{source}: '{name}' has shape {arr.shape}, expected ({n}, {a}) = (rows, actions)")
            arr = arr.astype(np.float32)
            bad = ~np.isfinite(arr) | ((arr <= low) if low_open else (arr < low))
            if high is not None:
                bad |= arr > high
            if bad.any():
                i, j = np.argwhere(bad)[0]
                bound = f"in [{low}, {high}]" if high is not None else f"finite and > {low}"
                raise ValueError(f"{source}: '{name}'[{i}, {j}] = {arr[i, j]} ({int(bad.sum())} bad values), "
                                 f"expected {bound}")
            setattr(self, name, arr)
        features = np.asarray(self.features)
        if features.ndim != 2 or features.shape[0] != n:
            raise ValueError(f"{source}: 'features' has shape {features.shape}, expected ({n}, D)")
        features = features.astype(np.float32)
        if not np.isfinite(features).all():
            i, j = np.argwhere(~np.isfinite(features))[0]
            raise ValueError(f"{source}: 'features'[{i}, {j}] = {features[i, j]}, expected a finite value")
        self.features = features
        if self.confidence is not None:
            confidence = np.asarray(self.confidence, dtype=np.float32)
            bad = ~np.isfinite(confidence) | (confidence < 0) | (confidence > 1)
            if confidence.shape != (n,) or bad.any():
                raise ValueError(f"{source}: 'confidence' has shape {confidence.shape} and {int(bad.sum())} values "
                                 f"outside [0, 1]; expected ({n},) probabilities")
            self.confidence = confidence
        if self.text_tokens is not None:
            tokens = np.asarray(self.text_tokens)
            if tokens.shape != (n,) or tokens.dtype.kind not in "iu" or (tokens < 0).any():
                raise ValueError(f"{source}: 'text_tokens' has shape {tokens.shape} dtype {tokens.dtype} "
                                 f"(minimum {tokens.min() if tokens.size else None}); expected ({n},) integers >= 0")
            self.text_tokens = tokens.astype(np.int64)
        if self.latency_repeats_ms is not None:
            self.latency_repeats_ms = self._checked_repeats(source, np.asarray(self.latency_repeats_ms))
        if not isinstance(self.provenance, dict):
            raise ValueError(f"{source}: 'provenance' is {type(self.provenance).__name__}, expected a dict")

    def _checked_names(self, source: str, names: np.ndarray) -> np.ndarray:
        """`action_names` as (A,) distinct unicode: "none" for action 0, "<encoder>-k<k>" matching each audio action."""
        a = self.actions.size
        if names.shape != (a,) or names.dtype.kind != "U":
            raise ValueError(f"{source}: 'action_names' has shape {names.shape} dtype {names.dtype}, expected ({a},) "
                             "unicode strings like 'actions'")
        listed = names.tolist()
        if len(set(listed)) != a:
            repeated = next(name for name in listed if listed.count(name) > 1)
            raise ValueError(f"{source}: 'action_names' = {listed} names {repeated!r} twice; expected distinct names")
        if listed[0] != NO_AUDIO:
            raise ValueError(f"{source}: 'action_names'[0] = {listed[0]!r}, expected {NO_AUDIO!r} (action 0: no audio)")
        for j, (name, k) in enumerate(zip(listed[1:], self.actions.tolist()[1:]), start=1):
            match = ACTION_NAME.match(name)
            if match is None or int(match["k"]) != k or k < 1:
                raise ValueError(f"{source}: 'action_names'[{j}] = {name!r} with 'actions'[{j}] = {k}; expected "
                                 f"'<encoder>-k{k}' (lower-case encoder, k >= 1 audio tokens)")
        return names

    def _checked_repeats(self, source: str, repeats: np.ndarray) -> np.ndarray:
        """`latency_repeats_ms` as float32 (N, A, R), finite and > 0, with `latency_ms` its median over R."""
        n, a = self.latency_ms.shape
        if repeats.ndim != 3 or repeats.shape[:2] != (n, a) or repeats.shape[2] < 1:
            raise ValueError(f"{source}: 'latency_repeats_ms' has shape {repeats.shape}, expected ({n}, {a}, R) = "
                             "(rows, actions, timed repeats) with R >= 1")
        repeats = repeats.astype(np.float32)
        bad = ~np.isfinite(repeats) | (repeats <= 0)
        if bad.any():
            i, j, r = np.argwhere(bad)[0]
            raise ValueError(f"{source}: 'latency_repeats_ms'[{i}, {j}, {r}] = {repeats[i, j, r]} "
                             f"({int(bad.sum())} bad values), expected finite and > 0.0")
        median = np.median(repeats, axis=2)
        off = ~np.isclose(self.latency_ms, median, rtol=1e-5, atol=0)
        if off.any():
            i, j = np.argwhere(off)[0]
            raise ValueError(f"{source}: 'latency_ms'[{i}, {j}] = {self.latency_ms[i, j]} but the median of "
                             f"'latency_repeats_ms'[{i}, {j}] is {median[i, j]} ({int(off.sum())} such cells); "
                             "expected latency_ms to be the median of its repeats")
        return repeats

    @classmethod
    def load(cls, path: str | Path) -> OutcomeTable:
        """Read and validate an outcome table written by `save` (no pickle)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"outcome table {path} does not exist; {BUILD_HINT}")
        data = load_npz(path, f"an outcome table; {BUILD_HINT}")
        missing = [key for key in KEYS if key not in data]
        if missing:
            raise ValueError(f"outcome table {path}: missing key '{missing[0]}' (all missing: {missing}); {BUILD_HINT}")
        arrays = {key: data[key] for key in KEYS + OPTIONAL_KEYS + ACTION_KEYS if key in data}
        raw = arrays.pop("provenance")
        if raw.ndim != 0 or raw.dtype.kind != "U":
            raise ValueError(f"outcome table {path}: 'provenance' has shape {raw.shape} dtype {raw.dtype}, "
                             "expected a 0-d unicode JSON string")
        try:
            provenance = json.loads(raw.item())
        except json.JSONDecodeError as err:
            raise ValueError(f"outcome table {path}: 'provenance' is not valid JSON ({err})") from err
        table = cls.__new__(cls)
        table.__dict__.update({**dict.fromkeys(OPTIONAL_KEYS + ACTION_KEYS), **arrays, "provenance": provenance})
        table._validate(f"outcome table {path}")
        return table

    def save(self, path: str | Path) -> Path:
        """Write the table atomically: a temp file in the same folder, then os.replace."""
        arrays = {key: getattr(self, key) for key in KEYS if key != "provenance"}
        arrays["provenance"] = np.array(json.dumps(self.provenance))
        arrays.update({key: getattr(self, key) for key in OPTIONAL_KEYS + ACTION_KEYS
                       if getattr(self, key) is not None})
        return atomic_write_npz(path, arrays)

    def subset(self, rows: np.ndarray) -> OutcomeTable:
        """The table restricted to `rows` (indices), with the same actions, action names and provenance."""
        rows = np.asarray(rows)
        if rows.ndim != 1 or rows.dtype.kind not in "iu":
            raise ValueError(f"rows must be a 1-D integer index array, got shape {rows.shape} dtype {rows.dtype}")
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise ValueError(f"rows span [{rows.min()}, {rows.max()}], expected indices in [0, {self.n_rows})")
        return OutcomeTable(ids=self.ids[rows], family=self.family[rows], qtype=self.qtype[rows],
                            actions=self.actions.copy(), score=self.score[rows], gflops=self.gflops[rows],
                            latency_ms=self.latency_ms[rows], features=self.features[rows],
                            provenance=dict(self.provenance),
                            action_names=None if self.action_names is None else self.action_names.copy(),
                            **{key: None if getattr(self, key) is None else getattr(self, key)[rows]
                               for key in OPTIONAL_KEYS})

    def split_rows(self, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """A seeded permutation cut into (train_rows, test_rows), `fraction` of the rows for training."""
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction = {fraction}, expected a value in (0, 1)")
        order = np.random.default_rng(seed).permutation(self.n_rows)
        cut = int(round(fraction * self.n_rows))
        return np.sort(order[:cut]), np.sort(order[cut:])

    def charged_costs(self, confidence: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(gflops, latency_ms) a policy pays per question and action.

        Without the confidence feature these are the measured columns. With it, the base model's
        no-audio run happens before every decision: action 0 reuses that run's answer (no extra
        cost), and every audio action pays the no-audio run on top of its own.
        """
        return self._charged(self.gflops, confidence), self._charged(self.latency_ms, confidence)

    def charged_latency_samples(self, confidence: bool = False) -> np.ndarray:
        """(N, A, R) latencies a policy pays, one per timed repeat (R = 1: the median column of an older table).

        With the confidence feature, repeat r of an audio action also pays repeat r of the no-audio run."""
        samples = self.latency_ms[:, :, None] if self.latency_repeats_ms is None else self.latency_repeats_ms
        return self._charged(samples, confidence)

    def _charged(self, cost: np.ndarray, confidence: bool) -> np.ndarray:
        """`cost` (actions on axis 1) as charged: unchanged, or with the no-audio run added to every audio action."""
        if not confidence:
            return cost
        self.require_confidence()
        charged = cost.copy()
        charged[:, 1:] += cost[:, :1]
        return charged

    def require_confidence(self) -> np.ndarray:
        """The no-audio confidence column, or a ValueError saying how to get a table that has it."""
        if self.confidence is None:
            raise ValueError("this outcome table has no 'confidence' column; rebuild it with stage_b-outcomes")
        return self.confidence

    def oracle_actions(self, threshold: float = CORRECT) -> np.ndarray:
        """Per question, the cheapest action that is still correct: the oracle a policy is measured against.

        Precisely: among the actions with `score >= threshold` (CORRECT: a VQA score of 2/3 or 1), the one
        with the fewest GFLOPs on that question (ties to the lower action index); if no action is
        correct, the cheapest action overall, which is action 0 (no audio) in every measured table.
        """
        correct = self.score >= threshold
        cost = np.where(correct, self.gflops, np.inf)
        cheapest_correct = np.argmin(cost, axis=1)
        return np.where(correct.any(axis=1), cheapest_correct, np.argmin(self.gflops, axis=1)).astype(np.int64)
