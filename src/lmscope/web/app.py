"""The studio's FastAPI app: a thin JSON layer over library calls, plus the static page.

    GET  /                          the page (static/index.html, app.js, style.css; no CDN)
    GET  /api/info                  model.info() + studio limits
    POST /api/run                   next-token distribution          (Model.run + RunResult.top_k)
    POST /api/generate              baseline and edited generation    (Model.generate, interventions)
    POST /api/logit_lens            layers x positions top tokens     (lens.logit_lens)
    GET  /api/atlas/search?q=dog    neurons whose decoded tokens match (atlas.load_atlas().search)
    GET  /api/neuron/{layer}/{n}    one neuron's weights in token space (atlas.decode_neuron)

One model per process, loaded before the server starts. Every call that touches the model
holds one lock: the hook engine keeps per-model state, so two forwards must not interleave.
Handlers are declared with `def` (not `async def`), so FastAPI runs them in its thread pool
and a long generation does not block the event loop; they wait on the lock in turn.

Errors: an `LmscopeError` becomes HTTP 400 `{"error": message}`; a request body or query that
does not validate is FastAPI's 422; a feature whose module is absent is 501 `{"error": ...}`.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from lmscope.errors import InputError, LmscopeError

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_NEW_TOKENS = 128
MAX_PROMPT_CHARS = 4000
#: Host headers accepted by default. Binding to 127.0.0.1 is not enough on its own: a web page
#: could reach it through DNS rebinding with a foreign Host header; "testserver" is TestClient's.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "testserver")


class Unavailable(Exception):
    """A studio feature whose library module is not installed (HTTP 501)."""


# ---- request bodies -------------------------------------------------------------------------

class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunRequest(_Body):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    top_k: int = Field(10, ge=1, le=100)
    chat: bool = False


class EditSpec(_Body):
    """One edit. add: `scale * vector` (from `vector_file`, or the scalar `value` added to every
    feature); clamp: set the site to `value`; zero: set it to 0."""

    type: Literal["add", "clamp", "zero"]
    site: str = Field(min_length=1, max_length=200)
    value: float | None = Field(None, allow_inf_nan=False)
    vector_file: str | None = Field(None, max_length=1000)
    scale: float = Field(1.0, allow_inf_nan=False)


class GenerateRequest(_Body):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    max_new_tokens: int = Field(32, ge=1, le=MAX_NEW_TOKENS)
    chat: bool = False
    edits: list[EditSpec] = Field(default_factory=list, max_length=16)


class LensRequest(_Body):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    targets: list[str] = Field(default_factory=list, max_length=8)
    top_k: int = Field(5, ge=1, le=20)
    chat: bool = False


# ---- helpers (library glue; kept out of the handlers) ----------------------------------------

def _input_tokens(lm, batch) -> list[str]:
    """Text of each input token of the batch's first row (left padding dropped)."""
    ids = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
    return [lm.tokenizer.decode([i]) for i in ids]


def _artifact_vector(lm, path: str, layer: int):
    """The [d_model] vector for `layer` from a saved artifact (keys `layers.L` or `vector`),
    validated against the model by `load_artifact`."""
    from lmscope.artifacts import load_artifact

    tensors, side = load_artifact(Path(path).expanduser(), model=lm)
    if f"layers.{layer}" in tensors:
        return tensors[f"layers.{layer}"]
    if "vector" in tensors and side.get("layer") in (None, layer):
        return tensors["vector"]
    keys = ", ".join(sorted(tensors)) or "none"
    raise InputError(f"{path} has no vector for layer {layer} (it holds: {keys}); pick a site at one of those layers.")


def build_edits(lm, specs: list[EditSpec]) -> list:
    """`EditSpec`s -> lmscope interventions. Sites are resolved first, so a bad layer, unit or
    name is a SiteError naming the valid range before anything runs."""
    from lmscope.interventions import Add, Set, Zero

    edits = []
    for i, e in enumerate(specs):
        sites = lm.sites(e.site)  # validates; "*" may name several
        if e.type == "zero":
            edits.append(Zero(site=e.site))
        elif e.type == "clamp":
            if e.value is None:
                raise InputError(f"Edit {i + 1} (clamp {e.site}) needs a value, e.g. 8.")
            edits.append(Set(site=e.site, value=e.value))
        elif e.vector_file:
            if len(sites) != 1:
                raise InputError(f"Edit {i + 1}: a vector file is added at one site; {e.site!r} names {len(sites)}.")
            vec = _artifact_vector(lm, e.vector_file, sites[0].layer)
            edits.append(Add(site=e.site, vector=vec, scale=e.scale))
        elif e.value is not None:
            edits.append(Add(site=e.site, vector=e.value, scale=e.scale))
        else:
            raise InputError(f"Edit {i + 1} (add at {e.site}) needs a vector_file (a saved vector) or a value.")
    return edits


