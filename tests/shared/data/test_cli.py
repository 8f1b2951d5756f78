"""`safe-data` CLI: check outputs and exit codes, convert for each dataset, input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.data.cli import main
from shared.data.schema import Sample, read_manifest, write_manifest


def _s(sid: str, audio: str, **extra) -> Sample:
    return Sample(id=sid, question="q?", answers=("a",), family="audio", qtype="t", source="test",
                  audio=audio, **extra)


@pytest.fixture
def dataset(tmp_path: Path, make_wav, tone) -> Path:
    """A dataset folder whose manifest uses relative paths: two good clips and one silent one."""
    root = tmp_path / "ds"
    make_wav(root / "audio" / "good.wav", tone(2.0))
    make_wav(root / "audio" / "mute.wav", np.zeros(32000))
    return write_manifest([_s("a", "audio/good.wav"), _s("b", "audio/mute.wav"), _s("c", "audio/good.wav",
                                                                                       audio_start=1.0)],
                          root / "train.jsonl")


def test_check_writes_clean_manifest_and_report(dataset: Path, capsys) -> None:
    assert main(["check", str(dataset), "--sample-rate", "16000", "--min-duration", "0.5"]) == 1
    clean = dataset.parent / "train.clean.jsonl"
    lines = [json.loads(line) for line in clean.read_text().splitlines()]
    assert [(d["id"], d["audio"]) for d in lines] == [("a", "audio/good.wav"), ("c", "audio/good.wav")]
    report = json.loads((dataset.parent / "train.report.json").read_text())
    assert (report["kept"], report["excluded"], report["counts"]) == (2, 1, {"silent_audio": 1})
    assert report["problems"][0]["path"] == str(dataset.parent / "audio" / "mute.wav")
    out = capsys.readouterr().out
    assert "3 samples, 2 kept, 1 excluded" in out and "silent_audio" in out and "excluded #1 b" in out


def test_check_json_output_and_clean_exit(dataset: Path, tmp_path: Path, capsys) -> None:
    good_only = write_manifest(read_manifest(dataset, resolve_paths=False)[::2], dataset.parent / "good.jsonl")
    assert main(["check", str(good_only), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["total"], printed["excluded"], printed["problems"]) == (2, 0, [])


def test_check_out_dir_rebases_relative_paths(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere"
    assert main(["check", str(dataset), "--out", str(out)]) == 1
    clean = read_manifest(out / "train.clean.jsonl")
    assert [s.audio for s in clean] == [str(dataset.parent / "audio" / "good.wav")] * 2
    assert Path(clean[0].audio).is_file()


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), ("{broken\n", "not valid JSON")],
)
def test_check_input_errors_exit_2_with_one_line(tmp_path: Path, capsys, content, message) -> None:
    path = tmp_path / "m.jsonl"
    if content is not None:
        path.write_text(content)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and message in err


def test_check_excludes_broken_media_by_default(tmp_path: Path, make_image, make_wav, tone, truncated_png,
                                                 truncated_wav, capsys) -> None:
    """A truncated PNG, a 1x1 PNG, a WAV cut short of its header and a 10 ms clip: exit 1, each with its kind."""
    from PIL import Image

    make_image(tmp_path / "ok.png")
    truncated_png(tmp_path / "cut.png")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    make_wav(tmp_path / "ok.wav", tone(1.0))
    truncated_wav(tmp_path / "cut.wav")
    make_wav(tmp_path / "click.wav", tone(0.01))
    visual = dict(question="q?", answers=("a",), family="visual", qtype="t", source="test")
    samples = [Sample(id="img_ok", image="ok.png", **visual), Sample(id="img_cut", image="cut.png", **visual),
               Sample(id="img_dot", image="dot.png", **visual), _s("wav_ok", "ok.wav"), _s("wav_cut", "cut.wav"),
               _s("wav_click", "click.wav")]
    manifest = write_manifest(samples, tmp_path / "m.jsonl")
    assert main(["check", str(manifest)]) == 1
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert {e["id"]: e["kinds"] for e in report["excluded_samples"]} == {
        "img_cut": ["unreadable_image"], "img_dot": ["small_image"], "wav_cut": ["truncated_audio"],
        "wav_click": ["too_short"]}
    assert [s.id for s in read_manifest(tmp_path / "m.clean.jsonl")] == ["img_ok", "wav_ok"]
    assert "6 samples, 2 kept, 4 excluded" in capsys.readouterr().out
    assert main(["check", str(manifest), "--quick-images", "--min-image-side", "1", "--min-duration", "0"]) == 1
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert report["counts"] == {"truncated_audio": 1}  # only the truncated WAV is left without the defaults


@pytest.mark.parametrize(("line", "expected"), [
    ("5", ":2: line is 5; expected a JSON object"),
    ("null", ":2: line is null; expected a JSON object"),
    ('{"audio_start": "abc"}', ":2: field 'audio_start' is 'abc'; expected a finite number of seconds"),
])
def test_check_malformed_line_exits_2_naming_file_line_and_field(tmp_path: Path, capsys, line: str,
                                                                 expected: str) -> None:
    good = _s("a", "a.wav").to_json()
    path = tmp_path / "m.jsonl"
    bad = json.dumps({**good, **json.loads(line)}) if line.startswith("{") else line
    path.write_text(json.dumps(good) + "\n" + bad + "\n")
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}{expected}" in err, err


@pytest.mark.parametrize("args, message", [
    (["check", "m.jsonl", "--sample-rate", "0"], "--sample-rate is 0; expected None or an integer >= 1"),
    (["check", "m.jsonl", "--min-duration", "nan"], "--min-duration is nan; expected a finite number >= 0"),
    (["check", "m.jsonl", "--silence-threshold", "-1"], "--silence-threshold is -1.0; expected a finite number >= 0"),
    (["check", "m.jsonl", "--end-tolerance", "inf"], "--end-tolerance is inf; expected a finite number >= 0"),
    (["convert", "audiocaps", "--csv", "c.csv", "--audio", "a", "--out", "o.jsonl", "--clip-seconds", "0"],
     "--clip-seconds is 0.0; expected a finite number > 0"),
    (["convert", "music-avqa", "--json", "q.json", "--audio", "a", "--out", "o.jsonl", "--num-frames", "0"],
     "--num-frames is 0; expected None or an integer >= 1"),
])
def test_bad_numbers_exit_2_before_any_file_is_read(tmp_path: Path, monkeypatch, capsys, args, message) -> None:
    monkeypatch.chdir(tmp_path)  # none of the named files exists: reading one first would name it instead
    assert main(args) == 2
    assert capsys.readouterr().err == f"safe-data: error: {message}\n"


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["check"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["convert", "imagenet", "--out", "x.jsonl"])
    assert exc.value.code == 2


def test_convert_gqa_writes_paths_relative_to_the_manifest(tmp_path: Path, make_json, capsys) -> None:
    questions = make_json(tmp_path / "testdev_balanced_questions.json", {"1": {
        "imageId": "n1", "question": "Is it red?", "answer": "yes",
        "types": {"structural": "verify", "semantic": "attr", "detailed": "color"}}})
    out = tmp_path / "manifests" / "gqa.jsonl"
    assert main(["convert", "gqa", "--questions", str(questions), "--images", str(tmp_path / "manifests" / "img"),
                 "--out", str(out)]) == 0
    assert "wrote 1 samples" in capsys.readouterr().out
    (raw,) = read_manifest(out, resolve_paths=False)
    assert (raw.image, raw.qtype) == ("img/n1.jpg", "verify")


def test_convert_vqav2_with_outside_images_uses_absolute_paths(tmp_path: Path, make_json) -> None:
    q = make_json(tmp_path / "q.json", {"data_subtype": "val2014", "questions": [
        {"image_id": 9, "question": "Why?", "question_id": 90}]})
    a = make_json(tmp_path / "a.json", {"annotations": [{
        "question_id": 90, "image_id": 9, "question_type": "why", "answer_type": "other",
        "multiple_choice_answer": "x", "answers": [{"answer": "x", "answer_confidence": "yes", "answer_id": 1}]}]})
    out = tmp_path / "m" / "vqa.jsonl"
    assert main(["convert", "vqav2", "--questions", str(q), "--annotations", str(a), "--images",
                 str(tmp_path / "coco"), "--out", str(out)]) == 0
    (raw,) = read_manifest(out, resolve_paths=False)
    assert raw.image == str(tmp_path / "coco" / "COCO_val2014_000000000009.jpg")


def test_convert_audiocaps_then_check(tmp_path: Path, make_wav, tone) -> None:
    make_wav(tmp_path / "clips" / "vid_30.wav", tone(10.0, rate=8000), rate=8000)
    csv = tmp_path / "test.csv"
    csv.write_text("audiocap_id,youtube_id,start_time,caption\n1,vid,30,a hum\n2,vid,30,humming\n")
    out = tmp_path / "audiocaps.jsonl"
    assert main(["convert", "audiocaps", "--csv", str(csv), "--audio", str(tmp_path / "clips"),
                 "--pattern", "{youtube_id}_{start_time}.wav", "--clips-are-cut", "--out", str(out)]) == 0
    (raw,) = read_manifest(out, resolve_paths=False)
    assert (raw.audio, raw.audio_start, raw.audio_end) == ("clips/vid_30.wav", 0.0, 10.0)
    assert raw.answers == ("a hum", "humming")
    assert main(["check", str(out), "--sample-rate", "8000", "--min-duration", "9"]) == 0


def test_convert_music_avqa(tmp_path: Path, make_json) -> None:
    src = make_json(tmp_path / "avqa-val.json", [{
        "video_id": "00000001", "question_id": 1, "type": '["Audio-Visual", "Existential"]',
        "question_content": "Is the <Object> playing?", "templ_values": '["cello"]', "anser": "yes"}])
    out = tmp_path / "avqa.jsonl"
    assert main(["convert", "music-avqa", "--json", str(src), "--audio", str(tmp_path / "audio"),
                 "--frames", str(tmp_path / "frames"), "--num-frames", "2", "--out", str(out)]) == 0
    (raw,) = read_manifest(out, resolve_paths=False)
    assert raw.question == "Is the cello playing?"
    assert raw.frames == ("frames/00000001/000001.jpg", "frames/00000001/000002.jpg")
    assert main(["check", str(out)]) == 1
    report = json.loads((tmp_path / "avqa.report.json").read_text())
    assert report["counts"] == {"missing_file": 2}


def test_convert_malformed_input_exits_2_naming_the_file(tmp_path: Path, make_json, capsys) -> None:
    src = make_json(tmp_path / "avqa-val.json", [{"video_id": "1", "question_id": 1}])
    assert main(["convert", "music-avqa", "--json", str(src), "--audio", str(tmp_path),
                 "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert str(src) in err and "missing field 'type'" in err
    assert not (tmp_path / "o.jsonl").exists()


def _manifest(folder: Path, ids: list[str], source: str, make_wav, tone) -> Path:
    """A manifest in `folder` whose samples point at one clip below it (a relative path)."""
    make_wav(folder / "audio" / "clip.wav", tone(1.0))
    samples = [Sample(id=i, question="q?", answers=("a",), family="audio", qtype="t", source=source,
                      audio="audio/clip.wav") for i in ids]
    return write_manifest(samples, folder / "m.jsonl")


def test_merge_rebases_paths_keeps_order_and_counts_sources(tmp_path: Path, make_wav, tone, capsys) -> None:
    a = _manifest(tmp_path / "vqa", ["v1", "v2"], "vqav2", make_wav, tone)
    b = _manifest(tmp_path / "data" / "caps", ["c1"], "audiocaps", make_wav, tone)
    out = tmp_path / "data" / "mixed.jsonl"
    assert main(["merge", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 samples from 2 manifests" in printed
    assert "audiocaps  1" in printed and "vqav2      2" in printed
    raw = read_manifest(out, resolve_paths=False)
    outside = str(tmp_path / "vqa" / "audio" / "clip.wav")  # not below the output's folder: absolute
    assert [(s.id, s.audio) for s in raw] == [("v1", outside), ("v2", outside), ("c1", "caps/audio/clip.wav")]
    assert all(Path(s.audio).is_file() for s in read_manifest(out))
    assert main(["check", str(out)]) == 0


def test_merge_shuffle_is_a_seeded_permutation(tmp_path: Path, make_wav, tone) -> None:
    a = _manifest(tmp_path / "a", [f"a{i}" for i in range(20)], "vqav2", make_wav, tone)
    b = _manifest(tmp_path / "b", [f"b{i}" for i in range(20)], "audiocaps", make_wav, tone)
    orders = []
    for seed, name in ((3, "x"), (3, "y"), (4, "z")):
        out = tmp_path / f"{name}.jsonl"
        assert main(["merge", str(a), str(b), "--shuffle", "--seed", str(seed), "--out", str(out)]) == 0
        orders.append([s.id for s in read_manifest(out)])
    assert orders[0] == orders[1] != orders[2]
    assert sorted(orders[0]) == sorted([f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)])
    assert orders[0] != [f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)]


@pytest.mark.parametrize("case", ["duplicate", "seed_without_shuffle", "out_is_input"])
def test_merge_bad_input_exits_2_with_one_line(tmp_path: Path, make_wav, tone, capsys, case: str) -> None:
    a = _manifest(tmp_path / "a", ["x1", "x2"], "vqav2", make_wav, tone)
    b = _manifest(tmp_path / "b", ["y1", "x2"], "gqa", make_wav, tone)
    args, expected = {
        "duplicate": ([str(a), str(b), "--out", str(tmp_path / "o.jsonl")], [str(a), str(b), "'x2'"]),
        "seed_without_shuffle": ([str(a), "--seed", "1", "--out", str(tmp_path / "o.jsonl")], ["--shuffle"]),
        "out_is_input": ([str(a), "--out", str(a)], [str(a), "input manifest"]),
    }[case]
    assert main(["merge", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(text in err for text in expected), err
    assert not (tmp_path / "o.jsonl").exists()
