"""Neuron atlas (LM-head decoding of every neuron) and clamping.

Tiny models: decoding equals a naive per-neuron computation, search finds a planted neuron,
atomic writes, wrong-model errors, model comparison under noise, exact clamp effects.
Real model (slow): whole-model decode of SmolLM2, and a concept neuron found through the atlas
raises its concept's next-token probability >= 10x, more than a random neuron of its layer.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import TinyTokenizer, make_tiny

import lmscope as ls
from lmscope.engine import norms
from lmscope.engine.arch import get_module
from lmscope.neurons import atlas_db
from lmscope.neurons.atlas import (
    AtlasConfig,
    build_atlas,
    compare_atlases,
    decode_layer,
    decode_model,
    decode_neuron,
    is_gated,
    perturb_mlp,
    to_token_space,
    topk_rows,
)
from lmscope.neurons.atlas_db import Atlas, normalize_token, query_variants
from lmscope.neurons.clamp import (
    ClampConfig,
    clamp_edits,
    clamp_experiment,
    concept_hits,
    natural_activation,
    random_controls,
)


def _naive(lm, layer: int, kind: str, k: int, neurons):
    """Per-neuron loop: (w centred for LayerNorm, times the final-norm gain) @ W_U, top-k."""
    g = norms.gain(get_module(lm.hf, lm.spec.final_norm), lm.spec.norm_kind)
    w_u = lm.weights.W_U.detach().float()
    mat = lm.weights.W_out(layer) if kind.startswith("out") else lm.weights.W_in(layer, kind.removeprefix("in_"))
    ids, vals = [], []
    for n in neurons:
        w = mat[n].detach().float()
        if lm.spec.norm_kind == "layer":
            w = w - w.mean()
        s = (w * g) @ w_u
        v, i = s.topk(k, largest=kind != "out_bottom")
        ids.append(i)
        vals.append(v)
    return torch.stack(ids), torch.stack(vals)


def test_decode_matches_naive(tiny):
    cfg = AtlasConfig(k=5, block=4)  # block 4 on a vocab of 128: the two-stage top-k path
    table = decode_model(tiny, cfg)
    expect = ("in_gate", "in_up", "out", "out_bottom") if is_gated(tiny) else ("in_up", "out", "out_bottom")
    assert table.kinds == expect
    assert table.flops == 2 * tiny.n_layers * (len(expect) - 1) * tiny.d_mlp * tiny.d_model * tiny.d_vocab
    for kind in expect:
        assert table.ids[kind].shape == (tiny.n_layers, tiny.d_mlp, 5)
        for layer in range(tiny.n_layers):
            sel = list(range(layer, tiny.d_mlp, 7))  # a spread of neurons keeps the loop short
            ids, vals = _naive(tiny, layer, kind, 5, sel)
            torch.testing.assert_close(table.scores[kind][layer, sel], vals, rtol=1e-5, atol=1e-6)
            assert torch.equal(table.ids[kind][layer, sel], ids)
    one = decode_neuron(tiny, -1, 7, k=5)
    assert (one["in_gate"] is None) == (not is_gated(tiny))
    for kind in expect:
        got = table.ids[kind][-1, 7].tolist()
        assert [t for t, _ in one[kind]] == [tiny.tokenizer.decode([i]) for i in got]
        torch.testing.assert_close(torch.tensor([s for _, s in one[kind]]), table.scores[kind][-1, 7],
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("v", [4096, 5000])  # with and without a tail that fills no block
def test_topk_rows_exact(largest, v):
    x = torch.randn(9, v, generator=torch.Generator().manual_seed(v))
    for block in (None, 16, 64):
        got_v, got_i = topk_rows(x, 7, largest=largest, block=block)
        want_v, want_i = x.topk(7, dim=1, largest=largest)
        assert torch.equal(got_v, want_v) and torch.equal(got_i, want_i)


def test_decode_neuron_validates():
    lm = make_tiny("llama")
    with pytest.raises(ls.SiteError):
        decode_neuron(lm, 5, 0)
    with pytest.raises(ls.SiteError):
        decode_neuron(lm, 0, lm.d_mlp)


def test_normalize_and_variants():
    assert normalize_token(" Dog") == normalize_token("▁Dog") == normalize_token("ĠDOG") == "dog"
    assert {"dog", "dogs"} <= set(query_variants("Dog"))
    assert "dog" in query_variants("dogs")
    assert "puppy" in query_variants("puppies") and "puppies" in query_variants("puppy")


class WordTokenizer(TinyTokenizer):
    """Distinct texts per token id; token 77 is '▁Dog' (SentencePiece style)."""

    def decode(self, ids, skip_special_tokens=False):
        return "".join("▁Dog" if int(i) == 77 else f"w{int(i)}x" for i in ids)


def _planted(layer=1, neuron=11, token=77, scale=50.0):
    lm = make_tiny("llama")
    lm.tokenizer = WordTokenizer()
    g = norms.gain(get_module(lm.hf, lm.spec.final_norm), lm.spec.norm_kind)
    with torch.no_grad():
        # down column = the token's unembedding direction, undone through the final-norm gain
        lm.weights.W_out(layer)[neuron] = scale * lm.weights.W_U[:, token] / g
    return lm


def test_search_finds_planted_neuron(tmp_path):
    lm = _planted()
    with build_atlas(lm, AtlasConfig(k=5), path=tmp_path / "a.sqlite") as a:
        for query in ("dog", "Dogs", "DOG"):
            hits = a.search(query, kind="out")
            assert (hits[0]["layer"], hits[0]["neuron"], hits[0]["kind"], hits[0]["rank"]) == (1, 11, "out", 0)
            assert hits[0]["token"] == "▁Dog"
        assert a.search("dog", kind="out_bottom", limit=1000) == [] or all(
            (h["layer"], h["neuron"]) != (1, 11) for h in a.search("dog", kind="out_bottom", limit=1000))
        assert not a.search("cat")
        assert [t for t, _ in a.neuron(1, 11)["out"]][0] == "▁Dog"
        assert a.top1("out").shape == (lm.n_layers, lm.d_mlp)
        assert int(a.top1("out")[1, 11]) == 77
        rows = a._con.execute("SELECT COUNT(*) FROM neurons WHERE kind='out'").fetchone()[0]
        assert rows == lm.n_layers * lm.d_mlp * 5


def test_atomic_write_and_wrong_model(tmp_path, monkeypatch):
    lm = make_tiny("llama")
    path = tmp_path / "atlas.sqlite"
    build_atlas(lm, AtlasConfig(k=3, kinds=("out",)), path=path).close()
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(atlas_db, "_decode_ids", boom)
    with pytest.raises(RuntimeError):
        build_atlas(lm, AtlasConfig(k=3, kinds=("out",)), path=path)
    assert path.read_bytes() == before  # the old atlas is untouched
    assert os.listdir(tmp_path) == ["atlas.sqlite"]  # no temp file left behind
    monkeypatch.undo()

    with pytest.raises(ls.ArtifactError, match="built for"):
        Atlas.open(path, model=make_tiny("qwen2"))
    other = make_tiny("llama", seed=1)  # same name, other weights
    with pytest.raises(ls.ArtifactError, match="other weights"):
        Atlas.open(path, model=other)
    Atlas.open(path, model=lm).close()
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ls.ArtifactError):
        Atlas.open(bad)
    with pytest.raises(ls.ArtifactError):
        Atlas.open(tmp_path / "missing.sqlite")


def test_compare_atlases_falls_with_noise(tmp_path):
    lm = make_tiny("llama")
    before = lm.weights.W_out(0).detach().clone()
    same = compare_atlases(lm, lm)
    assert all(r["overall"] == 1.0 for r in same["kinds"].values())
    assert set(same["kinds"]) == {"in_gate", "in_up", "out"}
    shares = []
    for noise in (0.01, 0.3, 3.0):
        r = compare_atlases(lm, perturb_mlp(lm, noise=noise))
        shares.append(r["kinds"]["out"]["overall"])
        assert len(r["kinds"]["in_up"]["per_layer"]) == lm.n_layers
    assert shares[0] > 0.9 and shares[0] > shares[1] > shares[2] and shares[2] < 0.3
    assert torch.equal(lm.weights.W_out(0), before)  # the original is not touched
    # the same numbers from two SQLite atlases
    noisy = perturb_mlp(lm, noise=0.3)
    pa, pb = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    build_atlas(lm, AtlasConfig(k=2), path=pa).close()
    build_atlas(noisy, AtlasConfig(k=2), path=pb).close()
    from_db = compare_atlases(pa, pb)
    from_models = compare_atlases(lm, noisy)
    for kind in ("in_gate", "in_up", "out"):
        assert from_db["kinds"][kind] == from_models["kinds"][kind]
    with pytest.raises(ls.InputError, match="d_mlp differs"):
        compare_atlases(lm, _wider(), kinds=("out",))


def _wider():
    from conftest import TINY
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("llama", **{**TINY, "intermediate_size": 64})
    return ls.Model(AutoModelForCausalLM.from_config(cfg).eval(), TinyTokenizer(), name="tiny-narrow")


# ---- clamping --------------------------------------------------------------------------------

def test_parse_neurons():
    from lmscope.engine.grammar import parse_neurons

    assert parse_neurons("12.345, -1.7") == [(12, 345), (-1, 7)]
    with pytest.raises(ls.SiteError):
        parse_neurons("12:345")


def test_clamp_sets_neurons_everywhere(tiny):
    edits = clamp_edits(tiny, [(1, 3), (1, 5), (-1, 2)], [4.0, -2.0, 7.5])
    assert [str(e.site) for e in edits] == ["layers.1.mlp.neurons[3,5]", f"layers.{tiny.n_layers - 1}.mlp.neurons[2]"]
    gen = tiny.generate(["abc", "hello"], edits=edits, max_new_tokens=4,
                        capture=["layers.1.mlp.neurons[3,5]", "layers.1.mlp.neurons[4]"])
    got = gen.cache["layers.1.mlp.neurons[3,5]"]  # [batch, prompt + new - 1, 2]
    mask = torch.cat([gen.batch.attention_mask, torch.ones_like(gen.tokens)], 1)[:, : got.shape[1]].bool()
    assert got.shape[1] > gen.batch.input_ids.shape[1]  # generated positions were captured too
    torch.testing.assert_close(got[mask], torch.tensor([4.0, -2.0]).expand(int(mask.sum()), 2))
    free = gen.cache["layers.1.mlp.neurons[4]"][mask]
    assert not torch.allclose(free, torch.full_like(free, 4.0))  # a neighbour is untouched
    # a clamp changes the output; no clamp reproduces the baseline
    base = tiny.run("abc").logits
    assert torch.equal(tiny.run("abc", edits=[]).logits, base)
    assert not torch.allclose(tiny.run("abc", edits=edits).logits, base)


def test_natural_activation_and_controls():
    lm = make_tiny("llama")
    stats = natural_activation(lm, [(1, 3), (2, 8)], ["abc", "hello world"])
    res = lm.run(["abc", "hello world"], capture=["layers.1.mlp.neurons"], logits=None)
    acts = res.cache["layers.1.mlp.neurons"][..., 3][res.batch.attention_mask.bool()]
    assert stats[0]["max"] == pytest.approx(float(acts.max()))
    assert stats[0]["min"] == pytest.approx(float(acts.min()))
    ctl = random_controls(lm, [(1, 3), (1, 4)], seed=3)
    assert [c[0] for c in ctl] == [1, 1] and not set(ctl) & {(1, 3), (1, 4)} and len(set(ctl)) == 2
    assert ctl == random_controls(lm, [(1, 3), (1, 4)], seed=3)
    assert concept_hits(["A Dog ran", "hotdogs", "cats!"], ["dog", "cat", "cats"]) == [True, False, True]


def test_clamp_experiment_tiny():
    lm = make_tiny("llama")
    rep = clamp_experiment(lm, [(2, 5)], value=50.0, prompts=["abc", "de"], keywords=["a"], concept_words=["a"],
                           config=ClampConfig(max_new_tokens=3, chat=False))
    assert set(rep.arms) == {"baseline", "clamped", "control"}
    assert rep.arms["control"].neurons[0][0] == 2 and rep.arms["control"].neurons != rep.arms["clamped"].neurons
    assert all(len(a.texts) == 2 for a in rep.arms.values())
    assert rep.ratio("baseline") == 1.0
    d = rep.to_dict()
    assert d["arms"]["clamped"]["values"] == [50.0]


# ---- real model ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm_out_atlas(smollm, tmp_path_factory):
    """The output direction of every neuron of two SmolLM2 layers (2 x 1536), as a searchable
    atlas (the whole model is timed in benchmarks/bench_atlas.py, not here: minutes on 2 cores)."""
    path = tmp_path_factory.mktemp("atlas") / "smollm.sqlite"
    return build_atlas(smollm, AtlasConfig(k=10, kinds=("out",), layers=(0, 29)), path=path)


@pytest.mark.slow
def test_stored_atlas_equals_direct_decoding_smollm(smollm, smollm_out_atlas):
    a = smollm_out_atlas
    n = a._con.execute("SELECT COUNT(*) FROM neurons WHERE kind='out' AND rank=0").fetchone()[0]
    assert n == 2 * smollm.d_mlp
    assert a.meta["layers"] == [0, 29]
    for layer, neuron in ((0, 0), (29, 900), (29, 1535)):
        direct = decode_neuron(smollm, layer, neuron, k=10)["out"]
        stored = a.neuron(layer, neuron)["out"]
        assert [t for t, _ in stored] == [t for t, _ in direct]
        assert [s for _, s in stored] == pytest.approx([s for _, s in direct], rel=1e-4, abs=1e-4)


@pytest.mark.slow
def test_clamp_concept_neuron_beats_control(smollm, smollm_out_atlas):
    """Davies: a neuron whose output decodes to 'dog', clamped high, raises p(dog) >= 10x;
    a random neuron of the same layer clamped to the same value does much less."""
    prompts = ["What is your favourite animal?", "Tell me about your neighbours."]
    hits = [h for h in smollm_out_atlas.search("dog", kind="out", limit=5) if h["rank"] == 0]
    assert hits, "no neuron of SmolLM2's last layer has 'dog' as its top output token"
    neuron = (hits[0]["layer"], hits[0]["neuron"])  # the atlas's best candidate
    nat = natural_activation(smollm, [neuron], prompts, chat=True)[0]
    words = ["dog", "dogs", "puppy"]
    rep = clamp_experiment(smollm, [neuron], value=10 * max(nat["max"], 0.1), prompts=prompts,
                           concept_words=words, generate=False, config=ClampConfig(chat=True))
    assert rep.ratio("clamped") >= 10
    assert rep.ratio("clamped") > 3 * rep.ratio("control")
    # one short greedy generation: the clamp changes the text (the concept rate is measured in the benchmark)
    gen = clamp_experiment(smollm, [neuron], value=rep.arms["clamped"].values, prompts=prompts[:1],
                           keywords=["dog", "dogs", "cat", "cats", "puppy"], control=False,
                           config=ClampConfig(max_new_tokens=12, chat=True))
    assert gen.arms["clamped"].texts != gen.arms["baseline"].texts
    assert gen.arms["clamped"].concept_rate >= gen.arms["baseline"].concept_rate


def test_plots_write_png(tmp_path):
    from lmscope.plots.neuron_plots import plot_atlas_comparison, plot_clamp

    lm = make_tiny("llama")
    c = plot_atlas_comparison(compare_atlases(lm, perturb_mlp(lm, noise=0.3)), tmp_path / "c.png")
    rep = clamp_experiment(lm, [(1, 2)], value=9.0, prompts=["ab"], keywords=["a"], generate=True,
                           config=ClampConfig(max_new_tokens=2, chat=False))
    k = plot_clamp(rep, tmp_path / "k.png")
    assert (c, k) == (tmp_path / "c.png", tmp_path / "k.png")
    assert c.read_bytes()[:4] == b"\x89PNG" == k.read_bytes()[:4]


@pytest.mark.slow
def test_cli_search_and_neuron(smollm_out_atlas):
    import json

    from click.testing import CliRunner

    from lmscope.cli.main import cli

    r = CliRunner().invoke(cli, ["atlas", "search", "smollm2-135m-instruct", "dogs", "--kind", "out",
                                 "--atlas", str(smollm_out_atlas.path), "--limit", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["results"] and {"layer", "neuron", "kind", "rank", "token", "score"} <= set(out["results"][0])
    top = out["results"][0]
    r = CliRunner().invoke(cli, ["atlas", "neuron", "smollm2-135m-instruct", f"{top['layer']}.{top['neuron']}",
                                 "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["out"][0]["token"] == top["top"][0]


def test_cli_compare_with_a_perturbed_copy(monkeypatch):
    """`lmscope atlas compare MODEL --perturb NOISE --json` (model loading stubbed with a tiny model)."""
    import json

    from click.testing import CliRunner

    import lmscope.cli.atlas as cli_atlas
    from lmscope.cli.main import cli

    monkeypatch.setattr(cli_atlas, "load_model", lambda name, device="cpu", dtype="float32": make_tiny("llama"))
    shares = []
    for noise in ("0", "3"):
        r = CliRunner().invoke(cli, ["atlas", "compare", "tiny", "--perturb", noise, "--json"])
        assert r.exit_code == 0, r.output
        d = json.loads(r.stdout)
        shares.append(d["kinds"]["out"]["overall"])
    assert shares[0] == 1.0 > shares[1]
    r = CliRunner().invoke(cli, ["atlas", "compare", "tiny", "--json"])
    assert r.exit_code == 2  # neither MODEL_B nor --perturb


def test_search_on_a_built_atlas_reads_only_the_file(monkeypatch, tmp_path):
    """Once built, `atlas search` answers from SQLite: no model load, no torch import needed."""
    import json
    import subprocess
    import sys

    from click.testing import CliRunner

    from lmscope.cli.main import cli
    from lmscope.engine import loading

    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path))
    model = make_tiny("llama")
    build_atlas(model, AtlasConfig(k=5), path=atlas_db.default_path(model)).close()
    monkeypatch.setattr(loading, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    word = atlas_db.normalize_token(model.tokenizer.decode([7]))
    res = CliRunner().invoke(cli, ["atlas", "search", model.name, word, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["model"] == model.name
    code = ("import sys; from lmscope.neurons.atlas_db import Atlas, default_path; "
            f"a = Atlas.open(default_path({model.name!r})); a.search({word!r}); "
            "assert 'torch' not in sys.modules, 'searching imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "LMSCOPE_CACHE": str(tmp_path)})


# ---- the approximate search ------------------------------------------------------------------

def _recall(exact, approx) -> float:
    return (exact[..., :, None] == approx[..., None, :]).any(-1).float().mean().item()


def test_approx_with_full_rank_equals_exact_and_keeps_exact_scores(tiny):
    exact = decode_model(tiny, AtlasConfig(k=5))
    full = decode_model(tiny, AtlasConfig(k=5, search="approx", rank=tiny.d_model, candidates=20))
    assert full.search == {"method": "approx", "rank": tiny.d_model, "candidates": 20}
    for kind in exact.kinds:
        assert torch.equal(full.ids[kind], exact.ids[kind]), kind
        torch.testing.assert_close(full.scores[kind], exact.scores[kind], rtol=1e-5, atol=1e-5)
    low = decode_model(tiny, AtlasConfig(k=5, search="approx", rank=1, candidates=5))
    assert _recall(exact.ids["out"], low.ids["out"]) < 0.9  # one direction is a real approximation
    for layer in (0, tiny.n_layers - 1):  # ... whose kept scores are still the exact scores of its tokens
        direct = to_token_space(tiny, tiny.weights.W_out(layer)) @ tiny.weights.W_U.detach().float()
        torch.testing.assert_close(low.scores["out"][layer], direct.gather(1, low.ids["out"][layer]),
                                   rtol=1e-5, atol=1e-5)


def test_approx_config_is_validated():
    with pytest.raises(ls.InputError, match="search"):
        AtlasConfig(search="fast")
    with pytest.raises(ls.InputError, match="candidates >= k"):
        AtlasConfig(k=20, search="approx", candidates=10)


@pytest.mark.slow
def test_approx_recall_on_gemma(gemma, tmp_path):
    layer = gemma.n_layers // 2
    exact = decode_layer(gemma, layer, AtlasConfig(k=10, kinds=("in_up", "out")))
    approx = decode_layer(gemma, layer, AtlasConfig(k=10, kinds=("in_up", "out"), search="approx"))
    for kind in ("in_up", "out"):
        assert _recall(exact[kind][0], approx[kind][0]) >= 0.95, kind


def test_half_search_keeps_exact_scores_and_finds_the_exact_tokens(tiny):
    exact = decode_model(tiny, AtlasConfig(k=5))
    half = decode_model(tiny, AtlasConfig(k=5, search="half", candidates=20))
    assert half.search == {"method": "half", "dtype": "bfloat16", "candidates": 20}
    assert _recall(exact.ids["out"], half.ids["out"]) >= 0.95
    w_u = tiny.weights.W_U.detach().float()
    for layer in (0, tiny.n_layers - 1):  # whatever it found, it kept the float32 scores of those tokens
        direct = to_token_space(tiny, tiny.weights.W_out(layer)) @ w_u
        torch.testing.assert_close(half.scores["out"][layer], direct.gather(1, half.ids["out"][layer]),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(half.scores["out_bottom"][layer],
                                   direct.gather(1, half.ids["out_bottom"][layer]), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_half_search_recall_on_smollm(smollm):
    """The bfloat16 candidate stage loses no token of the exact top-10 on a real model (measured:
    recall 1.0 on both embedded models, top and bottom, from 16 candidates on)."""
    layer = smollm.n_layers // 2
    cfg = {"k": 10, "kinds": ("in_up", "out", "out_bottom")}
    exact = decode_layer(smollm, layer, AtlasConfig(**cfg))
    half = decode_layer(smollm, layer, AtlasConfig(**cfg, search="half", candidates=64))
    for kind in cfg["kinds"]:
        assert _recall(exact[kind][0], half[kind][0]) >= 0.99, kind
        torch.testing.assert_close(half[kind][1][:, 0], exact[kind][1][:, 0], rtol=1e-5, atol=1e-5)


def test_cli_build_with_half_search_and_a_bad_search(tiny_load, tmp_path):
    """`lmscope atlas build --search half` records its method; an unknown search is a usage error
    that lists the choices."""
    import json

    from click.testing import CliRunner

    from lmscope.cli.main import cli

    r = CliRunner().invoke(cli, ["atlas", "build", "tiny", "--k", "3", "--out", str(tmp_path / "a.sqlite"),
                                 "--search", "half", "--candidates", "12", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["search"] == {"method": "half", "dtype": "bfloat16", "candidates": 12}
    r = CliRunner().invoke(cli, ["atlas", "build", "tiny", "--search", "fp8"])
    assert r.exit_code == 2
    assert "exact" in r.output and "approx" in r.output and "half" in r.output
