"""Pruning the model to a circuit, and proving the circuit does the task.

Three ways to choose the edges, each evaluated the same way (every edge outside the circuit
carries its reference write: the paired corrupt prompt's, a mean, or zero):

    topk   keep the k highest-|score| edges of an attribution (EAP / EAP-IG), with k the
           smallest that reaches the target faithfulness (the faithfulness curve, bisected)
    mask   learn a keep-probability per edge by gradient descent: the normalised metric must
           stay at the clean value while a sparsity penalty pushes edges out (Bhaskar et al.'s
           edge pruning with a sigmoid relaxation); edges with probability > 0.5 are kept
    acdc   greedy over nodes (Conmy et al.'s ACDC, node level): from the last layer down, a head
           or MLP is removed when removing it moves the normalised metric by less than a threshold

faithfulness = (M(circuit) - M(empty)) / (M(clean) - M(empty)), M(empty) = every edge ablated.
The faithfulness curve (MIB's CPR / CMD: area under faithfulness, and under |1 - faithfulness|,
over the fraction of edges kept) comes with a control: random edge sets of the same sizes.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmscope.circuits.ablation import ABLATIONS
from lmscope.circuits.attribution import EdgeScores, _chunks, _subrun, references
from lmscope.circuits.graph import Circuit, edges_of
from lmscope.circuits.metric import TaskRun
from lmscope.engine import readout
from lmscope.engine.edges import EdgeRun, Graph
from lmscope.engine.errors import InputError
from lmscope.engine.results import Result, Table

FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
METHODS = ("topk", "mask", "acdc")


@dataclass(frozen=True, kw_only=True)
class PruneConfig:
    """How a circuit is pruned and evaluated.

    Attributes:
        method: "topk" (by attribution score), "mask" (learned edge mask) or "acdc" (greedy
            node removal).
        target: Faithfulness the circuit must reach (topk: the smallest such k is kept).
        ablation: What removed edges carry: "resample", "mean" or "zero".
        fractions: Fractions of edges at which the faithfulness curve is measured.
        random_draws: Random circuits per size in the control.
        seed: Seed of the random control and of nothing else.
        steps, lr, sparsity: Mask learning: optimiser steps, Adam learning rate, weight of the
            penalty on the mean keep-probability.
        threshold: ACDC: a node goes when removing it moves the normalised metric by less.
        batch_size: Prompts per forward.
    """

    method: str = "topk"
    target: float = 0.8
    ablation: str = "resample"
    fractions: tuple[float, ...] = FRACTIONS
    random_draws: int = 3
    seed: int = 0
    steps: int = 60
    lr: float = 0.1
    sparsity: float = 0.3
    threshold: float = 0.02
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}.")
        if self.ablation not in ABLATIONS:
            raise InputError(f"ablation must be one of {', '.join(ABLATIONS)}, got {self.ablation!r}.")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise InputError("fractions must be in (0, 1], e.g. 0.01,0.1,1.")
        if self.random_draws < 0 or self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise InputError("random_draws >= 0, steps >= 1, batch_size >= 1 and lr > 0 are required.")


class Evaluator:
    """The task's metric with any set of edges kept (the rest ablated); references cached."""

    def __init__(self, run: TaskRun, ablation: str, batch_size: int = 16) -> None:
        self.run = run
        self.er = EdgeRun(run.model)
        self.graph = self.er.graph
        self.valid = self.graph.valid
        self.ablation = ablation
        self.parts = []
        self.forwards = 0
        for idx in _chunks(run, batch_size):
            sub = _subrun(run, idx)
            self.parts.append((sub, references(sub, ablation, run)[1], len(idx) / run.n))
        self.clean = self.metric(self.valid)
        self.empty = self.metric(torch.zeros_like(self.valid))

    def per_row(self, keep: Tensor, *, grad: bool = False, coeff: Tensor | None = None) -> list[Tensor]:
        c = coeff if coeff is not None else (self.valid & ~keep).float()
        out = []
        for sub, ref, _ in self.parts:
            o = self.er.forward(sub.clean, coeff=c, reference=ref, grad=grad)
            with torch.set_grad_enabled(grad):
                out.append(sub.from_normed(o.normed))
        self.forwards += 1
        return out

    def metric(self, keep: Tensor) -> float:
        """Mean metric over rows with only `keep` [S, R] edges (the rest ablated)."""
        rows = self.per_row(keep)
        return float(sum(w * m.detach().mean() for (_, _, w), m in zip(self.parts, rows, strict=True)))

    def faithfulness(self, keep: Tensor) -> float:
        gap = self.clean - self.empty
        return float("nan") if gap == 0 else (self.metric(keep) - self.empty) / gap


