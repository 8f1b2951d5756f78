"""Audio corruptions: names, exact SNR, noise colours, babble sources, mask fraction and layout, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from shared.corruptions import (BABBLE_CLIPS, CLEAN, MASK_CHUNK_SECONDS, STANDARD, Corruption, apply, choose_babble,
                                 corrupt_clip, corruption_rng, mask_indices, parse_corruption, snr_db)

SR = 16000


def _clean(n: int = 2 * SR, seed: int = 0) -> np.ndarray:
    """A pulse train with a little noise, like the world's clips (no exact zeros)."""
    t = np.arange(n) / SR
    rng = np.random.default_rng(seed)
    return (0.5 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 2 * t) > 0) + 0.01 * rng.standard_normal(n)).astype(np.float32)


def _others(count: int = 4) -> dict[str, np.ndarray]:
    return {f"clip{j}": _clean(SR + 1000 * j, seed=j + 1) for j in range(count)}


def _slope(noise: np.ndarray) -> float:
    """Log-log slope of the averaged power spectrum (0: white, -1: pink)."""
    segments = noise[: len(noise) // 1024 * 1024].reshape(-1, 1024)
    power = np.mean(np.abs(np.fft.rfft(segments, axis=1)) ** 2, axis=0)[1:]
    freqs = np.fft.rfftfreq(1024)[1:]
    return float(np.polyfit(np.log(freqs), np.log(power), 1)[0])


def test_standard_names_are_unique_and_parse_back():
    names = [c.name for c in STANDARD]
    assert len(set(names)) == len(names) == 1 + 3 * 6 + 6
    assert {"clean", "noise-white-0dB", "noise-pink--10dB", "noise-babble-20dB", "mask-scattered-50",
            "mask-contiguous-25"} <= set(names)
    assert all(parse_corruption(c.name) == c for c in STANDARD)


@pytest.mark.parametrize("bad", [dict(kind="noise", noise="brown", snr_db=0.0), dict(kind="noise", noise="white"),
                                 dict(kind="mask", fraction=1.5, layout="contiguous"),
                                 dict(kind="mask", fraction=0.5, layout="random"), dict(kind="clean", snr_db=3.0),
                                 dict(kind="blur")])
def test_invalid_corruptions_are_refused(bad):
    with pytest.raises(ValueError, match="expected"):
        Corruption(**bad)


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="noise-white-0dB|expected"):
        parse_corruption("noise-white-zero")


@pytest.mark.parametrize("corruption", [c for c in STANDARD if c.kind == "noise"], ids=lambda c: c.name)
def test_noise_has_the_exact_snr(corruption):
    clean = _clean()
    others = _others()
    out = corrupt_clip(corruption, clean, "own", list(others), others.__getitem__, sample_rate=SR)
    assert out.dtype == np.float32 and out.shape == clean.shape
    assert abs(snr_db(clean, out.astype(np.float64) - clean) - corruption.snr_db) < 0.1


def test_noise_is_not_clipped_or_renormalised():
    clean = _clean()
    out = apply(Corruption("noise", noise="white", snr_db=-10.0), clean, np.random.default_rng(0), sample_rate=SR)
    assert np.max(np.abs(out)) > 1.0  # loud noise is kept as is
    assert abs(snr_db(clean, out.astype(np.float64) - clean) + 10.0) < 0.1


@pytest.mark.parametrize("kind, slope", [("white", 0.0), ("pink", -1.0)])
def test_noise_colour_has_its_spectral_slope(kind, slope):
    silent_ish = np.full(8 * SR, 1e-3, dtype=np.float32)
    noise = apply(Corruption("noise", noise=kind, snr_db=-40.0), silent_ish, np.random.default_rng(1), sample_rate=SR)
    assert abs(_slope(noise.astype(np.float64) - silent_ish) - slope) < 0.15


