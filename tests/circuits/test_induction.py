"""Induction heads: scores checked against direct computations from captured attention and head
writes on tiny random models of every family; the ablation and key-path steps exact in their
bookkeeping; on Gemma 3 and SmolLM2 (slow) real induction heads whose ablation breaks the
second copy far more than random heads, and (Gemma) a previous-token head feeding their keys."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmscope.circuits.induction import (
    InductionResult,
    ablation_edits,
    copy_losses,
    find_induction_heads,
    head_name,
    head_scores,
    head_scores_dict,
    key_path_patching,
    key_path_task,
    mean_z,
    pick_heads,
)
from lmscope.circuits.metric import TaskRun
from lmscope.circuits.path_patching import path_patch
from lmscope.datasets.circuit_tasks import induction
from lmscope.engine.errors import InputError
from lmscope.engine.hooks import hook_count
from lmscope.engine.runner import run
from lmscope.inspect.decomposition import unembed_vectors

N, T = 3, 6  # tiny tasks: 3 rows of BOS + 6 + 6 tokens


def _task(model, n=N, seq_len=T, seed=0):
    return induction(model, n=n, seq_len=seq_len, seed=seed)


def _bos(task):
    return len(task.clean[0]) - 2 * task.meta["seq_len"]


# ---- scores against direct computations ----------------------------------------------------------

def test_attention_scores_match_the_captured_pattern(tiny):
    """prefix_matching and previous_token equal loops over the pattern captured by a plain run."""
    task = _task(tiny)
    b = _bos(task)
    scores = head_scores(tiny, task, batch_size=2)  # two batches: the average runs over chunks
    for s in ("prefix_matching", "previous_token", "copying"):
        assert scores[s].shape == (tiny.n_layers, tiny.n_heads)
        assert scores[s].dtype == torch.float32 and torch.isfinite(scores[s]).all()
    sites = [f"layers.{L}.attn.pattern" for L in range(tiny.n_layers)]
    res = run(tiny, tiny.batch_of_ids(task.clean), capture=sites, logits=None)
    width = len(task.clean[0])
    for L in range(tiny.n_layers):
        pat = res.cache[sites[L]].float()  # [batch, head, q, k]
        prefix = torch.zeros(tiny.n_heads)
        prev = torch.zeros(tiny.n_heads)
        for h in range(tiny.n_heads):
            prefix[h] = sum(float(pat[i, h, q, q - T + 1]) for i in range(N) for q in range(b + T, b + 2 * T)) / (N * T)
            prev[h] = sum(float(pat[i, h, q, q - 1]) for i in range(N) for q in range(b + 1, width)) / (N * (width - b - 1))
        torch.testing.assert_close(scores["prefix_matching"][L], prefix, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(scores["previous_token"][L], prev, atol=1e-5, rtol=1e-4)
    for s in ("prefix_matching", "previous_token"):
        assert float(scores[s].min()) >= 0.0 and float(scores[s].max()) <= 1.0


def test_copying_is_the_direct_logit_of_the_next_token(tiny_llama):
    """copying == mean over second-copy positions of (DLA of the head's write on the next token -
    mean DLA over the vocabulary), the DLA computed by `unembed_vectors(mode="frozen")`."""
    m = tiny_llama
    task = _task(m)
    b = _bos(task)
    scores = head_scores(m, task)
    last = m.n_layers - 1
    sites = [f"layers.{L}.attn.head_out" for L in range(m.n_layers)] + [f"layers.{last}.resid_post"]
    res = run(m, m.batch_of_ids(task.clean), capture=sites, logits=None)
    resid = res.cache[f"layers.{last}.resid_post"]
    pos = range(b + T, b + 2 * T - 1)
    for L in range(m.n_layers):
        out = res.cache[f"layers.{L}.attn.head_out"]  # [batch, pos, head, d_model]
        for h in range(m.n_heads):
            vals = []
            for i in range(N):
                for p in pos:
                    logits = unembed_vectors(m, out[i, p, h][None], mode="frozen", resid=resid[i, p])[0]
                    vals.append(float(logits[task.clean[i][p + 1]] - logits.mean()))
            assert math.isclose(float(scores["copying"][L, h]), sum(vals) / len(vals), rel_tol=1e-4, abs_tol=1e-5)


def test_copy_losses_match_the_model_logits(tiny_llama):
    m = tiny_llama
    task = _task(m)
    b = _bos(task)
    second, first = copy_losses(m, task, batch_size=2)
    batch = m.batch_of_ids(task.clean)
    with torch.no_grad():
        lp = m.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float().log_softmax(-1)
    ids = batch.input_ids

    def nll(positions):
        return -sum(float(lp[i, p, ids[i, p + 1]]) for i in range(N) for p in positions) / (N * len(positions))

    assert math.isclose(second, nll(range(b + T, b + 2 * T - 1)), rel_tol=1e-5)
    assert math.isclose(first, nll(range(b, b + T - 1)), rel_tol=1e-5)


# ---- picking heads -------------------------------------------------------------------------------

def test_pick_heads_rule():
    scores = torch.zeros(10, 10)
    scores.view(-1)[:15] = torch.linspace(0.9, 0.4, 15)  # 15 heads above 0.3: capped at 10% = 10
    assert pick_heads(scores) == [(0, i) for i in range(10)]
    assert pick_heads(scores, k=3) == [(0, 0), (0, 1), (0, 2)]
    low = torch.full((4, 5), 0.1)
    low[2, 3] = 0.2
    assert pick_heads(low) == [(2, 3)]  # none above 0.3: still the best one
    two = torch.zeros(4, 5)  # 20 heads: at most 2
    two[1, 1], two[3, 0], two[0, 4] = 0.8, 0.5, 0.35
    assert pick_heads(two) == [(1, 1), (3, 0)]
    assert head_name((5, 1)) == "a5.h1"


# ---- ablation ------------------------------------------------------------------------------------

def test_ablation_edits_leave_bos_alone(tiny_llama):
    m = tiny_llama
    task = _task(m)
    b = _bos(task)
    means = mean_z(m, task)
    site = "layers.1.attn.z"
    zs = run(m, m.batch_of_ids(task.clean), capture=[site], logits=None).cache[site]
    torch.testing.assert_close(means[1], zs[:, b:].float().mean((0, 1)))
    for method in ("zero", "mean"):
        edits = ablation_edits([(1, 2), (1, 0)], method, means=means, start=b)
        assert [e.site for e in edits] == ["layers.1.attn.z[0,2]"]
        z = run(m, m.batch_of_ids(task.clean), capture=[site], edits=edits, logits=None).cache[site]
        torch.testing.assert_close(z[:, :b], zs[:, :b])  # BOS untouched
        torch.testing.assert_close(z[:, :, [1, 3]], zs[:, :, [1, 3]])  # other heads untouched
        want = torch.zeros_like(z[:, b:, [0, 2]]) if method == "zero" else means[1, [0, 2]].expand_as(z[:, b:, [0, 2]])
        torch.testing.assert_close(z[:, b:, [0, 2]], want)


def test_find_induction_heads_on_a_tiny_model(tiny_llama):
    m = tiny_llama
    before = hook_count(m.hf)
    res = find_induction_heads(m, n=N, seq_len=T, random_draws=3, batch_size=2)
    assert hook_count(m.hf) == before
    assert isinstance(res, InductionResult)
    assert res.prefix_matching.shape == res.previous_token.shape == res.copying.shape == (3, 4)
    assert res.heads == pick_heads(res.prefix_matching) and len(res.heads) == 1  # 10% of 12 heads, at least 1
    a = res.ablation
    assert a.method == "mean" and len(a.random_second) == len(a.random_heads) == 3
    assert all(len(d) == 1 and d[0] not in res.heads for d in a.random_heads)
    second, first = copy_losses(m, _task(m))
    assert math.isclose(a.clean_second, second, rel_tol=1e-6) and math.isclose(a.clean_first, first, rel_tol=1e-6)
    d = json.loads(json.dumps(res.to_dict()))
    assert d["induction_heads"] == [head_name(h) for h in res.heads]
    assert len(d["scores"]["prefix_matching"]) == 3 and len(d["scores"]["copying"][0]) == 4
    assert d["ablation"]["second_copy"]["clean"] == pytest.approx(a.clean_second, abs=1e-5)
    assert set(d["timings"]) == {"scores", "ablation", "key_paths"}
    table = res.table()
    assert table.columns[:4] == ["head", "prefix matching", "previous token", "copying"]
    assert table.rows[0][0] == head_name(res.heads[0]) and table.rows[0][-1] == "yes"
    assert "<table" in res._repr_html_()
    grid = head_scores_dict(res, "previous_token")
    assert grid["values"] == d["scores"]["previous_token"]
    assert grid["highlight"] == [list(h) for h in res.heads] and grid["model"] == m.name and grid["title"]


def test_zero_ablation_equals_setting_z_to_zero(tiny_llama):
    m = tiny_llama
    res = find_induction_heads(m, n=N, seq_len=T, k=2, random_draws=1, ablation="zero", key_path_heads=0)
    task = _task(m)
    edits = ablation_edits(res.heads, "zero", start=_bos(task))
    assert res.ablation.induction_second == pytest.approx(copy_losses(m, task, edits)[0], rel=1e-6)
    assert res.key_paths is None and "key_path_heads=0" in res.key_path_note
    assert res.k_rule.startswith("top k=2")


def test_seeded_reproducibility(tiny_llama):
    m = tiny_llama
    kw = {"n": N, "seq_len": T, "random_draws": 3, "key_path_heads": 0}
    a, b = find_induction_heads(m, seed=1, **kw).to_dict(), find_induction_heads(m, seed=1, **kw).to_dict()
    c = find_induction_heads(m, seed=2, **kw).to_dict()
    for d in (a, b, c):
        d.pop("timings")
    assert a == b
    assert a["scores"] != c["scores"]


@pytest.mark.parametrize("kw, words", [
    ({"seq_len": 1}, "seq_len"), ({"n": 0}, "n must"), ({"random_draws": 0}, "random_draws"),
    ({"batch_size": 0}, "batch_size"), ({"ablation": "resample"}, "mean, zero"), ({"k": 0}, "k must"),
    ({"k": 7}, "at most 6"), ({"key_path_heads": -1}, "key_path_heads"), ({"key_path_ablation": "x"}, "resample"),
    ({"seq_len": 200}, "at most"),
])
def test_clear_errors(tiny_llama, kw, words):
    with pytest.raises(InputError, match=words):
        find_induction_heads(tiny_llama, **{"n": 2, "seq_len": 4, **kw})


# ---- key paths -----------------------------------------------------------------------------------

def test_key_path_task_replaces_the_first_copy(tiny_llama):
    task = _task(tiny_llama)
    b = _bos(task)
    kp = key_path_task(task)
    assert kp.clean == task.clean and kp.positions == task.positions and kp.answers == task.answers
    for c, k, old in zip(kp.clean, kp.corrupt, task.corrupt, strict=True):
        assert len(k) == len(c) and k[:b] == c[:b]
        assert k[b + T:] == c[b + T:]  # the second copy is the clean one
        assert k[b:b + T] == old[b + T:] and not set(k[b:b + T]) & set(c[b:b + T])


def test_key_path_patching_reads_path_patch(tiny_llama):
    """Receivers are the KV groups of the heads (GQA: 4 query heads over 2 KV heads), senders the
    earlier layers only, and the effects are `path_patch`'s normalized values."""
    m = tiny_llama
    task = _task(m)
    scores = head_scores(m, task)
    heads = [(2, 3), (1, 0), (0, 1)]
    paths, note = key_path_patching(m, task, heads, scores["previous_token"])
    assert [kp.head for kp in paths] == [(2, 3), (1, 0)]  # layer 0: no earlier head
    assert [kp.receiver for kp in paths] == ["2.1.k", "1.0.k"]
    ref = path_patch(TaskRun.build(m, key_path_task(task)), senders=[(L, h) for L in range(2) for h in range(4)],
                     receivers=["1.0.k", "2.1.k"])
    norm = ref.normalized
    for kp in paths:
        col = ref.receivers.index(kp.receiver)
        assert all(s[0] < kp.head[0] for s, _, _ in kp.senders)
        assert len(kp.senders) == min(3, 4 * kp.head[0])
        for s, eff, prev in kp.senders:
            assert eff == pytest.approx(float(norm[ref.senders.index(head_name(s)), col]), abs=1e-6)
            assert prev == pytest.approx(float(scores["previous_token"][s]))
        effs = [e for _, e, _ in kp.senders]
        assert effs == sorted(effs, reverse=True)
        assert set(kp.shared) <= set(kp.previous_heads)
        json.dumps(kp.to_dict())
    assert "2.1.k" in note and "1.0.k" in note
    assert key_path_patching(m, task, [(0, 0)], scores["previous_token"])[0] == []


