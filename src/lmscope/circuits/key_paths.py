"""Key paths (K-composition): path patching from every earlier head into an induction head's
key input, and the comparison of the strongest senders with the previous-token scores.

    task = circuit_tasks.induction(model, n=16, seq_len=20)
    scores = induction.head_scores(model, task)
    paths, note = key_path_patching(model, task, [(5, 1)], scores["previous_token"])
    paths[0].senders                # [((layer, head), normalized effect, previous_token), ...]
    paths[0].k_composition          # the strongest sender is a top previous-token head

The patching runs on `key_path_task(task)`, whose corrupt rows replace the first copy (see its
docstring for why). `induction.find_induction_heads` calls this for its best induction heads;
`Head` and `head_name` live here so that `induction` can import them without a cycle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from lmscope.circuits.metric import TaskRun, rank_correlation
from lmscope.circuits.path_patching import path_patch
from lmscope.datasets.taskset import TaskSet
from lmscope.engine.model import Model

Head = tuple[int, int]  # (layer, head)
TOP_SENDERS = 3


def head_name(head: Head) -> str:
    """`(5, 1)` -> "a5.h1"."""
    return f"a{head[0]}.h{head[1]}"


@dataclass
class KeyPath:
    """Path patching into one induction head's key input (K-composition).

    Attributes:
        head: The induction head.
        receiver: Its KV group's key input, "L.G.k" (with grouped-query attention the group's
            other query heads read the same keys, so the path reaches them too).
        senders: The top senders (heads in earlier layers) by normalized effect:
            (head, normalized effect, previous_token score).
        previous_heads: The top heads by previous_token score among the same candidates.
        shared: Senders that are also among `previous_heads`.
        correlation: Spearman correlation over all candidate senders of the effect with the
            previous_token score (NaN with fewer than 2 candidates).
    """

    head: Head
    receiver: str
    senders: list[tuple[Head, float, float]]
    previous_heads: list[Head]
    shared: list[Head]
    correlation: float

    @property
    def k_composition(self) -> bool:
        """The strongest sender is one of the top previous-token heads."""
        return bool(self.senders) and self.senders[0][0] in self.previous_heads

    def to_dict(self) -> dict:
        return {"head": head_name(self.head), "receiver": self.receiver,
                "senders": [{"head": head_name(h), "effect": round(float(e), 6), "previous_token": round(float(p), 6)}
                            for h, e, p in self.senders],
                "previous_heads": [head_name(h) for h in self.previous_heads],
                "shared": [head_name(h) for h in self.shared], "k_composition": self.k_composition,
                "correlation": None if math.isnan(self.correlation) else round(self.correlation, 6)}


def key_path_task(task: TaskSet) -> TaskSet:
    """The task with corrupt rows BOS + s' + s: the first copy replaced, the second kept.

    The generator's corrupt rows (BOS + s + s') share the first copy with the clean rows, and
    causal attention makes every first-copy activation identical in both; patching a sender into
    the keys would then change no key an induction head reads (it reads the first copy's). With
    s' first, the previous-token heads' writes at the first copy differ, and patching them into
    an induction head's keys breaks exactly the K-composition under test.
    """
    T = task.meta["seq_len"]
    b = len(task.clean[0]) - 2 * T
    corrupt = [c[:b] + k[b + T:] + c[b:b + T] for c, k in zip(task.clean, task.corrupt, strict=True)]
    return replace(task, corrupt=corrupt, meta={**task.meta, "corrupt": "BOS + s' + s (first copy replaced)"})


def key_path_patching(model: Model, task: TaskSet, heads: Sequence[Head], previous_token: Tensor, *,
                      ablation: str = "resample", batch_size: int | None = None) -> tuple[list[KeyPath], str]:
    """Path patching from every head of the earlier layers into each induction head's key input.

    One `path_patch` call: senders = every head of layers 0 .. (the deepest of `heads`) - 1,
    receivers = "L.G.k" of each head's KV group (query head h reads KV head h // (n_heads //
    n_kv_heads)), on `key_path_task(task)`. Per head, only senders of earlier layers count.

    Returns:
        (one `KeyPath` per head in a layer > 0, a note saying what was patched).
    """
    targets = [tuple(h) for h in heads if h[0] > 0]
    if not targets:
        return [], "skipped: every induction head is in layer 0, so no head writes into its keys"
    group = model.n_heads // model.n_kv_heads
    receivers = sorted({f"{L}.{h // group}.k" for L, h in targets})
    top_layer = max(L for L, _ in targets)
    senders = [(L, h) for L in range(top_layer) for h in range(model.n_heads)]
    res = path_patch(TaskRun.build(model, key_path_task(task)), senders=senders, receivers=receivers,
                     ablation=ablation, batch_size=batch_size)
    effect = torch.as_tensor(res.normalized, dtype=torch.float32)  # [sender, receiver]
    col = {r: j for j, r in enumerate(res.receivers)}
    out = []
    for L, h in targets:
        rec = f"{L}.{h // group}.k"
        cand = [i for i, s in enumerate(senders) if s[0] < L]
        eff = effect[cand, col[rec]]
        prev = torch.stack([previous_token[senders[i]] for i in cand])
        top = eff.nan_to_num(nan=-math.inf).argsort(descending=True, stable=True)[:TOP_SENDERS].tolist()
        prev_heads = [senders[cand[i]] for i in prev.argsort(descending=True, stable=True)[:TOP_SENDERS].tolist()]
        top_heads = [senders[cand[i]] for i in top]
        corr = rank_correlation(eff, prev) if len(cand) > 1 and not eff.isnan().any() else float("nan")
        out.append(KeyPath((L, h), rec, [(senders[cand[i]], float(eff[i]), float(prev[i])) for i in top],
                           prev_heads, [s for s in top_heads if s in prev_heads], corr))
    note = (f"path_patch: senders = the {len(senders)} heads of layers 0..{top_layer - 1}, receivers = "
            f"{', '.join(receivers)}, ablation {ablation!r}, on the task with corrupt rows BOS + s' + s (first copy "
            f"replaced; see key_path_task); clean logprob {res.clean:.3f}, corrupt {res.corrupt:.3f}; effect = "
            "(clean - patched) / (clean - corrupt)")
    return out, note
