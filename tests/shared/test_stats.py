"""Bootstrap CIs, paired tests over per-question scores, and summaries over runs."""

import numpy as np
import pytest
import scipy.stats

from shared.stats import (
    hierarchical_bootstrap,
    iqm,
    iqm_ci,
    mcnemar,
    mean_ci,
    mean_std,
    paired_diff_ci,
    paired_hierarchical_bootstrap,
    t_interval,
    welch_interval,
    welch_t,
)


def test_mean_ci_mean_exact_and_ci_contains_it() -> None:
    scores = np.random.default_rng(1).integers(0, 2, 100).astype(float)
    out = mean_ci(scores)
    assert out["mean"] == scores.mean() and out["n"] == 100
    lo, hi = out["ci95"]
    assert lo < out["mean"] < hi


def test_mean_ci_narrows_with_more_items() -> None:
    rng = np.random.default_rng(2)
    widths = [np.diff(mean_ci(rng.random(n))["ci95"])[0] for n in (50, 5000)]
    assert widths[1] < widths[0] / 5


def test_mean_ci_is_seeded_and_names_its_level() -> None:
    scores = np.random.default_rng(3).random(40)
    assert mean_ci(scores, seed=7) == mean_ci(list(scores), seed=7)
    assert mean_ci(scores, seed=7) != mean_ci(scores, seed=8)
    assert set(mean_ci(scores, confidence=0.9)) == {"mean", "ci90", "n"}


def test_mean_ci_chunked_draws_match_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    scores = np.random.default_rng(4).random(200)
    whole = mean_ci(scores)
    monkeypatch.setattr("shared.stats.MAX_DRAWS", 200 * 7)
    chunked = mean_ci(scores)
    assert chunked["ci95"] == pytest.approx(whole["ci95"], abs=0.02)


def test_identical_systems_have_no_difference() -> None:
    a = np.random.default_rng(5).random(30)
    assert paired_diff_ci(a, a.copy()) == {"mean_diff": 0.0, "ci95": [0.0, 0.0], "n": 30, "p_value": 1.0}


def test_clear_shift_is_significant() -> None:
    rng = np.random.default_rng(6)
    b = rng.random(200)
    a = b + 0.3 + rng.normal(0, 0.2, 200)
    out = paired_diff_ci(a, b)
    assert out["mean_diff"] == pytest.approx((a - b).mean())
    assert out["p_value"] < 0.01 and out["p_value"] == 1 / 2001
    assert 0 < out["ci95"][0] < out["mean_diff"] < out["ci95"][1]


def test_no_shift_is_not_significant() -> None:
    rng = np.random.default_rng(7)
    out = paired_diff_ci(rng.random(200), rng.random(200))
    assert out["p_value"] > 0.05 and out["ci95"][0] < 0 < out["ci95"][1]


def test_length_mismatch_names_both_lengths() -> None:
    with pytest.raises(ValueError, match=r"len\(a\) = 3, len\(b\) = 2"):
        paired_diff_ci([1, 0, 1], [1, 0])


@pytest.mark.parametrize("call", [lambda: mean_ci([]), lambda: paired_diff_ci([], [])])
def test_empty_input_is_an_error(call) -> None:
    with pytest.raises(ValueError, match="no values; expected at least one"):
        call()


def test_non_finite_scores_are_an_error() -> None:
    with pytest.raises(ValueError, match=r"values\[1\] is nan"):
        mean_ci([1.0, float("nan")])


def _pairs(b01: int, b10: int, both_right: int = 5, both_wrong: int = 3) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([0] * b01 + [1] * b10 + [1] * both_right + [0] * both_wrong)
    b = np.array([1] * b01 + [0] * b10 + [1] * both_right + [0] * both_wrong)
    return a, b


