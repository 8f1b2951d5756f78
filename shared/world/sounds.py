"""Sounds of the embedded world: pulse trains per shape, placed in time, mixed with noise."""

from __future__ import annotations

import numpy as np

from shared.world.scenes import Scene, SoundEvent, scene_rng
from shared.world.spec import WorldSpec

PULSE_SECONDS = 0.12
GAP_SECONDS = 0.12
RAMP_SECONDS = 0.006
BASE_HZ = {"low": (260.0, 420.0), "high": (900.0, 1400.0)}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")


def _pulse(kind: str, freq: float, sample_rate: int) -> np.ndarray:
    t = np.arange(int(PULSE_SECONDS * sample_rate)) / sample_rate
    if kind == "tone":
        wave = np.sin(2 * np.pi * freq * t)
    elif kind == "buzz":
        wave = 0.6 * np.sign(np.sin(2 * np.pi * freq * t))
    elif kind == "chirp":
        sweep = freq * (1.0 + t / PULSE_SECONDS)
        wave = np.sin(2 * np.pi * np.cumsum(sweep) / sample_rate)
    else:
        raise ValueError(f"sound kind {kind!r} is unknown; expected tone, buzz or chirp")
    ramp = int(RAMP_SECONDS * sample_rate)
    envelope = np.ones_like(t)
    envelope[:ramp] = np.linspace(0.0, 1.0, ramp)
    envelope[-ramp:] = np.linspace(1.0, 0.0, ramp)
    return wave * envelope


def event_seconds(event: SoundEvent) -> float:
    return event.repeats * PULSE_SECONDS + (event.repeats - 1) * GAP_SECONDS


def synthesize(spec: WorldSpec, scene: Scene) -> np.ndarray:
    """Float32 mono clip of exactly clip_seconds: the scene's events in order, plus noise at its SNR."""
    rng = scene_rng(spec, scene.split, scene.index, stream=2)
    sr = spec.sample_rate
    signal = np.zeros(int(spec.clip_seconds * sr), dtype=np.float64)
    start = rng.uniform(0.1, 0.5)
    for event in scene.events:
        lo, hi = BASE_HZ[event.pitch]
        pulse = _pulse(event.kind, rng.uniform(lo, hi), sr)
        for r in range(event.repeats):
            onset = int((start + r * (PULSE_SECONDS + GAP_SECONDS)) * sr)
            signal[onset:onset + len(pulse)] += pulse
        start += event_seconds(event) + rng.uniform(0.3, 0.5)
    if start - 0.3 > spec.clip_seconds:
        raise ValueError(
            f"scene {scene.key}: events need {start:.2f} s but clip_seconds is {spec.clip_seconds}; "
            "expected a longer clip"
        )
    active = signal[np.abs(signal) > 0]
    noise = rng.normal(0.0, 1.0, size=signal.shape)
    noise *= np.sqrt(np.mean(active**2) / (10 ** (scene.snr_db / 10)))
    mix = signal + noise
    return (0.9 * mix / np.max(np.abs(mix))).astype(np.float32)


def describe_event(event: SoundEvent) -> str:
    plural = "es" if event.kind == "buzz" else "s"
    noun = event.kind + (plural if event.repeats > 1 else "")
    return f"{NUMBER_WORDS[event.repeats]} {event.pitch} {noun}"


def caption(scene: Scene) -> str:
    """What the clip sounds like, e.g. 'three high chirps then one low tone'."""
    return " then ".join(describe_event(e) for e in scene.events)
