"""Logit lens, tuned lens and latent language.

Tiny random models check exact identities (the last layer's lens is the model's output, the
identity tuned lens is the logit lens, the chunked readout equals a direct full-vocabulary
computation, gradients, artifacts, resuming). The real-model tests (slow) check directions:
" Warsaw" surfaces in the middle layers of Gemma, a briefly trained tuned lens beats the logit
lens on held-out text, and the target language takes over in Gemma's last layers.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny

import lmscope.lens.logit as lens_mod
from lmscope.engine.errors import ArtifactError, InputError
from lmscope.engine.readout import unembed
from lmscope.lens.latent import LatentConfig, latent_language
from lmscope.lens.logit import kl_of_states, logit_lens
from lmscope.lens.tuned import (
    TunedLens,
    TunedLensConfig,
    _SoftCrossEntropy,
    compare_lenses,
    lens_step_loss,
    train_tuned_lens,
)

PROMPT = "hello world, this is"
TEXTS = [f"the quick brown fox {i} jumps over the lazy dog and then some more words {i * 7}" for i in range(30)]


def model_logprobs(m, prompt: str) -> torch.Tensor:
    with torch.inference_mode():
        return m.run(prompt, logits="all").logits[0].float().log_softmax(-1)  # [pos, vocab]


# ---- logit lens: exact on tiny models --------------------------------------------------------


def test_last_layer_lens_is_the_model_output(tiny):
    ref = model_logprobs(tiny, PROMPT)
    r = logit_lens(tiny, PROMPT, targets=["w", 5], top_k=4)
    p, i = ref.exp().topk(4, -1)
    assert torch.equal(r.top_ids[-1], i)
    assert torch.allclose(r.top_probs[-1], p, atol=1e-6)
    assert r.kl[-1].abs().max() < 1e-5
    tid = torch.tensor(r.target_ids)
    assert torch.allclose(r.target_probs[-1], ref[:, tid].exp(), atol=1e-6)
    ranks = 1 + (ref[:, None, :] > ref[:, tid, None]).sum(-1)  # [pos, target]
    assert torch.equal(r.target_ranks[-1], ranks)
    assert r.layers == list(range(tiny.n_layers))
    assert len(r.top_tokens) == tiny.n_layers and len(r.top_tokens[0]) == len(r.tokens)


def test_chunked_readout_equals_direct_computation(monkeypatch):
    m = make_tiny("gemma3_text")
    # one position per chunk, so the chunking is exercised
    monkeypatch.setattr(lens_mod, "ROW_BUDGET", m.d_vocab * (m.n_layers + 1))
    r = logit_lens(m, PROMPT, targets=["o"], top_k=3, layers=[0, -2])
    res = m.run(PROMPT, capture=["layers.*.resid_post"], logits=None)
    with torch.inference_mode():
        final = unembed(m, res.cache[f"layers.{m.n_layers - 1}.resid_post"][0]).float().log_softmax(-1)
        for li, layer in enumerate([0, m.n_layers - 2]):
            lp = unembed(m, res.cache[f"layers.{layer}.resid_post"][0]).float().log_softmax(-1)
            kl = (final.exp() * (final - lp)).sum(-1)
            assert torch.allclose(r.kl[li], kl, atol=1e-5)
            assert torch.equal(r.top_ids[li], lp.topk(3, -1).indices)
            assert torch.allclose(r.target_probs[li, :, 0], lp[:, r.target_ids[0]].exp(), atol=1e-6)
    assert r.layers == [0, m.n_layers - 2]


def test_blockwise_topk_is_exact():
    torch.manual_seed(0)
    z = torch.randn(3, 5, 8192)
    z[0, 0, 100:110] = 9.0 + torch.arange(10)  # the top-k all in one block
    for k in (1, 5, 8):
        v, i = lens_mod.topk_last(z, k)
        ref = z.topk(k, -1)
        assert torch.equal(v, ref.values) and torch.equal(i, ref.indices)


def test_entry_and_settle_layers():
    m = make_tiny("llama")
    r = logit_lens(m, PROMPT, targets=[int(model_logprobs(m, PROMPT)[-1].argmax())], top_k=1)
    assert r.entry_layer(r.target_ids[0], k=1) is not None  # the model's own top-1 is top-1 at the last layer
    assert r.settle_layer(r.target_ids[0], k=1) <= m.n_layers - 1
    d = r.to_dict()
    assert {"model", "tokens", "layers", "cells", "targets", "kl_per_layer"} <= set(d)
    assert len(d["cells"]) == m.n_layers * len(r.tokens)
    json.dumps(d)


def test_bad_inputs_fail_clearly():
    m = make_tiny("llama")
    with pytest.raises(InputError, match="out of range"):
        logit_lens(m, PROMPT, layers=[7])
    with pytest.raises(InputError, match="top_k"):
        logit_lens(m, PROMPT, top_k=0)
    with pytest.raises(InputError, match="one string"):
        logit_lens(m, [PROMPT])
    with pytest.raises(InputError, match="English is the probe"):
        LatentConfig(src="fr", tgt="en")
    with pytest.raises(InputError):
        TunedLensConfig(steps=0)


# ---- tuned lens --------------------------------------------------------------------------------


def test_identity_tuned_lens_equals_logit_lens(tiny):
    a = logit_lens(tiny, PROMPT, targets=["h"], top_k=3)
    b = TunedLens.identity(tiny).run(tiny, PROMPT, targets=["h"], top_k=3)
    assert torch.equal(a.top_ids, b.top_ids)
    assert torch.allclose(a.top_probs, b.top_probs, atol=1e-6)
    assert torch.allclose(a.kl, b.kl, atol=1e-5)
    assert b.lens == "tuned"


def test_translator_is_affine_before_the_final_norm():
    m = make_tiny("gemma3_text")
    lens = TunedLens.identity(m)
    torch.manual_seed(0)
    lens.weight.normal_(0, 0.05)
    lens.bias.normal_(0, 0.1)
    h = torch.randn(5, m.d_model)
    assert torch.allclose(lens.translate(1, h), h + h @ lens.weight[1].T + lens.bias[1], atol=1e-6)
    assert torch.equal(lens.translate(m.n_layers - 1, h), h)  # the last block is the model output
    r = lens.run(m, PROMPT, top_k=2)
    res = m.run(PROMPT, capture=["layers.0.resid_post"], logits=None)
    with torch.inference_mode():
        direct = unembed(m, lens.translate(0, res.cache["layers.0.resid_post"][0])).float().softmax(-1)
    assert torch.allclose(r.top_probs[0], direct.topk(2, -1).values, atol=1e-6)


def test_soft_cross_entropy_gradient_matches_autograd():
    torch.manual_seed(0)
    z = torch.randn(3, 4, 11, dtype=torch.float64, requires_grad=True)
    pf = torch.randn(4, 11, dtype=torch.float64).softmax(-1)
    w = torch.randn(3, 4, dtype=torch.float64)
    ours = (_SoftCrossEntropy.apply(z, pf) * w).sum()
    (g1,) = torch.autograd.grad(ours, z)
    ref = ((torch.logsumexp(z, -1) - (z * pf).sum(-1)) * w).sum()
    (g2,) = torch.autograd.grad(ref, z)
    assert torch.allclose(ours, ref) and torch.allclose(g1, g2)


def test_training_step_lowers_kl_and_leaves_the_model_alone():
    m = make_tiny("llama")
    before = {k: v.clone() for k, v in m.hf.state_dict().items()}
    lens = TunedLens.identity(m)
    w, b = lens.weight.requires_grad_(True), lens.bias.requires_grad_(True)
    res = m.run(TEXTS[:4], capture=["layers.*.resid_post"], logits=None)
    states = torch.stack([res.cache[f"layers.{x}.resid_post"][:, 1:].flatten(0, 1) for x in range(m.n_layers)])
    opt = torch.optim.SGD([w, b], lr=0.5)
    kl0 = lens_step_loss(m, w, b, states)
    logit = kl_of_states(m, states).kl
    assert torch.allclose(kl0, logit[:-1], atol=1e-5)  # identity = logit lens
    opt.step()
    kl1 = lens_step_loss(m, w, b, states, backward=False)
    assert (kl1 < kl0).all()
    assert all(p.grad is None for p in m.hf.parameters())
    assert all(torch.equal(v, m.hf.state_dict()[k]) for k, v in before.items())


def test_artifact_round_trip_and_wrong_model(tmp_path):
    m = make_tiny("llama")
    lens = TunedLens.identity(m)
    lens.weight.normal_(0, 0.1)
    lens.bias.normal_(0, 0.1)
    path = lens.save(tmp_path / "lens.safetensors", m)
    back = TunedLens.load(path, m)
    assert torch.equal(back.weight, lens.weight) and torch.equal(back.bias, lens.bias)
    side = json.loads((tmp_path / "lens.safetensors.json").read_text())
    assert side["kind"] == "tuned_lens" and "final norm" in side["final_norm"]
    other = make_tiny("qwen2")
    with pytest.raises(ArtifactError, match="tiny-llama"):
        TunedLens.load(path, other)
    with pytest.raises(InputError, match="made for"):
        lens.run(other, PROMPT)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_interrupted_and_resumed_training_equals_an_uninterrupted_run(tmp_path, monkeypatch, optimizer):
    import lmscope.lens.tuned as tl

    m = make_tiny("gemma3_text")
    cfg = TunedLensConfig(steps=4, batch_size=2, window=16, positions=12, optimizer=optimizer, checkpoint_every=2,
                          seed=3)
    full, log = train_tuned_lens(m, TEXTS, config=cfg)
    assert len(log.loss) == 4 and log.tokens_per_s > 0
    again, _ = train_tuned_lens(m, TEXTS, config=cfg)
    assert torch.equal(again.weight, full.weight)  # seeded: bit-identical

    save = tl._save

    def save_then_crash(lens, *a, **kw):
        save(lens, *a, **kw)
        raise KeyboardInterrupt  # interrupted right after the step-2 checkpoint

    monkeypatch.setattr(tl, "_save", save_then_crash)
    path = tmp_path / "lens.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train_tuned_lens(m, TEXTS, config=cfg, out=path)
    assert TunedLens.load(path, m).meta["step"] == 2
    monkeypatch.setattr(tl, "_save", save)
    resumed, log2 = train_tuned_lens(m, TEXTS, config=cfg, out=path, resume=True)
    assert log2.steps == [3, 4]
    assert torch.equal(resumed.weight, full.weight) and torch.equal(resumed.bias, full.bias)
    assert TunedLens.load(path, m).meta["step"] == 4
    with pytest.raises(InputError, match="resume"):
        train_tuned_lens(m, TEXTS, config=cfg, out=tmp_path / "missing.safetensors", resume=True)


def test_compare_on_tiny_model_improves_after_training():
    m = make_tiny("gpt2")
    cfg = TunedLensConfig(steps=15, batch_size=4, window=16, positions=32, lr=1.0)
    lens, _ = train_tuned_lens(m, TEXTS, config=cfg)
    c = compare_lenses(m, lens, TEXTS[-5:], n_positions=64)
    assert c.logit.kl[-1] < 1e-5 and c.tuned.kl[-1] < 1e-5
    assert all(c.tuned_wins)
    assert c.to_dict()["tuned_wins_all_but_last"] is True


# ---- latent language on a tiny model: exact bookkeeping ---------------------------------------

PAIRS = [{"en": e, "fr": f, "de": d} for e, f, d in
         [("dog", "chien", "Hund"), ("cat", "chat", "Katze"), ("water", "eau", "Wasser"),
          ("book", "livre", "Buch"), ("tree", "arbre", "Baum"), ("sun", "soleil", "Sonne"),
          ("moon", "lune", "Mond"), ("house", "maison", "Haus")]]


def test_latent_language_probabilities_are_the_lens_probabilities():
    m = make_tiny("qwen2")
    r = latent_language(m, PAIRS, config=LatentConfig(src="fr", tgt="de", shots=2, batch_size=3))
    # char tokenizer: first tokens collide when words share a first letter (chat/cat/..., Buch/book)
    assert r.n_items + r.n_skipped == len(PAIRS) and r.n_items > 0
    for p in (r.p_target, r.p_en, r.p_source):
        assert p.shape == (r.n_items, m.n_layers) and (p >= 0).all() and (p <= 1).all()
    first = r.prompts[0]
    ref = model_logprobs(m, first)[-1].exp()
    tid = m.tokenizer(r.words[0]["tgt"], add_special_tokens=False)["input_ids"][0]
    assert torch.allclose(r.p_target[0, -1], ref[tid], atol=1e-6)
    assert r.prompts[0].endswith(f'Français: "{r.words[0]["src"]}" - Deutsch: "')
    assert set(r.to_dict()["curves"]) == {"target", "en", "source"}


# ---- real models (slow) --------------------------------------------------------------------------


@pytest.mark.slow
def test_gemma_warsaw_surfaces_before_the_last_layer(gemma):
    r = logit_lens(gemma, "The capital of Poland is", targets=[" Warsaw", " Poland"], top_k=10)
    assert r.top_tokens[-1][-1][0] == " Warsaw"
    entry = r.entry_layer(" Warsaw")
    assert entry is not None and gemma.n_layers // 2 <= entry < gemma.n_layers - 1
    p = r.target_probs[:, -1, 0]
    assert p[-1] > 100 * p[: gemma.n_layers // 3].max()  # rises from the early layers (control)
    assert r.kl_per_layer()[-1] < 1e-4 and r.kl_per_layer()[0] > 1.0
    with torch.inference_mode():
        own = gemma.run("The capital of Poland is").logits[0].float().softmax(-1)
    assert abs(float(r.target_probs[-1, -1, 0]) - float(own[r.target_ids[0]])) < 1e-4


@pytest.mark.slow
def test_smollm_tuned_lens_beats_logit_lens_after_brief_training(smollm):
    cfg = TunedLensConfig(steps=3, batch_size=2, positions=16)
    lens, log = train_tuned_lens(smollm, config=cfg)
    c = compare_lenses(smollm, lens, n_positions=32)
    wins = c.tuned_wins
    assert sum(wins) >= 0.8 * len(wins)
    half = smollm.n_layers // 2
    assert c.tuned.kl[:half].mean() * 1.3 < c.logit.kl[:half].mean()


@pytest.mark.slow
def test_gemma_latent_language_target_takes_over_late(gemma):
    r = latent_language(gemma, config=LatentConfig(src="fr", tgt="de", limit=16, shots=3))
    for p in (r.p_target, r.p_en, r.p_source):
        assert ((p >= 0) & (p <= 1)).all()
    tgt, src = r.p_target.mean(0), r.p_source.mean(0)
    mid = gemma.n_layers // 2
    assert tgt[-1] > 3 * tgt[:mid].max()  # the target language rises in the late layers
    assert tgt[-1] > src[-1]  # control: the model translates rather than copies


# ---- CLI (on a tiny model: the loader is swapped) -----------------------------------------------


def test_cli_lens_commands(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import lmscope.cli.lens as cli_lens
    from lmscope.cli.main import cli

    m = make_tiny("llama")
    monkeypatch.setattr(cli_lens, "load_model", lambda *a, **k: m)
    run = CliRunner().invoke
    r = run(cli, ["lens", "logit", "tiny", PROMPT, "--target", "w", "--top-k", "3", "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["targets"][0]["token"] == "w" and len(d["cells"]) == m.n_layers * len(d["tokens"])
    assert all((tmp_path / f).is_file() for f in ("logit_lens.png", "logit_lens.html", "logit_lens_targets.png"))

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    art = tmp_path / "lens.safetensors"
    r = run(cli, ["lens", "tuned-train", "tiny", "--corpus", str(corpus), "--steps", "2", "--positions", "8",
                  "--batch-size", "2", "--out", str(art), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["steps"] == 2 and art.is_file()
    r = run(cli, ["lens", "compare", "tiny", "--tuned", str(art), "--corpus", str(corpus), "--positions", "16",
                  "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["tuned_kl"]) == m.n_layers and (tmp_path / "kl_comparison.png").is_file()

    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(p) for p in PAIRS))
    r = run(cli, ["lens", "latent", "tiny", "--data", str(data), "--shots", "2", "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_items"] > 0 and (tmp_path / "latent_fr_de.png").is_file()
    r = run(cli, ["lens", "latent", "tiny", "--data", str(data), "--tgt", "en"])
    assert r.exit_code != 0
