"""Equivalence with HF and the core behaviours on the two embedded real models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from generation_check import POSITION_FORMS, add_edit, check_cached_generation

import lmscope as ls
from lmscope.engine.arch import get_module

pytestmark = pytest.mark.slow
PROMPTS = ["The capital of Poland is", "Once upon a time, in a small village by the sea, there"]


@pytest.fixture(params=["gemma", "smollm"])
def real(request):
    return request.getfixturevalue(request.param)


def test_noop_is_bit_identical_and_resid_equals_hf(real):
    batch = real.tokenize(PROMPTS)
    with torch.no_grad():
        ref = real.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      position_ids=batch.position_ids, logits_to_keep=1, output_hidden_states=True)
    zero = torch.zeros(real.d_model)
    edits = [ls.Add(site=f"layers.{L}.resid_post", vector=zero) for L in range(real.n_layers)]
    edits += [ls.Scale(site="layers.3.mlp.neurons", factor=1.0), ls.Scale(site="layers.2.attn.z", factor=1.0)]
    out = real.run(batch, edits=edits, capture=["layers.*.resid_post"])
    assert torch.equal(out.logits, ref.logits[:, -1])
    for L in range(real.n_layers - 1):
        assert torch.equal(out.cache[f"layers.{L}.resid_post"], ref.hidden_states[L + 1])


def test_heads_and_neurons_sum_to_their_block_outputs(real):
    L = real.n_layers // 2
    c = real.run(PROMPTS[:1], capture=[f"layers.{L}.attn.head_out", f"layers.{L}.attn_out",
                                       f"layers.{L}.mlp.neurons", f"layers.{L}.mlp_out"], logits=None).cache
    heads = c[f"layers.{L}.attn.head_out"].sum(2)
    attn = c[f"layers.{L}.attn_out"]
    assert (heads - attn).abs().max() <= 1e-4 * attn.abs().max()
    mlp = c[f"layers.{L}.mlp.neurons"] @ real.weights.W_out(L)
    if real.spec.mlp_post_norm:
        mlp = get_module(real.block(L), real.spec.mlp_post_norm)(mlp)
    out = c[f"layers.{L}.mlp_out"]
    assert (mlp - out).abs().max() <= 1e-4 * out.abs().max()
    zeroed = real.run(PROMPTS[:1], edits=[ls.Zero(site=f"layers.{L}.mlp.neurons")],
                      capture=[f"layers.{L}.mlp_out"], logits=None).cache[f"layers.{L}.mlp_out"]
    assert zeroed.abs().max() == 0


def test_left_padded_batch_matches_single_prompts(real):
    both = real.run(PROMPTS, capture=["layers.5.resid_post"])
    for i, p in enumerate(PROMPTS):
        one = real.run(p, capture=["layers.5.resid_post"])
        n = one.batch.input_ids.shape[1]
        assert torch.allclose(both.logits[i], one.logits[0], atol=2e-3, rtol=1e-4)
        a, b = both.cache["layers.5.resid_post"][i, -n:], one.cache["layers.5.resid_post"][0]
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()


def test_gemma_capital_of_poland(gemma):
    top = gemma.run("The capital of Poland is").top_k(gemma, 5)
    assert top[0]["token"] == " Warsaw"


@pytest.mark.parametrize("form", POSITION_FORMS)
@pytest.mark.parametrize("name", ["gemma", "smollm"])
def test_cached_generation_equals_recomputation_for_every_position_form(request, name, form):
    model = request.getfixturevalue(name)
    prompts = ["Tell me about the ocean and the", "My favourite food is a dish that"]
    layer = model.n_layers // 2
    norm = model.run(prompts, capture={f"layers.{layer}.resid_post": "last"}, logits=None) \
        .cache[f"layers.{layer}.resid_post"].norm(dim=-1).mean()
    edit = add_edit(model, form, len(prompts), layer=layer, scale=4.0 * float(norm))
    check_cached_generation(model, prompts, edit, new=8, tokens_must_change=True)


def test_chat_template_and_local_folder_and_bfloat16(smollm, tmp_path):
    chat = smollm.tokenize("Hi", chat=True)
    text = smollm.tokenizer.decode(chat.input_ids[0])
    assert "<|im_start|>assistant" in text
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, vocab_size=smollm.d_vocab)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "m")
    smollm.tokenizer.save_pretrained(tmp_path / "m")
    local = ls.load(str(tmp_path / "m"))
    assert local.n_layers == 2 and local.run("hello").logits.shape == (1, smollm.d_vocab)
    bf = ls.load(str(tmp_path / "m"), dtype="bfloat16")
    assert bf.dtype == torch.bfloat16
    v = torch.ones(32)
    assert bf.run("hello", edits=[ls.Add(site="layers.0.resid_post", vector=v)]).logits.dtype == torch.bfloat16


def _cli(*args, check=True):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([sys.executable, "-m", "lmscope.cli.main", *args], capture_output=True, text=True, env=env,
                       timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr)
    return p


def test_cli_contract(tmp_path, smollm):
    assert "generate" in _cli("--help").stdout
    out = json.loads(_cli("run", "smollm2-135m-instruct", "The capital of Poland is", "--top-k", "3", "--json").stdout)
    assert set(out) == {"model", "prompt", "n_tokens", "top"} and len(out["top"]) == 3
    assert {"token", "id", "prob", "logit"} <= set(out["top"][0])
    bad = _cli("run", "no-such-model", "x", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("Error: Unknown model") and "Traceback" not in bad.stderr
    usage = _cli("run", "--top-k", "zero", check=False)
    assert usage.returncode == 2
    info = json.loads(_cli("info", "smollm2-135m-instruct", "--json").stdout)
    assert info["n_layers"] == 30 and info["d_mlp"] == 1536 and info["family"] == "llama"
    models = json.loads(_cli("models", "--json").stdout)
    assert any(m["name"] == "gemma-3-270m" for m in models["models"])
    # a steering vector artifact drives `generate --add-vector`
    from lmscope.engine.artifacts import save_artifact

    v = torch.randn(smollm.d_model, generator=torch.Generator().manual_seed(1))
    path = save_artifact(tmp_path / "v", {"layers.15": v / v.norm() * 8}, kind="vector", model=smollm)
    gen = json.loads(_cli("generate", "smollm2-135m-instruct", "Tell me a story.", "--chat", "--max-new-tokens", "8",
                          "--add-vector", str(path), "--layer", "15", "--scale", "4", "--compare", "--json").stdout)
    assert gen["text"] != gen["baseline"]
    wrong = _cli("generate", "smollm2-135m-instruct", "x", "--add-vector", str(path), "--layer", "3", check=False)
    assert wrong.returncode == 1 and "no vector for layer 3" in wrong.stderr
