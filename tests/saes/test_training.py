"""The sparse coder and its trainer: the sparse TopK backward equals dense autograd, every
architecture learns, decoder rows stay unit norm, training is deterministic and a resumed run
equals an uninterrupted one."""

from __future__ import annotations

import pytest
import torch

from lmscope.engine.errors import ArtifactError, InputError
from lmscope.saes.activations import ShuffleBuffer
from lmscope.saes.coder import (
    CoderSpec,
    SparseCoder,
    init_coder,
    sparse_decode,
    topk_code,
)
from lmscope.saes.training import (
    TrainConfig,
    geometric_median,
    step_loss,
    train_on_activations,
)


def synthetic(n: int = 12000, d: int = 32, n_feat: int = 128, active: int = 4, seed: int = 0) -> torch.Tensor:
    """Sparse sums of random unit directions plus a little noise and an offset."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_feat, d, generator=g)
    dirs /= dirs.norm(dim=-1, keepdim=True)
    idx = torch.randint(n_feat, (n, active), generator=g)
    val = torch.rand(n, active, generator=g) * 3
    x = torch.zeros(n, d).index_add_(0, torch.arange(n).repeat_interleave(active), val.reshape(-1, 1) * dirs[idx.reshape(-1)])
    return x + 0.02 * torch.randn(n, d, generator=g) + 0.5


def _fvu(coder: SparseCoder, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((coder(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_sparse_topk_backward_equals_dense_autograd():
    torch.manual_seed(0)
    coder = init_coder(CoderSpec(arch="topk", d_in=16, d_sae=64, k=4), seed=1)
    with torch.no_grad():
        coder.b_enc.normal_()
        coder.b_dec.normal_()
    x = torch.randn(32, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True
    vals, idx, a_vals, a_idx = topk_code(coder, x, aux_mask=dead, k_aux=5)
    loss = sparse_decode(coder.W_dec, vals, idx).pow(2).sum() + 0.3 * sparse_decode(coder.W_dec, a_vals, a_idx).pow(2).sum()
    loss.backward()
    got = {n: p.grad.clone() for n, p in coder.named_parameters()}
    coder.zero_grad()
    pre = (x - coder.b_dec) @ coder.W_enc + coder.b_enc  # dense reference
    f = torch.zeros_like(pre).scatter(-1, pre.topk(4, dim=-1).indices, pre.topk(4, dim=-1).values).relu()
    masked = pre.masked_fill(~dead, float("-inf"))
    ai = masked.topk(5, dim=-1).indices
    fa = torch.zeros_like(pre).scatter(-1, ai, pre.gather(-1, ai)).relu()
    ((f @ coder.W_dec).pow(2).sum() + 0.3 * (fa @ coder.W_dec).pow(2).sum()).backward()
    assert set(a_idx.flatten().tolist()) <= set(dead.nonzero().flatten().tolist())
    for n, p in coder.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu"])
def test_every_architecture_learns_and_keeps_unit_decoder_rows(arch):
    x = synthetic()
    cfg = TrainConfig(arch=arch, d_sae=128, k=4, batch_size=512, total_tokens=12000 * 4, lr=3e-3, warmup_steps=5,
                      l1_coef=1e-3, l0_coef=1e-3)
    start = _fvu(init_coder(CoderSpec(arch=arch, d_in=32, d_sae=128, k=4 if arch in ("topk", "batchtopk") else None)), x)
    coder, hist = train_on_activations(x, cfg)
    assert _fvu(coder, x) < 0.35 < start
    norms = coder.W_dec.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-4, rtol=0)
    assert hist.rows and hist.steps == cfg.n_steps and hist.tokens_per_s > 0
    if arch == "topk":
        assert float((coder.encode(x) > 0).sum(-1).float().max()) <= 4
    if arch == "batchtopk":  # the learned read-out threshold keeps L0 near k on average
        assert 1 <= float((coder.encode(x) > 0).sum(-1).float().mean()) <= 12


def test_a_larger_l1_gives_a_sparser_relu_coder():
    x = synthetic()
    l0 = []
    for l1 in (1e-4, 1e-1):
        cfg = TrainConfig(arch="relu", d_sae=128, batch_size=512, total_tokens=64000, lr=1e-2, l1_coef=l1)
        coder, _ = train_on_activations(x, cfg)
        l0.append(float((coder.encode(x) > 0).sum(-1).float().mean()))
    assert l0[1] < 0.7 * l0[0]


def test_auxk_trains_dead_latents_and_only_them():
    coder = init_coder(CoderSpec(arch="topk", d_in=32, d_sae=128, k=4), seed=0)
    x = synthetic(n=12)
    dead = torch.zeros(128, dtype=torch.bool)
    dead[100:] = True
    cfg = TrainConfig(arch="topk", d_sae=128, k=4, aux_k=8, batch_size=12, total_tokens=12)
    out = step_loss(coder, x, x, cfg, dead)
    out.loss.backward()
    without = init_coder(CoderSpec(arch="topk", d_in=32, d_sae=128, k=4), seed=0)
    step_loss(without, x, x, cfg, None).loss.backward()
    # a latent outside the top k of every row gets encoder gradient only through AuxK
    chosen = set(topk_code(without, x)[1].flatten().tolist())
    only_aux = [j for j in range(100, 128) if j not in chosen and coder.W_enc.grad[:, j].abs().sum() > 0]
    assert only_aux
    assert all(without.W_enc.grad[:, j].abs().sum() == 0 for j in only_aux)


def test_training_is_deterministic_and_resume_equals_one_run(tmp_path):
    x = synthetic(n=6000)
    cfg = TrainConfig(d_sae=64, k=4, batch_size=256, total_tokens=256 * 30, buffer_tokens=1024, seed=3)
    a, _ = train_on_activations(x, cfg)
    b, _ = train_on_activations(x, cfg)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    ck = tmp_path / "ck"
    part, _ = train_on_activations(x, cfg, checkpoint_dir=ck, max_steps=11)
    assert (ck / "checkpoint.safetensors").is_file() and not torch.equal(part.W_dec, a.W_dec)
    resumed, hist = train_on_activations(x, cfg, checkpoint_dir=ck, resume=True)
    assert hist.steps == cfg.n_steps
    for (n, p), q in zip(a.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    other = TrainConfig(d_sae=64, k=8, batch_size=256, total_tokens=256 * 30, buffer_tokens=1024, seed=3)
    with pytest.raises(ArtifactError, match="other settings"):
        train_on_activations(x, other, checkpoint_dir=ck, resume=True)


def test_another_seed_gives_other_weights():
    x = synthetic(n=3000)
    a, _ = train_on_activations(x, TrainConfig(d_sae=64, k=4, batch_size=256, total_tokens=2048, seed=0))
    b, _ = train_on_activations(x, TrainConfig(d_sae=64, k=4, batch_size=256, total_tokens=2048, seed=1))
    assert not torch.equal(a.W_dec, b.W_dec)


def test_geometric_median_resists_outliers():
    pts = torch.cat([torch.randn(200, 3) * 0.01, torch.full((20, 3), 100.0)])
    gm = geometric_median(pts)
    assert gm.norm() < 0.5 < float(pts.mean(0).norm())


def test_transcoder_and_skip_transcoder_learn_a_map():
    g = torch.Generator().manual_seed(0)
    x = synthetic(n=8000, d=32)
    w = torch.randn(32, 24, generator=g) / 6
    y = torch.relu(x @ w) + 0.1
    for kind in ("transcoder", "skip_transcoder"):
        cfg = TrainConfig(kind=kind, d_sae=128, k=8, batch_size=512, total_tokens=8000 * 4, lr=3e-3)
        coder, _ = train_on_activations({"in": x, "out": y}, cfg, site="in", site_out="out")
        with torch.no_grad():
            fvu = float((coder(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
        assert fvu < 0.5, kind  # from about 1.0 at initialisation
        assert coder.cfg.d_out == 24 and (coder.W_skip is not None) == (kind == "skip_transcoder")


def test_shuffle_buffer_hands_out_every_row_once_per_fill():
    buf = ShuffleBuffer(64, 8, seed=0)
    buf.add({"a": torch.arange(64.0)[:, None]})
    out = torch.cat([b["a"] for b in buf.take()])[:, 0]
    rest = buf.rows["a"][:, 0]
    assert sorted(torch.cat([out, rest]).tolist()) == list(range(64)) and len(out) == 32
    with pytest.raises(InputError, match="two batches"):
        ShuffleBuffer(8, 8)


def test_config_errors_say_what_was_expected():
    with pytest.raises(InputError, match="arch must be one of"):
        TrainConfig(arch="gated")
    with pytest.raises(InputError, match="less than one batch"):
        TrainConfig(batch_size=4096, total_tokens=100)
    with pytest.raises(InputError, match="1 <= k <= d_sae"):
        CoderSpec(arch="topk", d_in=8, d_sae=4, k=10)
    with pytest.raises(InputError, match="No activations named"):
        train_on_activations({"a": torch.zeros(10, 4)}, TrainConfig(batch_size=2, total_tokens=4), site="b")
