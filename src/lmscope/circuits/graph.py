"""A circuit: the edges of the model graph that a task keeps, with their scores, its
faithfulness, what each node's write promotes in token space, and the overlap of circuits."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from lmscope.engine import artifacts
from lmscope.engine.errors import InputError
from lmscope.engine.results import Result, Table

_ROUTES = {"q": "q", "k": "k", "v": "v"}


def node_of_receiver(name: str) -> tuple[str, str]:
    """(node, route) of a receiver: "a3.h2.q" -> ("a3.h2", "q"), "a3.g0.k" -> ("a3.g0", "k"),
    "m3" -> ("m3", "mlp"), "logits" -> ("logits", "logits")."""
    if name == "logits":
        return "logits", "logits"
    if name.startswith("m"):
        return name, "mlp"
    node, route = name.rsplit(".", 1)
    return node, _ROUTES[route]


def node_info(name: str, n_layers: int) -> dict:
    """kind / layer / head of a node name ("input", "a3.h2", "a3.g0" (a KV group), "m3", "logits")."""
    if name == "input":
        return {"kind": "input", "layer": -1, "head": None}
    if name == "logits":
        return {"kind": "logits", "layer": n_layers, "head": None}
    if name.startswith("m"):
        return {"kind": "mlp", "layer": int(name[1:]), "head": None}
    lay, h = name[1:].split(".")
    return {"kind": "head" if h.startswith("h") else "kv-group", "layer": int(lay), "head": int(h[1:])}


@dataclass
class Circuit(Result):
    """Kept edges (sender, receiver, score) of a task's circuit and how well it does the task.

    Attributes:
        faithfulness: (metric with only these edges - metric with every edge ablated) /
            (clean metric - that baseline); 1 = the circuit alone recovers the clean metric.
        ablation: What every removed edge carries (resample / mean / zero).
        method: How the edges were chosen (eap, eap-ig, learned mask, acdc...).
        decoded: node -> the tokens its mean write at the metric positions promotes.
    """

    model: str
    task: str
    method: str
    ablation: str
    n_layers: int
    edges: list[tuple[str, str, float]]
    n_edges_total: int
    faithfulness: float | None
    metric: float | None = None
    clean: float | None = None
    baseline: float | None = None
    decoded: dict[str, list[str]] = field(default_factory=dict)
    node_scores: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def nodes(self) -> list[str]:
        """Every node an edge touches (receivers folded into their head / MLP)."""
        seen: dict[str, None] = {}
        for s, r, _ in self.edges:
            seen.setdefault(s)
            seen.setdefault(node_of_receiver(r)[0])
        return list(seen)

    @property
    def components(self) -> set[str]:
        """Heads and MLPs of the circuit (input, logits and KV groups left out): what overlaps compare."""
        return {n for n in self.nodes if n.startswith("m") or (n.startswith("a") and ".h" in n)}

    def to_dict(self) -> dict:
        nodes = []
        for n in self.nodes:
            info = node_info(n, self.n_layers)
            nodes.append({"name": n, **info, "score": self.node_scores.get(n), "decoded": self.decoded.get(n, [])})
        edges = [{"source": s, "target": node_of_receiver(r)[0], "route": node_of_receiver(r)[1], "receiver": r,
                  "score": v} for s, r, v in self.edges]
        return {"model": self.model, "task": self.task, "method": self.method, "ablation": self.ablation,
                "n_layers": self.n_layers, "faithfulness": self.faithfulness, "metric": self.metric,
                "clean": self.clean, "baseline": self.baseline, "n_edges": len(self.edges),
                "n_edges_total": self.n_edges_total, "nodes": nodes, "edges": edges, **self.extra}

    def table(self) -> Table:
        rows = [[s, r, v] for s, r, v in sorted(self.edges, key=lambda e: -abs(e[2]))[:30]]
        f = "-" if self.faithfulness is None else f"{self.faithfulness:.3f}"
        return Table(["sender", "receiver", "score"], rows, formats={"score": "+.4f"},
                     title=f"{self.task} circuit · {self.method} · {self.ablation} ablation · "
                           f"{len(self.edges)}/{self.n_edges_total} edges · faithfulness {f}")

    # ---- artifacts ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the circuit as JSON (atomic); `Circuit.load` reads it back and validates it."""
        p = Path(path)
        data = {"format": "lmscope.circuit", "version": 1, **self.to_dict(),
                "edges_raw": [[s, r, v] for s, r, v in self.edges], "decoded": self.decoded,
                "node_scores": self.node_scores}
        text = json.dumps(data, indent=1)
        return artifacts.atomic_write(p, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Circuit:
        from lmscope.datasets.files import read_json

        data = read_json(path, what="circuit file")
        if not isinstance(data, dict) or data.get("format") != "lmscope.circuit":
            raise InputError(f"{path} is not an lmscope circuit (no \"format\": \"lmscope.circuit\"); "
                             "write one with `lmscope circuit prune --out FILE` or Circuit.save.")
        try:
            edges = [(str(s), str(r), float(v)) for s, r, v in data["edges_raw"]]
            return cls(model=str(data["model"]), task=str(data["task"]), method=str(data["method"]),
                       ablation=str(data["ablation"]), n_layers=int(data["n_layers"]), edges=edges,
                       n_edges_total=int(data["n_edges_total"]), faithfulness=data.get("faithfulness"),
                       metric=data.get("metric"), clean=data.get("clean"), baseline=data.get("baseline"),
                       decoded={str(k): list(v) for k, v in data.get("decoded", {}).items()},
                       node_scores={str(k): float(v) for k, v in data.get("node_scores", {}).items()})
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{path}: a field of the circuit is missing or malformed ({e}).") from None


@dataclass
class Overlap(Result):
    """Which heads and MLPs circuits of different tasks share (Jaccard of component sets)."""

    model: str
    tasks: list[str]
    jaccard: list[list[float]]
    shared: dict[str, list[str]]
    sizes: dict[str, int]

    def to_dict(self) -> dict:
        return {"model": self.model, "tasks": self.tasks, "jaccard": self.jaccard, "shared": self.shared,
                "sizes": self.sizes}

    def table(self) -> Table:
        rows = []
        for i, a in enumerate(self.tasks):
            for j in range(i + 1, len(self.tasks)):
                b = self.tasks[j]
                shared = self.shared[f"{a}|{b}"]
                rows.append([a, b, self.jaccard[i][j], len(shared), ", ".join(shared[:12])])
        return Table(["task A", "task B", "jaccard", "shared", "components"], rows, formats={"jaccard": ".3f"},
                     title=f"circuit overlap · {self.model}")


def overlap(circuits: dict[str, Circuit]) -> Overlap:
    """Jaccard overlap of the heads and MLPs of circuits found for different tasks."""
    if len(circuits) < 2:
        raise InputError("overlap needs circuits of at least two tasks.")
    names = list(circuits)
    sets = {n: circuits[n].components for n in names}
    jac = []
    shared = {}
    for a in names:
        row = []
        for b in names:
            union = sets[a] | sets[b]
            row.append(len(sets[a] & sets[b]) / len(union) if union else float("nan"))
        jac.append(row)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared[f"{a}|{b}"] = sorted(sets[a] & sets[b], key=_order)
    model = next(iter(circuits.values())).model
    return Overlap(model, names, jac, shared, {n: len(s) for n, s in sets.items()})


def _order(name: str) -> tuple:
    info = node_info(name, 10**6)
    return info["layer"], 1 if info["kind"] == "mlp" else 0, info["head"] or 0


def edges_of(mask: Tensor, scores: Tensor, senders: list[str], receivers: list[str]) -> list[tuple[str, str, float]]:
    """The (sender, receiver, score) triples of a boolean edge mask [S, R]."""
    idx = mask.nonzero().tolist()
    sc = scores.nan_to_num(0.0)
    return [(senders[i], receivers[j], float(sc[i, j])) for i, j in idx]


def mask_of(edges: list[tuple[str, str, float]], senders: list[str], receivers: list[str]) -> Tensor:
    """Boolean edge mask [S, R] of a list of edges (unknown names are an InputError)."""
    si = {s: i for i, s in enumerate(senders)}
    ri = {r: i for i, r in enumerate(receivers)}
    mask = torch.zeros(len(senders), len(receivers), dtype=torch.bool)
    for s, r, _ in edges:
        if s not in si or r not in ri:
            raise InputError(f"Edge {s} -> {r} is not in this model's graph; was the circuit found on another model?")
        mask[si[s], ri[r]] = True
    return mask
