"""Audio I/O: windowed reads, downmix, exact resampling, pad/trim and named errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from shared.data.audio_io import (AudioError, audio_info, declared_frames, load_audio, pad_or_trim, resample,
                                  write_audio)


def _steps(rate: int, seconds: int) -> np.ndarray:
    """Second k holds the constant value 0.05 * (k + 1), so a window can be located."""
    return np.repeat(0.05 * np.arange(1, seconds + 1), rate).astype(np.float32)


def test_audio_info_reads_the_header(tmp_path: Path, make_wav) -> None:
    path = make_wav(tmp_path / "a.wav", np.zeros((24000, 2)), rate=8000)
    info = audio_info(path)
    assert (info.sample_rate, info.channels, info.frames) == (8000, 2, 24000)
    assert info.duration == pytest.approx(3.0)


def test_declared_frames_read_the_wav_header_that_libsndfile_corrects(tmp_path: Path, make_wav, tone,
                                                                      truncated_wav) -> None:
    stereo = make_wav(tmp_path / "stereo.wav", np.zeros((300, 2)), subtype="FLOAT")
    assert declared_frames(stereo) == 300
    cut = truncated_wav(tmp_path / "cut.wav", seconds=2.0, keep=10652)
    assert (declared_frames(cut), audio_info(cut).frames) == (32000, 10652)  # soundfile reports what is present
    streamed = bytearray(make_wav(tmp_path / "streamed.wav", tone(0.5)).read_bytes())
    streamed[40:44] = b"\xff" * 4  # a data size left open by a streaming writer
    (tmp_path / "streamed.wav").write_bytes(bytes(streamed))
    assert declared_frames(tmp_path / "streamed.wav") is None
    sf.write(str(tmp_path / "a.flac"), tone(0.5), 16000, format="FLAC")
    assert declared_frames(tmp_path / "a.flac") is None


def test_window_reads_only_the_requested_seconds(tmp_path: Path, make_wav) -> None:
    path = make_wav(tmp_path / "steps.wav", _steps(1000, 5), rate=1000)
    wave = load_audio(path, 1000, start=2.0, end=3.0)
    assert wave.dtype == np.float32 and wave.shape == (1000,)
    assert np.allclose(wave, 0.15, atol=1e-3)
    tail = load_audio(path, 1000, start=4.0)
    assert tail.shape == (1000,) and np.allclose(tail, 0.25, atol=1e-3)


def test_window_past_the_end_is_read_up_to_the_end(tmp_path: Path, make_wav) -> None:
    path = make_wav(tmp_path / "steps.wav", _steps(1000, 3), rate=1000)
    wave = load_audio(path, 1000, start=2.5, end=10.0)
    assert wave.shape == (500,)
    assert np.allclose(pad_or_trim(wave, 1000)[500:], 0.0)


def test_stereo_is_averaged_to_mono(tmp_path: Path, make_wav) -> None:
    stereo = np.stack([np.full(800, 0.5), np.full(800, -0.1)], axis=1)
    wave = load_audio(make_wav(tmp_path / "st.wav", stereo, rate=8000), 8000)
    assert wave.ndim == 1 and wave.shape == (800,)
    assert np.allclose(wave, 0.2, atol=1e-3)


def test_resampling_44k1_to_16k_keeps_a_1khz_tone(tmp_path: Path, make_wav, tone) -> None:
    path = make_wav(tmp_path / "sine.wav", tone(1.0, rate=44100, freq=1000.0), rate=44100)
    wave = load_audio(path, 16000)
    assert wave.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    peak_hz = np.argmax(spectrum) * 16000 / wave.size
    assert peak_hz == pytest.approx(1000.0, abs=2.0)
    assert np.max(np.abs(wave[1000:-1000])) == pytest.approx(0.5, abs=0.02)


def test_resample_uses_the_exact_ratio() -> None:
    out = resample(np.ones(441, dtype=np.float32), 44100, 16000)
    assert out.shape == (160,) and out.dtype == np.float32
    same = np.arange(5, dtype=np.float32)
    assert np.array_equal(resample(same, 16000, 16000), same)


def test_pad_or_trim() -> None:
    wave = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    assert pad_or_trim(wave, 5).tolist() == [1.0, 2.0, 3.0, 0.0, 0.0]
    assert pad_or_trim(wave, 2).tolist() == [1.0, 2.0]
    assert pad_or_trim(wave, 3).tolist() == [1.0, 2.0, 3.0]
    assert pad_or_trim(np.ones((2, 3)), 4).tolist() == [[1, 1, 1, 0], [1, 1, 1, 0]]
    with pytest.raises(ValueError, match="num_samples is -1"):
        pad_or_trim(wave, -1)


def test_write_audio_writes_16_bit_pcm(tmp_path: Path, tone) -> None:
    path = write_audio(tmp_path / "sub" / "w.wav", tone(0.1, rate=16000), 16000)
    info = sf.info(str(path))
    assert (info.subtype, info.samplerate, info.frames) == ("PCM_16", 16000, 1600)
    with pytest.raises(AudioError, match="shape"):
        write_audio(tmp_path / "bad.wav", np.zeros((2, 2, 2)), 16000)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"gone\.wav does not exist"):
        load_audio(tmp_path / "gone.wav", 16000)
    with pytest.raises(AudioError, match=r"gone\.wav does not exist"):
        audio_info(tmp_path / "gone.wav")


def test_corrupted_file_is_named(tmp_path: Path, make_wav, tone) -> None:
    path = make_wav(tmp_path / "bad.wav", tone(0.5))
    data = bytearray(path.read_bytes())
    data[:16] = b"\x00" * 16
    path.write_bytes(bytes(data))
    with pytest.raises(AudioError, match=rf"{path.name} is unreadable"):
        load_audio(path, 16000)
    with pytest.raises(AudioError, match="unreadable"):
        audio_info(path)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (5.0, None, "window start 5.0s is at or after the end of the file"),
        (-1.0, None, "window start is -1.0; expected a finite value >= 0"),
        (1.0, 1.0, "window end is 1.0; expected a finite value > start=1.0"),
        (0.0, float("nan"), "window end is nan"),
    ],
)
def test_bad_windows_are_named(tmp_path: Path, make_wav, tone, start, end, message) -> None:
    path = make_wav(tmp_path / "two.wav", tone(2.0))
    with pytest.raises(AudioError) as err:
        load_audio(path, 16000, start=start, end=end)
    assert message in str(err.value) and str(path) in str(err.value)


def test_window_shorter_than_one_sample_is_an_error(tmp_path: Path, make_wav, tone) -> None:
    path = make_wav(tmp_path / "a.wav", tone(1.0, rate=1000), rate=1000)
    with pytest.raises(AudioError, match=r"window \[0.0001, 0.0002\) s gave 0 samples"):
        load_audio(path, 1000, start=0.0001, end=0.0002)


def test_bad_sample_rate_is_named(tmp_path: Path, make_wav, tone) -> None:
    path = make_wav(tmp_path / "a.wav", tone(0.1))
    with pytest.raises(AudioError, match="sample_rate is 0"):
        load_audio(path, 0)
