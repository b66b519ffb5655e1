"""Bad input gets a clear error that says what was expected; artifacts are validated; loading."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import make_tiny

import lmscope as ls
from lmscope.engine.artifacts import load_artifact, save_artifact
from lmscope.engine.sites import parse


@pytest.fixture(scope="module")
def m():
    return make_tiny("llama")


def test_unknown_model_lists_known_ones():
    with pytest.raises(ls.ModelNotFound, match="gemma-3-270m, smollm2-135m-instruct"):
        ls.load("no-such-model")
    with pytest.raises(ls.ModelNotFound, match="neither a model folder"):
        ls.load("./does/not/exist")


def test_layer_neuron_head_out_of_range(m):
    with pytest.raises(ls.SiteError, match=r"Layer 40 is out of range for tiny-llama \(3 layers: 0..2, or -3..-1\)"):
        m.run("hi", capture=["layers.40.resid_post"])
    with pytest.raises(ls.SiteError, match=r"Neuron 500 is out of range .*96 neurons: 0..95"):
        m.run("hi", edits=[ls.Zero(site="layers.1.mlp.neurons[500]")])
    with pytest.raises(ls.SiteError, match=r"Head 9 is out of range .*4 heads: 0..3"):
        m.run("hi", edits=[ls.Zero(site="layers.1.attn.z[9]")])
    with pytest.raises(ls.SiteError, match="Unknown site"):
        parse("layers.1.resdi_post")
    assert m.sites("layers.-1.resid_post")[0].layer == 2


def test_vector_width_and_non_finite(m):
    with pytest.raises(ls.InputError, match=r"shape \(10,\).*last dimension is 64"):
        m.run("hi", edits=[ls.Add(site="layers.1.resid_post", vector=torch.ones(10))])
    with pytest.raises(ls.InputError, match="NaN or infinite"):
        ls.Add(site="layers.1.resid_post", vector=torch.tensor([math.nan] * 64))
    with pytest.raises(ls.InputError, match="finite"):
        ls.Add(site="layers.1.resid_post", vector=torch.ones(64), scale=math.inf)
    with pytest.raises(ls.InputError, match="zero direction"):
        ls.ProjectOut(site="layers.1.resid_post", direction=torch.zeros(64))


def test_empty_and_too_long_prompts(m):
    with pytest.raises(ls.InputError, match="Prompt 0 is empty"):
        m.run("")
    with pytest.raises(ls.InputError, match="No prompts"):
        m.run([])
    with pytest.raises(ls.InputError, match="takes at most 256"):
        m.run("x" * 300)
    with pytest.raises(ls.InputError, match="exceed the context"):
        m.generate("x" * 250, max_new_tokens=10)


def test_positions_out_of_range_and_bad_specs(m):
    with pytest.raises(ls.SiteError, match="Position 9 is out of range for prompt 0"):
        m.run("hi", capture={"layers.0.resid_post": [9]}, logits=None)
    with pytest.raises(ls.InputError, match="Unknown position"):
        ls.Add(site="layers.0.resid_post", vector=torch.ones(64), positions="first")
    with pytest.raises(ls.SiteError, match="captured but not edited"):
        m.run("hi", edits=[ls.Zero(site="layers.0.attn.pattern")])


def test_unknown_family_has_a_documented_override():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, vocab_size=50)
    hf = AutoModelForCausalLM.from_config(cfg)
    hf.config.model_type = "mystery"
    with pytest.raises(ls.UnsupportedArchitecture, match="Pass arch=lmscope.ArchSpec"):
        ls.Model(hf, None)
    wrapped = ls.Model(hf, None, arch=ls.ArchSpec(family="mystery"))
    assert wrapped.n_layers == 1


def test_artifact_round_trip_and_validation(m, tmp_path):
    other = make_tiny("gpt2")
    path = save_artifact(tmp_path / "v", {"vector": torch.ones(64)}, kind="vector", model=m, meta={"layer": 1})
    assert path.suffix == ".safetensors"
    tensors, side = load_artifact(path, kind="vector", model=m)
    assert torch.equal(tensors["vector"], torch.ones(64)) and side["layer"] == 1
    with pytest.raises(ls.ArtifactError, match="made for 'tiny-llama', not 'tiny-gpt2'"):
        load_artifact(path, model=other)
    with pytest.raises(ls.ArtifactError, match="expected 'tuned_lens'"):
        load_artifact(path, kind="tuned_lens")
    side_path = tmp_path / "v.safetensors.json"
    side_path.write_text("{not json")
    with pytest.raises(ls.ArtifactError, match="not valid JSON"):
        load_artifact(path)
    side_path.write_text(json.dumps(side))
    path.write_bytes(b"garbage")
    with pytest.raises(ls.ArtifactError, match="not a readable safetensors"):
        load_artifact(path)
    with pytest.raises(ls.ArtifactError, match="No artifact"):
        load_artifact(tmp_path / "missing.safetensors")
    assert not list(tmp_path.glob(".*tmp")), "no temporary files left behind"


def test_folder_without_tokenizer_and_bad_dtype(tmp_path):
    tiny = make_tiny("llama")
    tiny.hf.save_pretrained(tmp_path / "tiny")
    with pytest.raises(ls.ModelNotFound, match="Could not load"):  # no tokenizer files in the folder
        ls.load(str(tmp_path / "tiny"))
    with pytest.raises(ls.InputError, match="dtype must be one of"):
        ls.load(str(tmp_path / "tiny"), dtype="float8")
