"""The engine is proven equivalent to plain HF on tiny random models of every family."""

from __future__ import annotations

import pytest
import torch
from generation_check import POSITION_FORMS, add_edit, check_cached_generation

import lmscope as ls
from lmscope.engine.arch import get_module
from lmscope.engine.hooks import hook_count

PROMPTS = ["hello world, this is", "hi there"]


def plain_logits(m, batch):
    with torch.inference_mode():
        return m.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids, logits_to_keep=0, use_cache=False).logits


def test_noop_interventions_are_bit_identical(tiny):
    batch = tiny.tokenize(PROMPTS)
    ref = plain_logits(tiny, batch)
    zero = torch.zeros(tiny.d_model)
    edits = [ls.Add(site=f"layers.{L}.{k}", vector=zero) for L in range(tiny.n_layers)
             for k in ("resid_pre", "resid_post", "attn_out", "mlp_out")]
    edits += [ls.Scale(site="layers.1.mlp.neurons", factor=1.0), ls.Scale(site="layers.0.attn.z[1]", factor=1.0),
              ls.Scale(site="layers.2.mlp.up", factor=1.0)]
    if tiny.spec.resid_mid is not None:
        edits.append(ls.Add(site="layers.1.resid_mid", vector=zero))
    out = tiny.run(batch, edits=edits, capture=["layers.*.resid_post", "layers.1.attn.head_out"], logits="all")
    assert torch.equal(out.logits, ref)


def test_resid_post_equals_hf_hidden_states(tiny):
    batch = tiny.tokenize(PROMPTS)
    with torch.inference_mode():
        hs = tiny.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     position_ids=batch.position_ids, output_hidden_states=True).hidden_states
    out = tiny.run(batch, capture=["layers.*.resid_post", "layers.0.resid_pre"], logits=None)
    assert torch.equal(out.cache["layers.0.resid_pre"], hs[0])
    for L in range(tiny.n_layers - 1):  # HF's last hidden state is after the final norm
        assert torch.equal(out.cache[f"layers.{L}.resid_post"], hs[L + 1])
    normed = tiny.run(batch, capture=["final_norm"], logits="last").cache["final_norm"]
    assert torch.equal(normed, hs[-1])


def test_heads_sum_to_attn_out_and_neurons_to_mlp_out(tiny):
    out = tiny.run(PROMPTS, capture=["layers.1.attn.head_out", "layers.1.attn_out", "layers.1.mlp.neurons",
                                     "layers.1.mlp_out", "layers.1.attn.z"], logits=None)
    c = out.cache
    heads = c["layers.1.attn.head_out"].sum(2)
    b_o = tiny.weights.b_O(1)
    if b_o is not None:
        heads = heads + b_o
    assert torch.allclose(heads, c["layers.1.attn_out"], atol=1e-5)
    assert c["layers.1.attn.z"].shape[-2:] == (tiny.n_heads, tiny.d_head)
    down = get_module(tiny.block(1), tiny.spec.down)
    mlp = c["layers.1.mlp.neurons"] @ tiny.weights.W_out(1)
    if getattr(down, "bias", None) is not None:
        mlp = mlp + down.bias
    if tiny.spec.mlp_post_norm:
        mlp = get_module(tiny.block(1), tiny.spec.mlp_post_norm)(mlp)
    assert torch.allclose(mlp, c["layers.1.mlp_out"], atol=1e-5)


def test_ablating_every_neuron_zeroes_the_mlp_write(tiny):
    out = tiny.run(PROMPTS, edits=[ls.Zero(site="layers.1.mlp.neurons")], capture=["layers.1.mlp_out"], logits=None)
    down = get_module(tiny.block(1), tiny.spec.down)
    expect = down.bias if getattr(down, "bias", None) is not None else torch.zeros(tiny.d_model)
    valid = out.batch.attention_mask.bool()
    assert torch.allclose(out.cache["layers.1.mlp_out"][valid], expect.expand(int(valid.sum()), -1), atol=1e-6)


def test_left_padding_matches_one_prompt_at_a_time(tiny):
    both = tiny.run(PROMPTS, capture=["layers.2.resid_post"], logits="last")
    for i, p in enumerate(PROMPTS):
        one = tiny.run(p, capture=["layers.2.resid_post"], logits="last")
        n = one.batch.input_ids.shape[1]
        assert torch.allclose(both.logits[i], one.logits[0], atol=1e-4)
        assert torch.allclose(both.cache["layers.2.resid_post"][i, -n:], one.cache["layers.2.resid_post"][0], atol=1e-4)


