"""The Steering tab's glue: a vector (built here, picked from the vector folders or uploaded), its
layer x strength sweep, and steered text next to the baseline and a random control.

    GET  /api/vectors              vector files in the vector folders, and the vectors of this session
    POST /api/vectors/build        `make_vector` on a shipped contrast set or on texts typed in the page (a job)
    POST /api/vectors/upload       a vector file and its sidecar (base64), read by `Vector.load`
    POST /api/vectors/card         what a vector is: layers, norms, held-out separation, top tokens at a layer
    POST /api/vectors/save         a session vector written into the vector folders
    POST /api/vectors/sweep        `steering.sweep` over layers x coefficients with the family's task (a job)
    POST /api/vectors/generate     greedy text steered at (layer, coef), unsteered, and with a random
                                   direction of the same norm (a job)

What a request may make the server read: a contrast set is a shipped *name* (`load_contrast`'s
names and aliases, as `lmscope vector make --data` takes them) or texts sent in the body, never a
path. A vector's sidecar names its data (`dataset`, `dataset_source`); the studio uses only a
shipped name from it and never opens `dataset_source` (a path on whoever wrote the file's disk).
Vector files are read and written only inside the vector folders (`edits.VectorFolders`: one
message for a path that is missing or outside; messages about files inside name no server folder);
a save never replaces a file unless `overwrite` is set, and then only a vector artifact. An upload
is written to a private temporary folder and read there by `Vector.load`, so it is validated
exactly as a file is (safetensors, never unpickled), and no message names that folder.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from lmscope.engine.errors import ArtifactError, InputError

from .bodies import MAX_PROMPT_CHARS, _Body
from .edits import VectorFolders, VectorTargets, check_sizes
from .guard import MAX_SIDECAR_BYTES, short, sidecar_kind
from .studio import Kept, json_safe

# Bounds (the defaults sweep gemma-3-270m in about 45 s on 2 CPU cores: 4 layers x 3 coefficients,
# 8 scored prompts, 16 neutral prompts for the KL, 4 generations of 12 tokens for repetition).
MAX_ITEMS = 128  # items read from a shipped contrast set (they have 100)
MAX_TYPED, MAX_TEXT_CHARS = 64, 1000  # texts typed per side, and their length
MAX_LAYERS, MAX_COEFS, MAX_CELLS = 8, 8, 32  # sweep grid: at most 32 (layer, coef) cells
MAX_COEF = 8.0  # |coef|: 1.0 is already a vector as long as the residual stream
MAX_EVAL, MAX_NEUTRAL, MAX_GEN_TOKENS, MAX_N_GEN = 32, 32, 32, 8
MAX_NEW_TOKENS = 64
DEFAULT_LAYERS = 4  # layers swept when a request names none (`default_layers(n_layers, 4)`)
KEEP, KEEP_LOADED = 8, 4  # vectors kept in the session (built or uploaded), files kept loaded

#: `steering.TASKS` and `engine.sites.RESID_KINDS` (a test checks they agree), as the bodies' choices
TASKS = ("refusal", "sycophancy", "sentiment", "weddings", "loglik")
SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS, pattern=r"\S")]
Layer = Annotated[int, Field(ge=-4096, le=4095)]
Coef = Annotated[float, Field(ge=-MAX_COEF, le=MAX_COEF, allow_inf_nan=False)]


def check_dataset(name: str) -> str:
    """The shipped contrast set `name` (or an alias) names; ValueError otherwise (a body validator)."""
    from lmscope.datasets.contrast import BUILTIN, resolve_name

    if (found := resolve_name(name)) is not None and not name.endswith(".jsonl"):
        return found
    if any(c in name for c in "/\\") or name.endswith((".jsonl", ".json")) or name.startswith((".", "~")):
        raise ValueError(f"{name[:40]!r} is a file path; the studio takes shipped contrast sets or texts typed in the "
                         "page, not files (`lmscope vector make --data FILE` reads yours)")
    raise ValueError(f"Unknown contrast set {name[:40]!r}; shipped: {', '.join(BUILTIN)}")


# ---- request bodies (strict: see web.bodies) ------------------------------------------------------

class TypedSet(_Body):
    """Texts typed in the page, in the shapes `datasets.contrast` takes: `pairs` (positive[i] vs
    negative[i], `from_pairs`), `completions` (prompts[i] + positive[i] vs + negative[i],
    `from_completions`; one prompt is shared by all) or `sets` (two unpaired lists, `from_sets`)."""

    format: Literal["pairs", "completions", "sets"] = "pairs"
    positive: list[Text] = Field(min_length=1, max_length=MAX_TYPED)
    negative: list[Text] = Field(min_length=1, max_length=MAX_TYPED)
    prompts: list[Text] | None = Field(None, min_length=1, max_length=MAX_TYPED)
    name: str = Field("typed", min_length=1, max_length=60, pattern=r"^[\w .+-]+$")

    @model_validator(mode="after")
    def _shape(self):
        n, m = len(self.positive), len(self.negative)
        if self.format != "sets" and n != m:
            raise ValueError(f"{self.format} need as many negative texts as positive ones (got {n} and {m}); "
                             "use sets for unpaired lists")
        if (self.format == "completions") != (self.prompts is not None):
            raise ValueError("completions need prompts (one shared, or one per pair); pairs and sets take none")
        if self.prompts is not None and len(self.prompts) not in (1, n):
            raise ValueError(f"give one prompt, or one per pair ({n}); got {len(self.prompts)}")
        return self


class VectorBuildRequest(_Body):
    """`make_vector` (`ExtractConfig` fields) on the first `limit` items of a shipped `dataset`, or on `typed` texts."""

    dataset: str | None = Field(None, min_length=1, max_length=200)
    typed: TypedSet | None = None
    limit: int = Field(48, ge=2, le=MAX_ITEMS)
    method: Literal["mean-diff", "pca"] = "mean-diff"
    position: Literal["last", "mean"] = "last"
    site: Literal[SITES] = "resid_post"
    chat: bool | None = None  # None: on for refusal and sycophancy data when the model has a chat template
    held_out: float = Field(0.25, ge=0.05, le=0.75, allow_inf_nan=False)
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @field_validator("dataset")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        return v if v is None else check_dataset(v)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.dataset is None) == (self.typed is None):
            raise ValueError("give either dataset (a shipped contrast set) or typed (texts typed in the page)")
        return self


class _Source(_Body):
    """A vector: `vector` (an id of this session: built or uploaded) or `path` (a file in the vector folders)."""

    vector: str | None = Field(None, pattern=r"^vec-[0-9]{1,9}$")
    path: str | None = Field(None, min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.vector is None) == (self.path is None):
            raise ValueError("give the vector as either vector (an id from /api/vectors/build or /upload) or path "
                             "(a file in the vector folders)")
        return self


class VectorCardRequest(_Source):
    layer: Layer | None = None  # the layer whose top tokens are read (default: the best separating one)
    k: int = Field(8, ge=1, le=20)


class VectorUploadRequest(_Body):
    """A vector file as lmscope writes it: the .safetensors bytes and its .json sidecar's bytes, in base64."""

    name: str = Field(min_length=1, max_length=200, pattern=r"^[^/\\\x00-\x1f.][^/\\\x00-\x1f]*$")
    safetensors: str = Field(min_length=1, max_length=400_000)
    sidecar: str = Field(min_length=1, max_length=400_000)


