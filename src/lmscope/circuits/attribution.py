"""Attribution patching over the edges of the model graph: EAP and EAP-IG.

EAP (Syed et al. 2023) scores edge u -> v with one forward/backward pair on the clean prompts
and one forward on the corrupt ones:

    score(u -> v) = (ref_u - a_u) . dM/d input_v        (summed over positions, mean over rows)

the first-order estimate of the metric change when receiver v reads u's reference write
(the corrupt one for resample ablation) instead of its clean write. EAP-IG (Hanna et al.
2024) averages the gradient over `steps` inputs interpolated between the corrupt and the clean
token embeddings, which makes the estimate faithful where the metric is far from linear.

The edge graph (`lmscope.engine.edges`): senders are the input, every head and every MLP;
receivers are every head's query, every KV head's key and value (grouped-query attention:
shared by a group of query heads), every MLP's input and the logits. A node's score is the
sum of its outgoing edges' scores (the attribution-patching estimate of patching the node).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmscope.circuits.ablation import ABLATIONS, reference
from lmscope.circuits.metric import TaskRun
from lmscope.engine.edges import EdgeRun, Graph, sender_outputs
from lmscope.engine.errors import InputError
from lmscope.engine.progress import steps
from lmscope.engine.results import Result, Table

METHODS = ("eap", "eap-ig")


@dataclass(frozen=True, kw_only=True)
class AttributionConfig:
    """How edges are scored.

    Attributes:
        method: "eap" (one gradient at the clean input) or "eap-ig" (integrated gradients
            along the straight line from the corrupt to the clean token embeddings).
        steps: Interpolation steps of EAP-IG (the paper uses 5 to 20; ignored by EAP).
        ablation: What an ablated edge carries: "resample" (the paired corrupt prompt's
            write), "mean" (the mean write over the corrupt prompts), "zero".
        batch_size: Prompts per forward/backward.
    """

    method: str = "eap-ig"
    steps: int = 5
    ablation: str = "resample"
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}.")
        if self.ablation not in ABLATIONS:
            raise InputError(f"ablation must be one of {', '.join(ABLATIONS)}, got {self.ablation!r}.")
        if self.steps < 1 or self.batch_size < 1:
            raise InputError("steps and batch_size must be at least 1.")


@dataclass
class EdgeScores(Result):
    """Per-edge attribution scores [senders, receivers] (NaN where no edge exists)."""

    model: str
    task: str
    method: str
    steps: int
    ablation: str
    senders: list[str]
    receivers: list[str]
    scores: Tensor  # [S, R] float32, NaN off-graph
    clean: float
    corrupt: float
    n_prompts: int
    seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def valid(self) -> Tensor:
        return ~self.scores.isnan()

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def node_scores(self) -> dict[str, float]:
        """Each sender's score: the sum over its outgoing edges."""
        return {s: float(v) for s, v in zip(self.senders, self.scores.nan_to_num(0.0).sum(1).tolist(), strict=True)}

    def top_edges(self, k: int = 20) -> list[tuple[str, str, float]]:
        flat = self.scores.nan_to_num(0.0).abs().flatten()
        k = min(k, self.n_edges)
        idx = flat.topk(k).indices
        R = len(self.receivers)
        return [(self.senders[int(i) // R], self.receivers[int(i) % R], float(self.scores.flatten()[i])) for i in idx]

    def to_dict(self) -> dict:
        return {"model": self.model, "task": self.task, "method": self.method, "steps": self.steps,
                "ablation": self.ablation, "clean": self.clean, "corrupt": self.corrupt,
                "n_prompts": self.n_prompts, "n_edges": self.n_edges, "seconds": round(self.seconds, 3),
                "top_edges": [{"source": s, "target": r, "score": v} for s, r, v in self.top_edges(50)],
                "nodes": self.node_scores(), **self.extra}

    def table(self) -> Table:
        rows = [[s, r, v] for s, r, v in self.top_edges(20)]
        return Table(["sender", "receiver", "score"], rows, formats={"score": "+.4f"},
                     title=f"{self.method} edge scores · {self.task} · {self.ablation} ablation "
                           f"(clean {self.clean:.3f}, corrupt {self.corrupt:.3f})")


def _chunks(run: TaskRun, size: int, desc: str = "pairs"):
    """Batches of pair indices, as progress steps (the studio shows them; a cancelled job stops)."""
    n = run.n
    yield from steps([list(range(i, min(n, i + size))) for i in range(0, n, size)], desc=desc, unit="batch")


def references(run: TaskRun, ablation: str, full: TaskRun | None = None) -> tuple[Tensor, Tensor]:
    """(clean writes, reference writes) of every sender [S, batch, pos, d_model] on `run`'s rows.
    `full`: the whole task when `run` is a chunk of it (a mean is taken over every corrupt row;
    rows are left-padded, so columns align from the end)."""
    model = run.model
    clean = sender_outputs(model, run.clean)
    if ablation == "resample":
        return clean, sender_outputs(model, run.corrupt)
    full = full or run
    acts = sender_outputs(model, full.corrupt).movedim(0, 2)  # [b, p, S, d]
    ref = reference(full, acts, full.corrupt.attention_mask, ablation).movedim(2, 0)  # [S, b or 1, p, d]
    ref = ref[:, :1, -clean.shape[2]:]
    return clean, ref.expand(-1, clean.shape[1], -1, -1)


def attribute(run: TaskRun, config: AttributionConfig | None = None) -> EdgeScores:
    """EAP or EAP-IG scores of every edge of the model graph on `run`'s task."""
    cfg = config or AttributionConfig()
    model = run.model
    er = EdgeRun(model)
    g: Graph = er.graph
    t0 = time.perf_counter()
    total = torch.zeros(len(g.senders), len(g.receivers), dtype=torch.float64)
    clean_m, corrupt_m = [], []
    for idx in _chunks(run, cfg.batch_size, f"{cfg.method} edge scores"):
        sub = _subrun(run, idx)
        a_clean, ref = references(sub, cfg.ablation, run)
        delta = (ref - a_clean).float()  # [S, b, p, d]
        alphas = [1.0] if cfg.method == "eap" else [(k + 1) / cfg.steps for k in range(cfg.steps)]
        e_clean = a_clean[0]
        e_corr = sender_outputs(model, sub.corrupt)[0] if cfg.method == "eap-ig" else None
        grads = None
        for alpha in alphas:
            embed = None if alpha == 1.0 else e_corr + alpha * (e_clean - e_corr)
            out = er.forward(sub.clean, probes=True, embed=embed)
            m = sub.from_normed(out.normed)
            m.mean().backward()
            if alpha == 1.0:
                clean_m.append(m.detach())
            gr = torch.stack([out.probes[r].grad for r in range(len(g.receivers))]).float()  # [R, b, p, d]
            grads = gr if grads is None else grads + gr
        grads /= len(alphas)
        total += len(idx) / run.n * torch.einsum("ubpd,rbpd->ur", delta, grads).double()
        with torch.no_grad():
            corrupt_m.append(sub.score("corrupt"))
    scores = total.float()
    scores[~g.valid] = float("nan")
    return EdgeScores(model.name, run.task.name, cfg.method, cfg.steps if cfg.method == "eap-ig" else 1,
                      cfg.ablation, g.senders, g.receivers, scores, float(torch.cat(clean_m).mean()),
                      float(torch.cat(corrupt_m).mean()), run.n, time.perf_counter() - t0)


def _subrun(run: TaskRun, idx: list[int]) -> TaskRun:
    """The same task restricted to rows `idx` (metric indices remapped)."""
    if len(idx) == run.n:
        return run
    return TaskRun.build(run.model, run.task.subset(idx))


@dataclass
class NodeScores(Result):
    """Attribution-patching scores of every head (via its `attn.z`) and MLP (`mlp_out`): the
    first-order estimate of activation patching each of them, from one forward/backward pair
    on the clean prompts and one forward on the corrupt ones (EAP-IG: `steps` pairs)."""

    model: str
    task: str
    method: str
    steps: int
    ablation: str
    heads: Tensor  # [layer, head]
    mlps: Tensor  # [layer]
    clean: float
    seconds: float

    def node_scores(self) -> dict[str, float]:
        out = {f"a{lay}.h{h}": float(self.heads[lay, h]) for lay in range(self.heads.shape[0])
               for h in range(self.heads.shape[1])}
        out.update({f"m{lay}": float(v) for lay, v in enumerate(self.mlps.tolist())})
        return out

    def to_dict(self) -> dict:
        return {"model": self.model, "task": self.task, "method": self.method, "steps": self.steps,
                "ablation": self.ablation, "clean": self.clean, "seconds": round(self.seconds, 3),
                "heads": self.heads.tolist(), "mlps": self.mlps.tolist()}

    def table(self) -> Table:
        top = sorted(self.node_scores().items(), key=lambda kv: -abs(kv[1]))[:20]
        return Table(["component", "score"], [[n, v] for n, v in top], formats={"score": "+.4f"},
                     title=f"{self.method} node scores · {self.task} · {self.ablation} ablation")


def attribute_nodes(run: TaskRun, config: AttributionConfig | None = None) -> NodeScores:
    """EAP / EAP-IG over nodes: every head and every MLP (cheaper than edges: no per-receiver
    probes; what activation patching of `attn.z` / `mlp_out` measures, to first order)."""
    from lmscope.engine.interventions import Apply, Patch
    from lmscope.engine.runner import run as forward

    cfg = config or AttributionConfig()
    model = run.model
    L = model.n_layers
    sites = [f"layers.{lay}.{k}" for lay in range(L) for k in ("attn.z", "mlp_out")]
    t0 = time.perf_counter()
    heads = torch.zeros(L, model.n_heads, dtype=torch.float64)
    mlps = torch.zeros(L, dtype=torch.float64)
    clean_m = []
    for idx in _chunks(run, cfg.batch_size, "node scores"):
        sub = _subrun(run, idx)
        cor = forward(model, sub.corrupt, capture=sites + ["embed"], logits=None)
        refs = {s: cor.cache[s] for s in sites}
        if cfg.ablation != "resample":
            full = forward(model, run.corrupt, capture=sites, logits=None)
            for s in sites:
                r = reference(run, full.cache[s], run.corrupt.attention_mask, cfg.ablation)
                refs[s] = r[:1, -sub.clean.input_ids.shape[1]:].expand_as(cor.cache[s])
        alphas = [1.0] if cfg.method == "eap" else [(k + 1) / cfg.steps for k in range(cfg.steps)]
        e_c = forward(model, sub.clean, capture=["embed"], logits=None).cache["embed"] if len(alphas) > 1 else None
        grads: dict[str, Tensor] = {}
        acts: dict[str, Tensor] = {}
        for alpha in alphas:
            edits = []
            if alpha != 1.0:
                e_r = cor.cache["embed"]
                edits = [Patch(site="embed", source=e_r + alpha * (e_c - e_r))]
            # zero probes added at every site: their gradients are dM/d(site) (a captured split
            # view such as attn.z is not itself part of the forward graph); the clean values
            # are captured in the alpha = 1 run itself (the probes add zero)
            probes = {s: torch.zeros_like(refs[s], requires_grad=True) for s in sites}
            edits = edits + [Apply(site=s, fn=lambda x, p=probes[s]: x + p, name="probe") for s in sites]
            caps = ["final_norm"] + (sites if alpha == 1.0 else [])
            res = forward(model, sub.clean, capture=caps, edits=edits, logits=None, grad=True)
            m = sub.from_normed(res.cache["final_norm"])
            m.mean().backward()
            if alpha == 1.0:
                clean_m.append(m.detach())
                acts = {s: res.cache[s].detach() for s in sites}
            for s in sites:
                gr = probes[s].grad
                grads[s] = gr if s not in grads else grads[s] + gr
        w = len(idx) / run.n
        for lay in range(L):
            z = f"layers.{lay}.attn.z"
            dz = (refs[z] - acts[z]) * grads[z] / len(alphas)  # [b, p, head, d_head]
            heads[lay] += w * dz.sum((0, 1, 3)).double()
            o = f"layers.{lay}.mlp_out"
            mlps[lay] += w * ((refs[o] - acts[o]) * grads[o]).sum().double() / len(alphas)
    return NodeScores(model.name, run.task.name, cfg.method, cfg.steps if cfg.method == "eap-ig" else 1,
                      cfg.ablation, heads.float(), mlps.float(), float(torch.cat(clean_m).mean()),
                      time.perf_counter() - t0)
