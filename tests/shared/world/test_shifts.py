"""Rendering shifts of the world spec (reverb, pitch, tempo, timbre): defaults change nothing, each shift changes the
sound the way it says and by the amount it says, bad values are refused naming them."""

import dataclasses
import hashlib

import numpy as np
import pytest

from shared.cli import InputError
from shared.world.scenes import Scene, SoundEvent, sample_scene
from shared.world.sounds import event_seconds, pulse, room_impulse, synthesize
from shared.world.spec import (
    EVENT_GAP_RANGE,
    FIRST_ONSET_SECONDS,
    MAX_REPEATS,
    SPLITS,
    WorldSpec,
)

# Computed on main at d6476fa, before the shifts existed: WorldSpec().data_hash() (also the data hash in the build
# record of ~/.cache/safe/world/default-seed0), the micro spec's, and the SHA-256 of the float32 bytes of every micro
# clip from synthesize() (train, val, test in order; numpy 2.4 on x86-64).
DEFAULT_HASH = "acdf17de731b610e747618688cfa38c5ed52ddc914e412591abf88e7c82f3d82"
MICRO_HASH = "f1e1c62428e2b13e83210c9a3533a5e1049a3b2f09b3f8183f792531c0b97056"
MICRO_AUDIO_SHA256 = "d83a844fd4007df9275e0eb76a0d6fb51318c5722257dbf1af3aa7776e7ddba6"
CLEAN = WorldSpec(snr_db=(60.0, 60.0))  # noise 60 dB below the events: what is measured is the rendering


def _scenes(spec: WorldSpec, n: int, kinds: tuple[str, ...] = ("tone", "buzz", "chirp")) -> list[Scene]:
    scenes = (sample_scene(spec, "train", i) for i in range(200))
    return [s for s in scenes if all(e.kind in kinds for e in s.events)][:n]


def test_defaults_keep_the_hash_and_the_audio_bit_for_bit() -> None:
    explicit = {"reverb_seconds": 0.0, "pitch_factor": 1, "tempo_factor": 1.0, "timbre": "default"}
    assert WorldSpec().data_hash() == WorldSpec(**explicit).data_hash() == DEFAULT_HASH
    micro = WorldSpec(size="micro", **explicit)
    assert micro.data_hash() == MICRO_HASH
    digest = hashlib.sha256()
    for split in SPLITS:
        for index in range(micro.splits[split]):
            digest.update(synthesize(micro, sample_scene(micro, split, index)).tobytes())
    assert digest.hexdigest() == MICRO_AUDIO_SHA256


@pytest.mark.parametrize("shift", [{"reverb_seconds": 0.3}, {"pitch_factor": 1.41}, {"tempo_factor": 0.75},
                                   {"timbre": "unseen"}])
def test_each_shift_changes_the_data_hash_and_is_listed(shift: dict) -> None:
    spec = WorldSpec(**shift)
    assert spec.data_hash() != DEFAULT_HASH and spec.rendering_shifts() == shift
    assert WorldSpec().rendering_shifts() == {}


def _peak_hz(wave: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave, n=8 * len(wave)))
    return float(np.argmax(spectrum) * sample_rate / (8 * len(wave)))


def _first_pulse_peak_hz(wave: np.ndarray, sample_rate: int) -> float:
    """The spectral peak of the first 80 ms from the first loud sample: inside the first pulse."""
    start = np.flatnonzero(np.abs(wave) > 0.1 * np.abs(wave).max())[0]
    return _peak_hz(wave[start:start + int(0.08 * sample_rate)], sample_rate)


def test_pitch_moves_the_spectral_peak_by_the_factor() -> None:
    shifted = dataclasses.replace(CLEAN, pitch_factor=1.41)
    sr = CLEAN.sample_rate
    scenes = _scenes(CLEAN, 8, kinds=("tone", "buzz"))
    ratios = [_first_pulse_peak_hz(synthesize(shifted, s), sr) / _first_pulse_peak_hz(synthesize(CLEAN, s), sr)
              for s in scenes]
    assert len(ratios) >= 4
    assert np.allclose(ratios, 1.41, atol=0.01)  # the effect is 0.41


def _span_seconds(wave: np.ndarray, sample_rate: int) -> float:
    """From the first to the last sample above a tenth of the peak: the first onset to the last pulse's end."""
    loud = np.flatnonzero(np.abs(wave) > 0.1 * np.abs(wave).max())
    return (loud[-1] - loud[0]) / sample_rate


def test_tempo_scales_the_event_span() -> None:
    fast = dataclasses.replace(CLEAN, tempo_factor=0.75)
    scenes = [s for s in _scenes(CLEAN, 12) if sum(e.repeats for e in s.events) >= 2]
    ratios = [_span_seconds(synthesize(fast, s), CLEAN.sample_rate) / _span_seconds(synthesize(CLEAN, s), CLEAN.sample_rate)
              for s in scenes]
    assert len(ratios) >= 6
    assert np.allclose(ratios, 0.75, atol=0.02)  # the effect is 0.25


def _schroeder_rt60(tail: np.ndarray, sample_rate: int) -> float:
    """RT60 from the Schroeder energy decay curve: three times its fall from -5 to -25 dB."""
    energy = np.cumsum((tail**2)[::-1])[::-1]
    level = 10 * np.log10(energy / energy[0])
    return 3 * (np.argmax(level < -25) - np.argmax(level < -5)) / sample_rate


