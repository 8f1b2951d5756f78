"""A Markdown report of one Stage A evaluation: where SAFE's audio helps, where it hurts, and how k matters.

summary.json and the printed summary say *how much* SAFE gains over the base model; they cannot say
*where*. This report reads the per-question prediction records of the evaluation (SAFE's answer and
the base model's answer, without audio, on the same question) and lays out what a reader needs to
trust or doubt those numbers: example predictions per question type, per-type counts of questions
that audio fixed or broke, a confusion table for counting questions (where an off-by-one is
invisible in an accuracy figure), and accuracy against the number of audio tokens k.

Each question was scored by its dataset's metric (`shared.dataset_metrics`); the report opens with
one row per dataset naming that metric with SAFE's and the base's value. The accuracy sections
that follow cover the questions of accuracy-type datasets; caption datasets (CIDEr-D) appear in
the per-dataset table only.

Everything is deterministic (records are taken in id order) so a report rebuilt from the same
predictions is identical.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from shared.data.schema import FAMILIES as SCHEMA_FAMILIES
from shared.dataset_metrics import METRICS_BY_NAME, dataset_summary, metric_for
from shared.metrics import CORRECT, normalize_prediction

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("id", "question", "answers", "family", "qtype", "source", "metric", "k", "gate", "raw", "answer",
                 "score", "base_raw", "base_answer", "base_score")
FAMILIES = ("visual", "audio", "audio_visual")
EFFECT_EXAMPLES = 3
REPORT_FILE = "report.md"
PLOT_FILE = "accuracy_vs_k.png"


def _validated(records: list[dict], source: str) -> list[dict]:
    """The records sorted by id, or a ValueError naming the first bad record and what is wrong."""
    if not records:
        raise ValueError(f"{source}: no prediction records; expected at least one")
    for i, record in enumerate(records):
        record_id = record.get("id", f"<record {i}, no id>")
        missing = [key for key in REQUIRED_KEYS if key not in record]
        if missing:
            raise ValueError(f"{source}: record id {record_id!r} is missing key(s) {', '.join(map(repr, missing))}; "
                             f"expected all of {', '.join(REQUIRED_KEYS)}")
        if record["family"] not in SCHEMA_FAMILIES:
            raise ValueError(f"{source}: record id {record_id!r} has family {record['family']!r}; "
                             f"expected one of {', '.join(SCHEMA_FAMILIES)}")
        expected = metric_for(record["source"]).name
        if record["metric"] != expected:
            raise ValueError(f"{source}: record id {record_id!r} of dataset {record['source']!r} has metric "
                             f"{record['metric']!r}; expected {expected!r}, the dataset's metric")
        if not record["answers"]:
            raise ValueError(f"{source}: record id {record_id!r} has an empty 'answers' list; "
                             "expected at least one gold answer")
    return sorted(records, key=lambda r: str(r["id"]))


def _cell(value: object) -> str:
    """Table cell text: one line, with `|` escaped so it cannot split the cell."""
    return str(value).replace("\r", " ").replace("\n", " ").replace("|", "\\|")


def _table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> list[str]:
    """Lines of a Markdown table, followed by a blank line."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _gold(record: dict) -> str:
    """The most frequent gold answer (the first listed among equally frequent ones)."""
    return Counter(record["answers"]).most_common(1)[0][0]


def _qtype(record: dict) -> str:
    return f"{record['family']}.{record['qtype']}"


