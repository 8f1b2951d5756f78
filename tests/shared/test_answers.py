"""parse_answer on the shapes of generated text the VQA-style benchmarks actually see."""

import pytest

from shared.answers import DEFAULT_PREFIXES, parse_answer
from shared.metrics import vqa_accuracy


@pytest.mark.parametrize("raw, expected", [
    # trailing punctuation; numbers are left as words (vqa_accuracy maps them later)
    ("two.", "two"),
    ("2.", "2"),
    ("3.5", "3.5"),
    ("blue!", "blue"),
    ("red?", "red"),
    ("green;", "green"),
    # whitespace and case
    ("  blue  ", "blue"),
    ("\n\nBlue\n", "blue"),
    ("\tRED\t", "red"),
    # template and chat prefixes, case-insensitive, repeated
    ("Answer: yes", "yes"),
    ("answer:blue", "blue"),
    ("ANSWER: 4", "4"),
    ("The answer is blue.", "blue"),
    ("The answer is: dog", "dog"),
    ("A: cat", "cat"),
    ("ASSISTANT: Yes", "yes"),
    ("assistant: bottom left", "bottom left"),
    ("ASSISTANT: Answer: no", "no"),
    ("Final answer: three", "three"),
    # multi-line and multi-sentence: the first line / sentence only
    ("Blue\nThe car is parked on the street.", "blue"),
    ("Answer:\nred", "red"),
    ("It is red. The car is big.", "red"),
    ("Yes! There is a dog.", "yes"),
    ("dog? or maybe a cat", "dog"),
    # yes / no elaborations
    ("no, it isn't", "no"),
    ("Yes, there is.", "yes"),
    ("No.", "no"),
    ("yes it is", "yes"),
    ("No it is not", "no"),
    ("Yes; the man is smiling", "yes"),
    ("no one", "no one"),
    ("no smoking", "no smoking"),
    ("no-one", "no-one"),
    # copula lead-ins; articles stay for the VQA normaliser
    ("It's blue", "blue"),
    ("It\u2019s blue.", "blue"),
    ("it is a chirp", "a chirp"),
    ("There are 3", "3"),
    ("There is one", "one"),
    ("There's a dog.", "a dog"),
    ("They are playing tennis", "playing tennis"),
    ("This is a kitchen.", "a kitchen"),
    ("It is.", "it is"),
    # multi-word answers survive
    ("bottom left", "bottom left"),
    ("top center.", "top center"),
    ("traffic light", "traffic light"),
    ("**red**", "red"),
    ('"wood"', "wood"),
    # things that look like prefixes or lead-ins but are answers
    ("a", "a"),
    ("answers", "answers"),
    ("itself", "itself"),
    # empty input
    ("", ""),
    ("   ", ""),
    ("\n\t\n", ""),
    ("Answer:", ""),
])
def test_parse_answer(raw: str, expected: str) -> None:
    assert parse_answer(raw) == expected


def test_number_word_is_left_for_the_vqa_normaliser() -> None:
    assert parse_answer("two.") == "two"
    assert vqa_accuracy(parse_answer("two."), ["2"] * 10) == 1.0


def test_articles_are_left_for_the_vqa_normaliser() -> None:
    assert vqa_accuracy(parse_answer("It is a chirp."), ["chirp"] * 10) == 1.0


def test_custom_prefixes_replace_the_defaults() -> None:
    assert parse_answer("Output: cat", prefixes=("output:",)) == "cat"
    assert parse_answer("Answer: cat", prefixes=("output:",)) == "answer: cat"


def test_default_prefixes_are_lower_case_strings() -> None:
    assert all(p == p.lower() and p.strip() == p for p in DEFAULT_PREFIXES)


@pytest.mark.parametrize("raw", [None, 3, b"yes"])
def test_non_string_input_is_rejected(raw) -> None:
    with pytest.raises(ValueError, match="raw"):
        parse_answer(raw)


@pytest.mark.parametrize("prefixes", ["answer:", ["answer:", ""], [None]])
def test_bad_prefixes_are_rejected(prefixes) -> None:
    with pytest.raises(ValueError, match="prefixes"):
        parse_answer("Answer: yes", prefixes=prefixes)
