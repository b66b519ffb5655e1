"""Weights by the same names as the sites, in one orientation whatever the family stores.

All matrices are returned as views/copies oriented `[in, out]`-free, by meaning:
    W_U            [d_model, d_vocab]    unembedding
    final_norm     [d_model]             effective gain of the final norm (Gemma: 1 + w)
    W_in(L, kind)  [d_mlp, d_model]      each neuron's input row (kind: "gate" or "up")
    W_out(L)       [d_mlp, d_model]      each neuron's output direction (down-projection column)
    W_O(L)         [head, d_head, d_model]  each head's slice of the attention output projection
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from lmscope.engine import norms
from lmscope.engine.arch import get_module
from lmscope.engine.errors import SiteError

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

    def b_O(self, layer: int) -> Tensor | None:  # noqa: N802
        return getattr(get_module(self._m.block(layer), self._m.spec.o_proj), "bias", None)
