"""Linear relational embeddings on tiny random models: the exact first-order identity, the
low-rank algebra, artifacts, and the study protocol's bookkeeping."""

from __future__ import annotations

import json

import pytest
import torch

from lmscope.datasets.relations import Relation
from lmscope.engine.errors import ArtifactError, InputError
from lmscope.engine.readout import unembed
from lmscope.relations import prompts
from lmscope.relations import scoring as C
from lmscope.relations import study as S
from lmscope.relations.attribute_lens import attribute_lens
from lmscope.relations.facts import read_facts
from lmscope.relations.lre import (
    LRE,
    fit_lre,
    low_rank,
    low_rank_pinv,
    lre_from_samples,
    sample_jacobians,
    svd,
)
from lmscope.relations.prompts import icl_prompt, subject_token

REL = Relation("toy", "the {} is", tuple((s, o) for s, o in zip("abcdefghijkl", "mnopqrstuvwx", strict=True)))


def test_icl_prompt_and_subject_token(tiny_llama):
    prompt, end = icl_prompt(REL, "cd", [("a", "m"), ("b", "n")])
    assert prompt == "the a is m\nthe b is n\nthe cd is"
    assert prompt[:end].endswith("cd")
    # the tiny tokenizer is one token per character after a BOS token
    assert subject_token(tiny_llama, prompt, end) == end


def test_single_sample_lre_is_exact_at_its_expansion_point(tiny):
    """beta = 1, W = J and b = o - J s at one prompt: W s + b is that prompt's own final residual,
    so its readout is the model's own next-token distribution."""
    train = [("c", "o")]
    samples = sample_jacobians(tiny, REL, train, [0, 1])
    for layer in (0, 1):
        lre = lre_from_samples(samples, layer)
        z = lre.predict(samples.x[layer])
        torch.testing.assert_close(z, samples.o, rtol=1e-4, atol=1e-4)
    prompt, _ = icl_prompt(REL, "c", [])
    logits = tiny.run(prompt, logits="last").logits.float()
    torch.testing.assert_close(unembed(tiny, samples.o).float(), logits, rtol=1e-3, atol=1e-3)


def test_mean_of_jacobians(tiny_llama):
    train = [("a", "m"), ("b", "n"), ("c", "o")]
    samples = sample_jacobians(tiny_llama, REL, train, [1])
    lre = lre_from_samples(samples, 1, beta=2.0)
    torch.testing.assert_close(lre.weight, samples.jac[1].mean(0))
    b = torch.stack([o - j @ x for j, x, o in zip(samples.jac[1], samples.x[1], samples.o, strict=True)]).mean(0)
    torch.testing.assert_close(lre.bias, b, rtol=1e-5, atol=1e-5)
    s = torch.randn(4, tiny_llama.d_model)
    torch.testing.assert_close(lre.predict(s), 2.0 * s @ lre.weight.T + lre.bias)


def test_low_rank_algebra():
    w = torch.randn(12, 12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(low_rank_pinv(w, 12), torch.linalg.pinv(w), rtol=1e-4, atol=1e-4)
    assert torch.linalg.matrix_rank(low_rank(w, 3)) == 3
    # W (W_r^+ d) is d projected onto W's top-r left singular vectors
    u, _, _ = svd(w)
    d = torch.randn(12)
    torch.testing.assert_close(w @ (low_rank_pinv(w, 4) @ d), u[:, :4] @ (u[:, :4].T @ d), rtol=1e-4, atol=1e-4)
    # the sign convention makes the factors reproducible under a sign flip of the input's SVD
    u2, _, _ = svd(w.clone())
    torch.testing.assert_close(u, u2)
    with pytest.raises(InputError, match="rank"):
        low_rank(w, 0)


def test_lre_artifact_round_trip_and_refusal(tmp_path, tiny_llama):
    from tests.conftest import make_tiny

    lre = fit_lre(tiny_llama, REL, layer=1, demos=[("a", "m"), ("b", "n")], beta=2.5)
    path = lre.save(tmp_path / "toy.safetensors", tiny_llama)
    back = LRE.load(path, model=tiny_llama)
    torch.testing.assert_close(back.weight, lre.weight)
    torch.testing.assert_close(back.bias, lre.bias)
    assert (back.layer, back.beta, back.relation, back.template, back.demos) == (1, 2.5, "toy", "the {} is", lre.demos)
    other = make_tiny("qwen2")
    with pytest.raises(ArtifactError):
        LRE.load(path, model=other)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ArtifactError):
        LRE.load(tmp_path / "junk.safetensors", model=tiny_llama)


@pytest.fixture
def all_known(monkeypatch):
    """A tiny random model knows nothing: count every first token as right, to test bookkeeping."""
    monkeypatch.setattr(prompts, "matches", lambda model, t, obj: bool(obj))