def test_add_is_exact_at_the_site_and_untouched_before(tiny):
    v = torch.randn(tiny.d_model)
    base = tiny.run(PROMPTS, capture=["layers.0.resid_post", "layers.1.resid_post"], logits=None)
    site = "layers.1.resid_post"
    steer = tiny.run(PROMPTS, edits=[ls.Add(site=site, vector=v, scale=2.5)],
                     capture=["layers.0.resid_post", site], logits=None)
    valid = base.batch.attention_mask.bool()
    assert torch.equal(steer.cache["layers.0.resid_post"], base.cache["layers.0.resid_post"])
    diff = steer.cache[site] - base.cache[site]
    assert torch.allclose(diff[valid], (2.5 * v).expand(int(valid.sum()), -1), atol=1e-5)
    assert torch.equal(diff[~valid], torch.zeros_like(diff[~valid])), "padding must never be edited"


def test_positions_last_and_index_edit_only_there(tiny):
    v = torch.ones(tiny.d_model)
    base = tiny.run(PROMPTS, capture=["layers.0.resid_post"], logits=None).cache["layers.0.resid_post"]
    for pos, col in (("last", -1), (0, None), ([-2], -2)):
        got = tiny.run(PROMPTS, edits=[ls.Add(site="layers.0.resid_post", vector=v, positions=pos)],
                       capture=["layers.0.resid_post"], logits=None)
        changed = (got.cache["layers.0.resid_post"] - base).abs().sum(-1) > 0
        mask = got.batch.attention_mask
        if col is None:  # first real token of each row
            first = (mask.cumsum(1) == 1) & mask.bool()
            assert torch.equal(changed, first)
        else:
            expect = torch.zeros_like(changed)
            expect[:, col] = True
            assert torch.equal(changed, expect)


def test_patch_whole_residual_reproduces_source(tiny):
    a, b = "abcdefg", "gfedcba"
    src = tiny.run(b, capture=["layers.1.resid_post"], logits="last")
    got = tiny.run(a, edits=[ls.Patch(site="layers.1.resid_post", source=src.cache["layers.1.resid_post"])])
    assert torch.allclose(got.logits, src.logits, atol=1e-5)
    # sparse positions: patch only the last position with a [1, 1, d] source
    last = tiny.run(b, capture={"layers.2.resid_post": [-1]}, logits=None).cache["layers.2.resid_post"]
    got = tiny.run(a, edits=[ls.Patch(site="layers.2.resid_post", source=last, positions=[-1])],
                   capture={"layers.2.resid_post": [-1]}, logits=None)
    assert torch.equal(got.cache["layers.2.resid_post"], last)