# ---- real models (slow) --------------------------------------------------------------------------

@pytest.fixture(params=["gemma", "smollm"])
def real(request):
    return request.getfixturevalue(request.param)


@pytest.mark.slow
def test_real_induction_heads(real):
    """Heads with prefix matching > 0.3 exist; ablating them breaks the second copy more than
    random heads (mean + 1 std) and moves the first copy less than the second."""
    res = find_induction_heads(real, n=8, seq_len=16, random_draws=5, key_path_heads=0)
    assert float(res.prefix_matching.max()) > 0.3
    assert all(float(res.prefix_matching[h]) > 0.3 for h in res.heads)
    a = res.ablation
    assert a.clean_second < a.clean_first - 2  # the model uses the repetition
    rise = a.induction_second - a.clean_second
    assert a.induction_second > a.random_second_mean + a.random_second_std
    assert abs(a.induction_first - a.clean_first) < rise


@pytest.mark.slow
def test_gemma_previous_token_head_feeds_the_keys(gemma):
    """K-composition: the strongest path into the best induction head's keys comes from a head
    with a high previous-token score."""
    task = induction(gemma, n=4, seq_len=16, seed=0)
    scores = head_scores(gemma, task)
    head = pick_heads(scores["prefix_matching"], 1)
    paths, _ = key_path_patching(gemma, task, head, scores["previous_token"])
    (kp,) = paths
    _, effect, prev = kp.senders[0]
    assert effect > 0.1 and prev > 0.3
    assert kp.k_composition