def _optional(module: str, name: str):
    """`module.name`, or Unavailable (501) when that part of lmscope is not installed."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise Unavailable(f"This lmscope build has no {module}.{name}; the feature is unavailable ({e}).") from e


# ---- the app ----------------------------------------------------------------------------------

def create_app(model_name: str, *, model=None, atlas_path: str | Path | None = None,
               allowed_hosts: tuple[str, ...] | None = LOCAL_HOSTS) -> FastAPI:
    """Build the studio app around one model.

    Args:
        model_name: What to load when `model` is None (embedded name, hub id, folder, .gguf).
        model: An already loaded `lmscope.Model` (tests pass a tiny one).
        atlas_path: Neuron atlas file for search (default: the cache path of `lmscope atlas build`).
        allowed_hosts: Host header values accepted; None accepts any (`--allow-remote`).
    """
    # This function is the route table: each handler is a closure over `lm` and `lock`, a few
    # lines long, and calls one library function.
    if model is None:
        from lmscope.cli._common import load_model

        model = load_model(model_name)
    lm = model
    lock = threading.Lock()
    state: dict = {"atlas": None}

    def atlas():
        if state["atlas"] is None:
            load_atlas = _optional("lmscope.atlas", "load_atlas")
            state["atlas"] = load_atlas(lm, path=atlas_path, build=False)  # building takes minutes: CLI job
        return state["atlas"]

    def atlas_file() -> Path | None:
        if atlas_path is not None:
            return Path(atlas_path)
        try:
            return _optional("lmscope.atlas_db", "default_path")(lm)
        except Unavailable:
            return None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if state["atlas"] is not None:
            state["atlas"].close()

    # No /docs or /redoc: they load Swagger UI from a CDN and the studio works offline.
    app = FastAPI(title="lmscope studio", docs_url=None, redoc_url=None, lifespan=lifespan)
    if allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.state.model = lm

    @app.exception_handler(LmscopeError)
    async def _lmscope_error(request: Request, exc: LmscopeError):
        return JSONResponse(status_code=400, content={"error": str(exc)})

    @app.exception_handler(Unavailable)
    async def _unavailable(request: Request, exc: Unavailable):
        return JSONResponse(status_code=501, content={"error": str(exc)})

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info")
    def info():
        path = atlas_file()
        return {**lm.info(), "studio": {"max_new_tokens": MAX_NEW_TOKENS, "atlas_path": str(path) if path else None,
                                        "atlas_available": bool(path and path.is_file())}}

    @app.post("/api/run")
    def run(req: RunRequest):
        with lock:
            res = lm.run(req.prompt, chat=req.chat)
            top = res.top_k(lm, req.top_k)
        return {"model": lm.name, "prompt": req.prompt, "chat": req.chat,
                "n_tokens": int(res.batch.input_ids.shape[1]), "tokens": _input_tokens(lm, res.batch), "top": top}

    @app.post("/api/generate")
    def generate(req: GenerateRequest):
        with lock:
            edits = build_edits(lm, req.edits)
            kw = {"max_new_tokens": req.max_new_tokens, "chat": req.chat}
            base = lm.generate(req.prompt, **kw)
            out = lm.generate(req.prompt, edits=edits, **kw) if edits else base
        return {"model": lm.name, "prompt": req.prompt, "chat": req.chat, "max_new_tokens": req.max_new_tokens,
                "edits": [e.model_dump(exclude_none=True) for e in req.edits],
                "baseline": base.texts[0], "edited": out.texts[0]}

    @app.post("/api/logit_lens")
    def logit_lens(req: LensRequest):
        lens = _optional("lmscope.lens", "logit_lens")
        with lock:
            res = lens(lm, req.prompt, targets=req.targets, top_k=req.top_k, chat=req.chat)
        return res.to_dict()

    @app.get("/api/atlas/search")
    def atlas_search(q: str = Query(min_length=1, max_length=200),
                     kind: Literal["any", "in", "out", "out_bottom", "in_gate", "in_up"] = "any",
                     limit: int = Query(20, ge=1, le=200)):
        with lock:  # sqlite reads are cheap; the lock keeps the lazy open single
            a = atlas()
            hits = a.search(q, kind=kind, limit=limit)
        return {"model": lm.name, "query": q, "kind": kind, "atlas": str(a.path), "results": hits}

    @app.get("/api/neuron/{layer}/{neuron}")
    def neuron(layer: int, neuron: int, k: int = Query(10, ge=1, le=100)):
        decode = _optional("lmscope.atlas", "decode_neuron")
        with lock:
            d = decode(lm, layer, neuron, k)
        # the layer is valid here (decode_neuron checked it): report it non-negative
        return {"model": lm.name, "layer": layer % lm.n_layers, "neuron": neuron, "k": k,
                **{kind: [{"token": t, "score": s} for t, s in v] if v else None for kind, v in d.items()}}

    return app
