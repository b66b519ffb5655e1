"""Activation patching: exact causal effects on a tiny random llama (no-op patches, full-residual
denoising, all heads of a layer = its attention output, stacked == one forward per component),
the reference values of each ablation, and on the real models the IOI heads (slow)."""

from __future__ import annotations

import json

import pytest
import torch

from lmscope.circuits.ablation import ABLATIONS, check_ablation, reference
from lmscope.circuits.metric import TaskRun
from lmscope.circuits.patching import Write, forward_jobs, patch
from lmscope.datasets.circuit_tasks import TaskSet
from lmscope.engine.errors import InputError
from lmscope.engine.hooks import hook_count
from lmscope.engine.interventions import Patch, Set
from lmscope.engine.runner import run as engine_run

PLOT_KEYS = {"kind", "direction", "ablation", "metric", "task", "model", "values", "raw", "row_labels",
             "col_labels", "row_title", "col_title", "clean", "corrupt"}


def hand_task(same: bool = False) -> TaskSet:
    """Four rows of different lengths (so the batch is padded); corrupt rows differ from clean
    in a few tokens (or equal them, `same`)."""
    clean = [[1, 5, 9, 13, 17, 21, 25], [1, 6, 10, 14, 18], [1, 7, 11, 15, 19, 23], [1, 8, 12, 16, 20, 24, 28]]
    corrupt = [list(r) if same else [r[0], r[1] + 40, *r[2:-2], r[-2] + 50, r[-1]] for r in clean]
    return TaskSet(name="hand", metric="logit_diff", clean=clean, corrupt=corrupt,
                   positions=[[len(r) - 1] for r in clean], answers=[[30], [31], [32], [33]],
                   wrong=[[40], [41], [42], [43]], seed=0, meta={})


@pytest.fixture
def trun(tiny_llama):
    return TaskRun.build(tiny_llama, hand_task())


def _score(run, which, edits=()):
    with torch.no_grad():  # TaskRun.score reads out the metric outside the forward's no_grad
        return run.score(which, edits)


def _acts(run, which, sites):
    res = engine_run(run.model, run.batch(which), capture=sites, logits=None)
    return {s: res.cache[s] for s in sites}


# ---- ablation ---------------------------------------------------------------------------------

def test_reference_values(trun):
    acts = torch.randn(4, 7, 3)
    mask = trun.corrupt.attention_mask
    assert reference(trun, acts, mask, "resample") is acts
    assert torch.equal(reference(trun, acts, mask, "zero"), torch.zeros_like(acts))
    mean = reference(trun, acts, mask, "mean")
    for c in range(7):
        real = mask[:, c].bool()
        want = acts[real, c].mean(0)
        for i in range(4):
            torch.testing.assert_close(mean[i, c], want)
    with pytest.raises(InputError, match="resample, mean, zero"):
        check_ablation("gaussian")
    with pytest.raises(InputError, match="do not match"):
        reference(trun, acts[:, :5], mask, "mean")
    assert ABLATIONS == ("resample", "mean", "zero")


# ---- exactness ----------------------------------------------------------------------------------

@pytest.mark.parametrize("component", ["heads", "mlp", "resid", "neurons"])
def test_patching_clean_into_clean_is_a_no_op(tiny_llama, component):
    """Corrupt == clean: every noising patch writes the clean value, so every value is the clean
    metric, bit for bit one component per forward and to rounding when stacked."""
    run = TaskRun.build(tiny_llama, hand_task(same=True))
    kw = {"neurons": [(0, 3), (2, 95)]} if component == "neurons" else {}
    one = patch(run, component=component, batch_size=1, **kw)
    assert torch.equal(one.values, torch.full_like(one.values, one.clean))
    stacked = patch(run, component=component, batch_size=5, **kw)
    torch.testing.assert_close(stacked.values, torch.full_like(one.values, one.clean), rtol=0, atol=1e-5)


def test_restoring_the_whole_residual_recovers_the_clean_metric(trun):
    """Denoising resid_pre at every position of layer L makes everything after it clean."""
    clean = float(_score(trun, "clean").mean())
    res = patch(trun, component="resid", direction="denoising", positions="all", batch_size=1)
    assert res.values.shape == (trun.model.n_layers, 1)
    assert torch.equal(res.values, torch.full_like(res.values, clean))
    torch.testing.assert_close(res.normalized, torch.ones_like(res.normalized))
    noised = patch(trun, component="resid", positions="all", batch_size=1)  # noising: the corrupt metric
    torch.testing.assert_close(noised.values, torch.full_like(noised.values, noised.corrupt), rtol=0, atol=1e-5)


