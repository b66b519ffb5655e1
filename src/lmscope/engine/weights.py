"""Weights by the same names as the sites, in one orientation whatever the family stores.

All matrices are returned as views/copies oriented `[in, out]`-free, by meaning:
    W_U            [d_model, d_vocab]    unembedding
    final_norm     [d_model]             effective gain of the final norm (Gemma: 1 + w)
    W_in(L, kind)  [d_mlp, d_model]      each neuron's input row (kind: "gate" or "up")
    W_out(L)       [d_mlp, d_model]      each neuron's output direction (down-projection column)
    W_O(L)         [head, d_head, d_model]  each head's slice of the attention output projection

`perturbed_mlp` makes a noisy copy of a model (a control for weight-based analyses); the
model it copies is never edited.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lmscope.engine import norms
from lmscope.engine.arch import get_module
from lmscope.engine.errors import InputError, SiteError

if TYPE_CHECKING:
    from lmscope.engine.model import Model


class Weights:
    def __init__(self, model: Model) -> None:
        self._m = model

    def _linear(self, module) -> Tensor:
        """Weight as [out, in] whatever the storage (GPT-2 Conv1D stores [in, out])."""
        w = module.weight
        return w.t() if self._m.spec.conv1d else w

    @property
    def W_U(self) -> Tensor:  # noqa: N802 - TransformerLens name
        return get_module(self._m.hf, self._m.spec.unembed).weight.t()

    @property
    def b_U(self) -> Tensor | None:  # noqa: N802
        return getattr(get_module(self._m.hf, self._m.spec.unembed), "bias", None)

    @property
    def W_E(self) -> Tensor:  # noqa: N802
        return get_module(self._m.hf, self._m.spec.embed).weight

    @property
    def final_norm(self) -> Tensor:
        return norms.gain(get_module(self._m.hf, self._m.spec.final_norm), self._m.spec.norm_kind)

    def W_in(self, layer: int, kind: str = "up") -> Tensor:  # noqa: N802
        spec = self._m.spec
        block = self._m.block(layer)
        if spec.fused_gate_up:
            w = self._linear(get_module(block, spec.up))
            d = w.shape[0] // 2
            if kind not in ("gate", "up"):
                raise SiteError(f"kind must be 'gate' or 'up', got {kind!r}.")
            return w[:d] if kind == "gate" else w[d:]
        if kind == "gate":
            if spec.gate is None:
                raise SiteError(f"{self._m.name} has an ungated MLP; use kind='up'.")
            return self._linear(get_module(block, spec.gate))
        if kind != "up":
            raise SiteError(f"kind must be 'gate' or 'up', got {kind!r}.")
        return self._linear(get_module(block, spec.up))

    def W_out(self, layer: int) -> Tensor:  # noqa: N802
        return self._linear(get_module(self._m.block(layer), self._m.spec.down)).t()

    def W_O(self, layer: int) -> Tensor:  # noqa: N802
        w = self._linear(get_module(self._m.block(layer), self._m.spec.o_proj))  # [d_model, h*d_head]
        return w.t().unflatten(0, (self._m.n_heads, -1))

    def n_kv_heads(self) -> int:
        """Key/value heads, read from the key projection's width (the config attribute is
        absent or ignored in some families: GPT-2 and GPT-NeoX have no grouped-query attention)."""
        m, spec = self._m, self._m.spec
        block = m.block(0)
        if spec.qkv is None:
            width = self._linear(get_module(block, spec.k_proj)).shape[0]
        elif spec.qkv_layout == "neox":
            return m.n_heads
        else:
            width = (self._linear(get_module(block, spec.qkv)).shape[0] - m.n_heads * m.d_head) // 2
        return width // m.d_head

    def b_O(self, layer: int) -> Tensor | None:  # noqa: N802
        return getattr(get_module(self._m.block(layer), self._m.spec.o_proj), "bias", None)


def perturbed_mlp(model: Model, *, noise: float, seed: int = 0) -> Model:
    """A copy of `model` whose MLP weights (gate, up, down of every layer) get seeded Gaussian
    noise of `noise` x each matrix's standard deviation. `model` itself is not touched.

    The copy is named `{name}+mlpnoise{noise}s{seed}`, so that artifacts made with it (an
    atlas, a vector) are never mistaken for the original's.
    """
    from lmscope.engine.model import Model  # model.py imports this module

    if noise < 0:
        raise InputError(f"noise must be >= 0, got {noise}.")
    hf = copy.deepcopy(model.hf)
    spec = model.spec
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in get_module(hf, spec.layers):
            for path in (spec.gate, spec.up, spec.down):
                if path is None:
                    continue
                w = get_module(block, path).weight
                eps = torch.randn(w.shape, generator=gen) * (noise * float(w.float().std()))
                w.add_(eps.to(w.device, w.dtype))
    return Model(hf, model.tokenizer, name=f"{model.name}+mlpnoise{noise:g}s{seed}", source=model.source,
                 revision=model.revision, arch=spec)