def test_mcnemar_few_discordant_pairs_uses_the_exact_binomial_test() -> None:
    out = mcnemar(*_pairs(10, 2))
    assert (out["b01"], out["b10"], out["n"], out["method"]) == (10, 2, 20, "exact")
    # Two-sided binomial: 2 * (C(12,10) + C(12,11) + C(12,12)) / 2**12 = 158 / 4096.
    assert out["p_value"] == pytest.approx(0.03857, abs=1e-4)
    assert out["p_value"] == pytest.approx(scipy.stats.binomtest(10, 12, 0.5).pvalue, abs=1e-4)


def test_mcnemar_many_discordant_pairs_uses_corrected_chi_square() -> None:
    out = mcnemar(*_pairs(30, 10, both_right=50, both_wrong=0))
    assert (out["b01"], out["b10"], out["n"], out["method"]) == (30, 10, 90, "chi2_cc")
    assert out["statistic"] == pytest.approx(9.025)  # (|30 - 10| - 1)**2 / 40
    assert out["p_value"] == pytest.approx(0.002663, abs=1e-5)


def test_mcnemar_without_discordant_pairs_is_not_significant() -> None:
    out = mcnemar([True, False, True], [True, False, True])
    assert out == {"b01": 0, "b10": 0, "n": 3, "statistic": 0.0, "p_value": 1.0, "method": "exact"}


def test_mcnemar_thresholds_fractional_vqa_scores_at_half() -> None:
    out = mcnemar([0.0, 1 / 3, 2 / 3, 1.0, 0.5], [2 / 3, 1.0, 1 / 3, 0.0, 1 / 3])
    assert (out["b01"], out["b10"]) == (2, 3)


@pytest.mark.parametrize(("a", "b", "match"), [
    ([1, 0, 1], [1, 0], r"len\(a_correct\) = 3, len\(b_correct\) = 2"),
    ([1, 0, 1], [1, 0, 2], r"b_correct\[2\] is 2.0; expected a score in \[0, 1\]"),
])
def test_mcnemar_rejects_bad_outcomes(a, b, match) -> None:
    with pytest.raises(ValueError, match=match):
        mcnemar(a, b)


def test_welch_t_matches_hand_formulas_and_scipy() -> None:
    a, b = [1, 2, 3, 4, 5], [2, 4, 6, 8, 10]
    # var_a = 2.5, var_b = 10 -> se^2 = 2.5/5 + 10/5 = 2.5; t = (3 - 6) / sqrt(2.5) = -1.8974;
    # df = 2.5^2 / ((2.5/5)^2 / 4 + (10/5)^2 / 4) = 6.25 / 1.0625 = 5.882.
    out = welch_t(a, b)
    assert out["t"] == pytest.approx(-1.8974, abs=1e-3) and out["df"] == pytest.approx(5.882, abs=1e-3)
    assert (out["mean_a"], out["mean_b"]) == (3.0, 6.0)
    assert out["std_a"] == pytest.approx(np.sqrt(2.5)) and out["std_b"] == pytest.approx(np.sqrt(10))
    assert out["p_value"] == pytest.approx(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue)


def test_welch_t_with_zero_variance() -> None:
    same = welch_t([0.1] * 3, [0.1] * 4)  # 0.1 * 3 / 3 is not exactly 0.1: still zero variance
    assert (same["t"], same["p_value"], same["std_a"]) == (0.0, 1.0, 0.0)
    apart = welch_t([0.5, 0.5], [0.7, 0.7, 0.7])
    assert (apart["t"], apart["p_value"]) == (-np.inf, 0.0)
    one_constant = welch_t([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])  # t = -1 / sqrt(1/3), df = n_b - 1 = 2
    assert one_constant["t"] == pytest.approx(-np.sqrt(3)) and one_constant["df"] == pytest.approx(2.0)
    assert one_constant["p_value"] == pytest.approx(2 * scipy.stats.t.sf(np.sqrt(3), 2))


def test_welch_t_needs_two_values_per_sample() -> None:
    with pytest.raises(ValueError, match="b has 1 value; expected at least 2"):
        welch_t([1.0, 2.0], [3.0])


