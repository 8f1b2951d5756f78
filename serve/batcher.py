"""Dynamic batching: checked requests wait in an asyncio queue; one worker takes up to `max_batch` of them (or what
arrived within `max_wait_ms` of the first) and answers them with one `SafePipeline.answer` call on a single
dedicated thread, so the model is never used by two threads at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from serve.metrics import Metrics
from stage_a.pipeline import Request

log = logging.getLogger(__name__)


class BatchFailed(RuntimeError):
    """The model call answering a request's batch raised; the message names the original error."""


@dataclass
class Pending:
    """A queued request and the future its handler awaits: (result, size of its generate batch)."""

    request: Request
    future: asyncio.Future


def generate_keys(requests: list[Request], results: list[dict], one_call: bool) -> list[int]:
    """Per request, a key of the generate call that answered it: one call for the whole batch (`one_call`), or, with
    prefix fusion, one call per k: the requested k or, where the policy chose ("auto"), the chosen one (no audio: 0)."""
    if one_call:
        return [0] * len(requests)
    return [r.k if r.k is not None else result["action"]["k"] for r, result in zip(requests, results)]


class Batcher:
    """Collects queued requests into batches and answers them on one model thread."""

    def __init__(self, answer: Callable[[list[Request]], list[dict]], max_batch: int, max_wait_ms: float,
                 metrics: Metrics, one_call: bool = True) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch {max_batch}, max_wait_ms {max_wait_ms}; expected >= 1 and >= 0")
        self.answer, self.max_batch, self.max_wait = answer, max_batch, max_wait_ms / 1000.0
        self.metrics, self.one_call = metrics, one_call
        self.waiting = 0  # submitted and not yet handed to the model
        self._queue: asyncio.Queue[Pending] | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="safe-model")

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="safe-batcher")

    async def stop(self) -> None:
        """Answer everything queued, then stop the worker and the model thread."""
        assert self._queue is not None and self._worker is not None, "Batcher.stop() before start()"
        await self._queue.join()
        self._worker.cancel()
        await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, request: Request) -> tuple[dict, int]:
        """Queue a checked request; its result and the size of the generate batch it was answered in."""
        assert self._queue is not None, "Batcher.submit() before start()"
        future = asyncio.get_running_loop().create_future()
        self.waiting += 1
        await self._queue.put(Pending(request, future))
        return await future

    async def _collect(self) -> list[Pending]:
        """The next batch: the first queued request, then more until max_batch or max_wait after the first."""
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self.waiting -= len(batch)
            requests = [p.request for p in batch]
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.answer, requests)
                if len(results) != len(requests):
                    raise RuntimeError(f"the pipeline returned {len(results)} results for {len(requests)} requests")
                keys = generate_keys(requests, results, self.one_call)
                groups = Counter(keys)
            except Exception as err:  # answered as a named 500 per request and counted in /metrics
                log.exception("batch of %d requests failed", len(batch))
                self.metrics.batch_error(type(err).__name__)
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(BatchFailed(f"{type(err).__name__}: {err}"))
                    self._queue.task_done()
                continue
            for size in groups.values():
                self.metrics.batch_size.observe(size)
            for pending, result, key in zip(batch, results, keys):
                self.metrics.action(result["action"]["audio"], result["action"]["k"])
                if not pending.future.done():
                    pending.future.set_result((result, groups[key]))
                self._queue.task_done()
            log.debug("batch of %d requests answered in %.1f ms; generate calls (k: requests) %s", len(batch),
                      1000.0 * (time.perf_counter() - start), dict(sorted(groups.items())))