def test_project_out_and_mean_and_resample(tiny):
    d = torch.randn(tiny.d_model)
    out = tiny.run(PROMPTS, edits=[ls.ProjectOut(site="layers.1.resid_post", direction=d)],
                   capture=["layers.1.resid_post"], logits=None).cache["layers.1.resid_post"]
    valid = tiny.tokenize(PROMPTS).attention_mask.bool()
    assert (out[valid] @ (d / d.norm())).abs().max() < 1e-4
    mean = torch.randn(tiny.d_mlp)
    got = tiny.run(PROMPTS, edits=[ls.MeanAblate(site="layers.1.mlp.neurons", mean=mean)],
                   capture=["layers.1.mlp.neurons"], logits=None)
    valid = got.batch.attention_mask.bool()
    assert torch.equal(got.cache["layers.1.mlp.neurons"][valid], mean.expand(int(valid.sum()), -1))
    pool = torch.randn(5, 3)
    runs = [tiny.run(PROMPTS, edits=[ls.Resample(site="layers.1.mlp.neurons[0,1,2]", pool=pool, seed=7)],
                     capture=["layers.1.mlp.neurons[0,1,2]"], logits=None).cache["layers.1.mlp.neurons[0,1,2]"]
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    rows = runs[0][valid]
    assert all(any(torch.equal(r, p) for p in pool) for r in rows)


def test_head_edit_via_z(tiny):
    out = tiny.run(PROMPTS, edits=[ls.Zero(site="layers.1.attn.z[2]")], capture=["layers.1.attn.z"], logits=None)
    z = out.cache["layers.1.attn.z"][out.batch.attention_mask.bool()]  # [n_real, head, d_head]
    assert z[:, 2].abs().max() == 0 and z[:, 1].abs().max() > 0


def test_unit_capture_selection(tiny):
    full = tiny.run(PROMPTS, capture=["layers.1.mlp.neurons"], logits=None).cache["layers.1.mlp.neurons"]
    sel = tiny.run(PROMPTS, capture={"layers.1.mlp.neurons[3,5]": "last"}, logits=None).cache["layers.1.mlp.neurons[3,5]"]
    assert torch.equal(sel, full[:, -1, [3, 5]])


def test_stop_early_equals_full_run(tiny):
    early = tiny.run(PROMPTS, capture=["layers.1.resid_post"], logits=None).cache["layers.1.resid_post"]
    full = tiny.run(PROMPTS, capture=["layers.1.resid_post"], logits="all").cache["layers.1.resid_post"]
    assert torch.equal(early, full)


def test_on_capture_streams_each_capture_in_forward_order_and_keeps_none(tiny):
    sites = ["layers.*.mlp.neurons", "layers.1.resid_post", "layers.0.mlp.neurons[3,5]"]
    kept = tiny.run(PROMPTS, capture=sites, logits=None).cache
    seen = []
    streamed = tiny.run(PROMPTS, capture=sites, logits=None,
                        on_capture=lambda name, x: seen.append((name, x.clone()))).cache
    names = [n for n, _ in seen]
    assert sorted(names) == sorted(kept.keys())  # each capture once
    layers = [tiny.site(n).layer for n in names]
    assert layers == sorted(layers)  # as the forward reaches them: one block's activations at a time
    for name, x in seen:
        assert torch.equal(x, kept[name]), name
    with pytest.raises(ls.SiteError, match="no forward"):
        streamed[names[0]]  # streamed out, not kept
    with pytest.raises(ls.InputError, match="grad"):
        tiny.run(PROMPTS, capture=sites, grad=True, on_capture=lambda name, x: None)


def test_gradients_on_request(tiny):
    out = tiny.run(PROMPTS, capture=["layers.1.resid_post"], grad=True)
    out.logits[:, 5].sum().backward()
    g = out.cache["layers.1.resid_post"].grad
    assert g is not None and g.abs().sum() > 0
    default = tiny.run(PROMPTS, capture=["layers.1.resid_post"])
    assert not default.cache["layers.1.resid_post"].requires_grad


@pytest.mark.parametrize("form", POSITION_FORMS)
def test_cached_generation_equals_recomputation_for_every_position_form(tiny, form):
    scale = 30.0 * float(tiny.run(PROMPTS, capture={"layers.0.resid_post": "last"}, logits=None)
                         .cache["layers.0.resid_post"].norm(dim=-1).mean())
    check_cached_generation(tiny, PROMPTS, add_edit(tiny, form, len(PROMPTS), layer=0, scale=scale))


def test_generated_positions_only_touch_new_tokens(tiny):
    v = torch.randn(tiny.d_model)
    with tiny.capture(["layers.1.resid_post"]) as base_cache:
        tiny.generate(PROMPTS, max_new_tokens=3, min_new_tokens=3)
    with tiny.capture(["layers.1.resid_post"]) as cache:
        tiny.generate(PROMPTS, edits=[ls.Add(site="layers.1.resid_post", vector=v, positions="generated")],
                      max_new_tokens=3, min_new_tokens=3)
    P = tiny.tokenize(PROMPTS).input_ids.shape[1]
    a, b = base_cache["layers.1.resid_post"], cache["layers.1.resid_post"]
    assert torch.equal(a[:, :P], b[:, :P])
    assert torch.allclose(b[:, P] - a[:, P], v.expand(2, -1), atol=1e-5)  # first generated token's input


def test_hooks_removed_also_after_exception(tiny):
    before = hook_count(tiny.hf)
    with pytest.raises(RuntimeError):
        with tiny.intervene(ls.Add(site="layers.0.resid_post", vector=torch.zeros(tiny.d_model))):
            assert hook_count(tiny.hf) > before
            raise RuntimeError("boom")
    assert hook_count(tiny.hf) == before
    with pytest.raises(ls.InputError):  # error raised inside a hook during the forward
        tiny.run(PROMPTS, edits=[ls.Patch(site="layers.0.resid_post", source=torch.zeros(3, 2, tiny.d_model),
                                          positions=[0, 1])])
    assert hook_count(tiny.hf) == before


def test_nested_contexts_compose(tiny):
    v, w = torch.randn(tiny.d_model), torch.randn(tiny.d_model)
    base = tiny.run(PROMPTS, capture=["layers.1.resid_post"], logits=None).cache["layers.1.resid_post"]
    with tiny.intervene(ls.Add(site="layers.1.resid_post", vector=v)):
        with tiny.intervene(ls.Add(site="layers.1.resid_post", vector=w)):
            got = tiny.run(PROMPTS, capture=["layers.1.resid_post"], logits=None).cache["layers.1.resid_post"]
    valid = tiny.tokenize(PROMPTS).attention_mask.bool()
    assert torch.allclose((got - base)[valid], (v + w).expand(int(valid.sum()), -1), atol=1e-5)


def test_attention_pattern_capture_restores_sdpa(tiny):
    before = tiny.hf.config._attn_implementation
    pat = tiny.run(PROMPTS, capture=["layers.0.attn.pattern"], logits=None).cache["layers.0.attn.pattern"]
    assert pat.shape[:2] == (2, tiny.n_heads)
    assert torch.allclose(pat.sum(-1)[:, :, -1], torch.ones(2, tiny.n_heads), atol=1e-5)
    assert tiny.hf.config._attn_implementation == before


def test_prefix_run_equals_full_forwards_and_refuses_edits_before_the_last_token(tiny):
    from lmscope.engine.runner import PrefixRun

    v = torch.randn(tiny.d_model) * 3
    edit = ls.Add(site="layers.1.resid_post", vector=v, positions="last")
    pre = PrefixRun(tiny, PROMPTS, batch_size=1)  # one row per chunk: padding differs per chunk
    torch.testing.assert_close(pre.logits(), tiny.run(PROMPTS, logits="last").logits.float(), atol=1e-5, rtol=1e-4)
    full = tiny.run(PROMPTS, edits=[edit], logits="last").logits.float()
    torch.testing.assert_close(pre.logits([edit]), full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(PrefixRun(tiny, PROMPTS).logits([edit], rep=3), full.repeat_interleave(3, 0),
                               atol=1e-5, rtol=1e-4)
    assert (pre.logits([edit]) - pre.logits()).abs().max() > 1e-3  # the edit did something
    with pytest.raises(ls.InputError, match="positions='last'"):
        pre.logits([ls.Add(site="layers.1.resid_post", vector=v, positions="all")])


def test_engine_refuses_a_cache_it_cannot_read(tiny):
    from lmscope.engine.errors import EngineError

    batch = tiny.tokenize(PROMPTS[0])
    with tiny.intervene(ls.Add(site="layers.0.resid_post", vector=torch.zeros(tiny.d_model), positions="last")):
        with pytest.raises(EngineError, match="KV cache"):
            tiny.hf(input_ids=batch.input_ids, past_key_values=((torch.zeros(1), torch.zeros(1)),), use_cache=True)


def test_cached_forward_whose_prompt_was_not_seen_refuses_prompt_positions(tiny):
    from lmscope.engine.errors import EngineError
    from lmscope.engine.runner import cache_keyword, output_cache

    batch = tiny.tokenize(PROMPTS[0])
    with torch.no_grad():
        cache = output_cache(tiny.hf(input_ids=batch.input_ids[:, :-1], use_cache=True))
        edit = ls.Add(site="layers.0.resid_post", vector=torch.ones(tiny.d_model), positions="last")
        with tiny.intervene(edit), pytest.raises(EngineError, match="never saw"):
            tiny.hf(input_ids=batch.input_ids[:, -1:], use_cache=True, **{cache_keyword(tiny): cache})


def test_edits_at_the_logits_follow_the_columns_the_model_unembeds(tiny):
    # the logits site is the LM head's output (before Gemma-2's final softcap): check which
    # columns move, not by how much
    v = torch.full((tiny.d_vocab,), 5.0)
    for logits in ("all", "last"):
        base = tiny.run(PROMPTS, logits=logits).logits
        for pos in ("all", "last"):
            got = tiny.run(PROMPTS, edits=[ls.Add(site="logits", vector=v, positions=pos)], logits=logits).logits
            moved = (got - base).abs().amax(-1) > 1e-3  # [batch] or [batch, pos]
            if logits == "last":
                assert moved.all()
            else:
                real = tiny.tokenize(PROMPTS).attention_mask.bool()
                want = real.clone() if pos == "all" else torch.zeros_like(real)
                want[:, -1] = True
                assert torch.equal(moved & real, want)
    out = tiny.generate(PROMPTS, edits=[ls.Add(site="logits", vector=v)], max_new_tokens=3, min_new_tokens=3)
    assert out.tokens.shape == (2, 3)
