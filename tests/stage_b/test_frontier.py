"""Frontier arithmetic on hand-made points: hypervolume, Pareto subset, dominance, saving, the oracle frontier."""

import numpy as np
import pytest
from scipy import stats

from shared.stats import welch_t
from stage_b.frontier import (dominance, hypervolume, matched_accuracy_saving, oracle_at_weights, oracle_choice,
                              oracle_frontier, pareto_mask, seed_means, summarize_sweep)
from stage_b.latency import frontier_percentiles


def test_hypervolume_hand_computed() -> None:
    g, acc = np.array([1.0, 2.0]), np.array([0.5, 0.8])
    assert hypervolume(g, acc, 4.0) == pytest.approx(1 * 0.5 + 2 * 0.8)  # [1, 2] x 0.5, then [2, 4] x 0.8
    assert hypervolume(g[::-1], acc[::-1], 4.0) == pytest.approx(2.1)  # order does not matter
    # a dominated point, a point beyond the reference and one exactly on it change nothing
    assert hypervolume(np.array([1, 2, 3, 5, 4.0]), np.array([0.5, 0.8, 0.6, 1.0, 0.9]), 4.0) == pytest.approx(2.1)
    assert hypervolume(np.array([0.0]), np.array([1.0]), 2.0) == pytest.approx(2.0)
    assert hypervolume(np.array([3.0, 5.0]), np.array([1.0, 1.0]), 2.0) == 0.0
    assert hypervolume(np.zeros(0), np.zeros(0), 2.0) == 0.0
    with pytest.raises(ValueError, match="same length"):
        hypervolume(np.zeros(2), np.zeros(3), 1.0)


def test_pareto_mask_keeps_non_dominated_points_and_ties() -> None:
    g = np.array([1.0, 2.0, 3.0, 2.0, 1.0, 0.5])
    acc = np.array([0.5, 0.8, 0.6, 0.7, 0.5, 0.2])
    assert pareto_mask(g, acc).tolist() == [True, True, False, False, True, True]


def test_dominance_margins() -> None:
    learned_g, learned_acc = np.array([1.0, 3.0]), np.array([0.6, 0.9])
    inside = dominance(2.0, 0.5, learned_g, learned_acc)
    assert inside["dominated"] and inside["accuracy_margin"] == pytest.approx(0.1)
    assert inside["gflops_margin"] == pytest.approx(1.0)
    cheap = dominance(0.5, 0.5, learned_g, learned_acc)  # nothing learned is as cheap
    assert not cheap["dominated"] and cheap["accuracy_margin"] is None and cheap["gflops_margin"] == pytest.approx(-0.5)
    best = dominance(3.0, 0.95, learned_g, learned_acc)  # nothing learned is as accurate
    assert not best["dominated"] and best["accuracy_margin"] == pytest.approx(-0.05) and best["gflops_margin"] is None
    tie = dominance(3.0, 0.9, learned_g, learned_acc)  # equal on both axes: dominated, but not strictly
    assert tie["dominated"] and not tie["strictly"] and inside["strictly"]
    rounding = dominance(3.0 - 1e-5, 0.8, learned_g, learned_acc)  # the same compute within 0.01 %
    assert rounding["dominated"] and rounding["strictly"] and rounding["accuracy_margin"] == pytest.approx(0.1)


def test_matched_accuracy_saving() -> None:
    g, acc = np.array([0.03, 0.05, 0.08]), np.array([0.70, 0.795, 0.81])
    result = matched_accuracy_saving(g, acc, target_acc=0.80, g_full=0.10, g_never=0.02)
    # 0.795 and 0.81 are within 0.01 of 0.80; the cheaper, 0.05, uses (0.05 - 0.02) / (0.10 - 0.02) of the audio compute
    assert result["gflops"] == 0.05 and result["saving"] == pytest.approx(1 - 0.03 / 0.08)
    assert result["total_saving"] == pytest.approx(1 - 0.05 / 0.10)  # of all compute, the no-audio base included
    assert matched_accuracy_saving(g, acc, target_acc=0.9, g_full=0.10, g_never=0.02) is None
    assert matched_accuracy_saving(g, acc, target_acc=0.8, g_full=0.02, g_never=0.02)["saving"] is None