def top_mask(scores: Tensor, k: int) -> Tensor:
    """The k highest-|score| edges [S, R] (NaN = no edge)."""
    flat = scores.nan_to_num(float("-inf")).abs().flatten()
    flat[scores.isnan().flatten()] = float("-inf")
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if k > 0:
        mask[flat.topk(k).indices] = True
    return mask.view(scores.shape)


def random_mask(valid: Tensor, k: int, rng: random.Random) -> Tensor:
    idx = valid.flatten().nonzero()[:, 0].tolist()
    mask = torch.zeros(valid.numel(), dtype=torch.bool)
    mask[rng.sample(idx, min(k, len(idx)))] = True
    return mask.view(valid.shape)


@dataclass
class Curve(Result):
    """Faithfulness against the fraction of edges kept, with a random-circuit control."""

    model: str
    task: str
    method: str
    ablation: str
    fractions: list[float]
    faithfulness: list[float]
    random_mean: list[float] | None
    random_std: list[float] | None
    target: float | None = None
    chosen_fraction: float | None = None

    @property
    def cpr(self) -> float:
        """Area under the faithfulness curve over the fraction of edges kept (higher is better)."""
        return _area(self.fractions, self.faithfulness)

    @property
    def cmd(self) -> float:
        """Area under |1 - faithfulness| (lower is better)."""
        return _area(self.fractions, [abs(1 - f) for f in self.faithfulness])

    def to_dict(self) -> dict:
        rnd = None if self.random_mean is None else {"fractions": self.fractions, "mean": self.random_mean,
                                                     "std": self.random_std}
        return {"model": self.model, "task": self.task, "method": self.method, "ablation": self.ablation,
                "fractions": self.fractions, "faithfulness": self.faithfulness, "random": rnd,
                "cpr": self.cpr, "cmd": self.cmd, "target": self.target, "chosen_fraction": self.chosen_fraction}

    def table(self) -> Table:
        rows = [[f, y, None if self.random_mean is None else self.random_mean[i]]
                for i, (f, y) in enumerate(zip(self.fractions, self.faithfulness, strict=True))]
        return Table(["edges kept", "faithfulness", "random"], rows,
                     formats={"edges kept": ".3f", "faithfulness": ".3f", "random": ".3f"},
                     title=f"faithfulness curve · {self.task} · {self.method} · CPR {self.cpr:.3f} · CMD {self.cmd:.3f}")


def _area(xs: list[float], ys: list[float]) -> float:
    pts = sorted((x, y) for x, y in zip(xs, ys, strict=True) if not math.isnan(y))
    if len(pts) < 2:
        return float("nan")
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in itertools.pairwise(pts))
    return area / (pts[-1][0] - pts[0][0])


def faithfulness_curve(ev: Evaluator, scores: EdgeScores, cfg: PruneConfig) -> Curve:
    n = ev.graph.n_edges
    rng = random.Random(cfg.seed)
    faith, r_mean, r_std = [], [], []
    for f in cfg.fractions:
        k = max(1, round(f * n))
        faith.append(ev.faithfulness(top_mask(scores.scores, k)))
        if cfg.random_draws:
            vals = torch.tensor([ev.faithfulness(random_mask(ev.valid, k, rng)) for _ in range(cfg.random_draws)])
            r_mean.append(float(vals.mean()))
            r_std.append(float(vals.std()) if len(vals) > 1 else 0.0)
    return Curve(ev.run.model.name, ev.run.task.name, scores.method, cfg.ablation, list(cfg.fractions), faith,
                 r_mean or None, r_std or None, cfg.target)


