"""Neurons: streaming statistics, top contexts, correlation, ablation, attribution, dose-response.

Tiny random models check exact effects; the real-model tests (slow) check directions of
change against a random-neuron control on the determiner-agreement prompts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_tiny  # noqa: E402 - pytest puts tests/ on sys.path

from lmscope.datasets.corpus import read_prompts, read_texts, token_windows
from lmscope.engine.errors import InputError, SiteError
from lmscope.neurons import causal as nc
from lmscope.neurons.correlation import (
    auroc,
    correlate,
    load_labelled,
    neuron_activations,
)
from lmscope.neurons.recording import (
    NeuronRecording,
    RecordConfig,
    parse_neurons,
    record,
)
from lmscope.neurons.stats import NeuronStats

DATA = Path(__file__).resolve().parents[2] / "src" / "lmscope" / "datasets" / "data"
TEXTS = ["the quick brown fox jumps over the lazy dog " * 3, "short one", "abc def ghi jkl mno pqr stu",
         "another text with different letters xyz " * 2, "hello world"]


def _full_acts(lm, site, windows):
    """Every text-token activation [tokens, n], and per-window [windows, cols] for checks."""
    rows, per_window = [], []
    for idx, batch, valid in windows.batches(100, lm.device):
        x = lm.run(batch, capture=[site], logits=None).cache[site]
        rows.append(x[valid])
        per_window.append((idx, batch.input_ids, x, valid))
    return torch.cat(rows), per_window


# ---- streaming statistics -------------------------------------------------------------------

def test_neuron_stats_match_torch_on_the_full_tensor():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(3000, 5, generator=g) * torch.tensor([0.01, 0.3, 1.0, 5.0, 50.0]),
                   torch.randn(3000, 5, generator=g).exp()], 1)  # [tokens, 10]: varied scales, skewed
    s = NeuronStats(10)
    for chunk in x.split(257):
        s.update(chunk)
    assert s.count == len(x)
    torch.testing.assert_close(s.mean.float(), x.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.std, x.std(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.share_positive, (x > 0).float().mean(0))
    assert torch.equal(s.max, x.max(0).values) and torch.equal(s.min, x.min(0).values)
    qs = [0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0]
    est, exact = s.quantiles(qs), torch.quantile(x, torch.tensor(qs), dim=0).t()
    bound = exact.abs() / s.octave_bins + 2.0**s.e_min  # one bin width at that value
    assert ((est - exact).abs() <= bound).all(), (est - exact).abs().max()
    torch.testing.assert_close(est[:, 0], x.min(0).values)
    torch.testing.assert_close(est[:, -1], x.max(0).values)
    h = s.histogram(3)
    assert sum(h["counts"]) == len(x) and len(h["edges"]) == len(h["counts"]) + 1
    # binning from the float bits: each value falls between its bin's edges
    v = torch.tensor([-3e4, -5.0, -1e-3, -1e-5, 0.0, 1e-5, 1e-3, 0.3, 1.0, 1.06, 7.5, 3e4])
    e, b = s.edges, s._bin(v)
    inside = (e[b] <= v) & (v <= e[b + 1])  # negative bins are closed on the right
    assert inside[1:-1].all() and b[0] == 0 and b[-1] == s.n_bins - 1 and b[4] == s.n_bins // 2


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
def test_record_stats_equal_torch_stats_and_top_contexts_hold_the_maxima(family):
    lm = make_tiny(family)
    cfg = RecordConfig(window=16, batch_size=3, top_k=4, before=3, after=2)
    windows = token_windows(lm, TEXTS, window=cfg.window)
    rec = record(lm, ["layers.1.mlp.neurons", "layers.2.mlp.up[3,5,7]"], windows, config=cfg)
    full, per_window = _full_acts(lm, "layers.1.mlp.neurons", windows)
    s = rec.sites["layers.1.mlp.neurons"].stats
    assert rec.n_tokens == len(full) == s.count == windows.n_tokens
    torch.testing.assert_close(s.mean.float(), full.mean(0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s.std, full.std(0), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(s.max, full.max(0).values)  # other batching: other padding, last-bit noise
    torch.testing.assert_close(s.share_positive, (full > 0).float().mean(0))
    # top contexts: the k largest per-window maxima, with the maximum at the context centre
    win_max = torch.cat([x.masked_fill(~v[..., None], -math.inf).max(1).values for _, _, x, v in per_window])
    top = rec.sites["layers.1.mlp.neurons"].top
    torch.testing.assert_close(top.vals, win_max.topk(4, dim=0).values)
    torch.testing.assert_close(top.acts[:, :, cfg.before], top.vals)
    ids_all = torch.cat([torch.nn.functional.pad(ids, (16 - ids.shape[1], 0)) for _, ids, _, _ in per_window])
    for j in (0, 17, 95):
        for i in range(4):
            w, p = int(top.window[i, j]), int(top.pos[i, j])
            text_ids = windows.ids[w][windows.valid()[w]]
            assert int(top.ids[i, j, cfg.before]) == int(text_ids[p])
            assert torch.isclose(win_max[w, j], top.vals[i, j])
    assert ids_all.shape[0] == len(windows)
    ex = rec.examples(1, 17, lm.tokenizer)
    assert len(ex) == 4 and ex[0].max_act >= ex[-1].max_act
    assert ex[0].acts[ex[0].max_index] == pytest.approx(ex[0].max_act)
    # a unit selection records only those neurons, with the same numbers as the whole layer would
    sub = rec.sites["layers.2.mlp.up[3,5,7]"]
    assert sub.units.tolist() == [3, 5, 7] and rec.neuron_stats(2, 5, kind="up")["count"] == s.count
    with pytest.raises(SiteError):
        rec.find(2, 4, "up")


def test_recording_save_load_roundtrip(tmp_path):
    lm = make_tiny("llama")
    rec = record(lm, "layers.0.mlp.neurons", TEXTS, config=RecordConfig(window=12, top_k=3, before=2, after=1))
    path = rec.save(tmp_path / "rec.safetensors", lm)
    back = NeuronRecording.load(path, model=lm)
    a, b = back.neuron_stats(0, 5), rec.neuron_stats(0, 5)
    assert a.pop("quantiles") == pytest.approx(b.pop("quantiles"), rel=1e-6)
    assert a.pop("site") == b.pop("site") == "layers.0.mlp.neurons[5]"
    assert a == pytest.approx(b, rel=1e-12)  # float64 moments survive float32 storage (hi + lo parts)
    assert [e.to_dict() for e in back.examples(0, 5, lm.tokenizer)] == [e.to_dict() for e in rec.examples(0, 5, lm.tokenizer)]
    other = make_tiny("qwen2")
    with pytest.raises(Exception, match="made for"):
        NeuronRecording.load(path, model=other)


def test_corpus_windows_and_readers(tmp_path):
    lm = make_tiny("llama")
    w = token_windows(lm, ["a" * 30, "bb"], window=10)
    assert w.ids.shape == (5, 10) and w.n_prefix == 1  # 30 chars -> 4 windows of 9, + 1
    assert w.n_tokens == 32
    assert (w.valid().sum(1) == torch.tensor([9, 9, 9, 3, 2])).all()
    assert token_windows(lm, ["a" * 30], window=10, max_tokens=12).n_tokens == 12
    (tmp_path / "c.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    (tmp_path / "d.txt").write_text("a doc")
    assert read_texts(tmp_path) == ["one", "two", "a doc"]
    assert read_texts(tmp_path / "c.jsonl") == ["one", "two"]
    (tmp_path / "p.txt").write_text("first\n\nsecond\n")
    assert read_prompts(tmp_path / "p.txt") == ["first", "second"]
    with pytest.raises(InputError, match="field"):
        read_prompts(DATA / "singular_plural_agreement.jsonl")
    assert len(read_prompts(DATA / "singular_plural_agreement.jsonl", field="prompt_plural")) > 10
    with pytest.raises(InputError):
        read_texts(["   "])


def test_parse_neurons():
    lm = make_tiny("llama")
    assert parse_neurons(lm, "1.5,2.7") == [(1, 5), (2, 7)]
    assert parse_neurons(lm, "layers.-1.mlp.neurons[3,4]") == [(2, 3), (2, 4)]
    with pytest.raises(SiteError, match="out of range"):
        parse_neurons(lm, "1.96")
    with pytest.raises(SiteError):
        parse_neurons(lm, "layers.1.resid_post")


# ---- correlation ------------------------------------------------------------------------------

def test_auroc_equals_pairwise_count_with_ties():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 5, (40, 6), generator=g).float()  # many ties
    y = torch.rand(40, generator=g) > 0.4
    pos, neg = x[y], x[~y]
    brute = ((pos[:, None] > neg[None]).float() + 0.5 * (pos[:, None] == neg[None]).float()).mean((0, 1))
    torch.testing.assert_close(auroc(x, y), brute)


def test_correlate_separates_a_token_identity_label():
    lm = make_tiny("llama")
    texts = [f"{w} {e}" for w in ("cat", "dog", "sun", "hat", "pen", "cup") for e in ("a", "z")]
    labels = [t.endswith("a") for t in texts]
    res = correlate(lm, texts, labels, layers=[0])
    top = res.ranked(3)
    assert abs(top[0]["auroc"] - 0.5) == pytest.approx(0.5)  # the last token decides at layer 0
    assert res.null_auroc_dev < 0.5
    acts = neuron_activations(lm, texts, [0])
    n = top[0]["neuron"]
    assert top[0]["mean_present"] == pytest.approx(float(acts[torch.tensor(labels), 0, n].mean()), rel=1e-5)
    t2, l2 = load_labelled(DATA / "singular_plural_agreement.jsonl")
    assert len(t2) == 2 * sum(1 for _ in open(DATA / "singular_plural_agreement.jsonl")) and l2[:2] == [False, True]


# ---- ablation --------------------------------------------------------------------------------

def test_zero_ablating_every_neuron_zeroes_mlp_out(tiny):
    """With every neuron at zero, what the MLP writes is its down-projection bias (zero for
    bias-free families; post-norms map zero to zero)."""
    edits = nc.ablation_edits(tiny, [(1, n) for n in range(tiny.d_mlp)], "zero")
    res = tiny.run(["hello there", "abc"], capture=["layers.1.mlp_out", "layers.1.mlp.neurons"], edits=edits)
    out = res.cache["layers.1.mlp_out"]
    mask = res.batch.attention_mask.bool()
    assert (res.cache["layers.1.mlp.neurons"][mask] == 0).all()
    from lmscope.engine.arch import get_module

    bias = getattr(get_module(tiny.block(1), tiny.spec.down), "bias", None)
    expect = torch.zeros(tiny.d_model) if bias is None else bias.detach()
    torch.testing.assert_close(out[mask], expect.expand_as(out[mask]), atol=1e-6, rtol=0)


def test_mean_ablation_with_the_batch_mean_sets_exactly_those_neurons():
    lm = make_tiny("qwen2")
    prompts = ["hello there", "abc def", "xyz"]
    ref = nc.reference_activations(lm, prompts)  # the batch itself is the reference
    clean = lm.run(prompts, capture=["layers.1.mlp.neurons"]).cache["layers.1.mlp.neurons"]
    full = torch.cat([lm.run(batch, capture=["layers.1.mlp.neurons"], logits=None).cache["layers.1.mlp.neurons"][v]
                      for _, batch, v in token_windows(lm, prompts, window=64).batches(8, lm.device)])
    torch.testing.assert_close(ref.mean[1], full.mean(0))
    units = [4, 9, 50]
    edits = nc.ablation_edits(lm, [(1, u) for u in units], "mean", reference=ref)
    res = lm.run(prompts, capture=["layers.1.mlp.neurons"], edits=edits)
    x = res.cache["layers.1.mlp.neurons"]
    mask = res.batch.attention_mask.bool()
    torch.testing.assert_close(x[mask][:, units], ref.mean[1, units].expand(int(mask.sum()), -1))
    others = [u for u in range(lm.d_mlp) if u not in units]
    torch.testing.assert_close(x[mask][:, others], clean[mask][:, others])  # same layer, before any change
    res_pool = nc.ablation_edits(lm, [(1, 4)], "resample", reference=ref, seed=3)[0]
    assert res_pool.pool.shape == (len(ref.acts), 1)


def test_ablate_reports_consistent_effects_and_kl():
    lm = make_tiny("gemma3_text")
    prompts = ["hello there", "abc def gh", "the cat sat", "zzz"]
    none = nc.ablate(lm, [(0, 1)], prompts, target=5, baseline=6, method="zero", neutral=["a b"],
                     positions=[0])  # ablating only the first token of each prompt
    eff = nc.ablate(lm, [(0, n) for n in range(lm.d_mlp)], prompts, target=5, baseline=6, neutral=["a b", "cc"])
    assert eff.ld_before == pytest.approx(none.ld_before)
    assert eff.kl_neutral > 0 and eff.delta_ld == pytest.approx(eff.ld_after - eff.ld_before, abs=1e-6)
    base = lm.run(prompts).logits
    ld = base[:, 5] - base[:, 6]
    assert eff.ld_before == pytest.approx(float(ld.mean()), rel=1e-5)
    with pytest.raises(InputError, match="reference"):
        nc.ablation_edits(lm, [(0, 1)], "mean")


def test_attribution_is_the_derivative_of_the_logit_difference():
    """attribute() = sum over positions of act x grad = d LD / d s at s = 1 when every
    activation of the neuron is scaled by s: check against a finite difference."""
    from lmscope.engine.interventions import Scale

    lm = make_tiny("llama")
    prompts = ["hello there", "the cat sat on"]
    scores = nc.attribute(lm, prompts, target=5, baseline=6)
    top = nc.top_neurons(scores, 3)
    eps = 1e-2
    for layer, n in top:
        def ld(s):
            edit = Scale(site=f"layers.{layer}.mlp.neurons[{n}]", factor=s)
            lg = lm.run(prompts, edits=[edit]).logits.double()
            return float((lg[:, 5] - lg[:, 6]).mean())
        fd = (ld(1 + eps) - ld(1 - eps)) / (2 * eps)
        assert fd == pytest.approx(float(scores[layer, n]), rel=0.05, abs=1e-6)


def test_ablation_curve_top_effect_equals_ablate_and_random_is_seeded():
    lm = make_tiny("llama")
    prompts = ["hello there", "abc def gh", "the cat sat"]
    ranking = nc.top_neurons(nc.attribute(lm, prompts, target=5, baseline=6), 10)
    c1 = nc.ablation_curve(lm, ranking, prompts, target=5, baseline=6, ks=[1, 5, 10], n_random=2)
    c2 = nc.ablation_curve(lm, ranking, prompts, target=5, baseline=6, ks=[1, 5, 10], n_random=2)
    assert c1.ks == [1, 5, 10] and c1.random == c2.random
    direct = nc.ablate(lm, ranking[:5], prompts, target=5, baseline=6)
    assert c1.top[1].delta_ld == pytest.approx(direct.delta_ld)
    # the attribution's top neurons move the logit difference more than random ones
    assert c1.top[-1].delta_ld < c1.random[-1]["delta_ld"]["mean"]


def test_agreement_demo_rejects_overlapping_splits_and_ships_its_data():
    from lmscope.neurons.agreement import agreement_demo, agreement_rows

    rows = agreement_rows()
    assert len(rows) >= 40 and all({"prompt_singular", "prompt_plural", "singular", "plural"} <= set(r) for r in rows)
    with pytest.raises(InputError, match="n_rank"):
        agreement_demo(make_tiny("llama"), n_rank=len(rows), n_eval=1)


# ---- dose-response -----------------------------------------------------------------------------

def test_dose_at_the_natural_value_equals_the_clean_run():
    lm = make_tiny("gemma3_text")
    prompt = ["the cat sat on the mat"]
    nat = float(lm.run(prompt, capture=["layers.1.mlp.neurons[7]"], positions="last").cache["layers.1.mlp.neurons[7]"][0, 0])
    res = nc.dose_response(lm, [(1, 7)], prompt, target=5, baseline=6, values=[nat, nat + 5.0], positions="last")
    assert res.p_target[0] == pytest.approx(res.clean_p_target, rel=1e-6)
    assert res.ld[0] == pytest.approx(res.clean_ld, abs=1e-6)
    assert res.ld[1] != pytest.approx(res.clean_ld, abs=1e-4)
    assert res.natural["min"] == pytest.approx(nat) and res.natural["n"] == 1
    with pytest.raises(InputError):
        nc.dose_response(lm, [(1, 7)], prompt, target=5, values=[])


def test_plots_write_files(tmp_path):
    from lmscope.plots.neuron_plots import (
        plot_ablation_curve,
        plot_dose,
        write_examples_html,
    )

    lm = make_tiny("llama")
    prompts = ["hello there", "abc def gh"]
    d = nc.dose_response(lm, [(1, 7)], prompts, target=5, baseline=6, values=[-1, 0, 1]).to_dict()
    assert plot_dose(d, tmp_path / "d.png").stat().st_size > 1000
    c = nc.ablation_curve(lm, [(0, 1), (1, 2)], prompts, target=5, baseline=6, ks=[1, 2], n_random=2).to_dict()
    assert plot_ablation_curve(c, tmp_path / "c.png").stat().st_size > 1000
    rec = record(lm, "layers.0.mlp.neurons[3]", TEXTS, config=RecordConfig(window=12, top_k=2))
    ex = [e.to_dict() for e in rec.examples(0, 3, lm.tokenizer)]
    page = write_examples_html(tmp_path / "n.html", "<n>", ex, stats=rec.neuron_stats(0, 3),
                               hist=rec.sites["layers.0.mlp.neurons[3]"].stats.histogram(0)).read_text()
    assert page.count("<tr><td class=\"n\">") == 2 and "&lt;n&gt;" in page and "<svg" in page
    data = json.loads(page.split("id='data'>")[1].split("</script>")[0].replace("&amp;", "&").replace("&lt;", "<")
                      .replace("&gt;", ">"))
    assert data["examples"][0]["max_act"] == ex[0]["max_act"]


# ---- real models (slow): directions of change, each against a random-neuron control ---------------

def _agreement(split: slice, key: str = "prompt_plural") -> list[str]:
    rows = [json.loads(line) for line in open(DATA / "singular_plural_agreement.jsonl")]
    return [r[key] for r in rows[split]]


@pytest.fixture(scope="module")
def gemma_agreement(gemma):
    """`lmscope neuron agreement --json` (API `agreement_demo`): neurons ranked by attribution
    to LD(" these" - " this") on 6 plural prompts, ablated on 6 held-out ones next to random
    neurons (k = 1, 2, 5, 10)."""
    from click.testing import CliRunner

    import lmscope.cli.neurons as cli_neurons
    from lmscope.cli.main import cli

    with pytest.MonkeyPatch.context() as mp:  # reuse the session's model instead of loading it again
        mp.setattr(cli_neurons, "load_model", lambda name, device="cpu", dtype="float32": gemma)
        r = CliRunner().invoke(cli, ["neuron", "agreement", "gemma-3-270m", "--n-rank", "6", "--n-eval", "6",
                                     "--k-max", "10", "--n-random", "2", "--n-neutral", "3", "--json"])
    assert r.exit_code == 0, r.output
    return gemma, json.loads(r.stdout)


@pytest.mark.slow
def test_ablating_top_agreement_neurons_lowers_the_plural_logit_difference_more_than_random(gemma_agreement):
    _, d = gemma_agreement
    curve = d["curve"]
    assert curve["ks"] == [1, 2, 5, 10]
    top, rnd = curve["top"][-1], curve["random"][-1]
    assert top["ld_before"] > d["clean_singular_ld"] + 1  # plural prompts favour " these" more than singular ones
    assert top["delta_ld"] < -0.3
    assert top["delta_ld"] < rnd["delta_ld"]["mean"] - 0.3  # ten random neurons barely matter
    assert top["kl_neutral"] > 0
    # the best single neuron moves LD less than ten together (one neuron alone rarely decides)
    assert curve["top"][0]["delta_ld"] > top["delta_ld"]
    assert curve["top"][0]["judgement_flip_rate"] <= top["judgement_flip_rate"]


@pytest.mark.slow
def test_dose_response_of_the_top_agreement_neuron_moves_the_logit_difference_its_way(gemma_agreement):
    lm, d = gemma_agreement
    prompts = _agreement(slice(-6, None))
    layer, n = d["ranking"][0]["layer"], d["ranking"][0]["neuron"]
    values = [-2.0, 2.0, 6.0]
    top = nc.dose_response(lm, [(layer, n)], prompts, target=" these", baseline=" this", values=values)
    ctrl = (n + 1 + int(torch.randint(lm.d_mlp - 1, (1,), generator=torch.Generator().manual_seed(0)))) % lm.d_mlp
    rnd = nc.dose_response(lm, [(layer, ctrl)], prompts, target=" these", baseline=" this", values=values)
    swing = top.ld[-1] - top.ld[0]
    assert swing > 0.5  # positive attribution: raising the neuron favours " these"
    assert top.ld[0] < top.ld[1] < top.ld[2]
    assert swing > 2 * abs(rnd.ld[-1] - rnd.ld[0])  # a random neuron of the same layer, same values
    assert top.natural["q01"] < top.natural["q99"]


@pytest.mark.slow
def test_cli_neuron_show_and_top_json(smollm, tmp_path):
    from click.testing import CliRunner

    from lmscope.cli.main import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["neuron", "show", "smollm2-135m-instruct", "3.7", "--max-tokens", "300", "-k", "3",
                              "--html", str(tmp_path / "n.html"), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)  # stderr (progress bars) is kept apart
    assert d["layer"] == 3 and d["neuron"] == 7 and len(d["examples"]) == 3
    assert d["stats"]["count"] == d["recorded_tokens"] == 300
    assert d["decoding"] is None or d["decoding"]["out"]
    assert (tmp_path / "n.html").stat().st_size > 1000
    bad = runner.invoke(cli, ["neuron", "top", "smollm2-135m-instruct", "3.99999", "--json"])
    assert bad.exit_code != 0
