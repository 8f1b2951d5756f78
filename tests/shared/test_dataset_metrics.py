"""The per-dataset metric registry: which metric scores which source, on hand-computed cases, and its errors."""

import pytest

from shared.data.schema import Sample
from shared.dataset_metrics import (DATASET_METRICS, DatasetScorer, by_answer_kind, check_sample, dataset_summary,
                                    format_dataset_summary, metric_for)
from shared.metrics import cider_d


def _sample(source: str, answers: tuple[str, ...], sid: str = "q1", family: str = "visual",
            qtype: str = "other") -> Sample:
    return Sample(id=sid, question="what?", answers=answers, family=family, qtype=qtype, source=source)


@pytest.mark.parametrize("source, name", [
    ("world", "vqa_accuracy"), ("vqav2", "vqa_accuracy"), ("gqa", "gqa_exact_match"),
    ("music_avqa", "type_accuracy"), ("avqa", "type_accuracy"), ("clotho_aqa", "annotator_accuracy"),
    ("audiocaps", "cider_d"),
])
def test_each_source_has_its_metric(source: str, name: str) -> None:
    assert metric_for(source).name == name


def test_unknown_source_names_it_and_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'coco'.*known sources: audiocaps, avqa, clotho_aqa, gqa, music_avqa"):
        metric_for("coco")
    with pytest.raises(ValueError, match="'coco'"):
        DatasetScorer([_sample("coco", ("yes",))])


@pytest.mark.parametrize("source", ["vqav2", "world"])
def test_vqa_accuracy_on_single_answer_data_is_an_error(source: str) -> None:
    # Scored with VQA accuracy this would silently be 0: vqa_accuracy('yes', ['yes']) == 0.0.
    with pytest.raises(ValueError, match=rf"dataset '{source}', sample 'vq-7': 1 answer\(s\).*vqa_accuracy expects "
                                         "at least 4"):
        DatasetScorer([_sample(source, ("yes",), sid="vq-7")])


@pytest.mark.parametrize("source, answers", [("gqa", ("yes", "no")), ("music_avqa", ()), ("avqa", ("a", "b"))])
def test_single_answer_datasets_need_exactly_one_answer(source: str, answers: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match=rf"dataset '{source}', sample 'q1': {len(answers)} answer.*exactly 1"):
        check_sample(_sample(source, answers))


@pytest.mark.parametrize("source, answers, raw, expected", [
    ("vqav2", ("yes",) * 10, "Yes.", 1.0),
    ("vqav2", ("2",) * 2 + ("3",) * 8, "two", 0.6),            # 2 of 10 match after "two" -> "2"
    ("world", ("red",) * 10, "It is red.", 1.0),
    ("gqa", ("yes",), "yes", 1.0),                              # VQA accuracy would give 0 here
    ("gqa", ("table",), "Table.", 1.0),
    ("gqa", ("table",), "the table", 0.0),                      # GQA removes no articles
    ("music_avqa", ("two",), "two", 1.0),
    ("music_avqa", ("two",), "2", 0.0),                         # no number-word mapping
    ("avqa", ("guitar",), "Guitar", 1.0),
    ("clotho_aqa", ("yes", "yes", "no"), "yes", 2 / 3),         # one point per matching annotator
    ("clotho_aqa", ("yes", "yes", "no"), "No.", 1 / 3),
    ("clotho_aqa", ("dog", "dogs", "Dog"), "dog", 2 / 3),
    ("clotho_aqa", ("bird",), "bird", 1.0),
])
def test_scores_hand_computed(source: str, answers: tuple[str, ...], raw: str, expected: float) -> None:
    sample = _sample(source, answers)
    assert DatasetScorer([sample]).score(sample, raw) == pytest.approx(expected)


def _captions() -> list[Sample]:
    return [_sample("audiocaps", ("a dog",), sid="a", family="caption", qtype="caption"),
            _sample("audiocaps", ("a cat",), sid="b", family="caption", qtype="caption")]


