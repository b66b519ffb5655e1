"""Jacobians of one site at the last token with respect to sites at an earlier token.

`jacobians(model, prompt, input_sites=["layers.4.resid_post"], position=7)` returns d out / d x
for each input site, where x is the site's value on prompt token `position` and out the value at
`output_site` (by default the last block's residual, before the final norm) on the last token:
the linear map of a linear relational embedding, computed through the wrapped HF model.

Speed: nothing before `position` depends on x, so that prefix runs once without autograd and its
KV cache is kept; only the suffix (x's token to the end, a few tokens for a subject near the end)
runs with autograd, as a batch of copies: row i of a chunk backpropagates output coordinate i, so
one forward + backward of R suffix rows gives R rows of the Jacobian of every requested input
site at once (one pass serves a whole layer sweep). Batched copies rather than a vmapped backward
(`is_grads_batched`): vmap has no batching rule for some families' ops (Gemma 2's softcap).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lmscope.engine.errors import InputError
from lmscope.engine.hooks import StopForward, hooked
from lmscope.engine.model import Model
from lmscope.engine.runner import cache_keyword, output_cache


@dataclass
class Jacobian:
    """d output / d input at one prompt, float32 on the CPU.

    Attributes:
        jacobian: [d_out, d_in] the derivative.
        input: [d_in] the input site's value at `position` (the expansion point).
        output: [d_out] the output site's value at the last token.
        position: The input token index (non-negative).
    """

    jacobian: Tensor
    input: Tensor
    output: Tensor
    position: int


def final_site(model: Model) -> str:
    """The last block's residual output (before the final norm)."""
    return f"layers.{model.n_layers - 1}.resid_post"


def jacobians(model: Model, prompt: str, *, input_sites: Sequence[str], position: int,
              output_site: str | None = None, chunk: int = 128) -> dict[str, Jacobian]:
    """The Jacobian of `output_site` at the last token w.r.t. each input site at `position`.

    Args:
        model: The wrapped model.
        prompt: One prompt.
        input_sites: Sites with one vector per token (e.g. "layers.4.resid_post"), at or before
            the output's layer.
        position: Token index of the inputs (negative counts from the end).
        output_site: Default the last block's resid_post (before the final norm).
        chunk: Jacobian rows per forward + backward (memory: the KV cache is copied per row).

    Returns:
        {input site name: Jacobian}, in the order given.
    """
    out_name = output_site or final_site(model)
    s_out = model.site(out_name)
    s_ins = [model.site(s) for s in input_sites]
    if not s_ins:
        raise InputError("input_sites is empty; name at least one site such as 'layers.4.resid_post'.")
    for s, what in [*((s, "input site") for s in s_ins), (s_out, "output_site")]:
        if s.layer is None or s.units is not None or len(model.feature_shape(s)) != 1 or s.kind == "logits":
            raise InputError(f"The {what} {s} must be a per-layer site with one vector per token "
                             "(resid_pre, resid_mid, resid_post, attn_out, mlp_out, ...).")
        if s.layer > s_out.layer and what == "input site":
            raise InputError(f"output_site {s_out} comes before input site {s}; it cannot depend on it.")
    if len({str(s) for s in s_ins}) != len(s_ins):
        raise InputError("input_sites names a site twice.")
    if chunk < 1:
        raise InputError(f"chunk must be at least 1, got {chunk}.")
    batch = model.tokenize(prompt)
    ids, mask = batch.input_ids, batch.attention_mask
    t = ids.shape[1]
    p = position + t if position < 0 else position
    if not 0 <= p < t:
        raise InputError(f"Position {position} is outside the prompt's {t} tokens.")
    past = None
    if p > 0:
        with torch.no_grad():
            past = output_cache(model.hf(input_ids=ids[:, :p], attention_mask=mask[:, :p], use_cache=True,
                                         logits_to_keep=1))
    key = cache_keyword(model)
    sites = [*s_ins, s_out] if s_out not in s_ins else s_ins
    d_out = model.feature_shape(s_out)[0]
    parts: list[list[Tensor]] = [[] for _ in s_ins]
    x0 = o0 = None
    for a in range(0, d_out, chunk):
        r = min(chunk, d_out - a)
        kw = {}
        if past is not None:
            cache = copy.deepcopy(past)
            cache.batch_repeat_interleave(r)
            kw = {key: cache, "use_cache": True}
        with torch.enable_grad(), hooked(model, sites, grad=True, stop_at_layer=s_out.layer,
                                         prompt=(t, torch.zeros(r, dtype=torch.long, device=ids.device))) as c:
            try:
                model.hf(input_ids=ids[:, p:].expand(r, -1), attention_mask=mask.expand(r, -1), logits_to_keep=1,
                         **kw)
            except StopForward:
                pass
            xs = [c[s] for s in s_ins]  # each [r, t - p, d_in]; column 0 is token p
            o = c[s_out][:, -1]  # [r, d_out]; row i backpropagates output coordinate a + i
            sel = torch.arange(a, a + r, device=o.device)[:, None]
            gs = torch.autograd.grad(o.gather(1, sel).sum(), xs, allow_unused=True, materialize_grads=True)
        for part, g in zip(parts, gs, strict=True):
            part.append(g[:, 0].detach().float().cpu())
        if x0 is None:
            x0 = [x[0, 0].detach().float().cpu() for x in xs]
            o0 = o[0].detach().float().cpu()
    return {str(s): Jacobian(torch.cat(part), x, o0, p) for s, x, part in zip(s_ins, x0, parts, strict=True)}


def jacobian(model: Model, prompt: str, *, input_site: str, position: int, output_site: str | None = None,
             chunk: int = 128) -> Jacobian:
    """The Jacobian of `output_site` at the last token w.r.t. `input_site` at `position`
    (see `jacobians`)."""
    (j,) = jacobians(model, prompt, input_sites=[input_site], position=position, output_site=output_site,
                     chunk=chunk).values()
    return j
