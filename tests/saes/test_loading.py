"""Sparse-coder files: lmscope's own format round-trips bit for bit; SAELens, sparsify and Gemma
Scope 2 folders written in their exact layouts load into a SparseCoder that reproduces each
library's own forward, written out here from its source (tiny random weights, CPU)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

import lmscope
from lmscope.engine.errors import ArtifactError, InputError
from lmscope.saes.coder import CoderSpec, SparseCoder, init_coder, topk_code
from lmscope.saes.loading import detect_format, load_coder, load_sae, save_coder

D_IN, D_SAE = 16, 64


def rand(*shape, seed, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.fixture
def x():
    return rand(32, D_IN, seed=99, scale=2.0)


def write(folder, tensors, **json_files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, t in tensors.items():
        save_file({k: v.contiguous() for k, v in t.items()}, str(folder / name))
    for name, obj in json_files.items():
        (folder / name.replace("__", ".")).write_text(json.dumps(obj))
    return folder


def close(a, b):
    torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)


def no_temp_files(folder):
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]


# ---- lmscope's own format ------------------------------------------------------------------
@pytest.mark.parametrize("arch,kind,d_out", [("topk", "sae", D_IN), ("jumprelu", "transcoder", 24),
                                             ("batchtopk", "skip_transcoder", 24), ("relu", "sae", D_IN)])
def test_native_round_trip_is_bit_identical(tmp_path, x, arch, kind, d_out):
    spec = CoderSpec(arch=arch, d_in=D_IN, d_sae=D_SAE, d_out=d_out, k=8 if "topk" in arch else None, kind=kind,
                     site="layers.1.mlp_in" if kind != "sae" else "layers.1.resid_post",
                     site_out="layers.1.mlp_out" if kind != "sae" else "", extra={"note": "hi"})
    coder = init_coder(spec, seed=3)
    with torch.no_grad():
        for p in coder.parameters():
            p.add_(rand(*p.shape, seed=p.numel(), scale=0.1))
        coder.scale_in.fill_(1.7)
        coder.scale_out.fill_(0.6)
        if arch == "batchtopk":
            coder.threshold_buf.copy_(rand(D_SAE, seed=5).abs())
    out = save_coder(coder, tmp_path / "c", card={"name": "demo"}, train={"steps": 3})
    assert sorted(p.name for p in out.iterdir()) == ["sae.safetensors", "sae.safetensors.json"]
    assert no_temp_files(tmp_path) == []
    back = load_coder(out)
    assert back.cfg == spec
    assert back.card == {"name": "demo"} and back.train_info == {"steps": 3}
    assert back.tensors().keys() == coder.tensors().keys()
    for k, t in coder.tensors().items():
        assert torch.equal(back.tensors()[k], t), k
    assert torch.equal(back(x), coder(x))
    assert detect_format(out) == "lmscope"
    assert torch.equal(load_sae(out / "sae.safetensors")(x), coder(x))


def test_native_bound_to_its_model(tmp_path, tiny_llama):
    d = tiny_llama.d_model
    coder = init_coder(CoderSpec(arch="topk", d_in=d, d_sae=D_SAE, k=4, site="layers.1.resid_post"), seed=0)
    save_coder(coder, tmp_path / "c", model=tiny_llama)
    side = json.loads((tmp_path / "c" / "sae.safetensors.json").read_text())
    assert side["model"] == "tiny-llama" and side["kind"] == "sae" and side["spec"]["model"] == "tiny-llama"
    assert load_coder(tmp_path / "c", model=tiny_llama).cfg.model == "tiny-llama"
    other = lmscope.Model(tiny_llama.hf, tiny_llama.tokenizer, name="other-model")
    with pytest.raises(ArtifactError, match="tiny-llama"):
        load_coder(tmp_path / "c", model=other)
    with pytest.raises(ArtifactError, match="tiny-llama"):
        load_sae(tmp_path / "c", model=other)


def test_native_without_model_loads_with_any_model_of_that_width(tmp_path, tiny_llama):
    d = tiny_llama.d_model
    save_coder(init_coder(CoderSpec(arch="relu", d_in=d, d_sae=D_SAE, site="layers.0.mlp_out")), tmp_path / "a")
    assert json.loads((tmp_path / "a" / "sae.safetensors.json").read_text())["model"] == ""
    assert load_coder(tmp_path / "a", model=tiny_llama).cfg.model == "tiny-llama"
    save_coder(init_coder(CoderSpec(arch="relu", d_in=D_IN, d_sae=D_SAE, site="layers.0.mlp_out")), tmp_path / "b")
    with pytest.raises(ArtifactError, match="16-wide.*64 wide"):
        load_coder(tmp_path / "b", model=tiny_llama)
    with pytest.raises(InputError, match="16-wide"):  # refused before writing, too
        save_coder(init_coder(CoderSpec(arch="relu", d_in=D_IN, d_sae=D_SAE, site="layers.0.mlp_out")),
                   tmp_path / "c", model=tiny_llama)


def test_native_errors_and_no_leftovers(tmp_path):
    coder = init_coder(CoderSpec(arch="relu", d_in=D_IN, d_sae=D_SAE))
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        save_coder(coder, tmp_path / "file")
    with pytest.raises(InputError, match="card must be a dict"):
        save_coder(coder, tmp_path / "c", card="hello")
    with torch.no_grad():
        coder.W_enc[0, 0] = float("nan")
    with pytest.raises(ArtifactError, match="NaN"):
        save_coder(coder, tmp_path / "nan")
    assert not (tmp_path / "nan" / "sae.safetensors").exists() and no_temp_files(tmp_path) == []
    # a file whose tensors do not match its spec
    good = save_coder(init_coder(CoderSpec(arch="relu", d_in=D_IN, d_sae=D_SAE)), tmp_path / "g")
    side = json.loads((good / "sae.safetensors.json").read_text())
    side["spec"]["d_sae"] = 32
    (good / "sae.safetensors.json").write_text(json.dumps(side))
    with pytest.raises(ArtifactError, match="does not match its spec.*W_enc is \\[16, 64\\], expected \\[16, 32\\]"):
        load_coder(good)
    side["spec"] = {"arch": "gated", "d_in": 16, "d_sae": 64}
    (good / "sae.safetensors.json").write_text(json.dumps(side))
    with pytest.raises(ArtifactError, match="spec .* is invalid.*gated"):
        load_coder(good)


# ---- SAELens -------------------------------------------------------------------------------
def saelens_weights(d_out=D_IN, seed=0):
    return {"W_enc": rand(D_IN, D_SAE, seed=seed), "b_enc": rand(D_SAE, seed=seed + 1, scale=0.5),
            "W_dec": rand(D_SAE, d_out, seed=seed + 2, scale=0.3), "b_dec": rand(d_out, seed=seed + 3)}


def test_saelens_standard_v6(tmp_path, x):
    w = saelens_weights()
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"hook_name": "blocks.6.hook_resid_post", "model_name": "gpt2", "sae_lens_version": "6.5.0"}}
    folder = write(tmp_path / "sl", {"sae_weights.safetensors": w}, cfg__json=cfg)
    assert detect_format(folder) == "saelens"
    coder = load_sae(folder)
    # StandardSAE: process_sae_in subtracts b_dec * apply_b_dec_to_input; relu; decode
    f = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    close(coder.encode(x), f)
    close(coder(x), f @ w["W_dec"] + w["b_dec"])
    s = coder.cfg
    assert (s.arch, s.kind, s.site, s.source, s.model) == ("relu", "sae", "layers.6.resid_post", "saelens", "gpt2")


def test_saelens_v5_without_b_dec_subtraction(tmp_path, x):
    w = saelens_weights(seed=10)
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "hook_name": "blocks.2.hook_mlp_out", "apply_b_dec_to_input": False,
           "activation_fn_str": "relu", "normalize_activations": False, "sae_lens_version": "3.1.0"}
    coder = load_sae(write(tmp_path / "sl", {"sae_weights.safetensors": w}, cfg__json=cfg))
    f = torch.relu(x @ w["W_enc"] + w["b_enc"])
    close(coder(x), f @ w["W_dec"] + w["b_dec"])
    assert coder.cfg.site == "layers.2.mlp_out" and coder.cfg.extra["subtract_b_dec"] is False
    # TopK training uses the same b_pre as the forward
    vals, idx, _, _ = topk_code(coder.with_spec(arch="topk", k=D_SAE), x)
    close(torch.zeros(32, D_SAE).scatter(-1, idx, vals), f)


def test_saelens_topk_rescaled_by_decoder_norm(tmp_path, x):
    w = saelens_weights(seed=20)
    cfg = {"architecture": "topk", "d_in": D_IN, "d_sae": D_SAE, "k": 6, "rescale_acts_by_decoder_norm": True,
           "apply_b_dec_to_input": True, "metadata": {"hook_name": "blocks.0.hook_resid_pre"}}
    coder = load_sae(write(tmp_path / "sl", {"sae_weights.safetensors": w}, cfg__json=cfg))
    # TopKSAE.encode: hidden_pre * |W_dec row|, TopK (topk then relu); decode: f / |W_dec row|
    n = w["W_dec"].norm(dim=-1)
    hidden = ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * n
    vals, idx = hidden.topk(6, dim=-1)
    f = torch.zeros_like(hidden).scatter(-1, idx, vals.relu())
    close(coder.encode(x), f)
    close(coder(x), (f / n) @ w["W_dec"] + w["b_dec"])
    assert (coder.cfg.arch, coder.cfg.k, coder.cfg.site) == ("topk", 6, "layers.0.resid_pre")


def test_saelens_pre6_topk_and_finetuning_scaling_factor(tmp_path, x):
    w = saelens_weights(seed=30)
    w["scaling_factor"] = rand(D_SAE, seed=34).abs() + 0.5
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "hook_point": "blocks.1.hook_resid_mid", "activation_fn_str": "topk",
           "activation_fn_kwargs": {"k": 5}, "finetuning_scaling_factor": True}
    coder = load_sae(write(tmp_path / "sl", {"sae_weights.safetensors": w}, cfg__json=cfg))
    hidden = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    vals, idx = hidden.topk(5, dim=-1)
    f = torch.zeros_like(hidden).scatter(-1, idx, vals.relu())
    close(coder(x), (f * w["scaling_factor"]) @ w["W_dec"] + w["b_dec"])
    assert coder.cfg.site == "layers.1.resid_mid"
    cfg["finetuning_scaling_factor"] = False
    write(tmp_path / "sl", {}, cfg__json=cfg)
    with pytest.raises(ArtifactError, match="disagree"):
        load_sae(tmp_path / "sl")


def test_saelens_jumprelu_with_nonpositive_thresholds(tmp_path, x):
    w = saelens_weights(seed=40)
    thr = rand(D_SAE, seed=44).abs() * 3
    thr[:8] = 0.0
    thr[8:12] = -1.0
    w["threshold"] = thr
    cfg = {"architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE, "apply_b_dec_to_input": False,
           "metadata": {"hook_name": "blocks.3.hook_attn_out"}}
    coder = load_sae(write(tmp_path / "sl", {"sae_weights.safetensors": w}, cfg__json=cfg))
    hidden = x @ w["W_enc"] + w["b_enc"]
    f = torch.relu(hidden) * (hidden > thr)  # JumpReLUSAE.encode
    close(coder.encode(x), f)
    close(coder(x), f @ w["W_dec"] + w["b_dec"])
    assert coder.cfg.site == "layers.3.attn_out"
    # saved natively it comes back the same (the <= 0 thresholds are finite in log space)
    back = load_coder(save_coder(coder, tmp_path / "native"))
    assert torch.equal(back(x), coder(x)) and back.cfg == coder.cfg


@pytest.mark.parametrize("arch", ["skip_transcoder", "jumprelu_skip_transcoder", "transcoder"])
def test_saelens_transcoders(tmp_path, x, arch):
    d_out = 24
    w = saelens_weights(d_out=d_out, seed=50)
    skip = "skip" in arch
    if skip:
        w["W_skip"] = rand(d_out, D_IN, seed=55, scale=0.2)  # [d_out, d_in]
    if arch.startswith("jumprelu"):
        w["threshold"] = rand(D_SAE, seed=56).abs()
    cfg = {"architecture": arch, "d_in": D_IN, "d_sae": D_SAE, "d_out": d_out, "apply_b_dec_to_input": False,
           "metadata": {"hook_name": "blocks.3.ln2.hook_normalized", "hook_name_out": "blocks.3.hook_mlp_out"}}
    folder = write(tmp_path / "sl", {"sae_weights.safetensors": w}, cfg__json=cfg)
    coder = load_sae(folder)
    hidden = x @ w["W_enc"] + w["b_enc"]  # Transcoder.process_sae_in never subtracts b_dec
    f = torch.relu(hidden) * (hidden > w["threshold"]) if arch.startswith("jumprelu") else torch.relu(hidden)
    want = f @ w["W_dec"] + w["b_dec"] + (x @ w["W_skip"].T if skip else 0)
    close(coder(x), want)
    assert coder.cfg.kind == ("skip_transcoder" if skip else "transcoder")
    assert (coder.cfg.site, coder.cfg.site_out) == ("", "layers.3.mlp_out")  # ln2.hook_normalized: unknown
    coder = load_sae(folder, site="layers.3.mlp_in")
    assert (coder.cfg.site, coder.cfg.site_out) == ("layers.3.mlp_in", "layers.3.mlp_out")


def test_saelens_expected_average_norm_uses_the_saved_scaler(tmp_path, x):
    w = saelens_weights(seed=60)
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "apply_b_dec_to_input": True,
           "normalize_activations": "expected_average_only_in"}
    folder = write(tmp_path / "sl", {"sae_weights.safetensors": w}, cfg__json=cfg)
    with pytest.raises(ArtifactError, match="scaling factor is unknown"):
        load_sae(folder)
    (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 2.5}))
    coder = load_sae(folder)
    # SAELens folds the factor s: W_enc * s, W_dec / s, b_dec / s
    s = 2.5
    f = torch.relu((x - w["b_dec"] / s) @ (w["W_enc"] * s) + w["b_enc"])
    close(coder(x), f @ (w["W_dec"] / s) + w["b_dec"] / s)


def test_saelens_refusals(tmp_path):
    w = saelens_weights()
    base = {"d_in": D_IN, "d_sae": D_SAE, "apply_b_dec_to_input": True}
    folder = write(tmp_path / "g", {"sae_weights.safetensors": w}, cfg__json={**base, "architecture": "gated"})
    with pytest.raises(ArtifactError, match="gated"):
        load_sae(folder)
    write(folder, {}, cfg__json={**base, "architecture": "standard", "normalize_activations": "constant_norm_rescale"})
    with pytest.raises(ArtifactError, match="constant_norm_rescale"):
        load_sae(folder)
    write(folder, {}, cfg__json={**base, "architecture": "matching_pursuit"})
    with pytest.raises(ArtifactError, match="matching_pursuit.*supported: standard, topk"):
        load_sae(folder)
    # wrong shapes and missing keys name the tensor and what was expected
    write(folder, {"sae_weights.safetensors": {**w, "W_enc": w["W_enc"].T}}, cfg__json={**base, "architecture": "standard"})
    with pytest.raises(ArtifactError, match=r"W_enc has shape \[64, 16\], expected \[d_in, d_sae\] = \[16, 64\]"):
        load_sae(folder)
    write(folder, {"sae_weights.safetensors": {k: v for k, v in w.items() if k != "b_dec"}})
    with pytest.raises(ArtifactError, match="no tensor 'b_dec'"):
        load_sae(folder)
    write(folder, {"sae_weights.safetensors": w}, cfg__json={**base, "architecture": "topk"})
    with pytest.raises(ArtifactError, match="numeric k"):
        load_sae(folder)


def test_foreign_coder_checked_against_the_model(tmp_path, tiny_llama):
    d = tiny_llama.d_model
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "metadata": {"hook_name": "blocks.1.hook_resid_post"}}
    folder = write(tmp_path / "small", {"sae_weights.safetensors": saelens_weights()}, cfg__json=cfg)
    with pytest.raises(ArtifactError, match="16-wide activations at layers.1.resid_post.*64 wide"):
        load_sae(folder, model=tiny_llama)
    w = {"W_enc": rand(d, D_SAE, seed=1), "b_enc": rand(D_SAE, seed=2), "W_dec": rand(D_SAE, d, seed=3),
         "b_dec": rand(d, seed=4)}
    folder = write(tmp_path / "fits", {"sae_weights.safetensors": w}, cfg__json={**cfg, "d_in": d})
    coder = load_sae(folder, model=tiny_llama)
    assert coder.cfg.model == "tiny-llama" and coder.cfg.site == "layers.1.resid_post"
    cfg["metadata"]["hook_name"] = "blocks.7.hook_resid_post"  # tiny-llama has 3 layers
    write(folder, {}, cfg__json={**cfg, "d_in": d})
    with pytest.raises(ArtifactError, match="does not have"):
        load_sae(folder, model=tiny_llama)


# ---- sparsify ------------------------------------------------------------------------------
def sparsify_weights(d_out=D_IN, seed=0, skip=False):
    w = {"encoder.weight": rand(D_SAE, D_IN, seed=seed), "encoder.bias": rand(D_SAE, seed=seed + 1, scale=0.5),
         "W_dec": rand(D_SAE, d_out, seed=seed + 2, scale=0.3), "b_dec": rand(d_out, seed=seed + 3)}
    if skip:
        w["W_skip"] = rand(d_out, D_IN, seed=seed + 4, scale=0.2)
    return w


def sparsify_cfg(**kw):
    return {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": D_SAE, "k": 8,
            "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D_IN, **kw}


def sparsify_reference(w, x, k, transcode):
    # SparseCoder.encode: x - b_dec unless transcoding; fused_encoder: relu(linear) then topk
    sae_in = x if transcode else x - w["b_dec"]
    pre = torch.relu(sae_in @ w["encoder.weight"].T + w["encoder.bias"])
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    out = torch.zeros_like(pre).scatter(-1, idx, vals) @ w["W_dec"] + w["b_dec"]  # decode
    return out + (x @ w["W_skip"].T if "W_skip" in w else 0)  # forward: sae_out += x @ W_skip.mT


def test_sparsify_sae(tmp_path, x):
    w = sparsify_weights(seed=70)
    folder = write(tmp_path / "layers.6", {"sae.safetensors": w}, cfg__json=sparsify_cfg())
    assert detect_format(folder) == "sparsify"
    coder = load_sae(folder)
    close(coder(x), sparsify_reference(w, x, 8, transcode=False))
    s = coder.cfg
    assert (s.arch, s.k, s.kind, s.site, s.source) == ("topk", 8, "sae", "layers.6.resid_post", "sparsify")


@pytest.mark.parametrize("transcode", [True, False])
def test_sparsify_skip_connection(tmp_path, x, transcode):
    w = sparsify_weights(seed=80, skip=True)
    cfg = sparsify_cfg(transcode=transcode, skip_connection=True, num_latents=0, expansion_factor=4)  # 16 * 4 latents
    coder = load_sae(write(tmp_path / "layers.2.mlp", {"sae.safetensors": w}, cfg__json=cfg))
    close(coder(x), sparsify_reference(w, x, 8, transcode=transcode))
    assert coder.cfg.kind == "skip_transcoder"
    if transcode:  # reads what the MLP reads, predicts what it writes (Llama names)
        assert (coder.cfg.site, coder.cfg.site_out) == ("layers.2.mlp_in", "layers.2.mlp_out")
    else:
        assert (coder.cfg.site, coder.cfg.site_out) == ("layers.2.mlp_out", "layers.2.mlp_out")


def test_sparsify_parent_folder_needs_a_hookpoint(tmp_path, x):
    w5, w6 = sparsify_weights(seed=90), sparsify_weights(seed=95)
    write(tmp_path / "run" / "layers.5", {"sae.safetensors": w5}, cfg__json=sparsify_cfg())
    write(tmp_path / "run" / "layers.6", {"sae.safetensors": w6}, cfg__json=sparsify_cfg())
    assert detect_format(tmp_path / "run") == "sparsify"
    with pytest.raises(ArtifactError, match="several hookpoints \\(layers.5, layers.6\\); pass site="):
        load_sae(tmp_path / "run")
    coder = load_sae(tmp_path / "run", site="layers.6")
    assert coder.cfg.site == "layers.6.resid_post"
    close(coder(x), sparsify_reference(w6, x, 8, transcode=False))
    coder = load_sae(tmp_path / "run", site="layers.5.resid_post")
    close(coder(x), sparsify_reference(w5, x, 8, transcode=False))
    with pytest.raises(ArtifactError, match="no hookpoint reads layers.9.resid_post"):
        load_sae(tmp_path / "run", site="layers.9.resid_post")
    with pytest.raises(InputError, match="neither a hookpoint"):
        load_sae(tmp_path / "run", site="layers.6.nowhere")


def test_sparsify_refusals(tmp_path):
    folder = write(tmp_path / "layers.1", {"sae.safetensors": sparsify_weights()}, cfg__json=sparsify_cfg(activation="groupmax"))
    with pytest.raises(ArtifactError, match="groupmax"):
        load_sae(folder)
    write(folder, {"sae.safetensors": {k: v for k, v in sparsify_weights().items() if k != "encoder.bias"}},
          cfg__json=sparsify_cfg())
    with pytest.raises(ArtifactError, match="no tensor 'encoder.bias'"):
        load_sae(folder)
    write(folder, {"sae.safetensors": sparsify_weights()}, cfg__json=sparsify_cfg(k=D_SAE + 1))
    with pytest.raises(ArtifactError, match="k <= d_sae"):
        load_sae(folder, format="sparsify")


# ---- Gemma Scope 2 -------------------------------------------------------------------------
def gemmascope_weights(d_out=D_IN, seed=0, skip=False):
    w = {"w_enc": rand(D_IN, D_SAE, seed=seed), "b_enc": rand(D_SAE, seed=seed + 1, scale=0.5),
         "w_dec": rand(D_SAE, d_out, seed=seed + 2, scale=0.3), "b_dec": rand(d_out, seed=seed + 3),
         "threshold": rand(D_SAE, seed=seed + 4).abs() * 2}
    if skip:
        w["affine_skip_connection"] = rand(D_IN, d_out, seed=seed + 5, scale=0.2)
    return w


def gemmascope_reference(w, x):
    # the Gemma Scope 2 tutorial's JumpReLUSAE: no b_dec subtraction, mask * relu, x @ affine skip
    pre = x @ w["w_enc"] + w["b_enc"]
    f = (pre > w["threshold"]) * torch.relu(pre)
    out = f @ w["w_dec"] + w["b_dec"]
    return out + x @ w["affine_skip_connection"] if "affine_skip_connection" in w else out


def test_gemmascope2_sae_from_folder_names(tmp_path, x):
    w = gemmascope_weights(seed=100)
    folder = write(tmp_path / "resid_post" / "layer_6_width_16k_l0_medium", {"params.safetensors": w})
    assert detect_format(folder / "params.safetensors") == "gemmascope2"
    coder = load_sae(folder)
    close(coder(x), gemmascope_reference(w, x))
    s = coder.cfg
    assert (s.arch, s.kind, s.site, s.source) == ("jumprelu", "sae", "layers.6.resid_post", "gemmascope2")


def test_gemmascope2_affine_transcoder_with_config(tmp_path, x):
    w = gemmascope_weights(seed=110, skip=True)
    cfg = {"hf_hook_point_in": "model.layers.5.pre_feedforward_layernorm.output",
           "hf_hook_point_out": "model.layers.5.post_feedforward_layernorm.output", "width": D_SAE,
           "model_name": "google/gemma-3-270m-it", "architecture": "jump_relu", "l0": 10, "affine_connection": True,
           "type": "transcoder"}
    folder = write(tmp_path / "transcoder_all" / "layer_5_width_16k_l0_small_affine", {"params.safetensors": w},
                   config__json=cfg)
    coder = load_sae(folder)
    close(coder(x), gemmascope_reference(w, x))
    s = coder.cfg
    assert (s.kind, s.site, s.site_out, s.model) == ("skip_transcoder", "layers.5.mlp_in", "layers.5.mlp_out",
                                                    "google/gemma-3-270m-it")


def test_gemmascope2_unknown_site_and_refusals(tmp_path, x, caplog):
    w = gemmascope_weights(seed=120)
    folder = write(tmp_path / "somewhere" / "my_sae", {"params.safetensors": w})
    with caplog.at_level(logging.INFO, logger="lmscope.saes"):
        coder = load_sae(folder)
    assert coder.cfg.site == "" and "site=" in caplog.text
    assert load_sae(folder, site="layers.2.attn_out").cfg.site == "layers.2.attn_out"
    with pytest.raises(InputError, match="not a site"):
        load_sae(folder, site="layer 2")
    clt = {**w, "w_dec": rand(D_SAE, 3, D_IN, seed=1)}
    write(folder, {"params.safetensors": clt})
    with pytest.raises(ArtifactError, match="cross-layer transcoder"):
        load_sae(folder)


@pytest.mark.parametrize("family,point,site", [
    ("gemma3_text", "model.layers.5.pre_feedforward_layernorm.output", "layers.5.mlp_in"),
    ("gemma3_text", "model.language_model.layers.5.post_feedforward_layernorm.output", "layers.5.mlp_out"),
    ("gemma3_text", "model.layers.5.post_attention_layernorm.output", "layers.5.attn_out"),
    ("gemma3_text", "model.layers.5.mlp.output", ""),  # before Gemma's post-norm: not mlp_out
    ("gemma3_text", "model.layers.5.output", "layers.5.resid_post"),
    ("llama", "model.layers.5.post_attention_layernorm.output", "layers.5.mlp_in"),  # Llama's pre-MLP norm
    ("llama", "layers.5.mlp.output", "layers.5.mlp_out"),
    ("llama", "layers.5.mlp.input", "layers.5.mlp_in"),
    ("llama", "embed_tokens.output", "embed"),
    ("olmo2", "model.layers.5.mlp.input", "layers.5.mlp_in"),
    ("gpt2", "h.5.attn.output", "layers.5.attn_out"),
    ("gpt2", "h.5.ln_2.output", "layers.5.mlp_in"),
    ("gpt2", "h.5.mlp.act.output", ""),
])
def test_hf_module_paths_map_through_the_architecture_table(family, point, site):
    from lmscope.engine.arch import FAMILIES, module_site

    module, _, io = point.rpartition(".")
    assert module_site(module, io, FAMILIES[family]) == site


def test_sparsify_transcoder_with_a_model(tmp_path, tiny_llama):
    d = tiny_llama.d_model
    w = {"encoder.weight": rand(D_SAE, d, seed=1), "encoder.bias": rand(D_SAE, seed=2), "W_dec": rand(D_SAE, d, seed=3),
         "b_dec": rand(d, seed=4)}
    folder = write(tmp_path / "layers.1.mlp", {"sae.safetensors": w}, cfg__json=sparsify_cfg(d_in=d, transcode=True))
    coder = load_sae(folder, model=tiny_llama)
    s = coder.cfg
    assert (s.kind, s.site, s.site_out, s.model) == ("transcoder", "layers.1.mlp_in", "layers.1.mlp_out", "tiny-llama")
    assert load_sae(folder, model=tiny_llama, site="layers.-1.mlp_in").cfg.site == "layers.2.mlp_in"
    with pytest.raises(InputError, match="counts layers from the end"):
        load_sae(folder, site="layers.-1.mlp_in")


def test_saelens_jumprelu_training_checkpoint_log_threshold(tmp_path, x):
    w = saelens_weights(seed=130)
    thr = rand(D_SAE, seed=131).abs() + 0.1
    w["log_threshold"] = thr.log()
    cfg = {"architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE, "apply_b_dec_to_input": True}
    coder = load_sae(write(tmp_path / "sl", {"sae_weights.safetensors": w}, cfg__json=cfg))
    hidden = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    close(coder(x), (torch.relu(hidden) * (hidden > thr)) @ w["W_dec"] + w["b_dec"])


# ---- detection -----------------------------------------------------------------------------
def test_detection_errors(tmp_path):
    with pytest.raises(ArtifactError, match="no such file"):
        load_sae(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="Found: nothing.*saelens: cfg.json \\+ sae_weights.safetensors.*gemmascope2"):
        load_sae(tmp_path / "empty")
    (tmp_path / "gs1").mkdir()
    (tmp_path / "gs1" / "params.npz").write_bytes(b"")
    with pytest.raises(ArtifactError, match="Found: params.npz.*Gemma Scope 1"):
        load_sae(tmp_path / "gs1")
    with pytest.raises(InputError, match="Unknown SAE format 'npz'"):
        load_sae(tmp_path / "gs1", format="npz")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cfg.json").write_text("[1, 2]")
    (tmp_path / "bad" / "sae_weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ArtifactError, match="holds a JSON list"):
        load_sae(tmp_path / "bad")
    (tmp_path / "bad" / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": 4, "d_sae": 8}))
    with pytest.raises(ArtifactError, match="not a readable safetensors"):
        load_sae(tmp_path / "bad")


def test_loaded_coders_are_plain_sparse_coders(tmp_path):
    folder = write(tmp_path / "resid_post" / "layer_1_width_16k_l0_small", {"params.safetensors": gemmascope_weights()})
    coder = load_sae(folder)
    assert type(coder) is SparseCoder and coder.card is None and coder.train_info is None
    assert all(p.dtype == torch.float32 for p in coder.state_dict().values())
