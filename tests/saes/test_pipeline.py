"""Activations (cache and stream), the evaluation card, the end-to-end pipeline and feature
steering on a tiny random model: exact where exactness is defined."""

from __future__ import annotations

import json

import pytest
import torch

from lmscope.engine.errors import ArtifactError, InputError
from lmscope.saes.activations import ActivationCache, Cursor, build_cache
from lmscope.saes.coder import CoderSpec, SparseCoder, init_coder
from lmscope.saes.evaluation import evaluate
from lmscope.saes.loading import load_coder
from lmscope.saes.pipeline import site_pairs, train_sae
from lmscope.saes.steering import feature_edits, steer
from lmscope.saes.training import TrainConfig

TEXTS = [f"document {i}: the quick brown fox {i} jumps over {i * 7} lazy dogs, again and again." for i in range(24)]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))


def identity_coder(model, site: str) -> SparseCoder:
    """A ReLU 'SAE' that reproduces its input exactly: f = relu(x + c), y = f - c."""
    d = model.d_model
    c = 1e3
    coder = SparseCoder(CoderSpec(arch="relu", d_in=d, d_sae=d, site=site, extra={"subtract_b_dec": False}))
    with torch.no_grad():
        coder.W_enc.copy_(torch.eye(d))
        coder.W_dec.copy_(torch.eye(d))
        coder.b_enc.fill_(c)
        coder.b_dec.fill_(-c)
    return coder


def test_cache_rows_equal_the_captured_text_tokens_and_are_reused(tiny_llama, tmp_path):
    sites = ["layers.1.resid_post", "layers.2.mlp_in"]
    cache = build_cache(tiny_llama, TEXTS[:6], sites, path=tmp_path / "acts", window=16, shard_tokens=50,
                        dtype="float32")
    m = json.loads((tmp_path / "acts" / "manifest.json").read_text())
    assert m["sites"] == sites and m["n_tokens"] == cache.n_tokens == sum(s["n"] for s in m["shards"])
    rows = torch.cat([cache.shard(i)["layers.1.resid_post"] for i in range(cache.n_shards)])
    from lmscope.datasets.corpus import token_windows

    w = token_windows(tiny_llama, TEXTS[:6], window=16)
    want = []
    for _, batch, valid in w.batches(16, tiny_llama.device):
        want.append(tiny_llama.run(batch, capture=["layers.1.resid_post"], logits=None).cache["layers.1.resid_post"][valid])
    torch.testing.assert_close(rows, torch.cat(want), rtol=0, atol=0)
    again = build_cache(tiny_llama, TEXTS[:6], sites, path=tmp_path / "acts", window=16, shard_tokens=50,
                        dtype="float32")
    assert again.manifest["created"] == cache.manifest["created"]  # reused, not rebuilt
    with pytest.raises(ArtifactError, match="another activation cache"):
        build_cache(tiny_llama, TEXTS[:3], sites, path=tmp_path / "acts", window=16)
    with pytest.raises(ArtifactError, match="lacks layers.0.resid_post"):
        cache.check(tiny_llama, ["layers.0.resid_post"])
    seen = [c for _, (_, c) in zip(range(cache.n_shards), cache.chunks(Cursor(), seed=1), strict=False)]
    assert sum(c[sites[0]].shape[0] for c in seen) == cache.n_tokens  # one epoch = every row once


def test_a_corrupt_manifest_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        ActivationCache(tmp_path)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        ActivationCache(tmp_path / "nothing")


def test_an_exact_coder_recovers_all_the_loss(tiny_llama):
    card = evaluate(tiny_llama, identity_coder(tiny_llama, "layers.1.resid_post"), TEXTS[:4], max_tokens=300,
                    window=32)
    assert card.variance_explained == pytest.approx(1.0, abs=1e-4)
    assert card.ce_spliced == pytest.approx(card.ce_clean, abs=1e-4)
    assert card.ce_loss_recovered == pytest.approx(1.0, abs=1e-3)
    assert card.kl_spliced == pytest.approx(0.0, abs=1e-5) and card.kl_zero > 0
    assert len(card.worst_tokens) == 10 and 250 < card.n_tokens <= 300


def test_a_coder_that_outputs_zeros_recovers_none(tiny_llama):
    coder = init_coder(CoderSpec(arch="topk", d_in=64, d_sae=32, k=2, site="layers.1.resid_post"))
    with torch.no_grad():
        coder.W_dec.zero_()
        coder.b_dec.zero_()
    coder.cfg.extra["subtract_b_dec"] = True
    card = evaluate(tiny_llama, coder, TEXTS[:4], max_tokens=200, window=32)
    assert card.ce_spliced == pytest.approx(card.ce_zero, abs=1e-5)
    assert card.ce_loss_recovered == pytest.approx(0.0, abs=1e-4)


def test_a_transcoder_splice_replaces_the_mlp_output_from_its_input(tiny_llama):
    coder = init_coder(CoderSpec(arch="topk", kind="transcoder", d_in=64, d_sae=32, k=2, site="layers.1.mlp_in",
                                 site_out="layers.1.mlp_out"))
    with torch.no_grad():
        coder.W_dec.zero_()
    card = evaluate(tiny_llama, coder, TEXTS[:4], max_tokens=200, window=32)
    assert card.ce_spliced == pytest.approx(card.ce_zero, abs=1e-5)  # output = b_dec = 0 = the zero ablation
    assert card.site_out == "layers.1.mlp_out"