def smallest_k(ev: Evaluator, scores: EdgeScores, target: float, curve: Curve) -> tuple[int, float]:
    """The smallest k (bisected between curve points) whose top-k edges reach `target`."""
    n = ev.graph.n_edges
    ks = [max(1, round(f * n)) for f in curve.fractions]
    ok = [k for k, y in zip(ks, curve.faithfulness, strict=True) if y >= target]
    if not ok:
        return n, ev.faithfulness(ev.valid)
    hi = min(ok)
    below = [k for k in ks if k < hi]
    lo = max(below) if below else 0
    best = (hi, dict(zip(ks, curve.faithfulness, strict=True))[hi])
    while hi - lo > max(1, hi // 20):  # 5% resolution
        mid = (lo + hi) // 2
        f = ev.faithfulness(top_mask(scores.scores, mid))
        if f >= target:
            hi, best = mid, (mid, f)
        else:
            lo = mid
    return best


def learn_mask(ev: Evaluator, cfg: PruneConfig) -> tuple[Tensor, dict]:
    """Keep-probabilities learned by gradient descent; returns (kept edges [S, R], history)."""
    valid = ev.valid
    # start every edge at keep-probability 0.73: Adam moves each logit by about `lr` a step, so
    # an edge nothing holds up crosses 0.5 after ~1/lr steps
    theta = torch.full(valid.shape, 1.0, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=cfg.lr)
    clean_rows = [r.detach() for r in ev.per_row(valid)]
    gap = ev.clean - ev.empty
    if gap == 0:
        raise InputError("The clean and fully ablated metrics are equal: the task shows no effect to keep.")
    hist = []
    for _ in range(cfg.steps):
        keep_p = torch.sigmoid(theta) * valid
        coeff = (1 - keep_p) * valid
        rows = ev.per_row(valid, grad=True, coeff=coeff)
        fit = sum(w * (((m - c) / gap) ** 2).mean() for (_, _, w), m, c in zip(ev.parts, rows, clean_rows, strict=True))
        density = keep_p.sum() / valid.sum()
        loss = fit + cfg.sparsity * density
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append({"fit": float(fit.detach()), "density": float(density.detach())})
    return (torch.sigmoid(theta.detach()) > 0.5) & valid, {"history": hist}


def acdc_nodes(ev: Evaluator, cfg: PruneConfig) -> tuple[Tensor, dict]:
    """Greedy node removal, last layer first; returns (kept edges [S, R], removed nodes)."""
    g = ev.graph
    keep = ev.valid.clone()
    gap = ev.clean - ev.empty
    current = ev.clean
    removed = []
    order = [i for i in range(len(g.senders) - 1, 0, -1)]  # every head and MLP, from the top; not the input
    for s in order:
        trial = keep.clone()
        trial[s] = False
        m = ev.metric(trial)
        if abs(m - current) / abs(gap) < cfg.threshold:
            keep, current = trial, m
            removed.append(g.senders[s])
    # a node nobody reads from any more writes nothing that matters: drop its incoming edges too
    alive = keep.any(1)
    for r, name in enumerate(g.receivers):
        node = name.rsplit(".", 1)[0] if name.startswith("a") else name
        if node.startswith("a") and ".g" in node:
            continue  # KV groups serve several heads; keep their inputs
        if node != "logits" and node in g.senders and not alive[g.senders.index(node)]:
            keep[:, r] = False
    return keep, {"removed_nodes": removed}


def decode_nodes(run: TaskRun, nodes: list[str], k: int = 5) -> dict[str, list[str]]:
    """The tokens each node's mean clean write at the metric positions promotes (direct logit
    effect through the final norm frozen at the real residual)."""
    from lmscope.engine.edges import sender_outputs

    model = run.model
    names = Graph.of(model).senders
    wanted = [n for n in nodes if n in names]
    if not wanted:
        return {}
    res = model.run(run.clean, capture=[f"layers.{model.n_layers - 1}.resid_post"], logits=None)
    resid = res.cache[f"layers.{model.n_layers - 1}.resid_post"][run.rows, run.cols]  # [K, d]
    scale = readout.final_norm_scale(model, resid)  # [K, d]
    writes = sender_outputs(model, run.clean)[:, run.rows, run.cols]  # [S, K, d]
    idx = [names.index(n) for n in wanted]
    vec = (writes[idx] * scale[None]).mean(1)  # [N, d]
    with torch.no_grad():
        logits = readout.logits_from_normed(model, vec).float()
        logits = logits - logits.mean(-1, keepdim=True)
    top = logits.topk(k, dim=-1).indices.tolist()
    return {n: [model.tokenizer.decode([t]) for t in ts] for n, ts in zip(wanted, top, strict=True)}


@dataclass
class PruneResult(Result):
    circuit: Circuit
    curve: Curve | None
    random_control: dict
    seconds: float
    forwards: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"circuit": self.circuit.to_dict(), "curve": None if self.curve is None else self.curve.to_dict(),
                "random_control": self.random_control, "seconds": round(self.seconds, 2), "forwards": self.forwards,
                **self.extra}

    def table(self) -> Table:
        return self.circuit.table()

    def tables(self) -> list[Table]:
        out = [self.circuit.table()]
        if self.curve is not None:
            out.append(self.curve.table())
        rc = self.random_control
        out.append(Table(["circuit", "edges", "faithfulness", "random mean", "random std"],
                         [[self.circuit.method, len(self.circuit.edges), self.circuit.faithfulness, rc.get("mean"),
                           rc.get("std")]], formats={"faithfulness": ".3f", "random mean": ".3f", "random std": ".3f"},
                         title="the circuit against random circuits of the same size"))
        return out


