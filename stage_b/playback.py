"""Playing a policy through its env: every question of a set once, in seeded episodes, as in training.

`play` is what `stage_b-eval`, `stage_b-pareto`, `stage_b-live`, the budget comparison and the validation
of weight-conditioned policies (stage_b.train) all use, so each sees the same episodes and features.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from envs.weight_conditioned import WeightConditioned


class Predictor(Protocol):
    """Anything with SB3's `predict`: a PPO model, its policy, or a static policy."""

    def predict(self, observation: np.ndarray, deterministic: bool = ...) -> tuple[Any, Any]: ...


def play(model: Predictor, env: gym.Env, rows: np.ndarray, seed: int = 0,
         weight: float | None = None) -> dict[str, np.ndarray]:
    """The deterministic policy on every question of `rows` once, as the env shows them in training.

    A seeded permutation of `rows` is cut into episodes of the env's length (the last may be
    shorter), each played with `reset(options={"order": ...})`, so the episode and budget features
    and any budget substitution are those of the env. A weight-conditioned env (envs.weight_conditioned)
    needs `weight`, passed at every reset as options["weight"]; any other env refuses one. Returns per-step
    arrays: row, action (as taken), score, gflops, latency_ms, reward, forced (the budget replaced the
    chosen action by no audio) and, for a policy observing it, the no-audio confidence it saw; sorted by row.
    """
    conditioned = isinstance(env, WeightConditioned)
    if conditioned != (weight is not None):
        raise ValueError(f"weight is {weight} for {'a weight-conditioned' if conditioned else 'an ordinary'} env; "
                         f"expected {'a weight in [0, weight_max]' if conditioned else 'None'}")
    inner = env.unwrapped
    order = np.random.default_rng(seed).permutation(np.asarray(rows, dtype=np.int64))
    steps: dict[str, list] = defaultdict(list)
    keys = ("row", "score", "gflops", "latency_ms", *(("confidence",) if inner.confidence else ()))
    fixed = {} if weight is None else {"weight": weight}
    for start in range(0, len(order), inner.episode_length):
        obs, _ = env.reset(options={"order": order[start:start + inner.episode_length], **fixed})
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, done, _, info = env.step(int(action))
            for key in keys:
                steps[key].append(info[key])
            steps["action"].append(info["action_taken"])
            steps["forced"].append(info["budget_forced"])
            steps["reward"].append(reward)
    by_row = np.argsort(steps["row"])
    return {key: np.asarray(values)[by_row] for key, values in steps.items()}
