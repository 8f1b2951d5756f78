"""`stage_b-join TABLE TABLE [...] --out J`: one outcome table whose audio actions go through several bridges.

Each input is a table `stage_b-outcomes` wrote for one Stage A run (one bridge on one frozen encoder, on the same
frozen base) over the same split. The joined table's actions are no audio, then every input's audio actions in input
order, named `<encoder>-k<k>` (envs.outcome_table `action_names`): e.g. none, clap-k4, clap-k8, clap-k16,
whisper-k4, whisper-k8, whisper-k16, so a policy chooses per question whether to use audio, through which encoder
and with how many tokens. An input's encoder is its run's `model.audio_encoder`, read from the preset and overrides in
its provenance as stage_b-live rebuilds the model; two inputs of the same encoder are refused.

The inputs must describe the same questions and the same no-audio answers, else the join is refused in one line
naming the first offending question:
- the same split and the same ids in the same order (then family and question type agree too);
- the no-audio column is the frozen base in every input: its scores and the prompts' `text_tokens` must be identical,
  its GFLOPs, `confidence` and the pre-decision `features` equal within FLOAT_RTOL (one model, one batching: in
  practice bit-identical); its latency is a timing, so it differs by noise, and the first input's is kept;
- the same number of timed repeats (`latency_repeats_ms`), or none in every input.
The joined table keeps the first input's no-audio column, features and confidence. Its provenance records per input
(`joined`) the encoder, table path, the table file's SHA-256 and its whole provenance (checkpoint and its hash
included), and `checkpoint_hash` "<encoder>:<hash>+<encoder>:<hash>": stage_b-eval's check that an evaluation table
comes from the policy's checkpoints compares both bridges. Live mode (`stage_b-live`) and serving
(stage_b.chooser) run one bridge, so they refuse a joined table by name.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from envs.outcome_table import NO_AUDIO, OutcomeTable
from shared.cli import (
    ArgumentParser,
    InputError,
    add_overwrite_flag,
    check_keys,
    console,
    refuse_overwrite,
)
from shared.config import load_config
from shared.loading import file_sha256
from shared.logs import setup_logging
from stage_a.config import TrainConfig

log = logging.getLogger(__name__)

FLOAT_RTOL = 1e-5  # no-audio GFLOPs, confidence and features: the same model on the same prompts
PER_ACTION = ("score", "gflops", "latency_ms")


def _first_difference(ids: np.ndarray, a: np.ndarray, b: np.ndarray, exact: bool) -> int | None:
    """The first row where per-row values `a` and `b` differ (exactly, or beyond FLOAT_RTOL), or None."""
    a, b = a.reshape(len(ids), -1), b.reshape(len(ids), -1)
    same = (a == b) if exact else np.isclose(a, b, rtol=FLOAT_RTOL, atol=0)
    bad = np.flatnonzero(~same.all(axis=1))
    return int(bad[0]) if bad.size else None


def check_joinable(first: tuple[str, OutcomeTable], other: tuple[str, OutcomeTable]) -> None:
    """A ValueError naming the first question, field and values where `other` cannot join `first` (module docstring)."""
    (name_a, a), (name_b, b) = first, other
    for table, name in ((a, name_a), (b, name_b)):
        if table.action_names is not None:
            raise ValueError(f"table {name} already names its actions {table.action_labels}; expected tables "
                             "written by stage_b-outcomes (one bridge each)")
    split_a, split_b = a.provenance.get("split"), b.provenance.get("split")
    if split_a != split_b:
        raise ValueError(f"table {name_a} is of split {split_a!r}, {name_b} of {split_b!r}; expected one split")
    if a.n_rows != b.n_rows or not np.array_equal(a.ids, b.ids):
        n = min(a.n_rows, b.n_rows)
        row = next((i for i in range(n) if a.ids[i] != b.ids[i]), n)
        found = (f"{str(a.ids[row])!r} in {name_a}" if row < a.n_rows else f"no row in {name_a}",
                 f"{str(b.ids[row])!r} in {name_b}" if row < b.n_rows else f"no row in {name_b}")
        raise ValueError(f"the tables' question ids differ first at row {row}: {found[0]}, {found[1]} "
                         f"({a.n_rows} and {b.n_rows} rows); expected the same ids in the same order")
    checks = [("no-audio score", a.score[:, 0], b.score[:, 0], True),
              ("family", a.family, b.family, True), ("qtype", a.qtype, b.qtype, True),
              ("no-audio gflops", a.gflops[:, 0], b.gflops[:, 0], False),
              ("feature row", a.features, b.features, False)]
    for field in ("text_tokens", "confidence"):
        values = getattr(a, field), getattr(b, field)
        if (values[0] is None) != (values[1] is None):
            lacking, having = (name_a, name_b) if values[0] is None else (name_b, name_a)
            raise ValueError(f"table {lacking} has no {field!r} column and table {having} has one; rebuild it with "
                             "stage_b-outcomes")
        if values[0] is not None:
            checks.append((field, *values, field == "text_tokens"))
    for label, values_a, values_b, exact in checks:
        row = _first_difference(a.ids, values_a, values_b, exact)
        if row is not None:
            shown = (values_a.reshape(a.n_rows, -1)[row][:4].tolist(), values_b.reshape(a.n_rows, -1)[row][:4].tolist())
            raise ValueError(f"the {label} differs at question {str(a.ids[row])!r} (row {row}): {shown[0]} in "
                             f"{name_a}, {shown[1]} in {name_b}; expected the same frozen base and questions in both "
                             "tables")
    repeats = [None if t.latency_repeats_ms is None else t.latency_repeats_ms.shape[2] for t in (a, b)]
    if repeats[0] != repeats[1]:
        raise ValueError(f"table {name_a} has {repeats[0]} timed repeats per cell, {name_b} {repeats[1]} "
                         "(None: no latency_repeats_ms); rebuild them with the same stage_b-outcomes --repeats")


def join_tables(tables: Sequence[tuple[str, OutcomeTable]], sources: Sequence[dict] | None = None) -> OutcomeTable:
    """One table of no audio plus every table's audio actions, named `<encoder>-k<k>`; `tables` are (encoder,
    table) pairs, checked pairwise against the first (`check_joinable`); `sources` (one dict per table, e.g. its
    path and SHA-256) go into the provenance's `joined` records."""
    encoders = [encoder for encoder, _ in tables]
    if len(tables) < 2 or len(set(encoders)) != len(encoders):
        raise ValueError(f"the tables' encoders are {encoders}; expected two or more distinct encoders")
    for other in tables[1:]:
        check_joinable(tables[0], other)
    first = tables[0][1]
    names = [NO_AUDIO] + [f"{encoder}-k{k}" for encoder, table in tables for k in table.actions[1:].tolist()]
    columns = {key: np.concatenate([getattr(first, key)[:, :1], *(getattr(t, key)[:, 1:] for _, t in tables)], axis=1)
               for key in PER_ACTION}
    repeats = None if first.latency_repeats_ms is None else np.concatenate(
        [first.latency_repeats_ms[:, :1], *(t.latency_repeats_ms[:, 1:] for _, t in tables)], axis=1)
    actions = np.concatenate([[0], *(t.actions[1:] for _, t in tables)]).astype(np.int64)
    joined = [{"encoder": encoder, **(sources[i] if sources else {}), "provenance": table.provenance}
              for i, (encoder, table) in enumerate(tables)]
    provenance = {"joined": joined, "no_audio_from": encoders[0], "split": first.provenance.get("split"),
                  "checkpoint_hash": "+".join(f"{e}:{t.provenance.get('checkpoint_hash')}" for e, t in tables),
                  "actions": actions.tolist(), "action_names": names, "features": first.provenance.get("features")}
    return OutcomeTable(ids=first.ids, family=first.family, qtype=first.qtype, actions=actions, features=first.features,
                        provenance=provenance, confidence=first.confidence, latency_repeats_ms=repeats,
                        text_tokens=first.text_tokens, action_names=np.array(names), **columns)


