"""The studio's FastAPI app: a thin JSON layer over library calls, plus the static page.

    GET  /                          the page (static/index.html, app.js, style.css; no CDN)
    GET  /api/info                  model.info() + studio limits + queue length
    POST /api/run                   next-token distribution          (Model.run + RunResult.top_k)
    POST /api/generate              baseline and edited generation    (Model.generate, interventions)
    POST /api/logit_lens            layers x positions top tokens     (lens.logit_lens)
    GET  /api/atlas/search?q=dog    neurons whose decoded tokens match (atlas.load_atlas().search)
    GET  /api/neuron/{layer}/{n}    one neuron's weights in token space (atlas.decode_neuron)
    POST /api/circuit               a task's pruned circuit + controls (circuits.find_circuit)
    POST /api/sae                   an SAE's card, a latent's page, a search, steering (web.saes)
    GET  /api/sae/folders           SAE folders the studio may read
    GET  /api/relations             shipped relations                (datasets.relations.shipped_relations)
    GET  /api/relations/lres        LRE files in the LRE folders, LREs fitted in this session
    POST /api/relations/fit         an LRE of a shipped relation       (relations.fit_lre; web.relations)
    POST /api/relations/lens        the attribute lens of a prompt     (relations.attribute_lens)
    POST /api/relations/predict     the LRE's vs the model's objects   (relations.predict_objects)

One model per process, loaded before the server starts. Every call that touches the model is
a job on one `Worker` thread (the hook engine keeps per-model state, so two forwards must not
interleave); atlas searches run on a second one. Handlers are `async` and only await their
job, so a waiting request holds no thread, and `/`, `/static/*` and `/api/info` are answered
at once however many jobs wait. Past `max_waiting` waiting jobs a request gets 503 with
`Retry-After`.

Errors are JSON with an `error` message: an `LmscopeError` is 400; a body or query that does
not validate is 422 (also with FastAPI's `detail` list, minus the echoed input); a foreign Host
header 400 and an oversized body 413 (`guard.Guard`); a full queue 503; a feature whose module
is absent 501; anything else 500 with the traceback in the server log only.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from lmscope.engine.errors import ArtifactError, InputError, LmscopeError

from . import circuits, relations, saes
from .bodies import (
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    CircuitRequest,
    GenerateRequest,
    LensRequest,
    RelationFitRequest,
    RelationLensRequest,
    RelationPredictRequest,
    RunRequest,
    SaeRequest,
    validation_body,
)
from .edits import VectorFolders, build_edits
from .guard import LOCAL_HOSTS, Guard, short
from .jobs import Jobs, UnknownJob
from .studio import Studio
from .worker import Busy, Worker

__all__ = ["LOCAL_HOSTS", "MAX_NEW_TOKENS", "MAX_PROMPT_CHARS", "create_app"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
#: Tokens after tokenizing (and the chat template): 4,000 characters can be 12,000 tokens.
MAX_PROMPT_TOKENS = 1024
#: The lens returns layers x positions x top_k [token, prob] pairs (~25 bytes each, plus each
#: cell's layer, pos and kl): <= ~2 MB of JSON.
MAX_LENS_ENTRIES = 60_000
#: ...and computes layers x positions x d_vocab logits (time while the model is held).
MAX_LENS_LOGITS = 5 * 10**8  # smollm2-135m: 339 positions (400 took 28 s on a busy 2-core CPU)
MAX_WAITING = 64
MAX_BODY_BYTES = 256 * 1024


class Unavailable(Exception):
    """A studio feature whose library module is not installed (HTTP 501)."""


def _optional(module: str, name: str):
    """`module.name`, or Unavailable (501) when that part of lmscope is not installed."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise Unavailable(f"This lmscope build has no {module}.{name}; the feature is unavailable ({e}).") from e


# ---- library glue: these run on the model's worker thread ----------------------------------------

def _input_tokens(model, batch) -> list[str]:
    """Text of each input token of the batch's first row (left padding dropped)."""
    ids = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
    return [model.tokenizer.decode([i]) for i in ids]


def _tokenize(model, prompt: str, chat: bool, max_tokens: int):
    """The prompt's `Batch`, refused past `max_tokens` tokens."""
    batch = model.tokenize(prompt, chat=chat)
    n = int(batch.input_ids.shape[1])
    if n > max_tokens:
        raise InputError(f"The prompt is {n} tokens ({len(prompt)} characters); the studio takes at most {max_tokens} "
                         "tokens per prompt (it bounds the time the model is held). Shorten it.")
    return batch


