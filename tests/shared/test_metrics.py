"""Metric parity with the official evaluation code on hand-checked cases.

VQA: 24 earlier checks (10 normalisation cases, 14 accuracy/punctuation/rejection checks) plus
the 31-case table in `test_vqa_accuracy_hand_computed`.
Leave-one-out with k of N annotators matching the prediction: the k subsets that leave out a
matching annotator see k - 1 matches, the N - k others see k, so
    acc = (k * min(1, (k - 1) / 3) + (N - k) * min(1, k / 3)) / N.
For N = 10: k=0 -> 0; k=1 -> (0 + 9/3) / 10 = 0.3; k=2 -> (2/3 + 16/3) / 10 = 0.6;
k=3 -> (3 * 2/3 + 7) / 10 = 0.9; k>=4 -> 1.0 (every subset sees >= 3 matches).
"""

import math

import pytest

from shared.metrics import (CiderD, accuracy_by_type, annotator_accuracy, caption_tokens, cider_d, exact_match,
                            gqa_accuracy, normalize_prediction, process_punctuation, vqa_accuracy)


@pytest.mark.parametrize("raw, expected", [
    ("Two.", "2"),
    ("  the Red\tcircle ", "red circle"),
    ("an apple", "apple"),
    ("dont", "don't"),
    ("yes!", "yes"),
    ("1,000", "1000"),
    ("3.5", "3.5"),
    ("top-left", "top left"),
    ("none", "0"),
    ("Ten", "10"),
])
def test_normalize_prediction(raw: str, expected: str) -> None:
    assert normalize_prediction(raw) == expected


def test_punctuation_keeps_words_glued_when_spaced() -> None:
    # A punctuation mark next to a space is removed; elsewhere it becomes a space.
    assert process_punctuation("a - b") == "a  b"
    assert process_punctuation("a-b") == "a b"


def test_full_agreement_scores_one() -> None:
    assert vqa_accuracy("red", ["red"] * 10) == 1.0


def test_leave_one_out_average() -> None:
    # 2 of 10 annotators agree: subsets without one of them see 1 match (1/3), the other 8 see 2 (2/3).
    answers = ["red", "red"] + ["blue"] * 8
    assert vqa_accuracy("red", answers) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)


def test_three_agreeing_annotators_are_not_all_full_credit() -> None:
    answers = ["2"] * 3 + ["3"] * 7
    assert vqa_accuracy("2", answers) == pytest.approx((3 * (2 / 3) + 7 * 1.0) / 10)


def test_prediction_number_word_matches_digit_answers() -> None:
    assert vqa_accuracy("two", ["2"] * 10) == 1.0


def test_ground_truth_number_words_are_not_normalised() -> None:
    # Official quirk: only punctuation is applied to ground truth, so "two" answers never match.
    answers = ["two"] * 4 + ["2"] * 6
    assert vqa_accuracy("2", answers) == pytest.approx(1.0)
    assert vqa_accuracy("two", ["two"] * 10) == 0.0


def test_ground_truth_punctuation_only_when_annotators_disagree() -> None:
    assert vqa_accuracy("yes", ["yes."] * 10) == 0.0
    assert vqa_accuracy("yes", ["yes."] * 9 + ["no"]) == 1.0
    # Official quirk kept: "!" becomes a space and ground truth is not stripped again.
    assert vqa_accuracy("yes", ["yes!"] * 9 + ["no"]) == 0.0


def test_wrong_prediction_scores_zero() -> None:
    assert vqa_accuracy("green", ["red"] * 10) == 0.0


@pytest.mark.parametrize("answers", [[], "red"])
def test_bad_answers_are_rejected(answers) -> None:
    with pytest.raises(ValueError, match="answers"):
        vqa_accuracy("red", answers)


