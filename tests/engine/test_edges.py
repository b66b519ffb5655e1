"""Edge runs (`lmscope.engine.edges`): the graph's senders sum to the residual stream, so
ablating every edge turns the clean run into the corrupt one; a run without coefficients is
the plain forward; probe gradients are the derivatives with respect to edge coefficients."""

from __future__ import annotations

import pytest
import torch

from lmscope.engine.edges import EdgeRun, Graph, sender_outputs
from lmscope.engine.errors import EngineError
from lmscope.engine.interventions import Patch
from lmscope.engine.runner import run

CLEAN = ["hello world!", "abcdefghijkl"]
CORRUPT = ["jello wxrld!", "abcxefghijkm"]


def _final(model, batch, edits=()):
    return run(model, batch, capture=["final_norm"], edits=list(edits), logits=None).cache["final_norm"]


def _edge_model(tiny):
    """The edge run of a tiny model, or None for GPT-NeoX, whose refusal is checked instead."""
    if tiny.family == "gpt_neox":
        with pytest.raises(EngineError, match="parallel"):
            EdgeRun(tiny)
        return None
    return EdgeRun(tiny)


def test_graph_shape_and_order(tiny_llama):
    g = Graph.of(tiny_llama)
    L, H, G = tiny_llama.n_layers, tiny_llama.n_heads, tiny_llama.n_kv_heads
    assert len(g.senders) == 1 + L * (H + 1) and len(g.receivers) == L * (H + 2 * G + 1) + 1
    i = g.senders.index
    j = g.receiver_index
    assert g.valid[i("input"), j("a0.h0.q")] and not g.valid[i("a0.h0"), j("a0.h1.q")]
    assert g.valid[i("a0.h3"), j("m0")] and not g.valid[i("m0"), j("m0")]
    assert g.valid[i("m0"), j("a1.g1.v")] and g.valid[:, j("logits")].all()


def test_a_plain_edge_run_is_the_forward(tiny):
    er = _edge_model(tiny)
    if er is None:
        return
    b = tiny.tokenize(CLEAN)
    assert torch.equal(er.forward(b, grad=False).normed, _final(tiny, b))


def test_ablating_every_edge_gives_the_corrupt_run(tiny):
    er = _edge_model(tiny)
    if er is None:
        return
    b, c = tiny.tokenize(CLEAN), tiny.tokenize(CORRUPT)
    coeff = torch.ones(er.graph.valid.shape)
    out = er.forward(b, coeff=coeff, reference=sender_outputs(tiny, c), grad=False)
    torch.testing.assert_close(out.normed, _final(tiny, c), rtol=0, atol=1e-5)
    none = er.forward(b, coeff=torch.zeros(er.graph.valid.shape), reference=sender_outputs(tiny, c), grad=False)
    torch.testing.assert_close(none.normed, _final(tiny, b), rtol=0, atol=1e-5)


def test_probe_gradients_are_edge_derivatives(tiny):
    """dM/dc[u, v] at c = 0 equals (ref_u - a_u) . dM/d input_v (the EAP identity)."""
    er = _edge_model(tiny)
    if er is None:
        return
    b, c = tiny.tokenize(CLEAN), tiny.tokenize(CORRUPT)
    ref, a = sender_outputs(tiny, c), sender_outputs(tiny, b)
    coeff = torch.zeros(er.graph.valid.shape, requires_grad=True)
    out = er.forward(b, coeff=coeff, reference=ref)
    out.normed[:, -1].pow(2).sum().backward()
    probe = er.forward(b, probes=True)
    probe.normed[:, -1].pow(2).sum().backward()
    grads = torch.stack([probe.probes[r].grad for r in range(len(er.graph.receivers))])
    eap = torch.einsum("ubpd,rbpd->ur", ref - a, grads) * er.graph.valid
    torch.testing.assert_close(coeff.grad, eap, rtol=1e-3, atol=1e-4)
    assert eap.abs().max() > 0


def test_cutting_a_heads_outgoing_edges_is_patching_the_head(tiny_llama):
    """Without a post-norm a head's write is linear in its z: removing all its edges is
    activation patching of that head."""
    m = tiny_llama
    er = EdgeRun(m)
    b, c = m.tokenize(CLEAN), m.tokenize(CORRUPT)
    z = run(m, c, capture=["layers.1.attn.z"], logits=None).cache["layers.1.attn.z"]
    patched = _final(m, b, [Patch(site="layers.1.attn.z[2]", source=z[:, :, 2:3])])
    coeff = torch.zeros(er.graph.valid.shape)
    coeff[er.graph.senders.index("a1.h2")] = 1
    out = er.forward(b, coeff=coeff, reference=sender_outputs(m, c), grad=False)
    torch.testing.assert_close(out.normed, patched, rtol=0, atol=1e-5)
    assert not torch.allclose(patched, _final(m, b), atol=1e-4)
