"""VQA accuracy parity with the official evaluation on hand-checked cases."""

import pytest

from shared.metrics import normalize_prediction, process_punctuation, vqa_accuracy


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