def test_all_heads_of_a_layer_equal_its_attention_output(trun):
    """Noising every head of layer 1 at once (four writes, resample) = patching the layer's whole
    attention output with the corrupt one (llama's o_proj is linear without bias)."""
    model = trun.model
    z = _acts(trun, "corrupt", ["layers.1.attn.z", "layers.1.attn_out"])
    want = float(_score(trun, "clean", [Patch(site="layers.1.attn_out", source=z["layers.1.attn_out"])]).mean())
    job = [Write("layers.1.attn.z", z["layers.1.attn.z"], h) for h in range(model.n_heads)]
    (one, _), = forward_jobs(trun, "clean", [job], per_forward=1)
    stacked = forward_jobs(trun, "clean", [[], job, job[:1]], per_forward=3)
    torch.testing.assert_close(one, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(stacked[1][0], want, rtol=0, atol=1e-5)
    # and one head alone is the grid's cell, computed independently with a Patch edit
    grid = patch(trun, component="heads")
    cell = float(_score(trun, "clean", [Patch(site="layers.1.attn.z[0]",
                                            source=z["layers.1.attn.z"][:, :, :1])]).mean())
    torch.testing.assert_close(stacked[2][0], cell, rtol=0, atol=1e-5)
    torch.testing.assert_close(float(grid.values[1, 0]), cell, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("component", "direction", "ablation", "positions"), [
    ("heads", "noising", "resample", None), ("heads", "denoising", "resample", None),
    ("heads", "noising", "mean", None), ("mlp", "noising", "zero", "each"), ("mlp", "denoising", "resample", "each"),
    ("resid", "noising", "resample", "each"), ("resid", "denoising", "resample", "each"),
    ("neurons", "noising", "mean", None),
])
def test_stacked_equals_one_forward_per_component(trun, component, direction, ablation, positions):
    kw = {"neurons": [(1, 5), (2, 0), (0, 95)]} if component == "neurons" else {}
    one = patch(trun, component=component, direction=direction, ablation=ablation, positions=positions,
                batch_size=1, **kw)
    many = patch(trun, component=component, direction=direction, ablation=ablation, positions=positions,
                 batch_size=7, **kw)
    torch.testing.assert_close(many.values, one.values, rtol=0, atol=1e-5)
    assert one.clean != one.corrupt
    assert (one.effect.abs() > 1e-4).any()  # the patches do something


def test_zero_and_mean_ablation_match_set_edits(trun):
    model = trun.model
    zero = patch(trun, component="mlp", ablation="zero", batch_size=1)
    for layer in range(model.n_layers):
        want = float(_score(trun, "clean", [Set(site=f"layers.{layer}.mlp_out", value=0.0)]).mean())
        torch.testing.assert_close(float(zero.values[layer, 0]), want, rtol=0, atol=1e-6)
    mean = patch(trun, component="heads", ablation="mean", layers=[2])
    z = _acts(trun, "corrupt", ["layers.2.attn.z"])["layers.2.attn.z"]
    mask = trun.corrupt.attention_mask[:, :, None, None].float()
    avg = (z * mask).sum(0, keepdim=True) / mask.sum(0, keepdim=True)  # [1, pos, head, d_head]
    want = float(_score(trun, "clean", [Patch(site="layers.2.attn.z[3]", source=avg[:, :, 3:4])]).mean())
    torch.testing.assert_close(float(mean.values[0, 3]), want, rtol=0, atol=1e-5)


def test_one_column_of_the_residual(trun):
    """resid 'each' at column c writes only column c (rows where it is padding keep theirs)."""
    width = trun.clean.input_ids.shape[1]
    res = patch(trun, component="resid", layers=[1], batch_size=1)
    corrupt = _acts(trun, "corrupt", ["layers.1.resid_pre"])["layers.1.resid_pre"]
    for c in (0, 3, width - 1):
        src = _acts(trun, "clean", ["layers.1.resid_pre"])["layers.1.resid_pre"].clone()
        src[:, c] = corrupt[:, c]
        want = float(_score(trun, "clean", [Patch(site="layers.1.resid_pre", source=src)]).mean())
        torch.testing.assert_close(float(res.values[0, c]), want, rtol=0, atol=1e-5)


# ---- the result and the errors ------------------------------------------------------------------

def test_result_fields_labels_and_names(trun):
    res = patch(trun, component="heads")
    d = res.to_dict()
    assert set(d) == PLOT_KEYS
    json.dumps(d)
    assert d["kind"] == "heads" and d["direction"] == "noising" and d["ablation"] == "resample"
    assert len(d["values"]) == trun.model.n_layers and len(d["values"][0]) == trun.model.n_heads
    gap = res.clean - res.corrupt
    torch.testing.assert_close(res.normalized, (res.clean - res.values) / gap)
    torch.testing.assert_close(res.effect, res.values - res.clean)
    top = res.top(3)
    flat = res.normalized.abs().flatten()
    best = int(flat.argmax())
    assert top[0] == f"a{best // trun.model.n_heads}.h{best % trun.model.n_heads}" and len(top) == 3
    assert res.table().rows[0][0] == top[0]
    den = patch(trun, component="heads", direction="denoising")
    torch.testing.assert_close(den.normalized, (den.values - den.corrupt) / gap)
    assert den.table().title.startswith("denoising")
    resid = patch(trun, component="resid", layers=[0, -1])
    width = trun.clean.input_ids.shape[1]
    assert resid.row_labels == ["0", "2"] and len(resid.col_labels) == width
    assert resid.col_labels[:width - 7] == ["<pad>"] * (width - 7)  # row 0 has 7 tokens
    assert resid.names[1][4] == "r2@4" and resid.col_title == "position"
    assert patch(trun, component="mlp", positions="each", layers=[1]).names[0][2] == "m1@2"
    assert patch(trun, component="neurons", neurons=[(2, 17)]).names == [["n2.17"]]


def test_bad_options_are_clear_errors(trun):
    with pytest.raises(InputError, match="Denoising restores clean"):
        patch(trun, direction="denoising", ablation="mean")
    with pytest.raises(InputError, match="resid, heads, mlp, neurons"):
        patch(trun, component="attn")
    with pytest.raises(InputError, match="noising"):
        patch(trun, direction="forwards")
    with pytest.raises(InputError, match="positions='each'"):
        patch(trun, component="heads", positions="each")
    with pytest.raises(InputError, match="neurons="):
        patch(trun, component="neurons")
    with pytest.raises(InputError, match="out of range"):
        patch(trun, layers=[3])
    with pytest.raises(InputError, match="out of range"):
        patch(trun, component="neurons", neurons=[(0, 96)])
    with pytest.raises(InputError, match="batch_size"):
        patch(trun, batch_size=0)


def test_no_hook_is_left_behind(trun):
    before = hook_count(trun.model.hf)
    patch(trun, component="heads")
    with pytest.raises(InputError):
        patch(trun, component="neurons", neurons=[(0, 96)])
    assert hook_count(trun.model.hf) == before


# ---- real models (slow) -------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma", "smollm"])
def test_ioi_heads_and_the_last_residual(request, name):
    """IOI (8 prompts, ABC corruption) on the late heads: some head carries a good part of the
    gap, noising and denoising agree on the top head, and the residual entering the last block
    carries the whole effect at the last position only."""
    from lmscope.datasets.circuit_tasks import ioi

    model = request.getfixturevalue(name)
    run = TaskRun.build(model, ioi(model, n=8, seed=0))
    late = list(range(model.n_layers - 8, model.n_layers))  # keeps the test near 30 s on 2 cores
    noise = patch(run, component="heads", layers=late)
    assert noise.clean - noise.corrupt > 1.0  # the task works
    best = noise.top(2)
    assert float(noise.normalized.nan_to_num().max()) > 0.05
    # denoising the layers of the two top noising heads restores most through the same head
    layers = sorted({int(n[1:].split(".")[0]) for n in best})
    denoise = patch(run, component="heads", direction="denoising", layers=layers)
    assert best[0] in denoise.top(2)
    resid = patch(run, component="resid", layers=[-1])
    assert float(resid.normalized[0, -1]) == pytest.approx(1.0, abs=0.2)
    assert float(resid.normalized[0, :-1].abs().max()) < 0.15  # the last block reads little from elsewhere
