"""A trained Stage B policy deciding, per raw request, between no audio and audio with k tokens.

`PolicyChooser` is the `AudioChooser` a `SafePipeline` calls for requests with k "auto": it computes the request's
pre-decision features with the extractor the outcome table used (stage_b.policy_features), standardises them with
the policy's saved scaler, and appends the episode state the policy was trained with at the first step of an
episode (budget fraction 1.0, episode fraction left 1.0), exactly as `AudioBudgetEnv.reset` shows a question.
Serving has no episodes, so policies trained with a budget (whose decisions depend on the budget spent so far) or
with the bought no-audio confidence feature are refused by name rather than fed a made-up state; so are policies of
a table joining several bridges (stage_b.join), since a pipeline loads one, and weight-conditioned policies
(`stage_b-train --weight-max`), which would need a cost weight per request.
The policy loads without pickle (stage_b.actor) unless `trust_pickle`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shared.cli import check_keys
from stage_a.checkpointing import bridge_hash
from stage_a.pipeline import SafePipeline
from stage_b.evaluate import SavedPolicy
from stage_b.policy_features import audio_preview, query_features

EPISODE_START = (1.0, 1.0)  # AudioBudgetEnv's budget fraction and episode fraction left at reset


class PolicyChooser:
    """k per request (0 = no audio) from a saved policy, for `SafePipeline(policy=...)`."""

    def __init__(self, policy: SavedPolicy) -> None:
        config = policy.config
        if config.conditioned:
            raise ValueError(f"{policy.folder}: a weight-conditioned policy (weight_max {config.weight_max:g}), "
                             "which needs a cost weight per request that serving does not take yet; expected a "
                             "policy trained without --weight-max")
        if config.budget is not None:
            raise ValueError(f"{policy.folder}: trained with budget {config.budget}, whose decisions depend on the "
                             "budget left in an episode; serving has no episodes, expected a policy without a budget")
        if config.confidence:
            raise ValueError(f"{policy.folder}: observes the no-audio confidence, which serving does not compute yet; "
                             "expected a policy trained without --confidence")
        provenance = check_keys(f"{policy.folder / 'policy.json'}: table_provenance",
                                policy.record["table_provenance"], ("actions", "checkpoint_hash", "features"))
        if "action_names" in provenance:
            raise ValueError(f"{policy.folder}: chooses among the actions {provenance['action_names']} of several "
                             "bridges (stage_b.join); a pipeline serves one bridge, expected a policy trained on a "
                             "stage_b-outcomes table")
        self.policy = policy
        self.actions = [int(k) for k in provenance["actions"]]
        self.checkpoint_hash = provenance["checkpoint_hash"]
        self.columns = int(sum(provenance["features"].values()))

    @classmethod
    def load(cls, folder: str | Path, trust_pickle: bool = False) -> PolicyChooser:
        """The policy folder written by stage_b-train (policy.safetensors + policy.json)."""
        return cls(SavedPolicy.load(Path(folder), trust_pickle))

    def check(self, pipe: SafePipeline) -> None:
        """Refuse a bridge other than the one whose outcome table trained the policy, or one lacking its k."""
        if pipe.bridge_dir is None:
            raise ValueError("the pipeline has no bridge folder to check the policy against; "
                             "load it with SafePipeline.from_pretrained")
        digest = bridge_hash(pipe.bridge_dir)
        if digest != self.checkpoint_hash:
            raise ValueError(f"policy {self.policy.folder} was trained on outcomes of bridge {self.checkpoint_hash}, "
                             f"not {pipe.bridge_dir} ({digest}); expected the bridge its outcome table was built from")
        if max(self.actions) > pipe.k_max:
            raise ValueError(f"policy {self.policy.folder} may choose k = {max(self.actions)}; the bridge's k_max is "
                             f"{pipe.k_max}")

    def observations(self, features: np.ndarray) -> np.ndarray:
        """(B, D + 2) observations: scaled features, then the episode-start budget and time features."""
        if features.shape[1] != self.columns:
            raise ValueError(f"{features.shape[1]} feature columns; policy {self.policy.folder} expects "
                             f"{self.columns} (its outcome table's)")
        state = np.broadcast_to(np.asarray(EPISODE_START, np.float32), (features.shape[0], len(EPISODE_START)))
        return np.concatenate([self.policy.scaler(features), state], axis=1)

    def __call__(self, embeddings: torch.nn.Module, inputs: dict[str, torch.Tensor], waves: list[np.ndarray],
                 sample_rate: int) -> list[int]:
        features = query_features(embeddings, inputs, [audio_preview(w, sample_rate) for w in waves])
        actions, _ = self.policy.model.predict(self.observations(features), deterministic=True)
        return [self.actions[int(a)] for a in np.atleast_1d(actions)]