def test_train_sae_end_to_end_saves_loads_and_resumes(tiny_llama, tmp_path):
    cfg = TrainConfig(d_sae=128, k=4, batch_size=64, total_tokens=64 * 12, buffer_tokens=256, seed=0,
                      checkpoint_every=4)
    (res,) = train_sae(tiny_llama, "layers.1.resid_post", cfg, text=TEXTS, out=tmp_path / "run", eval_tokens=128,
                       window=32)
    assert res.card is not None and 0 < res.card.l0 <= 4 and res.card.n_tokens > 0
    assert res.history.steps == 12
    back = load_coder(res.path, model=tiny_llama)
    for k, v in res.coder.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    assert back.card["variance_explained"] == pytest.approx(res.card.variance_explained)
    (again,) = train_sae(tiny_llama, "layers.1.resid_post", cfg, text=TEXTS, out=tmp_path / "run", resume=True,
                         evaluate_card=False, window=32)
    assert again.history.steps == 12 and torch.equal(again.coder.W_dec, res.coder.W_dec)  # nothing left to do
    (streamed,) = train_sae(tiny_llama, "layers.1.resid_post", cfg, text=TEXTS, activations="stream",
                            evaluate_card=False, window=32)
    assert streamed.history.steps == 12


def test_two_layers_train_in_one_pass_and_a_transcoder_pairs_its_sites(tiny_llama):
    cfg = TrainConfig(d_sae=64, k=4, batch_size=64, total_tokens=256, buffer_tokens=256)
    out = train_sae(tiny_llama, ["layers.0.resid_post", "layers.2.resid_post"], cfg, text=TEXTS, evaluate_card=False,
                    window=32)
    assert [r.coder.cfg.site for r in out] == ["layers.0.resid_post", "layers.2.resid_post"]
    assert site_pairs(tiny_llama, "layers.1.mlp_in", "transcoder") == [("layers.1.mlp_in", "layers.1.mlp_out")]
    with pytest.raises(InputError, match="reads layers.L.mlp_in"):
        site_pairs(tiny_llama, "layers.1.resid_post", "transcoder")
    tc = train_sae(tiny_llama, "layers.1.mlp_in", TrainConfig(kind="skip_transcoder", d_sae=64, k=4, batch_size=64,
                                                              total_tokens=256, buffer_tokens=256),
                   text=TEXTS, evaluate_card=False, window=32)
    assert tc[0].coder.cfg.site_out == "layers.1.mlp_out" and tc[0].coder.W_skip is not None


def test_feature_edits_do_exactly_what_they_say(tiny_llama):
    coder = init_coder(CoderSpec(arch="topk", d_in=64, d_sae=32, k=4, site="layers.1.resid_post"), seed=2)
    site = "layers.1.resid_post"
    base = tiny_llama.run(TEXTS[:2], capture=[site], logits=None).cache[site]
    d = coder.feature_direction(5).detach()
    added = tiny_llama.run(TEXTS[:2], capture=[site], logits=None,
                           edits=feature_edits(coder, 5, "add", 3.0, typical=2.0)).cache[site]
    torch.testing.assert_close(added, base + 6.0 * d, rtol=0, atol=1e-5)
    clamped = tiny_llama.run(TEXTS[:2], capture=[site], logits=None,
                             edits=feature_edits(coder, 5, "clamp", 3.0, typical=2.0)).cache[site]
    f = coder.encode(base)[..., 5:6]
    torch.testing.assert_close(clamped, base + (6.0 - f) * d, rtol=0, atol=1e-5)
    ablated = tiny_llama.run(TEXTS[:2], capture=[site], logits=None, edits=feature_edits(coder, 5, "ablate")).cache[site]
    torch.testing.assert_close(ablated, base - f * d, rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="out of range"):
        feature_edits(coder, 99)


def test_steer_reports_baseline_feature_and_an_equal_norm_control(tiny_llama):
    coder = init_coder(CoderSpec(arch="topk", d_in=64, d_sae=32, k=4, site="layers.1.resid_post"), seed=2)
    rep = steer(tiny_llama, coder, 5, value=8.0, prompts=TEXTS[:3], reference=TEXTS, max_new_tokens=4)
    assert set(rep.arms) == {"baseline", "feature", "random feature"}
    feat, ctrl = rep.arms["feature"], rep.arms["random feature"]
    assert ctrl.feature != 5 and feat.kl_neutral > 0 and rep.arms["baseline"].kl_neutral == 0
    # the control's added vector has the same norm as the feature's
    from lmscope.saes.steering import reference_activations

    top, _ = reference_activations(tiny_llama, coder, TEXTS)
    n_feat = feat.value * float(top[5]) * float(coder.feature_direction(5).norm())
    n_ctrl = ctrl.value * float(top[ctrl.feature]) * float(coder.feature_direction(ctrl.feature).norm())
    assert n_ctrl == pytest.approx(n_feat, rel=1e-4)
    assert json.dumps(rep.to_dict()) and len(rep.tables()) == 2


def test_without_bos_the_first_token_of_a_window_is_not_read():
    from lmscope.saes.activations import dictionary_positions

    valid = torch.tensor([[False, True, True, True], [True, True, True, True]])
    assert dictionary_positions(valid, 0).tolist() == [[False, False, True, True], [False, True, True, True]]
    assert torch.equal(dictionary_positions(valid, 1), valid)  # a BOS prefix is already outside `valid`