def prune(run: TaskRun, cfg: PruneConfig | None = None, *, scores: EdgeScores | None = None) -> PruneResult:
    """Find the task's circuit with `cfg.method` and evaluate it against random circuits."""
    cfg = cfg or PruneConfig()
    t0 = time.perf_counter()
    ev = Evaluator(run, cfg.ablation, cfg.batch_size)
    curve = None
    extra: dict = {"clean": ev.clean, "empty": ev.empty}
    if cfg.method == "topk":
        if scores is None:
            raise InputError("method 'topk' needs attribution scores: run `attribute` first (or use method 'mask'/'acdc').")
        if scores.ablation != cfg.ablation:
            raise InputError(f"The scores were computed with {scores.ablation} ablation, pruning uses {cfg.ablation}; "
                             "use the same ablation for both.")
        curve = faithfulness_curve(ev, scores, cfg)
        k, _ = smallest_k(ev, scores, cfg.target, curve)
        keep = top_mask(scores.scores, k)
        curve.chosen_fraction = k / ev.graph.n_edges
        sc = scores.scores
        method = f"top-k {scores.method}"
    elif cfg.method == "mask":
        keep, info = learn_mask(ev, cfg)
        extra.update(info)
        sc = scores.scores if scores is not None else keep.float()
        method = "learned mask"
    else:
        keep, info = acdc_nodes(ev, cfg)
        extra.update(info)
        sc = scores.scores if scores is not None else keep.float()
        method = "acdc (nodes)"
    faith = ev.faithfulness(keep)
    metric = ev.metric(keep)
    k = int(keep.sum())
    rng = random.Random(cfg.seed + 1)
    draws = [ev.faithfulness(random_mask(ev.valid, k, rng)) for _ in range(max(cfg.random_draws, 1))]
    rc = {"draws": draws, "mean": float(torch.tensor(draws).mean()),
          "std": float(torch.tensor(draws).std()) if len(draws) > 1 else 0.0, "n_edges": k}
    g = ev.graph
    edges = edges_of(keep, sc, g.senders, g.receivers)
    circuit = Circuit(run.model.name, run.task.name, method, cfg.ablation, run.model.n_layers, edges, g.n_edges,
                      faith, metric=metric, clean=ev.clean, baseline=ev.empty)
    nodes = circuit.nodes
    circuit.decoded = decode_nodes(run, nodes)
    if scores is not None:
        ns = scores.node_scores()
        circuit.node_scores = {n: ns[n] for n in nodes if n in ns}
    return PruneResult(circuit, curve, rc, time.perf_counter() - t0, ev.forwards, extra)
