"""Task vectors / function vectors: exact effects on tiny models, directions on gemma-3-270m."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import make_tiny

from lmscope.datasets import icl as T
from lmscope.engine.errors import InputError
from lmscope.engine.hooks import hook_count
from lmscope.engine.interventions import Set
from lmscope.function_vectors import core as F
from lmscope.function_vectors import scoring
from lmscope.vectors.vector import Vector

TINY_CFG = F.FVConfig(shots=2, n_prompts=6, n_test=5, drop_ambiguous=False, batch_size=4)


# ---- tasks and prompts -------------------------------------------------------------------------
def test_template_and_prompts_are_exact_and_seeded():
    tpl = T.TEMPLATES["arrow"]
    assert tpl.prompt([("hot", "cold"), ("big", "small")], "fast") == "hot -> cold\nbig -> small\nfast ->"
    assert T.zero_shot_prompts(["fast"]) == ["fast ->"]
    assert T.TEMPLATES["qa"].prompt([("a", "b")], "c") == "Q: a\nA: b\n\nQ: c\nA:"
    task = T.load_task("antonym")
    a = T.few_shot_prompts(task, ["hot", "big"], shots=3, seed=4)
    assert a == T.few_shot_prompts(task, ["hot", "big"], shots=3, seed=4)
    assert a != T.few_shot_prompts(task, ["hot", "big"], shots=3, seed=5)
    for p, q in zip(a, ["hot", "big"], strict=True):
        lines = p.split("\n")
        assert len(lines) == 4 and lines[-1] == f"{q} ->"
        assert all(not ln.startswith(f"{q} ->") for ln in lines[:-1])  # the query is never a demo


def test_shuffled_labels_permute_the_outputs():
    task = T.load_task("capitalize")
    clean = T.few_shot_prompts(task, ["apple"], shots=5, seed=1)[0].split("\n")[:-1]
    bad = T.few_shot_prompts(task, ["apple"], shots=5, seed=1, shuffle_labels=True)[0].split("\n")[:-1]
    assert [ln.split(" -> ")[0] for ln in clean] == [ln.split(" -> ")[0] for ln in bad]
    assert sorted(ln.split(" -> ")[1] for ln in clean) == sorted(ln.split(" -> ")[1] for ln in bad)
    assert all(ln.split(" -> ")[1] != ln.split(" -> ")[0].capitalize() for ln in bad)


def test_tasks_load_split_and_compose(tmp_path):
    assert {"antonym", "capitalize", "country_capital", "copy"} <= set(T.list_tasks())
    ant = T.load_task("antonym")
    train, test = ant.split(20, seed=3)
    assert len(test) == 20 and len(train) == len(ant) - 20
    assert not set(train.inputs) & set(test.inputs)
    comp = ant.then(T.load_task("capitalize"))
    assert dict(comp.pairs)["hot"] == "Cold" and comp.name == "antonym_then_capitalize"
    f = tmp_path / "mine.jsonl"
    f.write_text('{"input": "one", "output": "1"}\n\n{"input": "two", "output": "2"}\n')
    mine = T.load_task(str(f))
    assert mine.name == "mine" and mine.pairs == (("one", "1"), ("two", "2"))
    f.write_text('{"input": "one"}\n')
    with pytest.raises(InputError, match="input' and 'output'"):
        T.load_task(str(f))
    with pytest.raises(InputError, match="Unknown task"):
        T.load_task("no_such_task")
    # the hash identifies the pairs: same pairs, same hash; one changed output, another hash
    assert ant.sha256() == T.load_task("antonym").sha256() != ant.subset(range(len(ant) - 1)).sha256()
    assert T.Task("a", (("x", "y"),)).sha256() != T.Task("a", (("x", "z"),)).sha256()


# ---- extraction: exact on tiny models -----------------------------------------------------------
def _last(lm, prompts, layer):
    """Last-token resid_post captured with positions 'all' (left padding: last column)."""
    res = lm.run(prompts, capture=[f"layers.{layer}.resid_post"], logits=None)
    return res.cache[f"layers.{layer}.resid_post"][:, -1]


def test_mean_diff_is_the_manual_mean_difference(tiny):
    data = F.prepare(tiny, "antonym", TINY_CFG)
    v = F.make(tiny, data, TINY_CFG)
    assert isinstance(v, Vector) and v.layers == list(range(tiny.n_layers)) and v.meta["mode"] == "add"
    assert v.meta["dataset_sha256"] == data.task.sha256() and v.meta["n_pairs"] == len(data.task)
    few, zero, qs, _ = F._extraction_prompts(data, TINY_CFG)
    assert not set(qs) & set(data.test.inputs)  # extraction never sees a held-out query
    assert all(q not in p for p in few for q in data.test.inputs for p in [p.split("\n")[-1]])
    for lay in range(tiny.n_layers):
        manual = _last(tiny, few, lay).mean(0) - _last(tiny, zero, lay).mean(0)
        torch.testing.assert_close(v[lay], manual.float(), atol=2e-5, rtol=1e-5)


def test_add_at_last_changes_only_the_last_position():
    lm = make_tiny("gemma3_text")
    v = F.make(lm, "antonym", TINY_CFG)
    prompts = ["fast ->", "hot ->", "beautiful ->"]
    site = "layers.1.resid_post"
    base = lm.run(prompts, capture=[site, "layers.2.resid_post"], logits=None)
    edit = F.vector_edit(v, 1, scale=2.0, positions="last")
    out = lm.run(prompts, capture=[site, "layers.2.resid_post"], edits=[edit], logits=None)
    diff = out.cache[site] - base.cache[site]  # [b, pos, d]
    torch.testing.assert_close(diff[:, -1], (2.0 * v[1]).expand(3, -1), atol=1e-5, rtol=1e-5)
    assert diff[:, :-1].abs().max() == 0
    later = out.cache["layers.2.resid_post"] - base.cache["layers.2.resid_post"]
    assert later[:, :-1].abs().max() == 0 and later[:, -1].abs().max() > 0  # causal: only the last token moves
    # positions="all": every real token gets the vector, padding none
    out = lm.run(prompts, capture=[site], edits=[F.vector_edit(v, 1, positions="all")], logits=None)
    diff = out.cache[site] - base.cache[site]
    mask = base.batch.attention_mask.bool()
    torch.testing.assert_close(diff[mask], v[1].expand(int(mask.sum()), -1), atol=1e-5, rtol=1e-5)
    assert diff[~mask].abs().max() == 0


def test_replace_sets_exactly_the_mean_few_shot_state():
    lm = make_tiny("qwen2")
    data = F.prepare(lm, "antonym", TINY_CFG)
    v = F.make(lm, data, TINY_CFG, method="replace")
    assert v.meta["mode"] == "replace"
    few, _, _, _ = F._extraction_prompts(data, TINY_CFG)
    torch.testing.assert_close(v[2], _last(lm, few, 2).mean(0).float(), atol=2e-5, rtol=1e-5)
    edit = F.vector_edit(v, 2, mode="replace", positions="last")
    assert isinstance(edit, Set)
    res = lm.run(data.zero_shot(), capture=["layers.2.resid_post"], edits=[edit], positions="last", logits=None)
    got = res.cache["layers.2.resid_post"]  # captures see the edited value
    assert torch.equal(got, v[2].to(got.dtype).expand_as(got))


def test_kv_cached_indirect_effects_equal_full_forwards(tiny):
    data = F.prepare(tiny, "antonym", TINY_CFG)
    few, _, _, _ = F._extraction_prompts(data, TINY_CFG)
    mean_z, _ = F.head_means(tiny, few, batch_size=4)
    bad, _, qs, ans = F._extraction_prompts(data, TINY_CFG, shuffle_labels=True, n=4, salt=1)
    ids = T.answer_ids(tiny, qs, ans)
    before = hook_count(tiny.hf)
    aie = F.indirect_effects(tiny, bad, ids, mean_z, layers=[0, 2])
    assert hook_count(tiny.hf) == before
    assert torch.isnan(aie[1]).all() and torch.isfinite(aie[[0, 2]]).all()
    p0 = scoring.score(tiny, bad, ids).prob
    for lay, h in [(0, 1), (2, 3)]:
        ed = Set(site=f"layers.{lay}.attn.z[{h}]", value=mean_z[lay, h], positions="last")
        full = (scoring.score(tiny, bad, ids, edits=[ed]).prob - p0).mean()
        torch.testing.assert_close(aie[lay, h], full, atol=2e-6, rtol=1e-4)


def test_last_token_scorer_equals_full_forwards(tiny):
    v = F.make(tiny, "antonym", TINY_CFG)
    prompts = T.zero_shot_prompts(["hot", "beautiful", "up", "fast"])
    ids = torch.tensor([5, 9, 11, 13])
    sc = scoring.LastTokenScorer(tiny, prompts, ids, batch_size=3)
    for edits_fast, edits_full in [([], []),
                                   ([F.vector_edit(v, 1, scale=3.0, positions="last")],
                                    [F.vector_edit(v, 1, scale=3.0, positions="last")]),
                                   ([F.vector_edit(v, 0, mode="replace", positions="last")],
                                    [F.vector_edit(v, 0, mode="replace", positions="last")])]:
        a, b = sc.score(edits_fast), scoring.score(tiny, prompts, ids, edits=edits_full)
        torch.testing.assert_close(a.prob, b.prob, atol=1e-6, rtol=1e-4)
        assert torch.equal(a.top, b.top)
    with pytest.raises(InputError, match="positions='last'"):
        sc.score([F.vector_edit(v, 1, positions="all")])


def test_heads_vector_sums_the_top_heads_mean_outputs(tmp_path):
    lm = make_tiny("llama")
    cfg = F.FVConfig(**{**TINY_CFG.__dict__, "method": "heads", "top_heads": 3, "n_aie_prompts": 4})
    data = F.prepare(lm, "antonym", cfg)
    v = F.make(lm, data, cfg)
    aie = torch.tensor(v.meta["aie"])
    heads = v.meta["heads"]
    assert len(heads) == 3 and [h[2] for h in heads] == sorted(aie.flatten().tolist(), reverse=True)[:3]
    few, _, _, _ = F._extraction_prompts(data, cfg)
    _, mean_out = F.head_means(lm, few)
    torch.testing.assert_close(v[0], sum(mean_out[a, b] for a, b, _ in heads), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(v[0], v[i]) for i in v.layers)  # one vector, usable at any layer
    back = Vector.load(v.save(tmp_path / "heads.safetensors"), model=lm)
    assert back.meta["heads"] == heads and torch.equal(back[1], v[1])
    c = F.make(lm, data, replace(cfg, heads_contrast=True))  # same heads, minus their zero-shot outputs
    _, zero_out = F.head_means(lm, F._extraction_prompts(data, cfg)[1])
    assert c.meta["heads"] == heads
    torch.testing.assert_close(c[0], sum(mean_out[a, b] - zero_out[a, b] for a, b, _ in heads), atol=1e-5, rtol=1e-5)


def test_random_control_is_seeded_with_equal_norm():
    v = torch.randn(64)
    a, b = F.random_like(v, seed=0, layer=3), F.random_like(v, seed=0, layer=3)
    assert torch.equal(a, b) and not torch.equal(a, F.random_like(v, seed=0, layer=4))
    torch.testing.assert_close(a.norm(), v.norm())


def test_evaluate_and_compose_run_end_to_end(tmp_path):
    lm = make_tiny("llama")
    v = F.make(lm, "antonym", TINY_CFG)
    path = v.save(tmp_path / "ant.safetensors")
    back = Vector.load(path, model=lm)
    assert back.meta["task"] == "antonym" and back.meta["fv_method"] == "mean-diff"
    sw = F.evaluate(lm, back, layers=[0, 2], scale=2.0)
    assert sw.layers == [0, 2] and len(sw.accuracy) == len(sw.random) == 2 and sw.n_test == 5
    assert 0 <= sw.zero_shot <= 1 and 0 <= sw.few_shot <= 1 and len(sw.predictions[0]) == 5
    json.dumps(sw.to_dict())
    c = F.compose(lm, ["antonym", "capitalize"], ["copy"], config=TINY_CFG, layers=[1])
    assert c.target == "antonym_then_capitalize" and c.expression == "antonym + capitalize - copy"
    assert set(c.singles) == {"antonym", "capitalize"} and set(c.keys) == {"antonym", "capitalize"}
    json.dumps(c.to_dict())
    # plus_only is the same sum without the subtraction: what compose without --minus scores
    c2 = F.compose(lm, ["antonym", "capitalize"], config=TINY_CFG, layers=[1])
    assert c2.plus_only == [] and c.plus_only == c2.composed and c.summary()["plus_only"] == c2.composed[0]
    from lmscope.plots.fv_plots import plot_composition, plot_layer_sweep

    for fig in (plot_layer_sweep(sw, tmp_path / "s.png"), plot_composition(c, tmp_path / "c.png")):
        assert fig.suffix == ".png" and fig.stat().st_size > 1000


def test_config_and_vector_errors():
    with pytest.raises(InputError, match="method"):
        F.FVConfig(method="magic")
    with pytest.raises(InputError, match="shots"):
        F.FVConfig(shots=0)
    lm = make_tiny("llama")
    with pytest.raises(InputError, match="usable pairs"):
        F.prepare(lm, "antonym", F.FVConfig(n_test=5))  # tiny tokenizer: every answer starts with " "
    with pytest.raises(InputError, match="replace"):
        F.compose(lm, ["antonym"], config=F.FVConfig(method="replace"))


# ---- real model: directions only -----------------------------------------------------------------
@pytest.mark.slow
def test_gemma_middle_layer_task_vector_beats_zero_shot_and_random(gemma):
    """The lecture's finding (docs/function_vectors.md): the antonym vector works when added
    mid-network (layers 9-12 in the full sweep) and not at the last layer; both variants
    beat a random vector of equal norm. Kept lean: 12 prompts, 3 layers."""
    cfg = F.FVConfig(shots=5, n_prompts=12, n_test=12, seed=0, batch_size=12)
    data = F.prepare(gemma, "antonym", cfg)
    assert len(data.test) == 12
    v = F.make(gemma, data, cfg)
    sw = F.evaluate(gemma, v, data, layers=[9, 11, 17])
    msg = json.dumps(sw.summary())
    assert sw.few_shot > sw.zero_shot + 0.3, msg  # the model can do the task in context
    mid = max(sw.accuracy[:2])
    i = sw.accuracy.index(mid)
    assert mid >= sw.zero_shot + 0.25 and mid >= sw.random[i] + 0.25, msg
    assert sw.prob[i] > 2 * sw.zero_shot_prob, msg
    assert sw.accuracy[-1] < mid, msg  # the last layer does not carry the task as well
    # Hendel's replace mode: the mean few-shot state works mid-network, not at the last layer
    tv = F.make(gemma, data, cfg, method="replace")
    rs = F.evaluate(gemma, tv, data, layers=[11, 17], baselines=False)
    assert rs.accuracy[0] >= sw.zero_shot + 0.25 and rs.accuracy[0] >= rs.random[0] + 0.25, rs.accuracy
    assert rs.accuracy[1] < rs.accuracy[0], rs.accuracy


@pytest.mark.slow
def test_gemma_some_head_carries_the_task(gemma):
    """Todd et al.'s indirect effect: patching the clean mean of the best head into
    shuffled-label prompts raises P(answer) (heads of layers 9-10 only, to stay cheap)."""
    cfg = F.FVConfig(shots=5, n_prompts=8, n_test=16, n_aie_prompts=8, batch_size=16, method="heads",
                     aie_layers=(9, 10), top_heads=2)
    v = F.make(gemma, "antonym", cfg)
    aie = torch.tensor([[float("nan") if x is None else x for x in row] for row in v.meta["aie"]])
    assert torch.isnan(aie[:9]).all() and torch.isfinite(aie[9:11]).all() and torch.isnan(aie[11:]).all()
    assert v.meta["heads"][0][2] > 0.02, v.meta["heads"]


def test_cli_make_eval_sweep_compose_json(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from lmscope.cli.main import cli

    lm = make_tiny("llama")
    monkeypatch.setattr("lmscope.cli.fv.load_model", lambda *a, **k: lm)
    run = CliRunner().invoke
    small = ["--n", "4", "--n-test", "5", "--shots", "2", "--keep-ambiguous"]
    f = str(tmp_path / "ant.safetensors")
    r = run(cli, ["fv", "make", "tiny", "--task", "antonym", *small, "--out", f, "--json"])
    assert r.exit_code == 0, r.output
    made = json.loads(r.stdout)
    assert made["path"] == f and made["layers"] == [0, 1, 2] and made["method"] == "mean-diff"
    side = json.loads(open(f + ".json").read())
    assert len(side["dataset_sha256"]) == 64 and "evaluation" not in side
    r = run(cli, ["fv", "eval", "tiny", f, "--layers", "0,2", "--scale", "2", "--out", str(tmp_path), "--record",
                  "--json"])
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    assert ev["layers"] == [0, 2] and ev["scale"] == 2.0 and ev["summary"]["task"] == "antonym"
    assert (tmp_path / "fv_eval_antonym.png").is_file()
    rec = Vector.load(f, model=lm).meta["evaluation"]["layer_sweep"]  # --record: the result is in the sidecar
    assert rec["layers"] == [0, 2] and rec["accuracy"] == ev["accuracy"] and rec["scale"] == 2.0
    r = run(cli, ["fv", "sweep", "tiny", "--task", "antonym", "--task", "capitalize", *small, "--layers", "1:3",
                  "--positions", "all", "--out", str(tmp_path / "sw"), "--json"])
    assert r.exit_code == 0, r.output
    sw = json.loads(r.stdout)
    assert [t["task"] for t in sw["table"]] == ["antonym", "capitalize"] and sw["sweeps"][0]["layers"] == [1, 2]
    assert len(sw["figures"]) == 3 and len(sw["vectors"]) == 2
    saved = Vector.load(sw["vectors"][1], model=lm).meta
    assert saved["evaluation"]["layer_sweep"]["accuracy"] == sw["sweeps"][1]["accuracy"]
    r = run(cli, ["fv", "compose", "tiny", "--plus", "antonym", "--plus", "capitalize", "--minus", "copy", *small,
                  "--layers", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["expression"] == "antonym + capitalize - copy"
    r = run(cli, ["fv", "eval", "tiny", f, "--layers", "x"])
    assert r.exit_code != 0