class VectorSaveRequest(_Body):
    vector: str = Field(pattern=r"^vec-[0-9]{1,9}$")
    path: str = Field(min_length=1, max_length=1000)
    overwrite: bool = False


class VectorSweepRequest(_Source):
    """`SweepConfig` fields, the task (`make_task`; None: the vector's data's own) and its sizes."""

    task: Literal[TASKS] | None = None
    layers: list[Layer] | None = Field(None, min_length=1, max_length=MAX_LAYERS)
    coefs: list[Coef] = Field([0.125, 0.25, 0.5], min_length=1, max_length=MAX_COEFS)
    relative: bool = True
    goal: Literal["increase", "decrease"] = "increase"
    kl_max: float = Field(1.0, gt=0, le=100, allow_inf_nan=False)
    repetition_margin: float = Field(0.2, ge=0, le=1, allow_inf_nan=False)
    gen_tokens: int = Field(12, ge=0, le=MAX_GEN_TOKENS)
    n_gen: int = Field(4, ge=1, le=MAX_N_GEN)
    n_eval: int = Field(8, ge=1, le=MAX_EVAL)
    n_neutral: int = Field(16, ge=1, le=MAX_NEUTRAL)
    chat: bool | None = None
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @model_validator(mode="after")
    def _cells(self):
        n = len(self.layers or range(DEFAULT_LAYERS)) * len(self.coefs)
        if n > MAX_CELLS:
            raise ValueError(f"{n} (layer, coef) cells; the studio sweeps at most {MAX_CELLS} (about 4 s each on "
                             "gemma-3-270m on a CPU): fewer layers or coefficients")
        return self