@pytest.mark.parametrize("prediction, answers, expected", [
    # leave-one-out with k of 10 agreeing (see the module docstring)
    ("red", ["blue"] * 10, 0.0),
    ("red", ["red"] + ["blue"] * 9, 0.3),
    ("red", ["red"] * 2 + ["blue"] * 8, 0.6),
    ("red", ["red"] * 3 + ["blue"] * 7, 0.9),
    ("red", ["red"] * 4 + ["blue"] * 6, 1.0),
    ("red", ["red"] * 5 + ["blue"] * 5, 1.0),
    # other annotator counts: N=3, k=1 -> (0 + 2/3) / 3; N=5, k=2 -> (2/3 + 3 * 2/3) / 5
    ("red", ["red", "blue", "green"], 2 / 9),
    ("red", ["red"] * 2 + ["blue"] * 3, 8 / 15),
    # number words in the prediction become digits (up to ten)
    ("Three", ["3"] * 2 + ["4"] * 8, 0.6),
    ("zero", ["0"] * 10, 1.0),
    ("eleven", ["11"] * 10, 0.0),
    # articles are dropped from the prediction, never from ground truth
    ("a dog", ["dog"] * 10, 1.0),
    ("The man", ["man"] * 3 + ["woman"] * 7, 0.9),
    ("dog", ["a dog"] * 9 + ["cat"], 0.0),
    # punctuation in the prediction
    ("yes.", ["yes"] * 10, 1.0),
    ("Yes!", ["yes"] * 10, 1.0),
    ("top-left", ["top left"] * 10, 1.0),
    # ground-truth punctuation only when annotators disagree: "t-shirt" -> "t shirt" (k=4) or kept
    ("t-shirt", ["t-shirt"] * 4 + ["shirt"] * 6, 1.0),
    ("t-shirt", ["t-shirt"] * 10, 0.0),
    ("2", ["2."] * 2 + ["3"] * 8, 0.6),
    ("yes", ["yes"] * 3 + ["yes."] + ["no"] * 6, 1.0),
    # digit commas: every punctuation mark is deleted when "d,d" occurs
    ("1,000", ["1000"] * 10, 1.0),
    ("1,000", ["1,000"] * 10, 0.0),
    ("1,000", ["1,000"] * 2 + ["100"] * 8, 0.6),
    # contractions: the table restores apostrophes; its capitalised keys never match
    ("isnt", ["isn't"] * 10, 1.0),
    ("isn't", ["isn't"] * 10, 1.0),
    ("Dont", ["don't"] * 10, 1.0),
    ("Im", ["i'm"] * 10, 0.0),
    # case and whitespace: folded in the prediction, never in ground truth
    ("  red\n", ["red"] * 10, 1.0),
    ("RED", ["red"] * 10, 1.0),
    ("red", ["Red"] * 5 + ["blue"] * 5, 0.0),
])
def test_vqa_accuracy_hand_computed(prediction: str, answers: list[str], expected: float) -> None:
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)


@pytest.mark.parametrize("prediction, answer, expected", [
    ("yes", "yes", 1.0),
    ("Yes", "yes", 1.0),
    ("  NO\n", "no", 1.0),
    ("traffic light", "traffic light", 1.0),
    ("no", "yes", 0.0),
    ("the table", "table", 0.0),
    ("2", "two", 0.0),
    ("yes.", "yes", 0.0),
    ("traffic  light", "traffic light", 0.0),
])
def test_gqa_accuracy(prediction: str, answer: str, expected: float) -> None:
    assert gqa_accuracy(prediction, answer) == expected


@pytest.mark.parametrize("prediction, answer", [(None, "yes"), ("yes", ["yes"])])
def test_gqa_accuracy_rejects_non_strings(prediction, answer) -> None:
    with pytest.raises(ValueError, match="prediction|answer"):
        gqa_accuracy(prediction, answer)


def test_accuracy_by_type_overall_is_over_questions() -> None:
    records = [("audio", 1.0), ("audio", 0.0), ("visual", 1.0), ("audio-visual", 0.5)]
    result = accuracy_by_type(iter(records))
    # overall = 2.5 / 4, not the mean of the per-type means (2 / 3)
    assert result == pytest.approx({"audio": 0.5, "visual": 1.0, "audio-visual": 0.5, "overall": 0.625})


