"""The evaluation report: files written, hand-countable tables, example choice and bad input."""

import re
from pathlib import Path

import numpy as np
import pytest

from stage_a.report import PLOT_FILE, write_report

TYPES = (("visual", "color"), ("audio", "repeats"), ("audio", "source"), ("audio_visual", "count"))
SCORES = (0.0, 1 / 3, 2 / 3, 1.0)


def _record(qid: str, family: str, qtype: str, gold: str, answer: str, base_answer: str,
            score: float, base_score: float, k: int = 8, question: str = "what is it?") -> dict:
    return {"id": qid, "question": question, "answers": [gold] * 7 + ["other"] * 3, "family": family,
            "qtype": qtype, "source": "world", "metric": "vqa_accuracy", "k": k, "gate": 1.0, "raw": answer,
            "answer": answer, "score": score,
            "base_raw": base_answer, "base_answer": base_answer, "base_score": base_score}


def _random_records(seed: int = 0, per_type: int = 10, k: int = 8) -> list[dict]:
    """Seeded records of every type, with scores drawn from the VQA values and numeric answers."""
    rng = np.random.default_rng(seed)
    records = []
    for family, qtype in TYPES:
        for i in range(per_type):
            gold, answer, base = (str(x) for x in rng.integers(1, 4, size=3))
            records.append(_record(f"{family}.{qtype}.{i:02d}", family, qtype, gold, answer, base,
                                   float(rng.choice(SCORES)), float(rng.choice(SCORES)), k=k))
    return records


def _table_after(text: str, heading: str) -> list[list[str]]:
    """Rows (header first, separator dropped) of the first Markdown table after the heading line."""
    lines = text.splitlines()
    start = lines.index(heading)
    first = next(i for i in range(start, len(lines)) if lines[i].startswith("|"))
    rows = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return [rows[0], *rows[2:]]