class VectorGenerateRequest(_Source):
    layer: Layer
    coef: Coef = 0.25
    mode: Literal["add", "subtract", "ablate"] = "add"
    relative: bool = True
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    max_new_tokens: int = Field(24, ge=1, le=MAX_NEW_TOKENS)
    chat: bool = False
    seed: int = Field(0, ge=0, le=2**32 - 1)


LIMITS = {"max_items": MAX_ITEMS, "max_typed": MAX_TYPED, "max_text_chars": MAX_TEXT_CHARS,
          "max_layers": MAX_LAYERS, "max_coefs": MAX_COEFS, "max_cells": MAX_CELLS, "max_coef": MAX_COEF,
          "max_eval": MAX_EVAL, "max_neutral": MAX_NEUTRAL, "max_gen_tokens": MAX_GEN_TOKENS, "max_n_gen": MAX_N_GEN,
          "max_new_tokens": MAX_NEW_TOKENS, "default_layers": DEFAULT_LAYERS, "keep": KEEP}


# ---- the vectors of this session, and the files ---------------------------------------------------

@dataclass
class Entry:
    vector: Any  # lmscope.vectors.Vector
    data: Any  # the ContrastSet it was built from (its held-out part is what a task scores); None otherwise
    label: str
    origin: str  # "built" | "uploaded" | "file"


class Vectors(Kept):
    """The vectors built or uploaded in this session (by id, the last `KEEP`) and the files kept
    loaded. Builds, uploads and loads run on the model thread; listings and saves on the other."""

    def __init__(self) -> None:
        super().__init__("vec", "vector", KEEP, "build or upload it again, or save vectors and pick the file.")
        self._loaded: OrderedDict = OrderedDict()

    def listing(self) -> list[dict]:
        items = self.items()
        return [{"id": k, "label": e.label, "origin": e.origin, "method": e.vector.method, "site": e.vector.site,
                 "layers": e.vector.layers} for k, e in items]

    def file(self, path: Path, model) -> Any:
        key = (str(path), _mtime(path), _mtime(Path(f"{path}.json")))
        with self._lock:
            vec = self._loaded.get(key)
        if vec is None:
            vec = read_vector(path, model)
            with self._lock:
                self._loaded[key] = vec
                while len(self._loaded) > KEEP_LOADED:
                    self._loaded.popitem(last=False)
        return vec


def _mtime(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except OSError:
        return 0


def load_vector(path: Path, model, name: str):
    """`Vector.load(path, model=model)`, refusing sidecars that `Vector.load` takes but the studio
    cannot use: fields of the wrong type (a 400 here, not a 500 later) and `resid_norms` that are
    not `{layer: positive number}` (a relative coefficient divides by them)."""
    from lmscope.vectors import Vector

    try:
        vec = Vector.load(path, model=model)
        norms = vec.resid_norms
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ArtifactError(f"The sidecar of {name} has a field of the wrong type ({type(e).__name__}); it was not "
                            "written by lmscope or was edited.") from None
    if not all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in norms.values()) \
            or not isinstance(vec.method, str):
        raise ArtifactError(f"The sidecar of {name} has resid_norms that are not {{layer: positive number}} or a "
                            "method that is not text; it was not written by lmscope or was edited.")
    return vec


def read_vector(path: Path, model):
    """A vector file of the vector folders, after the studio's size limits (`edits.check_sizes`)."""
    check_sizes(path)
    try:
        return load_vector(path, model, path.name)
    except OSError as e:
        raise ArtifactError(f"{path.name} cannot be read ({e.strerror}).") from e