def _grouped(records: Iterable[dict], key: Callable[[dict], str]) -> dict[str, list[dict]]:
    """Records by key, keys sorted, each group keeping the records' order."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        groups[key(record)].append(record)
    return dict(sorted(groups.items()))


def _accuracy_row(name: str, records: list[dict]) -> tuple[object, ...]:
    safe, base = _mean([r["score"] for r in records]), _mean([r["base_score"] for r in records])
    return name, len(records), _pct(safe), _pct(base), f"{100 * (safe - base):+.2f}"


def _overview(predictions: list[dict]) -> list[str]:
    by_family = _grouped(predictions, lambda r: r["family"])
    rows = [_accuracy_row("all", predictions)]
    rows += [_accuracy_row(family, by_family[family]) for family in FAMILIES if family in by_family]
    return ["## Overview", "", *_table(("subset", "questions", "SAFE acc (%)", "base acc (%)", "change (pts)"), rows)]


def _datasets(predictions: list[dict]) -> list[str]:
    """One row per dataset: the metric it is scored by, SAFE's value with its 95% CI, and the base's value."""
    rows = []
    for name, entry in dataset_summary(predictions).items():
        metric = METRICS_BY_NAME[entry["metric"]]
        lo, hi = entry["value"]["ci95"]
        rows.append((name, metric.label, entry["n"], metric.format(entry["value"]["mean"]),
                     f"[{metric.format(lo)}, {metric.format(hi)}]", metric.format(entry["base"]["mean"])))
    return ["## Metric per dataset", "", "Each dataset is scored by its own metric; accuracies in %.", "",
            *_table(("dataset", "metric", "questions", "SAFE", "95% CI", "base"), rows)]


def _accuracy_only(records: list[dict]) -> list[dict]:
    """The records of accuracy-type datasets (caption metrics are not accuracies)."""
    return [r for r in records if METRICS_BY_NAME[r["metric"]].accuracy]


def _examples(predictions: list[dict], per_type: int) -> list[str]:
    lines = ["## Example predictions", "",
             f"Per question type, the first {per_type} correct (score >= {CORRECT}) and the first {per_type} "
             "incorrect questions by id. Gold is the most frequent annotator answer.", ""]
    header = ("id", "correct", "question", "gold", "SAFE", "SAFE score", "base", "base score")
    for name, members in _grouped(predictions, _qtype).items():
        correct = [r for r in members if r["score"] >= CORRECT][:per_type]
        wrong = [r for r in members if r["score"] < CORRECT][:per_type]
        rows = [(r["id"], "yes" if r["score"] >= CORRECT else "no", r["question"], _gold(r), r["answer"],
                 f"{r['score']:.2f}", r["base_answer"], f"{r['base_score']:.2f}") for r in correct + wrong]
        lines += [f"### {name}", "", *_table(header, rows)]
    return lines


def _effects(predictions: list[dict]) -> list[str]:
    """Per type: questions where SAFE scores above, equal to and below the base model, with examples."""
    rows, examples = [], []
    for name, members in _grouped(predictions, _qtype).items():
        helps = [r for r in members if r["score"] > r["base_score"]]
        hurts = [r for r in members if r["score"] < r["base_score"]]
        net = _mean([r["score"] - r["base_score"] for r in members])
        rows.append((name, len(members), len(helps), len(members) - len(helps) - len(hurts), len(hurts),
                     f"{100 * net:+.2f}"))
        examples += [(name, effect, r["id"], r["question"], _gold(r), r["answer"], r["base_answer"])
                     for effect, group in (("helps", helps), ("hurts", hurts)) for r in group[:EFFECT_EXAMPLES]]
    lines = ["## Where audio helps and where it hurts", "",
             "SAFE against the base model without audio on the same questions: helps = SAFE scores higher, "
             "hurts = SAFE scores lower; net change is the accuracy difference in points.", "",
             *_table(("type", "questions", "helps", "ties", "hurts", "net change (pts)"), rows),
             f"### Examples (up to {EFFECT_EXAMPLES} of each, by id)", ""]
    if not examples:
        return lines + ["SAFE and the base model score the same on every question.", ""]
    return lines + _table(("type", "effect", "id", "question", "gold", "SAFE", "base"), examples)


def _label_key(label: str) -> tuple[int, int, str]:
    """Sort numbers numerically ("2" before "10"), then other answers alphabetically."""
    return (0, int(label), "") if label.isdigit() else (1, 0, label)


def _confusion(runs: dict[str, list[dict]], count_qtypes: tuple[str, ...]) -> list[str]:
    lines = ["## Counting confusion", "",
             f"Question types {', '.join(count_qtypes)}: rows are the gold answer (most frequent), columns SAFE's "
             "answer, both normalised as the VQA evaluation normalises predictions; cells count questions.", ""]
    for label, records in runs.items():
        counts = Counter((normalize_prediction(_gold(r)), normalize_prediction(r["answer"]))
                         for r in records if r["qtype"] in count_qtypes)
        lines += [f"### {label}", ""]
        if not counts:
            lines += ["No counting questions.", ""]
            continue
        golds = sorted({gold for gold, _ in counts}, key=_label_key)
        predicted = sorted({pred for _, pred in counts}, key=_label_key)
        rows = [(gold or "(empty)", *(counts[gold, pred] for pred in predicted)) for gold in golds]
        lines += _table(("gold \\ predicted", *(pred or "(empty)" for pred in predicted)), rows)
    return lines


def _plot(accuracy: dict[int, dict[str, float]], families: list[str], path: Path) -> None:
    """accuracy_vs_k.png: one line per family, accuracy (%) against k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for family in families:
            ks = [k for k in sorted(accuracy) if family in accuracy[k]]
            ax.plot(ks, [100 * accuracy[k][family] for k in ks], marker="o", label=family)
        ax.set_xlabel("k (audio tokens)")
        ax.set_ylabel("SAFE accuracy (%)")
        ax.set_title("Accuracy vs k")
        ax.set_xticks(sorted(accuracy))
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def _accuracy_vs_k(by_k: dict[int, list[dict]] | None, out_dir: Path) -> list[str]:
    lines = ["## Accuracy vs k", ""]
    if by_k is None:
        return lines + ["No evaluation at several k was given.", ""]
    accuracy: dict[int, dict[str, float]] = {}
    for k in sorted(by_k):
        by_family = _grouped(by_k[k], lambda r: r["family"])
        accuracy[k] = {family: _mean([r["score"] for r in members]) for family, members in by_family.items()}
        accuracy[k]["all"] = _mean([r["score"] for r in by_k[k]])
    families = [f for f in FAMILIES if any(f in acc for acc in accuracy.values())]
    rows = [(k, *(_pct(acc[f]) if f in acc else "-" for f in (*families, "all"))) for k, acc in accuracy.items()]
    lines += ["SAFE accuracy (%) of the same questions evaluated at each k.", "",
              *_table(("k", *families, "all"), rows)]
    if len(accuracy) >= 2:
        _plot(accuracy, families, out_dir / PLOT_FILE)
        lines += [f"![accuracy vs k]({PLOT_FILE})", ""]
    return lines