def test_writes_report_and_plot(tmp_path: Path) -> None:
    predictions = _random_records()
    by_k = {k: _random_records(seed=k, k=k) for k in (4, 8, 16)}
    path = write_report(predictions, by_k, tmp_path / "out")
    assert path == tmp_path / "out" / "report.md" and path.is_file()
    assert (tmp_path / "out" / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = path.read_text()
    for heading in ("## Overview", "## Example predictions", "## Where audio helps and where it hurts",
                    "## Counting confusion", "## Accuracy vs k"):
        assert heading in text
    overview = _table_after(text, "## Overview")
    assert overview[1][:2] == ["all", "40"]
    assert float(overview[1][2]) == pytest.approx(100 * np.mean([r["score"] for r in predictions]), abs=0.01)
    accuracy = _table_after(text, "## Accuracy vs k")
    assert [row[0] for row in accuracy[1:]] == ["4", "8", "16"]
    assert f"![accuracy vs k]({PLOT_FILE})" in text
    assert write_report(predictions, by_k, tmp_path / "out").read_text() == text  # deterministic


@pytest.mark.parametrize("by_k", [None, "one k"])
def test_no_plot_without_several_k(tmp_path: Path, by_k: str | None) -> None:
    predictions = _random_records()
    write_report(predictions, None if by_k is None else {8: predictions}, tmp_path)
    assert (tmp_path / "report.md").is_file() and not (tmp_path / PLOT_FILE).exists()


def test_helps_hurts_counts_match_hand_count(tmp_path: Path) -> None:
    records = [
        _record("a1", "audio", "source", "dog", "dog", "cat", 1.0, 0.0),  # helps
        _record("a2", "audio", "source", "dog", "dog", "dog", 1.0, 1.0),  # tie
        _record("a3", "audio", "source", "dog", "cat", "dog", 0.0, 1.0),  # hurts
        _record("a4", "audio", "source", "dog", "dog", "dogs", 1.0, 1 / 3),  # helps
        _record("v1", "visual", "color", "red", "red", "red", 1.0, 1.0),  # tie
        _record("v2", "visual", "color", "red", "blue", "red", 0.0, 2 / 3),  # hurts
    ]
    text = write_report(records, None, tmp_path).read_text()
    table = _table_after(text, "## Where audio helps and where it hurts")
    assert table[0] == ["type", "questions", "helps", "ties", "hurts", "net change (pts)"]
    # audio.source: (1 + 0 - 1 + 2/3) / 4 = +16.67 points; visual.color: -2/3 / 2 = -33.33 points.
    assert table[1:] == [["audio.source", "4", "2", "1", "1", "+16.67"], ["visual.color", "2", "0", "1", "1", "-33.33"]]
    examples = _table_after(text, "### Examples (up to 3 of each, by id)")
    assert [(row[0], row[1], row[2]) for row in examples[1:]] == [
        ("audio.source", "helps", "a1"), ("audio.source", "helps", "a4"), ("audio.source", "hurts", "a3"),
        ("visual.color", "hurts", "v2")]


def test_confusion_cells_match_hand_count(tmp_path: Path) -> None:
    main = [
        _record("c1", "audio", "repeats", "2", "2", "3", 1.0, 0.0),
        _record("c2", "audio", "repeats", "2", "two", "2", 1.0, 1.0),  # normalised to "2"
        _record("c3", "audio", "repeats", "2", "3", "2", 0.0, 1.0),
        _record("c4", "audio_visual", "count", "three", "3.", "3", 1.0, 1.0),  # gold "three" -> "3"
        _record("c5", "audio_visual", "count", "10", "3", "10", 0.0, 1.0),
        _record("v1", "visual", "color", "2", "5", "2", 0.0, 1.0),  # not a counting question
    ]
    at_k4 = [dict(r, k=4, answer="2") for r in main]
    text = write_report(main, {4: at_k4, 8: main}, tmp_path).read_text()
    assert _table_after(text, "### k = 8") == [
        ["gold \\ predicted", "2", "3"],
        ["2", "2", "1"],
        ["3", "0", "1"],
        ["10", "0", "1"],
    ]
    assert _table_after(text, "### k = 4") == [["gold \\ predicted", "2"], ["2", "3"], ["3", "1"], ["10", "1"]]
    alone = write_report(main, None, tmp_path / "alone").read_text()
    assert _table_after(alone, "### main predictions") == _table_after(text, "### k = 8")


def test_examples_include_a_correct_and_an_incorrect_one_per_type(tmp_path: Path) -> None:
    predictions = _random_records(seed=3, per_type=12)
    text = write_report(predictions, None, tmp_path, examples_per_type=2).read_text()
    for family, qtype in TYPES:
        rows = _table_after(text, f"### {family}.{qtype}")[1:]
        members = sorted((r for r in predictions if r["family"] == family and r["qtype"] == qtype),
                         key=lambda r: r["id"])
        correct = [r["id"] for r in members if r["score"] >= 0.5][:2]
        wrong = [r["id"] for r in members if r["score"] < 0.5][:2]
        assert correct and wrong  # the seed gives both kinds in every type
        assert [row[0] for row in rows] == correct + wrong
        assert [row[1] for row in rows] == ["yes"] * len(correct) + ["no"] * len(wrong)


def test_only_correct_answers_give_only_correct_examples(tmp_path: Path) -> None:
    records = [_record(f"q{i}", "visual", "color", "red", "red", "blue", 1.0, 0.0) for i in range(5)]
    rows = _table_after(write_report(records, None, tmp_path).read_text(), "### visual.color")[1:]
    assert [(row[0], row[1]) for row in rows] == [("q0", "yes"), ("q1", "yes"), ("q2", "yes")]


def test_pipes_in_text_are_escaped(tmp_path: Path) -> None:
    record = _record("p1", "visual", "color", "red", "red | blue", "red", 0.0, 1.0, question="a | b?")
    text = write_report([record], None, tmp_path).read_text()
    row = _table_after(text, "### visual.color")[1]
    assert row[2:5] == ["a \\| b?", "red", "red \\| blue"]


@pytest.mark.parametrize("key", ["score", "base_answer", "answers"])
def test_missing_key_names_the_key_and_the_record(tmp_path: Path, key: str) -> None:
    records = _random_records(per_type=2)
    del records[3][key]
    with pytest.raises(ValueError, match=rf"record id '{re.escape(records[3]['id'])}' is missing key\(s\) '{key}'"):
        write_report(records, None, tmp_path)


def test_missing_key_in_by_k_names_the_k(tmp_path: Path) -> None:
    records = _random_records(per_type=2)
    broken = [dict(r) for r in records]
    del broken[0]["gate"]
    with pytest.raises(ValueError, match=r"by_k\[4\]: record id .* missing key\(s\) 'gate'"):
        write_report(records, {4: broken, 8: records}, tmp_path)


@pytest.mark.parametrize(("predictions", "by_k", "match"), [
    ([], None, "predictions: no prediction records"),
    ([_record("x", "visual", "color", "red", "red", "red", 1.0, 1.0)], {}, "by_k is empty"),
    ([_record("x", "speech", "color", "red", "red", "red", 1.0, 1.0)], None, "family 'speech'; expected one of"),
])
def test_bad_input_is_an_error(tmp_path: Path, predictions: list[dict], by_k: dict | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_report(predictions, by_k, tmp_path)


def test_per_dataset_table_names_each_metric_and_captions_stay_out_of_accuracy(tmp_path: Path) -> None:
    gqa = [dict(_record(f"g{i}", "visual", "color", "red", "red" if i < 3 else "blue", "red", float(i < 3), 1.0),
                source="gqa", metric="gqa_exact_match", answers=["red"]) for i in range(4)]
    captions = [dict(_record(f"c{i}", "caption", "caption", "a tone", "a tone", "noise", 2.5 * i, 0.0),
                     source="audiocaps", metric="cider_d", answers=["a tone", "one tone"]) for i in range(2)]
    text = write_report(gqa + captions, None, tmp_path).read_text()
    table = _table_after(text, "## Metric per dataset")
    assert table[0] == ["dataset", "metric", "questions", "SAFE", "95% CI", "base"]
    assert [row[:4] for row in table[1:]] == [["audiocaps", "CIDEr-D", "2", "1.250"],
                                             ["gqa", "GQA exact match", "4", "75.00"]]
    assert _table_after(text, "## Overview")[1][:3] == ["all", "4", "75.00"]  # the captions' CIDEr-D is not in it


def test_a_record_with_another_metric_than_its_dataset_is_an_error(tmp_path: Path) -> None:
    record = dict(_record("g1", "visual", "color", "red", "red", "red", 1.0, 1.0), source="gqa")
    with pytest.raises(ValueError, match="record id 'g1' of dataset 'gqa' has metric 'vqa_accuracy'; "
                                         "expected 'gqa_exact_match'"):
        write_report([record], None, tmp_path)