def test_oracle_frontier_hand_computed() -> None:
    score = np.array([[0.0, 1.0, 1.0], [0.5, 0.6, 1.0], [1.0, 1.0, 1.0]])
    cost = np.array([[0.1, 0.5, 1.0]] * 3)
    assert oracle_choice(score, cost, 0.0).tolist() == [1, 2, 0]  # best score, ties to the cheapest
    frontier = oracle_frontier(score, cost, {"cost": cost})
    # q1 drops straight to action 0 at 0.5 / 0.9 (action 1 is under its hull), q0 at 1 / 0.4
    np.testing.assert_allclose(frontier["weight"], [0.0, 0.5 / 0.9, 2.5])
    np.testing.assert_allclose(frontier["accuracy"], [1.0, 2.5 / 3, 1.5 / 3])
    np.testing.assert_allclose(frontier["cost"], [1.6 / 3, 0.7 / 3, 0.1])
    assert frontier["accuracy"][0] == pytest.approx(score.max(axis=1).mean())


def test_oracle_at_weights_hand_computed() -> None:
    """Three actions on one question: scores 0, 0.6, 1 at costs 0, 1, 2. The oracle takes action 2 while
    1 - 2w >= 0.6 - w (w <= 0.4, ties to the cheaper), action 1 while 0.6 - w > 0 (w < 0.6), then action 0."""
    score, cost = np.array([[0.0, 0.6, 1.0]]), np.array([[0.0, 1.0, 2.0]])
    gflops, accuracy = oracle_at_weights(score, cost, 10 * cost, [0.0, 0.5, 0.6, 1.0])
    assert gflops.tolist() == [20.0, 10.0, 0.0, 0.0] and accuracy.tolist() == [1.0, 0.6, 0.0, 0.0]
    # on the frontier's own vertices it reproduces the frontier, whatever it is evaluated at in between
    frontier = oracle_frontier(score, cost, {"gflops": 10 * cost})
    assert oracle_at_weights(score, cost, 10 * cost, frontier["weight"])[0].tolist() == frontier["gflops"].tolist()


def test_oracle_frontier_matches_a_brute_force_weight_scan() -> None:
    rng = np.random.default_rng(0)
    score, cost = rng.choice([0.0, 1 / 3, 2 / 3, 1.0], size=(50, 4)), rng.random((50, 4))
    frontier = oracle_frontier(score, cost, {"cost": cost})
    assert frontier["accuracy"][0] == pytest.approx(score.max(axis=1).mean())
    assert np.all(np.diff(frontier["weight"]) >= 0) and np.all(np.diff(frontier["cost"]) <= 1e-12)
    vertices = np.stack([frontier["cost"], frontier["accuracy"]], axis=1)
    for w in np.linspace(0, 20, 401):
        choice = oracle_choice(score, cost, w)
        point = [cost[np.arange(50), choice].mean(), score[np.arange(50), choice].mean()]
        assert np.isclose(vertices, point).all(axis=1).any(), w


def _row(method: str, g: float, acc: float, alpha: float | None = None, seed: int | None = None) -> dict:
    return {"method": method, "alpha": alpha, "gamma": 0.0 if alpha is not None else None, "seed": seed,
            "accuracy": acc, "gflops_per_query": g, "latency_ms": 1.0, "audio_rate": 0.5}