def test_t_interval_matches_scipy_and_handles_one_or_equal_values() -> None:
    values = [1.0, 2.0, 3.5]
    out = t_interval(values)
    want = scipy.stats.ttest_1samp(values, 0).confidence_interval()
    assert out["ci95"] == pytest.approx([want.low, want.high]) and out["mean"] == pytest.approx(6.5 / 3)
    assert (out["n"], out["std"]) == (3, pytest.approx(np.std(values, ddof=1)))
    assert t_interval([0.7]) == {"mean": 0.7, "std": 0.0, "n": 1, "ci95": None}
    assert t_interval([0.1, 0.1, 0.1])["ci95"] == [0.1, 0.1]
    assert "ci90" in t_interval(values, confidence=0.9)


def test_welch_interval_matches_scipy_and_an_exact_baseline_adds_no_variance() -> None:
    a, b = [1.0, 2.0, 3.5], [0.5, 1.0, 1.2, 0.1]
    out = welch_interval(a, b)
    want = scipy.stats.ttest_ind(a, b, equal_var=False)
    assert out["ci95"] == pytest.approx([want.confidence_interval().low, want.confidence_interval().high])
    assert out["df"] == pytest.approx(want.df) == welch_t(a, b)["df"]
    assert out["mean_diff"] == pytest.approx(np.mean(a) - np.mean(b)) and (out["n_a"], out["n_b"]) == (3, 4)
    exact = welch_interval(a, [0.5], b_exact=True)  # a one-sample t interval, shifted
    one_sample = t_interval(np.array(a) - 0.5)
    assert exact["ci95"] == pytest.approx(one_sample["ci95"]) and exact["df"] == 2.0
    assert welch_interval([1.0], b)["ci95"] is None and welch_interval(a, [0.5])["ci95"] is None
    assert welch_interval([0.3, 0.3], [0.1, 0.1])["ci95"] == pytest.approx([0.2, 0.2])
    with pytest.raises(ValueError, match="b has 2 values with b_exact"):
        welch_interval(a, [0.5, 0.6], b_exact=True)


def test_mean_std() -> None:
    assert mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert mean_std([0.7]) == {"mean": 0.7, "std": 0.0, "n": 1}
    with pytest.raises(ValueError, match="no values"):
        mean_std([])


def test_iqm_is_the_mean_of_the_middle_half() -> None:
    assert iqm([8, 1, 7, 2, 6, 3, 5, 4]) == 4.5  # mean of 3, 4, 5, 6
    values = np.random.default_rng(8).normal(size=37)
    assert iqm(values) == pytest.approx(scipy.stats.trim_mean(values, 0.25))
    with pytest.raises(ValueError, match="no values"):
        iqm([])


def test_iqm_ci_is_seeded_contains_the_iqm_and_narrows_with_more_runs() -> None:
    rng = np.random.default_rng(9)
    scores = rng.random((10, 4))
    out = iqm_ci(scores, seed=3)
    assert out == iqm_ci(scores, seed=3) and out != iqm_ci(scores, seed=4)
    assert out["iqm"] == iqm(scores.ravel()) and (out["n_runs"], out["n_tasks"]) == (10, 4)
    assert out["ci95"][0] < out["iqm"] < out["ci95"][1]
    wide, narrow = (np.diff(iqm_ci(rng.random((n, 4)), n_boot=500)["ci95"])[0] for n in (5, 200))
    assert narrow < wide / 3


def test_iqm_ci_accepts_one_task_as_a_1d_array() -> None:
    runs = np.random.default_rng(10).random(20)
    out = iqm_ci(runs, confidence=0.9)
    assert set(out) == {"iqm", "ci90", "n_runs", "n_tasks"} and (out["n_runs"], out["n_tasks"]) == (20, 1)
    assert out == iqm_ci(runs[:, None], confidence=0.9)