def upload(model, req: VectorUploadRequest):
    """The uploaded vector, read by `Vector.load` from a private temporary folder (never named)."""
    try:
        raw, side = (base64.b64decode(s, validate=True) for s in (req.safetensors, req.sidecar))
    except (binascii.Error, ValueError):
        raise InputError("The upload's safetensors and sidecar must be base64 (what FileReader.readAsDataURL gives "
                         "after the comma).") from None
    if len(side) > MAX_SIDECAR_BYTES:
        raise ArtifactError(f"The sidecar of {req.name} is over 1 MiB: not an lmscope sidecar.")
    with tempfile.TemporaryDirectory(prefix="lmscope-upload-") as tmp:
        path = Path(tmp) / req.name
        path.write_bytes(raw)
        Path(f"{path}.json").write_bytes(side)
        try:
            return load_vector(path, model, req.name)
        except ArtifactError as e:
            raise ArtifactError(str(e).replace(f"{tmp}{os.sep}", "").replace(tmp, ".")) from None


def describe(meta: dict, model) -> dict | None:
    """The listing entry of a vector artifact's sidecar (None when it is not a vector's)."""
    if meta.get("kind") != "vector":
        return None
    layers = meta.get("layers")
    layers = [x for x in layers if isinstance(x, int)] if isinstance(layers, list) else []
    text = {k: str(meta[k])[:200] if meta.get(k) is not None else None
            for k in ("model", "method", "site", "dataset", "created")}
    return {**text, "layers": layers,
            "usable": meta.get("model") == model.name and meta.get("d_model") == model.d_model}


def find_files(folders: VectorFolders, model) -> list[dict]:
    """Vector artifacts below the vector folders, as paths a request can give."""
    return folders.artifacts(lambda _, meta: describe(meta, model))


def datasets(model) -> list[dict]:
    """The shipped contrast sets as the page lists them (name, aliases, format, size, default task and chat)."""
    from lmscope.datasets.contrast import BUILTIN, load_contrast
    from lmscope.vectors.steering import CHAT_TASKS, default_task

    template = bool(getattr(model.tokenizer, "chat_template", None))
    out = []
    for name, aliases in BUILTIN.items():
        data, task = load_contrast(name), default_task(name)
        out.append({"name": name, "aliases": list(aliases), "format": data.format, "n": len(data), "task": task,
                    "chat": task in CHAT_TASKS and template})
    return out


# ---- the actions (on the model thread) ------------------------------------------------------------

def _layer(model, layer: int) -> int:
    n = model.n_layers
    if not -n <= layer < n:
        raise InputError(f"Layer {layer} is out of range for {model.name} ({n} layers: 0..{n - 1}, or -{n}..-1).")
    return layer % n


def build(studio, req: VectorBuildRequest) -> tuple[Entry, float]:
    """`make_vector` on the request's data (as `lmscope vector make`: chat on by default for refusal and
    sycophancy data when the model has a chat template); the entry and the seconds it took."""
    from lmscope.datasets.contrast import (
        from_completions,
        from_pairs,
        from_sets,
        load_contrast,
    )
    from lmscope.vectors.steering import CHAT_TASKS, default_task
    from lmscope.vectors.vector import ExtractConfig, make_vector

    t0, model = time.perf_counter(), studio.model
    if req.typed is not None:
        t = req.typed
        studio.check_prompts([*t.positive, *t.negative, *(t.prompts or [])])
        if t.format == "pairs":
            data = from_pairs(list(zip(t.positive, t.negative, strict=True)), name=t.name)
        elif t.format == "sets":
            data = from_sets(t.positive, t.negative, name=t.name)
        else:
            prompts = t.prompts * len(t.positive) if len(t.prompts) == 1 else t.prompts
            data = from_completions(list(zip(prompts, t.positive, t.negative, strict=True)), name=t.name)
        label = f"{t.name} ({len(data)} typed {t.format})"
    else:
        data = load_contrast(req.dataset).head(req.limit)
        label = f"{req.dataset} (first {len(data)})"
    chat = req.chat
    if chat is None:
        chat = default_task(data.name) in CHAT_TASKS and bool(getattr(model.tokenizer, "chat_template", None))
    cfg = ExtractConfig(method=req.method, position=req.position, site=req.site, chat=chat)
    vec, _ = make_vector(model, data, cfg, held_out=req.held_out, seed=req.seed)
    return Entry(vec, data, label, "built"), time.perf_counter() - t0


