"""One thread per shared resource, with a bounded, visible queue.

The hook engine keeps per-model state, so two forwards must never interleave. The studio used
to serialise them with a lock taken inside FastAPI's thread pool; every request waiting for
the lock then held one of the pool's 40 threads, and with 40 generations queued the page
itself (whose file is read in that pool) waited for them (7.9 s under 48). Now handlers are
`async` and hand model work to a `Worker`: one dedicated thread runs the jobs in arrival
order, a waiting request holds no thread at all, and the page and `/api/info` are answered by
the event loop at once. Past `max_waiting` queued jobs a request is refused with `Busy`
(HTTP 503 with `Retry-After`) instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class Busy(Exception):
    """The queue is full (HTTP 503); `retry_after` is a guess in seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Worker:
    """Runs jobs on one thread, in arrival order; at most `max_waiting` wait behind the running one.

    Args:
        name: What the thread and the messages call it ("model", "atlas").
        max_waiting: Jobs allowed to wait; one more is refused with `Busy`.
    """

    def __init__(self, name: str, max_waiting: int) -> None:
        if max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {max_waiting}.")
        self.name = name
        self.max_waiting = max_waiting
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"lmscope-{name}")
        self._lock = threading.Lock()
        self._pending = 0  # submitted and not finished: the running job + the waiting ones
        self._done = 0
        self._mean_s = 1.0  # moving average of a job's duration, for Retry-After

    def status(self) -> dict:
        """{"running", "waiting", "max_waiting", "done"}: what /api/info shows."""
        with self._lock:
            running = min(1, self._pending)
            return {"running": running, "waiting": self._pending - running, "max_waiting": self.max_waiting,
                    "done": self._done}

    def submit(self, fn: Callable[..., Any], *args) -> Future:
        """Queue `fn(*args)` on the worker thread (or raise `Busy`); its future. Cancel it with
        `cancel(future)`, which also counts it out of the queue."""
        with self._lock:
            waiting = max(0, self._pending - 1)
            if self._pending and waiting >= self.max_waiting:
                wait = min(3600, max(1, math.ceil(self._mean_s * (waiting + 1))))
                raise Busy(f"The studio is busy: {waiting} requests wait for the {self.name} (at most "
                           f"{self.max_waiting}). Retry in about {wait} s.", wait)
            self._pending += 1
        return self._pool.submit(self._timed, fn, args)

    def cancel(self, fut: Future) -> bool:
        """Drop a job that has not started (True); a running one is not stopped here (False)."""
        if fut.cancel():  # it never started, so `_timed` will not count it out
            self._finish(None)
            return True
        return False

    async def run(self, fn: Callable[..., Any], *args) -> Any:
        """`fn(*args)` on the worker thread, awaited without holding any other thread."""
        fut = self.submit(fn, *args)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            self.cancel(fut)
            raise

    def _timed(self, fn, args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self._finish(time.perf_counter() - t0)

    def _finish(self, seconds: float | None) -> None:
        with self._lock:
            self._pending -= 1
            if seconds is not None:
                self._done += 1
                self._mean_s = 0.8 * self._mean_s + 0.2 * seconds

    def close(self) -> None:
        """Drop the waiting jobs; the running one finishes on its own."""
        self._pool.shutdown(wait=False, cancel_futures=True)
