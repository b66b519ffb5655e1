"""A fresh install must work: CLI arguments are checked before any model load (a typo costs
no load), and every long wait says on stderr what it is waiting for, with stdout (and --json
on it) left clean."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import make_tiny

import lmscope
import lmscope.engine.loading as M
from lmscope.cli.main import cli
from lmscope.engine.loading import EMBEDDED, EMBEDDED_SHAPES, cache_dir, known_shape


@pytest.fixture
def no_load(monkeypatch):
    """Any model load fails the test."""
    loads = []

    def load(*a, **k):
        loads.append(a)
        raise AssertionError(f"a model was loaded: {a}")

    monkeypatch.setattr(M, "load", load)
    monkeypatch.setattr(lmscope, "load", load, raising=False)
    return loads


@pytest.fixture
def tiny_load(monkeypatch):
    """`lmscope.engine.loading.load` returns a tiny random llama (model name in the CLI: anything)."""
    lm = make_tiny("llama")
    monkeypatch.setattr(M, "load", lambda *a, **k: lm)
    return lm


def test_known_shapes_cover_the_embedded_models():
    assert set(EMBEDDED_SHAPES) == set(EMBEDDED)
    assert known_shape("gemma-3-270m").n_layers == 18 and known_shape("org/other") is None


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["gemma", "smollm"])
def test_embedded_shapes_match_the_loaded_models(request, fixture):
    model = request.getfixturevalue(fixture)  # converts the embedded model on first use
    shape = known_shape(model.name)
    assert (shape.n_layers, shape.d_model, shape.d_mlp, shape.n_heads, shape.n_kv_heads) == (
        model.n_layers, model.d_model, model.d_mlp, model.n_heads, model.n_kv_heads)
    cfg = json.loads((cache_dir() / "models" / model.name / "config.json").read_text())
    assert shape.n_layers == cfg["num_hidden_layers"] and shape.d_mlp == cfg["intermediate_size"]


def test_shape_sites_errors_match_the_model_ones():
    """The pre-load check and the loaded model give the same message (one grammar)."""
    from lmscope.engine.errors import SiteError

    with pytest.raises(SiteError, match=r"Layer 99 is out of range for gemma-3-270m \(18 layers: 0..17"):
        known_shape("gemma-3-270m").sites("layers.99.mlp.neurons[5]")
    with pytest.raises(SiteError, match=r"Neuron 1536 is out of range .* \(1536 neurons: 0..1535\)"):
        known_shape("smollm2-135m-instruct").sites("layers.-1.mlp.neurons[1536]")
    assert known_shape("gemma-3-270m").sites("layers.-1.attn.z[3]")[0].layer == 17


BAD = [  # (arguments, what the message must say)
    (["neuron", "show", "gemma-3-270m", "99.5"], "Layer 99 is out of range for gemma-3-270m"),
    (["neuron", "show", "gemma-3-270m", "3.5000"], "Neuron 5000 is out of range"),
    (["neuron", "top", "smollm2-135m-instruct", "30.1"], "Layer 30 is out of range for smollm2-135m-instruct"),
    (["neuron", "record", "gemma-3-270m", "--layers", "3,40"], "Layer 40"),
    (["neuron", "record", "gemma-3-270m", "--layers", "3", "--neurons", "5,2048"], "Neuron 2048"),
    (["neuron", "record", "gemma-3-270m", "--neurons", "5,x"], "neuron indices like 5,17"),
    (["neuron", "correlate", "gemma-3-270m", "--data", "{file}", "--layer", "18"], "Layer 18"),
    (["neuron", "dose", "gemma-3-270m", "3.9999", "--prompts", "{file}", "--target", " x"], "Neuron 9999"),
    (["neuron", "ablate", "gemma-3-270m", "1.1,19.1", "--prompts", "{file}", "--target", " x"], "Layer 19"),
    (["atlas", "neuron", "gemma-3-270m", "18.0"], "Layer 18"),
    (["atlas", "build", "gemma-3-270m", "--layers", "0,18"], "Layer 18"),
    (["atlas", "build", "gemma-3-270m", "--layers", "0,a"], "Layers are written 'all', '3,6,9'"),
    (["atlas", "clamp", "smollm2-135m-instruct", "29.1536", "--prompt", "Hi"], "Neuron 1536"),
    (["vector", "make", "gemma-3-270m", "--data", "sentiment", "--layers", "4:40:4", "--out", "{tmp}/v"], "Layer 20"),
    (["vector", "verify", "gemma-3-270m", "{file}", "--layer", "-19"], "Layer -19"),
    (["vector", "apply", "gemma-3-270m", "{file}", "--layer", "18", "--prompt", "x"], "Layer 18"),
    (["fv", "eval", "gemma-3-270m", "{tmp}/v.safetensors", "--layers", "0:30"], "Layer 18"),
    (["fv", "make", "gemma-3-270m", "--task", "antonym", "--aie-layers", "16:20", "--out", "{tmp}/v"], "Layer 18"),
    (["inspect", "decompose", "gemma-3-270m", "x", "--target", " y", "--layer", "18"], "Layer 18"),
    (["inspect", "token-edit", "gemma-3-270m", "x", "--layer", "40", "--add", " y"], "Layer 40"),
    (["inspect", "patchscope", "gemma-3-270m", "--source", "x", "--source-layer", "-19"], "Layer -19"),
    (["generate", "gemma-3-270m", "x", "--clamp", "layers.5.mlp.neurons[4096]=3"], "Neuron 4096"),
    (["tour", "gemma-3-270m", "--only", "logit-lens"], "Unknown tour step(s) logit-lens; the steps are"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a[:2]) + f" {i}" for i, (a, _) in enumerate(BAD)])
def test_bad_layer_or_neuron_fails_before_any_model_load(args, message, no_load, tmp_path):
    f = tmp_path / "f.jsonl"
    f.write_text('{"text": "a", "label": 1}\n')
    args = [a.format(file=f, tmp=tmp_path) for a in args]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, (r.output, r.exception)
    assert "Error: Invalid value for" in r.output and message in r.output, r.output
    assert "Usage:" in r.output and not no_load


def test_unknown_task_fails_before_the_load_with_an_error_line(no_load, monkeypatch, capsys):
    """Through the real entry point: an LmscopeError is one `Error:` line on stderr, exit 1."""
    import sys

    from lmscope.cli.main import main

    monkeypatch.setattr(sys, "argv", ["lmscope", "fv", "make", "gemma-3-270m", "--task", "antonyms", "--out", "v"])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("Error: ") and "antonyms" in err and not no_load


def test_other_models_are_checked_after_loading(tiny_load):
    """No known shape: the library checks the loaded model, with the same message."""
    from lmscope.engine.errors import SiteError

    r = CliRunner().invoke(cli, ["neuron", "show", "tiny", "7.5", "--json"])
    assert r.exit_code == 1 and isinstance(r.exception, SiteError) and "Layer 7" in str(r.exception)


# ---- progress on stderr, stdout untouched ---------------------------------------------------

def test_stage_lines_on_stderr_and_pure_json_on_stdout(tiny_load, tmp_path):
    r = CliRunner().invoke(cli, ["neuron", "show", "tiny", "1.5", "--max-tokens", "200", "-k", "2", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["layer"] == 1 and d["neuron"] == 5
    lines = r.stderr.splitlines()
    assert lines[0] == "[1/3] loading tiny" and lines[1] == "[2/3] decoding neuron 1.5 through the LM head"
    assert lines[2].startswith("[3/3] recording layers.1.mlp.neurons[5] over up to 200 tokens of the shipped corpus")


def test_first_atlas_build_says_where_and_how_long(tiny_load, tmp_path):
    path = tmp_path / "tiny.sqlite"
    r = CliRunner().invoke(cli, ["atlas", "build", "tiny", "--out", str(path), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["path"] == str(path)
    err = r.stderr
    assert err.startswith("[1/2] loading tiny\n[2/2] building the atlas of tiny-llama\n")
    assert f"into {path}" in err and "the first chunk" in err and "decoding takes about" in err
    assert f"writing the SQLite file {path}" in err


def test_atlas_build_from_the_library_reports_through_notify(tmp_path):
    from lmscope.neurons.atlas import load_atlas

    lm, said = make_tiny("llama"), []
    with load_atlas(lm, path=tmp_path / "a.sqlite", notify=said.append) as a:
        assert a.path == tmp_path / "a.sqlite"
    assert "building it once" in said[0] and str(tmp_path / "a.sqlite") in said[0]
    assert any("decoding takes about" in s for s in said)
    with load_atlas(lm, path=tmp_path / "a.sqlite", notify=said.append):  # built: silent
        pass
    assert len(said) == 4


def test_gguf_conversion_shows_one_bar_with_stages(tmp_path, monkeypatch, capsys):
    """The conversion itself is stubbed (no GGUF file here); what is tested is the one bar,
    its stages, HF's own dequantisation bar routed into it, and the atomic output folder."""
    import transformers
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.tqdm
    hf = make_tiny("llama").hf

    class Tok:
        def save_pretrained(self, d):
            (d / "tokenizer.json").write_text("{}")

    def fake_model(*a, **k):
        for _ in gguf_utils.tqdm(range(5), desc="Converting and de-quantizing GGUF tensors..."):
            pass
        return hf

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: Tok())
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    out = tmp_path / "cache" / "m"
    M._convert_gguf(gguf, out)
    err = capsys.readouterr().err
    assert "converting m to safetensors (once)" in err and "3/3 stages" in err
    assert "dequantize weights (5/5 tensors)" in err and "read tokenizer" in err and "save safetensors" in err
    assert "Converting and de-quantizing" not in err  # HF's own bar is folded into ours
    assert gguf_utils.tqdm is original
    assert (out / "model.safetensors").is_file() and (out / "lmscope.json").is_file()
