"""check_manifest: every problem kind is detected, named and excluded; good samples are kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from shared.data.check import KINDS, MIN_DURATION, MIN_IMAGE_SIDE, Problem, check_manifest
from shared.data.schema import Sample

RATE = 16000


def _s(sid: str, family: str = "audio", **media) -> Sample:
    return Sample(id=sid, question="q?", answers=("a",), family=family, qtype="t", source="test", **media)


def _tamper(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[:16] = b"\x00" * 16
    path.write_bytes(bytes(data))
    return path


def _kinds(report, sid: str) -> set[str]:
    return {p.kind for p in report.problems if p.id == sid}


@pytest.fixture
def media(tmp_path: Path, make_wav, make_image, tone, truncated_png, truncated_wav) -> dict[str, str]:
    """One file per situation; names say what is wrong with them."""
    Image.new("RGB", (1, 1), (9, 9, 9)).save(tmp_path / "tiny.png")
    files = {
        "truncated_png": truncated_png(tmp_path / "cut.png"),
        "tiny_png": tmp_path / "tiny.png",
        "cut_wav": truncated_wav(tmp_path / "cut.wav", seconds=2.0, keep=10652),
        "click": make_wav(tmp_path / "click.wav", tone(0.01)),
        "good": make_wav(tmp_path / "good.wav", tone(3.0)),
        "good44": make_wav(tmp_path / "good44.wav", tone(1.0, rate=44100), rate=44100),
        "tampered": _tamper(make_wav(tmp_path / "tampered.wav", tone(1.0))),
        "silent": make_wav(tmp_path / "silent.wav", np.zeros(RATE)),
        "nan": make_wav(tmp_path / "nan.wav", np.r_[tone(0.5), [np.nan], tone(0.5)], subtype="FLOAT"),
        "short": make_wav(tmp_path / "short.wav", tone(0.2)),
        "empty": make_wav(tmp_path / "empty.wav", np.zeros(0)),
        "image": make_image(tmp_path / "img.png"),
        "frame1": make_image(tmp_path / "frames" / "000001.jpg"),
        "frame2": make_image(tmp_path / "frames" / "000002.jpg"),
    }
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(files["good"].read_bytes()[:30])
    files["truncated"] = truncated
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    files["broken_image"] = tmp_path / "broken.jpg"
    files["missing"] = tmp_path / "nowhere.wav"
    return {k: str(v) for k, v in files.items()}


def test_tampered_audio_is_named_and_only_it_is_excluded(media: dict[str, str]) -> None:
    samples = [_s(f"ok{i}", audio=media["good"], audio_start=float(i % 2)) for i in range(5)]
    samples.insert(2, _s("bad", audio=media["tampered"]))
    report = check_manifest(samples, sample_rate=RATE, progress=False)
    assert [s.id for s in report.clean] == ["ok0", "ok1", "ok2", "ok3", "ok4"]
    assert report.kept_indices == [0, 1, 3, 4, 5]
    (problem,) = report.problems
    assert (problem.id, problem.kind, problem.field) == ("bad", "unreadable_audio", "audio")
    assert problem.path == media["tampered"]
    assert "tampered.wav" in problem.detail
    assert report.to_json()["excluded_samples"] == [{"index": 2, "id": "bad", "kinds": ["unreadable_audio"]}]


@pytest.mark.parametrize(
    ("sample", "kind", "field", "path_key"),
    [
        (_s("truncated", audio="{truncated}"), "unreadable_audio", "audio", "truncated"),
        (_s("missing", audio="{missing}"), "missing_file", "audio", "missing"),
        (_s("silent", audio="{silent}"), "silent_audio", "audio", "silent"),
        (_s("nan", audio="{nan}"), "nonfinite_audio", "audio", "nan"),
        (_s("empty", audio="{empty}"), "empty_audio", "audio", "empty"),
        (_s("short", audio="{short}"), "too_short", "audio_end", "short"),
        (_s("clipped", audio="{good}", audio_start=2.5, audio_end=3.0), "too_short", "audio_end", "good"),
        (_s("outside", audio="{good}", audio_start=5.0), "window_outside", "audio_start", "good"),
        (_s("past", audio="{good}", audio_start=1.0, audio_end=11.0), "window_past_end", "audio_end", "good"),
        (_s("noimg", family="visual"), "missing_image", "image", None),
        (_s("noaudio", family="caption"), "missing_audio", "audio", None),
        (_s("img404", family="visual", image="{missing}"), "missing_file", "image", "missing"),
        (_s("imgbad", family="visual", image="{broken_image}"), "unreadable_image", "image", "broken_image"),
        (_s("framebad", family="visual", frames=("{frame1}", "{broken_image}"), frame_times=(0.0, 1.0)),
         "unreadable_image", "frames[1]", "broken_image"),
        (_s("misaligned", family="audio_visual", frames=("{frame1}", "{frame2}"), frame_times=(0.0, 1.0),
            audio="{good}", audio_start=2.0), "misaligned", "frame_times", "good"),
    ],
)
def test_each_problem_is_detected_and_excludes(media, sample: Sample, kind: str, field: str, path_key) -> None:
    sample = _with_media(sample, media)
    good = _s("good", family="audio_visual", image=media["image"], audio=media["good"],
              frames=(media["frame1"], media["frame2"]), frame_times=(0.0, 1.0))
    report = check_manifest([good, sample], sample_rate=RATE, min_duration=1.0, progress=False)
    assert [s.id for s in report.clean] == ["good"]
    found = [p for p in report.problems if p.kind == kind]
    assert len(found) == 1 and found[0].id == sample.id and found[0].field == field
    assert found[0].path == (media[path_key] if path_key else None)
    assert found[0].excluding and found[0].detail
    assert report.counts()[kind] == 1 and report.excluded == 1
    assert _kinds(report, sample.id) == {kind} and _kinds(report, "good") == set()


def test_defaults_exclude_what_training_cannot_use(media: dict[str, str]) -> None:
    """No option given: a truncated PNG, a 1x1 PNG, a WAV cut short of its header and a 10 ms clip are excluded."""
    samples = [_s("ok", family="audio_visual", image=media["image"], audio=media["good"]),
               _s("png_cut", family="visual", image=media["truncated_png"]),
               _s("png_1x1", family="visual", image=media["tiny_png"]),
               _s("wav_cut", audio=media["cut_wav"]),
               _s("click", audio=media["click"])]
    report = check_manifest(samples, progress=False)
    assert [s.id for s in report.clean] == ["ok"]
    assert {e["id"]: e["kinds"] for e in report.excluded_samples()} == {
        "png_cut": ["unreadable_image"], "png_1x1": ["small_image"], "wav_cut": ["truncated_audio"],
        "click": ["too_short"]}
    detail = {p.id: p.detail for p in report.problems}
    assert "image file is truncated" in detail["png_cut"]
    assert detail["png_1x1"] == f"image is 1x1 px; expected both sides >= {MIN_IMAGE_SIDE} px"
    assert detail["wav_cut"] == "header declares 32000 frames (2.000s); the file holds 10652 (0.666s)"
    assert f"covers 0.010s of audio; expected >= {MIN_DURATION}s" in detail["click"]


def test_quick_images_and_lower_floors_are_opt_in(media: dict[str, str]) -> None:
    samples = [_s("png_cut", family="visual", image=media["truncated_png"]),
               _s("png_1x1", family="visual", image=media["tiny_png"]), _s("click", audio=media["click"])]
    quick = check_manifest(samples, decode_images=False, progress=False)
    assert [s.id for s in quick.clean] == ["png_cut"]  # headers only: the truncated pixels go unseen
    assert _kinds(quick, "png_1x1") == {"small_image"}  # the size is in the header
    lenient = check_manifest(samples, min_image_side=1, min_duration=0.0, progress=False)
    assert [s.id for s in lenient.clean] == ["png_1x1", "click"]


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile cannot write MP3")
def test_a_compressed_file_that_decodes_short_of_its_header_is_truncated(tmp_path: Path, tone) -> None:
    path = tmp_path / "cut.mp3"
    sf.write(str(path), tone(2.0), RATE, format="MP3")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    assert sf.info(str(path)).frames == 2 * RATE  # the header still lists 2 s
    report = check_manifest([_s("mp3_cut", audio=str(path))], progress=False)
    (problem,) = report.problems
    assert problem.kind == "truncated_audio" and "the file ends early" in problem.detail


def _with_media(sample: Sample, media: dict[str, str]) -> Sample:
    data = sample.to_json()
    for key in ("image", "audio"):
        if data[key]:
            data[key] = data[key].format(**media)
    data["frames"] = [f.format(**media) for f in data["frames"]]
    return Sample.from_json(data)


def test_duplicate_ids_keep_the_first(media: dict[str, str]) -> None:
    samples = [_s("a", audio=media["good"]), _s("b", audio=media["good"]), _s("a", audio=media["silent"])]
    report = check_manifest(samples, progress=False)
    assert report.kept_indices == [0, 1]
    (dup,) = report.problems
    assert (dup.index, dup.id, dup.kind) == (2, "a", "duplicate_id")
    assert "first used by sample #0" in dup.detail


def test_sample_rate_mismatch_warns_unless_strict(media: dict[str, str]) -> None:
    samples = [_s("cd", audio=media["good44"]), _s("ok", audio=media["good"])]
    lenient = check_manifest(samples, sample_rate=RATE, progress=False)
    assert [s.id for s in lenient.clean] == ["cd", "ok"]
    (warning,) = lenient.problems
    assert (warning.kind, warning.excluding) == ("sample_rate", False)
    assert "44100 Hz; expected 16000 Hz" in warning.detail
    assert lenient.to_json()["problems"][0]["severity"] == "warning"
    strict = check_manifest(samples, sample_rate=RATE, strict_sample_rate=True, progress=False)
    assert [s.id for s in strict.clean] == ["ok"]
    assert check_manifest(samples, progress=False).problems == []


def test_aligned_window_and_small_overshoot_pass(media: dict[str, str]) -> None:
    frames = dict(frames=(media["frame1"], media["frame2"]), frame_times=(0.0, 1.0))
    samples = [
        _s("touching", family="audio_visual", audio=media["good"], audio_start=1.0, **frames),
        _s("overshoot", audio=media["good"], audio_start=1.0, audio_end=3.3),
    ]
    report = check_manifest(samples, min_duration=1.0, progress=False)
    assert report.problems == [] and len(report.clean) == 2


def test_problems_found_after_the_check_exclude_like_the_checks_own(media: dict[str, str]) -> None:
    report = check_manifest([_s(f"ok{i}", audio=media["good"]) for i in range(3)], progress=False)
    report.exclude([Problem(1, "ok1", "unprocessable_image", "image", "x.png", "processor said no"),
                    Problem(2, "ok2", "sample_rate", "audio", media["good"], "a warning", excluding=False)])
    assert ([s.id for s in report.clean], report.kept_indices, report.excluded) == (["ok0", "ok2"], [0, 2], 1)
    assert report.counts() == {"unprocessable_image": 1, "sample_rate": 1}
    assert report.excluded_samples() == [{"index": 1, "id": "ok1", "kinds": ["unprocessable_image"]}]


def test_report_is_json_and_accounts_for_every_sample(media: dict[str, str]) -> None:
    samples = [_s("ok", audio=media["good"]), _s("gone", audio=media["missing"]),
               _s("mute", audio=media["silent"]), _s("ok", audio=media["good"])]
    report = check_manifest(samples, progress=False)
    data = json.loads(json.dumps(report.to_json()))
    assert (data["total"], data["kept"], data["excluded"]) == (4, 1, 3)
    assert data["counts"] == {"duplicate_id": 1, "missing_file": 1, "silent_audio": 1}
    assert [e["index"] for e in data["excluded_samples"]] == [1, 2, 3]
    assert set(data["problems"][0]) == {"index", "id", "kind", "severity", "field", "path", "detail"}
    assert set(data["counts"]) <= set(KINDS)


def test_shared_files_are_checked_once(media: dict[str, str], monkeypatch) -> None:
    import shared.data.check as check_module

    calls: list[str] = []
    real = check_module.load_audio

    def counting(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(check_module, "load_audio", counting)
    samples = [_s(f"q{i}", audio=media["good"]) for i in range(4)]
    assert len(check_manifest(samples, progress=False).clean) == 4
    assert calls == [media["good"]]


@pytest.mark.parametrize(("family", "media_of"), [
    ("audio", {"audio": "good"}),  # Clotho-AQA / AudioCaps QA: no visual input
    ("caption", {"audio": "good"}),  # AudioCaps captions
    ("visual", {"image": "image"}),  # VQAv2 / GQA
    ("visual", {"frames": ("frame1", "frame2")}),  # MUSIC-AVQA visual questions: frames, no audio needed
    ("audio", {"frames": ("frame1", "frame2"), "audio": "good"}),  # MUSIC-AVQA audio questions
    ("audio_visual", {"image": "image", "audio": "good"}),  # the embedded world
    ("audio_visual", {"frames": ("frame1", "frame2"), "audio": "good"}),  # MUSIC-AVQA audio-visual
])
def test_every_modality_mix_a_family_allows_passes(media: dict[str, str], family: str, media_of: dict) -> None:
    files = {k: (tuple(media[f] for f in v) if isinstance(v, tuple) else media[v]) for k, v in media_of.items()}
    if "frames" in files:
        files["frame_times"] = (0.0, 1.0)
    report = check_manifest([_s("mix", family=family, **files)], sample_rate=RATE, progress=False)
    assert report.problems == [] and [s.id for s in report.clean] == ["mix"]
