"""Progress and cancellation for long work: one mechanism for the terminal and the studio.

A long loop in a family iterates through `steps(...)` (or updates a `bar(...)`) instead of a bare
tqdm. On the terminal that is a tqdm bar when `show` is true. When the loop runs inside
`tracking(tracker)` (the studio runs every job so), each step is also reported to the
`Tracker`, which the studio's job endpoint reads (`snapshot()`), and a `Tracker.cancel()` from
another thread stops the work: the next step, or the next forward of the model (the hook
engine calls `checkpoint()` before each), raises `Cancelled`.

    tracker = Tracker()
    with tracking(tracker):           # on the thread that does the work
        for x in steps(items, desc="sweep"):
            ...
    tracker.snapshot()                # from any thread: [{"desc", "done", "total", "unit"}, ...]
    tracker.cancel()                  # from any thread: the work raises Cancelled soon after

Outside `tracking` the only cost is a context-variable lookup per step.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterable, Iterator

from .errors import LmscopeError


class Cancelled(LmscopeError):
    """The work was cancelled (the studio's Cancel button, `Tracker.cancel()`)."""


class Tracker:
    """The progress bars of one piece of work, and its cancel flag; safe to read from other threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bars: list[dict] = []  # outermost first
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Ask the work to stop at its next step or forward."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def snapshot(self) -> list[dict]:
        """The open bars, outermost first: [{"desc", "done", "total" (None when unknown), "unit"}]."""
        with self._lock:
            return [dict(b) for b in self._bars]

    def _open(self, desc: str, total: int | None, unit: str) -> dict:
        b = {"desc": desc, "done": 0, "total": total, "unit": unit}
        with self._lock:
            self._bars.append(b)
        return b

    def _advance(self, b: dict, n: int) -> None:
        with self._lock:
            b["done"] += n

    def _close(self, b: dict) -> None:
        with self._lock:
            if b in self._bars:
                self._bars.remove(b)


_CURRENT: contextvars.ContextVar[Tracker | None] = contextvars.ContextVar("lmscope_tracker", default=None)


def current() -> Tracker | None:
    """The tracker of the work running in this thread, if any."""
    return _CURRENT.get()


@contextlib.contextmanager
def tracking(tracker: Tracker) -> Iterator[Tracker]:
    """Report the progress of the work done in this block (this thread) to `tracker`."""
    token = _CURRENT.set(tracker)
    try:
        yield tracker
    finally:
        _CURRENT.reset(token)


def checkpoint() -> None:
    """Raise `Cancelled` if the work running in this thread was cancelled."""
    t = _CURRENT.get()
    if t is not None and t.cancelled:
        raise Cancelled("Cancelled.")


class Bar:
    """A progress bar updated by hand (`update(n)`): a tqdm bar when shown, and the tracker's
    bar when tracked. A context manager; `close()` is idempotent."""

    def __init__(self, *, total: int | None, desc: str, show: bool = False, unit: str = "it", initial: int = 0,
                 **tqdm_kw) -> None:
        self._tqdm = None
        if show:
            from tqdm.auto import tqdm

            self._tqdm = tqdm(total=total, desc=desc, unit=unit, initial=initial, **tqdm_kw)
        self._tracker = _CURRENT.get()
        self._bar = self._tracker._open(desc, total, unit) if self._tracker is not None else None
        if self._bar is not None and initial:
            self._tracker._advance(self._bar, initial)
        checkpoint()

    def update(self, n: int = 1) -> None:
        if self._tqdm is not None:
            self._tqdm.update(n)
        if self._bar is not None:
            self._tracker._advance(self._bar, n)
        checkpoint()

    def set_postfix_str(self, s: str) -> None:
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(s)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        if self._bar is not None:
            self._tracker._close(self._bar)
            self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(*, total: int | None, desc: str, show: bool = False, unit: str = "it", **kw) -> Bar:
    """A `Bar` (see there)."""
    return Bar(total=total, desc=desc, show=show, unit=unit, **kw)


def steps(items: Iterable, *, desc: str, total: int | None = None, show: bool = False, unit: str = "it",
          leave: bool = True) -> Iterator:
    """Iterate `items` with a progress bar (tqdm when `show`) that the current tracker sees too;
    raises `Cancelled` before a step once the tracker is cancelled."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Bar(total=total, desc=desc, show=show, unit=unit, leave=leave) as b:
        for x in items:
            yield x
            b.update(1)
