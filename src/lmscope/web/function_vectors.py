"""The Function vectors tab's glue: the shipped in-context tasks, one job that makes a task's
vector and scores it per layer, the vectors made in this session, trying one on a typed prompt,
and saving one as a vector file. Each call is the one `lmscope fv sweep` makes for one task.

    POST /api/fv/run      F.prepare + F.make + F.evaluate: {"id", "sweep": LayerSweep.to_dict(),
                          "vector": Vector.info(), "queries", ...}  (a job: progress, cancel)
    GET  /api/fv/vectors  the vectors made in this session, newest first
    POST /api/fv/show     a kept vector's run answer again (by id)
    POST /api/fv/try      a prompt's top next tokens and greedy continuation, with and without
                          the vector at one layer (default: the best layer)
    POST /api/fv/save     a kept vector as a vector file inside the studio's vector folders

The tasks, their sizes and the limits are in /api/info ("studio" -> "fv"). A task is a shipped
*name* (`antonym`), never a path: a request cannot make the server read a file of its choosing
(`lmscope fv sweep --task FILE.jsonl` runs a user's own pairs). A save goes only into the vector
folders (where the Generate tab's `vector_file` and `lmscope generate --add-vector` read it),
never replaces a file unless `overwrite` is set, and then only a vector artifact.
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import asdict, dataclass
from typing import Annotated, Literal

from pydantic import Field, field_validator

from lmscope.engine.errors import ArtifactError, InputError

from .bodies import MAX_NEW_TOKENS, MAX_PROMPT_CHARS, _Body
from .edits import VectorTargets
from .guard import short, sidecar_kind
from .studio import Kept, Studio, json_safe

#: Bounds of one run (a run holds the model: on gemma-3-270m, CPU, the defaults take ~15-60 s).
MAX_SHOTS, MAX_PROMPTS, MAX_TEST = 10, 128, 64
MAX_TOP_HEADS, MAX_AIE_PROMPTS = 32, 32
#: Vectors kept in memory by id (each is n_layers x d_model floats and its answer).
KEEP = 8
#: Top next tokens and greedy tokens of a try.
MAX_TOP_K, MAX_TRY_TOKENS = 20, min(32, MAX_NEW_TOKENS)

Layer = Annotated[int, Field(ge=-4096, le=4095)]
Layers = Annotated[list[Layer], Field(min_length=1, max_length=256)]
VectorId = Annotated[str, Field(pattern=r"^fv-[0-9]{1,9}$")]


def task_list() -> list[dict]:
    """The shipped tasks (and the derived `copy`) with their sizes and first pair, as `lmscope fv tasks`."""
    from lmscope.datasets import icl

    out = []
    for name in icl.list_tasks():
        t = icl.load_task(name)
        out.append({"name": name, "pairs": len(t), "example": list(t.pairs[0])})
    return out


def check_task(name: str) -> str:
    """`name` itself when it is a shipped task; ValueError otherwise (a body validator)."""
    from lmscope.datasets import icl

    known = icl.list_tasks()
    if name in known:
        return name
    # The reason comes first: a validation message is cut at 200 characters.
    if any(c in name for c in "/\\") or name.endswith((".jsonl", ".json")) or name.startswith((".", "~")):
        raise ValueError(f"{name[:40]!r} is a file path; the studio takes shipped task names, not files (run your own "
                         "pairs with `lmscope fv sweep MODEL --task FILE.jsonl`). Tasks: " + ", ".join(known))
    close = list(dict.fromkeys([n for n in known if name.lower() in n] +
                               difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.7)))[:4]
    raise ValueError(f"Unknown task {name[:40]!r}" + (f"; did you mean {', '.join(close)}?" if close else
                                                      f"; the shipped tasks: {', '.join(known)}."))


class FVRunRequest(_Body):
    """One task's vector, made and scored per layer (the fields of `FVConfig` and of `evaluate`).
    `method`: "mean-diff" (task vector, added), "replace" (Hendel's mean few-shot state, replaces the
    last-token state) or "heads" (Todd's function vector: the top heads' summed mean output, added)."""

    task: str = Field(min_length=1, max_length=200)
    method: Literal["mean-diff", "replace", "heads"] = "mean-diff"
    shots: int = Field(5, ge=1, le=MAX_SHOTS)
    n_prompts: int = Field(32, ge=1, le=MAX_PROMPTS)
    n_test: int = Field(24, ge=1, le=MAX_TEST)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    template: Literal["arrow", "qa", "hendel"] = "arrow"
    keep_ambiguous: bool = False
    layers: Layers | None = None
    scale: float = Field(1.0, ge=-100, le=100, allow_inf_nan=False)
    positions: Literal["last", "all"] = "last"
    top_heads: int = Field(5, ge=1, le=MAX_TOP_HEADS)
    n_aie_prompts: int = Field(16, ge=1, le=MAX_AIE_PROMPTS)
    aie_layers: Layers | None = None
    heads_contrast: bool = False

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        return check_task(v)


class FVIdRequest(_Body):
    id: VectorId


class FVTryRequest(_Body):
    """A zero-shot prompt with and without the vector `id` at `layer` (None: its best layer),
    times `scale` (None: the scale it was scored with)."""

    id: VectorId
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    layer: Layer | None = None
    scale: float | None = Field(None, ge=-100, le=100, allow_inf_nan=False)
    top_k: int = Field(5, ge=1, le=MAX_TOP_K)
    max_new_tokens: int = Field(8, ge=0, le=MAX_TRY_TOKENS)


class FVSaveRequest(_Body):
    id: VectorId
    name: str = Field(min_length=1, max_length=1000)
    overwrite: bool = False


# ---- the vectors of this session -------------------------------------------------------------

@dataclass
class Made:
    """A vector made in this session, its per-layer result and the run's answer."""

    vector: object  # lmscope.vectors.Vector
    sweep: object  # lmscope.function_vectors.core.LayerSweep
    answer: dict


