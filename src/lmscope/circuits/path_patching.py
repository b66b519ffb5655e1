"""Path patching (Wang et al. 2022; ARENA's IOI exercise): the effect of a sender head on the
metric through one receiver only, every other route frozen at its clean value.

Receivers:

    "logits"    the direct route: sender -> residual stream -> unembedding (through the MLPs
                after the sender too unless `freeze_mlps`)
    "L.H.q"     the query of query head H at layer L
    "L.G.k"     the key of KV head G at layer L; with grouped-query attention the query heads
    "L.G.v"     of a group share one key/value head, so a key or value route is per KV head
                (G in 0..n_kv_heads-1) and reaches every query head of its group

Noising, for each sender head (layer Ls, head s):

    1. one clean and one corrupt forward capture every layer's attn.z (and the receivers' q/k/v);
    2. run CLEAN with the sender's attn.z set to its reference (resample / mean / zero) and every
       other head's attn.z from layer Ls on frozen at its clean value; MLPs recompute, or with
       `freeze_mlps` every mlp_out from layer Ls on is frozen too. Receiver "logits": this run's
       metric is the result. Otherwise capture the receivers' q/k/v in this run;
    3. run CLEAN with only the receiver's q/k/v (its head's slice) patched to the values captured
       in 2, and score.

A sender at or after a receiver's layer has no path to it (heads read resid_pre): NaN.
Families with an attention post-norm (Gemma 2/3, OLMo 2) normalise the sum of a layer's heads,
so the sender's own layer renormalises its other heads' writes as well: the direct route there
is the sender's change of the whole (normed) attention output.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lmscope.circuits.ablation import check_ablation, reference
from lmscope.circuits.metric import TaskRun
from lmscope.circuits.patching import (
    Write,
    forward_jobs,
    gap_fraction,
    per_forward_for,
    top_names,
)
from lmscope.engine.errors import InputError
from lmscope.engine.results import Result, Table

_RECEIVER = re.compile(r"^(-?\d+)\.(\d+)\.([qkv])$")


@dataclass(frozen=True)
class Receiver:
    """`layer` None for "logits"; else the q of query head `head` or the k/v of KV head `head`."""

    layer: int | None
    head: int | None = None
    which: str | None = None

    @property
    def name(self) -> str:
        return "logits" if self.layer is None else f"{self.layer}.{self.head}.{self.which}"

    @property
    def site(self) -> str:
        return f"layers.{self.layer}.attn.{self.which}"


def parse_receiver(run: TaskRun, text: str) -> Receiver:
    """"logits", "L.H.q", "L.G.k" or "L.G.v" -> Receiver, range-checked against the model."""
    m = run.model
    if not isinstance(text, str):
        raise InputError(f"A receiver must be a string like 'logits' or '9.6.q', got {text!r}.")
    if text.strip() == "logits":
        return Receiver(None)
    found = _RECEIVER.match(text.strip())
    if not found:
        raise InputError(f"Unknown receiver {text!r}; expected 'logits', 'L.H.q' (query of head H at layer L), "
                         "'L.G.k' or 'L.G.v' (key/value of KV head G at layer L).")
    layer, head, which = int(found.group(1)), int(found.group(2)), found.group(3)
    if not -m.n_layers <= layer < m.n_layers:
        raise InputError(f"Receiver {text!r}: layer {layer} is out of range for {m.name} ({m.n_layers} layers: "
                         f"0..{m.n_layers - 1}, or -{m.n_layers}..-1).")
    n = m.n_heads if which == "q" else m.n_kv_heads
    if head >= n:
        what = "query heads" if which == "q" else "key/value heads (grouped-query attention)"
        raise InputError(f"Receiver {text!r}: head {head} is out of range for {m.name} ({n} {what}: 0..{n - 1}).")
    return Receiver(layer % m.n_layers, head, which)


def check_senders(run: TaskRun, senders) -> list[tuple[int, int]]:
    """(layer, head) pairs, range-checked; None = every head of every layer."""
    m = run.model
    if senders is None:
        return [(L, h) for L in range(m.n_layers) for h in range(m.n_heads)]
    out = []
    for pair in senders:
        if not (isinstance(pair, Sequence) and len(pair) == 2 and all(isinstance(x, int) for x in pair)):
            raise InputError(f"A sender must be a (layer, head) pair of integers, got {pair!r}.")
        layer, head = pair
        if not -m.n_layers <= layer < m.n_layers:
            raise InputError(f"Sender {pair!r}: layer {layer} is out of range for {m.name} ({m.n_layers} layers).")
        if not 0 <= head < m.n_heads:
            raise InputError(f"Sender {pair!r}: head {head} is out of range for {m.name} ({m.n_heads} heads: "
                             f"0..{m.n_heads - 1}).")
        out.append((layer % m.n_layers, head))
    if not out:
        raise InputError("senders is empty; pass (layer, head) pairs or None for every head.")
    return out


@dataclass
class PathPatchResult(Result):
    """Path patching (noising) of sender heads through receivers.

    Attributes:
        senders: Sender names ("a3.h2").
        receivers: Receiver names ("logits", "9.6.q", "8.1.k").
        ablation: Reference of the sender ("resample", "mean", "zero").
        freeze_mlps: Whether the MLPs after the sender were frozen at their clean output.
        metric, task, model: Names.
        clean, corrupt: Unpatched metrics (means over rows).
        values: Raw metric `[n_senders, n_receivers]` (NaN: no path).
    """

    senders: list[str]
    receivers: list[str]
    ablation: str
    freeze_mlps: bool
    metric: str
    task: str
    model: str
    clean: float
    corrupt: float
    values: Tensor

    @property
    def effect(self) -> Tensor:
        """values - clean: the metric change through each path."""
        return self.values - self.clean

    @property
    def normalized(self) -> Tensor:
        """(clean - values) / (clean - corrupt): the fraction of the gap carried by each path."""
        return gap_fraction(self.values, self.clean, self.corrupt, "noising")

    def _names(self) -> list[list[str]]:
        return [[f"{s}->{r}" for r in self.receivers] for s in self.senders]

    def top(self, k: int = 10) -> list[str]:
        """The k sender->receiver paths with the largest |normalized| effect ("a9.h6->logits")."""
        return [n for n, _, _ in top_names(self._names(), self.normalized, k)]

    def to_dict(self) -> dict:
        return {"kind": "path", "direction": "noising", "ablation": self.ablation, "metric": self.metric,
                "task": self.task, "model": self.model, "values": self.normalized.tolist(),
                "raw": self.values.tolist(), "row_labels": list(self.senders), "col_labels": list(self.receivers),
                "row_title": "sender", "col_title": "receiver", "clean": self.clean, "corrupt": self.corrupt}

    def table(self, k: int = 20) -> Table:
        norm, eff = self.normalized, self.effect
        rows = [[self.senders[i], self.receivers[j], float(norm[i, j]), float(eff[i, j])]
                for _, i, j in top_names(self._names(), norm, k)]
        frozen = "heads and MLPs" if self.freeze_mlps else "heads (MLPs recomputed)"
        return Table(["sender", "receiver", "normalized", "effect"], rows,
                     title=f"path patching on {self.task} ({self.model})",
                     formats={"normalized": "+.3f", "effect": "+.4f"},
                     notes=[(f"noising: sender set to its {self.ablation} value, other {frozen} frozen at clean; "
                             "normalized = fraction of the clean-corrupt gap."),
                            f"clean {self.metric} {self.clean:.4f}, corrupt {self.corrupt:.4f}."])


def _sender_job(sender: tuple[int, int], top: int, ref_z: dict, clean_z: dict, clean_mlp: dict | None) -> list[Write]:
    """Step 2's writes: the sender's slice to its reference, every other head (and MLP) from
    its layer up to `top` (exclusive) to clean."""
    layer, head = sender
    job = [Write(f"layers.{layer}.attn.z", ref_z[layer], head)]
    job += [Write(f"layers.{L}.attn.z", clean_z[L]) for L in range(layer + 1, top)]
    if clean_mlp is not None:
        job += [Write(f"layers.{L}.mlp_out", clean_mlp[L]) for L in range(layer, top)]
    return job


def path_patch(run: TaskRun, *, senders: Sequence[tuple[int, int]] | None = None,
               receivers: Sequence[str] = ("logits",), ablation: str = "resample", freeze_mlps: bool = False,
               batch_size: int | None = None) -> PathPatchResult:
    """Path patching (noising) of each sender head through each receiver separately.

    Args:
        run: The task bound to a model.
        senders: (layer, head) pairs; None = every head of every layer.
        receivers: "logits", "L.H.q", "L.G.k", "L.G.v" (see the module docstring).
        ablation: The sender's reference: "resample", "mean" or "zero".
        freeze_mlps: Also freeze every MLP from the sender's layer on at its clean output.
        batch_size: Senders (step 2) or sender-receiver pairs (step 3) per forward; 1 = one
            forward each; None = as many as fill 64 rows.

    Returns:
        A `PathPatchResult` `[n_senders, n_receivers]`; NaN where the sender's layer is not
        before the receiver's.
    """
    check_ablation(ablation)
    m = run.model
    send = check_senders(run, senders)
    recv = [parse_receiver(run, r) for r in ([receivers] if isinstance(receivers, str) else receivers)]
    if not recv:
        raise InputError("receivers is empty; pass 'logits' or receivers like '9.6.q'.")
    if len({r.name for r in recv}) != len(recv):
        raise InputError(f"Receivers repeat: {[r.name for r in recv]}.")
    per = per_forward_for(run, batch_size)
    to_logits = any(r.layer is None for r in recv)
    qkv_sites = sorted({r.site for r in recv if r.layer is not None})
    # step 2 must reach the last receiver layer (or the logits); later layers need no freezing
    top = m.n_layers if to_logits else max(r.layer for r in recv if r.layer is not None)
    z_sites = [f"layers.{L}.attn.z" for L in range(top)]
    mlp_sites = [f"layers.{L}.mlp_out" for L in range(top)] if freeze_mlps else []
    values = torch.full((len(send), len(recv)), float("nan"))
    with torch.no_grad():
        (clean, acts), = forward_jobs(run, "clean", [[]], per_forward=1, capture=z_sites + mlp_sites)
        (corrupt, bad), = forward_jobs(run, "corrupt", [[]], per_forward=1, capture=z_sites)
        mask = run.corrupt.attention_mask
        ref_z = {L: reference(run, bad[f"layers.{L}.attn.z"], mask, ablation) for L in range(top)}
        clean_z = {L: acts[f"layers.{L}.attn.z"] for L in range(top)}
        clean_mlp = {L: acts[f"layers.{L}.mlp_out"] for L in range(top)} if freeze_mlps else None
        live = [i for i, (L, _) in enumerate(send) if L < top]  # senders with some path
        for start in range(0, len(live), per):
            idx = live[start:start + per]
            jobs = [_sender_job(send[i], top, ref_z, clean_z, clean_mlp) for i in idx]
            step2 = forward_jobs(run, "clean", jobs, per_forward=per, capture=qkv_sites, score=to_logits)
            pairs, jobs3 = [], []
            for i, (metric, caps) in zip(idx, step2, strict=True):
                for j, r in enumerate(recv):
                    if r.layer is None:
                        values[i, j] = metric
                    elif send[i][0] < r.layer:
                        pairs.append((i, j))
                        jobs3.append([Write(r.site, caps[r.site], r.head)])
            for (i, j), (metric, _) in zip(pairs, forward_jobs(run, "clean", jobs3, per_forward=per), strict=True):
                values[i, j] = metric
    return PathPatchResult(senders=[f"a{L}.h{h}" for L, h in send], receivers=[r.name for r in recv],
                           ablation=ablation, freeze_mlps=freeze_mlps, metric=run.task.metric, task=run.task.name,
                           model=m.name, clean=clean, corrupt=corrupt, values=values)
