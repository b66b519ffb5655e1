"""EAP and EAP-IG on tiny random models: the exact identities they rest on, and their
agreement with activation patching."""

from __future__ import annotations

import pytest
import torch
from toy import toy_run

from lmscope.circuits.attribution import AttributionConfig, attribute, attribute_nodes
from lmscope.circuits.discovery import agreement
from lmscope.circuits.patching import patch
from lmscope.circuits.pruning import Evaluator
from lmscope.engine.errors import InputError


def test_node_scores_track_activation_patching(tiny_llama):
    run = toy_run(tiny_llama)
    nodes = attribute_nodes(run, AttributionConfig(method="eap", batch_size=4))
    patched = [patch(run, component="heads"), patch(run, component="mlp")]
    rho = agreement({"eap": nodes}, patched)["eap"]
    assert rho > 0.9
    # same sign and scale, head by head
    eff = patched[0].effect
    big = eff.abs() > eff.abs().max() / 4
    assert torch.equal(torch.sign(nodes.heads[big]), torch.sign(eff[big]))
    torch.testing.assert_close(nodes.heads[big], eff[big].float(), rtol=0.5, atol=1e-3)


def test_edge_scores_sum_to_node_scores(tiny_llama):
    """Without a post-norm, a head's write is linear in its z, so the sum of its outgoing
    edges' EAP scores is its node EAP score."""
    run = toy_run(tiny_llama)
    cfg = AttributionConfig(method="eap", batch_size=3)
    edges, nodes = attribute(run, cfg), attribute_nodes(run, cfg)
    summed = edges.node_scores()
    for (name, value) in nodes.node_scores().items():
        assert summed[name] == pytest.approx(value, rel=1e-3, abs=1e-5), name


def test_eap_ig_with_one_step_is_eap(tiny):
    if tiny.family == "gpt_neox":
        return  # parallel blocks have no edge graph (tests/engine/test_edges.py)
    run = toy_run(tiny, n=3)
    a = attribute(run, AttributionConfig(method="eap"))
    b = attribute(run, AttributionConfig(method="eap-ig", steps=1))
    torch.testing.assert_close(a.scores, b.scores, equal_nan=True)
    assert a.n_edges == b.n_edges > 0


def test_direct_edges_estimate_their_ablation(tiny_llama):
    run = toy_run(tiny_llama)
    sc = attribute(run, AttributionConfig(method="eap-ig", steps=8))
    ev = Evaluator(run, "resample")
    r = sc.receivers.index("logits")
    col = sc.scores[:, r].abs()
    for s in col.topk(3).indices.tolist():
        keep = ev.valid.clone()
        keep[s, r] = False
        actual = ev.metric(keep) - ev.clean
        assert actual == pytest.approx(float(sc.scores[s, r]), rel=0.25, abs=1e-3)


@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_other_ablations_run_and_differ(tiny_llama, ablation):
    run = toy_run(tiny_llama)
    base = attribute_nodes(run, AttributionConfig(method="eap"))
    other = attribute_nodes(run, AttributionConfig(method="eap", ablation=ablation))
    assert other.ablation == ablation and not torch.allclose(base.heads, other.heads)
    assert attribute(run, AttributionConfig(method="eap", ablation=ablation)).to_dict()["ablation"] == ablation


def test_config_errors():
    with pytest.raises(InputError, match="method"):
        AttributionConfig(method="acdc")
    with pytest.raises(InputError, match="ablation"):
        AttributionConfig(ablation="noise")
    with pytest.raises(InputError, match="steps"):
        AttributionConfig(steps=0)
