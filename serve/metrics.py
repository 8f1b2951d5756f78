"""The server's counters and histograms, written in the Prometheus text exposition format 0.0.4 by hand.

Every update happens on the server's event loop (handlers, middleware and the batcher resolve there), so no lock
is needed.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Histogram:
    """Cumulative buckets, sum and count of observed values."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = (*buckets, math.inf)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{_number(bound)}"}} {count}' for bound, count in zip(self.bounds, self.counts)]
        return [*out, f"{name}_sum {_number(self.sum)}", f"{name}_count {self.count}"]


class Metrics:
    """What `/metrics` exposes: answers by status code, their latency, generate-batch sizes, actions by k, failed
    batches by error type and the queue depth (read from `queue_depth` at exposition time)."""

    def __init__(self, queue_depth: Callable[[], int]) -> None:
        self.requests: Counter[tuple[tuple[str, str], ...]] = Counter()
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.actions: Counter[tuple[tuple[str, str], ...]] = Counter()
        self.batch_errors: Counter[tuple[tuple[str, str], ...]] = Counter()
        self.queue_depth = queue_depth

    def request_done(self, status: int, seconds: float) -> None:
        """One /v1/answer response sent, with its status code, `seconds` after it was received."""
        self.requests[(("code", str(status)),)] += 1
        self.latency.observe(seconds)

    def action(self, audio: bool, k: int) -> None:
        self.actions[(("audio", str(audio).lower()), ("k", str(k)))] += 1

    def batch_error(self, error: str) -> None:
        self.batch_errors[(("error", error),)] += 1

    def render(self) -> str:
        """The exposition text: HELP and TYPE lines, then the samples of each metric family."""
        families = [
            ("safe_requests_total", "counter", "/v1/answer responses by HTTP status code",
             [f"safe_requests_total{_labels(k)} {v}" for k, v in sorted(self.requests.items())]),
            ("safe_request_latency_seconds", "histogram", "/v1/answer time from receipt to reply",
             self.latency.lines("safe_request_latency_seconds")),
            ("safe_batch_size", "histogram", "requests answered by one generate call",
             self.batch_size.lines("safe_batch_size")),
            ("safe_actions_total", "counter", "answers by action (audio used, k audio tokens)",
             [f"safe_actions_total{_labels(k)} {v}" for k, v in sorted(self.actions.items())]),
            ("safe_batch_errors_total", "counter", "batches whose model call raised, by exception type",
             [f"safe_batch_errors_total{_labels(k)} {v}" for k, v in sorted(self.batch_errors.items())]),
            ("safe_queue_depth", "gauge", "requests accepted and waiting for a model call",
             [f"safe_queue_depth {self.queue_depth()}"]),
        ]
        lines = []
        for name, kind, text, samples in families:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *samples]
        return "\n".join(lines) + "\n"
