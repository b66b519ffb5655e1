"""Steering vectors: exact tests on tiny random models, direction tests (with random controls)
on the real embedded models (marked slow)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny

from lmscope.datasets.contrast import (
    ContrastSet,
    from_completions,
    from_pairs,
    from_sets,
    load_contrast,
    load_texts,
)
from lmscope.engine.errors import ArtifactError, InputError, SiteError
from lmscope.engine.hooks import hook_count
from lmscope.engine.interventions import Add
from lmscope.vectors import steering as st
from lmscope.vectors.vector import (
    ModelStamp,
    Vector,
    extract,
    make_vector,
    parse_expression,
    separation,
)

PAIRS = [("good day to you", "bad day"), ("I love it", "I hate it!"), ("sunny and warm", "cold rain"),
         ("happy cat", "sad old dog"), ("joy", "grief and pain")]


@pytest.fixture(scope="module")
def llama():
    return make_tiny("llama")


@pytest.fixture(scope="module")
def gemma_tiny():
    return make_tiny("gemma3_text")


def _last(lm, texts, layer):
    res = lm.run(list(texts), capture=[f"layers.{layer}.resid_post"], positions="last", logits=None)
    return res.cache[f"layers.{layer}.resid_post"].float()


# ---- datasets ---------------------------------------------------------------------------------
def test_shipped_datasets_load_in_their_formats():
    assert load_contrast("refusal").format == "pairs"
    assert load_contrast("refusal").name == "refusal_prompts"
    assert load_contrast("refusal_completions").format == "completions"
    syc = load_contrast("sycophancy")
    assert syc.format == "completions" and len(syc) >= 40 and syc.prompts is not None
    for name in ("sentiment", "truthfulness", "weddings"):
        d = load_contrast(name)
        assert d.format == "pairs" and len(d) >= 40
    assert len(load_texts("neutral_prompts")) >= 32


def test_user_jsonl_formats_and_errors(tmp_path):
    p = tmp_path / "sets.jsonl"
    p.write_text('{"text": "a b", "label": "positive"}\n\n{"text": "c", "label": 0}\n{"text": "d", "label": "pos"}\n')
    d = load_contrast(p)
    assert d.format == "sets" and d.positive == ("a b", "d") and d.negative == ("c",)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"positive": "x", "negative": "y"}\n{"positive": "z"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: missing field 'negative'"):
        load_contrast(bad)
    bad.write_text('{"prompt": "q", "positive": "x", "negative": "y"}\n{"prompt": "q", "positive": "x", "negative": ""}\n')
    with pytest.raises(InputError, match=r":2: field 'negative' must be a non-empty string"):
        load_contrast(bad)
    bad.write_text('{"positive": "x", "negative": "y"}\n{"positive": "x", \n')
    with pytest.raises(InputError, match=r":2: not valid JSON"):
        load_contrast(bad)
    bad.write_text('{"foo": 1}\n')
    with pytest.raises(InputError, match="cannot tell the format"):
        load_contrast(bad)
    bad.write_text('["a", "b"]\n')
    with pytest.raises(InputError, match="expected a JSON object"):
        load_contrast(bad)
    with pytest.raises(InputError, match="No dataset"):
        load_contrast(tmp_path / "missing.jsonl")


def test_split_is_seeded_disjoint_and_hashes_are_stable():
    d = load_contrast("sentiment")
    tr, te = d.split(0.25, seed=3)
    tr2, te2 = d.split(0.25, seed=3)
    assert tr == tr2 and te == te2
    assert len(te) == round(len(d) * 0.25) and len(tr) + len(te) == len(d)
    assert not set(tr.positive) & set(te.positive)
    assert d.split(0.25, seed=4)[1] != te
    assert d.sha256() == load_contrast("sentiment").sha256() and tr.sha256() != d.sha256()
    s = from_sets(["a", "b", "c", "d"], ["e", "f"])
    tr, te = s.split(0.5, seed=0)
    assert len(tr.positive) == 2 and len(te.negative) == 1
    with pytest.raises(InputError):
        ContrastSet("x", "pairs", ("a",), ("b", "c"))


# ---- extraction ---------------------------------------------------------------------------------
def test_mean_diff_equals_manual_difference_of_means(tiny):
    data = from_pairs(PAIRS)
    v = extract(tiny, data)
    assert v.layers == list(range(tiny.n_layers)) and v.method == "mean-diff"
    for layer in range(tiny.n_layers):
        manual = _last(tiny, data.positive, layer).mean(0) - _last(tiny, data.negative, layer).mean(0)
        torch.testing.assert_close(v[layer], manual, rtol=1e-5, atol=1e-5)
        norms = torch.cat([_last(tiny, data.positive, layer), _last(tiny, data.negative, layer)]).norm(dim=-1)
        assert v.resid_norms[layer] == pytest.approx(float(norms.mean()), rel=1e-5)


def test_unpaired_sets_and_layer_subset(llama):
    pos, neg = ["abc", "hello there", "x"], ["qq", "zz top"]
    v = extract(llama, from_sets(pos, neg), layers=(1, -1))
    assert v.layers == [1, 2]
    torch.testing.assert_close(v[1], _last(llama, pos, 1).mean(0) - _last(llama, neg, 1).mean(0), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="pca needs paired data"):
        extract(llama, from_sets(pos, neg), method="pca")


def test_mean_position_over_completion_tokens(llama):
    data = from_completions([("Question one", "yes", "no"), ("Another question", "sure thing", "nah")])
    v = extract(llama, data, position="mean", layers=(1,))
    site = "layers.1.resid_post"
    means = []
    for texts in (data.positive, data.negative):
        rows = []
        for q, c in zip(data.prompts, texts, strict=True):
            full = q + "\n" + c  # the non-chat join: completion on a new line
            res = llama.run(full, capture=[site], logits=None)
            rows.append(res.cache[site][0, -len(c):].float().mean(0))  # tiny tokenizer: 1 char = 1 token
        means.append(torch.stack(rows).mean(0))
    torch.testing.assert_close(v[1], means[0] - means[1], rtol=1e-5, atol=1e-5)


def test_balance_weights_each_answer_pair_equally(llama):
    items = [("q1", "(A", "(B"), ("q two", "(A", "(B"), ("q three", "(A", "(B"), ("q4", "(B", "(A")]
    data = from_completions(items)
    bal = extract(llama, data, layers=(1,))  # balanced by default for completions
    flat = extract(llama, data, layers=(1,), balance=False)
    d = [_last(llama, [q + "\n" + p], 1)[0] - _last(llama, [q + "\n" + n], 1)[0] for q, p, n in items]
    torch.testing.assert_close(bal[1], 0.5 * (torch.stack(d[:3]).mean(0) + d[3]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flat[1], torch.stack(d).mean(0), rtol=1e-5, atol=1e-5)
    assert bal.meta["balance"] is True and flat.meta["balance"] is False
    with pytest.raises(InputError, match="balance applies"):
        extract(llama, from_pairs(PAIRS), balance=True)


def test_pca_is_deterministic_with_sign_convention(gemma_tiny):
    data = from_pairs(PAIRS)
    a = extract(gemma_tiny, data, method="pca")
    b = extract(gemma_tiny, data, method="pca")
    for layer in a.layers:
        assert torch.equal(a[layer], b[layer])
        diff = _last(gemma_tiny, data.positive, layer) - _last(gemma_tiny, data.negative, layer)  # [n, d]
        u = a[layer] / a[layer].norm()
        proj = diff @ u
        assert float(proj.mean()) > 0  # positives project higher
        assert float(a[layer].norm()) == pytest.approx(float(proj.mean()), rel=1e-4)
        top = torch.linalg.eigh(diff.T.double() @ diff.double()).eigenvectors[:, -1].float()
        assert abs(float(u @ top)) == pytest.approx(1.0, abs=1e-4)  # first uncentred PC


def test_make_vector_records_split_and_separation(llama):
    data = from_pairs([(f"yes {i} good", f"no {i}") for i in range(12)])
    v, test = make_vector(llama, data, held_out=0.25, seed=1)
    assert v.meta["split"] == {"held_out": 0.25, "seed": 1, "n_train": 9, "n_test": 3, "full_sha256": data.sha256()}
    assert v.meta["dataset_sha256"] == data.split(0.25, 1)[0].sha256()
    sep = v.meta["evaluation"]["separation"]
    assert set(sep) == {"0", "1", "2"} and all(0.0 <= s["auc"] <= 1.0 for s in sep.values())
    # the same numbers when recomputed directly
    assert separation(llama, v, test)[1]["auc"] == sep["1"]["auc"]


# ---- applying -----------------------------------------------------------------------------------
def test_add_is_exact_at_target_and_untouched_before(tiny):
    v = extract(tiny, from_pairs(PAIRS))
    prompts = ["some text here", "hi"]
    layer = 1
    sites = [f"layers.{i}.resid_post" for i in range(tiny.n_layers)]
    base = tiny.run(prompts, capture=sites, logits=None)
    edits = st.steer_edits(v, layer, 0.5)
    scale = 0.5 * v.resid_norms[layer] / float(v[layer].norm())
    assert edits[0].scale == pytest.approx(scale) and st.raw_scale(v, layer, 0.5) == pytest.approx(scale)
    out = tiny.run(prompts, capture=sites, edits=edits, logits=None)
    mask = base.batch.attention_mask.bool()
    got = out.cache[sites[layer]][mask]
    want = base.cache[sites[layer]][mask] + scale * v[layer]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.cache[sites[0]], base.cache[sites[0]])
    # subtract is the negative scale
    assert st.steer_edits(v, layer, 0.5, mode="subtract")[0].scale == pytest.approx(-scale)
    assert st.steer_edits(v, layer, 2.0, relative=False)[0].scale == 2.0


def test_ablation_leaves_no_component_anywhere(tiny):
    v = extract(tiny, from_pairs(PAIRS))
    u = v[1] / v[1].norm()
    kinds = ["resid_pre", "attn_out", "mlp_out", "resid_post"]
    sites = [f"layers.{i}.{k}" for i in range(tiny.n_layers) for k in kinds]
    edits = st.steer_edits(v, 1, mode="ablate")
    assert len(edits) == 3 * tiny.n_layers
    prompts = ["abc def", "x"]
    base = tiny.run(prompts, capture=sites, logits=None)
    out = tiny.run(prompts, capture=sites, edits=edits, logits=None)
    mask = out.batch.attention_mask.bool()
    for s in sites:
        comp = (out.cache[s][mask].float() @ u).abs().max()
        scale = out.cache[s][mask].float().norm(dim=-1).max()
        assert float(comp) <= 1e-4 * float(scale) + 1e-5, s
    base_comp = max(float((base.cache[s][mask].float() @ u).abs().max()) for s in sites)
    assert base_comp > 1e-2  # the test can fail: without ablation there is a component


def test_generate_with_edits_changes_text_and_removes_hooks(llama):
    v = extract(llama, from_pairs(PAIRS))
    n_hooks = hook_count(llama.hf)
    base = llama.generate(["hello"], max_new_tokens=6)
    steered = llama.generate(["hello"], max_new_tokens=6, edits=st.steer_edits(v, 1, 4.0))
    ablated = llama.generate(["hello"], max_new_tokens=6, edits=st.steer_edits(v, 1, mode="ablate"))
    assert hook_count(llama.hf) == n_hooks
    assert not torch.equal(base.tokens, steered.tokens) or not torch.equal(base.tokens, ablated.tokens)


def test_random_vector_is_seeded_with_equal_norm(llama):
    v = extract(llama, from_pairs(PAIRS))
    r0, r0b, r1 = st.random_vector(v, 1, 0), st.random_vector(v, 1, 0), st.random_vector(v, 1, 1)
    assert torch.equal(r0[1], r0b[1]) and not torch.equal(r0[1], r1[1])
    assert float(r0[1].norm()) == pytest.approx(float(v[1].norm()), rel=1e-5)
    assert st.raw_scale(r0, 1, 0.5) == pytest.approx(st.raw_scale(v, 1, 0.5), rel=1e-5)


# ---- algebra ------------------------------------------------------------------------------------
def test_vector_algebra_identities(llama):
    a = extract(llama, from_pairs(PAIRS))
    b = extract(llama, from_pairs(PAIRS[::-1][:3]))
    for layer in a.layers:
        torch.testing.assert_close(((a + b) - b)[layer], a[layer])
        torch.testing.assert_close((2 * a)[layer], (a + a)[layer])
        torch.testing.assert_close((-a)[layer], (a * -1)[layer])
        torch.testing.assert_close((a / 2)[layer], 0.5 * a[layer])
        torch.testing.assert_close(sum([a, b])[layer], a[layer] + b[layer])
    assert all(n == pytest.approx(1.0) for n in a.normalize().norm().values())
    assert all(c == pytest.approx(1.0, abs=1e-6) for c in a.cosine(3 * a).values())
    assert all(c == pytest.approx(-1.0, abs=1e-6) for c in a.cosine(-a).values())
    assert a.norm()[1] == pytest.approx(float(a[1].norm()))
    one = a.at(-1)
    assert one.layers == [2] and torch.equal(one[2], a[2]) and one.resid_norms[2] == a.resid_norms[2]
    e = one.edit(scale=3.0, positions="last")
    assert isinstance(e, Add) and e.site == "layers.2.resid_post" and e.scale == 3.0 and e.positions == "last"
    with pytest.raises(InputError, match="different layers"):
        a + one
    with pytest.raises(InputError, match="no layer"):
        one[1]
    with pytest.raises(SiteError):
        a[7]


def test_algebra_refuses_mismatched_models_widths_and_sites(llama):
    a = extract(llama, from_pairs(PAIRS), layers=(1,))
    other = Vector({1: torch.ones(64)}, model=ModelStamp("other-model", 64, 3))
    wide = Vector({1: torch.ones(32)}, model=ModelStamp("tiny-llama", 32, 3))
    pre = Vector({1: torch.ones(64)}, model=a.model, site="resid_pre")
    with pytest.raises(InputError, match="different models"):
        a + other
    with pytest.raises(InputError, match="different widths"):
        a - wide
    with pytest.raises(InputError, match="resid_pre"):
        a.cosine(pre)
    with pytest.raises(InputError, match="shape"):
        Vector({1: torch.ones(5)}, model=a.model)
    with pytest.raises(InputError, match="NaN"):
        Vector({1: torch.full((64,), float("nan"))}, model=a.model)


def test_top_tokens_is_the_unembedding_of_the_direction(llama):
    from lmscope.engine.readout import unembed

    v = extract(llama, from_pairs(PAIRS))
    out = v.top_tokens(llama, 1, k=4)
    logits = unembed(llama, v[1]).detach().float()
    assert [r["id"] for r in out["top"]] == logits.topk(4).indices.tolist()
    assert [r["id"] for r in out["bottom"]] == (-logits).topk(4).indices.tolist()
    assert out["top"][0]["logit"] == pytest.approx(float(logits.max()), rel=1e-5)


def test_parse_expression():
    assert parse_expression(["a.st", "+", "0.5*b.st", "-", "c.st"]) == [(1, 1, "a.st"), (1, 0.5, "b.st"), (-1, 1, "c.st")]
    assert parse_expression(["-", "a"]) == [(-1, 1, "a")]
    for bad in (["a", "b"], ["a", "+"], ["a", "+", "-", "b"], ["x*a"]):
        with pytest.raises(InputError):
            parse_expression(bad)


# ---- artifacts ----------------------------------------------------------------------------------
def test_artifact_round_trip_and_model_checks(tmp_path, llama, gemma_tiny):
    from lmscope.cli.core import _vector_from_artifact

    v, _ = make_vector(llama, from_pairs([(f"yes {i}", f"no {i}") for i in range(8)]))
    path = v.save(tmp_path / "v.safetensors")
    side = json.loads(open(path + ".json").read())
    assert side["kind"] == "vector" and side["model"] == "tiny-llama" and side["layers"] == [0, 1, 2]
    assert side["method"] == "mean-diff" and side["site"] == "resid_post" and len(side["dataset_sha256"]) == 64
    assert "separation" in side["evaluation"] and side["split"]["seed"] == 0
    w = Vector.load(path, model=llama)
    assert w.layers == v.layers and all(torch.equal(w[k], v[k]) for k in v.layers)
    assert w.resid_norms == pytest.approx(v.resid_norms) and w.meta["dataset_sha256"] == v.meta["dataset_sha256"]
    assert Vector.load(path).model.name == "tiny-llama"  # without a model: no check, stamp from the sidecar
    with pytest.raises(ArtifactError, match="not 'tiny-gemma3_text'"):
        Vector.load(path, model=gemma_tiny)  # same width, other model
    wide = make_tiny("gpt2")
    wide.d_model = 32  # pretend another width
    with pytest.raises(ArtifactError, match="d_model"):
        Vector.load(path, model=wide)
    # the core CLI's `generate --add-vector FILE --layer L` reads the same file
    t, layer = _vector_from_artifact(path, 1, llama)
    assert layer == 1 and torch.equal(t, v[1])
    one = v.at(2).save(tmp_path / "one.safetensors")
    t, layer = _vector_from_artifact(one, None, llama)
    assert layer == 2 and torch.equal(t, v[2])


def test_algebra_result_saves_without_a_model(tmp_path, llama):
    v = extract(llama, from_pairs(PAIRS))
    w = Vector.load(v.save(tmp_path / "a.safetensors")) - 0.5 * Vector.load(v.save(tmp_path / "b.safetensors"))
    back = Vector.load(w.save(tmp_path / "c.safetensors"), model=llama)
    assert back.method == "algebra" and torch.allclose(back[1], 0.5 * v[1], atol=1e-6)
    assert back.resid_norms  # carried over, so relative coefficients still work


def test_cli_info_and_algebra(tmp_path, llama):
    from click.testing import CliRunner

    from lmscope.cli.main import cli

    v = extract(llama, from_pairs(PAIRS))
    a, b = v.save(tmp_path / "a.safetensors"), (2 * v).save(tmp_path / "b.safetensors")
    r = CliRunner().invoke(cli, ["vector", "algebra", b, "-", a, "--layer", "1", "--out", str(tmp_path / "c"), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["layers"] == [1] and d["norm"]["1"] == pytest.approx(float(v[1].norm()), rel=1e-5)
    r = CliRunner().invoke(cli, ["vector", "info", a, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["method"] == "mean-diff"


# ---- metrics, sweep, verify (tiny) --------------------------------------------------------------------
@torch.no_grad()
def test_sequence_logprobs_match_full_logits(llama):
    texts = ["abc de", "hello"]
    got = st.sequence_logprobs(llama, texts)
    for i, t in enumerate(texts):
        ids = llama.tokenize(t).input_ids
        lp = llama.hf(ids).logits[0].float().log_softmax(-1)
        want = lp[:-1].gather(1, ids[0, 1:, None]).sum()
        assert float(got[i]) == pytest.approx(float(want), abs=1e-4)
    comp = st.sequence_logprobs(llama, ["xy", "z"], prompts=["abc", "hello there"])
    ids = llama.tokenize("abc\nxy").input_ids
    lp = llama.hf(ids).logits[0].float().log_softmax(-1)
    want = lp[-3:-1].gather(1, ids[0, -2:, None]).sum()
    assert float(comp[0]) == pytest.approx(float(want), abs=1e-4)


def _tiny_task() -> st.Behaviour:
    m = st.TokenMetric(prompts=("hello", "abc d"), words=("a", "b"), name="p(a,b)")
    return st.Behaviour(name="tiny", absent=m, present=m, neutral=("x y", "zz", "q"))


def test_token_metric_and_repetition(llama):
    m = _tiny_task().absent
    lp = llama.run(list(m.prompts), logits="last").logits.float().log_softmax(-1)
    ids = st.word_ids(llama, m.words)
    assert m(llama)["score"] == pytest.approx(float(lp[:, ids].exp().sum(-1).mean()), rel=1e-5)
    assert st.repetition([[1, 2, 3, 1, 2, 3]]) == pytest.approx(1 - 3 / 4)
    assert st.repetition([[1, 2, 3, 4]]) == 0.0 and st.repetition([[1]]) == 0.0


def test_verify_reports_vector_next_to_random_controls(llama):
    v = extract(llama, from_pairs(PAIRS))
    task = _tiny_task()
    rep = st.verify(llama, v, task, layer=1, coef=0.5, mode="subtract", n_random=2)
    kl = rep.details["kl"]
    assert kl["vector"] > 0 and len(kl["random"]) == 2
    minus = task.absent(llama, st.steer_edits(v, 1, 0.5, mode="subtract"))["score"]
    assert rep.swing["vector"] == pytest.approx(rep.add["vector"] - minus)
    assert len(rep.swing["random_all"]) == 2 and "swing" in rep.passed and len(rep.rows()) == 3
    assert rep.add["vector"] == pytest.approx(task.absent(llama, st.steer_edits(v, 1, 0.5))["score"])
    assert rep.remove["vector"] == pytest.approx(task.present(llama, st.steer_edits(v, 1, 0.5, mode="subtract"))["score"])
    assert len(rep.add["random_all"]) == 2 and rep.add["random_all"][0] != rep.add["random_all"][1]
    assert rep.add["base"] == rep.remove["base"]  # same prompts in this toy task
    d = rep.to_dict()
    assert set(d["passed"]) == {"add", "remove", "swing"} and len(d["rows"]) == 3
    assert rep.details["relative_length"] == pytest.approx(0.5)


def test_sweep_rows_and_recommendation_rule(llama):
    v = extract(llama, from_pairs(PAIRS))
    res = st.sweep(llama, v, _tiny_task(), layers=(0, 1), coefs=(0.05, 0.5, 2.0), kl_max=0.05, gen_tokens=4, n_gen=2)
    assert [(r["layer"], r["coef"]) for r in res.rows] == [(lay, c) for lay in (0, 1) for c in (0.05, 0.5, 2.0)]
    for r in res.rows:
        assert r["admissible"] == (r["kl"] <= 0.05 and (r["repetition"] is None
                                                         or r["repetition"] <= res.base["repetition"] + 0.2))
        assert r["effect"] == pytest.approx(r["score"] - res.base["score"])
    good = sorted((r for r in res.rows if r["admissible"] and r["effect"] > 0), key=lambda r: -r["effect"])
    checked = [r for r in good if "random_effect" in r]
    assert checked == good[:len(checked)] and len(checked) <= 3
    if res.recommended is not None:  # the first candidate (rule order) that beats its random control
        rec = res.recommended
        assert rec["effect"] > abs(rec["random_effect"])
        assert all(r["effect"] <= abs(r["random_effect"]) for r in checked if r["effect"] > rec["effect"])
    else:
        assert all(r["effect"] <= abs(r["random_effect"]) for r in checked) and (len(checked) == 3 or not good[3:])
    small = [r for r in res.rows if r["coef"] == 0.05]
    big = [r for r in res.rows if r["coef"] == 2.0]
    assert all(s["kl"] < b["kl"] for s, b in zip(small, big, strict=True))
    layers, coefs, grid = res.grid("kl")
    assert layers == [0, 1] and coefs == [0.05, 0.5, 2.0] and len(grid) == 2


def test_plots_write_pngs(tmp_path, llama):
    from lmscope.plots.vector_plots import plot_layers, plot_sweep, plot_verify

    v, _ = make_vector(llama, from_pairs([(f"yes {i}", f"no {i}") for i in range(8)]))
    res = st.sweep(llama, v, _tiny_task(), layers=(0, 1), coefs=(0.1, 1.0), gen_tokens=0)
    rep = st.verify(llama, v, _tiny_task(), layer=1, coef=0.5, n_random=2)
    for f in (plot_sweep(res, tmp_path / "s.png"), plot_verify(rep, tmp_path / "v.png"),
              plot_layers(v, tmp_path / "l.png")):
        assert open(f, "rb").read(4) == b"\x89PNG"


# ---- real models (slow): directions of change, each next to random directions of equal norm --------------
@pytest.mark.slow
def test_refusal_vectors_on_smollm(smollm):
    """Arditi et al. / CAA on the instruct model (chat template): a refusal vector added at a
    middle layer raises p(refusal start) on held-out harmless prompts more than random
    directions of equal norm; subtracting it lowers it on held-out harmful prompts more than
    subtracting random directions. Layer 8 / coef 0.25 is the sweep's admissible choice
    (docs/vectors.md). The vector is read from refusal_completions (mean over the answer
    tokens): on this 135M model the harmful-minus-harmless prompt direction (refusal_prompts)
    is weaker and within reach of random controls at 24 training pairs (docs/vectors.md)."""
    layer = 8
    task = st.make_task("refusal", n_eval=8, seed=0)  # held-out harmless / harmful prompts
    comp, _ = load_contrast("refusal_completions").split(0.25, seed=0)
    v = extract(smollm, comp.head(24), chat=True, position="mean", layers=(layer,))
    rep = st.verify(smollm, v, task, layer=layer, coef=0.25, mode="subtract", n_random=2, side_effects=False,
                    swing=False)
    msg = json.dumps(rep.to_dict()["rows"])
    assert rep.add["vector"] > rep.add["base"] and rep.add_effect > 2 * rep.add_random_effect, msg
    assert rep.remove["vector"] < rep.remove["base"] and -rep.remove_effect > rep.remove_random_effect, msg


@pytest.mark.slow
def test_sentiment_vector_on_gemma_raises_positive_words(gemma):
    """Adding positive-minus-negative raises log p(positive words)/p(negative words) on
    neutral continuations, far more than random directions of equal norm."""
    layer = 14  # the sweep's recommendation (docs/vectors.md): layer 14, coef 0.25
    train, _ = load_contrast("sentiment").split(0.25, seed=0)
    v = extract(gemma, train.head(24), layers=(layer,))
    task = st.make_task("sentiment", n_eval=8, seed=0)
    rep = st.verify(gemma, v, task, layer=layer, coef=0.25, mode="subtract", n_random=2, side_effects=False,
                    swing=False)
    msg = json.dumps(rep.to_dict()["rows"])
    assert rep.add_effect > 1.0 and rep.add_effect > 1.5 * rep.add_random_effect, msg
    assert -rep.remove_effect > rep.remove_random_effect, msg
