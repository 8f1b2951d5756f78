"""Confidence intervals for evaluation results, resampling questions (items) rather than runs.

`mean_ci` gives a mean with a percentile-bootstrap interval: e.g. a system's accuracy over the
questions of a benchmark, so two numbers in a table come with how much they could move on a
different draw of questions. `paired_diff_ci` compares two systems on the same questions (e.g.
retention: base model vs. base + audio on image-only questions): it works on per-question
differences, which is far tighter than comparing two independent intervals, and adds a
sign-flip permutation p-value for "the two systems score the same".

Both are vectorised over resamples and seeded, so a table rebuilt from the same scores is
bit-identical.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

MAX_DRAWS = 50_000_000  # resample matrix entries per chunk; bounds memory at a few hundred MB


def _as_values(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """1-D float64 array of finite values, or a ValueError saying what is wrong."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} has shape {arr.shape}; expected a 1-D sequence of per-item scores")
    if arr.size == 0:
        raise ValueError(f"{name}: no values; expected at least one")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] is {arr[bad[0]]}; expected finite scores ({bad.size} non-finite)")
    return arr


def _check_settings(confidence: float, n_boot: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence is {confidence}; expected a value strictly between 0 and 1")
    if n_boot < 1:
        raise ValueError(f"n_boot is {n_boot}; expected at least 1")


def _ci_key(confidence: float) -> str:
    return f"ci{int(round(confidence * 100))}"


def _chunks(n_boot: int, n: int) -> Iterator[int]:
    """Row counts of (rows, n) resample matrices covering n_boot rows with at most MAX_DRAWS entries each."""
    rows = max(1, MAX_DRAWS // n)
    for start in range(0, n_boot, rows):
        yield min(rows, n_boot - start)


def _bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of n_boot resamples of values (items drawn with replacement)."""
    n = values.size
    index_dtype = np.int32 if n < 2**31 else np.int64
    return np.concatenate([
        values[rng.integers(0, n, size=(rows, n), dtype=index_dtype)].mean(axis=1)
        for rows in _chunks(n_boot, n)
    ])


def _percentile_ci(means: np.ndarray, confidence: float) -> list[float]:
    alpha = 1.0 - confidence
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95, n_boot: int = 2000,
            seed: int = 0) -> dict:
    """Mean with a percentile-bootstrap CI over items: {"mean", "ci95" (or ci<level>), "n"}."""
    _check_settings(confidence, n_boot)
    arr = _as_values(values, "values")
    means = _bootstrap_means(arr, n_boot, np.random.default_rng(seed))
    return {"mean": float(arr.mean()), _ci_key(confidence): _percentile_ci(means, confidence), "n": int(arr.size)}


def _sign_flip_p_value(diffs: np.ndarray, n_boot: int, rng: np.random.Generator) -> float:
    """Two-sided paired permutation p-value: how often random sign flips give a mean as far from 0."""
    n = diffs.size
    observed = abs(diffs.mean())
    tolerance = 1e-12 * np.abs(diffs).max()  # a flip equal to the observed mean must count despite rounding
    count = 0
    for rows in _chunks(n_boot, n):
        signs = rng.integers(0, 2, size=(rows, n), dtype=np.int8) * 2 - 1
        flipped = np.abs(signs @ diffs) / n
        count += int(np.count_nonzero(flipped >= observed - tolerance))
    return (count + 1) / (n_boot + 1)


def paired_diff_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = 0.95,
                   n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of a - b over the same items with a bootstrap CI and a sign-flip p-value.

    Returns {"mean_diff", "ci95" (or ci<level>), "n", "p_value"}.
    """
    _check_settings(confidence, n_boot)
    a_arr, b_arr = _as_values(a, "a"), _as_values(b, "b")
    if a_arr.size != b_arr.size:
        raise ValueError(f"paired scores differ in length: len(a) = {a_arr.size}, len(b) = {b_arr.size}; "
                         "expected one score per item in both")
    diffs = a_arr - b_arr
    key = _ci_key(confidence)
    if not diffs.any():
        return {"mean_diff": 0.0, key: [0.0, 0.0], "n": int(diffs.size), "p_value": 1.0}
    rng = np.random.default_rng(seed)
    ci = _percentile_ci(_bootstrap_means(diffs, n_boot, rng), confidence)
    return {"mean_diff": float(diffs.mean()), key: ci, "n": int(diffs.size),
            "p_value": _sign_flip_p_value(diffs, n_boot, rng)}
