"""The Circuits tab's glue: which tasks the studio runs, the one library call, JSON-safe numbers.

`POST /api/circuit` is `find_circuit(model, CircuitConfig(...)).to_dict()` with the fast
settings (top-k pruning, no activation-patching comparison). A web endpoint takes task *names*
only: the built-in generators and the task files shipped with lmscope. A path is refused, so a
request cannot make the server read a file of its choosing; `lmscope circuit find --task FILE`
runs a user's own pairs.
"""

from __future__ import annotations

from .studio import json_safe

__all__ = ["BUILT_IN", "MAX_PAIRS", "check_task", "find", "json_safe", "task_names"]

#: The task generators (`lmscope.datasets.circuit_tasks.TASKS`), and the alias load_task accepts.
BUILT_IN = ("ioi", "induction", "greater-than")
ALIASES = {"greater_than": "greater-than"}
MAX_PAIRS = 64
#: Fixed settings of the studio's run (the CLI exposes them): EAP-IG steps, random circuits per size.
STEPS = 5
RANDOM_DRAWS = 3


def task_names() -> list[str]:
    """Tasks the studio runs: the generators, then the shipped task files (read at each call,
    a glob of one small folder)."""
    from lmscope.datasets import circuit_tasks

    return [*BUILT_IN, *(t for t in circuit_tasks.shipped_tasks() if t not in BUILT_IN)]


def check_task(name: str) -> str:
    """`name` itself when the studio runs it (an alias is normalised); ValueError otherwise."""
    name = ALIASES.get(name, name)
    known = task_names()
    if name in known:
        return name
    # The reason comes first: a validation message is cut at 200 characters.
    if any(c in name for c in "/\\") or name.endswith((".jsonl", ".json")) or name.startswith((".", "~")):
        raise ValueError(f"{name[:40]!r} is a file path; the studio takes task names, not files (run your own "
                         f"pairs with `lmscope circuit find MODEL --task FILE.jsonl`). Tasks: {', '.join(known)}.")
    raise ValueError(f"Unknown circuit task {name[:40]!r}; the studio runs {', '.join(known)}.")


def find(model, req, find_circuit, config_cls) -> dict:
    """The circuit report of `req` (a `CircuitRequest`) on `model`, as JSON-safe `to_dict()`."""
    cfg = config_cls(task=req.task, n=req.n, seed=req.seed, method=req.method, steps=STEPS,
                     ablation=req.ablation, prune="topk", target=req.target, random_draws=RANDOM_DRAWS,
                     compare=False)
    return json_safe(find_circuit(model, cfg).to_dict())
