"""Gymnasium environments for Stage B, registered at import so `gymnasium.make` finds them by id.

The package depends only on numpy, gymnasium, `shared` and the outcome-table file format, never on the
training code, so a policy can be trained and evaluated without torch models loaded.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

ENV_ID = "SAFE/AudioBudget-v0"
CONDITIONED_ENV_ID = "SAFE/AudioBudgetConditioned-v0"  # the cost weight drawn per episode and observed

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="envs.audio_budget:AudioBudgetEnv")
if CONDITIONED_ENV_ID not in registry:
    register(id=CONDITIONED_ENV_ID, entry_point="envs.weight_conditioned:make_weight_conditioned")