def test_study_bookkeeping(tiny_llama, all_known):
    cfg = S.RelationConfig(n_train=3, layers=(0, 1), betas=(1.0, 2.0), ranks=(4, 8), rank=4, max_facts=12)
    rep = S.study(tiny_llama, REL, cfg)
    assert rep.n_facts == 12 and rep.n_known == 12 and len(rep.train) == 3
    assert rep.n_dev + rep.n_test == 9 and not rep.selected_on_test
    assert rep.layer in (0, 1) and rep.beta in (1.0, 2.0) and rep.rank in (4, 8)
    assert len(rep.faithfulness_grid) == 2 and all(len(r) == 2 for r in rep.faithfulness_grid)
    assert len(rep.causality_by_layer) == 2 and len(rep.causality_by_rank) == 2
    assert rep.faithfulness == 1.0  # everything "matches" here
    assert set(rep.baselines) == {"logit_lens", "translation", "regression", "majority"}
    assert 1 <= rep.n_objects <= rep.n_test
    assert rep.lre is not None and rep.lre.layer == rep.layer and rep.lre.beta == rep.beta
    assert rep.lre.demos == tuple(rep.train)
    json.dumps(rep.to_dict())
    assert rep.tables()[0].title.startswith("toy")


def test_study_refuses_when_the_model_knows_too_little(tiny_llama):
    with pytest.raises(InputError, match="answers only"):
        S.study(tiny_llama, REL, S.RelationConfig(n_train=3, layers=(0,), max_facts=12))


def test_causality_edits_equal_full_runs(tiny_llama, all_known, monkeypatch):
    """All settings of a pair run as rows of one suffix forward; each row equals a full forward
    with an Add at that setting's layer on the source prompt's subject token."""
    from lmscope.engine.interventions import Add

    monkeypatch.setattr(prompts, "first_token", lambda model, obj: ord(obj[0]))  # the tiny tokenizer's " x" starts with " "
    demos = list(REL.pairs[6:9])
    facts = read_facts(tiny_llama, REL, list(REL.pairs[:6]), demos, [0, 1])
    lre0 = fit_lre(tiny_llama, REL, layer=0, demos=demos)
    lre1 = fit_lre(tiny_llama, REL, layer=1, demos=demos, beta=2.0)
    pairs = C.edit_pairs(tiny_llama, facts, 4)
    assert pairs and all(i != j for i, j in pairs)
    settings = [(lre0, 8, False), (lre1, 4, False), (lre1, 64, False), (lre1, 4, True)]
    top = C.edited_top1(tiny_llama, settings, facts, pairs, seed=3)
    assert top.shape == (len(pairs), 4)
    for n, (i, j) in enumerate(pairs):
        for k, (lre, rank, control) in enumerate(settings[:3]):
            delta = lre.edit_delta(facts.final[j] - facts.final[i], rank)
            edit = Add(site=f"layers.{lre.layer}.resid_post", positions=int(facts.subject_pos[i]), vector=delta)
            want = tiny_llama.run(facts.prompts[i], edits=[edit], logits="last").logits.argmax(-1)
            assert int(top[n, k]) == int(want)
    assert C.causality_many(tiny_llama, settings, facts, []) != C.causality_many(tiny_llama, settings, facts, [])  # nan


def test_attribute_lens_cells(tiny_llama):
    lre = fit_lre(tiny_llama, REL, layer=1, demos=[("a", "m"), ("b", "n")], beta=1.5)
    lens = attribute_lens(tiny_llama, lre, "the c is", target="o")
    n_tok = len("the c is") + 1
    assert lens.layers == [0, 1, 2] and len(lens.tokens) == n_tok
    assert len(lens.top) == 3 and all(len(r) == n_tok for r in lens.top)
    h = tiny_llama.run("the c is", capture=["layers.2.resid_post"], logits=None).cache["layers.2.resid_post"][0]
    p = lre.logits(tiny_llama, h).softmax(-1)
    assert lens.top_prob[2] == pytest.approx(p.max(-1).values.tolist(), rel=1e-4)
    t = tiny_llama.tokenizer(" o", add_special_tokens=False)["input_ids"][0]
    assert lens.target_prob[2] == pytest.approx(p[:, t].tolist(), rel=1e-4, abs=1e-7)
    json.dumps(lens.to_dict())
    with pytest.raises(InputError, match="out of range"):
        attribute_lens(tiny_llama, lre, "the c is", layers=[7])


def test_config_errors():
    with pytest.raises(InputError):
        S.RelationConfig(n_train=0)
    with pytest.raises(InputError):
        S.RelationConfig(betas=(0.0,))
    with pytest.raises(InputError):
        S.RelationConfig(max_facts=3, n_train=5)


def test_training_facts_prefer_distinct_objects():
    known = [("a", "x"), ("b", "x"), ("c", "x"), ("d", "y"), ("e", "x"), ("f", "z")]
    assert S.pick_train(known, 3) == [("a", "x"), ("d", "y"), ("f", "z")]
    assert S.pick_train(known, 4) == [("a", "x"), ("d", "y"), ("f", "z"), ("b", "x")]