def test_babble_is_made_of_other_clips():
    """Sources at distinct pure tones: the babble's spectrum peaks at those tones and nowhere else."""
    n, tones = 2 * SR, (300.0, 700.0, 1900.0)
    t = np.arange(n) / SR
    sources = [np.sin(2 * np.pi * f * t) for f in tones]
    clean = _clean(n)
    out = apply(Corruption("noise", noise="babble", snr_db=-20.0), clean, np.random.default_rng(0),
                sample_rate=SR, babble=sources)
    spectrum = np.abs(np.fft.rfft(out.astype(np.float64) - clean))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    peaks = sorted(freqs[np.argsort(spectrum)[-3:]])
    assert np.allclose(peaks, tones)
    assert np.sum(spectrum[~np.isin(np.round(freqs), tones)] ** 2) < 1e-6 * np.sum(spectrum**2)


def test_babble_chooses_distinct_clips_of_other_groups():
    pool = [f"scene{j}/take{t}" for j in range(5) for t in range(2)]
    group = lambda k: k.split("/")[0]  # noqa: E731
    for seed in range(20):
        chosen = choose_babble(np.random.default_rng(seed), "scene0/take0", pool, group)
        assert len(set(chosen)) == len(chosen) == BABBLE_CLIPS
        assert all(not k.startswith("scene0/") for k in chosen)
    with pytest.raises(ValueError, match="at least 3"):
        choose_babble(np.random.default_rng(0), "scene0/take0", pool[:4], group)
    with pytest.raises(ValueError, match="babble clips"):
        apply(Corruption("noise", noise="babble", snr_db=0.0), _clean(), np.random.default_rng(0), sample_rate=SR)


@pytest.mark.parametrize("corruption", [c for c in STANDARD if c.kind == "mask"], ids=lambda c: c.name)
@pytest.mark.parametrize("n", [2 * SR, 2 * SR + 333])
def test_mask_zeroes_exactly_the_fraction_in_its_layout(corruption, n):
    clean = _clean(n)
    out = corrupt_clip(corruption, clean, "clip", [], lambda k: clean, sample_rate=SR)
    zero = out == 0.0
    assert zero.sum() == round(corruption.fraction * n)
    assert np.array_equal(out[~zero], clean[~zero])
    edges = np.flatnonzero(np.diff(np.concatenate([[0], zero.astype(int), [0]])))
    starts, ends = edges[::2], edges[1::2]
    chunk = round(MASK_CHUNK_SECONDS * SR)
    if corruption.layout == "contiguous":
        assert len(starts) == 1
    else:
        assert len(starts) > 1
        assert all(s % chunk == 0 for s in starts)  # chunks on the 50 ms grid
        assert sum((e - s) % chunk != 0 and e != n for s, e in zip(starts, ends)) <= 1  # at most one partial chunk


def test_contiguous_mask_position_varies_with_the_clip():
    corruption = Corruption("mask", fraction=0.25, layout="contiguous")
    starts = {int(np.argmax(mask_indices(corruption, SR, SR, corruption_rng(corruption.name, f"c{j}"))))
              for j in range(10)}
    assert len(starts) > 5


def test_seeding_is_reproducible_and_independent_of_order():
    clean = {f"c{j}": _clean(SR, seed=j) for j in range(6)}
    corruption = Corruption("noise", noise="babble", snr_db=0.0)

    def run(order: list[str], seed: int = 0) -> dict[str, np.ndarray]:
        return {k: corrupt_clip(corruption, clean[k], k, list(clean), clean.__getitem__, sample_rate=SR, seed=seed)
                for k in order}

    forward, backward = run(sorted(clean)), run(sorted(clean, reverse=True))
    assert all(np.array_equal(forward[k], backward[k]) for k in clean)
    assert not np.array_equal(forward["c0"], run(["c0"], seed=1)["c0"])  # the seed matters
    other = Corruption("noise", noise="babble", snr_db=5.0)
    a = corruption_rng(corruption.name, "c0").standard_normal(4)
    assert not np.array_equal(a, corruption_rng(other.name, "c0").standard_normal(4))  # so does the name
    assert not np.array_equal(a, corruption_rng(corruption.name, "c1").standard_normal(4))  # and the clip


def test_clean_is_the_wave_itself():
    clean = _clean()
    assert np.array_equal(apply(CLEAN, clean, np.random.default_rng(0), sample_rate=SR), clean)