def test_summarize_sweep_on_hand_made_rows() -> None:
    rows = [_row("never", 0.02, 0.58), _row("always-k4", 0.10, 0.80), _row("always-k16", 0.12, 0.79),
            _row("oracle", 0.04, 0.82), _row("oracle-frontier", 0.04, 0.82, 0.0),
            _row("oracle-frontier", 0.02, 0.58, 2.0),
            _row("ppo-alpha", 0.05, 0.79, 0.1, 0), _row("ppo-alpha", 0.07, 0.81, 0.1, 1),
            _row("ppo-alpha", 0.03, 0.60, 1.0, 0), _row("ppo-alpha", 0.03, 0.62, 1.0, 1),
            _row("random-alpha", 0.065, 0.70, 0.1, 0), _row("random-alpha", 0.065, 0.70, 0.1, 1),
            _row("random-alpha", 0.03, 0.60, 1.0, 0), _row("random-alpha", 0.03, 0.60, 1.0, 1)]
    report = summarize_sweep(rows, ["alpha"])
    assert report["reference"] == {"gflops_per_query": 0.12, "accuracy": 0.0, "method": "always-k16"}
    # learned means (0.03, 0.61) and (0.06, 0.80): 0.03 * 0.61 + 0.06 * 0.80
    assert report["hypervolume"]["ppo-alpha"] == pytest.approx(0.03 * 0.61 + 0.06 * 0.80)
    assert report["hypervolume"]["oracle-frontier"] == pytest.approx(0.02 * 0.58 + 0.08 * 0.82)
    assert report["hypervolume_ratio_to_oracle"]["ppo-alpha"] == pytest.approx(0.0663 / 0.0772)
    # never (0.02) is cheaper than every learned point; k4 and k16 are dominated by (0.06, 0.80); so are both randoms
    assert report["dominated"] == {"static": {"dominated": "2/3", "strictly": "2/3"},
                                   "random": {"dominated": "2/2", "strictly": "2/2"}}
    k4 = next(c for c in report["dominance"] if c["method"] == "always-k4")
    assert k4["accuracy_margin"] == pytest.approx(0.0) and k4["gflops_margin"] == pytest.approx(0.04)
    # target: always-k16's 0.79 - 0.01; cheapest learned mean at >= 0.78 is 0.06
    assert report["matched_accuracy_saving"]["any"]["saving"] == pytest.approx(1 - 0.04 / 0.10)
    assert report["hypervolume_per_seed"]["ppo-alpha"]["n"] == 2


def test_summarize_sweep_compares_ppo_with_each_baseline() -> None:
    """Per-seed hypervolumes with t intervals, ratios to the oracle, PPO minus each baseline (hand-computed)."""
    rows = [_row("never", 0.02, 0.58), _row("always-k16", 0.12, 0.79), _row("oracle", 0.04, 0.82),
            _row("oracle-frontier", 0.04, 0.82, 0.0), _row("oracle-frontier", 0.02, 0.58, 2.0),
            _row("ppo-alpha", 0.05, 0.79, 0.1, 0), _row("ppo-alpha", 0.03, 0.60, 1.0, 0),
            _row("ppo-alpha", 0.07, 0.81, 0.1, 1), _row("ppo-alpha", 0.03, 0.62, 1.0, 1),
            _row("supervised-alpha", 0.05, 0.78, 0.1, 0), _row("supervised-alpha", 0.03, 0.60, 1.0, 0),
            _row("supervised-alpha", 0.06, 0.80, 0.1, 1), _row("supervised-alpha", 0.03, 0.58, 1.0, 1),
            _row("cascade", 0.02, 0.58), _row("cascade", 0.08, 0.79)]
    report = summarize_sweep(rows, ["alpha"])
    ppo = [0.02 * 0.60 + 0.07 * 0.79, 0.04 * 0.62 + 0.05 * 0.81]  # each seed's own points, reference 0.12
    supervised = [0.02 * 0.60 + 0.07 * 0.78, 0.03 * 0.58 + 0.06 * 0.80]
    cascade = 0.06 * 0.58 + 0.04 * 0.79  # its rows, one per threshold
    hv, per_seed = report["hypervolume"], report["hypervolume_per_seed"]
    assert hv["supervised-alpha"] == pytest.approx(0.025 * 0.59 + 0.065 * 0.79)  # seed means (0.03, 0.59), (0.055, 0.79)
    assert hv["cascade"] == pytest.approx(cascade)
    assert report["hypervolume_ratio_to_oracle"]["cascade"] == pytest.approx(cascade / (0.02 * 0.58 + 0.08 * 0.82))
    assert report["hypervolume_ratio_to_oracle"]["supervised-alpha"] == pytest.approx(hv["supervised-alpha"] / 0.0772)
    for method, values in (("ppo-alpha", ppo), ("supervised-alpha", supervised)):
        half = stats.t.ppf(0.975, 1) * np.std(values, ddof=1) / np.sqrt(2)
        assert per_seed[method]["mean"] == pytest.approx(np.mean(values))
        assert per_seed[method]["ci95"] == pytest.approx([np.mean(values) - half, np.mean(values) + half])
    oracle = 0.02 * 0.58 + 0.08 * 0.82
    assert per_seed["cascade"] == {"mean": pytest.approx(cascade), "std": 0.0, "n": 1, "deterministic": True,
                                   "ci95": [pytest.approx(cascade)] * 2,
                                   "ratio_to_oracle": {"mean": pytest.approx(cascade / oracle),
                                                       "ci95": [pytest.approx(cascade / oracle)] * 2}}
    assert per_seed["ppo-alpha"]["ratio_to_oracle"]["ci95"] == pytest.approx(
        [bound / oracle for bound in per_seed["ppo-alpha"]["ci95"]])
    versus = report["ppo_minus_baseline_hypervolume"]
    assert set(versus) == {"supervised-alpha", "cascade"} and set(versus["cascade"]) == {"ppo-alpha"}
    welch = versus["supervised-alpha"]["ppo-alpha"]
    assert welch["mean_diff"] == pytest.approx(np.mean(ppo) - np.mean(supervised))
    assert welch["df"] == pytest.approx(welch_t(ppo, supervised)["df"])
    exact = versus["cascade"]["ppo-alpha"]  # the cascade's one hypervolume is exact: only PPO's seeds vary
    half = stats.t.ppf(0.975, 1) * np.std(ppo, ddof=1) / np.sqrt(2)
    assert exact["ci95"] == pytest.approx([np.mean(ppo) - cascade - half, np.mean(ppo) - cascade + half])
    assert report["baseline_points"]["cascade"][0]["gflops_per_query"] == 0.02
    assert report["dominated"]["static"] == {"dominated": "1/2", "strictly": "1/2"}  # baselines are not learned points


