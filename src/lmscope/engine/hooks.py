"""The only module that registers torch hooks.

`hooked(model, capture=..., edits=...)` is a context manager: inside it every forward of the
wrapped HF model (a plain call, `generate` with its KV cache, a backward pass) is read and/or
edited at the named sites; on exit, also after an exception, every hook is removed. Contexts
nest: an outer context's edits run first, and an inner capture sees them.

At one hook point, the edits of all open contexts run first (outer context first), then every
capture records the edited value (what the model really uses).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lmscope.engine import norms
from lmscope.engine import positions as P
from lmscope.engine.arch import get_module
from lmscope.engine.errors import EngineError, InputError, SiteError
from lmscope.engine.interventions import Edit, EditContext
from lmscope.engine.progress import checkpoint
from lmscope.engine.sites import CAPTURE_ONLY, Site

if TYPE_CHECKING:
    from lmscope.engine.model import Model


class StopForward(Exception):
    """Raised by a hook after the last layer a capture needs; caught by `runner.run`."""


@dataclass(frozen=True)
class _Point:
    """A hook point: module + where the tensor is + how to view it."""

    module: nn.Module
    io: str  # "in" (first positional input) or "out"
    index: int | None = None  # element of a tuple output
    chunk: tuple[int, int] | None = None  # (i, n): i-th of n equal chunks of the last dim
    heads: int | None = None  # split the last dim into (heads, -1)
    span: tuple[int, int] | None = None  # [start, stop) of the last dim (q, k or v of a fused projection)
    neox: int | None = None  # GPT-NeoX fused qkv: the last dim is (head, 3, d_head); take this one of 3


def point_for(model: Model, site: Site) -> _Point:
    """Where a site lives in the HF module tree (explicit, from the ArchSpec)."""
    spec, hf = model.spec, model.hf
    if site.kind == "embed":
        return _Point(get_module(hf, spec.embed), "out")
    if site.kind == "final_norm":
        return _Point(get_module(hf, spec.final_norm), "out")
    if site.kind == "logits":
        return _Point(get_module(hf, spec.unembed), "out")
    block = model.block(site.layer)
    k = site.kind
    if k == "resid_pre":
        return _Point(block, "in")
    if k == "resid_post":
        return _Point(block, "out", index=0)
    if k == "resid_mid":
        if spec.resid_mid is None:
            raise SiteError(
                f"{model.name} ({spec.family}) has parallel attention and MLP: there is no resid_mid. "
                "Use resid_pre (what both read) or resid_post."
            )
        return _Point(get_module(block, spec.resid_mid), "in")
    if k in ("attn_out", "mlp_out"):
        path, which = spec.attn_out if k == "attn_out" else spec.mlp_out
        return _Point(get_module(block, path), "out", index=0 if which == "output0" else None)
    if k == "mlp_in":  # the MLP module (parent of the down projection) reads the normed residual
        return _Point(get_module(block, spec.down.rsplit(".", 1)[0]), "in")
    if k in ("attn.q", "attn.k", "attn.v"):
        return _qkv_point(model, block, k[-1])
    if k == "attn.z":
        return _Point(get_module(block, spec.o_proj), "in", heads=model.n_heads)
    if k == "attn.head_out":
        return _Point(get_module(block, spec.o_proj), "out")
    if k == "attn.pattern":
        return _Point(get_module(block, spec.attn), "out", index=1)
    if k == "mlp.neurons":
        return _Point(get_module(block, spec.down), "in")
    if k in ("mlp.gate", "mlp.up"):
        if spec.fused_gate_up:
            return _Point(get_module(block, spec.up), "out", chunk=(0 if k == "mlp.gate" else 1, 2))
        if k == "mlp.gate":
            if spec.gate is None:
                raise SiteError(f"{model.name} ({spec.family}) has an ungated MLP: there is no mlp.gate; use mlp.up.")
            return _Point(get_module(block, spec.gate), "out")
        return _Point(get_module(block, spec.up), "out")
    raise SiteError(f"Unknown site kind {k!r}.")


def _qkv_point(model: Model, block: nn.Module, which: str) -> _Point:
    """Queries, keys or values split into heads, from a separate or a fused projection."""
    spec = model.spec
    heads = model.n_heads if which == "q" else model.n_kv_heads
    if spec.qkv is None:
        path = {"q": spec.q_proj, "k": spec.k_proj, "v": spec.v_proj}[which]
        return _Point(get_module(block, path), "out", heads=heads)
    i = "qkv".index(which)
    if spec.qkv_layout == "neox":
        return _Point(get_module(block, spec.qkv), "out", neox=i, heads=model.n_heads)
    sizes = [model.n_heads * model.d_head, model.n_kv_heads * model.d_head, model.n_kv_heads * model.d_head]
    start = sum(sizes[:i])
    return _Point(get_module(block, spec.qkv), "out", heads=heads, span=(start, start + sizes[i]))


@dataclass
class _Capture:
    site: Site
    positions: P.PositionSpec
    to_cpu: bool
    chunks: list = field(default_factory=list)
    sink: Callable[[str, Tensor], None] | None = None  # streamed to instead of kept in `chunks`


class Cache:
    """Captured activations by site name.

    `cache["layers.3.resid_post"]` is `[batch, pos, *feat]` for positions "all" (padded
    columns included: see `mask`), `[batch, k, *feat]` for a position list and
    `[batch, *feat]` for a single position ("last", an int). Chunks captured during
    generation are concatenated along positions.
    """

    def __init__(self) -> None:
        self._caps: dict[str, _Capture] = {}
        self.mask: Tensor | None = None  # attention mask of the first forward [batch, pos]

    def _add(self, cap: _Capture) -> None:
        if cap.site.name in self._caps:
            raise SiteError(f"Site {cap.site} is captured twice in one context.")
        self._caps[cap.site.name] = cap

    def __getitem__(self, name: str | Site) -> Tensor:
        key = str(name)
        if key not in self._caps:
            raise KeyError(f"{key!r} was not captured; captured: {', '.join(self._caps) or 'nothing'}.")
        cap = self._caps[key]
        if not cap.chunks:
            raise SiteError(f"{key} was registered but no forward pass reached it.")
        if len(cap.chunks) == 1:
            return cap.chunks[0]
        if cap.site.kind == "attn.pattern":
            raise SiteError("attn.pattern chunks from cached generation cannot be concatenated; capture without generate.")
        dim = 1 if not P.is_single(cap.positions) else None
        if dim is None:
            return torch.stack(cap.chunks, 1)
        return torch.cat(cap.chunks, dim)

    def __contains__(self, name) -> bool:
        return str(name) in self._caps

    def keys(self) -> list[str]:
        return list(self._caps)

    def items(self):
        return [(k, self[k]) for k in self._caps]

    def __len__(self) -> int:
        return len(self._caps)

    def __repr__(self) -> str:
        shapes = {k: tuple(c.chunks[0].shape) if c.chunks else None for k, c in self._caps.items()}
        return f"Cache({shapes})"


def find_kv_cache(kwargs: dict):
    """The KV cache object among a forward's keyword arguments, found by its type (transformers
    has renamed the argument: `past_key_values` up to 5.23, `cache` from 5.24), or None.

    Raises EngineError when an argument looks like a cache but is not a `Cache` object (a legacy
    tuple cache, an unknown type): the engine could not tell the absolute positions."""
    from transformers.cache_utils import Cache as HFCache

    for key, val in kwargs.items():
        if isinstance(val, HFCache):
            return val
    for key, val in kwargs.items():
        if val is None or isinstance(val, bool) or key in ("use_cache", "cache_position", "cache_implementation"):
            continue
        if "cache" in key or "past" in key:
            raise EngineError(
                f"The forward got {key}={type(val).__name__}, which lmscope does not recognise as a KV cache, so it "
                "cannot tell which token positions this forward computes. Pass a transformers `Cache` object "
                "(e.g. DynamicCache) or run without a cache."
            )
    return None


class _State:
    """Per-forward chunk state, refreshed by a pre-hook on the root module.

    The absolute column of a forward's first token (its offset) comes from the KV cache object's
    length (found by type, whatever the keyword is called), cross-checked against `cache_position`
    and a 2-D attention mask when the caller passes them; a forward with neither a cache nor a
    mask starts at column 0. The prompt length and each row's left padding are taken from the
    forward that starts at column 0 and kept for the cached forwards that follow (generation may
    drop the mask). A context that sees a cached forward whose prompt it never saw refuses
    prompt-relative positions (`positions.resolve`) instead of guessing.
    """

    def __init__(self) -> None:
        self.chunk: P.ChunkState | None = None
        self.prompt_len: int | None = None
        self.pad: Tensor | None = None
        self.declared = False

    def set_prompt(self, prompt_len: int, pad: Tensor) -> None:
        """Declare the prompt of every forward to come (the prefix-cached run; recomputing a
        generation without the cache): forwards starting at column 0 then keep it."""
        self.prompt_len, self.pad, self.declared = prompt_len, pad, True

    def update(self, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is None:
            return
        b, t = ids.shape[:2]
        cache = find_kv_cache(kwargs)
        offset = int(cache.get_seq_length()) if cache is not None else 0
        cpos = kwargs.get("cache_position")
        if isinstance(cpos, Tensor) and cpos.numel() and int(cpos.reshape(-1)[0]) != offset:
            raise EngineError(f"cache_position starts at {int(cpos.reshape(-1)[0])} but the KV cache holds {offset} "
                              "tokens; lmscope cannot tell which positions this forward computes.")
        mask = kwargs.get("attention_mask")
        if isinstance(mask, Tensor) and mask.dim() == 2:
            if cache is None and mask.shape[1] != t:
                raise EngineError(f"The attention mask covers {mask.shape[1]} columns but the forward has {t} tokens "
                                  "and no KV cache lmscope can read.")
            if cache is not None and mask.shape[1] != offset + t:
                raise EngineError(f"The attention mask covers {mask.shape[1]} columns but the KV cache holds {offset} "
                                  f"tokens and the forward adds {t}.")
            mask = mask.bool()
            pad = (mask.long().cumsum(1) == 0).sum(1)
            valid = mask[:, offset:]
        else:
            pad = None
            valid = torch.ones(b, t, dtype=torch.bool, device=ids.device)
        if offset == 0 and not self.declared:
            self.prompt_len = t
            self.pad = pad if pad is not None else torch.zeros(b, dtype=torch.long, device=ids.device)
        if pad is None:
            pad = self.pad if self.pad is not None else torch.zeros(b, dtype=torch.long, device=ids.device)
            if pad.shape[0] != b:
                if bool((pad == 0).all()):
                    pad = torch.zeros(b, dtype=torch.long, device=ids.device)
                else:
                    raise EngineError(f"A cached forward of {b} rows continues a padded prompt of {pad.shape[0]} rows "
                                      "without an attention mask; pass attention_mask.")
        self.chunk = P.ChunkState(offset, t, self.prompt_len, pad, valid)


def _get(p: _Point, args, kwargs, output) -> Tensor:
    if p.io == "in":
        x = args[0] if args else kwargs["hidden_states"]
    else:
        x = output if p.index is None or isinstance(output, Tensor) else output[p.index]
    if x is None:
        raise SiteError("attn.pattern needs eager attention; this forward returned no attention weights.")
    if p.chunk is not None:
        i, n = p.chunk
        size = x.shape[-1] // n
        x = x[..., i * size : (i + 1) * size]
    if p.span is not None:
        x = x[..., p.span[0] : p.span[1]]
    if p.neox is not None:
        return x.unflatten(-1, (p.heads, 3, -1))[..., p.neox, :]
    if p.heads is not None:
        x = x.unflatten(-1, (p.heads, -1))
    return x


def _put(p: _Point, args, kwargs, output, new: Tensor):
    if p.neox is not None or p.span is not None or p.chunk is not None:
        full = args[0] if p.io == "in" and args else (kwargs.get("hidden_states") if p.io == "in" else None)
        if full is None:
            full = output if p.index is None or isinstance(output, Tensor) else output[p.index]
    if p.neox is not None:
        parts = list(full.unflatten(-1, (p.heads, 3, -1)).unbind(-2))
        parts[p.neox] = new
        new = torch.stack(parts, -2).flatten(-3)
    elif p.heads is not None:
        new = new.flatten(-2)
    if p.span is not None:
        new = torch.cat([full[..., : p.span[0]], new, full[..., p.span[1] :]], -1)
    if p.chunk is not None:
        i, n = p.chunk
        size = full.shape[-1] // n
        new = torch.cat([full[..., : i * size], new, full[..., (i + 1) * size :]], -1)
    if p.io == "in":
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}
    if p.index is None or isinstance(output, Tensor):
        return new
    return (*output[: p.index], new, *output[p.index + 1 :])


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    shape = (*idx.shape, *x.shape[2:])
    return torch.gather(x, 1, idx.reshape(*idx.shape, *[1] * (x.dim() - 2)).expand(shape))


def _tail(st: P.ChunkState, x: Tensor) -> P.ChunkState:
    """The chunk state of a tensor that holds only the chunk's last columns (logits computed
    with `logits_to_keep`, as generation and `run(logits="last")` do)."""
    n = x.shape[1]
    if n >= st.length:
        return st
    return P.ChunkState(st.offset + st.length - n, n, st.prompt_len, st.pad, st.valid[:, -n:])


def _apply_edit(edit: Edit, site: Site, x: Tensor, st: P.ChunkState) -> Tensor:
    st = _tail(st, x) if site.kind == "logits" else st
    sel = P.resolve(edit.positions, st)
    if sel is None:
        return x
    idx, ok, cols = sel
    g = _gather(x, idx)
    sub = g[:, :, list(site.units)] if site.units is not None else g
    new = edit.apply(sub, EditContext(cols=cols, ok=ok, dense=P.is_dense(edit.positions)))
    if new.shape != sub.shape:
        raise InputError(f"Edit on {site} produced shape {tuple(new.shape)}, expected {tuple(sub.shape)}.")
    new = torch.where(ok.reshape(*ok.shape, *[1] * (new.dim() - 2)), new.to(sub.dtype), sub)
    if site.units is not None:
        g = g.clone()
        g[:, :, list(site.units)] = new
        new = g
    out = x.clone()
    out.scatter_(1, idx.reshape(*idx.shape, *[1] * (x.dim() - 2)).expand(new.shape), new)
    return out


def _head_out(model: Model, site: Site, z_in: Tensor, proj_out: Tensor) -> Tensor:
    """Each head's write into the residual [batch, pos, head, d_model]: z_h @ W_O[h],
    through the frozen-scale post-norm where the family has one (sums to attn_out - bias)."""
    w_o = model.weights.W_O(site.layer)  # [head, d_head, d_model]
    z = z_in.unflatten(-1, (model.n_heads, -1))
    out = torch.einsum("bphe,hed->bphd", z, w_o.to(z.dtype))
    post = model.spec.attn_post_norm
    if post is not None:
        scale = norms.frozen_scale(get_module(model.block(site.layer), post), proj_out, model.spec.norm_kind)
        out = out * scale[:, :, None, :]
    return out


class _Dispatcher:
    """The one torch hook of a (module, input/output) pair. It runs the edits of every active
    context in the order the contexts were entered, then every capture, then early stops, so
    a capture sees all edits whatever the nesting (`with capture(): generate(edits=...)`)."""

    def __init__(self, module: nn.Module, io: str) -> None:
        self.entries: list[tuple[object, int, object]] = []  # (owner, phase, fn)
        if io == "in":
            self.handle = module.register_forward_pre_hook(self._pre, with_kwargs=True)
        else:
            self.handle = module.register_forward_hook(self._post, with_kwargs=True)

    def _run(self, args, kwargs, output):
        changed = False
        for _, phase, fn in sorted(self.entries, key=lambda e: e[1]):  # stable: entry order kept
            if phase == 0:
                args, kwargs, output = fn(args, kwargs, output)
                changed = True
            else:
                fn(args, kwargs, output)
        return changed, args, kwargs, output

    def _pre(self, mod, args, kwargs):
        changed, args, kwargs, _ = self._run(args, kwargs, None)
        return (args, kwargs) if changed else None

    def _post(self, mod, args, kwargs, output):
        changed, _, _, output = self._run(args, kwargs, output)
        return output if changed else None


_DISPATCHERS: dict[tuple[int, str], _Dispatcher] = {}
_ACTIVE: dict[int, int] = defaultdict(int)  # id(hf model) -> number of open contexts

EDIT, CAPTURE, STOP = 0, 1, 2


class _Engine:
    def __init__(self, model: Model, grad: bool) -> None:
        self.model = model
        self.grad = grad
        self.state = _State()
        self.handles: list = []
        self.keys: list[tuple[int, str]] = []
        # a model spread over devices (device_map): captures are gathered where the logits come out
        self.gather = model.device if model.spans_devices else None

    def _add(self, module: nn.Module, io: str, phase: int, fn) -> None:
        key = (id(module), io)
        if key not in _DISPATCHERS:
            _DISPATCHERS[key] = _Dispatcher(module, io)
        _DISPATCHERS[key].entries.append((self, phase, fn))
        self.keys.append(key)

    def install(self, edits: Sequence[tuple[Site, Edit]], caps: Sequence[_Capture], stop_layer: int | None) -> None:
        m = self.model
        def pre(mod, a, kw):
            checkpoint()  # a cancelled studio job stops at its next forward (engine.progress)
            self.state.update(a, kw)
        self.handles.append(m.hf.register_forward_pre_hook(pre, with_kwargs=True))
        for site, edit in edits:
            pt = point_for(m, site)
            self._add(pt.module, pt.io, EDIT, self._edit_fn(pt, site, edit))
        for cap in caps:
            if cap.site.kind == "attn.head_out":
                mod = get_module(m.block(cap.site.layer), m.spec.o_proj)
                self._add(mod, "out", CAPTURE, lambda a, kw, out, cap=cap: self._record(
                    cap, _head_out(m, cap.site, a[0] if a else kw["hidden_states"], out)))
            else:
                pt = point_for(m, cap.site)
                self._add(pt.module, pt.io, CAPTURE, lambda a, kw, out, pt=pt, cap=cap: self._record(
                    cap, _get(pt, a, kw, out)))
        if stop_layer is not None:
            def stop(a, kw, out):
                raise StopForward
            self._add(m.block(stop_layer), "out", STOP, stop)

    def _edit_fn(self, pt: _Point, site: Site, edit: Edit):
        def fn(args, kwargs, output):
            x = _apply_edit(edit, site, _get(pt, args, kwargs, output), self.state.chunk)
            res = _put(pt, args, kwargs, output, x)
            if pt.io == "in":
                return res[0], res[1], output
            return args, kwargs, res
        return fn

    def _record(self, cap: _Capture, x: Tensor) -> None:
        st = self.state.chunk
        if cap.site.kind == "logits" and st is not None:
            st = _tail(st, x)
        if self.grad:
            if x.requires_grad:
                x.retain_grad()
            cap.chunks.append(x)
            return
        if cap.positions == "all":
            val = x.detach()
        else:
            if P.is_dense(cap.positions):
                raise SiteError(f"Capture {cap.site}: use positions 'all' or explicit indices, not slices.")
            sel = P.resolve(cap.positions, st)
            if sel is None:
                return
            val = _gather(x.detach(), sel[0])
            if P.is_single(cap.positions):
                val = val[:, 0]
        if cap.site.units is not None:  # unit axis: first feature axis (heads of a pattern: 1)
            dim = 1 if cap.site.kind == "attn.pattern" or P.is_single(cap.positions) else 2
            val = val.index_select(dim, torch.tensor(cap.site.units, device=val.device))
        if cap.to_cpu:
            val = val.to("cpu")
        elif self.gather is not None and val.device != self.gather:
            val = val.to(self.gather)
        if cap.sink is not None:
            cap.sink(cap.site.name, val)
        else:
            cap.chunks.append(val)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        for key in set(self.keys):
            disp = _DISPATCHERS.get(key)
            if disp is None:
                continue
            disp.entries = [e for e in disp.entries if e[0] is not self]
            if not disp.entries:
                disp.handle.remove()
                del _DISPATCHERS[key]
        self.keys.clear()


def others_active(model: Model) -> bool:
    """Whether another lmscope context is open on this model (then a run must not stop early)."""
    return _ACTIVE[id(model.hf)] > 0


@contextlib.contextmanager
def hooked(
    model: Model,
    capture: Sequence[str | Site] | dict = (),
    edits: Sequence[Edit] = (),
    *,
    positions: P.PositionSpec = "all",
    to_cpu: bool = False,
    grad: bool = False,
    stop_at_layer: int | None = None,
    prompt: tuple[int, Tensor] | None = None,
    sink: Callable[[str, Tensor], None] | None = None,
) -> Iterator[Cache]:
    """Capture and/or edit sites for every forward run inside the block.

    Args:
        model: A `lmscope.Model`.
        capture: Site names (or a dict site -> positions) to record.
        edits: `Edit`s to apply (see `lmscope.engine.interventions`).
        positions: Default positions of captures.
        to_cpu: Move captured tensors to the CPU as they are recorded.
        grad: Keep captured tensors in the autograd graph (`.grad` is retained).
        stop_at_layer: Raise `StopForward` after this block (used by `runner.run`).
        prompt: (padded prompt length, left padding per row) of cached forwards whose prompt
            ran outside this context (used by `runner.PrefixRun`).
        sink: Called as `sink(site_name, tensor)` with each capture as it is recorded, which is
            then not kept in the cache (a reduction streams through the forward, one block's
            activations alive at a time).

    Yields:
        The `Cache` that fills as forwards run.
    """
    cache = Cache()
    cap_specs = capture.items() if isinstance(capture, dict) else [(c, positions) for c in capture]
    caps = []
    for spec, pos in cap_specs:
        pos = P.normalize(pos)
        for site in model.sites(spec):
            if site.kind == "attn.pattern" and pos != "all":
                raise SiteError("attn.pattern is captured at positions 'all' ([batch, head, q_pos, k_pos]).")
            cap = _Capture(site, pos, to_cpu, sink=sink)
            cache._add(cap)
            caps.append(cap)
    bound = []
    for edit in edits:
        for site in model.sites(edit.site):
            if site.kind in CAPTURE_ONLY:
                raise SiteError(f"{site.kind} can be captured but not edited; edit attn.z (per head) instead.")
            feat = model.feature_shape(site)
            edit.bind(feat, site, model.device_of(site.layer), model.dtype)  # where that block computes
            bound.append((site, edit))
    engine = _Engine(model, grad)
    if prompt is not None:
        engine.state.set_prompt(*prompt)
    _ACTIVE[id(model.hf)] += 1
    try:
        engine.install(bound, caps, stop_at_layer)
        with _eager_if(model, any(c.site.kind == "attn.pattern" for c in caps)):
            yield cache
    finally:
        engine.remove()
        _ACTIVE[id(model.hf)] -= 1


@contextlib.contextmanager
def _eager_if(model: Model, needed: bool) -> Iterator[None]:
    """Attention weights exist only with eager attention: switch for the block, then restore."""
    if not needed or model.hf.config._attn_implementation == "eager":
        yield
        return
    before = model.hf.config._attn_implementation
    model.hf.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.hf.set_attn_implementation(before)


def capture(model: Model, sites: Sequence[str | Site] | dict, **kw) -> contextlib.AbstractContextManager[Cache]:
    """`with capture(model, ["layers.3.resid_post"]) as cache: model.hf(**inputs)`."""
    return hooked(model, capture=sites, **kw)


def intervene(model: Model, edits: Edit | Sequence[Edit], **kw) -> contextlib.AbstractContextManager[Cache]:
    """`with intervene(model, [Add(site=..., vector=v)]): model.hf.generate(...)`."""
    return hooked(model, edits=[edits] if isinstance(edits, Edit) else edits, **kw)


def hook_count(module: nn.Module) -> int:
    """Number of forward (pre-)hooks registered anywhere below `module` (for tests)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())
