"""Latent statistics, pages and search on a tiny random llama and a random TopK SAE: every number
is checked against a brute-force computation over the dense code of all tokens at once."""

from __future__ import annotations

import copy
import dataclasses
import sqlite3

import pytest
import torch
from conftest import make_tiny

from lmscope.datasets.corpus import token_windows
from lmscope.engine.errors import ArtifactError, InputError
from lmscope.neurons.atlas import AtlasConfig, build_atlas
from lmscope.plots.sae_plots import (
    plot_feature_density,
    plot_feature_histogram,
    write_feature_html,
)
from lmscope.saes.coder import CoderSpec, init_coder
from lmscope.saes.feature_db import (
    activating_tokens,
    build_feature_index,
    search_features,
)
from lmscope.saes.feature_page import decode_features, feature_page
from lmscope.saes.features import FeatureStats, feature_stats, log_edges

SITE = "layers.1.resid_post"
TEXTS = ["The quick brown fox jumps over the lazy dog near the river bank.",
         "Sparse autoencoders find features; transcoders predict an MLP's output from its input!",
         "Numbers 0123456789 and symbols <>&\"' appear here, too.", "short",
         "aaaa aaaa aaaa aaaa aaaa aaaa aaaa aaaa aaaa aaaa"]  # repeated windows: ties between windows
KW = {"max_tokens": 150, "window": 16, "top_n": 5, "batch_size": 3, "before": 3, "after": 2}


def dense_code(model, coder, site=SITE, **kw):
    """The code of every text token at once: (f [windows, cols, d_sae] zero off text, valid, ids)."""
    windows = token_windows(model, TEXTS, window=kw.get("window", 16), max_tokens=kw.get("max_tokens", 150))
    [(_, batch, valid)] = list(windows.batches(len(windows), model.device))
    x = model.run(batch, capture=[site], logits=None).cache[site]
    f = coder.encode(x).masked_fill(~valid[..., None], 0.0)
    return f.detach(), valid, batch.input_ids


@pytest.fixture(scope="module")
def lab():
    model = make_tiny("llama")
    coder = init_coder(CoderSpec(arch="topk", d_in=model.d_model, d_sae=64, k=4, site=SITE), seed=1)
    stats = feature_stats(model, coder, TEXTS, **KW)
    return model, coder, stats, dense_code(model, coder)


def test_top_contexts_are_the_brute_force_maxima(lab):
    model, coder, stats, (f, valid, ids) = lab
    top, n = stats.top, stats.top.k
    wmax, wcol = f.max(1)  # [windows, d_sae]: each window's maximum, as the contexts are one per window
    bv = wmax.topk(n, dim=0).values  # [n, d_sae]
    live = bv > 0
    assert torch.equal(top.vals > 0, live)
    torch.testing.assert_close(top.vals[live], bv[live], rtol=1e-5, atol=1e-6)
    # the kept windows reach those maxima (ties: repeated text may pick another window of equal value)
    win = top.window.clamp_min(0)
    torch.testing.assert_close(wmax.gather(0, win)[live], bv[live], rtol=1e-5, atol=1e-6)
    for i in range(coder.d_sae):
        assert len(set(win[live[:, i], i].tolist())) == int(live[:, i].sum())  # one entry per window
    first = valid.long().argmax(1)
    cols = wcol.gather(0, win)  # [n, d_sae] padded column of each maximum
    assert torch.equal(top.pos[live], (cols - first[win])[live])
    # the best context of every latent is its argmax over all tokens
    assert torch.allclose(stats.max_act, f.flatten(0, 1).amax(0).clamp_min(0))
    # ids and activations around each maximum
    for r, i in live.nonzero().tolist():
        w, c = int(win[r, i]), int(cols[r, i])
        for j, col in enumerate(range(c - top.before, c + top.after + 1)):
            inside = 0 <= col < f.shape[1] and bool(valid[w, col])
            assert int(top.ids[r, i, j]) == (int(ids[w, col]) if inside else -1)
            assert abs(float(top.acts[r, i, j]) - (float(f[w, col, i]) if inside else 0.0)) < 1e-5
    ex = stats.contexts(int(live[0].nonzero()[0]), model.tokenizer)
    assert [e.max_act for e in ex] == sorted((e.max_act for e in ex), reverse=True)
    assert all(e.acts[e.max_index] == pytest.approx(e.max_act) for e in ex)


