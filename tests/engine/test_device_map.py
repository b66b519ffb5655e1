"""A model spread by a `device_map` (accelerate's hooks move weights in and out; blocks may be
offloaded to disk): captures, edits and generation equal the same model in one piece. On a
CPU-only machine the split is CPU / disk; on a GPU machine the same code binds each edit to the
device of its block and gathers captures where the logits come out."""

from __future__ import annotations

import pytest
import torch
from accelerate import dispatch_model
from conftest import FAMILY_CONFIGS, TinyTokenizer, make_tiny

import lmscope
from lmscope.engine.hooks import hook_count
from lmscope.engine.interventions import Add, Set, Zero

FAMILIES = sorted(FAMILY_CONFIGS)


def split_map(model) -> dict:
    """Every other block (and the final norm's neighbourhood) offloaded to disk."""
    blocks = next(name for name, mod in model.hf.named_modules() if mod is model.block(0)).rsplit(".", 1)[0]
    dm = {}
    for name, _ in model.hf.named_children():
        if name != "lm_head":
            for sub, _ in getattr(model.hf, name).named_children():
                dm[f"{name}.{sub}"] = "cpu"
    for key in [k for k in dm if k == blocks]:
        del dm[key]
    for i in range(model.n_layers):
        dm[f"{blocks}.{i}"] = "disk" if i % 2 else "cpu"
    dm["lm_head"] = "cpu"
    return dm


@pytest.fixture(params=FAMILIES)
def pair(request, tmp_path):
    whole = make_tiny(request.param)
    split = make_tiny(request.param)  # the same seed: the same weights
    hf = dispatch_model(split.hf, device_map=split_map(split), offload_dir=str(tmp_path))
    return whole, lmscope.Model(hf, TinyTokenizer(), name=f"split-{request.param}")


PROMPTS = ["hello world", "abc de"]


def test_some_blocks_really_are_on_disk(pair):
    _, split = pair
    offloaded = [i for i in range(split.n_layers) if next(split.block(i).parameters()).device.type == "meta"]
    assert offloaded == list(range(1, split.n_layers, 2))
    assert all(split.device_of(i) == torch.device("cpu") for i in range(split.n_layers))  # they run on the CPU
    assert not split.spans_devices and split.device == torch.device("cpu")


def test_captures_and_logits_equal_the_whole_model(pair):
    whole, split = pair
    sites = ["layers.*.resid_post", "layers.*.mlp.neurons", "layers.*.attn.z", "embed"]
    before = hook_count(split.hf)
    a, b = whole.run(PROMPTS, capture=sites, logits="all"), split.run(PROMPTS, capture=sites, logits="all")
    assert hook_count(split.hf) == before  # ours are gone again; accelerate's stay
    assert torch.equal(a.logits, b.logits)
    assert set(a.cache.keys()) == set(b.cache.keys())
    for k in a.cache.keys():  # noqa: SIM118 (a Cache, not a dict)
        assert torch.equal(a.cache[k], b.cache[k]), k


def test_edits_on_offloaded_blocks_equal_the_whole_model(pair):
    whole, split = pair
    v = torch.randn(whole.d_model, generator=torch.Generator().manual_seed(0))

    def edits():
        return [Add(site="layers.1.resid_post", vector=v), Zero(site="layers.0.mlp.neurons[3]"),
                Set(site=f"layers.{whole.n_layers - 1}.mlp.neurons[5]", value=2.0)]

    assert torch.equal(whole.run(PROMPTS, edits=edits()).logits, split.run(PROMPTS, edits=edits()).logits)
    assert not torch.equal(whole.run(PROMPTS).logits, whole.run(PROMPTS, edits=edits()).logits)
    g_whole = whole.generate(PROMPTS, edits=edits(), max_new_tokens=6)
    g_split = split.generate(PROMPTS, edits=edits(), max_new_tokens=6)
    assert torch.equal(g_whole.tokens, g_split.tokens)


@pytest.mark.slow
def test_gemma_loaded_with_half_its_blocks_on_disk_matches(gemma, tmp_path):
    dm = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    dm.update({f"model.layers.{i}": "disk" if i >= gemma.n_layers // 2 else "cpu" for i in range(gemma.n_layers)})
    split = lmscope.load("gemma-3-270m", device_map=dm, offload_folder=tmp_path)
    prompt = "The capital of Poland is"
    v = torch.randn(gemma.d_model, generator=torch.Generator().manual_seed(0))
    for edits in ([], [Add(site="layers.12.resid_post", vector=v)]):
        a = gemma.run(prompt, capture=["layers.*.resid_post"], edits=list(edits))
        b = split.run(prompt, capture=["layers.*.resid_post"], edits=[Add(site=e.site, vector=v) for e in edits])
        assert torch.equal(b.logits, a.logits)
        assert all(torch.equal(b.cache[f"layers.{i}.resid_post"], a.cache[f"layers.{i}.resid_post"])
                   for i in range(gemma.n_layers))
