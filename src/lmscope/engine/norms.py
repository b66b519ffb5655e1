"""Norms as linear maps with a frozen scale, for decompositions (head writes, DLA).

RMSNorm(x) = x * g / rms(x). Holding rms(x) fixed at its value on the full input makes the
norm linear, so the parts of x (heads, neurons, layers) map to parts that sum exactly to the
norm's output. LayerNorm additionally centres (linear too) and adds a bias once. This is the
standard approximation of direct logit attribution; it is exact for the sum, not for
counterfactual removal of a part (removing a part would change rms(x)).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lmscope.engine.errors import UnsupportedArchitecture


def eps_of(norm: nn.Module) -> float:
    for name in ("eps", "variance_epsilon"):
        if hasattr(norm, name):
            return float(getattr(norm, name))
    raise UnsupportedArchitecture(f"{type(norm).__name__} has no eps/variance_epsilon attribute.")


def gain(norm: nn.Module, kind: str) -> Tensor:
    """The effective per-channel gain g (Gemma: 1 + w), float32."""
    w = norm.weight.detach().float()
    return 1.0 + w if kind == "rms_one_plus" else w


def inv_rms(norm: nn.Module, x: Tensor, kind: str) -> Tensor:
    """1 / sqrt(var + eps) [..., 1] of x (variance about the mean for LayerNorm), float32."""
    xf = x.float()
    if kind == "layer":
        var = xf.var(-1, keepdim=True, unbiased=False)
    else:
        var = xf.pow(2).mean(-1, keepdim=True)
    return torch.rsqrt(var + eps_of(norm))


def frozen_scale(norm: nn.Module, x: Tensor, kind: str) -> Tensor:
    """Per-position multiplier [..., d] such that norm(x) == centre(x) * scale (+ bias)."""
    return (gain(norm, kind) * inv_rms(norm, x, kind)).to(x.dtype)


def centre(x: Tensor, kind: str) -> Tensor:
    return x - x.mean(-1, keepdim=True) if kind == "layer" else x


def bias(norm: nn.Module, kind: str) -> Tensor | None:
    b = getattr(norm, "bias", None)
    return b.detach() if kind == "layer" and b is not None else None
