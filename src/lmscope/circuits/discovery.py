"""One call from a task to a proven circuit: score every edge (EAP and EAP-IG), check the
scores against activation patching of the same heads and MLPs (rank correlation), prune to
the smallest top-k circuit that reaches the target faithfulness, and compare it with random
circuits of the same size.

    report = find_circuit(model, CircuitConfig(task="ioi", n=16))
    report.circuit.save("ioi.circuit.json"); report.to_dict()
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from lmscope.circuits.attribution import (
    AttributionConfig,
    EdgeScores,
    NodeScores,
    attribute,
    attribute_nodes,
)
from lmscope.circuits.graph import Circuit
from lmscope.circuits.metric import TaskRun, rank_correlation
from lmscope.circuits.patching import PatchingResult, patch
from lmscope.circuits.pruning import PruneConfig, PruneResult, prune
from lmscope.datasets.circuit_tasks import load_task
from lmscope.engine.errors import InputError
from lmscope.engine.model import Model
from lmscope.engine.results import Result, Table


@dataclass(frozen=True, kw_only=True)
class CircuitConfig:
    """What `lmscope circuit find` does.

    Attributes:
        task: "ioi", "induction", "greater-than", a shipped task file ("example_capitals") or
            a path to a JSONL of clean/corrupt pairs.
        n: Prompt pairs (a task file: its first n rows; all of them when not given).
        seed: Seed of the task generator and of the random control.
        method: Edge scores the circuit is pruned by: "eap" or "eap-ig".
        steps: EAP-IG interpolation steps.
        ablation: What removed edges carry: "resample" (the paired corrupt prompt), "mean", "zero".
        prune: "topk" (by the scores), "mask" (learned edge mask) or "acdc" (greedy nodes).
        target: Faithfulness the top-k circuit must reach.
        random_draws: Random circuits per size in the control.
        compare: Also run activation patching of every head and MLP and report the rank
            correlation of EAP and EAP-IG with it.
        batch_size: Prompts per forward.
    """

    task: str = "ioi"
    n: int | None = 16
    seed: int = 0
    method: str = "eap-ig"
    steps: int = 5
    ablation: str = "resample"
    prune: str = "topk"
    target: float = 0.8
    random_draws: int = 3
    compare: bool = True
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.n is not None and self.n < 1:
            raise InputError(f"n must be at least 1, got {self.n}.")
        if not 0 < self.target <= 1.5:
            raise InputError(f"target is a faithfulness, e.g. 0.8; got {self.target}.")


@dataclass
class CircuitReport(Result):
    model: str
    task: dict
    clean: float
    corrupt: float
    scores: EdgeScores
    result: PruneResult
    agreement: dict
    nodes: dict[str, NodeScores] = field(default_factory=dict)
    patching: list[PatchingResult] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    @property
    def circuit(self) -> Circuit:
        return self.result.circuit

    def to_dict(self) -> dict:
        return {"model": self.model, "task": self.task, "clean": self.clean, "corrupt": self.corrupt,
                "scores": self.scores.to_dict(), "prune": self.result.to_dict(), "agreement": self.agreement,
                "node_scores": {k: v.to_dict() for k, v in self.nodes.items()},
                "patching": [p.to_dict() for p in self.patching], "seconds": self.seconds}

    def table(self) -> Table:
        c = self.circuit
        rc = self.result.random_control
        rows = [["clean metric", self.clean], ["corrupt metric", self.corrupt],
                ["edges kept", f"{len(c.edges)} / {c.n_edges_total}"], ["faithfulness", c.faithfulness],
                ["random circuits (same size)", f"{rc['mean']:.3f} ± {rc['std']:.3f}"]]
        for k, v in self.agreement.items():
            rows.append([f"rank corr. {k} vs activation patching", v])
        for k, v in self.seconds.items():
            rows.append([f"time: {k} (s)", v])
        return Table(["", "value"], rows, formats={"value": ".3f"},
                     title=f"{self.task['name']} circuit of {self.model} · {c.method} · {c.ablation} ablation")

    def tables(self) -> list[Table]:
        return [self.table(), *self.result.tables()[:2]]


def agreement(scores: dict[str, EdgeScores | NodeScores], patched: list[PatchingResult]) -> dict[str, float]:
    """Spearman correlation between each attribution's node scores and the metric change of
    activation patching the same heads and MLPs."""
    truth: dict[str, float] = {}
    for p in patched:
        for row, names in enumerate(p.names):
            for col, name in enumerate(names):
                truth[name] = float(p.effect[row, col])
    out = {}
    for label, sc in scores.items():
        nodes = sc.node_scores()
        common = [n for n in truth if n in nodes]
        if len(common) < 2:
            raise InputError("Too few components in common between attribution and patching to correlate.")
        out[label] = rank_correlation(torch.tensor([nodes[n] for n in common]),
                                      torch.tensor([truth[n] for n in common]))
    return out


def find_circuit(model: Model, config: CircuitConfig | None = None) -> CircuitReport:
    """Task -> edge scores -> agreement with activation patching -> pruned, controlled circuit."""
    cfg = config or CircuitConfig()
    task = load_task(cfg.task, model, n=cfg.n, seed=cfg.seed)
    run = TaskRun.build(model, task)
    seconds: dict[str, float] = {}
    acfg = AttributionConfig(method=cfg.method, steps=cfg.steps, ablation=cfg.ablation, batch_size=cfg.batch_size)
    t = time.perf_counter()
    scores = attribute(run, acfg)
    seconds[f"{cfg.method} edges"] = round(time.perf_counter() - t, 2)
    nodes: dict[str, NodeScores] = {}
    patched: list[PatchingResult] = []
    agree: dict[str, float] = {}
    if cfg.compare:
        for m in ("eap", "eap-ig"):
            t = time.perf_counter()
            nodes[m] = attribute_nodes(run, AttributionConfig(method=m, steps=cfg.steps, ablation=cfg.ablation,
                                                               batch_size=cfg.batch_size))
            seconds[f"{m} nodes"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        for comp in ("heads", "mlp"):
            patched.append(patch(run, component=comp, direction="noising", ablation=cfg.ablation))
        seconds["activation patching"] = round(time.perf_counter() - t, 2)
        agree = agreement({**nodes, f"{cfg.method} edges (summed per node)": scores}, patched)
    t = time.perf_counter()
    pcfg = PruneConfig(method=cfg.prune, target=cfg.target, ablation=cfg.ablation, random_draws=cfg.random_draws,
                       seed=cfg.seed, batch_size=cfg.batch_size)
    result = prune(run, pcfg, scores=scores)
    seconds["prune"] = round(time.perf_counter() - t, 2)
    return CircuitReport(model.name, task.to_dict(), scores.clean, scores.corrupt, scores, result, agree, nodes,
                         patched, seconds)