@pytest.mark.parametrize("rt60", [0.1, 0.3, 1.0])
def test_room_impulse_decays_in_the_requested_time(rt60: float) -> None:
    for seed in range(4):
        room = room_impulse(rt60, 16000, np.random.default_rng(seed))
        assert room[0] == 1.0 and np.isclose(np.sum(room[1:] ** 2), 1.0)
        assert _schroeder_rt60(room[1:], 16000) == pytest.approx(rt60, rel=0.07)


def test_reverb_fills_the_silence_after_the_last_pulse_and_decays_as_requested() -> None:
    sr = CLEAN.sample_rate
    for rt60 in (0.3, 1.0):
        wet_spec = dataclasses.replace(CLEAN, reverb_seconds=rt60)
        estimates = []
        for scene in _scenes(CLEAN, 6):
            dry, wet = synthesize(CLEAN, scene), synthesize(wet_spec, scene)
            end = np.flatnonzero(np.abs(dry) > 0.05 * np.abs(dry).max())[-1]
            after = slice(end + int(0.01 * sr), end + int(0.1 * sr))
            # Dry, only the noise (-60 dB) follows the last pulse; wet, its tail is within 30 dB of the peak.
            assert np.mean(wet[after] ** 2) > 1000 * np.mean(dry[after] ** 2)
            assert np.mean(wet[after] ** 2) > 1e-3 * np.max(wet**2)
            estimates.append(_schroeder_rt60(wet[end:end + int(rt60 * sr)], sr))
        assert np.median(estimates) == pytest.approx(rt60, rel=0.25)


def _share_near(wave: np.ndarray, hz: float, sample_rate: int, width: float) -> float:
    """The share of the wave's energy within `width` Hz of `hz`."""
    spectrum = np.abs(np.fft.rfft(wave, n=4 * len(wave))) ** 2
    bins = np.fft.rfftfreq(4 * len(wave), 1 / sample_rate)
    return float(spectrum[np.abs(bins - hz) < width].sum() / spectrum.sum())


def test_unseen_timbre_is_a_new_waveform_with_each_kinds_trait() -> None:
    unseen = dataclasses.replace(CLEAN, timbre="unseen")
    sr, freq = CLEAN.sample_rate, 400.0
    old = {kind: pulse(kind, freq, CLEAN) for kind in ("tone", "buzz", "chirp")}
    tone, buzz, chirp = (pulse(kind, freq, unseen) for kind in ("tone", "buzz", "chirp"))
    assert all(len(pulse(kind, freq, unseen)) == len(old[kind]) for kind in old)
    half = len(tone) // 2
    # Tone: a triangle, steady pitch and nearly pure, yet with the 3rd harmonic a sine lacks.
    assert _peak_hz(tone[:half], sr) == pytest.approx(freq, rel=0.02) == _peak_hz(tone[half:], sr)
    assert _share_near(tone, freq, sr, 40) > 0.95
    assert _share_near(tone, 3 * freq, sr, 40) > 0.005 > 100 * _share_near(old["tone"], 3 * freq, sr, 40)
    # Buzz: harsh and harmonic, with the even harmonics the default square wave lacks.
    assert _share_near(buzz, freq, sr, 40) < 0.75
    assert _share_near(buzz, 2 * freq, sr, 40) > 0.1 > 10 * _share_near(old["buzz"], 2 * freq, sr, 40)
    # Chirp: an FM sweep, little like the sine sweep, still rising from freq towards twice freq.
    assert abs(np.corrcoef(chirp, old["chirp"])[0, 1]) < 0.9
    quarter = len(chirp) // 4
    assert _peak_hz(chirp[-quarter:], sr) > 1.5 * _peak_hz(chirp[:quarter], sr)


@pytest.mark.parametrize("field, value, message", [
    ("reverb_seconds", -0.1, "world.reverb_seconds is -0.1; expected a finite number >= 0 and <= 4"),
    ("reverb_seconds", 5.0, "world.reverb_seconds is 5.0; expected a finite number >= 0 and <= 4"),
    ("pitch_factor", 0.0, "world.pitch_factor is 0.0; expected a finite number > 0"),
    ("pitch_factor", 3.0, "world.pitch_factor is 3.0; expected < 2.857 (the highest chirp, 2800 Hz"),
    ("pitch_factor", 0.05, "world.pitch_factor is 0.05; expected >= 0.07692 (the lowest pulse, 260 Hz"),
    ("tempo_factor", 1.4, "world.tempo_factor is 1.4; expected <= 1.316 (the longest scene, 2 events of 5 pulses"),
    ("tempo_factor", 0.05, "world.tempo_factor is 0.05; expected a finite number >= 0.1"),
    ("timbre", "metal", "world.timbre is 'metal'; expected one of ['default', 'unseen']"),
])
def test_bad_shift_values_are_refused_naming_them(field: str, value: object, message: str) -> None:
    with pytest.raises(InputError) as err:
        WorldSpec(**{field: value})
    assert message in str(err.value)


def test_the_tempo_limit_is_the_longest_scene_filling_the_clip() -> None:
    limit = WorldSpec().max_tempo_factor()
    spec = WorldSpec(tempo_factor=limit)
    longest = SoundEvent("tone", "low", MAX_REPEATS)
    latest_end = FIRST_ONSET_SECONDS[1] + 2 * event_seconds(longest, limit) + EVENT_GAP_RANGE[1] * limit
    assert latest_end == pytest.approx(spec.clip_seconds)
    scene = Scene("test", 0, (), (longest, SoundEvent("buzz", "high", MAX_REPEATS)), 20.0)
    assert synthesize(spec, scene).shape == (int(spec.clip_seconds * spec.sample_rate),)
    with pytest.raises(InputError, match="clip_seconds 3"):
        WorldSpec(clip_seconds=3.0)
