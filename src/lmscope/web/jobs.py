"""Long studio work as jobs: started by one request, watched and cancelled by others.

    POST   /api/jobs/<endpoint>   the body of POST /api/<endpoint>; answers 202 {"id", "state", ...} at once
    GET    /api/jobs/<id>         {"id", "endpoint", "state", "progress": [bars], "seconds", "result" | "error"}
    DELETE /api/jobs/<id>         cancel: a waiting job leaves the queue, a running one stops at its next
                                  step or forward (`engine.progress`)
    GET    /api/jobs              every job this session still holds, without results

A job runs on the same model worker as a plain request, in arrival order, inside
`engine.progress.tracking(...)`: every family loop written with `progress.steps` reports to
it, so the page shows "sweep 5/24 · generation 2/4" and a Cancel button that works. States:
waiting -> running -> done | error | cancelled. The last `keep` finished jobs are kept (a
result is fetched once the page sees "done"; older ones are dropped, oldest first).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from lmscope.engine.progress import Cancelled, Tracker, tracking

from .worker import Worker

log = logging.getLogger(__name__)

#: Finished jobs kept for their results.
KEEP = 32


class UnknownJob(LookupError):
    """No job has this id (never started, or dropped from the finished ones): HTTP 404."""


@dataclass
class Job:
    id: str
    endpoint: str
    tracker: Tracker = field(default_factory=Tracker)
    state: str = "waiting"  # waiting | running | done | error | cancelled
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: Any = None
    error: dict | None = None  # {"status": HTTP status it would have had, "error": message}
    future: Future | None = None
    worker: Worker | None = None

    def view(self, *, result: bool = True) -> dict:
        """What GET /api/jobs/<id> answers."""
        end = self.finished or time.time()
        out = {"id": self.id, "endpoint": self.endpoint, "state": self.state,
               "progress": self.tracker.snapshot() if self.state == "running" else [],
               "seconds": round(end - self.started, 3) if self.started else None,
               "waited": round((self.started or end) - self.created, 3)}
        if self.error is not None:
            out["error"] = self.error["error"]
            out["status"] = self.error["status"]
        if result and self.state == "done":
            out["result"] = self.result
        return out


class Jobs:
    """The session's jobs. `error_of(exc) -> (HTTP status, message)` is the app's error mapping,
    so a failed job says what the same plain request would have answered."""

    def __init__(self, error_of: Callable[[BaseException], tuple[int, str]], keep: int = KEEP) -> None:
        self.error_of = error_of
        self.keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def start(self, worker: Worker, endpoint: str, fn: Callable[[Any], Any], req: Any) -> Job:
        """Queue `fn(req)` on `worker` as a job (raises `Busy` when the queue is full)."""
        job = Job(id=f"j{next(self._ids)}", endpoint=endpoint, worker=worker)

        def work(r):
            job.state, job.started = "running", time.time()
            with tracking(job.tracker):
                if job.tracker.cancelled:  # cancelled while it waited
                    raise Cancelled("Cancelled.")
                return fn(r)

        job.future = worker.submit(work, req)
        with self._lock:
            self._jobs[job.id] = job
        job.future.add_done_callback(lambda f: self._finish(job, f))
        return job

    def _finish(self, job: Job, fut: Future) -> None:
        job.finished = time.time()
        if fut.cancelled():
            job.state = "cancelled"
        elif (exc := fut.exception()) is not None:
            if isinstance(exc, Cancelled):
                job.state = "cancelled"
            else:
                status, msg = self.error_of(exc)
                job.state, job.error = "error", {"status": status, "error": msg}
        else:
            job.state, job.result = "done", fut.result()
        job.future = None
        with self._lock:
            done = [k for k, j in self._jobs.items() if j.state in ("done", "error", "cancelled")]
            for k in done[: max(0, len(done) - self.keep)]:
                del self._jobs[k]

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJob(f"No job {job_id!r}: it never ran, or it finished long ago and was dropped (the studio "
                             f"keeps the last {self.keep} finished jobs). Start it again.")
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: out of the queue if it waits, stopped at its next step if it runs."""
        job = self.get(job_id)
        if job.state in ("waiting", "running"):
            job.tracker.cancel()
            fut = job.future
            if fut is not None and job.worker is not None and job.worker.cancel(fut):
                job.state = "cancelled"
        return job

    def list(self) -> list[dict]:
        with self._lock:
            jobs = list(self._jobs.values())
        return [j.view(result=False) for j in jobs]
