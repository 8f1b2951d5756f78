"""The reward's cost scales: what `AudioBudgetEnv` divides GFLOPs and latency by.

Rule, the same for both cost terms: per action, the median over the training questions of what it
costs; the scale is the largest of those medians, i.e. the typical cost of the most expensive action.
A cost term is then about 1 for the typical most expensive answer, so alpha and gamma read as
"score points given up for a typical most expensive answer", and `both` (alpha = gamma) weighs the
two terms alike.

Why not the maximum (the rule until policies recorded their scale): measured latency has outliers
(one slow batch on a shared CPU made no audio cost 29 ms against its median 0.34 ms, three times the
typical audio answer), and dividing by the maximum shrinks every latency cost by that factor, so a
weight grid that skips audio on one machine never does on another. A median moves by at most one
order statistic when any one cell changes, however far. Compute is analytic and noise-free, so its
maximum would be stable; it follows the same rule anyway so the two weights mean the same thing
(on the default table the two rules differ by 2 % for compute).

The scale is fitted on the rows a policy trains on and saved with it (policy.json `reward_scale`),
so evaluation, held-out rows and other splits included, rewards exactly as training did. Policies
saved before that divided by the maxima over the whole table they were played on (`table_max`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from envs.outcome_table import OutcomeTable
from shared.cli import check_number


def typical_max(cost: np.ndarray) -> float:
    """The largest over actions (axis 1) of the median over questions (axis 0) of an (N, A) cost."""
    return float(np.median(np.asarray(cost, dtype=np.float64), axis=0).max())


@dataclass(frozen=True)
class RewardScale:
    """GFLOPs and latency (ms) that count as one unit of cost in the reward."""

    gflops: float
    latency_ms: float

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            check_number(f"reward scale '{name}'", value, gt=0)

    @classmethod
    def fit(cls, table: OutcomeTable, rows: np.ndarray, confidence: bool = False) -> RewardScale:
        """`typical_max` of the costs charged on `rows` (with the no-audio run if the confidence is bought)."""
        gflops, latency = table.charged_costs(confidence)
        return cls(typical_max(gflops[rows]), typical_max(latency[rows]))

    @classmethod
    def table_max(cls, table: OutcomeTable, confidence: bool = False) -> RewardScale:
        """The maxima over every row and action: the scale of policies saved before they recorded one."""
        gflops, latency = table.charged_costs(confidence)
        return cls(float(gflops.max()), float(latency.max()))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RewardScale:
        """The scale recorded in policy.json; a missing key is named."""
        missing = [key for key in ("gflops", "latency_ms") if key not in data]
        if missing:
            raise ValueError(f"reward scale {data!r} lacks {missing}; expected keys 'gflops' and 'latency_ms'")
        return cls(data["gflops"], data["latency_ms"])