def table_encoder(table: OutcomeTable, path: Path) -> str:
    """The encoder of the run behind a stage_b-outcomes table: `model.audio_encoder` of its preset and overrides."""
    provenance = check_keys(f"the provenance of outcome table {path}", table.provenance, ("preset",))
    return load_config(TrainConfig, provenance["preset"], provenance.get("overrides", {})).model.audio_encoder


def join_files(paths: Sequence[Path]) -> OutcomeTable:
    """`join_tables` of the outcome tables at `paths`, each named by its run's encoder (`table_encoder`)."""
    tables = [(path, OutcomeTable.load(path)) for path in paths]
    named = [(table_encoder(table, path), table) for path, table in tables]
    encoders = [encoder for encoder, _ in named]
    if len(set(encoders)) != len(encoders):
        raise InputError(f"the tables {[str(p) for p in paths]} come from runs of encoders {encoders}; expected one "
                         "table per encoder")
    sources = [{"table": str(path.resolve()), "table_sha256": file_sha256(path)} for path in paths]
    try:
        return join_tables(named, sources)
    except ValueError as err:
        by_name = {encoder: str(path) for encoder, path in zip(encoders, paths)}
        raise InputError(f"{err} (tables: {by_name})") from err


@console("stage_b-join")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="stage_b-join", description=__doc__.splitlines()[0])
    parser.add_argument("tables", type=Path, nargs="+", help="outcome tables of one split from stage_b-outcomes, "
                                                             "one per encoder (the first gives the no-audio column)")
    parser.add_argument("--out", type=Path, required=True, help="the joined table (.npz)")
    add_overwrite_flag(parser, "the joined table")
    args = parser.parse_args(argv)
    setup_logging()
    refuse_overwrite(args.out, args.overwrite)
    table = join_files(args.tables)
    table.save(args.out)
    log.info("joined %d tables into %s", len(args.tables), args.out)
    print(json.dumps({"table": str(args.out), "rows": table.n_rows, "actions": table.action_labels,
                      "mean_score": table.score.mean(0).round(4).tolist(),
                      "mean_gflops": table.gflops.mean(0).round(4).tolist(),
                      "checkpoint_hash": table.provenance["checkpoint_hash"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