def test_mean_ci_covers_the_true_accuracy_at_about_the_nominal_rate() -> None:
    # 200 benchmarks of 100 Bernoulli(0.6) answers; the 95% percentile bootstrap should cover 0.6
    # in about 95% of them (a little less for n = 100). Each mean_ci call is vectorised over its
    # 500 resamples; the loop over benchmarks takes well under a second. (This seed covers 94.5%.)
    true_mean, n_samples = 0.6, 200
    samples = (np.random.default_rng(2).random((n_samples, 100)) < true_mean).astype(float)
    intervals = np.array([mean_ci(sample, n_boot=500, seed=i)["ci95"] for i, sample in enumerate(samples)])
    coverage = np.mean((intervals[:, 0] <= true_mean) & (true_mean <= intervals[:, 1]))
    assert 0.90 <= coverage <= 0.99


def _planted_systems(n: int = 400, gain: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """System A right on ~60% of n questions; B is A with a seeded subset of answers flipped.

    B turns 10 of A's right answers wrong and gain * n + 10 of A's wrong answers right, so B is
    right on exactly gain * n more questions and the discordant pairs go both ways.
    """
    rng = np.random.default_rng(12)
    a = (rng.random(n) < 0.6).astype(float)
    b = a.copy()
    lost = rng.choice(np.flatnonzero(a == 1), size=10, replace=False)
    won = rng.choice(np.flatnonzero(a == 0), size=round(gain * n) + 10, replace=False)
    b[lost], b[won] = 0.0, 1.0
    return a, b


def test_planted_difference_is_detected_by_both_paired_tests() -> None:
    a, b = _planted_systems()
    assert b.sum() - a.sum() == 32  # 8% of 400 questions
    test = mcnemar(a, b)
    assert (test["b01"], test["b10"], test["method"]) == (42, 10, "chi2_cc")
    assert test["p_value"] < 0.01
    diff = paired_diff_ci(b, a)
    assert diff["mean_diff"] == pytest.approx(0.08)
    assert diff["p_value"] < 0.01
    assert 0 < diff["ci95"][0] < diff["mean_diff"] < diff["ci95"][1]


def test_identical_systems_give_p_exactly_one() -> None:
    # Both functions special-case "no difference": McNemar with no discordant pairs returns
    # statistic 0.0 and p 1.0 (method "exact"); paired_diff_ci with all-zero differences returns
    # mean 0.0, CI [0.0, 0.0] and p 1.0 without resampling.
    a, _ = _planted_systems()
    test = mcnemar(a, a.copy())
    assert (test["b01"], test["b10"], test["statistic"], test["p_value"], test["method"]) == (0, 0, 0.0, 1.0, "exact")
    assert paired_diff_ci(a, a.copy()) == {"mean_diff": 0.0, "ci95": [0.0, 0.0], "n": 400, "p_value": 1.0}


# Two-level (seed, then question) bootstrap.


def _seeded_scores(seed_accuracy: list[float], n_questions: int = 2500, rng_seed: int = 20) -> np.ndarray:
    """Right/wrong scores, seeds x questions: seed s answers each question right with probability seed_accuracy[s]."""
    rng = np.random.default_rng(rng_seed)
    return (rng.random((len(seed_accuracy), n_questions)) < np.asarray(seed_accuracy)[:, None]).astype(float)


def _width(ci: list[float]) -> float:
    return ci[1] - ci[0]


def test_seed_effect_widens_the_hierarchical_ci_far_beyond_the_pooled_one() -> None:
    scores = _seeded_scores([0.40, 0.55, 0.50])  # seed std 7.6 points, as the sweeps' 4-9
    hier, pooled = hierarchical_bootstrap(scores), mean_ci(scores.ravel())
    assert hier["mean"] == pooled["mean"] == scores.mean()
    assert (hier["n_seeds"], hier["n_questions"]) == (3, [2500] * 3)
    assert _width(hier["ci95"]) > 4 * _width(pooled["ci95"])
    assert hier["ci95"][0] < 0.45 and hier["ci95"][1] > 0.52  # reaches towards the worst and best seeds


def test_seed_effect_makes_a_pooled_significant_difference_not_significant() -> None:
    # B is the same system on every seed; A gains 6, loses 2 and gains 2 points on seeds 0, 1, 2.
    b = _seeded_scores([0.5, 0.5, 0.5], rng_seed=21)
    a = _seeded_scores([0.56, 0.48, 0.52], rng_seed=22)
    pooled = paired_diff_ci(a.ravel(), b.ravel())
    hier = paired_hierarchical_bootstrap(a, b)
    assert hier["mean_diff"] == pytest.approx(pooled["mean_diff"])
    assert pooled["p_value"] < 0.01 and pooled["ci95"][0] > 0
    assert hier["p_value"] > 0.1 and hier["ci95"][0] < 0 < hier["ci95"][1]


def test_without_seed_effect_hierarchical_and_pooled_roughly_agree() -> None:
    # Same accuracy on every seed: the two-level bootstrap counts question noise twice, once through
    # the spread of seed means, so its width is about sqrt((2S - 1) / S) = 1.29x the pooled one at S = 3.
    scores = _seeded_scores([0.5, 0.5, 0.5])
    ratio = _width(hierarchical_bootstrap(scores)["ci95"]) / _width(mean_ci(scores.ravel())["ci95"])
    assert 1.0 < ratio < 1.6
    b = _seeded_scores([0.5, 0.5, 0.5], rng_seed=23)
    a = _seeded_scores([0.55, 0.55, 0.55], rng_seed=24)
    hier, pooled = paired_hierarchical_bootstrap(a, b), paired_diff_ci(a.ravel(), b.ravel())
    assert hier["p_value"] < 0.01 and pooled["p_value"] < 0.01
    assert 1.0 < _width(hier["ci95"]) / _width(pooled["ci95"]) < 1.6


def test_hierarchical_known_answers() -> None:
    # Every question of a seed scores the seed's value, so only the seed draw matters. Two seeds
    # at 0 and 1: resample means are 0, 0.5, 1 with probability 1/4, 1/2, 1/4, so the 95% CI is [0, 1].
    two = np.repeat([[0.0], [1.0]], 50, axis=1)
    assert hierarchical_bootstrap(two, n_boot=4000) == {"mean": 0.5, "ci95": [0.0, 1.0], "n_seeds": 2,
                                                        "n_questions": [50, 50]}
    # Seeds of different sizes weigh by their questions: 1 question at 0 and 3 at 1 give resample
    # means 0, 3/4, 1 with probability 1/4, 1/2, 1/4 around the pooled mean 3/4.
    ragged = hierarchical_bootstrap([[0.0], [1.0, 1.0, 1.0]], n_boot=4000)
    assert (ragged["mean"], ragged["ci95"], ragged["n_questions"]) == (0.75, [0.0, 1.0], [1, 3])
    assert hierarchical_bootstrap([[0.0], [1.0, 1.0, 1.0]], confidence=0.4)["ci40"] == [0.75, 0.75]  # not 1/2
    # A short seed drawn twice brings only its own questions: 2 at 0 and 1 at 1 give 0, 1/3, 1.
    assert hierarchical_bootstrap([[0.0, 0.0], [1.0]], n_boot=4000)["ci95"] == [0.0, 1.0]
    assert hierarchical_bootstrap(np.full((1, 10), 0.7))["ci95"] == [0.7, 0.7]
    # Seed differences +0.3, +0.3, -0.3 (mean 0.1): with k of the 3 drawn seeds positive the resample
    # mean is 0.1 (2k - 3), at least 0.1 from the observed mean unless k = 2, so
    # p = 1 - P(k = 2) = 1 - 3 (2/3)^2 (1/3) = 15/27.
    diffs = np.repeat([[0.3], [0.3], [-0.3]], 20, axis=1)
    out = paired_hierarchical_bootstrap(diffs, np.zeros_like(diffs), n_boot=20000, seed=1)
    assert out["mean_diff"] == pytest.approx(0.1) and out["p_value"] == pytest.approx(15 / 27, abs=0.015)
    assert out["ci95"] == pytest.approx([-0.3, 0.3])
    # Every seed moves the same amount: no resample is as far from the mean as 0 is.
    same = paired_hierarchical_bootstrap(np.full((3, 5), 0.2), np.zeros((3, 5)), n_boot=999)
    assert same["p_value"] == 1 / 1000 and same["ci95"] == pytest.approx([0.2, 0.2])


def test_hierarchical_bootstrap_is_seeded_and_names_its_level() -> None:
    scores = np.random.default_rng(25).random((2, 30)) + [[0.0], [0.2]]
    assert hierarchical_bootstrap(scores, seed=3) == hierarchical_bootstrap(scores.tolist(), seed=3)
    assert hierarchical_bootstrap(scores, seed=3) != hierarchical_bootstrap(scores, seed=4)
    assert set(hierarchical_bootstrap(scores, confidence=0.9)) == {"mean", "ci90", "n_seeds", "n_questions"}
    assert paired_hierarchical_bootstrap(scores, scores.copy()) == {
        "mean_diff": 0.0, "ci95": [0.0, 0.0], "n_seeds": 2, "n_questions": [30, 30], "p_value": 1.0}


def test_seeds_with_their_own_questions_resample_like_equal_ones() -> None:
    # One seed evaluated on one question fewer: the ragged path gives about the equal-rows interval.
    scores = _seeded_scores([0.45, 0.55, 0.5], n_questions=1000)
    ragged = [scores[0], scores[1], scores[2, :-1]]
    assert hierarchical_bootstrap(ragged)["ci95"] == pytest.approx(hierarchical_bootstrap(scores)["ci95"], abs=0.005)
    diff = paired_hierarchical_bootstrap(ragged, [row * 0 for row in ragged])
    assert diff["n_questions"] == [1000, 1000, 999]
    assert diff["mean_diff"] == pytest.approx(np.concatenate(ragged).mean())


def test_hierarchical_chunks_match_one_gather(monkeypatch: pytest.MonkeyPatch) -> None:
    scores = _seeded_scores([0.4, 0.6, 0.5], n_questions=200)
    whole = hierarchical_bootstrap(scores)
    ragged = [scores[0], scores[1, :150], scores[2]]
    whole_ragged = hierarchical_bootstrap(ragged)
    monkeypatch.setattr("shared.stats.CACHE_DRAWS", 600 * 7)
    assert hierarchical_bootstrap(scores)["ci95"] == pytest.approx(whole["ci95"], abs=0.02)
    assert hierarchical_bootstrap(ragged)["ci95"] == pytest.approx(whole_ragged["ci95"], abs=0.02)


@pytest.mark.parametrize(("call", "match"), [
    (lambda: hierarchical_bootstrap(np.array([0.5, 1.0])), r"scores has shape \(2,\); expected seeds x questions"),
    (lambda: hierarchical_bootstrap([0.5, 1.0]), r"scores\[0\] has shape \(\); expected one 1-D sequence"),
    (lambda: hierarchical_bootstrap(np.zeros((0, 4))), r"scores: no seeds; expected one sequence"),
    (lambda: hierarchical_bootstrap([[1.0, 0.0], []]), r"scores\[1\]: no values; expected at least one"),
    (lambda: hierarchical_bootstrap([[1.0, 0.0], [1.0, np.inf]]), r"scores\[1\]\[1\] is inf; expected finite"),
    (lambda: hierarchical_bootstrap([[1.0]], n_boot=0), r"n_boot is 0; expected at least 1"),
    (lambda: paired_hierarchical_bootstrap([[1.0, 0.0]], [[1.0], [0.0]]),
     r"questions per seed in a are \[2\], in b \[1, 1\]; expected the same seeds and questions"),
    (lambda: paired_hierarchical_bootstrap([[1.0]], [[np.nan]]), r"b\[0\]\[0\] is nan"),
])
def test_hierarchical_bad_input_names_the_argument(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()