def _lens_positions(model, top_k: int, max_tokens: int) -> int:
    """How many positions the lens reads within the studio's bounds on response size and work."""
    return max(1, min(max_tokens, MAX_LENS_ENTRIES // (model.n_layers * top_k),
                      MAX_LENS_LOGITS // (model.n_layers * model.d_vocab)))


def _overflow(model, result) -> list[str]:
    """Where the residual stream entering the final norm stops being usable: NaN, infinite, or
    so large that its mean square overflows float32 (the norm then divides by infinity and the
    logits collapse to a constant: greedy decoding repeats token 0, usually an empty text)."""
    h = result.cache[f"layers.{model.n_layers - 1}.resid_post"]  # [batch, prompt + new - 1, d_model]
    bad = ~h.float().pow(2).mean(-1)[0].isfinite()  # [pos]
    if not bool(bad.any()):
        return []
    pos, n_prompt = int(bad.nonzero()[0, 0]), int(result.batch.input_ids.shape[1])
    first = max(1, pos - n_prompt + 2)  # the state at position p chooses the token after it
    where = "in the prompt" if pos < n_prompt else "in the generated text"
    return [(f"The residual stream became non-finite (NaN, infinite, or too large to square in float32) at "
             f"position {pos} ({where}): new tokens from #{first} on are meaningless (a constant choice, often "
             "an empty text).")]


def error_of(exc: BaseException) -> tuple[int, str]:
    """(HTTP status, message) of an exception, as the handlers below answer it (a job's error too)."""
    if isinstance(exc, LmscopeError):
        return 400, str(exc)
    if isinstance(exc, Unavailable):
        return 501, str(exc)
    if isinstance(exc, Busy):
        return 503, str(exc)
    log.error("a studio job failed", exc_info=exc)
    return 500, f"Internal error ({type(exc).__name__}) in the studio; the server log has the details."


#: The panels whose routes live in their own module (`web/<name>.py`, `add_routes(studio)`) and
#: whose page part in `static/<name>.html` (included at `<!-- include: <name>.html -->`).
PANELS = ("neurons", "vectors", "function_vectors", "inspect")
_INCLUDE = re.compile(r"<!-- include: ([a-z_]+\.html) -->")


def assemble_page() -> str:
    """index.html with each panel's HTML part put in its place."""
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: (STATIC / m.group(1)).read_text(encoding="utf-8"), page)


# ---- the app --------------------------------------------------------------------------------------

def create_app(model_name: str, *, model=None, atlas_path: str | Path | None = None,
               allowed_hosts: tuple[str, ...] | None = LOCAL_HOSTS,
               vector_dirs: Sequence[str | os.PathLike] | None = None,
               sae_dirs: Sequence[str | os.PathLike] | None = None,
               lre_dirs: Sequence[str | os.PathLike] | None = None, max_waiting: int = MAX_WAITING,
               max_prompt_tokens: int = MAX_PROMPT_TOKENS) -> FastAPI:
    """Build the studio app around one model.

    Args:
        model_name: What to load when `model` is None (embedded name, hub id, folder, .gguf).
        model: An already loaded `lmscope.Model` (tests pass a tiny one).
        atlas_path: Neuron atlas file for search (default: the cache path of `lmscope atlas build`).
        allowed_hosts: Host names accepted besides loopback addresses; None accepts any (`--allow-remote`).
        vector_dirs: Folders an edit's `vector_file` may be read from (default: the working directory).
        sae_dirs: Folders the SAEs tab may read SAEs from (default: the working directory).
        lre_dirs: Folders the Relations tab may read LRE files from and save fitted ones to (default: the
            working directory).
        max_waiting: Model jobs that may wait behind the running one; more get 503.
        max_prompt_tokens: Longest prompt, in tokens after tokenizing.
    """
    # This function is the route table: each handler is a closure over `model` and the workers,
    # a few lines long, and hands one library call to a worker.
    if model is None:
        from lmscope.engine.loading import load

        model = load(model_name, quiet=True)
    folders = VectorFolders(vector_dirs or [Path.cwd()])
    sae_folders = saes.SaeFolders(sae_dirs or [Path.cwd()])
    coders = saes.Coders(model)
    lre_folders = relations.LreFolders(lre_dirs or [Path.cwd()])
    lre_targets = relations.LreTargets(lre_dirs or [Path.cwd()])
    lres = relations.Lres(model)
    model_q, atlas_q = Worker("model", max_waiting), Worker("atlas", max_waiting)
    state: dict = {"atlas": None}
    info = model.info()  # static: computed once, so /api/info never waits for the model
    page = assemble_page()

    def atlas():
        if state["atlas"] is None:
            load_atlas = _optional("lmscope.neurons.atlas", "load_atlas")
            state["atlas"] = load_atlas(model, path=atlas_path, build=False)  # building takes minutes: CLI job
        return state["atlas"]

    def atlas_file() -> Path | None:
        if atlas_path is not None:
            return Path(atlas_path)
        try:
            return _optional("lmscope.neurons.atlas_db", "default_path")(model)
        except Unavailable:
            return None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        model_q.close()
        atlas_q.close()
        if state["atlas"] is not None:
            state["atlas"].close()

    # No /docs or /redoc: they load Swagger UI from a CDN and the studio works offline.
    app = FastAPI(title="lmscope studio", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.add_middleware(Guard, allowed_hosts=allowed_hosts, max_body=MAX_BODY_BYTES)
    app.state.model = model
    app.state.workers = {"model": model_q, "atlas": atlas_q}
    jobs = Jobs(error_of)
    studio = Studio(app, model, model_q, atlas_q, jobs, max_prompt_tokens, vector_folders=folders)
    app.state.studio = studio

    @app.exception_handler(LmscopeError)
    async def _lmscope_error(request: Request, exc: LmscopeError):
        return JSONResponse(status_code=400, content={"error": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return JSONResponse(status_code=422, content=validation_body(exc.errors()))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):  # 404, 405: JSON with a message like the rest
        hint = " (the API: /openapi.json)" if exc.status_code in (404, 405) else ""
        return JSONResponse(status_code=exc.status_code, headers=exc.headers,
                            content={"error": f"{exc.detail}: {request.method} {short(request.url.path, 80)}{hint}",
                                     "detail": exc.detail})

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy):
        return JSONResponse(status_code=503, content={"error": str(exc)}, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(Unavailable)
    async def _unavailable(request: Request, exc: Unavailable):
        return JSONResponse(status_code=501, content={"error": str(exc)})

    @app.exception_handler(UnknownJob)
    async def _unknown_job(request: Request, exc: UnknownJob):
        return JSONResponse(status_code=404, content={"error": str(exc)})

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(status_code=500, content={
            "error": f"Internal error ({type(exc).__name__}) in the studio; the server log has the details."})

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info")
    async def info_():
        path = atlas_file()
        return {**info, "studio": {
            "max_new_tokens": MAX_NEW_TOKENS, "max_prompt_chars": MAX_PROMPT_CHARS,
            "max_prompt_tokens": max_prompt_tokens, "max_lens_entries": MAX_LENS_ENTRIES,
            "max_lens_logits": MAX_LENS_LOGITS, "max_body_bytes": MAX_BODY_BYTES,
            "atlas_path": str(path) if path else None, "atlas_available": bool(path and path.is_file()),
            "vector_dirs": [str(f) for f in folders.folders], "sae_dirs": [str(f) for f in sae_folders.folders],
            "lre_dirs": [str(f) for f in lre_folders.folders], "max_relation_train": relations.MAX_TRAIN,
            "circuit_tasks": circuits.task_names(),
            "max_circuit_pairs": circuits.MAX_PAIRS, **studio.info, "queue": model_q.status()}}

    def run_job(req: RunRequest) -> dict:
        batch = _tokenize(model, req.prompt, req.chat, max_prompt_tokens)
        res = model.run(batch)
        return {"model": model.name, "prompt": req.prompt, "chat": req.chat, "n_tokens": int(batch.input_ids.shape[1]),
                "tokens": _input_tokens(model, batch), "top": res.top_k(model, req.top_k)}

    def generate_job(req: GenerateRequest) -> dict:
        edits = build_edits(model, req.edits, folders)
        batch = _tokenize(model, req.prompt, req.chat, max_prompt_tokens)
        kw = {"max_new_tokens": req.max_new_tokens, "capture": {f"layers.{model.n_layers - 1}.resid_post": "all"}}
        base = model.generate(batch, **kw)
        out = model.generate(batch, edits=edits, **kw) if edits else base
        warnings = [f"Baseline: {w} The model overflows its dtype on this prompt." for w in _overflow(model, base)]
        warnings += [f"Edited: {w} An edit is too large for this model: lower its value or scale."
                     for w in _overflow(model, out)] if edits else []
        return {"model": model.name, "prompt": req.prompt, "chat": req.chat, "max_new_tokens": req.max_new_tokens,
                "edits": [e.model_dump(exclude_none=True) for e in req.edits],
                "baseline": base.texts[0], "edited": out.texts[0], "warnings": warnings}

    def lens_job(req: LensRequest) -> dict:
        lens = _optional("lmscope.lens.logit", "logit_lens")
        n = int(_tokenize(model, req.prompt, req.chat, max_prompt_tokens).input_ids.shape[1])
        most = _lens_positions(model, req.top_k, max_prompt_tokens)
        if n > most:
            raise InputError(
                f"The logit lens reads every layer x position: this prompt is {n} tokens, and with top_k {req.top_k} "
                f"on {model.name} ({model.n_layers} layers, vocabulary {model.d_vocab:,}) the studio reads at most {most} "
                "(a bound on response size and on the time the model is held). Shorten the prompt or lower top_k.")
        return lens(model, req.prompt, targets=req.targets, top_k=req.top_k, chat=req.chat).to_dict()

    def circuit_job(req: CircuitRequest) -> dict:
        find_circuit = _optional("lmscope.circuits.discovery", "find_circuit")
        config = _optional("lmscope.circuits.discovery", "CircuitConfig")
        return circuits.find(model, req, find_circuit, config)

    def sae_job(req: SaeRequest) -> dict:
        path = sae_folders.resolve(req.path)
        for p in req.prompts:
            _tokenize(model, p, False, max_prompt_tokens)
        try:
            if req.action == "search":
                return saes.search(path, req)
            if req.action == "card":
                return saes.card(coders, path, req)
            if req.action == "feature":
                atlas_at = atlas_file()
                return saes.feature(coders, path, req, atlas_at if atlas_at and atlas_at.is_file() else None)
            return saes.steer(coders, path, req)
        except (ArtifactError, InputError) as e:  # messages about files inside the SAE folders: no server paths
            raise sae_folders.quiet(e) from None

    def relation_job(action: str):
        """The Relations tab's `action` on the model thread; messages name no LRE folder."""
        def job(req):
            # the refusals name the LRE folders (a user needs them); messages about files inside them do not
            if action == "fit":
                save = lre_targets.resolve(req.save) if req.save else None  # before a minute of work, not after
            else:
                path = lre_folders.resolve(req.path) if req.path else None
            try:
                if action == "fit":
                    return relations.fit(model, req, lres, save)
                lre = lres.get(req.fitted, path)
                if action == "lens":
                    _tokenize(model, req.prompt, False, max_prompt_tokens)
                    return relations.lens(model, lre, req, _lens_positions(model, 2, max_prompt_tokens))
                return relations.predict(model, lre, req, max_prompt_tokens)
            except (ArtifactError, InputError) as e:
                raise lre_folders.quiet(e) from None
        return job

    studio.post("run", RunRequest, run_job)
    studio.post("generate", GenerateRequest, generate_job)
    studio.post("logit_lens", LensRequest, lens_job)
    studio.post("circuit", CircuitRequest, circuit_job)
    # a search reads only the index: the atlas thread, not the model's queue
    studio.post("sae", SaeRequest, sae_job, queue=lambda req: atlas_q if req.action == "search" else model_q)

    @app.get("/api/sae/folders")
    async def sae_found():
        return await atlas_q.run(lambda _: {"sae_dirs": [str(f) for f in sae_folders.folders],
                                            "folders": sae_folders.find()}, None)

    @app.get("/api/relations")
    async def relation_list():
        return await atlas_q.run(lambda _: relations.shipped(), None)  # reads the shipped index: off the event loop

    @app.get("/api/relations/lres")
    async def relation_lres():
        return await atlas_q.run(lambda _: {"lre_dirs": [str(f) for f in lre_folders.folders],
                                            "files": lre_folders.find(model.name), "fitted": lres.fitted()}, None)

    studio.post("relations/fit", RelationFitRequest, relation_job("fit"))
    studio.post("relations/lens", RelationLensRequest, relation_job("lens"))
    studio.post("relations/predict", RelationPredictRequest, relation_job("predict"))

    @app.get("/api/atlas/search")
    async def atlas_search(q: Annotated[str, Query(min_length=1, max_length=200)],
                           kind: Literal["any", "in", "out", "out_bottom", "in_gate", "in_up"] = "any",
                           limit: Annotated[int, Query(ge=1, le=200)] = 20):
        def job(_):
            a = atlas()  # opened once, on the atlas thread
            return {"model": model.name, "query": q, "kind": kind, "atlas": str(a.path),
                    "results": a.search(q, kind=kind, limit=limit)}
        return await atlas_q.run(job, None)

    @app.get("/api/neuron/{layer}/{neuron}")
    async def neuron(layer: int, neuron: int, k: Annotated[int, Query(ge=1, le=100)] = 10):
        decode = _optional("lmscope.neurons.atlas", "decode_neuron")

        def job(_):
            site = model.site(f"layers.{layer}.mlp.neurons[{neuron}]")  # validates; negatives -> indices
            d = decode(model, site.layer, site.units[0], k)
            return {"model": model.name, "layer": site.layer, "neuron": site.units[0], "k": k,
                    **{kind: [{"token": t, "score": s} for t, s in v] if v else None for kind, v in d.items()}}
        return await model_q.run(job, None)

    @app.get("/api/jobs")
    async def job_list():
        return {"jobs": jobs.list(), "queue": model_q.status()}

    @app.get("/api/jobs/{job_id}")
    async def job_state(job_id: str):
        return jobs.get(job_id).view()

    @app.delete("/api/jobs/{job_id}")
    async def job_cancel(job_id: str):
        return jobs.cancel(job_id).view(result=False)

    for name in PANELS:
        importlib.import_module(f"{__package__}.{name}").add_routes(studio)
    return app
