"""Named retention presets for the Stage A ablation: none, each mechanism alone, and all three together.

Pure data: each preset is the fields it sets on `stage_a.retention.RetentionConfig` (the rest keep their
defaults); `stage_a.retention.retention_variant(name)` builds the config.
"""

from __future__ import annotations

_KL = {"kl_weight": 0.2, "kl_temperature": 2.0}
# λ_F = 0.1 is meaningful only because the Fisher is normalised to mean entry 1 (OnlineFisher.NORMALISATION);
# sweep it on a log scale (e.g. 0.1, 1, 10).
_FISHER = {"fisher_weight": 0.1}
_NULLSPACE = {"nullspace": True, "nullspace_energy": 0.98}

VARIANTS: dict[str, dict[str, float | bool]] = {
    "none": {},
    "kl": _KL,
    "fisher": _FISHER,
    "nullspace": _NULLSPACE,
    "full": {**_KL, **_FISHER, **_NULLSPACE},
}
