"""Reading the residual stream in token space: final norm + unembedding (+ Gemma softcap).

`unembed` is what the model itself does after its last block, applied to any residual
vector: the logit lens, Patchscope comparisons, neuron decoding and vector decoding all use it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmscope.engine.arch import get_module
from lmscope.engine.model import Model


def final_norm(model: Model, resid: Tensor) -> Tensor:
    """Apply the model's own final norm module to `resid` [..., d_model]."""
    norm = get_module(model.hf, model.spec.final_norm)
    return norm(resid.to(model.device, model.dtype))


def logits_from_normed(model: Model, normed: Tensor) -> Tensor:
    """LM head (and final logit softcapping where the family has it) on normed states."""
    head = get_module(model.hf, model.spec.unembed)
    logits = head(normed)
    cap = getattr(model.hf.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def unembed(model: Model, resid: Tensor, *, normalize: bool = True) -> Tensor:
    """Logits [..., d_vocab] of residual states [..., d_model], exactly as the model's own
    head computes them from its last residual (`normalize=False` skips the final norm)."""
    x = resid.to(model.device, model.dtype)
    return logits_from_normed(model, final_norm(model, x) if normalize else x)


def top_tokens(model: Model, logits: Tensor, k: int = 10) -> list[list[tuple[str, float]]]:
    """Top-k (token text, probability) for each row of logits [n, d_vocab]."""
    probs = logits.float().softmax(-1)
    p, i = probs.topk(k, dim=-1)
    dec = model.tokenizer.decode
    return [[(dec([int(t)]), float(q)) for q, t in zip(pr, ir, strict=True)] for pr, ir in zip(p, i, strict=True)]
