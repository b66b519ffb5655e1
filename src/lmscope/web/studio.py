"""What every studio panel's routes share: the model, its worker, the jobs, the limits.

A panel module (`web/steering.py`, `web/inspect.py`, ...) has one function,
`add_routes(studio: Studio) -> None`, that registers its endpoints with `studio.post(...)` /
`studio.get(...)`. `post` gives every endpoint two forms over the same job function:

    POST /api/<path>        answers when the work is done (scripts, tests, short work)
    POST /api/jobs/<path>   answers 202 with a job id at once; the page polls it, shows its
                            progress and can cancel it (see `web.jobs`)

Job functions run on the model's worker thread (one forward at a time) and return the family
result's `to_dict()`, made JSON-safe by `json_safe` (NaN and infinities become null).
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from lmscope.engine.errors import InputError

from .guard import short
from .jobs import Jobs
from .worker import Worker

log = logging.getLogger("lmscope.web.app")


def json_safe(x):
    """`x` with every non-finite float as None (JSON has no NaN); tuples become lists."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    return x


class Kept:
    """The last `keep` objects a studio session made (vectors, fits, recordings), by id
    (`<prefix>-N`), newest last; safe to use from the model's and the atlas's threads.

    Args:
        prefix: The ids' prefix ("vec", "fv").
        what: What they are, for messages ("vector").
        keep: How many are kept; adding one more drops the oldest.
        missing: The end of the message for an id that is not kept, saying how to get it back.
    """

    def __init__(self, prefix: str, what: str, keep: int, missing: str) -> None:
        self.prefix, self.what, self.keep, self.missing = prefix, what, keep, missing
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._count = 0

    def new_id(self) -> str:
        with self._lock:
            self._count += 1
            return f"{self.prefix}-{self._count}"

    def put(self, key: str, obj: Any) -> str:
        with self._lock:
            self._items[key] = obj
            while len(self._items) > self.keep:
                self._items.popitem(last=False)
        return key

    def add(self, obj: Any) -> str:
        """Keep `obj` under a new id; the id."""
        return self.put(self.new_id(), obj)

    def get(self, key: str) -> Any:
        with self._lock:
            obj = self._items.get(key)
        if obj is None:
            raise InputError(f"No {self.what} {key!r} in this studio session (it keeps the last {self.keep}, until "
                             f"it stops): {self.missing}")
        return obj

    def items(self) -> list[tuple[str, Any]]:
        """(id, object), newest first."""
        with self._lock:
            return list(reversed(self._items.items()))


@dataclass
class Studio:
    """The studio's shared state, handed to each panel's `add_routes`."""

    app: FastAPI
    model: Any
    model_q: Worker
    atlas_q: Worker
    jobs: Jobs
    max_prompt_tokens: int
    #: The folders a request may read vector files from (and save them to): `edits.VectorFolders`.
    vector_folders: Any = None
    #: Entries panels add to /api/info's "studio" block (their limits, their lists).
    info: dict = field(default_factory=dict)

    # ---- helpers for job functions (they run on the model thread) ----

    def tokenize(self, prompt: str, chat: bool = False):
        """The prompt's `Batch`, refused past the studio's token limit."""
        batch = self.model.tokenize(prompt, chat=chat)
        n = int(batch.input_ids.shape[1])
        if n > self.max_prompt_tokens:
            raise InputError(f"The prompt is {n} tokens ({len(prompt)} characters); the studio takes at most "
                             f"{self.max_prompt_tokens} tokens per prompt (it bounds the time the model is held). "
                             "Shorten it.")
        return batch

    def check_prompts(self, prompts, chat: bool = False) -> None:
        for p in prompts:
            self.tokenize(p, chat)

    def input_tokens(self, batch) -> list[str]:
        """Text of each input token of the batch's first row (left padding dropped)."""
        ids = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
        return [self.model.tokenizer.decode([i]) for i in ids]

    # ---- routes ----

    def timed(self, name: str, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """`fn` with a log line of its duration (the user's text is never logged whole)."""
        def job(req):
            t0 = time.perf_counter()
            out = fn(req)
            what = getattr(req, "prompt", None) or getattr(req, "task", None) or getattr(req, "action", "")
            log.info("%s %s: %.2f s", name, short(str(what)), time.perf_counter() - t0)
            return out
        return job

    def post(self, path: str, body: type, fn: Callable[[Any], Any], *,
             queue: Worker | Callable[[Any], Worker] | None = None, job: bool = True) -> None:
        """Register POST /api/<path> (and, with `job`, POST /api/jobs/<path>) running `fn(body)`
        on `queue` (default: the model's worker; a function of the body picks one per request)."""
        pick = queue if callable(queue) and not isinstance(queue, Worker) else (lambda _: queue or self.model_q)
        work = self.timed(path, fn)

        async def plain(req):
            return await pick(req).run(work, req)

        async def start(req):
            j = self.jobs.start(pick(req), path, work, req)
            return JSONResponse(status_code=202, content=j.view())

        for f in (plain, start) if job else (plain,):
            # FastAPI reads the body's type from the signature; give it the real class.
            f.__signature__ = inspect.Signature(
                [inspect.Parameter("req", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=body)])
        self.app.post(f"/api/{path}", name=path)(plain)
        if job:
            self.app.post(f"/api/jobs/{path}", name=f"job {path}", status_code=202)(start)

    def get(self, path: str, fn: Callable[[], Any], *, queue: Worker | None = None) -> None:
        """Register GET /api/<path> answering `fn()` on `queue` (default: the atlas worker, for
        reads that do not touch the model)."""
        q = queue or self.atlas_q

        async def read():
            return await q.run(lambda _: fn(), None)

        self.app.get(f"/api/{path}", name=path)(read)
