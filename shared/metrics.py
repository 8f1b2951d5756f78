"""Answer metrics, computed the way the official evaluation code computes them.

VQA accuracy follows the official VQA evaluation (GT-Vision-Lab, vqaEval.py), quirks included:
- the prediction gets newline/tab folding and strip, punctuation processing, then
  lower-casing, number words to digits, article removal and the contraction table;
- ground-truth answers get *only* punctuation processing, and only when the annotators
  disagree (more than one distinct answer);
- the score is min(#matching other annotators / 3, 1), averaged over the leave-one-out
  subsets of the annotators (10 subsets for VQA's 10 answers).

GQA accuracy is exact match. The official GQA eval.py compares the raw strings
(`predicted == gold`); gold answers are already lower-case and stripped, so `gqa_accuracy`
additionally lower-cases and strips surrounding whitespace on both sides. That changes nothing for
a clean prediction and only forgives case and padding; anything more (articles, punctuation,
number words) is deliberately not done, so GQA numbers stay comparable to exact-match results.

`exact_match` is that comparison for any single-answer dataset (MUSIC-AVQA, AVQA), and
`annotator_accuracy` averages it over several annotators' answers: the fraction of annotators
whose answer the prediction matches (Clotho-AQA, see shared/dataset_metrics.py for why).

`accuracy_by_type` averages per-question scores per question type plus "overall" (the mean over
all questions, not the mean of the per-type means), as MUSIC-AVQA/AVQA tables report them.

CIDEr-D follows pycocoevalcap's CiderD scorer, written here from its definition:
- tokens: lower-case, every character of `string.punctuation` deleted ("dog's" -> "dogs",
  "well-known" -> "wellknown"), split on whitespace; a light stand-in for the PTB tokenizer
  the COCO toolkit runs first, so absolute values can differ slightly from the toolkit's on text
  with punctuation;
- n-grams of order 1..n; document frequency df(g) = number of images whose *reference set*
  contains g, over the images being scored;
- tf-idf: count(g) * (log(max(1, #images)) - log(max(1, df(g)))); an n-gram in every reference
  set weighs 0;
- per order n, per reference: sum over the candidate's n-grams of min(c_g, r_g) * r_g (the
  CIDEr-D clipping of the candidate's tf-idf by the reference's), divided by |c_n| * |r_n| when
  both are non-zero, times the Gaussian length penalty exp(-(len_c - len_r)^2 / (2 sigma^2)) on
  word counts (the toolkit counts bigrams, which differ from word counts by the same 1 on both
  sides for non-empty text);
- averaged over the references, then over the orders, times 10; the corpus score is the mean
  over images.
Document frequencies depend only on the reference sets, never on the candidates, so `CiderD`
fixes them once for a corpus of references and then scores each caption on its own: its
per-caption scores do not change with which other captions are scored alongside, and their mean
is the corpus score `cider_d` returns for the same ids.
There is no reranking or selection against the references, ever: each candidate is the model's
own single output for its image, scored as is.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Iterable, Mapping, Sequence

# A per-question score counts as correct at >= CORRECT: a VQA accuracy from two or more matching annotators
# (leave-one-out averaging gives 0.6 for two), an exact match of 1. McNemar tests, outcome-table oracles and
# reports all threshold here.
CORRECT = 0.5
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# The official pattern, typo and all: "(?!<=" is a lookahead, not a lookbehind.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# The official code passes re.UNICODE (= 32) as the `count` argument of sub().
_PERIOD_STRIP_COUNT = 32
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# The official contraction table as "written:replacement" pairs (including its oddities,
# such as "somebody'd" -> "somebodyd" and capitalised keys that never match lower-cased text).
_CONTRACTIONS = dict(pair.split(":", 1) for pair in """
aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've
couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've
hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's
howd:how'd howll:how'll hows:how's Id've:I'd've I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd
itd've:it'd've it'dve:it'd've itll:it'll let's:let's maam:ma'am mightnt:mightn't
mightnt've:mightn't've mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've
neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at
'ow'sat:'ow's'at shant:shan't shed've:she'd've she'dve:she'd've she's:she's shouldve:should've
shouldnt:shouldn't shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd
somebodyd've:somebody'd've somebody'dve:somebody'd've somebodyll:somebody'll somebodys:somebody's
someoned:someone'd someoned've:someone'd've someone'dve:someone'd've someonell:someone'll
someones:someone's somethingd:something'd somethingd've:something'd've
something'dve:something'd've somethingll:something'll thats:that's thered:there'd
thered've:there'd've there'dve:there'd've therere:there're theres:there's theyd:they'd
theyd've:they'd've they'dve:they'd've theyll:they'll theyre:they're theyve:they've twas:'twas
wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've werent:weren't whatll:what'll
whatre:what're whats:what's whatve:what've whens:when's whered:where'd wheres:where's
whereve:where've whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll whos:who's
whove:who've whyll:why'll whyre:why're whys:why's wont:won't wouldve:would've wouldnt:wouldn't
wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll
yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've
you'dve:you'd've youll:you'll youre:you're youve:you've
""".split())


def process_punctuation(text: str) -> str:
    """The official punctuation step: drop or space out punctuation, strip stray periods."""
    out = text
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if p + " " in text or " " + p in text or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """The official second step: lower-case, number words to digits, drop articles, contractions."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_prediction(prediction: str) -> str:
    """A predicted answer as the official evaluation compares it."""
    text = prediction.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction against its annotator answers, in [0, 1]."""
    if isinstance(answers, str) or len(answers) == 0:
        raise ValueError(f"vqa_accuracy: answers is {answers!r}; expected a non-empty list of strings")
    pred = normalize_prediction(prediction)
    gts = list(answers)
    if len(set(gts)) > 1:
        gts = [process_punctuation(a) for a in gts]
    matches = [gt == pred for gt in gts]
    total = sum(matches)
    # Leave annotator i out: the others agreeing with the prediction are total - matches[i].
    return sum(min(1.0, (total - m) / 3.0) for m in matches) / len(gts)


def exact_match(prediction: str, answer: str, scorer: str = "exact_match") -> float:
    """1.0 when the strings are equal after lower-casing and stripping both, else 0.0; errors name `scorer`."""
    for name, value in (("prediction", prediction), ("answer", answer)):
        if not isinstance(value, str):
            raise ValueError(f"{scorer}: {name} is {value!r}; expected a string")
    return float(prediction.strip().lower() == answer.strip().lower())


def gqa_accuracy(prediction: str, answer: str) -> float:
    """GQA exact match, 1.0 or 0.0, after lower-casing and stripping both strings."""
    return exact_match(prediction, answer, "gqa_accuracy")


def annotator_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The fraction of annotator answers that the prediction matches exactly (lower-cased, stripped)."""
    if isinstance(answers, str) or len(answers) == 0:
        raise ValueError(f"annotator_accuracy: answers is {answers!r}; expected a non-empty list of strings")
    return sum(exact_match(prediction, a, "annotator_accuracy") for a in answers) / len(answers)


