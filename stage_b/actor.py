"""A Stage B policy without pickle: the actor's weights as safetensors plus a JSON architecture record.

SB3's `policy.zip` is unpickled by cloudpickle when loaded, so a policy folder from someone else
could run code. `save_actor` writes only the tensors that choose actions (features extractor,
policy MLP, action head) to `policy.safetensors` and returns the architecture needed to rebuild
SB3's own `ActorCriticPolicy` (observation and action spaces, net_arch, activation, ...) with the
file's SHA-256; `load_actor` rebuilds that policy and loads the weights, so `predict(obs,
deterministic=True)` acts exactly as the trained PPO model. The value head is not saved: it is
only used in training. Only the plain MLP policy on a Box observation and a Discrete action that
stage_b-train builds is supported; anything else is refused by name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces
from safetensors.torch import save_file
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor

from shared.loading import file_sha256, load_safetensors

ACTOR_FILE = "policy.safetensors"
FORMAT = "sb3-actor-v1"
ACTOR_PREFIXES = ("features_extractor.", "pi_features_extractor.", "mlp_extractor.policy_net.", "action_net.")
ACTIVATIONS = {cls.__name__: cls for cls in (torch.nn.Tanh, torch.nn.ReLU, torch.nn.LeakyReLU, torch.nn.ELU,
                                             torch.nn.GELU, torch.nn.SiLU, torch.nn.Sigmoid)}


def _actor_state(policy: ActorCriticPolicy) -> dict[str, torch.Tensor]:
    """The tensors of `policy` that choose actions (no value head), by state-dict name."""
    return {name: tensor for name, tensor in policy.state_dict().items() if name.startswith(ACTOR_PREFIXES)}


def _strict_json(bounds: np.ndarray) -> list[float | str]:
    """Box bounds as strict JSON: infinite bounds as the strings "inf" / "-inf" (float() reads them back)."""
    return [float(v) if np.isfinite(v) else str(float(v)) for v in bounds.reshape(-1)]


def save_actor(policy: ActorCriticPolicy, folder: Path) -> dict:
    """Write the actor's weights to folder/policy.safetensors; returns the JSON architecture record."""
    obs, act = policy.observation_space, policy.action_space
    if type(policy) is not ActorCriticPolicy or policy.features_extractor_class is not FlattenExtractor:
        raise ValueError(f"policy is {type(policy).__name__} with {policy.features_extractor_class.__name__}; "
                         "expected SB3's MlpPolicy (ActorCriticPolicy with FlattenExtractor)")
    if not isinstance(obs, spaces.Box) or not isinstance(act, spaces.Discrete):
        raise ValueError(f"policy spaces are {obs} -> {act}; expected a Box observation and a Discrete action")
    if policy.activation_fn.__name__ not in ACTIVATIONS:
        raise ValueError(f"activation {policy.activation_fn.__name__}; expected one of {sorted(ACTIVATIONS)}")
    path = Path(folder) / ACTOR_FILE
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in _actor_state(policy).items()}, str(path),
              metadata={"format": FORMAT})
    return {"format": FORMAT, "file": ACTOR_FILE, "sha256": file_sha256(path),
            "observation_space": {"shape": list(obs.shape), "dtype": str(obs.dtype),
                                  "low": _strict_json(obs.low), "high": _strict_json(obs.high)},
            "action_space": {"n": int(act.n), "start": int(act.start)},
            "net_arch": policy.net_arch, "activation": policy.activation_fn.__name__,
            "share_features_extractor": policy.share_features_extractor,
            "normalize_images": policy.normalize_images}


def build_policy(arch: dict) -> ActorCriticPolicy:
    """SB3's ActorCriticPolicy as `arch` (a `save_actor` record) describes it, with fresh weights."""
    if arch.get("format") != FORMAT:
        raise ValueError(f"actor format is {arch.get('format')!r}; expected {FORMAT!r}")
    if arch["activation"] not in ACTIVATIONS:
        raise ValueError(f"actor activation is {arch['activation']!r}; expected one of {sorted(ACTIVATIONS)}")
    obs = arch["observation_space"]
    dtype = np.dtype(obs["dtype"])
    low, high = (np.asarray([float(v) for v in obs[name]], dtype) for name in ("low", "high"))
    observation_space = spaces.Box(low.reshape(obs["shape"]), high.reshape(obs["shape"]),
                                   shape=tuple(obs["shape"]), dtype=dtype)
    action_space = spaces.Discrete(arch["action_space"]["n"], start=arch["action_space"]["start"])
    policy = ActorCriticPolicy(observation_space, action_space, lambda _: 0.0, net_arch=arch["net_arch"],
                               activation_fn=ACTIVATIONS[arch["activation"]],
                               share_features_extractor=arch["share_features_extractor"],
                               normalize_images=arch["normalize_images"])
    policy.set_training_mode(False)
    return policy


def load_actor(folder: Path, arch: dict) -> ActorCriticPolicy:
    """The policy of folder/policy.safetensors, checked against `arch` (its hash, names and shapes)."""
    path = Path(folder) / arch.get("file", ACTOR_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected the actor weights written by stage_b-train")
    digest = file_sha256(path)
    if digest != arch["sha256"]:
        raise ValueError(f"{path}: SHA-256 {digest[:16]}… differs from {arch['sha256'][:16]}… recorded in "
                         "policy.json; the weights were changed or belong to another policy")
    policy = build_policy(arch)
    tensors = load_safetensors(path, "the actor weights written by stage_b-train")
    expected = {name: tuple(t.shape) for name, t in _actor_state(policy).items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    for name in sorted(set(expected) | set(found)):
        if found.get(name) != expected.get(name):
            raise ValueError(f"{path}: tensor {name!r} has shape {found.get(name, 'missing')}; the architecture in "
                             f"policy.json expects {expected.get(name, 'no such tensor')}")
    policy.load_state_dict(tensors, strict=False)
    return policy