class Store(Kept):
    """The last `KEEP` vectors made (by id). Runs add on the model thread; the list, show and
    save read from another."""

    def __init__(self) -> None:
        super().__init__("fv", "vector", KEEP, "make it again, or save vectors you want to keep.")

    def listing(self) -> list[dict]:
        items = self.items()
        return [{"id": k, "task": m.sweep.task, "method": m.sweep.method, "mode": m.sweep.mode,
                 "layers": m.sweep.layers, "best_layer": m.sweep.best_layer, "best": m.sweep.best,
                 "zero_shot": m.sweep.zero_shot, "few_shot": m.sweep.few_shot, "n_test": m.sweep.n_test}
                for k, m in items]


# ---- the actions (run on the studio's workers) ------------------------------------------------

def _layers(model, layers) -> list[int] | None:
    """Layer indices normalised (negatives from the end), sorted, once each; a bad one is a SiteError
    naming the range, before any work."""
    if layers is None:
        return None
    return sorted({model.site(f"layers.{i}.resid_post").layer for i in layers})


def run(model, req: FVRunRequest, store: Store) -> dict:
    """`lmscope fv sweep` for one task: split, make the vector, score it at each layer."""
    from lmscope.engine.progress import bar
    from lmscope.function_vectors import core as F

    layers = _layers(model, req.layers)
    cfg = F.FVConfig(method=req.method, shots=req.shots, n_prompts=req.n_prompts, n_test=req.n_test, seed=req.seed,
                     template=req.template, drop_ambiguous=not req.keep_ambiguous, n_aie_prompts=req.n_aie_prompts,
                     top_heads=req.top_heads, aie_layers=tuple(_layers(model, req.aie_layers) or ()) or None,
                     heads_contrast=req.heads_contrast)
    with bar(total=2, desc="make the vector, then score it per layer", unit="stage") as stage:
        t0 = time.perf_counter()
        data = F.prepare(model, req.task, cfg)
        v = F.make(model, data, cfg)
        stage.update()
        t1 = time.perf_counter()
        sw = F.evaluate(model, v, data, layers=layers, scale=req.scale, positions=req.positions, shots=cfg.shots)
        stage.update()
    key = store.new_id()
    dec = model.tokenizer.decode
    text = {}  # token id -> its text, decoded once

    def tok(i: int) -> str:
        if i not in text:
            text[i] = dec([i])
        return text[i]

    queries = {"inputs": data.test.inputs, "outputs": data.test.outputs, "prompts": data.zero_shot(),
               "targets": [tok(int(i)) for i in data.test_ids],
               "predicted": [[tok(i) for i in row] for row in sw.predictions]}  # [layer][query]
    answer = json_safe({"id": key, "model": model.name, "task": data.task.name, "request": req.model_dump(),
                        "config": asdict(cfg), "sweep": sw.to_dict(), "vector": v.info(), "queries": queries,
                        "n_pairs": len(data.task), "n_train": len(data.train),
                        "seconds": {"make": round(t1 - t0, 2), "evaluate": round(time.perf_counter() - t1, 2)}})
    answer = json.loads(json.dumps(answer))  # the answer as the page reads it (layer keys as strings)
    store.put(key, Made(v, sw, answer))
    return answer