def test_frequencies_and_histograms_add_up(lab):
    _, coder, stats, (f, valid, _) = lab
    fv = f[valid]  # [tokens, d_sae]
    assert stats.n_tokens == int(valid.sum()) == fv.shape[0]
    assert torch.equal(stats.fires, (fv > 0).sum(0))
    assert torch.equal(stats.hist.sum(1), stats.fires)
    assert int(stats.fires.sum()) == coder.cfg.k * stats.n_tokens  # TopK: k active per token (random weights)
    torch.testing.assert_close(stats.act_sum, fv.double().sum(0))
    torch.testing.assert_close(stats.mean_act, (fv.sum(0) / (fv > 0).sum(0).clamp_min(1)), rtol=1e-5, atol=1e-7)
    edges = log_edges(4)
    assert len(edges) - 1 == stats.hist.shape[1] and edges[0] == 2.0**-12 and edges[-1] == 2.0**16
    for i in range(0, coder.d_sae, 7):
        v = fv[:, i][fv[:, i] > 0].double()
        b = ((v[:, None] >= edges[None, 1:-1]).sum(1))  # bin b: edges[b] <= v < edges[b + 1]
        assert torch.equal(stats.hist[i], torch.bincount(b, minlength=stats.hist.shape[1]))
        h = stats.histogram(i)
        assert sum(h["counts"]) == int(stats.fires[i]) and len(h["edges"]) == len(h["counts"]) + 1 * bool(h["counts"])
    assert stats.frequency.sum().item() == pytest.approx(coder.cfg.k)
    assert stats.to_dict()["dead_fraction"] == float((stats.fires == 0).float().mean())


def test_batches_merge_to_the_same_statistics(lab):
    model, coder, stats, _ = lab
    one = feature_stats(model, coder, TEXTS, **{**KW, "batch_size": 100})
    assert torch.equal(one.fires, stats.fires) and torch.equal(one.hist, stats.hist)
    live = stats.top.vals > 0
    torch.testing.assert_close(one.top.vals[live], stats.top.vals[live], rtol=1e-5, atol=1e-6)


def test_save_load_round_trip(lab, tmp_path):
    model, coder, stats, _ = lab
    big = dataclasses.replace(stats, fires=stats.fires + 2**30 + 1, hist=stats.hist + 2**25)  # beyond float32
    path = big.save(tmp_path, model=model)
    assert path == tmp_path / "features.safetensors" and (tmp_path / "features.safetensors.json").is_file()
    back = FeatureStats.load(tmp_path, model=model, coder=coder)
    assert torch.equal(back.fires, big.fires) and torch.equal(back.hist, big.hist)
    assert torch.equal(back.act_sum, stats.act_sum) and torch.equal(back.edges, stats.edges)
    for name in ("vals", "window", "pos", "ids", "acts"):
        assert torch.equal(getattr(back.top, name), getattr(stats.top, name)), name
    assert (back.site, back.n_tokens, back.fingerprint) == (stats.site, stats.n_tokens, stats.fingerprint)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    other = init_coder(coder.cfg, seed=7)
    with pytest.raises(ArtifactError, match="another coder"):
        FeatureStats.load(tmp_path, coder=other)
    with pytest.raises(ArtifactError, match="No artifact"):
        FeatureStats.load(tmp_path / "nowhere")


def test_logits_decode_the_decoder_row_through_the_head(lab):
    model, coder, stats, _ = lab
    page = feature_page(model, coder, stats, 5, k=4)
    w_u = model.weights.W_U.detach().float()
    gain = model.weights.final_norm.detach().float()  # llama: RMSNorm, no centring
    scores = (coder.W_dec[5].detach() * gain) @ w_u
    top, bot = scores.topk(4), scores.topk(4, largest=False)
    assert [s for _, s in page.promoted] == pytest.approx(top.values.tolist(), rel=1e-5)
    assert [s for _, s in page.suppressed] == pytest.approx(bot.values.tolist(), rel=1e-5)
    assert [t for t, _ in page.promoted] == model.tokenizer.batch_decode([[i] for i in top.indices.tolist()])
    scaled = copy.deepcopy(coder)
    scaled.scale_out.fill_(2.0)  # raw output units: feature_direction = W_dec / s_out
    ids, vals = decode_features(model, scaled, [5, 9], k=4)
    assert torch.equal(ids[0], top.indices)
    torch.testing.assert_close(vals[0], top.values / 2)


