"""Pruning to a circuit on tiny random models: the evaluator's two ends, the faithfulness
curve, the three pruning methods, the random control, saving and overlap."""

from __future__ import annotations

import json

import pytest
import torch
from toy import toy_run

from lmscope.circuits.attribution import AttributionConfig, attribute
from lmscope.circuits.graph import Circuit, overlap
from lmscope.circuits.pruning import Evaluator, PruneConfig, prune, top_mask
from lmscope.engine.errors import InputError


@pytest.fixture(scope="module")
def toy(request):
    from conftest import make_tiny

    run = toy_run(make_tiny("llama"))
    return run, attribute(run, AttributionConfig(method="eap-ig", steps=4))


def test_evaluator_ends_are_the_clean_and_corrupt_runs(toy):
    run, _ = toy
    ev = Evaluator(run, "resample", batch_size=4)
    assert ev.clean == pytest.approx(float(run.score("clean").mean()), abs=1e-5)
    assert ev.empty == pytest.approx(float(run.score("corrupt").mean()), abs=1e-5)
    assert ev.faithfulness(ev.valid) == pytest.approx(1.0)


def test_topk_circuit_reaches_the_target_and_beats_random(toy):
    run, scores = toy
    res = prune(run, PruneConfig(method="topk", target=0.8, fractions=(0.02, 0.1, 0.3, 1.0), random_draws=3),
                scores=scores)
    c = res.circuit
    assert c.faithfulness >= 0.8 and len(c.edges) < c.n_edges_total
    assert res.curve.faithfulness[-1] == pytest.approx(1.0)
    assert res.random_control["n_edges"] == len(c.edges)
    assert c.faithfulness > res.random_control["mean"]
    d = res.to_dict()
    json.dumps(d)
    assert d["curve"]["random"]["mean"] and 0 < d["curve"]["chosen_fraction"] < 1
    assert set(c.decoded) <= set(c.nodes) and all(len(v) == 5 for v in c.decoded.values())


def test_learned_mask_prunes_and_stays_faithful(toy):
    run, _ = toy
    res = prune(run, PruneConfig(method="mask", steps=25, lr=0.2, sparsity=0.3, random_draws=1))
    hist = res.extra["history"]
    assert hist[-1]["density"] < hist[0]["density"]
    assert len(res.circuit.edges) < res.circuit.n_edges_total
    assert res.circuit.faithfulness > 0.5


def test_acdc_removes_nodes_within_the_threshold(toy):
    run, _ = toy
    res = prune(run, PruneConfig(method="acdc", threshold=0.05, random_draws=1))
    assert res.extra["removed_nodes"]
    assert abs(1 - res.circuit.faithfulness) < 0.05 * len(res.extra["removed_nodes"]) + 1e-6


def test_save_load_and_bad_files(toy, tmp_path):
    _run, scores = toy
    keep = top_mask(scores.scores, 10)
    from lmscope.circuits.graph import edges_of

    c = Circuit("tiny", "toy", "top-k", "resample", 3, edges_of(keep, scores.scores, scores.senders,
                scores.receivers), scores.n_edges, 0.9)
    back = Circuit.load(c.save(tmp_path / "c.json"))
    assert back.edges == c.edges and back.faithfulness == 0.9
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(InputError, match="not an lmscope circuit"):
        Circuit.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text('{"format": "lmscope.circuit", "model": "x"}')
    with pytest.raises(InputError, match="missing or malformed"):
        Circuit.load(tmp_path / "broken.json")


def test_overlap_is_jaccard_of_heads_and_mlps():
    a = Circuit("m", "ioi", "x", "resample", 4, [("a1.h0", "a2.h1.q", 1.0), ("a2.h1", "logits", 1.0),
                                                 ("m3", "logits", 1.0)], 100, 1.0)
    b = Circuit("m", "induction", "x", "resample", 4, [("a1.h0", "a2.g0.k", 1.0), ("a2.h3", "logits", 1.0)], 100, 1.0)
    o = overlap({"ioi": a, "induction": b})
    assert o.shared["ioi|induction"] == ["a1.h0"]
    assert o.jaccard[0][1] == pytest.approx(1 / 4)  # {a1.h0, a2.h1, m3} vs {a1.h0, a2.h3}
    with pytest.raises(InputError):
        overlap({"ioi": a})


def test_prune_config_errors(toy):
    run, scores = toy
    with pytest.raises(InputError, match="method"):
        PruneConfig(method="magic")
    with pytest.raises(InputError, match="needs attribution scores"):
        prune(run, PruneConfig(method="topk"))
    with pytest.raises(InputError, match="same ablation"):
        prune(run, PruneConfig(method="topk", ablation="zero"), scores=scores)
    assert torch.equal(top_mask(scores.scores, 0), torch.zeros_like(scores.valid))