def _number(x) -> float | int | None:
    """`x` when it is a finite number (an int stays an int), else None: sidecar fields the page shows."""
    return x if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) else None


def separation(vec) -> dict[int, dict]:
    """The held-out separation recorded in the sidecar (`make_vector`), per layer the vector holds;
    entries that are not numbers (a hand-edited file) are dropped."""
    sep = vec.meta.get("evaluation", {})
    sep = sep.get("separation") if isinstance(sep, dict) else None
    out = {}
    for k, s in (sep.items() if isinstance(sep, dict) else ()):
        if isinstance(k, str) and k.lstrip("-").isdigit() and int(k) in vec.layers and isinstance(s, dict):
            row = {f: _number(s.get(f)) for f in ("auc", "pair_acc", "gap")}
            if row["auc"] is not None and row["gap"] is not None:
                out[int(k)] = row
    return out


def contrast_of(entry: Entry):
    """The contrast set a task scores held-out items of: the one the vector was built from here, or
    the shipped set its sidecar names (never a file it names); None when there is neither."""
    from lmscope.datasets.contrast import load_contrast, resolve_name

    if entry.data is not None:
        return entry.data
    shipped = resolve_name(str(entry.vector.meta.get("dataset", "")))
    return load_contrast(shipped) if shipped is not None else None


def default_task_of(data) -> str | None:
    """The task a sweep scores by default: a shipped set's own (`steering.default_task`), loglik for
    texts typed here (their held-out pairs); None where none can (no data; loglik on unpaired sets)."""
    from lmscope.vectors.steering import default_task

    if data is None:
        return None
    task = default_task(data.name) if data.source else "loglik"  # typed sets have no source file
    return None if task == "loglik" and not data.paired else task


