"""The explicit mixing sampler: ratios within sampling error, curriculum, full passes, exact resume."""

import pytest
import torch

from stage_a.sampler import MixConfig, MixSampler

AUDIO, VL = list(range(0, 30)), list(range(30, 100))


def _is_audio(rows: list[int]) -> list[bool]:
    return [i < 30 for i in rows]


def test_audio_fraction_matches_the_configured_one_within_sampling_error() -> None:
    sampler = MixSampler(AUDIO, VL, MixConfig(audio_fraction=0.35, batch_size=32, seed=3))
    flags = [f for step in range(400) for f in _is_audio(sampler.batch(step))]
    n = len(flags)
    assert abs(sum(flags) / n - 0.35) < 3 * (0.35 * 0.65 / n) ** 0.5


def test_curriculum_ramps_from_mostly_vl_to_the_target() -> None:
    sampler = MixSampler(AUDIO, VL, MixConfig(audio_fraction=0.5, curriculum_steps=100, curriculum_start=0.3))
    assert [sampler.fraction(s) for s in (0, 50, 100, 500)] == pytest.approx([0.3, 0.4, 0.5, 0.5])


def test_each_pool_is_walked_in_full_passes() -> None:
    sampler = MixSampler(AUDIO, VL, MixConfig(audio_fraction=1.0, batch_size=10))
    seen = [i for step in range(3) for i in sampler.batch(step)]
    assert sorted(seen) == AUDIO  # one pass over 30 audio samples, no repeats


def test_state_round_trip_gives_the_same_batches() -> None:
    config = MixConfig(batch_size=16, seed=1)
    first = MixSampler(AUDIO, VL, config)
    for step in range(7):
        first.batch(step)
    second = MixSampler(AUDIO, VL, config)
    second.load_state_dict(first.state_dict())
    assert [first.batch(s) for s in range(7, 12)] == [second.batch(s) for s in range(7, 12)]


def test_bad_mix_is_rejected() -> None:
    with pytest.raises(ValueError, match="audio_fraction is 1.5"):
        MixConfig(audio_fraction=1.5)
    with pytest.raises(ValueError, match="no VL samples"):
        MixSampler(AUDIO, [], MixConfig(audio_fraction=0.5))
    assert torch.tensor(MixSampler(AUDIO, [], MixConfig(audio_fraction=1.0)).batch(0)).lt(30).all()


TYPES = ["audio.order"] * 3 + ["audio.pitch"] * 27  # a rare type: 10 % of the audio pool


def test_qtype_balance_draws_each_audio_type_equally_often() -> None:
    config = MixConfig(audio_fraction=1.0, batch_size=32, seed=2, balance="qtype")
    sampler = MixSampler(AUDIO, VL, config, TYPES)
    rows = [i for step in range(200) for i in sampler.batch(step)]
    share = sum(TYPES[i] == "audio.order" for i in rows) / len(rows)
    assert abs(share - 0.5) < 3 * (0.25 / len(rows)) ** 0.5
    plain = MixSampler(AUDIO, VL, MixConfig(audio_fraction=1.0, batch_size=32, seed=2))
    rows = [i for step in range(200) for i in plain.batch(step)]
    assert abs(sum(TYPES[i] == "audio.order" for i in rows) / len(rows) - 0.1) < 0.02


def test_balanced_state_round_trips_and_a_changed_balance_is_refused() -> None:
    config = MixConfig(batch_size=16, seed=1, balance="qtype")
    first = MixSampler(AUDIO, VL, config, TYPES)
    for step in range(7):
        first.batch(step)
    second = MixSampler(AUDIO, VL, config, TYPES)
    second.load_state_dict(first.state_dict())
    assert [first.batch(s) for s in range(7, 12)] == [second.batch(s) for s in range(7, 12)]
    with pytest.raises(ValueError, match="was mix.balance changed"):
        MixSampler(AUDIO, VL, MixConfig(batch_size=16, seed=1)).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="balance 'qtype' needs one question type per audio sample"):
        MixSampler(AUDIO, VL, config)
    with pytest.raises(ValueError, match="mixing balance is 'type'"):
        MixConfig(balance="type")
