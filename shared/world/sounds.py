"""Sounds of the embedded world: pulse trains per shape, placed in time, reverberated, mixed with noise.

The rendering shifts of the spec (reverb_seconds, pitch_factor, tempo_factor, timbre) change how a scene sounds,
never what it is: at their defaults every operation below is the one the world was first built with, bit for bit.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve

from shared.world.scenes import Scene, SoundEvent, scene_rng
from shared.world.spec import (
    BASE_HZ,
    CHIRP_SWEEP,
    EVENT_GAP_RANGE,
    FIRST_ONSET_SECONDS,
    GAP_SECONDS,
    PULSE_SECONDS,
    RAMP_SECONDS,
    WorldSpec,
)

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
FM_INDEX = 1.5  # the unseen chirp's modulation index: strong sidebands, the fundamental still rises
REVERB_STREAM = 5  # the scene's random stream for its room impulse response


def _sweep_phase(freq: float, t: np.ndarray, seconds: float, sample_rate: int) -> np.ndarray:
    """Phase of a sweep rising linearly from freq to CHIRP_SWEEP times freq over `seconds`."""
    sweep = freq * (1.0 + (CHIRP_SWEEP - 1.0) * t / seconds)
    return 2 * np.pi * np.cumsum(sweep) / sample_rate


def _default_wave(kind: str, freq: float, t: np.ndarray, seconds: float, sample_rate: int) -> np.ndarray:
    """Tone: a sine; buzz: a square; chirp: a sine sweep."""
    if kind == "tone":
        return np.sin(2 * np.pi * freq * t)
    if kind == "buzz":
        return 0.6 * np.sign(np.sin(2 * np.pi * freq * t))
    return np.sin(_sweep_phase(freq, t, seconds, sample_rate))


def _unseen_wave(kind: str, freq: float, t: np.ndarray, seconds: float, sample_rate: int) -> np.ndarray:
    """Waveforms the default world never plays, same traits: tone a steady triangle, buzz a harsh sawtooth (every
    harmonic, about the square's power), chirp an FM sweep whose fundamental still rises to CHIRP_SWEEP times freq."""
    if kind == "tone":
        return (2 / np.pi) * np.arcsin(np.sin(2 * np.pi * freq * t))
    if kind == "buzz":
        return 2.0 * ((freq * t) % 1.0) - 1.0
    phase = _sweep_phase(freq, t, seconds, sample_rate)
    return np.sin(phase + FM_INDEX * np.sin(phase))


def pulse(kind: str, freq: float, spec: WorldSpec) -> np.ndarray:
    """One pulse of a sound kind at `freq` Hz, PULSE_SECONDS times the spec's tempo_factor long, in its timbre."""
    if kind not in ("tone", "buzz", "chirp"):
        raise ValueError(f"sound kind {kind!r} is unknown; expected tone, buzz or chirp")
    seconds = PULSE_SECONDS * spec.tempo_factor
    sample_rate = spec.sample_rate
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = (_default_wave if spec.timbre == "default" else _unseen_wave)(kind, freq, t, seconds, sample_rate)
    ramp = int(RAMP_SECONDS * sample_rate)
    envelope = np.ones_like(t)
    envelope[:ramp] = np.linspace(0.0, 1.0, ramp)
    envelope[-ramp:] = np.linspace(1.0, 0.0, ramp)
    return wave * envelope


def room_impulse(rt60: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room: the direct path, then Gaussian noise whose energy falls 60 dB over rt60 seconds, as
    loud in total as the direct path (a direct-to-reverberant ratio of 0 dB)."""
    n = max(int(rt60 * sample_rate), 2)
    tail = rng.normal(0.0, 1.0, n) * np.exp(-3 * np.log(10) * np.arange(n) / n)
    tail[0] = 0.0
    tail /= np.sqrt(np.sum(tail**2))
    tail[0] = 1.0
    return tail


def event_seconds(event: SoundEvent, tempo_factor: float = 1.0) -> float:
    """How long an event lasts, from its first pulse's onset to its last pulse's end."""
    return event.repeats * PULSE_SECONDS * tempo_factor + (event.repeats - 1) * GAP_SECONDS * tempo_factor


def synthesize(spec: WorldSpec, scene: Scene) -> np.ndarray:
    """Float32 mono clip of exactly clip_seconds: the scene's events in order, in the spec's room, plus noise at its
    SNR (measured on the dry events)."""
    rng = scene_rng(spec, scene.split, scene.index, stream=2)
    sr = spec.sample_rate
    tempo = spec.tempo_factor
    signal = np.zeros(int(spec.clip_seconds * sr), dtype=np.float64)
    start = rng.uniform(*FIRST_ONSET_SECONDS)
    end = start
    for event in scene.events:
        lo, hi = BASE_HZ[event.pitch]
        wave = pulse(event.kind, rng.uniform(lo, hi) * spec.pitch_factor, spec)
        for r in range(event.repeats):
            onset = int((start + r * (PULSE_SECONDS * tempo + GAP_SECONDS * tempo)) * sr)
            signal[onset:onset + len(wave)] += wave
        end = start + event_seconds(event, tempo)
        start += event_seconds(event, tempo) + rng.uniform(*EVENT_GAP_RANGE) * tempo
    if end > spec.clip_seconds:
        raise ValueError(f"scene {scene.key}: events end at {end:.2f} s but clip_seconds is {spec.clip_seconds}; "
                         "expected a longer clip or a smaller tempo_factor")
    active = signal[np.abs(signal) > 0]
    noise = rng.normal(0.0, 1.0, size=signal.shape)
    noise *= np.sqrt(np.mean(active**2) / (10 ** (scene.snr_db / 10)))
    if spec.reverb_seconds > 0:
        room = room_impulse(spec.reverb_seconds, sr, scene_rng(spec, scene.split, scene.index, stream=REVERB_STREAM))
        signal = fftconvolve(signal, room)[:len(signal)]
    mix = signal + noise
    return (0.9 * mix / np.max(np.abs(mix))).astype(np.float32)


def describe_event(event: SoundEvent) -> str:
    plural = "es" if event.kind == "buzz" else "s"
    noun = event.kind + (plural if event.repeats > 1 else "")
    return f"{NUMBER_WORDS[event.repeats]} {event.pitch} {noun}"


def caption(scene: Scene) -> str:
    """What the clip sounds like, e.g. 'three high chirps then one low tone'."""
    return " then ".join(describe_event(e) for e in scene.events)
