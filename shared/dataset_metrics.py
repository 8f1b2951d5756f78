"""The metric follows the dataset: a registry keyed by `Sample.source`, and per-dataset summaries.

| source | metric | answers per question | breakdown |
|---|---|---|---|
| world, vqav2 | `vqa_accuracy`: official VQA accuracy | at least 4 (both have 10) | family.qtype (VQAv2: answer type) |
| gqa | `gqa_exact_match`: exact match, GQA's normalisation | exactly 1 | family.qtype (structural type) |
| music_avqa, avqa | `type_accuracy`: exact match, per question type | exactly 1 | family.qtype (modality.type) |
| clotho_aqa | `annotator_accuracy`: share of annotators matched | at least 1 (3 released) | yes_no / single_word |
| audiocaps | `cider_d`: CIDEr-D (corpus metric, per caption) | at least 1 caption | family.qtype |

Why these choices:
- VQA accuracy is min(#matching other annotators / 3, 1) averaged over leave-one-out subsets:
  with one answer it is always 0 and with three it never exceeds 2/3, so fewer than
  `VQA_MIN_ANSWERS` answers is an error naming the dataset and the sample, never a silent 0.
- GQA, MUSIC-AVQA and AVQA have one gold answer; more than one is an error too (the dataset was
  converted wrongly, or the source is mislabelled). GQA's own normalisation is `gqa_accuracy`'s.
- Clotho-AQA: its CSVs hold one row per (question, annotator answer), three per question. The
  authors' reference code (partha2409/AquaNet, the paper's baselines) keeps every row as its own
  target: it splits the rows into a yes/no and a single-word set by each row's answer, upper-cases
  the answer and reports accuracy over rows, so each annotator's answer counts once. Scoring a
  question by the fraction of its annotators' answers the prediction matches exactly (case and
  surrounding space ignored) gives that same figure when every question has three answers, and
  keeps one score per question for CIs and paired tests. Majority voting was not chosen because
  the official figures do not use it. The breakdown is yes/no vs single-word by the question's most
  frequent answer (the official split is per row; the two differ only where annotators disagree).
- AudioCaps captions: CIDEr-D (`shared.metrics.CiderD`) with document frequencies fixed by the
  references of the captions being scored, so each caption has its own score and their mean is
  the corpus score; the CI is a bootstrap over captions with those frequencies held fixed.
  SPIDEr ((CIDEr-D + SPICE) / 2) is not reported: SPICE (pycocoevalcap 1.2's spice-1.0.jar, the
  same jar aac-metrics runs) needs Java, which is here, and the Stanford CoreNLP 3.6.0 jar and
  models, which it downloads from nlp.stanford.edu at first use; no package registry reachable
  here ships them, so SPICE cannot run offline and is not approximated.

What is scored: accuracy metrics score `parse_answer(raw)`; CIDEr-D scores the raw generation,
stripped (parse_answer's yes/no and copula rules are for short answers and would cut captions).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from shared.answers import parse_answer
from shared.data.clotho_aqa import question_type
from shared.data.schema import Sample
from shared.metrics import CiderD, annotator_accuracy, exact_match, gqa_accuracy, vqa_accuracy
from shared.stats import mean_ci

VQA_MIN_ANSWERS = 4  # below 4 annotators a unanimous correct answer cannot score 1


def by_type(record: Mapping) -> str:
    """Breakdown key of most datasets: "family.qtype"."""
    return f"{record['family']}.{record['qtype']}"


def by_answer_kind(record: Mapping) -> str:
    """Clotho-AQA's breakdown: the converter's yes_no / single_word rule applied to the record's answers."""
    return question_type(record["answers"])


@dataclass(frozen=True)
class DatasetMetric:
    """How one dataset is scored: the per-question function, the answers it needs and the breakdown."""

    name: str
    label: str
    min_answers: int
    max_answers: int | None
    accuracy: bool  # per-question scores in [0, 1] that may be averaged with other accuracies
    group: Callable[[Mapping], str]
    score: Callable[[str, Sequence[str]], float] | None  # None: a corpus metric, scored by DatasetScorer

    def format(self, value: float) -> str:
        """A value as tables print it: accuracies in %, CIDEr-D as is."""
        return f"{100 * value:.2f}" if self.accuracy else f"{value:.3f}"

    def answer_rule(self) -> str:
        if self.max_answers == self.min_answers:
            return f"exactly {self.min_answers}"
        return f"at least {self.min_answers}"


def _single(scorer: Callable[[str, str], float]) -> Callable[[str, Sequence[str]], float]:
    return lambda prediction, answers: scorer(prediction, answers[0])


VQA = DatasetMetric("vqa_accuracy", "VQA accuracy", VQA_MIN_ANSWERS, None, True, by_type, vqa_accuracy)
GQA = DatasetMetric("gqa_exact_match", "GQA exact match", 1, 1, True, by_type, _single(gqa_accuracy))
TYPE_ACCURACY = DatasetMetric("type_accuracy", "accuracy (per type)", 1, 1, True, by_type, _single(exact_match))
ANNOTATOR = DatasetMetric("annotator_accuracy", "accuracy (share of annotators)", 1, None, True, by_answer_kind,
                          annotator_accuracy)
