"""Named retention presets for the Stage A ablation: none, each mechanism alone, and all three together."""

from __future__ import annotations

from dataclasses import replace

from stage_a.retention import RetentionConfig

_KL = dict(kl_weight=0.2, kl_temperature=2.0)
# λ_F = 0.1 is meaningful only because the Fisher is normalised to mean entry 1 (OnlineFisher.NORMALISATION);
# sweep it on a log scale (e.g. 0.1, 1, 10).
_FISHER = dict(fisher_weight=0.1)
_NULLSPACE = dict(nullspace=True, nullspace_energy=0.98)

VARIANTS: dict[str, RetentionConfig] = {
    "none": RetentionConfig(),
    "kl": RetentionConfig(**_KL),
    "fisher": RetentionConfig(**_FISHER),
    "nullspace": RetentionConfig(**_NULLSPACE),
    "full": RetentionConfig(**_KL, **_FISHER, **_NULLSPACE),
}


def retention_variant(name: str) -> RetentionConfig:
    """A copy of the named preset, so callers can modify it freely."""
    if name not in VARIANTS:
        raise ValueError(f"retention variant {name!r} is unknown; expected one of {sorted(VARIANTS)}")
    return replace(VARIANTS[name])