def test_captions_get_per_caption_cider_d_whatever_else_is_scored() -> None:
    # Two-image corpus of tests/shared/test_metrics.py: "a dog" for refs ["a dog"] is 5.0, "dog dog" is 1.25.
    a, b = _captions()
    scorer = DatasetScorer([a, b, _sample("gqa", ("yes",))])
    assert scorer.score(a, "  A dog.\n") == pytest.approx(5.0)
    assert scorer.score(a, "dog dog") == pytest.approx(1.25)
    assert scorer.score(b, "a cat") == pytest.approx(5.0)
    corpus, _ = cider_d({"a": "dog dog", "b": "a cat"}, {"a": ["a dog"], "b": ["a cat"]})
    assert (scorer.score(a, "dog dog") + scorer.score(b, "a cat")) / 2 == pytest.approx(corpus)


def test_caption_answer_is_the_stripped_generation_not_a_parsed_short_answer() -> None:
    a, _ = _captions()
    assert DatasetScorer.answer(a, " It is a dog barking. A car. ") == "It is a dog barking. A car."
    assert DatasetScorer.answer(_sample("gqa", ("dog",)), "It is a dog.") == "a dog"


@pytest.mark.parametrize("source, family", [("audiocaps", "audio"), ("vqav2", "caption")])
def test_caption_metrics_score_only_captions(source: str, family: str) -> None:
    with pytest.raises(ValueError, match=rf"dataset '{source}', sample 'q1': family '{family}' cannot be scored"):
        check_sample(_sample(source, ("a dog barks",) * 10, family=family))


def test_caption_outside_the_corpus_is_an_error() -> None:
    a, b = _captions()
    with pytest.raises(ValueError, match="dataset 'audiocaps', sample 'b' was not in the samples"):
        DatasetScorer([a]).score(b, "a cat")


@pytest.mark.parametrize("answers, kind", [
    (["yes", "yes", "no"], "yes_no"), (["No", "no", "dog"], "yes_no"), (["dog", "dog", "yes"], "single_word"),
])
def test_clotho_breakdown_by_most_frequent_answer(answers: list[str], kind: str) -> None:
    assert by_answer_kind({"answers": answers}) == kind


def _record(source: str, answers: list[str], score: float, base: float, qtype: str = "t") -> dict:
    return {"source": source, "family": "audio", "qtype": qtype, "answers": answers, "score": score,
            "base_score": base}


def test_dataset_summary_reports_each_dataset_with_its_metric() -> None:
    records = [_record("gqa", ["yes"], 1.0, 0.0), _record("gqa", ["no"], 0.0, 0.0), _record("gqa", ["no"], 1.0, 1.0),
               _record("clotho_aqa", ["yes", "yes", "no"], 2 / 3, 0.0),
               _record("clotho_aqa", ["dog", "dog", "cat"], 1 / 3, 1 / 3),
               _record("music_avqa", ["two"], 1.0, 0.0, qtype="Counting"),
               _record("music_avqa", ["left"], 0.0, 0.0, qtype="Location")]
    summary = dataset_summary(records)
    assert list(summary) == ["clotho_aqa", "gqa", "music_avqa"]
    assert summary["gqa"]["metric"] == "gqa_exact_match" and summary["gqa"]["n"] == 3
    assert summary["gqa"]["value"]["mean"] == pytest.approx(2 / 3)
    assert summary["gqa"]["base"]["mean"] == pytest.approx(1 / 3)
    lo, hi = summary["gqa"]["value"]["ci95"]
    assert 0.0 <= lo <= 2 / 3 <= hi <= 1.0
    assert summary["clotho_aqa"]["value"]["mean"] == pytest.approx(0.5)
    assert {k: v["mean"] for k, v in summary["clotho_aqa"]["per_type"].items()} == pytest.approx(
        {"single_word": 1 / 3, "yes_no": 2 / 3})
    assert {k: v["mean"] for k, v in summary["music_avqa"]["per_type"].items()} == {
        "audio.Counting": 1.0, "audio.Location": 0.0}
    table = format_dataset_summary(summary)
    assert "GQA exact match" in table and "accuracy (share of annotators)" in table
    assert " 66.67 " in table  # GQA in %


def test_every_registered_metric_has_a_label_and_a_scorer_or_is_a_corpus_metric() -> None:
    for source, metric in DATASET_METRICS.items():
        assert metric.label and (metric.score is not None or not metric.accuracy), source