def card(model, entry: Entry, ref: dict, layer: int | None = None, k: int = 8) -> dict:
    """What the vector is: per layer its norm, its norm over the typical residual norm and the
    held-out separation; the best separating layer (10%..85% of the depth); where it came from;
    the task a sweep scores by default; its top and bottom tokens at `layer`."""
    from lmscope.vectors.vector import best_separating_layer

    vec, meta = entry.vector, entry.vector.meta
    sep, norms, resid = separation(vec), vec.norm(), vec.resid_norms
    best = best_separating_layer(sep, 0.1, 0.85, model.n_layers) if sep else None
    at = _layer(model, layer) if layer is not None else best if best is not None else vec.layers[len(vec) // 2]
    rows = [{"layer": x, "norm": norms[x], "relative_norm": norms[x] / resid[x] if resid.get(x) else None,
             **sep.get(x, {"auc": None, "pair_acc": None, "gap": None})} for x in vec.layers]
    split = meta.get("split") if isinstance(meta.get("split"), dict) else {}
    rec = meta.get("evaluation", {}).get("sweep", {}) if isinstance(meta.get("evaluation"), dict) else {}
    rec = rec.get("recommended") if isinstance(rec, dict) else None
    text = {f: str(meta[f])[:200] if isinstance(meta.get(f), str | int | float) else None
            for f in ("dataset", "format", "position", "created")}
    return json_safe({
        **ref, "label": entry.label, "origin": entry.origin, "model": vec.model.name, "d_model": vec.d_model,
        "n_layers": vec.model.n_layers, "site": vec.site, "method": vec.method, "layers": rows, "best_layer": best,
        **text, "n_items": _number(meta.get("n_items")), "chat": meta.get("chat") if isinstance(meta.get("chat"), bool)
        else None, "split": {f: _number(split.get(f)) for f in ("held_out", "seed", "n_train", "n_test")},
        "task": default_task_of(contrast_of(entry)),
        "recorded_sweep": ({"layer": rec["layer"], "coef": _number(rec.get("coef"))}
                           if isinstance(rec, dict) and isinstance(rec.get("layer"), int) else None),
        "top_tokens": {"layer": at, **vec.top_tokens(model, at, k)}})


def task_for(model, entry: Entry, name: str | None, chat: bool | None, n_eval: int, n_neutral: int):
    """The `Behaviour` to score, on the held-out split recorded in the vector (as `lmscope vector
    sweep` does), of the data `contrast_of` finds; `name` None: that data's own task."""
    from lmscope.vectors.steering import CHAT_TASKS, TASKS, make_task

    vec, data = entry.vector, contrast_of(entry)
    if name is None and (name := default_task_of(data)) is None:
        what = "unpaired sets" if data is not None else "data the studio cannot read (no shipped set in its sidecar)"
        raise InputError(f"This vector was made from {what}, so no task scores it by default: pick one of "
                         f"{', '.join(t for t in TASKS if t != 'loglik')}.")
    if name == "loglik" and (data is None or not data.paired):
        raise InputError("The loglik task scores held-out pairs of the vector's own data: a vector built here from "
                         "pairs or completions, or a file made from a shipped set. Pick another task.")
    split = vec.meta.get("split") if isinstance(vec.meta.get("split"), dict) else {}
    held_out, seed = split.get("held_out"), split.get("seed")
    held_out = held_out if isinstance(held_out, float) and 0 < held_out < 1 else 0.25
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else 0
    if chat is None and name == "loglik":
        chat = vec.meta.get("chat") is True
    if chat is None and name in CHAT_TASKS and not getattr(model.tokenizer, "chat_template", None):
        chat = False
    return make_task(name, data=data, held_out=held_out, seed=seed, n_eval=n_eval, n_neutral=n_neutral, chat=chat)


def sweep(model, entry: Entry, ref: dict, req: VectorSweepRequest) -> dict:
    """`steering.sweep(model, vector, task, SweepConfig(...)).to_dict()`, with the task's details."""
    from lmscope.vectors.steering import SweepConfig, TokenMetric, default_layers
    from lmscope.vectors.steering import sweep as run_sweep

    t0, vec = time.perf_counter(), entry.vector
    if req.layers is not None:
        layers = list(dict.fromkeys(_layer(model, x) for x in req.layers))
    else:  # about DEFAULT_LAYERS spread over 10%..85% of the depth, among the layers the vector holds
        layers = [x for x in default_layers(model.n_layers, DEFAULT_LAYERS) if x in vec.layers]
        if not layers:
            step = max(1, len(vec) // DEFAULT_LAYERS)
            layers = vec.layers[::step][:DEFAULT_LAYERS]
    task = task_for(model, entry, req.task, req.chat, req.n_eval, req.n_neutral)
    cfg = SweepConfig(layers=tuple(layers), coefs=tuple(req.coefs), relative=req.relative, goal=req.goal,
                      kl_max=req.kl_max, repetition_margin=req.repetition_margin, gen_tokens=req.gen_tokens,
                      n_gen=req.n_gen, seed=req.seed)
    res = run_sweep(model, vec, task, cfg)
    metric = task.absent if req.goal == "increase" else task.present
    scored = metric.prompts if isinstance(metric, TokenMetric) else metric.positive
    return json_safe({**res.to_dict(), **ref, "label": entry.label,
                      "task_detail": {"chat": task.chat, "n_scored": len(scored), "neutral": list(task.neutral)},
                      "seconds": time.perf_counter() - t0})


def generate(studio, entry: Entry, ref: dict, req: VectorGenerateRequest) -> dict:
    """Greedy text with the vector at (layer, coef), without it, and with a seeded random direction
    of the same norm (`random_vector`) applied the same way."""
    from lmscope.vectors.steering import (
        random_vector,
        raw_scale,
        steer_edits,
        with_resid_norms,
    )

    model, vec = studio.model, entry.vector
    layer = _layer(model, req.layer)
    if layer not in vec.layers:
        raise InputError(f"The vector has no layer {req.layer} (it holds {', '.join(map(str, vec.layers))}).")
    batch = studio.tokenize(req.prompt, req.chat)
    if req.relative and req.mode != "ablate":
        vec = with_resid_norms(model, vec.at(layer))
    rnd = random_vector(vec, layer, req.seed)
    edits, control = (steer_edits(v, layer, req.coef, mode=req.mode, relative=req.relative) for v in (vec, rnd))
    kw = {"max_new_tokens": req.max_new_tokens}
    texts = [model.generate(batch, edits=e, **kw).texts[0] for e in ([], edits, control)]
    scale = None if req.mode == "ablate" else raw_scale(vec, layer, req.coef, relative=req.relative)
    added = None if scale is None else abs(scale) * float(vec[layer].norm())
    resid = vec.resid_norms.get(layer)
    return json_safe({**ref, "label": entry.label, "prompt": req.prompt, "chat": req.chat, "layer": layer,
                      "coef": req.coef, "mode": req.mode, "relative": req.relative, "seed": req.seed,
                      "max_new_tokens": req.max_new_tokens, "raw_scale": scale, "added_norm": added,
                      "random_added_norm": None if scale is None else abs(scale) * float(rnd[layer].norm()),
                      "relative_length": added / resid if added is not None and resid else None,
                      "baseline": texts[0], "steered": texts[1], "random": texts[2]})


# ---- routes ----------------------------------------------------------------------------------------

def add_routes(studio) -> None:
    from lmscope.vectors.steering import default_layers

    folders: VectorFolders = studio.vector_folders
    targets, store, model = VectorTargets(folders.folders), Vectors(), studio.model
    studio.info.update(vector_datasets=datasets(model), vector_tasks=list(TASKS), steering_limits=LIMITS,
                       steering_auto_layers=list(default_layers(model.n_layers, DEFAULT_LAYERS)))

    def on_vector(fn):
        """A job on the request's vector: `fn(entry, ref, req)`. A path's refusal names the vector
        folders (a user needs them); messages about files inside them name no server folder."""
        def job(req):
            path = folders.resolve(req.path) if req.path is not None else None
            try:
                if path is None:
                    entry, ref = store.get(req.vector), {"vector": req.vector}
                else:
                    entry, ref = Entry(store.file(path, model), None, Path(req.path).name, "file"), {"path": req.path}
                return fn(entry, ref, req)
            except (ArtifactError, InputError) as e:
                raise folders.quiet(e) from None
        return job

    def build_job(req: VectorBuildRequest) -> dict:
        entry, seconds = build(studio, req)
        return {**card(model, entry, {"vector": store.add(entry)}), "seconds": seconds}

    def upload_job(req: VectorUploadRequest) -> dict:
        entry = Entry(upload(model, req), None, req.name, "uploaded")
        return card(model, entry, {"vector": store.add(entry)})

    def save_job(req: VectorSaveRequest) -> dict:
        path = targets.resolve(req.path)  # before anything else: the refusal names the folders
        entry = store.get(req.vector)
        if path.exists() and not req.overwrite:
            raise ArtifactError(f"{short(req.path, 120)} exists; pick another name, or set overwrite to replace it.")
        if path.exists() and sidecar_kind(path) != "vector":
            raise ArtifactError(f"{short(req.path, 120)} exists and is not a vector artifact; the studio replaces only "
                                "vector files. Pick another name.")
        try:
            entry.vector.save(path)
        except (ArtifactError, InputError) as e:
            raise folders.quiet(e) from None
        return {"vector": req.vector, "saved": req.path, "label": entry.label}

    studio.get("vectors", lambda: {"vector_dirs": [str(f) for f in folders.folders],
                                   "files": find_files(folders, model), "session": store.listing()})
    studio.post("vectors/build", VectorBuildRequest, build_job)
    studio.post("vectors/upload", VectorUploadRequest, upload_job, job=False)
    studio.post("vectors/card", VectorCardRequest,
                on_vector(lambda entry, ref, req: card(model, entry, ref, layer=req.layer, k=req.k)), job=False)
    studio.post("vectors/save", VectorSaveRequest, save_job, queue=studio.atlas_q, job=False)
    studio.post("vectors/sweep", VectorSweepRequest, on_vector(lambda entry, ref, req: sweep(model, entry, ref, req)))
    studio.post("vectors/generate", VectorGenerateRequest,
                on_vector(lambda entry, ref, req: generate(studio, entry, ref, req)))
