"""The attn.q / attn.k / attn.v sites: captured values equal the HF projections of the
normed residual (separate and fused projections, grouped-query attention), and an identity
edit leaves the logits bit-identical."""

from __future__ import annotations

import torch

from lmscope.engine.arch import get_module
from lmscope.engine.interventions import Apply

PROMPTS = ["hello world", "abc"]


def _expected(model, layer: int, resid_pre: torch.Tensor) -> dict[str, torch.Tensor]:
    spec, block = model.spec, model.block(layer)
    x = get_module(block, spec.attn_norm)(resid_pre) if spec.attn_norm else resid_pre
    dh, h, kv = model.d_head, model.n_heads, model.n_kv_heads
    if spec.qkv is None:
        return {w: get_module(block, getattr(spec, f"{w}_proj"))(x).unflatten(-1, (n, dh))
                for w, n in (("q", h), ("k", kv), ("v", kv))}
    full = get_module(block, spec.qkv)(x)
    if spec.qkv_layout == "neox":
        q, k, v = full.unflatten(-1, (h, 3, dh)).unbind(-2)
        return {"q": q, "k": k, "v": v}
    q, k, v = full.split([h * dh, kv * dh, kv * dh], -1)
    return {"q": q.unflatten(-1, (h, dh)), "k": k.unflatten(-1, (kv, dh)), "v": v.unflatten(-1, (kv, dh))}


def test_qkv_captures_equal_the_hf_projections(tiny):
    sites = [f"layers.1.attn.{w}" for w in "qkv"]
    res = tiny.run(PROMPTS, capture=sites + ["layers.1.resid_pre"], logits=None)
    with torch.no_grad():
        want = _expected(tiny, 1, res.cache["layers.1.resid_pre"])
    for w in "qkv":
        got = res.cache[f"layers.1.attn.{w}"]
        n = tiny.n_heads if w == "q" else tiny.n_kv_heads
        assert got.shape == (2, res.batch.input_ids.shape[1], n, tiny.d_head)
        torch.testing.assert_close(got, want[w], rtol=0, atol=1e-6)


def test_identity_qkv_edits_are_bit_identical(tiny):
    base = tiny.run(PROMPTS, logits="all").logits
    edits = [Apply(site=f"layers.{lay}.attn.{w}", fn=lambda x: x.clone()) for lay in range(tiny.n_layers) for w in "qkv"]
    assert torch.equal(tiny.run(PROMPTS, logits="all", edits=edits).logits, base)


def test_editing_one_kv_head_changes_only_its_slice(tiny):
    res = tiny.run(PROMPTS, capture=["layers.1.attn.k", "layers.1.attn.q"], logits=None,
                   edits=[Apply(site="layers.1.attn.k[0]", fn=lambda x: x * 0)])
    base = tiny.run(PROMPTS, capture=["layers.1.attn.k", "layers.1.attn.q"], logits=None)
    k, k0 = res.cache["layers.1.attn.k"], base.cache["layers.1.attn.k"]
    real = res.batch.attention_mask.bool()  # padded columns are never edited
    assert torch.all(k[:, :, 0][real] == 0) and torch.equal(k[:, :, 1:], k0[:, :, 1:])
    assert torch.equal(res.cache["layers.1.attn.q"], base.cache["layers.1.attn.q"])
