"""Generation queue: one worker thread owns the model and batches concurrent requests.

Requests wait in a bounded FIFO; the worker takes the oldest, lets more join for a
short window (longer while other requests are still being retrieved for, see
`expect()`), and runs compatible ones (same adapter) together: with a real
`generator.Generator`, by continuous batching (`Generator.serve`: requests that arrive
while others decode join between two decode steps); with a generator that only has
`generate`, as ONE call per batch of the same adapter and `max_new_tokens`. Streaming
requests run alone, piece by piece. A full queue
raises `QueueFull` (the API answers 503 with Retry-After) instead of piling work on
2 cores. Only the worker touches the generator, so adapter switches never race.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("ragtune.api")


class QueueFull(Exception):
    """The generation queue is at capacity."""


@dataclass
class GenJob:
    """One queued generation."""

    messages: list[dict]
    max_new_tokens: int
    adapter: str | None = None
    on_piece: Callable[[str], None] | None = None
    """Streaming: called from the worker thread with each text piece."""
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.perf_counter)
    score: str | None = None
    """A text of the prompt whose mean log-probability the generation reports (`Generator.generate(score=)`)."""
    ban_first: list[int] | None = None
    """Tokens the answer may not start with (`Generator.generate(ban_first=)`)."""

    @property
    def stream(self) -> bool:
        return self.on_piece is not None

    @property
    def group(self) -> tuple:
        return (self.adapter, self.max_new_tokens)


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    largest_batch: int = 0
    rejected: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Batcher:
    """Bounded queue + single worker thread around a `generator.Generator`.

    Args:
        generator: object with `generate(prompts, **overrides) -> list[Generation]`,
            `stream(messages, **overrides) -> Iterator[str]` and `.last_generation`.
        select_adapter: called in the worker with the adapter name (or None) before a batch,
            to load it on first use; the batch then runs with `adapter=name` (the base model
            stays loaded, nothing is reloaded).
        max_batch: most requests per generate call.
        wait_ms: how long the worker waits for a batch to fill.
        queue_size: most requests waiting; more raise QueueFull.
        expect_wait_ms: extra wait while `expect()`-announced requests are still on their way.
    """

    def __init__(self, generator: Any, select_adapter: Callable[[str | None], None] | None = None, *,
                 max_batch: int = 8, wait_ms: float = 15.0, queue_size: int = 32,
                 expect_wait_ms: float = 250.0) -> None:
        self.generator = generator
        self.select_adapter = select_adapter
        self.max_batch, self.queue_size = max_batch, queue_size
        self.wait_s, self.expect_wait_s = wait_ms / 1000.0, expect_wait_ms / 1000.0
        self.stats = BatchStats()
        self._q: collections.deque[GenJob] = collections.deque()
        self._cv = threading.Condition()
        self._incoming = 0
        self._stop = False
        self._thread: threading.Thread | None = None

    # -- client side -------------------------------------------------------------
    def start(self) -> "Batcher":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ragtune-generate", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        with self._cv:
            self._stop = True
            pending = list(self._q)
            self._q.clear()
            self._cv.notify_all()
        for job in pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("server is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def depth(self) -> int:
        return len(self._q)

    def expect(self, delta: int) -> None:
        """Announce (+1) or withdraw (-1) a request that will be submitted soon."""
        with self._cv:
            self._incoming = max(0, self._incoming + delta)
            self._cv.notify_all()

    def check_capacity(self) -> None:
        """Raise QueueFull early, before a request spends time on retrieval."""
        if len(self._q) + self._incoming >= self.queue_size:
            self.stats.rejected += 1
            raise QueueFull(f"generation queue is full ({self.queue_size} waiting)")

    def submit(self, job: GenJob, *, expected: bool = False) -> Future:
        """Queue a job; its future resolves to a `Generation`. Raises QueueFull."""
        with self._cv:
            if expected:
                self._incoming = max(0, self._incoming - 1)
            if self._stop:
                raise RuntimeError("server is shutting down")
            if len(self._q) >= self.queue_size:
                self.stats.rejected += 1
                self._cv.notify_all()
                raise QueueFull(f"generation queue is full ({self.queue_size} waiting)")
            self._q.append(job)
            self._cv.notify_all()
        return job.future

    # -- worker side -------------------------------------------------------------
    def _take_batch(self) -> list[GenJob] | None:
        with self._cv:
            while not self._q and not self._stop:
                self._cv.wait()
            if self._stop:
                return None
            first = self._q.popleft()
            if first.stream:
                return [first]
            batch = [first]
            start = time.perf_counter()
            while len(batch) < self.max_batch and not self._stop:
                # take compatible waiting jobs, oldest first; leave others queued
                for job in list(self._q):
                    if len(batch) >= self.max_batch:
                        break
                    if not job.stream and job.group == first.group:
                        self._q.remove(job)
                        batch.append(job)
                if len(batch) >= self.max_batch:
                    break
                waited = time.perf_counter() - start
                limit = self.expect_wait_s if self._incoming > 0 else self.wait_s
                if waited >= limit:
                    break
                self._cv.wait(limit - waited)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            batch = [j for j in batch if not j.cancelled.is_set() and j.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            try:
                if self.select_adapter is not None:
                    self.select_adapter(batch[0].adapter)
                if batch[0].stream:
                    self._run_stream(batch[0])
                elif not self._serve(batch):
                    extra = {}
                    if any(j.score for j in batch):
                        extra["score"] = [j.score for j in batch]
                    if any(j.ban_first for j in batch):
                        extra["ban_first"] = [j.ban_first for j in batch]
                    gens = self.generator.generate([j.messages for j in batch], adapter=batch[0].adapter,
                                                   max_new_tokens=batch[0].max_new_tokens, **extra)
                    for job, gen in zip(batch, gens):
                        job.future.set_result(gen)
            except BaseException as err:  # noqa: BLE001 - every waiting client must hear about it
                log.exception("generation failed")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)

    def _serve(self, batch: list[GenJob]) -> bool:
        """Continuous batching through `generator.serve` (when it has one): the batch starts
        decoding and waiting jobs with the same adapter join between decode steps, whatever
        their max_new_tokens, until the queue's head is a job it cannot take (a stream, another
        adapter: FIFO order is kept) and the running rows have finished. False = not available."""
        serve = getattr(self.generator, "serve", None)
        if serve is None:
            return False
        from generator.batch import Unsupported

        adapter = batch[0].adapter
        taken = list(batch)
        flying: dict[int, GenJob] = {}  # admitted, not delivered yet

        def take(free: int, idle: bool) -> list:
            out = []
            while taken and len(out) < free:
                out.append(taken.pop(0))
            with self._cv:
                while self._q and len(out) < free and not self._stop:
                    job = self._q[0]
                    if job.stream or job.adapter != adapter:
                        break
                    self._q.popleft()
                    if job.cancelled.is_set() or not job.future.set_running_or_notify_cancel():
                        continue
                    out.append(job)
                    self.stats.requests += 1
            flying.update((id(job), job) for job in out)
            self.stats.largest_batch = max(self.stats.largest_batch, len(flying))
            return [(j.messages, j.max_new_tokens, id(j), j.score, j.ban_first) for j in out]

        def deliver(tag: int, result) -> None:
            job = flying.pop(tag)
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

        try:
            serve(take, deliver, adapter=adapter, batch_size=self.max_batch)
        except Unsupported:
            if flying:  # Generator.serve raises it before taking any job; anything else is a bug
                raise
            return False
        except BaseException as err:
            for job in flying.values():  # the rows that were decoding hear about it too
                if not job.future.done():
                    job.future.set_exception(err)
            raise
        return True

    def _run_stream(self, job: GenJob) -> None:
        pieces = self.generator.stream(job.messages, adapter=job.adapter, max_new_tokens=job.max_new_tokens)
        try:
            for piece in pieces:
                if job.cancelled.is_set():
                    break
                if piece:
                    job.on_piece(piece)
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
        job.future.set_result(getattr(pieces, "generation", None) or getattr(self.generator, "last_generation", None))
