"""Clotho-AQA loader on fixtures in the official CSV layout (one row per annotator answer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.data.cli import main
from shared.data.clotho_aqa import load_clotho_aqa, question_type
from shared.data.schema import ManifestError, read_manifest

HEADER = "file_name,QuestionText,answer,confidence\n"
ROWS = (
    "Birds Morning.wav,Are birds singing?,yes,yes\n"
    "Birds Morning.wav,Are birds singing?,Yes,maybe\n"
    "Birds Morning.wav,Are birds singing?,no,yes\n"
    "Birds Morning.wav,\"What animal, if any, is heard?\",birds,yes\n"
    "Rain.wav,Is it raining?,yes,no\n"
    "Birds Morning.wav,\"What animal, if any, is heard?\",bird,yes\n"
    "Birds Morning.wav,\"What animal, if any, is heard?\",birds,yes\n"
)


def _csv(tmp_path: Path, text: str = HEADER + ROWS, name: str = "clotho_aqa_test.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_one_audio_sample_per_file_and_question_with_all_answers(tmp_path: Path) -> None:
    samples = load_clotho_aqa(_csv(tmp_path), tmp_path / "audio_files")
    assert [s.id for s in samples] == [
        "clotho_aqa-Birds Morning.wav-q0", "clotho_aqa-Birds Morning.wav-q1", "clotho_aqa-Rain.wav-q0"]
    first, second, third = samples
    assert (first.question, first.answers, first.qtype) == ("Are birds singing?", ("yes", "Yes", "no"), "yes_no")
    assert first.meta == {"file_name": "Birds Morning.wav", "confidence": ["yes", "maybe", "yes"], "line": 2}
    assert (second.question, second.answers, second.qtype) == (
        "What animal, if any, is heard?", ("birds", "bird", "birds"), "single_word")
    assert second.meta["line"] == 5 and third.answers == ("yes",)
    for s in samples:
        assert (s.family, s.source, s.image, s.frames) == ("audio", "clotho_aqa", None, ())
        assert (s.audio_start, s.audio_end) == (0.0, None)
    assert first.audio == str(tmp_path / "audio_files" / "Birds Morning.wav")


@pytest.mark.parametrize(("answers", "kind"), [
    (["yes", "no", "no"], "yes_no"), ([" YES ", "dog", "YES "], "yes_no"), (["dog", "yes", "dog"], "single_word"),
    (["one"], "single_word"),
])
def test_question_type_follows_the_majority_answer(answers: list[str], kind: str) -> None:
    assert question_type(answers) == kind


@pytest.mark.parametrize(("text", "message"), [
    ("file_name,Question,answer,confidence\nx.wav,q,a,yes\n", "missing column(s) ['QuestionText']"),
    (HEADER + "x.wav,q,a,yes\nx.wav,,a,yes\n", "line 3: field 'QuestionText' is missing or empty"),
    (HEADER + "x.wav,q, ,yes\n", "line 2: field 'answer' is missing or empty"),
    (HEADER + "x.wav,q\n", "line 2: field 'answer' is missing or empty"),
    (HEADER + "x.wav,q,a,yes,extra\n", "line 2: 5 columns; expected 4"),
])
def test_bad_rows_name_file_line_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = _csv(tmp_path, text)
    with pytest.raises(ManifestError) as err:
        load_clotho_aqa(path, tmp_path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_and_non_utf8_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Clotho-AQA CSV .*nowhere.csv"):
        load_clotho_aqa(tmp_path / "nowhere.csv", tmp_path)
    path = tmp_path / "latin1.csv"
    path.write_bytes(HEADER.encode() + "caf\xe9.wav,q?,a,yes\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="latin1.csv: cannot be read as a UTF-8 CSV"):
        load_clotho_aqa(path, tmp_path)


def test_cli_convert_then_check_accepts_audio_only_samples(tmp_path: Path, make_wav, tone, capsys) -> None:
    make_wav(tmp_path / "audio_files" / "Birds Morning.wav", tone(2.0))
    make_wav(tmp_path / "audio_files" / "Rain.wav", tone(3.0))
    out = tmp_path / "manifests" / "clotho.jsonl"
    assert main(["convert", "clotho-aqa", "--csv", str(_csv(tmp_path)), "--audio", str(tmp_path / "audio_files"),
                 "--out", str(out)]) == 0
    assert "wrote 3 samples" in capsys.readouterr().out
    raw = read_manifest(out, resolve_paths=False)
    assert raw[0].audio == str(tmp_path / "audio_files" / "Birds Morning.wav")
    assert main(["check", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kept"] == 3


def test_cli_bad_csv_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    path = _csv(tmp_path, HEADER + "x.wav,q,,yes\n")
    assert main(["convert", "clotho-aqa", "--csv", str(path), "--audio", str(tmp_path),
                 "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "line 2" in err and "'answer'" in err
    assert not (tmp_path / "o.jsonl").exists()
