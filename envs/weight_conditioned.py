"""`SAFE/AudioBudgetConditioned-v0`: the AudioBudget env with the reward's cost weight drawn per episode and observed.

One policy then traces a whole Pareto frontier (preference-conditioned multi-objective RL): instead of one
policy per weight w, the weight is part of the observation, drawn per episode in training and fixed at
evaluation. `WeightConditioned` wraps an `AudioBudgetEnv` built with alpha = gamma = 0 (its reward is then
the score) and, for a component of unit weights (alpha_unit, gamma_unit), rewards a step with

    score - w * alpha_unit * gflops / scale.gflops - w * gamma_unit * latency_ms / scale.latency_ms

from the score and the costs the inner env reports in `info` (those it charged: with the confidence
feature, the no-audio run included; under a budget, the substituted action's), with the inner env's
`scale`: exactly the reward of an `AudioBudgetEnv` built with alpha = w * alpha_unit, gamma = w * gamma_unit.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.audio_budget import AudioBudgetEnv, cost_reward
from shared.cli import check_number


WEIGHT_DRAWS = ("uniform", "squared")  # w = weight_max * u or weight_max * u**2, u uniform in [0, 1]
DEFAULT_DRAW = "squared"  # chosen on `world` (4 of 4 static points dominated, against 3 with uniform draws)


class WeightConditioned(gym.Wrapper):
    """An AudioBudgetEnv whose cost weight w is drawn at each reset and shown as one more observation column.

    At reset w is drawn in [0, weight_max] with the env's seeded `np_random` (`draw`: "uniform", or "squared":
    weight_max * u**2, denser at small weights as the derived grids are; P(w < 5 % of weight_max) is 22 % against
    5 %), unless
    `reset(options={"weight": w})` fixes it (a finite number in [0, weight_max]); other options (such as
    "order") go to the inner env. Observation: the inner env's, then w / weight_max (float32, in [0, 1]).
    Reward: see the module docstring. `info["weight"]` is the episode's w.
    """

    def __init__(self, env: AudioBudgetEnv, units: tuple[float, float], weight_max: float,
                 draw: str = DEFAULT_DRAW) -> None:
        super().__init__(env)
        if not isinstance(env, AudioBudgetEnv):
            raise TypeError(f"env is {type(env).__name__}; expected an AudioBudgetEnv")
        if env.alpha != 0 or env.gamma != 0:
            raise ValueError(f"the inner env has alpha {env.alpha} and gamma {env.gamma}; expected 0 and 0 (the "
                             "wrapper charges the costs)")
        alpha_unit, gamma_unit = (float(check_number(name, value, ge=0))
                                  for name, value in zip(("alpha unit", "gamma unit"), units))
        if alpha_unit == gamma_unit == 0:
            raise ValueError("units are (0, 0); expected a nonzero alpha or gamma unit for the weight to multiply")
        self.units = (alpha_unit, gamma_unit)
        self.weight_max = float(check_number("weight_max", weight_max, gt=0))
        if draw not in WEIGHT_DRAWS:
            raise ValueError(f"draw is {draw!r}; expected one of {list(WEIGHT_DRAWS)}")
        self.draw = draw
        self.weight = 0.0
        inner = env.observation_space
        self.observation_space = spaces.Box(np.append(inner.low, 0.0).astype(np.float32),
                                            np.append(inner.high, 1.0).astype(np.float32), dtype=np.float32)

    def _checked_weight(self, weight: Any) -> float:
        """A reset option's weight, or a ValueError naming it, its value and the range."""
        return float(check_number("options['weight']", weight, ge=0, le=self.weight_max))

    def _drawn(self) -> float:
        """A training episode's weight: weight_max * u (uniform) or weight_max * u**2 (squared)."""
        u = float(self.np_random.uniform(0.0, 1.0))
        return self.weight_max * (u if self.draw == "uniform" else u * u)

    def _observation(self, inner: np.ndarray) -> np.ndarray:
        """The inner observation with w / weight_max appended."""
        return np.append(inner, np.float32(self.weight / self.weight_max))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        options = dict(options or {})
        fixed = options.pop("weight", None)
        weight = None if fixed is None else self._checked_weight(fixed)
        obs, info = self.env.reset(seed=seed, options=options)
        self.weight = self._drawn() if weight is None else weight
        return self._observation(obs), info | {"weight": self.weight}

    def step(self, action: int | np.integer | np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, _, terminated, truncated, info = self.env.step(action)
        alpha, gamma = self.weight * self.units[0], self.weight * self.units[1]
        reward = cost_reward(info["score"], info["gflops"], info["latency_ms"], alpha, gamma, self.env.scale)
        return self._observation(obs), reward, terminated, truncated, info | {"weight": self.weight}


def make_weight_conditioned(units: tuple[float, float], weight_max: float, draw: str = DEFAULT_DRAW,
                            **env_kwargs: Any) -> WeightConditioned:
    """The registered env: an AudioBudgetEnv of `env_kwargs` (alpha and gamma 0), wrapped."""
    for name in ("alpha", "gamma"):
        if env_kwargs.get(name, 0.0) != 0:
            raise ValueError(f"{name} is {env_kwargs[name]}; a weight-conditioned env takes the cost weights as "
                             "units and weight_max, expected no alpha or gamma")
    return WeightConditioned(AudioBudgetEnv(**(env_kwargs | {"alpha": 0.0, "gamma": 0.0})), units, weight_max, draw)
