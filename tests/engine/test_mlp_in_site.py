"""The layers.L.mlp_in site (what transcoders read): the MLP's input, after the pre-MLP norm.
Feeding the captured value through the HF MLP module reproduces the MLP's own output, a
zeroed mlp_in changes what the MLP writes, and an identity edit is bit-identical."""

from __future__ import annotations

import torch

from lmscope.engine.arch import get_module
from lmscope.engine.interventions import Apply

PROMPTS = ["hello world", "abc"]


def test_mlp_in_through_the_hf_mlp_is_the_mlp_output(tiny):
    res = tiny.run(PROMPTS, capture=["layers.1.mlp_in", "layers.1.mlp.neurons"], logits=None)
    x = res.cache["layers.1.mlp_in"]
    assert x.shape == (2, res.batch.input_ids.shape[1], tiny.d_model)
    spec, block = tiny.spec, tiny.block(1)
    with torch.no_grad():
        down = get_module(block, spec.down)
        mlp = get_module(block, spec.down.rsplit(".", 1)[0])
        seen = {}
        h = down.register_forward_hook(lambda m, a, out: seen.setdefault("in", a[0]))
        try:
            mlp(x)
        finally:
            h.remove()
    torch.testing.assert_close(seen["in"], res.cache["layers.1.mlp.neurons"], rtol=0, atol=1e-6)


def test_identity_mlp_in_edit_is_bit_identical(tiny):
    base = tiny.run(PROMPTS, logits="all").logits
    edits = [Apply(site=f"layers.{lay}.mlp_in", fn=lambda x: x.clone()) for lay in range(tiny.n_layers)]
    assert torch.equal(tiny.run(PROMPTS, logits="all", edits=edits).logits, base)


def test_zeroing_mlp_in_changes_what_the_mlp_writes(tiny):
    base = tiny.run(PROMPTS, capture=["layers.1.mlp_out"], logits=None).cache["layers.1.mlp_out"]
    got = tiny.run(PROMPTS, capture=["layers.1.mlp_out"], logits=None,
                   edits=[Apply(site="layers.1.mlp_in", fn=lambda x: x * 0)]).cache["layers.1.mlp_out"]
    assert not torch.allclose(got, base)
