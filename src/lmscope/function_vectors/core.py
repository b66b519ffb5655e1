"""In-context task vectors: what a few-shot prompt writes into the last token, as a vector.

Three ways to get one per layer, all read at the **last token** of few-shot prompts
("hot -> cold\\nbig -> small\\nfast ->", see `lmscope.datasets.icl`):

- `mean-diff` (task vector as a difference of means): mean `resid_post` of N few-shot prompts
  minus the mean over the same queries asked zero-shot ("fast ->"). Added (`Add`) to a
  zero-shot prompt's last token at layer L.
- `replace` (Hendel et al. 2023): the mean few-shot state itself; it *replaces* (`Set`) the
  zero-shot prompt's last-token state at layer L. The extraction queries are other training
  words than the evaluated one (Hendel's "dummy query").
- `heads` (Todd et al. 2024, function vectors): the average indirect effect (AIE) of every
  head — patch its mean `attn.z` over clean few-shot prompts into shuffled-label prompts at
  the last token, measure the rise of P(answer) — picks the top heads; FV = sum of their mean
  `attn.head_out` at the last token. The same vector is stored at every layer.

Evaluation (`evaluate`) adds the vector at one layer to held-out zero-shot prompts and scores
the first answer token, per layer, next to zero-shot and few-shot accuracy and next to a
seeded random vector of equal norm. `compose` measures vector algebra (antonym + capitalize
- copy on "hot" -> "Cold").

    model = ls.load("gemma-3-270m")
    v = make(model, "antonym")                 # Vector, keys layers.0..17
    sw = evaluate(model, v, "antonym")         # LayerSweep: accuracy per layer + controls
    model.run("fast ->", edits=[v.edit(6, positions="last")]).top_k(model, 3)
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor

from lmscope.datasets import icl as T
from lmscope.engine.errors import InputError
from lmscope.engine.interventions import Add, Apply, Edit, Set
from lmscope.engine.model import Model
from lmscope.engine.progress import steps
from lmscope.engine.results import Result, Table
from lmscope.function_vectors import scoring
from lmscope.vectors.vector import Vector

log = logging.getLogger(__name__)

FVMethod = Literal["mean-diff", "replace", "heads"]
METHODS = ("mean-diff", "replace", "heads")


@dataclass(frozen=True, kw_only=True)
class FVConfig:
    """How prompts are drawn and how the vector is made.

    Attributes:
        method: "mean-diff", "replace" (Hendel) or "heads" (Todd).
        shots: Demonstrations per few-shot prompt.
        n_prompts: Few-shot prompts averaged for the vector (queries from the training pairs).
        n_test: Held-out queries for evaluation (never used as a query or a demonstration
            during extraction).
        seed: Seeds the split, the demonstrations and the random control.
        template: Prompt template name (see `lmscope.datasets.icl.TEMPLATES`).
        drop_ambiguous: Drop pairs whose answer's first token equals the copied input's.
        n_aie_prompts: Shuffled-label prompts for the heads' indirect effects (`heads`).
        top_heads: Heads summed into the function vector (`heads`).
        aie_layers: Layers whose heads are scanned (`heads`; None = every layer).
        heads_contrast: Sum each top head's mean output on few-shot prompts *minus* its mean
            on the zero-shot twins (`heads`): drops the task-independent part of the heads'
            outputs. False is Todd et al.'s function vector.
        batch_size: Prompts per forward.
    """

    method: FVMethod = "mean-diff"
    shots: int = 5
    n_prompts: int = 32
    n_test: int = 32
    seed: int = 0
    template: str = "arrow"
    drop_ambiguous: bool = True
    n_aie_prompts: int = 16
    top_heads: int = 5
    aie_layers: tuple[int, ...] | None = None
    heads_contrast: bool = False
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}.")
        for name in ("shots", "n_prompts", "n_test", "n_aie_prompts", "top_heads", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}.")
        T.get_template(self.template)


@dataclass
class TaskData:
    """A task split for one model: demonstration pool, held-out queries and their targets."""

    task: T.Task
    train: T.Task
    test: T.Task
    test_ids: Tensor  # [n_test] first answer token of each held-out query
    template: str

    def zero_shot(self) -> list[str]:
        return T.zero_shot_prompts(self.test.inputs, self.template)

    def few_shot(self, shots: int, seed: int) -> list[str]:
        return T.few_shot_prompts(self.train, self.test.inputs, shots=shots, seed=seed + 1, template=self.template)


def prepare(model: Model, task: str | T.Task, cfg: FVConfig, exclude: Sequence[str] = ()) -> TaskData:
    """Load, filter (`drop_ambiguous`) and split a task; `exclude` inputs never enter the
    demonstration pool (held-out queries of another task)."""
    t = T.load_task(task) if isinstance(task, str) else task
    n_all = len(t)
    if cfg.drop_ambiguous:
        t = T.drop_ambiguous(model, t, cfg.template)
    if len(t) < cfg.n_test + cfg.shots + 1:
        why = (f" ({n_all - len(t)} of {n_all} dropped: their first answer token equals the copied input's; "
               "drop_ambiguous=False keeps them)") if len(t) < n_all else ""
        raise InputError(f"Task {t.name!r} has {len(t)} usable pairs{why}; n_test={cfg.n_test} and "
                         f"shots={cfg.shots} need at least {cfg.n_test + cfg.shots + 1}. Lower n_test.")
    train, test = t.split(cfg.n_test, cfg.seed)
    train = train.without_inputs(exclude)
    ids = T.answer_ids(model, test.inputs, test.outputs, cfg.template)
    return TaskData(t, train, test, ids, cfg.template)


def _extraction_prompts(data: TaskData, cfg: FVConfig, *, shuffle_labels: bool = False, n: int | None = None,
                        salt: int = 0) -> tuple[list[str], list[str], list[str], list[str]]:
    """(few-shot prompts, zero-shot twins, queries, answers) on training queries (seeded)."""
    n = n or cfg.n_prompts
    rng = random.Random(cfg.seed * 1000 + 17 + salt)
    pool = list(data.train.pairs)
    if len(pool) < cfg.shots + 1:
        raise InputError(f"Task {data.task.name!r} has {len(pool)} training pairs; {cfg.shots} shots need "
                         f"{cfg.shots + 1}.")
    # every pair once before any repeats (queries repeat only when n > the pool)
    order = [i for _ in range(-(-n // len(pool))) for i in rng.sample(range(len(pool)), len(pool))][:n]
    qs = [pool[i][0] for i in order]
    few = T.few_shot_prompts(data.train, qs, shots=cfg.shots, seed=cfg.seed + 7 + salt, template=data.template,
                             shuffle_labels=shuffle_labels)
    return few, T.zero_shot_prompts(qs, data.template), qs, [pool[i][1] for i in order]


# ---- extraction ------------------------------------------------------------------------------
def last_token_means(model: Model, prompts: Sequence[str], *, batch_size: int = 32,
                     progress: bool = False) -> tuple[Tensor, Tensor]:
    """Mean `resid_post` at the last token over `prompts`, every layer in one pass per batch.

    Returns:
        (mean [n_layers, d_model], mean L2 norm [n_layers]), float32 on the CPU (accumulated
        in float64).
    """
    total = torch.zeros(model.n_layers, model.d_model, dtype=torch.float64)
    norm = torch.zeros(model.n_layers, dtype=torch.float64)
    names = [f"layers.{i}.resid_post" for i in range(model.n_layers)]
    for s in steps(range(0, len(prompts), batch_size), desc="states", show=progress, leave=False):
        res = model.run(list(prompts[s:s + batch_size]), capture=["layers.*.resid_post"], positions="last", logits=None)
        x = torch.stack([res.cache[n] for n in names], 1).double().cpu()  # [b, layer, d_model]
        total += x.sum(0)
        norm += x.norm(dim=-1).sum(0)
    return (total / len(prompts)).float(), (norm / len(prompts)).float()


def head_means(model: Model, prompts: Sequence[str], *, batch_size: int = 32) -> tuple[Tensor, Tensor]:
    """Mean per-head `attn.z` and `attn.head_out` at the last token over `prompts`:
    ([layer, head, d_head], [layer, head, d_model]) float32 on the CPU."""
    z = torch.zeros(model.n_layers, model.n_heads, model.d_head, dtype=torch.float64)
    out = torch.zeros(model.n_layers, model.n_heads, model.d_model, dtype=torch.float64)
    for s in range(0, len(prompts), batch_size):
        res = model.run(list(prompts[s:s + batch_size]), capture=["layers.*.attn.z", "layers.*.attn.head_out"],
                     positions="last", logits=None)
        for lay in range(model.n_layers):
            z[lay] += res.cache[f"layers.{lay}.attn.z"].double().sum(0).cpu()  # [head, d_head]
            out[lay] += res.cache[f"layers.{lay}.attn.head_out"].double().sum(0).cpu()  # [head, d_model]
    return (z / len(prompts)).float(), (out / len(prompts)).float()


def _per_row_heads(mean_z: Tensor, n_heads: int) -> Apply:
    """Apply fn for rows laid out prompt-major, head-minor (row = i * n_heads + h): row r gets
    head (r % n_heads) replaced by its mean. x: [rows, k, head, d_head]."""
    def fn(x: Tensor) -> Tensor:
        x = x.clone()
        rows = torch.arange(x.shape[0], device=x.device)
        h = rows % n_heads
        x[rows, :, h] = mean_z.to(x.device, x.dtype)[h][:, None]
        return x
    return fn


def indirect_effects(model: Model, prompts: Sequence[str], targets: Tensor, mean_z: Tensor, *,
                     layers: Sequence[int] | None = None, progress: bool = False) -> Tensor:
    """Todd et al.'s average indirect effect of every head: mean over `prompts` (shuffled-label
    few-shot prompts) of P(target | head's last-token z := its clean mean) - P(target).

    Only the last token changes when a head is patched at the last token, so the prompt's
    prefix runs once with the KV cache and each layer's `n_heads x n_prompts` patched
    variants run one token each (exactly equal to full forwards; tested).

    Args:
        prompts: Corrupted prompts; `targets` [n] their correct first answer tokens.
        mean_z: Clean mean z, [n_layers, n_heads, d_head].
        layers: Layers to scan (None: all); others are NaN in the result.

    Returns:
        AIE [n_layers, n_heads] float32 (NaN where not scanned).
    """
    layers = (list(range(model.n_layers)) if layers is None
              else [model.site(f"layers.{i}.resid_post").layer for i in layers])
    h, n = model.n_heads, len(prompts)
    scorer = scoring.LastTokenScorer(model, prompts, targets, batch_size=max(1, 256 // h))
    base = scorer.score().prob  # [n]
    aie = torch.full((model.n_layers, h), float("nan"))
    for lay in steps(layers, desc="heads (AIE)", show=progress, leave=False):
        ed = Apply(site=f"layers.{lay}.attn.z", fn=_per_row_heads(mean_z[lay], h), positions="last", name="mean-head")
        p = scorer.score([ed], rep=h).prob.reshape(n, h)
        aie[lay] = (p - base[:, None]).mean(0)
    return aie


def top_heads(aie: Tensor, k: int) -> list[tuple[int, int, float]]:
    """The k (layer, head, AIE) with the highest AIE (NaN skipped)."""
    flat = torch.nan_to_num(aie, nan=float("-inf")).flatten()
    k = min(k, int(torch.isfinite(flat).sum()))
    vals, idx = flat.topk(k)
    return [(int(i) // aie.shape[1], int(i) % aie.shape[1], float(v)) for v, i in zip(vals, idx, strict=True)]


def make(model: Model, task: str | T.Task | TaskData, config: FVConfig | None = None, *, progress: bool = False,
         **overrides) -> Vector:
    """A task vector for every layer (`Vector`, site resid_post, method "function-vector").

    `meta` records the task, `fv_method`, `mode` ("add" or "replace"), the split (seed,
    n_test, held-out inputs) and, for `heads`, the chosen heads and the full AIE table.
    """
    cfg = replace(config or FVConfig(), **overrides)
    data = task if isinstance(task, TaskData) else prepare(model, task, cfg)
    few, zero, _, _ = _extraction_prompts(data, cfg)
    meta = {"task": data.task.name, "fv_method": cfg.method, "mode": "replace" if cfg.method == "replace" else "add",
            "shots": cfg.shots, "n_prompts": cfg.n_prompts, "n_test": cfg.n_test, "seed": cfg.seed,
            "template": cfg.template, "drop_ambiguous": cfg.drop_ambiguous, "test_inputs": data.test.inputs,
            "position": "last", "dataset_sha256": data.task.sha256(), "n_pairs": len(data.task),
            "n_train_pairs": len(data.train)}
    if cfg.method in ("mean-diff", "replace"):
        fs, norms = last_token_means(model, few, batch_size=cfg.batch_size, progress=progress)  # [layer, d_model]
        if cfg.method == "replace":
            layers = fs
        else:
            layers = fs - last_token_means(model, zero, batch_size=cfg.batch_size, progress=progress)[0]
        meta["resid_norms"] = {i: float(norms[i]) for i in range(model.n_layers)}  # typical few-shot state norm
        return Vector(dict(enumerate(layers)), model=model, method="function-vector", meta=meta)
    # heads (Todd et al.): clean means, AIE on shuffled-label prompts, top heads' summed output
    mean_z, mean_out = head_means(model, few, batch_size=cfg.batch_size)
    bad, _, bad_q, bad_ans = _extraction_prompts(data, cfg, shuffle_labels=True, n=cfg.n_aie_prompts, salt=1)
    targets = T.answer_ids(model, bad_q, bad_ans, cfg.template)
    aie = indirect_effects(model, bad, targets, mean_z, layers=cfg.aie_layers, progress=progress)
    heads = top_heads(aie, cfg.top_heads)
    if cfg.heads_contrast:
        mean_out = mean_out - head_means(model, zero, batch_size=cfg.batch_size)[1]
    fv = sum(mean_out[lay, hd] for lay, hd, _ in heads)  # [d_model]
    meta.update(heads=[[lay, hd, a] for lay, hd, a in heads],
                aie=[[None if math.isnan(x) else x for x in row] for row in aie.tolist()],  # NaN: not scanned
                aie_layers=list(cfg.aie_layers) if cfg.aie_layers else None, n_aie_prompts=cfg.n_aie_prompts,
                top_heads=cfg.top_heads, heads_contrast=cfg.heads_contrast)
    # one copy per layer: safetensors refuses tensors that share memory
    return Vector({i: fv.clone() for i in range(model.n_layers)}, model=model, method="function-vector", meta=meta)


# ---- evaluation ------------------------------------------------------------------------------
def random_like(v: Tensor, *, seed: int, layer: int) -> Tensor:
    """A seeded Gaussian direction with the norm of `v` [d_model] (the random control)."""
    g = torch.Generator().manual_seed(seed * 100_003 + layer)
    r = torch.randn(v.shape, generator=g)
    return r * (v.float().norm() / r.norm())


def vector_edit(vec: Vector | Tensor, layer: int, *, scale: float = 1.0, positions="last",
                mode: str = "add") -> Edit:
    """The edit that applies a task vector at `layers.{layer}.resid_post`: `Add` (scale * v)
    for mode "add", `Set` (the state itself; scale ignored) for mode "replace"."""
    t = vec[layer] if isinstance(vec, Vector) else vec
    site = f"layers.{layer}.resid_post"
    if mode == "replace":
        return Set(site=site, value=t, positions=positions)
    if mode != "add":
        raise InputError(f"mode must be 'add' or 'replace', got {mode!r}.")
    return Add(site=site, vector=t, scale=scale, positions=positions)


@dataclass
class LayerSweep(Result):
    """Held-out first-token accuracy with the vector at each layer, with its baselines.

    `accuracy[i]` / `random[i]` / `prob[i]` belong to `layers[i]`; `prob` is the mean
    probability of the target token. `zero_shot` and `few_shot` do not depend on the layer.
    """

    task: str
    method: str
    mode: str
    scale: float
    positions: str
    n_test: int
    shots: int
    zero_shot: float
    few_shot: float
    layers: list[int]
    accuracy: list[float]
    random: list[float]
    prob: list[float]
    zero_shot_prob: float = float("nan")
    few_shot_prob: float = float("nan")
    model: str = ""
    predictions: list[list[int]] = field(default_factory=list)  # [layer][query] top-1 token ids with the vector

    @property
    def best_layer(self) -> int:
        return self.layers[max(range(len(self.layers)), key=lambda i: (self.accuracy[i], self.prob[i]))]

    @property
    def best(self) -> float:
        return self.accuracy[self.layers.index(self.best_layer)]

    def summary(self) -> dict:
        """One table row: zero-shot, few-shot, best layer, its accuracy, the random control at
        that layer, and the accuracy at the last layer."""
        i = self.layers.index(self.best_layer)
        return {"task": self.task, "method": self.method, "zero_shot": self.zero_shot, "few_shot": self.few_shot,
                "best_layer": self.best_layer, "best": self.best, "random_at_best": self.random[i],
                "best_random": max(self.random), "last_layer": self.layers[-1], "last_layer_accuracy": self.accuracy[-1]}

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary()}

    def table(self) -> Table:
        """Per layer: accuracy with the vector, with the random control, and P(target)."""
        s = self.summary()
        return Table(["layer", "FV acc", "random", "P(target)"],
                     [list(r) for r in zip(self.layers, self.accuracy, self.random, self.prob, strict=True)],
                     title=f"{self.model}: {self.task} per layer ({self.method}, {self.positions}), n_test={self.n_test}",
                     formats={"FV acc": ".2f", "random": ".2f", "P(target)": ".3f"},
                     notes=[(f"zero-shot {s['zero_shot']:.2f}, {self.shots}-shot {s['few_shot']:.2f}; best layer "
                             f"{s['best_layer']} ({s['best']:.2f}, random there {s['random_at_best']:.2f}); last "
                             f"layer {s['last_layer']} ({s['last_layer_accuracy']:.2f})")])


def evaluate(model: Model, vector: Vector, task: str | T.Task | TaskData | None = None, *,
             layers: Sequence[int] | None = None, scale: float = 1.0, positions="last", mode: str | None = None,
             shots: int | None = None, baselines: bool = True, control: bool = True, batch_size: int = 32,
             progress: bool = False) -> LayerSweep:
    """Per-layer accuracy of held-out zero-shot prompts with the vector applied at the last
    token (`positions="all"`: every prompt token), next to zero-shot and few-shot accuracy and
    a seeded random vector of equal norm at the same layer.

    Args:
        vector: From `make` (its meta gives the task, split and mode) or any resid_post Vector.
        task: Task to score on (default: the vector's); the split follows the vector's meta.
        layers: Layers to try (default: every layer the vector has).
        scale: Coefficient of the vector (mode "add").
        mode: "add" or "replace" (default: the vector's meta, else "add").
        shots: Demonstrations of the few-shot baseline (default: the vector's).
    """
    vector.check_model(model)
    m = vector.meta
    mode = mode or m.get("mode", "add")
    shots = shots or int(m.get("shots", 5))
    seed = int(m.get("seed", 0))
    if isinstance(task, TaskData):
        data = task
    else:
        name = task if task is not None else m.get("task")
        if name is None:
            raise InputError("This vector does not say which task it is for; pass task=.")
        cfg = FVConfig(shots=shots, n_test=int(m.get("n_test", 32)), seed=seed, template=m.get("template", "arrow"),
                       drop_ambiguous=bool(m.get("drop_ambiguous", True)))
        data = prepare(model, name, cfg)
    layers = vector.layers if layers is None else [model.site(f"layers.{i}.resid_post").layer for i in layers]
    zp, ids = data.zero_shot(), data.test_ids
    scorer = scoring.LastTokenScorer(model, zp, ids, batch_size=batch_size) if positions == "last" else None

    def run(v: Vector | Tensor | None, lay: int = 0) -> scoring.Score:
        if scorer is not None:  # only the last token changes: the prefix ran once (KV cache)
            eds = [] if v is None else [vector_edit(v, lay, scale=scale, positions="last", mode=mode)]
            return scorer.score(eds)
        eds = [] if v is None else [vector_edit(v, lay, scale=scale, positions=positions, mode=mode)]
        return scoring.score(model, zp, ids, edits=eds, batch_size=batch_size)

    nan = float("nan")
    zs = fs = (nan, nan)
    if baselines:
        s = run(None)
        zs = (s.accuracy, float(s.prob.mean()))
        s = scoring.score(model, data.few_shot(shots, seed), ids, batch_size=batch_size)
        fs = (s.accuracy, float(s.prob.mean()))
    acc, rnd, prob, preds = [], [], [], []
    for lay in steps(layers, desc="layers", show=progress, leave=False):
        s = run(vector, lay)
        acc.append(s.accuracy)
        prob.append(float(s.prob.mean()))
        preds.append(s.top.tolist())
        rnd.append(run(random_like(vector[lay], seed=seed, layer=lay), lay).accuracy if control else nan)
    pos = positions if isinstance(positions, str) else str(positions)
    return LayerSweep(task=data.task.name, method=m.get("fv_method", vector.method), mode=mode, scale=scale,
                      positions=pos, n_test=len(ids), shots=shots, zero_shot=zs[0], few_shot=fs[0], layers=layers,
                      accuracy=acc, random=rnd, prob=prob, zero_shot_prob=zs[1], few_shot_prob=fs[1], model=model.name,
                      predictions=preds)


# ---- composition -----------------------------------------------------------------------------
@dataclass
class Composition(Result):
    """Accuracy on a composed task (e.g. antonym then capitalize: "hot" -> "Cold") per layer of
    the composed vector `sum(plus) - sum(minus)`, next to each `plus` vector alone, the vector
    extracted directly from few-shot prompts of the composed task, and a random vector of the
    composed vector's norm. `keys[name][i]`: share of predictions at `layers[i]` (composed
    vector) that are the first token of `name` applied alone to the input ("cold", "Hot").
    `plus_only[i]`: accuracy of `sum(plus)` without the subtracted vectors (empty when there
    are none): tells whether the subtraction is needed."""

    target: str
    expression: str
    n_test: int
    zero_shot: float
    few_shot: float
    layers: list[int]
    composed: list[float]
    singles: dict[str, list[float]]
    direct: list[float]
    random: list[float]
    keys: dict[str, list[float]]
    plus_only: list[float] = field(default_factory=list)
    scale: float = 1.0
    model: str = ""

    def summary(self) -> dict:
        i = max(range(len(self.layers)), key=lambda j: self.composed[j])
        return {"target": self.target, "expression": self.expression, "zero_shot": self.zero_shot,
                "few_shot": self.few_shot, "best_layer": self.layers[i], "composed": self.composed[i],
                "singles": {k: v[i] for k, v in self.singles.items()},
                "best_single": max(max(v) for v in self.singles.values()) if self.singles else None,
                "direct": self.direct[i], "best_direct": max(self.direct), "random": self.random[i],
                "plus_only": self.plus_only[i] if self.plus_only else None,
                "best_plus_only": max(self.plus_only) if self.plus_only else None,
                "keys": {k: v[i] for k, v in self.keys.items()}}

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary()}

    def table(self) -> Table:
        """Accuracy at the composed vector's best layer: baselines, the composed vector, each
        single vector, the directly extracted one and the random control (`lmscope fv compose`)."""
        s = self.summary()
        rows = [["zero-shot", self.zero_shot], ["few-shot ICL", self.few_shot], [self.expression, s["composed"]]]
        rows += [[f"{k} alone", a] for k, a in s["singles"].items()]
        rows.append([f"extracted from {self.target} ICL", s["direct"]])
        if self.plus_only:
            rows.append([f"{self.expression.split(' - ')[0]} (no subtraction)", s["plus_only"]])
        rows.append(["random (equal norm)", s["random"]])
        return Table(["vector", "accuracy at best layer"], rows,
                     title=f"{self.model}: {self.expression} on {self.target} (n={self.n_test}, best layer "
                           f"{s['best_layer']})", formats={"accuracy at best layer": ".2f"})

    def tables(self) -> list[Table]:
        curves = {self.expression: self.composed, **{f"{k} alone": v for k, v in self.singles.items()},
                  "direct": self.direct, "random": self.random}
        if self.plus_only:
            curves["no subtraction"] = self.plus_only
        per_layer = Table(["layer", *curves], [[lay, *(c[i] for c in curves.values())]
                                               for i, lay in enumerate(self.layers)],
                          title="accuracy per layer", formats=dict.fromkeys(curves, ".2f"))
        return [self.table(), per_layer]


def _pool(model: Model, task: str | T.Task, template: str, exclude: Sequence[str]) -> TaskData:
    """A task used only as a demonstration pool (no held-out split), minus `exclude` inputs."""
    t = T.load_task(task) if isinstance(task, str) else task
    empty = t.subset([])
    return TaskData(t, t.without_inputs(exclude), empty, torch.zeros(0, dtype=torch.long), template)


def compose(model: Model, plus: Sequence[str | T.Task], minus: Sequence[str | T.Task] = (), *,
            target: str | T.Task | None = None, config: FVConfig | None = None, layers: Sequence[int] | None = None,
            scale: float = 1.0, positions="last", progress: bool = False) -> Composition:
    """Measure vector algebra: `sum(FV(plus)) - sum(FV(minus))` added to zero-shot prompts of
    the composed task (default: the plus tasks chained, `plus[0].then(plus[1])...`).

    Every vector is extracted (`config.method`, "mean-diff" or "heads") from demonstration
    pools that never contain the composed task's held-out inputs.
    """
    cfg = config or FVConfig()
    if cfg.method == "replace":
        raise InputError("Composition adds vectors; use method 'mean-diff' or 'heads', not 'replace'.")
    if not plus:
        raise InputError("compose needs at least one --plus task.")
    plus_t = [T.load_task(p) if isinstance(p, str) else p for p in plus]
    minus_t = [T.load_task(p) if isinstance(p, str) else p for p in minus]
    if target is None:
        tgt = plus_t[0]
        for p in plus_t[1:]:
            tgt = tgt.then(p)
    else:
        tgt = T.load_task(target) if isinstance(target, str) else target
    data = prepare(model, tgt, cfg)
    held = data.test.inputs
    vecs = {t.name: make(model, _pool(model, t, cfg.template, held), cfg, progress=progress) for t in plus_t + minus_t}
    plus_sum = sum(vecs[t.name] for t in plus_t)
    composed = plus_sum - sum(vecs[t.name] for t in minus_t) if minus_t else plus_sum
    expr = " + ".join(t.name for t in plus_t) + "".join(f" - {t.name}" for t in minus_t)
    composed = Vector({k: composed[k] for k in composed.layers}, model=model, method="function-vector",
                      meta={"task": tgt.name, "expression": expr, "mode": "add", "seed": cfg.seed,
                            "n_test": cfg.n_test, "shots": cfg.shots, "template": cfg.template})
    direct = make(model, data, cfg, progress=progress)
    kw = {"layers": layers, "scale": scale, "positions": positions, "batch_size": cfg.batch_size}
    main = evaluate(model, composed, data, progress=progress, **kw)
    singles = {t.name: evaluate(model, vecs[t.name], data, baselines=False, control=False, **kw).accuracy
               for t in plus_t}
    dir_acc = evaluate(model, direct, data, baselines=False, control=False, **kw).accuracy
    plus_only = []
    if minus_t:  # the same sum without the subtraction
        plus_v = Vector({k: plus_sum[k] for k in plus_sum.layers}, model=model, method="function-vector",
                        meta={**composed.meta, "expression": " + ".join(t.name for t in plus_t)})
        plus_only = evaluate(model, plus_v, data, baselines=False, control=False, **kw).accuracy
    # which single task's answer does the composed vector produce instead?
    keys = {}
    for t in plus_t:
        alt = [t.apply(x) for x in held]
        if all(a is not None for a in alt):
            ids = T.answer_ids(model, held, alt, cfg.template)
            keys[t.name] = [float((torch.tensor(p) == ids).float().mean()) for p in main.predictions]
    return Composition(target=tgt.name, expression=expr, n_test=len(held), zero_shot=main.zero_shot,
                       few_shot=main.few_shot, layers=main.layers, composed=main.accuracy, singles=singles,
                       direct=dir_acc, random=main.random, keys=keys, plus_only=plus_only, scale=scale,
                       model=model.name)
