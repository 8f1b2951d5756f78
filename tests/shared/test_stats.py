"""Bootstrap CIs and paired permutation p-values over per-question scores."""

import numpy as np
import pytest

from shared.stats import mean_ci, paired_diff_ci


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
