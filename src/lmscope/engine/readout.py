"""Reading the residual stream in token space: final norm + unembedding (+ Gemma softcap).

`unembed` is what the model itself does after its last block, applied to any residual
vector: the logit lens, Patchscope comparisons, neuron decoding and vector decoding all use it.

The final norm as a frozen linear map (for direct logit attribution and weight decoding):

    final_norm(x) == final_norm_centre(x) * final_norm_scale(x) (+ final_norm_bias)
    final_norm_scale(x) == final_norm_gain / rms(centred x)     # per position

Holding the scale fixed at one residual makes the norm linear in the parts of that residual
(see `lmscope.engine.norms`); dropping the 1/rms factor (centre, times the gain) maps a bare
direction, such as a neuron's weight row, into what the LM head reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lmscope.engine import norms
from lmscope.engine.arch import get_module
from lmscope.engine.model import Model


def _final_norm_module(model: Model) -> nn.Module:
    return get_module(model.hf, model.spec.final_norm)


def final_norm(model: Model, resid: Tensor) -> Tensor:
    """Apply the model's own final norm module to `resid` [..., d_model]."""
    return _final_norm_module(model)(resid.to(model.device, model.dtype))


def final_norm_gain(model: Model) -> Tensor:
    """The final norm's effective per-channel gain [d_model], float32 (Gemma: 1 + w)."""
    return norms.gain(_final_norm_module(model), model.norm_kind)


def final_norm_bias(model: Model) -> Tensor | None:
    """The final norm's additive bias [d_model] (LayerNorm), None for RMS norms."""
    return norms.bias(_final_norm_module(model), model.norm_kind)


def final_norm_centre(model: Model, x: Tensor) -> Tensor:
    """`x` [..., d_model] centred as the final norm centres it (LayerNorm); unchanged for RMS norms."""
    return norms.centre(x, model.norm_kind)


def final_norm_scale(model: Model, resid: Tensor) -> Tensor:
    """Per-position multiplier [..., d_model] (gain / rms, in `resid`'s dtype) of the final norm,
    frozen at `resid` [..., d_model]: final_norm(resid) == centre(resid) * scale (+ bias)."""
    return norms.frozen_scale(_final_norm_module(model), resid, model.norm_kind)


def logit_softcap(model: Model) -> float | None:
    """The final logit softcap c (logits <- c * tanh(logits / c); Gemma 2), or None."""
    cap = getattr(model.hf.config, "final_logit_softcapping", None)
    return float(cap) if cap else None


def logits_from_normed(model: Model, normed: Tensor) -> Tensor:
    """LM head (and final logit softcapping where the family has it) on normed states."""
    head = get_module(model.hf, model.spec.unembed)
    logits = head(normed)
    cap = logit_softcap(model)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def unembed(model: Model, resid: Tensor, *, normalize: bool = True) -> Tensor:
    """Logits [..., d_vocab] of residual states [..., d_model], exactly as the model's own
    head computes them from its last residual (`normalize=False` skips the final norm)."""
    x = resid.to(model.device, model.dtype)
    return logits_from_normed(model, final_norm(model, x) if normalize else x)


def unembed_line(model: Model, u: Tensor, v: Tensor, coeffs: Sequence[float]) -> Tensor:
    """unembed(c * u + v) [len(coeffs), n, d_vocab] (float32) for each coefficient c, with u [n, d_model]
    and v [n or 1, d_model], at the cost of two LM-head products instead of one per c.

    The final norm is linear in its input up to one scale per row (norm(x) == centre(x) * gain *
    r(x) + bias, centre linear) and the head is affine, so unembed(c u + v) ==
    (c head'(centre(u) gain) + head'(centre(v) gain)) r(c u + v) + head(bias), with head' the head
    minus its value at 0. Equal to `unembed` up to float rounding (tested on every family); with a
    logit softcap (a nonlinearity after the head) it falls back to one `unembed` per c.
    """
    u, v = u.float().to(model.device), v.float().to(model.device)
    if logit_softcap(model) is not None:
        return torch.stack([unembed(model, c * u + v).float() for c in coeffs])
    norm, kind = _final_norm_module(model), model.norm_kind

    def head(x: Tensor) -> Tensor:
        return logits_from_normed(model, x.to(model.dtype)).float()

    g = norms.gain(norm, kind).to(model.device)
    h0 = head(torch.zeros(1, u.shape[-1], device=model.device))
    a = head(norms.centre(u, kind) * g) - h0
    b = head(norms.centre(v, kind) * g) - h0
    nb = norms.bias(norm, kind)
    hb = head(nb.float().to(model.device)[None]) if nb is not None else h0
    return torch.stack([(c * a + b) * norms.inv_rms(norm, c * u + v, kind) + hb for c in coeffs])


def top_tokens(model: Model, logits: Tensor, k: int = 10) -> list[list[tuple[str, float]]]:
    """Top-k (token text, probability) for each row of logits [n, d_vocab]."""
    probs = logits.float().softmax(-1)
    p, i = probs.topk(k, dim=-1)
    dec = model.tokenizer.decode
    return [[(dec([int(t)]), float(q)) for q, t in zip(pr, ir, strict=True)] for pr, ir in zip(p, i, strict=True)]
