"""The model as a graph of edges, for circuit discovery (EAP, EAP-IG, edge pruning).

Senders write into the residual stream; receivers read it:

    senders     input (the token embedding), a{L}.h{H} (head H's write, `attn.head_out`),
                m{L} (the MLP's write, `mlp_out`)
    receivers   a{L}.h{H}.q (head H's query), a{L}.g{G}.k / a{L}.g{G}.v (key / value of KV head
                G: with grouped-query attention a key and value head is shared by a group of
                query heads, so the key and value routes are per KV head), m{L} (the MLP's
                input), logits (what the final norm reads)

Receiver v reads the residual stream, which is the sum of the writes of every sender before it
(biases aside, identical in every run). An edge run changes what one receiver reads from one
sender without touching the sender's other readers:

    input_v = x_v + sum_u c[u, v] * (ref_u - a_u) + probe_v

where `a_u` is sender u's write in this very run, `ref_u` its reference value (the corrupt
run's write, a mean, zero), `c` the per-edge ablation coefficients (0 keeps the edge, 1
replaces it by the reference) and `probe_v` a zero tensor whose gradient is dM/d input_v.

Nothing is re-implemented: a query head whose input differs from its neighbours' is computed
by calling the block's own attention norm and query projection on that head's input, and
keeping that head's slice. Families with a parallel attention/MLP block (GPT-NeoX) have no
separate MLP input and are refused. OLMo 2 normalises queries over all heads together, so its
per-head query route is approximate there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lmscope.engine.arch import get_module
from lmscope.engine.errors import EngineError, InputError
from lmscope.engine.hooks import _get, hooked, point_for
from lmscope.engine.interventions import Apply, Patch
from lmscope.engine.model import Batch, Model
from lmscope.engine.sites import Site


@dataclass
class Graph:
    """Senders, receivers and which sender can reach which receiver (`valid` [S, R])."""

    senders: list[str]
    receivers: list[str]
    valid: Tensor  # [S, R] bool
    sender_layer: list[int]  # input: -1
    receiver_layer: list[int]  # logits: n_layers
    n_layers: int
    n_heads: int
    n_kv_heads: int
    _recv_index: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, model: Model) -> Graph:
        if model.spec.resid_mid is None:
            raise EngineError(f"{model.name} ({model.family}) computes attention and MLP in parallel from one input; "
                              "edge-level runs need a sequential block. Use node-level patching instead.")
        L, H, G = model.n_layers, model.n_heads, model.n_kv_heads
        senders, s_layer = ["input"], [-1]
        receivers, r_layer = [], []
        for lay in range(L):
            senders += [f"a{lay}.h{h}" for h in range(H)] + [f"m{lay}"]
            s_layer += [lay] * (H + 1)
            receivers += ([f"a{lay}.h{h}.q" for h in range(H)] + [f"a{lay}.g{g}.k" for g in range(G)]
                          + [f"a{lay}.g{g}.v" for g in range(G)] + [f"m{lay}"])
            r_layer += [lay] * (H + 2 * G + 1)
        receivers.append("logits")
        r_layer.append(L)
        sl, rl = torch.tensor(s_layer), torch.tensor(r_layer)
        is_mlp_recv = torch.tensor([r.startswith("m") for r in receivers])
        is_head_send = torch.tensor([s.startswith("a") for s in senders])
        valid = sl[:, None] < rl[None, :]
        # an MLP reads the heads of its own layer (attention runs first)
        valid |= (sl[:, None] == rl[None, :]) & is_mlp_recv[None, :] & is_head_send[:, None]
        g = cls(senders, receivers, valid, s_layer, r_layer, L, H, G)
        g._recv_index = {r: i for i, r in enumerate(receivers)}
        return g

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def receiver_index(self, name: str) -> int:
        if name not in self._recv_index:
            raise InputError(f"No receiver {name!r}; receivers are named like 'a3.h2.q', 'a3.g0.k', 'm3', 'logits'.")
        return self._recv_index[name]

    def layer_receivers(self, layer: int) -> dict[str, list[int]]:
        """Receiver indices of one layer by route: {"q": [...], "k": [...], "v": [...], "mlp": [i]}."""
        H, G = self.n_heads, self.n_kv_heads
        start = layer * (H + 2 * G + 1)
        return {"q": list(range(start, start + H)), "k": list(range(start + H, start + H + G)),
                "v": list(range(start + H + G, start + H + 2 * G)), "mlp": [start + H + 2 * G]}

    def sender_block(self, layer: int) -> tuple[int, int]:
        """[start, stop) of the senders of one layer (its heads, then its MLP); layer -1: input."""
        if layer < 0:
            return 0, 1
        start = 1 + layer * (self.n_heads + 1)
        return start, start + self.n_heads + 1


def sender_sites(model: Model) -> list[str]:
    return ["embed"] + [s for lay in range(model.n_layers)
                        for s in (f"layers.{lay}.attn.head_out", f"layers.{lay}.mlp_out")]


def stack_senders(model: Model, cache) -> Tensor:
    """Every sender's write [S, batch, pos, d_model] from a cache of `sender_sites`."""
    parts = [cache["embed"][None]]
    for lay in range(model.n_layers):
        parts.append(cache[f"layers.{lay}.attn.head_out"].movedim(2, 0))
        parts.append(cache[f"layers.{lay}.mlp_out"][None])
    return torch.cat(parts, 0)


