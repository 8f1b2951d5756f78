"""Latency percentiles of a set of choices: p50 and p95, what a deployment watches rather than the mean.

The samples are the latencies of the chosen action on each question, charged as the policy pays
them (`OutcomeTable.charged_latency_samples`). A table that keeps its timed repeats
(`latency_repeats_ms`, R per cell) gives R samples per question, so the percentiles are over
questions x repeats: the spread between questions and the run-to-run noise of the machine, every
question weighted alike (`source` "repeats"); an older table gives one sample per question, its
median over repeats (`source` "median"). Percentiles use numpy's default linear interpolation.
The table times batches (a batch's wall time divided by its questions), so these are percentiles
of batch-amortised latency, not of a single request served alone (stage_b-live measures that).
"""

from __future__ import annotations

import numpy as np

from envs.outcome_table import OutcomeTable

PERCENTILES = {"latency_p50_ms": 50.0, "latency_p95_ms": 95.0}  # column name -> percentile
SOURCES = {"repeats": "questions x timed repeats", "median": "per-question medians"}  # latency_source -> samples


def latency_source(table: OutcomeTable) -> str:
    """'repeats' when the table keeps its timed repeats, 'median' when it has one latency per cell."""
    return "median" if table.latency_repeats_ms is None else "repeats"


def _percentiles(samples: np.ndarray) -> dict[str, float]:
    values = np.percentile(samples, list(PERCENTILES.values()))
    return {name: float(value) for name, value in zip(PERCENTILES, values)}


def latency_percentiles(table: OutcomeTable, rows: np.ndarray, actions: np.ndarray,
                        confidence: bool = False) -> dict[str, float]:
    """p50 and p95 (ms) over every sample of action `actions[j]` on question `rows[j]`."""
    samples = table.charged_latency_samples(confidence)
    return _percentiles(samples[np.asarray(rows), np.asarray(actions)].astype(np.float64))


def frontier_percentiles(samples: np.ndarray, start: np.ndarray, switch_rows: np.ndarray,
                         switch_actions: np.ndarray) -> dict[str, np.ndarray]:
    """p50 and p95 at every vertex of an oracle frontier over (N, A, R) `samples`.

    `start` is the (N,) choice at vertex 0; vertex v > 0 moves question `switch_rows[v]` to action
    `switch_actions[v]` (stage_b.frontier.oracle_frontier's `switch_row` and `switch_action`; -1 at vertex 0).
    """
    n = samples.shape[0]
    chosen = samples[np.arange(n), start].astype(np.float64)  # (N, R), updated one question per vertex
    out = {name: np.empty(len(switch_rows)) for name in PERCENTILES}
    for vertex, (row, action) in enumerate(zip(switch_rows, switch_actions)):
        if row >= 0:
            chosen[row] = samples[row, action]
        for name, value in _percentiles(chosen).items():
            out[name][vertex] = value
    return out
