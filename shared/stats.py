"""Confidence intervals for evaluation results, resampling questions (items) rather than runs.

`mean_ci` gives a mean with a percentile-bootstrap interval: e.g. a system's accuracy over the
questions of a benchmark, so two numbers in a table come with how much they could move on a
different draw of questions. `paired_diff_ci` compares two systems on the same questions (e.g.
retention: base model vs. base + audio on image-only questions): it works on per-question
differences, which is far tighter than comparing two independent intervals, and adds a
sign-flip permutation p-value for "the two systems score the same".

`mcnemar` is the classic test for two systems' right/wrong answers on the same questions.

Over seeds and items together: `hierarchical_bootstrap` and `paired_hierarchical_bootstrap` take one
row of question scores per seed (one trained model per seed) and resample seeds, then questions
within each drawn seed. Pooling every (seed, question) pair as independent items ignores that a
seed's questions share one trained model, so when seeds differ by several points the pooled
interval is far too narrow; the two-level bootstrap carries both sources of variance.

Across runs rather than items: `mean_std` and `welch_t` summarise and compare per-seed results of
two configurations, and `t_interval` / `welch_interval` give Student-t intervals for a mean over seeds and
for the difference of two such means; `iqm` / `iqm_ci` give the interquartile mean with a stratified bootstrap over
runs (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice").

The bootstraps are vectorised over resamples and seeded, so a table rebuilt from the same scores
is bit-identical.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from scipy import stats

from shared.metrics import CORRECT

MAX_DRAWS = 50_000_000  # resample matrix entries per chunk; bounds memory at a few hundred MB
CACHE_DRAWS = 1_000_000  # two-level resamples gather in chunks this size: 3x faster than one big gather


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
    """Result key naming the interval's level: "ci95" for 0.95."""
    return f"ci{int(round(confidence * 100))}"


