"""The `bandit` baseline of `stage_b-pareto`: disjoint LinUCB (Li et al. 2010) trained online on the training rows.

Each question is a context, each action an arm with its own ridge-regression model of the env's
reward (score minus the weighted, normalised cost). At every step of the stream the learner plays
the arm with the highest upper confidence bound theta_a . x + EXPLORATION * sqrt(x' A_a^-1 x),
observes that arm's reward only, and updates that arm's model (a rank-1 Sherman-Morrison update).
The stream is `PASSES` passes over the training rows, each in a seeded random order: the seed is
the order of the stream, the learner itself is deterministic. After the stream the policy acts
greedily (argmax theta_a . x, ties to the lower action index: no audio first), no exploration.

The context is the standardised observed features projected on their top `COMPONENTS` principal
axes (fitted on the training rows), plus a constant (`contexts`): every step touches A x d x d numbers per run,
so d = 33 keeps a whole sweep (every component x weight x seed, all runs advanced together as one
array) to about a second per pass on a 5,000-row table, where the full ~140 columns would take
~20 s. EXPLORATION, RIDGE and PASSES are fixed, not tuned on any data.
"""

from __future__ import annotations

import numpy as np

EXPLORATION = 1.0  # the UCB width, in reward units per unit of the model's uncertainty
RIDGE = 1.0  # A_a starts as RIDGE * I: the ridge penalty of every arm's model
PASSES = 2  # passes over the training rows
COMPONENTS = 32  # principal axes of the standardised features kept in the context
INTERCEPT = 10.0  # the context's constant: large against the ~sqrt(COMPONENTS) norm of the standardised coordinates


def principal_axes(features: np.ndarray, count: int = COMPONENTS) -> np.ndarray:
    """(D, min(count, D)) orthonormal top principal axes of `features` (training rows, already standardised)."""
    centered = features - features.mean(axis=0)
    _, _, vt = np.linalg.svd(centered.astype(np.float64), full_matrices=False)
    return vt[:min(count, features.shape[1])].T


def contexts(features: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """(N, m + 1) contexts: the features' coordinates on `axes`, then the constant INTERCEPT.

    The ridge penalty shrinks every weight alike; with a constant of 1 an arm pulled a few times would
    spread its rewards over the ~33 weights and predict about 0 on other contexts, not its mean reward,
    so a costly arm tried early would look no worse than a cheap one. A large constant lets the
    intercept carry an arm's mean at almost no penalty."""
    projected = features.astype(np.float64) @ axes
    return np.concatenate([projected, np.full((projected.shape[0], 1), INTERCEPT)], axis=1)


def stream_orders(n_rows: int, seeds: list[int], passes: int = PASSES) -> np.ndarray:
    """(len(seeds), passes * n_rows) row positions: per seed, `passes` seeded permutations of the rows, one after another."""
    orders = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        orders.append(np.concatenate([rng.permutation(n_rows) for _ in range(passes)]))
    return np.stack(orders)


def linucb(x: np.ndarray, rewards: np.ndarray, orders: np.ndarray, exploration: float = EXPLORATION,
           ridge: float = RIDGE) -> np.ndarray:
    """Run R independent disjoint-LinUCB learners together; returns their arms' models theta, (R, A, d).

    `x` (N, d): contexts of the training rows; `rewards` (R, N, A): each run's reward of every row
    and arm (a run sees only the arm it plays); `orders` (R, T): each run's stream of row positions.
    """
    n_runs, n_rows, n_arms = rewards.shape
    if x.shape[0] != n_rows or orders.shape[0] != n_runs:
        raise ValueError(f"contexts {x.shape}, rewards {rewards.shape} and orders {orders.shape} disagree; expected "
                         "(N, d), (R, N, A) and (R, T)")
    d = x.shape[1]
    a_inv = np.broadcast_to(np.eye(d) / ridge, (n_runs, n_arms, d, d)).copy()
    theta = np.zeros((n_runs, n_arms, d))
    runs = np.arange(n_runs)
    for step in range(orders.shape[1]):
        rows = orders[:, step]
        context = x[rows]  # (R, d)
        spread = np.einsum("radk,rk->rad", a_inv, context)  # A_a^-1 x, per run and arm
        width = np.sqrt(np.maximum(np.einsum("rad,rd->ra", spread, context), 0.0))
        arm = np.argmax(np.einsum("rad,rd->ra", theta, context) + exploration * width, axis=1)
        u = spread[runs, arm]  # (R, d)
        denominator = 1.0 + np.einsum("rd,rd->r", u, context)
        error = rewards[runs, rows, arm] - np.einsum("rd,rd->r", theta[runs, arm], context)
        theta[runs, arm] += u * (error / denominator)[:, None]
        a_inv[runs, arm] -= u[:, :, None] * u[:, None, :] / denominator[:, None, None]
    return theta


def greedy(x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """(R, N) each run's greedy arm per context: argmax theta_a . x, ties to the lower index."""
    return np.argmax(np.einsum("rad,nd->rna", theta, x), axis=2)