CIDER = DatasetMetric("cider_d", "CIDEr-D", 1, None, False, by_type, None)

DATASET_METRICS: dict[str, DatasetMetric] = {
    "world": VQA, "vqav2": VQA, "gqa": GQA, "music_avqa": TYPE_ACCURACY, "avqa": TYPE_ACCURACY,
    "clotho_aqa": ANNOTATOR, "audiocaps": CIDER,
}
METRICS_BY_NAME = {m.name: m for m in DATASET_METRICS.values()}


def metric_for(source: str) -> DatasetMetric:
    """The metric of a dataset, or a ValueError naming the source and the known ones."""
    if source not in DATASET_METRICS:
        raise ValueError(f"dataset (source) {source!r} has no metric; known sources: "
                         f"{', '.join(sorted(DATASET_METRICS))} (shared/dataset_metrics.py DATASET_METRICS)")
    return DATASET_METRICS[source]


def check_sample(sample: Sample) -> DatasetMetric:
    """The sample's metric, after checking that its answers fit it (errors name dataset and sample)."""
    metric = metric_for(sample.source)
    n = len(sample.answers)
    if n < metric.min_answers or (metric.max_answers is not None and n > metric.max_answers):
        why = (" (VQA accuracy needs several annotators: with one answer it is always 0; single-answer "
               "datasets such as gqa use exact match)") if metric is VQA else ""
        raise ValueError(f"dataset {sample.source!r}, sample {sample.id!r}: {n} answer(s) {list(sample.answers)!r}; "
                         f"{metric.name} expects {metric.answer_rule()}{why}")
    if (sample.family == "caption") == metric.accuracy:
        raise ValueError(f"dataset {sample.source!r}, sample {sample.id!r}: family {sample.family!r} cannot be scored "
                         f"with {metric.name}; captions (family 'caption') need a caption metric and questions an "
                         "accuracy (a QA set built on a caption dataset needs its own source in DATASET_METRICS)")
    return metric


class DatasetScorer:
    """Scores each question with its dataset's metric; caption datasets use their references as CIDEr-D's corpus."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        references: dict[str, dict[str, tuple[str, ...]]] = defaultdict(dict)
        for sample in samples:
            if check_sample(sample).score is None:
                references[sample.source][sample.id] = sample.answers
        self._cider = {source: CiderD(refs) for source, refs in references.items()}

    @staticmethod
    def answer(sample: Sample, raw: str) -> str:
        """The text that gets scored: the parsed short answer, or the stripped caption."""
        return parse_answer(raw) if check_sample(sample).accuracy else raw.strip()

    def score(self, sample: Sample, raw: str) -> float:
        """The sample's score for a raw generation, by its dataset's metric."""
        metric = check_sample(sample)
        if metric.score is not None:
            return metric.score(parse_answer(raw), list(sample.answers))
        corpus = self._cider.get(sample.source)
        if corpus is None or sample.id not in corpus:
            raise ValueError(f"dataset {sample.source!r}, sample {sample.id!r} was not in the samples this scorer "
                             "was built from; CIDEr-D needs every scored caption's references in its corpus")
        return corpus.score(sample.id, raw.strip())


def _mean_ci_by(records: Sequence[Mapping], key: Callable[[Mapping], str], field: str) -> dict[str, dict]:
    groups: dict[str, list[float]] = defaultdict(list)
    for record in records:
        groups[key(record)].append(record[field])
    return {name: mean_ci(values) for name, values in sorted(groups.items())}


def dataset_summary(records: Sequence[Mapping]) -> dict[str, dict]:
    """Per dataset (sorted by source): its metric and the SAFE and base values with 95% CIs, overall and per type.

    Records need source, family, qtype, answers, score and base_score (stage_a-eval's predictions)."""
    by_source: dict[str, list[Mapping]] = defaultdict(list)
    for record in records:
        by_source[record["source"]].append(record)
    out = {}
    for source, members in sorted(by_source.items()):
        metric = metric_for(source)
        out[source] = {
            "metric": metric.name, "label": metric.label, "accuracy": metric.accuracy, "n": len(members),
            "value": mean_ci([r["score"] for r in members]), "base": mean_ci([r["base_score"] for r in members]),
            "per_type": _mean_ci_by(members, metric.group, "score"),
            "per_type_base": _mean_ci_by(members, metric.group, "base_score"),
        }
    return out


def format_dataset_summary(per_dataset: Mapping[str, Mapping]) -> str:
    """A table naming each dataset's metric, SAFE's value with its 95% CI and the base's value."""
    lines = [f"{'dataset':<12} {'metric':<32} {'n':>6} {'SAFE':>8} {'95% CI':>19} {'base':>8}"]
    for source, entry in per_dataset.items():
        metric = METRICS_BY_NAME[entry["metric"]]
        lo, hi = entry["value"]["ci95"]
        lines.append(f"{source:<12} {metric.label:<32} {entry['n']:>6} {metric.format(entry['value']['mean']):>8} "
                     f"[{metric.format(lo):>7}, {metric.format(hi):>7}] {metric.format(entry['base']['mean']):>8}")
    return "\n".join(lines)