@pytest.mark.parametrize("records, needle", [
    ([], "empty"),
    ([("overall", 1.0)], "overall"),
    ([("audio", 1.5)], "score"),
    ([("audio", True)], "score"),
    ([("", 1.0)], "type"),
    ([("audio", 1.0, 2)], "pair"),
])
def test_accuracy_by_type_rejects_bad_records(records, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        accuracy_by_type(records)


# CIDEr-D by hand. Corpus of 2 images, refs {a: ["a dog"], b: ["a cat"]}, so idf = log 2 - log df:
# "a" is in both reference sets (idf 0); "dog", "cat", "a dog", "a cat" in one (idf L = log 2);
# an n-gram in no reference set has df 0 -> log(max(1, 0)) = 0, idf L.
# - candidate "a dog" for a: unigrams {a: 0, dog: L}, norm L; bigrams {a dog: L}, norm L; same for
#   the reference. Order 1: min(L, L) * L / (L * L) = 1; order 2: 1; orders 3, 4: no n-grams, 0.
#   Equal lengths, penalty 1. Score = 10 * (1 + 1 + 0 + 0) / 4 = 5.
# - candidate "dog dog": unigrams {dog: 2L}, norm 2L; order 1: min(2L, L) * L / (2L * L) = 0.5
#   (without the clipping it would be 1); bigram "dog dog" is not in the reference: 0.
#   Score = 10 * 0.5 / 4 = 1.25.
# - candidate "dog": order 1: L * L / (L * L) = 1, times exp(-(1 - 2)^2 / (2 * 6^2)) = exp(-1/72);
#   no bigrams. Score = 2.5 * exp(-1/72).
_TINY_REFS = {"a": ["a dog"], "b": ["a cat"]}


@pytest.mark.parametrize("candidate, expected", [
    ("a dog", 5.0),
    ("A dog.", 5.0),
    ("dog dog", 1.25),
    ("dog", 2.5 * math.exp(-1 / 72)),
    ("zebra", 0.0),
    ("a", 0.0),
    ("", 0.0),
])
def test_cider_d_hand_computed(candidate: str, expected: float) -> None:
    corpus, per_id = cider_d({"a": candidate, "b": "a cat"}, _TINY_REFS)
    assert per_id["a"] == pytest.approx(expected)
    assert per_id["b"] == pytest.approx(5.0)
    assert corpus == pytest.approx((expected + 5.0) / 2)


def test_cider_d_single_image_corpus_has_zero_idf() -> None:
    assert cider_d({"a": "a dog"}, {"a": ["a dog"]}) == (0.0, {"a": 0.0})


_REFS = {
    "x": ["a man riding a horse on the beach", "a person rides a brown horse", "a horse and its rider"],
    "y": ["two cats sleeping on a couch", "cats asleep on a sofa"],
    "z": ["a red car parked on the street", "a car by the curb"],
}


def test_cider_d_is_symmetric_in_reference_order() -> None:
    candidates = {"x": "a man rides a horse", "y": "a cat on a couch", "z": "a car on a street"}
    reversed_refs = {k: list(reversed(v)) for k, v in _REFS.items()}
    forward, forward_ids = cider_d(candidates, _REFS)
    backward, backward_ids = cider_d(candidates, reversed_refs)
    assert forward == pytest.approx(backward)
    assert forward_ids == pytest.approx(backward_ids)


def test_cider_d_prefers_the_closer_candidate() -> None:
    others = {"y": "cats on a couch", "z": "a car"}
    _, close = cider_d({"x": "a man riding a horse on the beach", **others}, _REFS)
    _, middle = cider_d({"x": "a man riding a horse", **others}, _REFS)
    _, far = cider_d({"x": "a dog on a couch", **others}, _REFS)
    assert close["x"] > middle["x"] > far["x"] >= 0.0


def test_cider_d_ignores_reference_ids_without_candidates() -> None:
    _, per_id = cider_d({"a": "a dog", "b": "a cat"}, {**_TINY_REFS, "c": ["a bird"]})
    assert per_id == pytest.approx({"a": 5.0, "b": 5.0})


def test_caption_tokens() -> None:
    assert caption_tokens("A Dog's  well-known toy, (red).") == ["a", "dogs", "wellknown", "toy", "red"]


@pytest.mark.parametrize("candidates, references, kwargs, needle", [
    ({"a": "a dog", "c": "a bird"}, _TINY_REFS, {}, "missing"),
    ({"a": "a dog"}, {"a": []}, {}, "references"),
    ({"a": "a dog"}, {"a": "a dog"}, {}, "references"),
    ({}, _TINY_REFS, {}, "candidates"),
    ({"a": ["a dog"]}, _TINY_REFS, {}, "candidates"),
    ({"a": "a dog"}, _TINY_REFS, {"n": 0}, "n is"),
    ({"a": "a dog"}, _TINY_REFS, {"sigma": 0.0}, "sigma"),
])
def test_cider_d_rejects_bad_input(candidates, references, kwargs, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        cider_d(candidates, references, **kwargs)


@pytest.mark.parametrize("prediction, answer, expected", [
    ("Two", "two", 1.0), (" left\n", "Left", 1.0), ("2", "two", 0.0), ("a dog", "dog", 0.0),
])
def test_exact_match(prediction: str, answer: str, expected: float) -> None:
    assert exact_match(prediction, answer) == expected


def test_exact_match_error_names_the_scorer() -> None:
    with pytest.raises(ValueError, match="music: answer is None"):
        exact_match("yes", None, "music")


@pytest.mark.parametrize("prediction, answers, expected", [
    ("yes", ["yes", "yes", "no"], 2 / 3), ("no", ["yes", "yes", "no"], 1 / 3), ("maybe", ["yes", "no", "no"], 0.0),
    ("Dog", ["dog"], 1.0), ("dog", ["dog", "dogs", "DOG"], 2 / 3),
])
def test_annotator_accuracy_counts_matching_annotators(prediction: str, answers: list[str], expected: float) -> None:
    assert annotator_accuracy(prediction, answers) == pytest.approx(expected)


@pytest.mark.parametrize("answers", [[], "yes"])
def test_annotator_accuracy_rejects_bad_answers(answers) -> None:
    with pytest.raises(ValueError, match="annotator_accuracy: answers is"):
        annotator_accuracy("yes", answers)


def test_cider_d_scorer_per_caption_scores_do_not_depend_on_the_other_candidates() -> None:
    scorer = CiderD(_REFS)
    corpus, per_id = cider_d({"x": "a man rides a horse", "y": "a cat on a couch", "z": "a car"}, _REFS)
    assert {i: scorer.score(i, c) for i, c in (("x", "a man rides a horse"), ("y", "a cat on a couch"),
                                                ("z", "a car"))} == pytest.approx(per_id)
    assert scorer.score("x", "a man rides a horse") == pytest.approx(per_id["x"])  # again, alone
    with pytest.raises(ValueError, match="candidate id 'w' is missing from references"):
        scorer.score("w", "a dog")
    with pytest.raises(ValueError, match="references is empty"):
        CiderD({})