def test_frontier_percentiles_replay_the_oracles_choices() -> None:
    """p50/p95 of the chosen latency samples at every vertex, against a fresh computation from oracle_choice where a
    weight's switches are all done: the last vertex of each weight, checked halfway to the next weight (at the switch
    weight itself the old and new action tie, and rounding may pick either)."""
    rng = np.random.default_rng(1)
    score, cost = rng.choice([0.0, 1 / 3, 2 / 3, 1.0], size=(40, 4)), np.sort(rng.random((40, 4)), axis=1)
    samples = 1 + rng.random((40, 4, 3)) * 10
    frontier = oracle_frontier(score, cost, {"cost": cost})
    assert frontier["switch_row"][0] == frontier["switch_action"][0] == -1
    spread = frontier_percentiles(samples, oracle_choice(score, cost, 0.0), frontier["switch_row"],
                                  frontier["switch_action"])
    last = np.flatnonzero(np.append(np.diff(frontier["weight"]) > 0, True))
    assert len(last) > 10
    beyond = np.append(frontier["weight"][last[1:]], 2 * frontier["weight"][-1])
    for vertex, after in zip(last, (frontier["weight"][last] + beyond) / 2):
        choice = oracle_choice(score, cost, after)
        chosen = samples[np.arange(40), choice]
        assert spread["latency_p50_ms"][vertex] == pytest.approx(np.percentile(chosen, 50))
        assert spread["latency_p95_ms"][vertex] == pytest.approx(np.percentile(chosen, 95))
    assert spread["latency_p95_ms"][-1] == pytest.approx(np.percentile(samples[:, 0], 95))  # the cheapest action


def test_seed_means_average_the_latency_percentiles() -> None:
    rows = [_row("ppo-alpha", 0.05, 0.79, 0.1, 0) | {"latency_p50_ms": 4.0, "latency_p95_ms": 9.0},
            _row("ppo-alpha", 0.07, 0.81, 0.1, 1) | {"latency_p50_ms": 6.0, "latency_p95_ms": 11.0}]
    point = seed_means(rows, "ppo-alpha")[0]
    assert point["latency_p50_ms"] == pytest.approx(5.0) and point["latency_p95_ms"] == pytest.approx(10.0)
    assert point["latency_p95_ms_std"] == pytest.approx(np.std([9.0, 11.0], ddof=1))
    assert "latency_p95_ms" not in seed_means([_row("ppo-alpha", 0.05, 0.79, 0.1, 0)], "ppo-alpha")[0]