def _chunks(n_boot: int, n: int, max_draws: int | None = None) -> Iterator[int]:
    """Row counts of (rows, n) resample matrices covering n_boot rows, at most max_draws (MAX_DRAWS) entries each."""
    rows = max(1, (MAX_DRAWS if max_draws is None else max_draws) // n)
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


Seeds = Sequence[Sequence[float] | np.ndarray] | np.ndarray  # one row of question scores per seed


def _as_seeds(values: Seeds, name: str) -> list[np.ndarray]:
    """One 1-D float64 array of finite scores per seed (a 2-D array's rows), or a ValueError saying what is wrong."""
    if isinstance(values, np.ndarray) and values.ndim != 2:
        raise ValueError(f"{name} has shape {values.shape}; expected seeds x questions (one row of scores per seed)")
    if len(values) == 0:
        raise ValueError(f"{name}: no seeds; expected one sequence of question scores per seed")
    rows = []
    for i, row in enumerate(values):
        if np.ndim(row) != 1:
            raise ValueError(f"{name}[{i}] has shape {np.shape(row)}; expected one 1-D sequence of question "
                             "scores per seed")
        rows.append(_as_values(row, f"{name}[{i}]"))
    return rows


def _hierarchical_means(rows: list[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of n_boot two-level resamples: seeds drawn with replacement, then each drawn seed's questions.

    A drawn seed brings as many questions as it has, drawn with replacement from its own; the
    resample's mean is over all drawn (seed, question) pairs, so seeds weigh by their question count.
    """
    n_seeds, sizes = len(rows), np.array([row.size for row in rows], dtype=np.int32)
    width = int(sizes.max())
    padded = np.zeros((n_seeds, width))
    for i, row in enumerate(rows):
        padded[i, :row.size] = row
    ragged = bool((sizes != width).any())
    means = []
    for count in _chunks(n_boot, n_seeds * width, min(MAX_DRAWS, CACHE_DRAWS)):
        seeds = rng.integers(0, n_seeds, size=(count, n_seeds, 1), dtype=np.int32)
        if not ragged:
            questions = rng.integers(0, width, size=(count, n_seeds, width), dtype=np.int32)
            means.append(padded[seeds, questions].mean(axis=(1, 2)))
            continue
        drawn_sizes = sizes[seeds]
        # floor(u * size) is 3x faster than integers() with an array bound; the minimum guards u * size
        # rounding up to size, which would read the zero padding.
        questions = np.minimum((rng.random((count, n_seeds, width)) * drawn_sizes).astype(np.int32), drawn_sizes - 1)
        kept = np.arange(width, dtype=np.int32) < drawn_sizes
        means.append(np.where(kept, padded[seeds, questions], 0.0).sum(axis=(1, 2)) / drawn_sizes.sum(axis=(1, 2)))
    return np.concatenate(means)


def _sizes(rows: list[np.ndarray]) -> dict:
    return {"n_seeds": len(rows), "n_questions": [int(row.size) for row in rows]}


def hierarchical_bootstrap(scores: Seeds, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean over (seed, question) scores with a two-level percentile-bootstrap CI.

    scores holds one row of question scores per seed (a seeds x questions array, or rows of
    different lengths when each seed was evaluated on its own questions). Each resample draws
    n_seeds seeds with replacement, then as many questions as the drawn seed has, with replacement
    within it, as in Saravanan et al. 2020 ("Application of the hierarchical bootstrap to
    multi-level data in neuroscience"). With equal rows its variance is about
    [(S-1)/S * (seed variance + question noise) + question noise] / S against the true
    (seed variance + question noise) / S: a little wide when seeds agree (sqrt(5/3) = 1.29x the
    pooled width at S = 3 with no seed effect, the question noise counted twice) and a little
    narrow when seeds dominate (sqrt((S-1)/S)); the pooled bootstrap misses the seed variance entirely.

    Returns {"mean" (over all pairs), "ci95" (or ci<level>), "n_seeds", "n_questions" (per seed)}.
    """
    _check_settings(confidence, n_boot)
    rows = _as_seeds(scores, "scores")
    means = _hierarchical_means(rows, n_boot, np.random.default_rng(seed))
    return {"mean": float(np.concatenate(rows).mean()), _ci_key(confidence): _percentile_ci(means, confidence),
            **_sizes(rows)}


def paired_hierarchical_bootstrap(a: Seeds, b: Seeds, confidence: float = 0.95, n_boot: int = 2000,
                                  seed: int = 0) -> dict:
    """Mean of a - b over the same seeds and questions with a two-level bootstrap CI and p-value.

    a[s][q] and b[s][q] are two systems' scores for the same seed index s and question q (the
    caller pairs them). The differences are resampled as in `hierarchical_bootstrap`: a drawn seed
    brings both systems' runs of that seed, a drawn question both systems' answers to it.

    The two-sided p-value for "the two systems score the same" shifts the bootstrap distribution of
    the mean difference to mean zero: the share of resamples at least as far from the observed
    difference as the observed difference is from 0 ((count + 1) / (n_boot + 1)). Not sign flips
    at the seed level: S seeds give only 2**S sign patterns, so p can never go below 2 / 2**S
    (0.25 with 3 seeds, 0.03 with 6) whatever the effect; that measures the design, not the data.
    Not sign flips per (seed, question) pair: those treat the pooled pairs as independent again.
    Caveat: with few seeds the bootstrap has few distinct seed draws and (S-1)/S of the seed
    variance, so when every seed moves the same way by quite different amounts p is still
    optimistic: read it next to the number of seeds and a test over seed means.

    Returns {"mean_diff", "ci95" (or ci<level>), "n_seeds", "n_questions" (per seed), "p_value"}.
    """
    _check_settings(confidence, n_boot)
    a_rows, b_rows = _as_seeds(a, "a"), _as_seeds(b, "b")
    shape_a, shape_b = [row.size for row in a_rows], [row.size for row in b_rows]
    if shape_a != shape_b:
        raise ValueError(f"paired scores differ in shape: questions per seed in a are {shape_a}, in b {shape_b}; "
                         "expected the same seeds and questions in both")
    diffs = [x - y for x, y in zip(a_rows, b_rows)]
    key = _ci_key(confidence)
    pooled = np.concatenate(diffs)
    if not pooled.any():
        return {"mean_diff": 0.0, key: [0.0, 0.0], **_sizes(diffs), "p_value": 1.0}
    means = _hierarchical_means(diffs, n_boot, np.random.default_rng(seed))
    observed = pooled.mean()
    tolerance = 1e-12 * np.abs(pooled).max()  # a resample exactly as far as the observed mean must count
    extreme = int(np.count_nonzero(np.abs(means - observed) >= abs(observed) - tolerance))
    return {"mean_diff": float(observed), key: _percentile_ci(means, confidence), **_sizes(diffs),
            "p_value": (extreme + 1) / (n_boot + 1)}


def mcnemar(a_correct: Sequence[float] | np.ndarray, b_correct: Sequence[float] | np.ndarray) -> dict:
    """McNemar test on paired right/wrong outcomes; a score counts as correct when >= CORRECT (VQA: 2/3, 1).

    Returns {"b01" (a wrong, b right), "b10" (a right, b wrong), "n", "statistic", "p_value", "method"}:
    the exact two-sided binomial test when there are fewer than 25 discordant pairs, else the
    continuity-corrected chi-square with 1 degree of freedom ("statistic" is b01 for the exact test).
    """
    a_arr, b_arr = _as_values(a_correct, "a_correct"), _as_values(b_correct, "b_correct")
    if a_arr.size != b_arr.size:
        raise ValueError(f"paired outcomes differ in length: len(a_correct) = {a_arr.size}, "
                         f"len(b_correct) = {b_arr.size}; expected one outcome per question in both")
    for name, arr in (("a_correct", a_arr), ("b_correct", b_arr)):
        bad = np.flatnonzero((arr < 0) | (arr > 1))
        if bad.size:
            raise ValueError(f"{name}[{bad[0]}] is {arr[bad[0]]}; expected a score in [0, 1]")
    a_ok, b_ok = a_arr >= CORRECT, b_arr >= CORRECT
    b01, b10 = int(np.count_nonzero(~a_ok & b_ok)), int(np.count_nonzero(a_ok & ~b_ok))
    out = {"b01": b01, "b10": b10, "n": int(a_arr.size)}
    discordant = b01 + b10
    if discordant == 0:
        return out | {"statistic": 0.0, "p_value": 1.0, "method": "exact"}
    if discordant < 25:
        p_value = stats.binomtest(b01, discordant, 0.5).pvalue
        return out | {"statistic": float(b01), "p_value": float(p_value), "method": "exact"}
    statistic = (abs(b01 - b10) - 1) ** 2 / discordant
    p_value = stats.chi2.sf(statistic, 1)
    return out | {"statistic": float(statistic), "p_value": float(p_value), "method": "chi2_cc"}


def _mean_var(arr: np.ndarray) -> tuple[float, float]:
    """Mean and variance (ddof=1), exact for a constant sample: float sums give 0.1 * 3 / 3 != 0.1."""
    if np.ptp(arr) == 0:
        return float(arr[0]), 0.0
    return float(arr.mean()), float(arr.var(ddof=1))


def mean_std(values: Sequence[float] | np.ndarray) -> dict:
    """Mean and sample standard deviation (ddof=1, 0.0 for one value): {"mean", "std", "n"}."""
    arr = _as_values(values, "values")
    mean, var = _mean_var(arr)
    return {"mean": mean, "std": float(np.sqrt(var)), "n": int(arr.size)}


def welch_t(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> dict:
    """Welch's unequal-variance t-test on two independent samples (e.g. per-seed results of two configs).

    Returns {"mean_a", "mean_b", "std_a", "std_b" (ddof=1), "t", "df" (Welch-Satterthwaite), "p_value"
    (two-sided)}. Two constant samples give t = 0, p = 1 if their means are equal, else t = +-inf, p = 0.
    """
    a_arr, b_arr = _as_values(a, "a"), _as_values(b, "b")
    for name, arr in (("a", a_arr), ("b", b_arr)):
        if arr.size < 2:
            raise ValueError(f"{name} has {arr.size} value; expected at least 2 to estimate a variance")
    (mean_a, var_a), (mean_b, var_b) = _mean_var(a_arr), _mean_var(b_arr)
    out = {"mean_a": mean_a, "mean_b": mean_b, "std_a": float(np.sqrt(var_a)), "std_b": float(np.sqrt(var_b))}
    se_a, se_b = var_a / a_arr.size, var_b / b_arr.size
    if se_a + se_b == 0:
        df = float(a_arr.size + b_arr.size - 2)
        if mean_a == mean_b:
            return out | {"t": 0.0, "df": df, "p_value": 1.0}
        return out | {"t": float(np.copysign(np.inf, mean_a - mean_b)), "df": df, "p_value": 0.0}
    t = (mean_a - mean_b) / np.sqrt(se_a + se_b)
    df = (se_a + se_b) ** 2 / (se_a**2 / (a_arr.size - 1) + se_b**2 / (b_arr.size - 1))
    return out | {"t": float(t), "df": float(df), "p_value": float(2 * stats.t.sf(abs(t), df))}


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> dict:
    """Mean and sample std of a few runs (e.g. per-seed results) with a Student-t interval for the mean.

    Returns {"mean", "std", "n", "ci95" (or ci<level>)}; the interval is None for a single value (no
    variance to estimate) and [mean, mean] when every value is the same.
    """
    _check_settings(confidence, 1)
    summary = mean_std(values)
    if summary["n"] < 2:
        return summary | {_ci_key(confidence): None}
    half = stats.t.ppf(0.5 + confidence / 2, summary["n"] - 1) * summary["std"] / np.sqrt(summary["n"])
    return summary | {_ci_key(confidence): [summary["mean"] - float(half), summary["mean"] + float(half)]}


def welch_interval(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = 0.95,
                   b_exact: bool = False) -> dict:
    """mean(a) - mean(b) of two independent sets of runs with a Welch t interval (Welch-Satterthwaite df).

    `b_exact`: b is one exact value (a deterministic method, the same for every seed), so only a's
    variance counts. Returns {"mean_diff", "ci95" (or ci<level>), "df", "n_a", "n_b"}; the interval
    (and df) is None when a sample whose variance counts has a single value.
    """
    _check_settings(confidence, 1)
    a_arr, b_arr = _as_values(a, "a"), _as_values(b, "b")
    if b_exact and b_arr.size != 1:
        raise ValueError(f"b has {b_arr.size} values with b_exact; expected the one exact value of a deterministic "
                         "method")
    (mean_a, var_a), (mean_b, var_b) = _mean_var(a_arr), _mean_var(b_arr)
    out = {"mean_diff": mean_a - mean_b, "n_a": int(a_arr.size), "n_b": int(b_arr.size)}
    key = _ci_key(confidence)
    if a_arr.size < 2 or (b_arr.size < 2 and not b_exact):
        return out | {key: None, "df": None}
    se_a, se_b = var_a / a_arr.size, 0.0 if b_exact else var_b / b_arr.size
    if se_a + se_b == 0:
        return out | {key: [out["mean_diff"]] * 2, "df": float(a_arr.size - 1 + (0 if b_exact else b_arr.size - 1))}
    terms = se_a**2 / (a_arr.size - 1) + (0.0 if b_exact else se_b**2 / (b_arr.size - 1))
    df = (se_a + se_b) ** 2 / terms
    half = float(stats.t.ppf(0.5 + confidence / 2, df) * np.sqrt(se_a + se_b))
    return out | {key: [out["mean_diff"] - half, out["mean_diff"] + half], "df": float(df)}


def iqm(values: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of sorted values (scipy trim_mean at 0.25)."""
    return float(stats.trim_mean(_as_values(values, "values"), 0.25))


def iqm_ci(scores: np.ndarray, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict:
    """IQM of all scores with a stratified-bootstrap CI: each task's runs resampled independently.

    scores is runs x tasks, or 1-D for a single task. Returns {"iqm", "ci95" (or ci<level>), "n_runs", "n_tasks"}.
    """
    _check_settings(confidence, n_boot)
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim not in (1, 2):
        raise ValueError(f"scores has shape {arr.shape}; expected runs x tasks or a 1-D sequence of runs")
    matrix = _as_values(arr.reshape(-1), "scores").reshape(arr.shape[0], -1)
    n_runs, n_tasks = matrix.shape
    rng = np.random.default_rng(seed)
    columns = np.arange(n_tasks)
    iqms = np.concatenate([
        stats.trim_mean(matrix[rng.integers(0, n_runs, size=(rows, n_runs, n_tasks), dtype=np.int32), columns]
                        .reshape(rows, -1), 0.25, axis=1)
        for rows in _chunks(n_boot, matrix.size)
    ])
    return {"iqm": iqm(matrix.reshape(-1)), _ci_key(confidence): _percentile_ci(iqms, confidence),
            "n_runs": int(n_runs), "n_tasks": int(n_tasks)}
