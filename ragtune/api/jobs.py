"""Background jobs (index rebuilds): one at a time, progress, summary or error.

A job runs `work(report)` in its own thread; `report(done, total, stage)` updates the
progress a client sees at `GET /v1/jobs/{id}`. Starting a job while another is
running raises `JobConflict` (409). Finished jobs are kept (bounded) so their result
stays readable.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

log = logging.getLogger("ragtune.api")

Report = Callable[[int, int, str], None]


class JobConflict(Exception):
    """Another job of the same kind is still running."""

    def __init__(self, running_id: str) -> None:
        super().__init__(f"a rebuild is already running (job {running_id})")
        self.running_id = running_id


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class JobRecord:
    id: str
    kind: str
    path: str | None = None
    state: str = "queued"
    done: int = 0
    total: int = 0
    stage: str = "queued"
    summary: dict | None = None
    error: str | None = None
    created_at: str = field(default_factory=_now)
    started_at: str | None = None
    finished_at: str | None = None
    _t0: float = 0.0

    def to_dict(self) -> dict:
        fraction = (self.done / self.total) if self.total else (1.0 if self.state == "succeeded" else 0.0)
        elapsed = (time.perf_counter() - self._t0) if self._t0 and self.finished_at is None else None
        return {"id": self.id, "kind": self.kind, "state": self.state, "path": self.path,
                "progress": {"done": self.done, "total": self.total, "stage": self.stage,
                             "fraction": round(min(1.0, fraction), 4),
                             **({"elapsed_s": round(elapsed, 2)} if elapsed is not None else {})},
                "summary": self.summary, "error": self.error, "created_at": self.created_at,
                "started_at": self.started_at, "finished_at": self.finished_at}


class JobManager:
    """Runs at most one job per kind; keeps the last `keep` records."""

    def __init__(self, keep: int = 100) -> None:
        self._jobs: dict[str, JobRecord] = {}
        self._running: dict[str, str] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._keep = keep

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job.to_dict() if job else None

    def running(self, kind: str) -> str | None:
        with self._lock:
            return self._running.get(kind)

    def start(self, kind: str, work: Callable[[Report], dict], path: str | None = None) -> str:
        """Start `work` in a thread; its return value becomes the job summary.

        Raises:
            JobConflict: a job of this kind is running.
        """
        with self._lock:
            if kind in self._running:
                raise JobConflict(self._running[kind])
            job = JobRecord(id=uuid.uuid4().hex[:16], kind=kind, path=path)
            self._jobs[job.id] = job
            self._running[kind] = job.id
            self._trim()
        thread = threading.Thread(target=self._run, args=(job, work), name=f"ragtune-job-{job.id}", daemon=True)
        self._threads[job.id] = thread
        thread.start()
        return job.id

    def wait(self, job_id: str, timeout: float | None = None) -> dict | None:
        """Block until a job finishes (tests, shutdown)."""
        thread = self._threads.get(job_id)
        if thread is not None:
            thread.join(timeout)
        return self.get(job_id)

    def wait_all(self, timeout: float = 60.0) -> None:
        for thread in list(self._threads.values()):
            thread.join(timeout)

    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if j.finished_at is not None]
        for job in finished[: max(0, len(self._jobs) - self._keep)]:
            self._jobs.pop(job.id, None)
            self._threads.pop(job.id, None)

    def _run(self, job: JobRecord, work: Callable[[Report], dict]) -> None:
        def report(done: int, total: int, stage: str) -> None:
            with self._lock:
                job.done, job.total, job.stage = int(done), int(total), str(stage)

        with self._lock:
            job.state, job.stage, job.started_at, job._t0 = "running", "starting", _now(), time.perf_counter()
        try:
            summary = work(report)
            with self._lock:
                job.summary, job.state, job.stage = summary, "succeeded", "done"
        except Exception as err:  # noqa: BLE001 - reported to the client as the job's error
            log.exception("job %s failed", job.id)
            with self._lock:
                job.error, job.state, job.stage = str(err) or type(err).__name__, "failed", "failed"
        finally:
            with self._lock:
                job.finished_at = _now()
                self._running.pop(job.kind, None)
