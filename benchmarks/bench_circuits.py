"""Circuits on the real models, timed side by side in one run, with the numbers the docs report.

    python benchmarks/bench_circuits.py [--model smollm2-135m-instruct] [--tasks ioi,induction,greater-than]
                                        [--n 16] [--seed 0] [--mask-steps 40] [--figures docs/figures]

Speed, for each task (ratios measured in this run, same prompts, same machine):
- `forward+backward`: one plain HF forward of the clean batch and the backward of the task
  metric (hooks: none), the unit the ratios are read against;
- node attribution (EAP over every head and MLP) / forward+backward (the issue's bound: <= 3x);
- activation patching of every head and MLP / node attribution (the issue's bound: >= 20x);
- edge EAP and EAP-IG over the whole edge graph, pruning (top-k + curve + random control),
  and a learned edge mask (IOI only).
Results: clean / corrupt metric, rank correlation of EAP and EAP-IG (nodes, and edges summed
per node) with activation patching, circuit size, faithfulness, the random control, CPR/CMD.

Prints one JSON object per task and a final summary line; `--figures` also writes the circuit
and curve figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import lmscope as ls
from lmscope.circuits.attribution import AttributionConfig, attribute, attribute_nodes
from lmscope.circuits.discovery import agreement
from lmscope.circuits.metric import TaskRun
from lmscope.circuits.patching import patch
from lmscope.circuits.pruning import PruneConfig, prune
from lmscope.datasets.circuit_tasks import load_task


def _timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def forward_backward(run: TaskRun) -> float:
    """Plain HF: one forward of the clean batch with autograd and the backward of the metric."""
    model = run.model
    b = run.clean
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        out = model.hf(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                       output_hidden_states=False, use_cache=False, logits_to_keep=0)
        logits = out.logits[run.rows, run.cols].float()
        run.from_logits(logits).mean().backward()
        model.hf.zero_grad(set_to_none=True)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_task(model, task_name: str, n: int, seed: int, mask_steps: int, figures: str | None) -> dict:
    run = TaskRun.build(model, load_task(task_name, model, n=n, seed=seed))
    fb = forward_backward(run)
    nodes, t_nodes = _timed(attribute_nodes, run, AttributionConfig(method="eap", batch_size=n))
    nodes_ig, t_nodes_ig = _timed(attribute_nodes, run, AttributionConfig(method="eap-ig", steps=5, batch_size=n))
    heads, t_heads = _timed(patch, run, component="heads")
    mlps, t_mlps = _timed(patch, run, component="mlp")
    edges, t_edges = _timed(attribute, run, AttributionConfig(method="eap", batch_size=n))
    edges_ig, t_edges_ig = _timed(attribute, run, AttributionConfig(method="eap-ig", steps=5, batch_size=n))
    agree = agreement({"eap nodes": nodes, "eap-ig nodes": nodes_ig, "eap edges summed": edges,
                       "eap-ig edges summed": edges_ig}, [heads, mlps])
    pruned, t_prune = _timed(prune, run, PruneConfig(method="topk", target=0.8, random_draws=3, seed=seed,
                                                     batch_size=n), scores=edges_ig)
    c = pruned.circuit
    out = {
        "model": model.name, "task": task_name, "n": n, "seed": seed, "metric": run.task.metric,
        "clean": edges_ig.clean, "corrupt": edges_ig.corrupt, "n_edges_total": c.n_edges_total,
        "rank_correlation_with_activation_patching": agree,
        "circuit": {"edges": len(c.edges), "fraction": len(c.edges) / c.n_edges_total, "nodes": len(c.nodes),
                    "faithfulness": c.faithfulness, "random_same_size": pruned.random_control,
                    "cpr": pruned.curve.cpr, "cmd": pruned.curve.cmd, "curve": pruned.curve.to_dict()},
        "seconds": {"forward_backward": fb, "eap_nodes": t_nodes, "eap_ig_nodes": t_nodes_ig,
                    "activation_patching_heads_mlps": t_heads + t_mlps, "eap_edges": t_edges,
                    "eap_ig_edges": t_edges_ig, "prune_topk": t_prune},
        "ratios": {"eap_nodes_over_forward_backward": t_nodes / fb,
                   "activation_patching_over_eap_nodes": (t_heads + t_mlps) / t_nodes},
    }
    if mask_steps and task_name == "ioi":  # the bound: a learned IOI circuit in minutes
        masked, t_mask = _timed(prune, run, PruneConfig(method="mask", steps=mask_steps, random_draws=3, seed=seed,
                                                        batch_size=n))
        out["learned_mask"] = {"edges": len(masked.circuit.edges), "faithfulness": masked.circuit.faithfulness,
                               "random_same_size": masked.random_control, "seconds": t_mask, "steps": mask_steps}
    if figures:
        from lmscope.plots import circuit_plots as cp

        d = Path(figures)
        cp.circuit_png(c.to_dict(), d / f"circuit_{task_name}_{model.name}.png")
        cp.faithfulness_curve(pruned.curve.to_dict(), d / f"faithfulness_{task_name}_{model.name}.png")
    return out, c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tasks", default="ioi,induction,greater-than")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mask-steps", type=int, default=40)
    ap.add_argument("--figures")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = ls.load(args.model)
    circuits = {}
    for t in args.tasks.split(","):
        res, circuits[t] = bench_task(model, t, args.n, args.seed, args.mask_steps, args.figures)
        print(json.dumps(res), flush=True)
    if len(circuits) > 1:
        from lmscope.circuits.graph import overlap

        print(json.dumps({"overlap": overlap(circuits).to_dict()}), flush=True)


if __name__ == "__main__":
    main()
