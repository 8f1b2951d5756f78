"""envs.reward_scale: the reward's cost scale as policy.json records it, checked field by field on load."""

import re

import pytest

from envs.reward_scale import RewardScale


def test_reward_scale_records_are_checked() -> None:
    scale = RewardScale(2.0, 30.0)
    assert RewardScale.from_json(scale.to_json()) == scale
    with pytest.raises(ValueError, match="lacks \\['latency_ms'\\]"):
        RewardScale.from_json({"gflops": 1.0})
    for bad in (0.0, -1.0, float("nan"), True, "1"):
        with pytest.raises(ValueError, match=f"reward scale 'gflops' is {re.escape(repr(bad))}; expected a finite "
                                             "number > 0"):
            RewardScale.from_json({"gflops": bad, "latency_ms": 1.0})
