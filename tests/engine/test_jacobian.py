"""The prefix-cached, batched Jacobian equals autograd's Jacobian of a plain full forward."""

from __future__ import annotations

import pytest
import torch

from lmscope.engine import hooks
from lmscope.engine.errors import InputError
from lmscope.engine.interventions import Apply
from lmscope.engine.jacobian import final_site, jacobian
from lmscope.engine.runner import run

PROMPT = "abc defg hij"


def _dense(model, site, pos, out_site):
    """Reference: one full forward per output row, x replaced by a leaf at `pos`."""
    base = run(model, PROMPT, capture={site: pos, out_site: "last"}, logits=None)
    x0 = base.cache[site][0].clone()

    def f(x):
        edit = Apply(site=site, positions=pos, fn=lambda g: x.view(1, 1, -1).to(g.dtype))
        r = run(model, PROMPT, capture=[out_site], edits=[edit], logits=None, grad=True)
        return r.cache[out_site][0, -1]

    return torch.autograd.functional.jacobian(f, x0), x0, base.cache[out_site][0]


@pytest.mark.parametrize("site,pos", [("layers.0.resid_post", 5), ("layers.1.resid_pre", -3), ("layers.0.resid_post", 0)])
def test_jacobian_matches_dense_autograd(tiny, site, pos):
    out_site = final_site(tiny)
    j = jacobian(tiny, PROMPT, input_site=site, position=pos, chunk=24)
    ref, x0, o0 = _dense(tiny, site, pos, out_site)
    assert j.jacobian.shape == (tiny.d_model, tiny.d_model)
    torch.testing.assert_close(j.input, x0.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(j.output, o0.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(j.jacobian, ref.float(), rtol=1e-3, atol=1e-4)
    assert hooks.hook_count(tiny.hf) == 0


def test_jacobian_first_order_taylor(tiny_llama):
    """o(x + eps v) - o(x) ~= eps J v for a small step."""
    site, pos = "layers.0.resid_post", 4
    j = jacobian(tiny_llama, PROMPT, input_site=site, position=pos)
    v = torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(0))
    eps = 1e-3
    from lmscope.engine.interventions import Add
    r = run(tiny_llama, PROMPT, capture={final_site(tiny_llama): "last"}, logits=None,
            edits=[Add(site=site, positions=pos, vector=eps * v)])
    delta = r.cache[final_site(tiny_llama)][0].float() - j.output
    torch.testing.assert_close(delta, eps * (j.jacobian @ v), rtol=5e-2, atol=1e-5)


def test_jacobian_errors(tiny_llama):
    with pytest.raises(InputError, match="comes before"):
        jacobian(tiny_llama, PROMPT, input_site="layers.2.resid_post", position=1, output_site="layers.0.resid_post")
    with pytest.raises(InputError, match="outside the prompt"):
        jacobian(tiny_llama, PROMPT, input_site="layers.0.resid_post", position=99)
    with pytest.raises(InputError, match="one vector per token"):
        jacobian(tiny_llama, PROMPT, input_site="layers.0.attn.z", position=1)


def test_jacobians_of_many_layers_equal_one_at_a_time(tiny_llama):
    from lmscope.engine.jacobian import jacobians
    sites = ["layers.0.resid_post", "layers.1.resid_post", "layers.2.resid_pre"]
    many = jacobians(tiny_llama, PROMPT, input_sites=sites, position=6, chunk=40)
    assert list(many) == sites
    for s in sites:
        one = jacobian(tiny_llama, PROMPT, input_site=s, position=6)
        torch.testing.assert_close(many[s].jacobian, one.jacobian, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(many[s].input, one.input)