def sender_outputs(model: Model, batch: Batch, *, embed: Tensor | None = None) -> Tensor:
    """Sender writes [S, batch, pos, d_model] of one plain forward (no grad); `embed` replaces
    the token embedding ([batch, pos, d_model])."""
    from lmscope.engine.runner import run

    edits = [Patch(site="embed", source=embed)] if embed is not None else []
    res = run(model, batch, capture=sender_sites(model), edits=edits, logits=None)
    return stack_senders(model, res.cache)


@dataclass
class EdgeOutput:
    normed: Tensor  # final-norm output [batch, pos, d_model]
    probes: dict[int, Tensor]  # receiver index -> probe tensor (its .grad after backward)


class EdgeRun:
    """Forwards of `model` with per-edge ablation coefficients and/or gradient probes."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.graph = Graph.of(model)
        self._norm_path = model.spec.attn_norm

    def _reader(self, layer: int, which: str):
        """xs [n, ..., d_model] (receiver i's copy of the block input) -> receiver i's head
        [n, ..., d_head], through the block's own attention norm and projection."""
        site = Site(f"attn.{which}", layer)
        pt = point_for(self.model, site)
        norm = get_module(self.model.block(layer), self._norm_path) if self._norm_path else None
        proj = pt.module
        d_head = self.model.d_head
        plain = type(proj) is nn.Linear and pt.span is None and pt.neox is None

        def read(xs: Tensor) -> Tensor:  # `.forward`: the modules' own hooks (ours included) must not fire
            h = norm.forward(xs) if norm is not None else xs
            n = xs.shape[0]
            if plain:  # the same Linear, restricted to each receiver's rows of the weight
                w = proj.weight.view(n, d_head, -1)
                out = torch.einsum("n...d,ned->n...e", h, w)
                if proj.bias is not None:
                    out = out + proj.bias.view(n, *[1] * (h.dim() - 2), d_head)
                return out
            full = _get(pt, (h,), {}, proj.forward(h))  # [n, ..., heads, d_head]
            idx = torch.arange(n, device=full.device)
            return full.movedim(-2, 1)[idx, idx]
        return read

    def forward(self, batch: Batch, *, coeff: Tensor | None = None, reference: Tensor | None = None,
                probes: bool = False, embed: Tensor | None = None, grad: bool = True) -> EdgeOutput:
        """One forward. `coeff` [S, R] (may require grad) with `reference` [S, batch, pos, d_model];
        `probes=True` adds a zero probe to every receiver's input (gradients: `out.probes[r].grad`);
        `embed` replaces the token embedding (EAP-IG's interpolated inputs). `grad=False` runs
        without autograd (evaluating a circuit)."""
        if probes and not grad:
            raise InputError("Gradient probes need grad=True.")
        from lmscope.engine.runner import run

        g, m = self.graph, self.model
        if coeff is not None:
            if reference is None:
                raise InputError("An edge run with coefficients needs the senders' reference values.")
            if tuple(coeff.shape) != tuple(g.valid.shape):
                raise InputError(f"coeff must be [senders, receivers] = {tuple(g.valid.shape)}, got {tuple(coeff.shape)}.")
            coeff = coeff * g.valid.to(coeff.device, coeff.dtype)
        b, p = batch.input_ids.shape
        probe_t: dict[int, Tensor] = {}
        if probes:
            for r in range(len(g.receivers)):
                probe_t[r] = torch.zeros(b, p, m.d_model, device=m.device, dtype=m.dtype, requires_grad=True)
        state: dict[str, object] = {"diffs": []}  # per sender block: ref - current [n, b, p, d]
        # hard 0/1 coefficients (evaluating a circuit): every sender's (ref - current) goes into one
        # buffer as it is written, and a receiver route's changes are one matmul over the senders so far
        binary = coeff is not None and not coeff.requires_grad and bool(((coeff == 0) | (coeff == 1)).all())
        if binary:
            state["buf"] = torch.zeros(len(g.senders), b, p, m.d_model, device=m.device, dtype=m.dtype)
            state["filled"] = 0

        def deltas(recv: list[int], layer: int) -> Tensor | None:
            """Input changes [len(recv), b, p, d] of these receivers, or None when all are zero."""
            out = None
            if binary:
                u = state["filled"]
                c = coeff[:u, recv]
                if bool(c.any()):
                    out = torch.einsum("ur,ubpd->rbpd", c.to(m.dtype), state["buf"][:u])
            elif coeff is not None:
                for (start, stop), diff in state["diffs"]:
                    c = coeff[start:stop][:, recv]
                    if not bool(c.detach().any()) and not c.requires_grad:
                        continue
                    term = torch.einsum("ur,ubpd->rbpd", c.to(diff.dtype), diff)
                    out = term if out is None else out + term
            if probe_t:
                pr = torch.stack([probe_t[r] for r in recv])
                out = pr if out is None else out + pr
            return out

        def add_diff(start: int, cur: Tensor, layer: int) -> None:
            if coeff is None:
                return
            diff = reference[start:start + cur.shape[0]].to(cur.dtype) - cur
            if binary:
                state["buf"][start:start + cur.shape[0]] = diff
                state["filled"] = max(state["filled"], start + cur.shape[0])
            else:
                state["diffs"].append(((start, start + cur.shape[0]), diff))

        def on_block_input(layer: int):
            def fn(x: Tensor) -> Tensor:
                state["x"] = x
                return x
            return fn

        def on_head_route(layer: int, which: str, recv: list[int]):
            read = self._reader(layer, which)

            def fn(heads: Tensor) -> Tensor:  # [b, p, n, d_head]
                d = deltas(recv, layer)
                if d is None:
                    return heads
                x = state["x"]  # [b, p, d_model]
                new = read(x[None] + d)  # [n, b, p, d_head]: receiver i's own head from its own input
                return new.permute(1, 2, 0, 3)
            return fn

        def on_mlp_input(layer: int, recv: list[int]):
            def fn(x: Tensor) -> Tensor:
                d = deltas(recv, layer)
                return x if d is None else x + d[0]
            return fn

        def on_logits(x: Tensor) -> Tensor:
            d = deltas([len(g.receivers) - 1], m.n_layers)
            return x if d is None else x + d[0]

        edits = []
        if embed is not None:
            edits.append(Patch(site="embed", source=embed))
        need_senders = coeff is not None
        for lay in range(m.n_layers):
            routes = g.layer_receivers(lay)
            edits.append(Apply(site=f"layers.{lay}.resid_pre", fn=on_block_input(lay), name="edge-input"))
            for w in "qkv":
                edits.append(Apply(site=f"layers.{lay}.attn.{w}", fn=on_head_route(lay, w, routes[w]),
                                   name=f"edge-{w}"))
            edits.append(Apply(site=f"layers.{lay}.resid_mid", fn=on_mlp_input(lay, routes["mlp"]), name="edge-mlp"))
        edits.append(Apply(site=f"layers.{m.n_layers - 1}.resid_post", fn=on_logits, name="edge-logits"))
        captures = (sender_sites(m) if need_senders else []) + ["final_norm"]
        mode = torch.enable_grad() if grad else torch.no_grad()
        with mode, hooked(m, capture=captures, edits=edits, grad=grad) as cache:
            if need_senders:
                self._watch(cache, add_diff)
            run(m, batch, logits=None, grad=grad)
            normed = cache["final_norm"]
        return EdgeOutput(normed, probe_t)

    def _watch(self, cache, add_diff) -> None:
        """Make each sender's write available to later receivers as soon as it is recorded."""
        m, g = self.model, self.graph
        caps = cache._caps
        order = [("embed", -1)] + [(f"layers.{lay}.{k}", lay) for lay in range(m.n_layers)
                                   for k in ("attn.head_out", "mlp_out")]
        for name, lay in order:
            cap = caps[name]
            heads = name.endswith("head_out")
            start = 0 if lay < 0 else g.sender_block(lay)[0] + (0 if heads else m.n_heads)
            cap.chunks = _Notify(cap.chunks, lambda x, s=start, h=heads, lay=lay:
                                 add_diff(s, x.movedim(2, 0) if h else x[None], lay))


class _Notify(list):
    """A capture's chunk list that calls back on append (the sender's write, as recorded)."""

    def __init__(self, items: Sequence, cb) -> None:
        super().__init__(items)
        self._cb = cb

    def append(self, x) -> None:
        super().append(x)
        self._cb(x)