def test_nearest_features_and_neurons(lab):
    model, coder, stats, _ = lab
    page = feature_page(model, coder, stats, 11, k=6)
    w = torch.nn.functional.normalize(coder.W_dec.detach(), dim=-1)
    cos = w @ w[11]
    cos[11] = -2
    v, j = cos.topk(6)
    assert [f["feature"] for f in page.nearest_features] == j.tolist()
    assert [f["cosine"] for f in page.nearest_features] == pytest.approx(v.tolist(), abs=1e-6)
    w_out = model.weights.W_out(1).detach()
    ncos = torch.nn.functional.cosine_similarity(w_out, coder.W_dec[11].detach()[None], dim=-1)
    order = ncos.abs().topk(6).indices
    assert [(n["layer"], n["neuron"]) for n in page.nearest_neurons] == [(1, int(n)) for n in order]
    assert [n["cosine"] for n in page.nearest_neurons] == pytest.approx(ncos[order].tolist(), abs=1e-5)


def test_atlas_tokens_of_the_nearest_neurons(lab, tmp_path, monkeypatch):
    model, coder, stats, _ = lab
    atlas = build_atlas(model, AtlasConfig(k=5, kinds=("out",), layers=(1,)), path=tmp_path / "a.sqlite")
    page = feature_page(model, coder, stats, 3, atlas=atlas, k=3)
    for n in page.nearest_neurons:
        assert n["atlas"] == [t for t, _ in atlas.neuron(1, n["neuron"])["out"]]
    atlas.close()
    from lmscope.neurons import (
        atlas_db,  # the default atlas file is used when it exists
    )

    monkeypatch.setattr(atlas_db, "default_path", lambda m: tmp_path / "a.sqlite")
    assert feature_page(model, coder, stats, 3, k=3).nearest_neurons == page.nearest_neurons
    monkeypatch.setattr(atlas_db, "default_path", lambda m: tmp_path / "none.sqlite")
    assert all(n["atlas"] is None for n in feature_page(model, coder, stats, 3, k=3).nearest_neurons)


def test_html_and_terminal_text_escape_tokens(lab, monkeypatch, tmp_path):
    model, coder, stats, _ = lab
    i = int(stats.top.vals[0].argmax())
    tok = model.tokenizer
    evil = int(stats.top.ids[0, i, stats.top.before])  # the token at the latent's maximum
    real = tok.batch_decode
    monkeypatch.setattr(tok, "batch_decode", lambda seqs, **kw: [
        "<script>alert(1)</script>[red]" if s == [evil] else real([s])[0] for s in seqs])
    page = feature_page(model, coder, stats, i, k=3)
    assert any("<script>" in t for e in page.contexts for t in e.tokens)
    doc = page.to_html()
    assert "<script" not in doc and "&lt;script&gt;alert(1)&lt;/script&gt;" in doc
    assert doc.startswith("<!doctype html>") and "<svg" in doc
    coloured, plain = page.to_text(color=True), page.to_text(color=False)
    assert "\x1b[" in coloured and "\x1b[" not in plain
    assert "[[<script>alert(1)</script>[red]]]" in plain  # text, not rich markup; the maximum in [[ ]]
    assert write_feature_html(page, tmp_path / "p.html").read_text() == doc
    assert [t.title for t in page.tables()][:2] == [page.title, "max-activating contexts"]
    assert page.to_dict()["contexts"][0]["max_act"] == page.contexts[0].max_act


def test_search_finds_a_planted_logit_token(lab, tmp_path, monkeypatch):
    model, coder, stats, _ = lab
    planted, t = 17, 40
    w_u = model.weights.W_U.detach().float()
    gain = model.weights.final_norm.detach().float()
    sae = copy.deepcopy(coder)
    with torch.no_grad():  # the decoder row whose LM-head reading is W_U[:, t] . W_U (top token t)
        sae.W_dec[planted] = w_u[:, t] / gain
    assert int(((sae.W_dec[planted] * gain) @ w_u).argmax()) == t
    tok = model.tokenizer
    real = tok.batch_decode
    monkeypatch.setattr(tok, "batch_decode", lambda seqs, **kw: [" Zebras" if s == [t] else real([s])[0] for s in seqs])
    path = build_feature_index(tmp_path, model, sae, stats, page_k=5)  # W_dec is not read by encode: stats hold
    assert path == tmp_path / "features.sqlite"
    hits = search_features(tmp_path, "zebra")  # plural variant
    assert hits[0].feature == planted and hits[0].score >= 1.0
    assert {"source": "logit", "rank": 0, "token": " Zebras"} == {k: hits[0].matched[0][k] for k in ("source", "rank", "token")}
    assert hits[0].top_logit[0] == " Zebras" and len(hits) <= 20 and hits.table().rows[0][0] == planted


