"""AudioCaps loader on a fixture in the official CSV format, and its audio window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.data.audio_io import load_audio
from shared.data.audiocaps import CAPTION_PROMPT, load_audiocaps
from shared.data.schema import ManifestError

CSV = """audiocap_id,youtube_id,start_time,caption
91139,r1nicOVtvkQ,130,A woman talks nearby as water pours
58146,UDGBjjwyaqE,20,"Multiple clanging and clanking sounds, then a man speaks"
91140,r1nicOVtvkQ,130,Water trickles while a woman speaks
11543,-0RWZT-miFs,20.5,A dog barks twice
"""


def _csv(tmp_path: Path, text: str = CSV) -> Path:
    path = tmp_path / "test.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_one_sample_per_clip_with_captions_in_file_order(tmp_path: Path) -> None:
    samples = load_audiocaps(_csv(tmp_path), tmp_path / "audio")
    assert [s.id for s in samples] == [
        "audiocaps-r1nicOVtvkQ-130", "audiocaps-UDGBjjwyaqE-20", "audiocaps--0RWZT-miFs-20.5"]
    first = samples[0]
    assert first.answers == ("A woman talks nearby as water pours", "Water trickles while a woman speaks")
    assert samples[1].answers == ("Multiple clanging and clanking sounds, then a man speaks",)
    assert (first.family, first.qtype, first.source) == ("caption", "caption", "audiocaps")
    assert first.question == CAPTION_PROMPT
    assert first.audio == str(tmp_path / "audio" / "r1nicOVtvkQ.wav")
    assert (first.audio_start, first.audio_end) == (130.0, 140.0)
    assert (samples[2].audio_start, samples[2].audio_end) == (20.5, 30.5)
    assert first.image is None
    assert first.meta == {"youtube_id": "r1nicOVtvkQ", "start_time": 130, "audiocap_ids": ["91139", "91140"]}


def test_cut_clips_use_the_first_ten_seconds_and_the_pattern(tmp_path: Path) -> None:
    samples = load_audiocaps(_csv(tmp_path), tmp_path, clip_files_are_cut=True,
                             audio_pattern="Y{youtube_id}_{start_time}.wav")
    assert [(s.audio_start, s.audio_end) for s in samples] == [(0.0, 10.0)] * 3
    assert samples[0].audio == str(tmp_path / "Yr1nicOVtvkQ_130.wav")
    assert samples[2].audio == str(tmp_path / "Y-0RWZT-miFs_20.5.wav")


def test_start_time_window_selects_the_right_part_of_the_file(tmp_path: Path, make_wav) -> None:
    """The uncut file's 10 s blocks have levels 0.1, 0.2, 0.3, 0.4; the clip at 20 s must read 0.3."""
    rate = 1000
    make_wav(tmp_path / "vid.wav", np.repeat([0.1, 0.2, 0.3, 0.4], 10 * rate), rate=rate)
    csv = _csv(tmp_path, "audiocap_id,youtube_id,start_time,caption\n1,vid,20,a hum\n")
    (sample,) = load_audiocaps(csv, tmp_path)
    wave = load_audio(sample.audio, rate, sample.audio_start, sample.audio_end)
    assert wave.shape == (10 * rate,)
    assert np.allclose(wave, 0.3, atol=1e-3)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("7,abc,-5,a cat", "line 2 (audiocap_id 7): field 'start_time' is '-5'; expected seconds >= 0"),
        ("7,abc,soon,a cat", "field 'start_time' is 'soon'"),
        ("7,abc,10,", "line 2 (audiocap_id 7): field 'caption' is missing or empty"),
        ("7,,10,a cat", "field 'youtube_id' is missing or empty"),
        ("7,abc,10", "field 'caption' is missing or empty"),
        ("7,abc,10,a cat,extra", "5 columns; expected 4"),
    ],
)
def test_malformed_rows_name_file_line_and_field(tmp_path: Path, row: str, message: str) -> None:
    path = _csv(tmp_path, f"audiocap_id,youtube_id,start_time,caption\n{row}\n")
    with pytest.raises(ManifestError) as err:
        load_audiocaps(path, tmp_path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_bad_header_pattern_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['start_time'\]"):
        load_audiocaps(_csv(tmp_path, "audiocap_id,youtube_id,caption\n1,a,b\n"), tmp_path)
    with pytest.raises(ValueError, match=r"uses field\(s\) \['video'\]"):
        load_audiocaps(_csv(tmp_path), tmp_path, audio_pattern="{video}.wav")
    with pytest.raises(FileNotFoundError, match="AudioCaps CSV .*val.csv"):
        load_audiocaps(tmp_path / "val.csv", tmp_path)