def try_vector(studio: Studio, req: FVTryRequest, store: Store) -> dict:
    """Top next tokens and a greedy continuation of `req.prompt`, without and with the vector
    (the edit `evaluate` scores: added, or replacing for Hendel's vectors, at the run's positions)."""
    from lmscope.function_vectors import core as F

    model = studio.model
    made = store.get(req.id)
    v, sw = made.vector, made.sweep
    layer = sw.best_layer if req.layer is None else model.site(f"layers.{req.layer}.resid_post").layer
    scale = sw.scale if req.scale is None else req.scale
    batch = studio.tokenize(req.prompt)
    edit = F.vector_edit(v, layer, scale=scale, positions=sw.positions, mode=sw.mode)
    out = {"id": req.id, "model": model.name, "task": sw.task, "method": sw.method, "mode": sw.mode,
           "positions": sw.positions, "prompt": req.prompt, "layer": layer, "best_layer": sw.best_layer,
           "scale": scale, "tokens": studio.input_tokens(batch)}
    for name, edits in (("baseline", []), ("edited", [edit])):
        res = {"top": model.run(batch, edits=edits).top_k(model, req.top_k)}
        if req.max_new_tokens:
            res["text"] = model.generate(batch, edits=edits, max_new_tokens=req.max_new_tokens).texts[0]
        out[name] = res
    return json_safe(out)


def save(folders: VectorTargets, req: FVSaveRequest, store: Store) -> dict:
    """The vector `req.id` (its sidecar with the per-layer result, as `fv sweep --out` writes it)
    as `req.name` inside the vector folders."""
    from lmscope.vectors.vector import Vector

    path = folders.resolve(req.name)
    made = store.get(req.id)
    if path.exists():
        if not req.overwrite:
            raise ArtifactError(f"{short(req.name, 120)} exists; pick another name, or set overwrite to replace it.")
        if sidecar_kind(path) != "vector":
            raise ArtifactError(f"{short(req.name, 120)} exists and is not a vector artifact; the studio replaces "
                                "only vector files. Pick another name.")
    v, sw = made.vector, made.sweep
    keep = ("task", "mode", "scale", "positions", "n_test", "shots", "zero_shot", "few_shot", "layers", "accuracy",
            "random", "prob")
    record = json_safe({**{k: getattr(sw, k) for k in keep}, "summary": sw.summary()})
    out = Vector({k: v[k] for k in v.layers}, model=v.model, site=v.site, method=v.method,
                 meta={**v.meta, "evaluation": {"layer_sweep": record}})
    try:
        out.save(path)
    except (ArtifactError, InputError, OSError) as e:
        raise folders.quiet(ArtifactError(f"Cannot save {short(req.name, 120)}: {e}")) from None
    first = folders.folders[0]
    return {"id": req.id, "saved": str(path.relative_to(first) if path.is_relative_to(first) else path),
            "task": sw.task, "method": sw.method, "mode": sw.mode, "layers": v.layers, "best_layer": sw.best_layer,
            "site": f"layers.{sw.best_layer}.{v.site}", "scale": sw.scale}


def add_routes(studio: Studio) -> None:
    store = Store()
    targets = VectorTargets(studio.vector_folders.folders)
    from lmscope.datasets import icl

    studio.info["fv"] = {
        "tasks": task_list(), "methods": ["mean-diff", "replace", "heads"], "templates": list(icl.TEMPLATES),
        "max_shots": MAX_SHOTS, "max_prompts": MAX_PROMPTS, "max_test": MAX_TEST, "max_top_heads": MAX_TOP_HEADS,
        "max_aie_prompts": MAX_AIE_PROMPTS, "keep": KEEP, "max_top_k": MAX_TOP_K, "max_try_tokens": MAX_TRY_TOKENS,
    }

    def show(req: FVIdRequest) -> dict:
        return store.get(req.id).answer

    def save_job(req: FVSaveRequest) -> dict:
        return save(targets, req, store)

    studio.post("fv/run", FVRunRequest, lambda req: run(studio.model, req, store))
    studio.post("fv/try", FVTryRequest, lambda req: try_vector(studio, req, store))
    # reads and writes of kept vectors never wait behind a run
    studio.post("fv/show", FVIdRequest, show, queue=studio.atlas_q, job=False)
    studio.post("fv/save", FVSaveRequest, save_job, queue=studio.atlas_q, job=False)
    studio.get("fv/vectors", lambda: {"vectors": store.listing(), "keep": KEEP,
                                      "vector_dirs": [str(f) for f in targets.folders]})