def write_report(predictions: list[dict], by_k: dict[int, list[dict]] | None, out_dir: Path,
                 examples_per_type: int = 3, count_qtypes: tuple[str, ...] = ("repeats", "count")) -> Path:
    """Write out_dir/report.md (and accuracy_vs_k.png when by_k has two or more k); returns the report path."""
    if examples_per_type < 0:
        raise ValueError(f"examples_per_type is {examples_per_type}; expected a count >= 0")
    predictions = _validated(predictions, "predictions")
    if by_k is not None:
        if not by_k:
            raise ValueError("by_k is empty; expected at least one k, or None when there is no evaluation by k")
        by_k = {k: _validated(records, f"by_k[{k}]") for k, records in sorted(by_k.items())}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Stage A evaluation report", "", *_datasets(predictions)]
    accuracy = _accuracy_only(predictions)
    if accuracy:
        by_k = {k: _accuracy_only(records) for k, records in by_k.items()} if by_k is not None else None
        runs = ({f"k = {k}": records for k, records in by_k.items()} if by_k is not None
                else {"main predictions": accuracy})
        lines += [*_overview(accuracy), *_examples(accuracy, examples_per_type), *_effects(accuracy),
                  *_confusion(runs, count_qtypes), *_accuracy_vs_k(by_k, out_dir)]
    else:
        lines += ["No question is scored by an accuracy metric, so there are no accuracy sections.", ""]
    path = out_dir / REPORT_FILE
    path.write_text("\n".join(lines), encoding="utf-8")
    logger.info("wrote %s (%d questions)", path, len(predictions))
    return path
