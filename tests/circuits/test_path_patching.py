"""Path patching: exact on a tiny random llama against independent computations (activation
patching for last-layer senders, the direct effect through the residual stream, a hand-written
two-step run for q/k/v receivers), and on SmolLM2 the IOI heads that write to the logits (slow)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmscope.circuits.metric import TaskRun
from lmscope.circuits.patching import patch
from lmscope.circuits.path_patching import path_patch
from lmscope.datasets.circuit_tasks import TaskSet
from lmscope.engine.errors import InputError
from lmscope.engine.interventions import Apply, Patch
from lmscope.engine.runner import run as engine_run

PLOT_KEYS = {"kind", "direction", "ablation", "metric", "task", "model", "values", "raw", "row_labels",
             "col_labels", "row_title", "col_title", "clean", "corrupt"}


def hand_task() -> TaskSet:
    """Four padded rows; corrupt rows differ from clean in a few tokens (as in test_patching)."""
    clean = [[1, 5, 9, 13, 17, 21, 25], [1, 6, 10, 14, 18], [1, 7, 11, 15, 19, 23], [1, 8, 12, 16, 20, 24, 28]]
    corrupt = [[r[0], r[1] + 40, *r[2:-2], r[-2] + 50, r[-1]] for r in clean]
    return TaskSet(name="hand", metric="logit_diff", clean=clean, corrupt=corrupt,
                   positions=[[len(r) - 1] for r in clean], answers=[[30], [31], [32], [33]],
                   wrong=[[40], [41], [42], [43]], seed=0, meta={})


@pytest.fixture
def trun(tiny_llama):
    return TaskRun.build(tiny_llama, hand_task())


def _score(run, edits=()):
    with torch.no_grad():
        return float(run.score("clean", edits).mean())


def _cap(run, which, sites, edits=()):
    res = engine_run(run.model, run.batch(which), capture=sites, edits=edits, logits=None)
    return {s: res.cache[s] for s in sites}


@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_last_layer_sender_to_logits_is_activation_patching(trun, ablation):
    """Nothing lies after the last layer's heads but its MLP: with the MLP recomputed, the path
    to the logits is the whole effect of the head."""
    last = trun.model.n_layers - 1
    senders = [(last, h) for h in range(trun.model.n_heads)]
    path = path_patch(trun, senders=senders, ablation=ablation)
    act = patch(trun, component="heads", layers=[last], ablation=ablation)
    torch.testing.assert_close(path.values[:, 0], act.values[0], rtol=0, atol=1e-5)
    assert path.clean == act.clean and path.corrupt == act.corrupt


def test_frozen_path_to_logits_is_the_direct_effect(trun):
    """With heads and MLPs frozen, the final residual is the clean one plus the sender's change of
    its own write, W_O[h] (z_ref - z_clean): add exactly that to the last resid_post."""
    model = trun.model
    last = model.n_layers - 1
    path = path_patch(trun, freeze_mlps=True, batch_size=5)
    assert path.values.shape == (model.n_layers * model.n_heads, 1)
    z = _cap(trun, "corrupt", [f"layers.{L}.attn.z" for L in range(model.n_layers)])
    for i, (layer, h) in enumerate((L, h) for L in range(model.n_layers) for h in range(model.n_heads)):
        site = f"layers.{layer}.attn.head_out"
        clean_out = _cap(trun, "clean", [site])[site][:, :, h]
        edit = Patch(site=f"layers.{layer}.attn.z[{h}]", source=z[f"layers.{layer}.attn.z"][:, :, h:h + 1])
        delta = _cap(trun, "clean", [site], [edit])[site][:, :, h] - clean_out
        want = _score(trun, [Apply(site=f"layers.{last}.resid_post", fn=lambda x, d=delta: x + d)])
        torch.testing.assert_close(float(path.values[i, 0]), want, rtol=0, atol=1e-5)
    # for a layer-0 sender the frozen path is not the head's whole effect
    act = patch(trun, component="heads", layers=[0])
    assert (path.values[: model.n_heads, 0] - act.values[0]).abs().max() > 1e-3


@pytest.mark.parametrize("freeze_mlps", [False, True])
def test_qkv_receivers_match_a_hand_written_two_step_run(trun, freeze_mlps):
    model = trun.model
    receivers = ["1.2.q", "1.1.k", "2.0.v", "logits"]
    senders = [(0, 3), (1, 0), (2, 1)]
    path = path_patch(trun, senders=senders, receivers=receivers, freeze_mlps=freeze_mlps, batch_size=1)
    z_sites = [f"layers.{L}.attn.z" for L in range(3)]
    corrupt = _cap(trun, "corrupt", z_sites)
    clean = _cap(trun, "clean", z_sites + [f"layers.{L}.mlp_out" for L in range(3)])
    qkv = ["layers.1.attn.q", "layers.1.attn.k", "layers.2.attn.v"]
    for i, (layer, h) in enumerate(senders):
        # step 1: the sender corrupted, every later head (and MLP) frozen at its clean value
        edits = [Patch(site=f"layers.{layer}.attn.z[{h}]", source=corrupt[f"layers.{layer}.attn.z"][:, :, h:h + 1])]
        edits += [Patch(site=f"layers.{L}.attn.z", source=clean[f"layers.{L}.attn.z"]) for L in range(layer + 1, 3)]
        if freeze_mlps:
            edits += [Patch(site=f"layers.{L}.mlp_out", source=clean[f"layers.{L}.mlp_out"]) for L in range(layer, 3)]
        got = _cap(trun, "clean", qkv, edits)
        # step 2: only the receiver's slice takes the value it had in step 1
        for j, (site, unit) in enumerate([(qkv[0], 2), (qkv[1], 1), (qkv[2], 0)]):
            if layer >= int(site.split(".")[1]):
                assert math.isnan(float(path.values[i, j]))
                continue
            want = _score(trun, [Patch(site=f"{site}[{unit}]", source=got[site][:, :, unit:unit + 1])])
            torch.testing.assert_close(float(path.values[i, j]), want, rtol=0, atol=1e-5)
        want = _score(trun, edits)
        torch.testing.assert_close(float(path.values[i, 3]), want, rtol=0, atol=1e-5)
    assert not torch.isnan(path.values[0]).any() and torch.isnan(path.values[2, :3]).all()
    assert (path.effect[0, :3].abs() > 1e-5).all()  # each route carries something on a random model
    stacked = path_patch(trun, senders=senders, receivers=receivers, freeze_mlps=freeze_mlps, batch_size=4)
    torch.testing.assert_close(stacked.values, path.values, rtol=0, atol=1e-5, equal_nan=True)
    assert model.n_kv_heads == 2  # "1.1.k" is a key/value head of the grouped-query attention


def test_result_and_errors(trun):
    res = path_patch(trun, senders=[(0, 1), (1, 2)], receivers=["logits", "1.0.q"], ablation="mean")
    d = res.to_dict()
    assert set(d) == PLOT_KEYS
    json.dumps(d)  # NaN serialises as NaN, as Python's json writes it
    assert d["kind"] == "path" and d["row_title"] == "sender" and d["col_title"] == "receiver"
    assert d["row_labels"] == ["a0.h1", "a1.h2"] and d["col_labels"] == ["logits", "1.0.q"]
    torch.testing.assert_close(res.normalized, (res.clean - res.values) / (res.clean - res.corrupt), equal_nan=True)
    assert len(res.top(10)) == 3 and all("->" in n for n in res.top(10))
    assert res.table().rows[0][0] + "->" + res.table().rows[0][1] == res.top(1)[0]
    for bad, match in [("3.0.q", "layer 3 is out of range"), ("0.4.q", "4 query heads"),
                       ("0.2.k", "key/value heads"), ("0.1.z", "expected 'logits'"), ("resid", "expected 'logits'")]:
        with pytest.raises(InputError, match=match):
            path_patch(trun, receivers=[bad])
    with pytest.raises(InputError, match="head 4 is out of range"):
        path_patch(trun, senders=[(0, 4)])
    with pytest.raises(InputError, match="resample, mean, zero"):
        path_patch(trun, ablation="noise")
    with pytest.raises(InputError, match="repeat"):
        path_patch(trun, receivers=["logits", "logits"])


@pytest.mark.slow
def test_smollm_ioi_heads_writing_to_the_logits(smollm):
    """Late heads (name movers) write the IOI answer straight into the logits; the first two
    layers' heads do not. Senders: layers 0-1 and the last 8 (90 heads, about 30 s on 2 cores)."""
    from lmscope.datasets.circuit_tasks import ioi

    run = TaskRun.build(smollm, ioi(smollm, n=8, seed=0))
    early, late = [0, 1], list(range(smollm.n_layers - 8, smollm.n_layers))
    senders = [(L, h) for L in early + late for h in range(smollm.n_heads)]
    res = path_patch(run, senders=senders)
    norm = res.normalized[:, 0]
    cut = len(early) * smollm.n_heads
    assert float(norm[cut:].max()) > 0.1  # corrupting such a head lowers the logit difference directly
    assert float(norm[:cut].abs().max()) < 0.5 * float(norm[cut:].max())
    assert res.top(1)[0].endswith("->logits") and int(res.top(1)[0][1:].split(".")[0]) in late