def test_search_by_activating_token_and_index_round_trip(lab, tmp_path):
    model, coder, stats, _ = lab
    path = build_feature_index(tmp_path / "idx.sqlite", model, coder, stats, page_k=4)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    act = activating_tokens(stats, 4)
    ids, vals = decode_features(model, coder, k=4)
    con = sqlite3.connect(path)
    for f in (0, 13, 63):
        rows = con.execute("SELECT source, rank, token_id, score FROM feature_tokens WHERE feature = ? "
                           "ORDER BY source, rank", (f,)).fetchall()
        want = [(0, r, t, pytest.approx(s)) for r, (t, s) in enumerate(act[f])]
        want += [(1, r, t, pytest.approx(s, rel=1e-5)) for r, (t, s) in enumerate(zip(ids[f].tolist(), vals[f].tolist(),
                                                                                     strict=True))]
        assert rows == want
    assert con.execute("SELECT COUNT(*) FROM features").fetchone()[0] == coder.d_sae
    con.close()
    # a latent whose top contexts all peak on one token: the share of the word is 1
    f = next(i for i, row in enumerate(act) if row and row[0][1] == 1.0)
    word = model.tokenizer.decode([act[f][0][0]])
    hits = search_features(path, word, limit=200)
    hit = next(h for h in hits if h.feature == f)
    assert any(m["source"] == "act" and m["score"] == 1.0 for m in hit.matched)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(search_features(path, word, limit=2)) <= 2


def test_transcoder_reads_its_input_site_and_decodes_at_its_output(lab):
    model, _, _, _ = lab
    spec = CoderSpec(arch="topk", kind="transcoder", d_in=model.d_model, d_out=model.d_model, d_sae=32, k=3,
                     site="layers.1.resid_mid", site_out="layers.1.mlp_out")
    tc = init_coder(spec, seed=3)
    stats = feature_stats(model, tc, TEXTS, **KW)
    f, valid, _ = dense_code(model, tc, site="layers.1.resid_mid")
    assert torch.equal(stats.fires, (f[valid] > 0).sum(0))
    page = feature_page(model, tc, stats, int(stats.fires.argmax()), k=3)
    assert page.promoted and page.nearest_neurons[0]["layer"] == 1 and page.site_out == "layers.1.mlp_out"
    # a coder writing somewhere else than the residual stream gets no LM-head reading
    nspec = dataclasses.replace(spec, site_out="layers.1.mlp.neurons", d_out=model.d_mlp)
    nc = init_coder(nspec, seed=3)
    npage = feature_page(model, nc, feature_stats(model, nc, TEXTS, **KW), 0, k=3)
    assert npage.promoted is None and npage.nearest_neurons is None and npage.notes


def test_plots(lab, tmp_path):
    model, coder, stats, _ = lab
    page = feature_page(model, coder, stats, 2, k=3)
    for out in (plot_feature_histogram(page, None, tmp_path / "h1.png"),
                plot_feature_histogram(stats, 2, tmp_path / "h2.png"), plot_feature_density(stats, tmp_path / "d.png")):
        assert out.is_file() and out.stat().st_size > 1000
    with pytest.raises(InputError, match="not 3"):
        plot_feature_histogram(page, 3, tmp_path / "x.png")


def test_errors(lab, tmp_path):
    model, coder, stats, _ = lab
    with pytest.raises(ArtifactError, match="No feature index"):
        search_features(tmp_path, "dog")
    (tmp_path / "bad.sqlite").write_bytes(b"not a database at all" * 50)
    with pytest.raises(ArtifactError, match="not an lmscope feature index"):
        search_features(tmp_path / "bad.sqlite", "dog")
    build_feature_index(tmp_path, model, coder, stats, page_k=2)
    with pytest.raises(InputError, match="no words"):
        search_features(tmp_path, "  ")
    with pytest.raises(ArtifactError, match="another coder"):
        search_features(tmp_path, "dog", coder=init_coder(coder.cfg, seed=9))
    with pytest.raises(InputError, match="out of range"):
        feature_page(model, coder, stats, 64)
    with pytest.raises(InputError, match="another coder"):
        feature_page(model, init_coder(coder.cfg, seed=9), stats, 0)
    with pytest.raises(InputError, match="does not say where"):
        feature_stats(model, init_coder(dataclasses.replace(coder.cfg, site="", site_out="")), TEXTS, **KW)
    with pytest.raises(InputError, match="reads 96 values"):
        feature_stats(model, init_coder(CoderSpec(arch="topk", d_in=96, d_sae=8, k=2, site=SITE)), TEXTS, **KW)
    with pytest.raises(InputError, match="top_n"):
        feature_stats(model, coder, TEXTS, **{**KW, "top_n": 0})
