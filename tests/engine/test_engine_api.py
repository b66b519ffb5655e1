"""What the engine offers the families instead of `model.hf` / `model.spec`: architecture facts,
the final norm as a frozen linear map, the logit softcap, a perturbed copy, next-token metrics
and the quiet load."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny

from lmscope.engine import metrics, readout
from lmscope.engine.arch import get_module
from lmscope.engine.errors import InputError, ModelNotFound
from lmscope.engine.interventions import Add
from lmscope.engine.weights import perturbed_mlp


def test_architecture_facts_match_the_table(tiny):
    spec = tiny.spec
    assert tiny.family == spec.family
    assert tiny.is_gated == (spec.gate is not None or spec.fused_gate_up)
    assert tiny.has_attn_post_norm == (spec.attn_post_norm is not None)
    assert tiny.norm_kind == spec.norm_kind
    assert tiny.info()["family"] == tiny.family


def test_frozen_final_norm_reassembles_the_norm_exactly(tiny):
    """centre(x) * scale(x) + bias is the model's own final norm; the gain is weights.final_norm."""
    x = torch.randn(5, tiny.d_model, generator=torch.Generator().manual_seed(0)) * 3
    bias = readout.final_norm_bias(tiny)
    assert (bias is not None) == (tiny.norm_kind == "layer" and get_module(tiny.hf, tiny.spec.final_norm).bias
                                  is not None)
    rebuilt = readout.final_norm_centre(tiny, x) * readout.final_norm_scale(tiny, x)
    if bias is not None:
        rebuilt = rebuilt + bias
    torch.testing.assert_close(rebuilt, readout.final_norm(tiny, x), rtol=1e-5, atol=1e-5)
    assert torch.equal(readout.final_norm_gain(tiny), tiny.weights.final_norm)


def test_logit_softcap_is_the_config_value_or_none(tiny):
    cap = getattr(tiny.hf.config, "final_logit_softcapping", None)
    assert readout.logit_softcap(tiny) == (float(cap) if cap else None)


def test_perturbed_mlp_copies_and_leaves_the_original_alone(tiny_llama):
    m = tiny_llama
    before = {k: v.clone() for k, v in m.hf.state_dict().items()}
    noisy = perturbed_mlp(m, noise=0.5, seed=3)
    assert all(torch.equal(v, m.hf.state_dict()[k]) for k, v in before.items())
    assert noisy.name == f"{m.name}+mlpnoise0.5s3" and noisy.family == m.family
    changed = {k for k, v in noisy.hf.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".mlp." in k for k in changed)
    again = perturbed_mlp(m, noise=0.5, seed=3)  # seeded
    assert all(torch.equal(v, again.hf.state_dict()[k]) for k, v in noisy.hf.state_dict().items())
    zero = perturbed_mlp(m, noise=0.0)
    assert all(torch.equal(v, before[k]) for k, v in zero.hf.state_dict().items())
    with pytest.raises(InputError, match="noise must be >= 0"):
        perturbed_mlp(m, noise=-1.0)


def test_next_token_metrics(tiny_llama):
    m = tiny_llama
    prompts = ["hello there", "a", "the cat sat", "xyz", "qq"]
    lp = metrics.next_token_logprobs(m, prompts, batch_size=2)
    assert lp.shape == (5, m.d_vocab) and lp.device.type == "cpu" and lp.dtype == torch.float32
    for i, p in enumerate(prompts):  # batching does not matter up to padding rounding
        one = m.run(p, logits="last").logits.float().log_softmax(-1).cpu()[0]
        torch.testing.assert_close(lp[i], one, rtol=1e-5, atol=1e-5)
    assert torch.equal(metrics.kl_from(m, prompts, lp, edits=[], batch_size=2), torch.zeros(5))
    edit = Add(site="layers.1.resid_post", vector=torch.randn(m.d_model, generator=torch.Generator().manual_seed(1)),
               scale=4.0)
    kl = metrics.kl_from(m, prompts, lp, edits=[edit], batch_size=2)
    assert kl.shape == (5,) and (kl > 0).all()
    assert torch.equal(kl, metrics.kl_div(lp, metrics.next_token_logprobs(m, prompts, edits=[edit], batch_size=2)))


def test_first_token_score():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    s = metrics.first_token_score(logits, torch.tensor([1, 2]))
    assert s.correct.tolist() == [True, False] and s.top.tolist() == [1, 0] and s.accuracy == 0.5
    torch.testing.assert_close(s.prob, logits.softmax(-1)[[0, 1], [1, 2]])
    both = metrics.Score.cat([s, s])
    assert both.correct.tolist() == [True, False, True, False] and both.matches(torch.tensor([1, 0, 1, 1])) == 0.75


def test_quiet_load_restores_transformers_logging():
    from transformers.utils import logging as hf_logging

    from lmscope.engine.loading import load

    hf_logging.enable_progress_bar()
    level = hf_logging.get_verbosity()
    with pytest.raises(ModelNotFound):
        load("./no-such-model-folder", quiet=True)
    assert hf_logging.is_progress_bar_enabled() and hf_logging.get_verbosity() == level


def test_families_get_what_they_need_without_hf(tiny):
    """The family helpers built on this API agree with the table (what atlas/decomposition used)."""
    from lmscope.neurons.atlas import is_gated, to_token_space

    assert is_gated(tiny) == tiny.is_gated
    w = torch.randn(3, tiny.d_model)
    want = w - w.mean(-1, keepdim=True) if tiny.norm_kind == "layer" else w
    assert torch.equal(to_token_space(tiny, w), want * tiny.weights.final_norm)
    assert make_tiny("gemma2").has_attn_post_norm and not make_tiny("llama").has_attn_post_norm