def accuracy_by_type(records: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Mean score per question type, plus "overall" = mean over all records."""
    totals: dict[str, float] = {}
    counts: Counter[str] = Counter()
    overall = 0.0
    for i, record in enumerate(records):
        if not isinstance(record, tuple) or len(record) != 2:
            raise ValueError(f"accuracy_by_type: records[{i}] is {record!r}; expected a (type, score) pair")
        qtype, score = record
        if not isinstance(qtype, str) or not qtype or qtype == "overall":
            raise ValueError(f"accuracy_by_type: records[{i}] has type {qtype!r}; "
                             "expected a non-empty string other than 'overall'")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
            raise ValueError(f"accuracy_by_type: records[{i}] has score {score!r}; expected a number in [0, 1]")
        totals[qtype] = totals.get(qtype, 0.0) + float(score)
        counts[qtype] += 1
        overall += float(score)
    n = sum(counts.values())
    if n == 0:
        raise ValueError("accuracy_by_type: records is empty; expected at least one (type, score) pair")
    result = {qtype: totals[qtype] / counts[qtype] for qtype in sorted(totals)}
    result["overall"] = overall / n
    return result


_PUNCT_DELETE = str.maketrans("", "", string.punctuation)


def caption_tokens(text: str) -> list[str]:
    """CIDEr-D tokens: lower-cased, punctuation deleted, split on whitespace."""
    return text.lower().translate(_PUNCT_DELETE).split()


def _ngram_counts(tokens: Sequence[str], n: int) -> list[Counter[tuple[str, ...]]]:
    """Counts of the n-grams of each order 1..n (index k holds order k + 1)."""
    return [Counter(tuple(tokens[i:i + k]) for i in range(len(tokens) - k + 1)) for k in range(1, n + 1)]


def _tfidf(counts: list[Counter[tuple[str, ...]]], df: Counter[tuple[str, ...]], log_n: float
           ) -> tuple[list[dict[tuple[str, ...], float]], list[float]]:
    """Per-order tf-idf vectors and their Euclidean norms."""
    vecs = [{g: c * (log_n - math.log(max(1.0, df[g]))) for g, c in order.items()} for order in counts]
    return vecs, [math.sqrt(sum(v * v for v in vec.values())) for vec in vecs]


def _check_cider_settings(n: int, sigma: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"cider_d: n is {n!r}; expected a positive integer n-gram order")
    if not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"cider_d: sigma is {sigma!r}; expected a positive finite number")


def _check_references(cid: str, refs: Sequence[str]) -> None:
    if isinstance(refs, str) or len(refs) == 0 or not all(isinstance(r, str) for r in refs):
        raise ValueError(f"cider_d: references[{cid!r}] is {refs!r}; expected a non-empty list of strings")


class CiderD:
    """CIDEr-D with document frequencies fixed by one corpus of references; scores one caption at a time."""

    def __init__(self, references: Mapping[str, Sequence[str]], n: int = 4, sigma: float = 6.0) -> None:
        _check_cider_settings(n, sigma)
        if not references:
            raise ValueError("cider_d: references is empty; expected at least one id -> list of captions")
        for cid, refs in references.items():
            _check_references(cid, refs)
        self.n, self.sigma = n, sigma
        self._ref_tokens = {i: [caption_tokens(r) for r in refs] for i, refs in references.items()}
        self._ref_counts = {i: [_ngram_counts(t, n) for t in tokens] for i, tokens in self._ref_tokens.items()}
        self._df: Counter[tuple[str, ...]] = Counter()
        for counts_of_refs in self._ref_counts.values():
            self._df.update({g for counts in counts_of_refs for order in counts for g in order})
        self._log_n = math.log(max(1.0, float(len(references))))

    def __contains__(self, cid: str) -> bool:
        return cid in self._ref_tokens

    def score(self, cid: str, candidate: str) -> float:
        """CIDEr-D of one candidate caption against the references of id `cid`."""
        if not isinstance(candidate, str):
            raise ValueError(f"cider_d: candidates[{cid!r}] is {candidate!r}; expected one caption string")
        if cid not in self._ref_tokens:
            raise ValueError(f"cider_d: candidate id {cid!r} is missing from references; "
                             "expected references for every candidate id")
        n, sigma = self.n, self.sigma
        cand_tokens = caption_tokens(candidate)
        cand_vecs, cand_norms = _tfidf(_ngram_counts(cand_tokens, n), self._df, self._log_n)
        total = 0.0
        for tokens, counts in zip(self._ref_tokens[cid], self._ref_counts[cid]):
            ref_vecs, ref_norms = _tfidf(counts, self._df, self._log_n)
            penalty = math.exp(-((len(cand_tokens) - len(tokens)) ** 2) / (2.0 * sigma ** 2))
            for k in range(n):
                dot = sum(min(v, ref_vecs[k].get(g, 0.0)) * ref_vecs[k].get(g, 0.0)
                          for g, v in cand_vecs[k].items())
                if cand_norms[k] > 0 and ref_norms[k] > 0:
                    dot /= cand_norms[k] * ref_norms[k]
                total += dot * penalty
        return 10.0 * total / (n * len(self._ref_tokens[cid]))


def cider_d(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]], n: int = 4,
            sigma: float = 6.0) -> tuple[float, dict[str, float]]:
    """CIDEr-D corpus score (mean over ids) and per-id scores; see the module docstring."""
    _check_cider_settings(n, sigma)
    if not candidates:
        raise ValueError("cider_d: candidates is empty; expected at least one id -> caption")
    for cid, caption in candidates.items():
        if not isinstance(caption, str):
            raise ValueError(f"cider_d: candidates[{cid!r}] is {caption!r}; expected one caption string")
        if cid not in references:
            raise ValueError(f"cider_d: candidate id {cid!r} is missing from references; "
                             "expected references for every candidate id")
    scorer = CiderD({cid: references[cid] for cid in candidates}, n, sigma)
    scores = {cid: scorer.score(cid, caption) for cid, caption in candidates.items()}
    return sum(scores.values()) / len(scores), scores
