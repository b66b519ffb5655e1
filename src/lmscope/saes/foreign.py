"""Readers of foreign sparse-coder formats: SAELens, EleutherAI sparsify, Gemma Scope 2.

Each maps exactly onto `SparseCoder` (coder.py): `pre = (x - b_pre) @ W_enc + b_enc`,
`y = f @ W_dec + b_dec [+ x @ W_skip]`. What each library computes, as its own code defines it:

- SAELens (sae_lens/saes/sae.py, standard_sae.py, topk_sae.py, jumprelu_sae.py, transcoder.py):
  `pre = (x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc`; standard `f = relu(pre)`; topk
  keeps the k largest `pre` then applies relu; jumprelu `f = relu(pre) * (pre > threshold)`;
  `y = f @ W_dec + b_dec`. TopK's `rescale_acts_by_decoder_norm` (`pre * |W_dec_i|`, then
  `f / |W_dec_i|` before decoding) is folded into W_enc, b_enc and W_dec. Transcoders never
  subtract b_dec; skip-transcoders add `x @ W_skip.T` (W_skip is [d_out, d_in]). A pre-6
  `scaling_factor` (finetuning) multiplies f and is folded into W_dec; `expected_average_only_in`
  needs the folder's activation_scaler.json and becomes `s_in = s_out = scaling_factor`. Gated
  SAEs and per-token normalisations (constant_norm_rescale, layer_norm) are refused.
- sparsify (sparsify/sparse_coder.py, fused_encoder.py): `pre = relu((x - b_dec) @ encoder.weight.T
  + encoder.bias)` (no subtraction when `transcode`), the k largest of it kept, `y = f @ W_dec +
  b_dec [+ x @ W_skip.T]`. ReLU before TopK equals TopK then ReLU as a dense code. Checkpoints of
  transcoders from before sparsify's Feb 2025 fix subtracted b_dec; like sparsify today, we do not.
- Gemma Scope 2 (DeepMind's tutorial JumpReLUSAE): `pre = x @ w_enc + b_enc` (no subtraction),
  `f = relu(pre) * (pre > threshold)`, `y = f @ w_dec + b_dec [+ x @ affine_skip_connection]`
  (not transposed: [d_in, d_out]). Cross-layer transcoders (3-d w_dec) are refused.

JumpReLU thresholds are stored as `log_threshold`; one <= 0 acts like relu and is kept as the
smallest positive float32 (1.2e-38), so only pre-activations in (0, 1.2e-38] can differ.

Sites. SAELens hook names map as `blocks.6.hook_resid_post` -> `layers.6.resid_post` (also
resid_pre, resid_mid, attn_out, mlp_out); `ln2.hook_normalized` and `attn.hook_z` stay unknown
(TransformerLens normalises before the norm's weight, so it is not our `mlp_in`). HF module
paths (sparsify hookpoints, Gemma Scope 2 `hf_hook_point_in/out`) map through the model's
architecture table: a block's output is `resid_post`, the MLP's input and the pre-MLP norm's
output are `mlp_in`, the modules lmscope reads `mlp_out` / `attn_out` from give those. Without
`model=`, sparsify paths are read with Llama names and Gemma Scope 2 paths with Gemma 3 names.
Without a config, Gemma Scope 2 sites come from the folder names (`resid_post/layer_6_width_16k_l0_medium`).
An unknown site stays "" (a log line says so) and `site=` sets it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from lmscope.engine.arch import FAMILIES, module_site
from lmscope.engine.errors import ArtifactError, InputError, LmscopeError
from lmscope.saes.coder import CoderSpec, SparseCoder
from lmscope.saes.loading import (
    WEIGHTS,
    _canonical_site,
    _check_widths,
    _is_sparsify_dir,
)

if TYPE_CHECKING:
    from lmscope.engine.model import Model

log = logging.getLogger(__name__)

_TINY = torch.finfo(torch.float32).tiny  # the JumpReLU threshold kept for thresholds <= 0


# ---- what a foreign reader produces -------------------------------------------------------
@dataclass
class _Found:
    """A foreign coder in our terms, before its sites are settled and the model checked."""

    where: Path
    arch: str
    kind: str
    d_in: int
    d_sae: int
    d_out: int
    tensors: dict[str, Tensor]  # W_enc, b_enc, W_dec, b_dec [, W_skip] [, threshold]
    k: int | None = None
    site: str = ""
    site_out: str = ""
    source_model: str = ""
    scale: float = 1.0
    extra: dict = field(default_factory=dict)


def _finish(found: _Found, fmt: str, model: Model | None, site: str | None) -> SparseCoder:
    """Settle the sites, build the spec and the coder, and check it against `model`."""
    where = str(found.where)
    site_in = found.site
    if site is not None:
        site_in = _canonical_site(site, model)
        if found.site and found.site != site_in:
            log.warning("%s says it reads %s; using site=%s as given.", where, found.site, site_in)
    elif not site_in:
        log.info("%s does not say where it reads in lmscope's terms; pass site=... to set it.", where)
    site_out = site_in if found.kind == "sae" else found.site_out
    if found.kind != "sae" and site_in and not site_out:
        log.warning("%s: cannot tell where this transcoder writes; spec.site_out falls back to its "
                    "input site.", where)
    try:
        spec = CoderSpec(arch=found.arch, d_in=found.d_in, d_sae=found.d_sae, d_out=found.d_out, k=found.k,
                         kind=found.kind, site=site_in, site_out=site_out, source=fmt,
                         model=model.name if model is not None else found.source_model,
                         extra={"source_path": where, **found.extra})
    except InputError as e:
        raise ArtifactError(f"{where} cannot be loaded as a sparse coder: {e}") from None
    coder = SparseCoder(spec)
    t = found.tensors
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(coder, name).copy_(t[name])
        if coder.W_skip is not None:
            coder.W_skip.copy_(t["W_skip"])
        if coder.log_threshold is not None:  # relu(pre) * (pre > thr) == pre * (pre > max(thr, 0))
            coder.log_threshold.copy_(t["threshold"].clamp_min(_TINY).log())
        elif spec.arch == "batchtopk":
            coder.threshold_buf.copy_(t["threshold"].clamp_min(0.0))
        coder.scale_in.fill_(found.scale)
        coder.scale_out.fill_(found.scale)
    if model is not None:
        _check_widths(spec, model, where, ArtifactError)
    coder.card, coder.train_info = None, None
    return coder


# ---- SAELens -------------------------------------------------------------------------------
_SAELENS_ARCHS = {  # architecture -> (our arch, our kind)
    "standard": ("relu", "sae"),
    "topk": ("topk", "sae"),
    "jumprelu": ("jumprelu", "sae"),
    "batchtopk": ("batchtopk", "sae"),  # training checkpoints; saved for inference they are jumprelu
    "matryoshka_batchtopk": ("batchtopk", "sae"),
    "transcoder": ("relu", "transcoder"),
    "skip_transcoder": ("relu", "skip_transcoder"),
    "jumprelu_transcoder": ("jumprelu", "transcoder"),
    "jumprelu_skip_transcoder": ("jumprelu", "skip_transcoder"),
}
_TL_KINDS = {"hook_resid_pre": "resid_pre", "hook_resid_mid": "resid_mid", "hook_resid_post": "resid_post",
             "hook_attn_out": "attn_out", "hook_mlp_out": "mlp_out"}


def load_saelens(path: str | os.PathLike, *, model: Model | None = None, site: str | None = None) -> SparseCoder:
    """Load a SAELens (v5/v6) folder: cfg.json + sae_weights.safetensors. See the module docstring."""
    folder = _folder(path)
    cfg = _read_json(folder / "cfg.json")
    meta = cfg["metadata"] if isinstance(cfg.get("metadata"), dict) else {}

    def get(key: str, default=None):  # v6 moved hook and model names into "metadata"
        return meta[key] if meta.get(key) is not None else cfg.get(key, default)

    where = folder / "sae_weights.safetensors"
    arch_name = cfg.get("architecture") or "standard"
    act = cfg.get("activation_fn") or cfg.get("activation_fn_str") or "relu"
    k = cfg.get("k")
    if arch_name == "standard" and act == "topk":  # pre-6 TopK
        arch_name, k = "topk", (cfg.get("activation_fn_kwargs") or {}).get("k", k)
    elif arch_name == "standard" and act != "relu":
        raise ArtifactError(f"{folder}: activation_fn {act!r} is not supported (relu and topk are).")
    if arch_name == "gated":
        raise ArtifactError(f"{folder} is a gated SAE, which lmscope does not load: its gate and magnitude "
                            "paths have no place in SparseCoder. Use a standard, topk or jumprelu SAE.")
    if arch_name not in _SAELENS_ARCHS:
        raise ArtifactError(f"{folder}: SAELens architecture {arch_name!r} is not supported; supported: "
                            f"{', '.join(_SAELENS_ARCHS)}.")
    arch, kind = _SAELENS_ARCHS[arch_name]
    d_in, d_sae = _int_field(cfg, "d_in", folder), _int_field(cfg, "d_sae", folder)
    d_out = _int_field(cfg, "d_out", folder) if kind != "sae" else d_in
    if arch in ("topk", "batchtopk"):
        if not isinstance(k, (int, float)) or isinstance(k, bool):
            raise ArtifactError(f"{folder}: a {arch_name} SAE needs a numeric k in cfg.json, found {k!r}.")
        k = max(1, round(k))  # BatchTopK's k is a float (an average)
    else:
        k = None

    apply_b_dec = cfg.get("apply_b_dec_to_input", kind == "sae")
    if kind != "sae" and apply_b_dec:
        raise ArtifactError(f"{folder}: apply_b_dec_to_input is true for a transcoder, which SAELens itself "
                            "refuses (b_dec lives in the output space).")
    scale = _saelens_scale(cfg, folder, kind)

    ts = _read_tensors(where)
    t = {"W_enc": _tensor(ts, "W_enc", (d_in, d_sae), "d_in, d_sae", where),
         "b_enc": _tensor(ts, "b_enc", (d_sae,), "d_sae", where),
         "W_dec": _tensor(ts, "W_dec", (d_sae, d_out), "d_sae, d_out" if kind != "sae" else "d_sae, d_in", where),
         "b_dec": _tensor(ts, "b_dec", (d_out,), "d_out" if kind != "sae" else "d_in", where)}
    if kind == "skip_transcoder":  # SAELens adds x @ W_skip.T with W_skip [d_out, d_in]
        t["W_skip"] = _tensor(ts, "W_skip", (d_out, d_in), "d_out, d_in", where).T.contiguous()
    if arch == "jumprelu" and "threshold" not in ts and "log_threshold" in ts:  # a training checkpoint
        t["threshold"] = _tensor(ts, "log_threshold", (d_sae,), "d_sae", where).exp()
    elif arch == "jumprelu":
        t["threshold"] = _tensor(ts, "threshold", (d_sae,), "d_sae", where)
    elif arch == "batchtopk":
        if "threshold" in ts:
            t["threshold"] = _tensor(ts, "threshold", (d_sae,), "d_sae", where)
        else:
            t["threshold"] = _tensor(ts, "topk_threshold", (), "a scalar", where).expand(d_sae).clone()
    for name in ("scaling_factor", "finetuning_scaling_factor"):  # pre-6: f * scaling_factor
        if name in ts:
            sf = _tensor(ts, name, (d_sae,), "d_sae", where)
            if not torch.allclose(sf, torch.ones_like(sf)):
                if not cfg.get("finetuning_scaling_factor"):
                    raise ArtifactError(f"{where} has a {name} that is not all ones but cfg.json says "
                                        "finetuning_scaling_factor is false; the files disagree.")
                t["W_dec"] = t["W_dec"] * sf[:, None]
    if arch in ("topk", "batchtopk") and cfg.get("rescale_acts_by_decoder_norm"):
        n = t["W_dec"].norm(dim=-1)  # pre * n chooses the latents; f / n decodes: fold both
        if not bool((n > 0).all()):
            raise ArtifactError(f"{where}: a W_dec row has zero norm, so rescale_acts_by_decoder_norm is undefined.")
        t["W_enc"], t["b_enc"], t["W_dec"] = t["W_enc"] * n, t["b_enc"] * n, t["W_dec"] / n[:, None]

    sites = _Sites(model, "llama")
    hook, hook_out = get("hook_name") or get("hook_point") or "", get("hook_name_out") or ""
    site_in = _tl_site(hook) or sites.point(get("hf_hook_name") or "")
    site_out = _tl_site(hook_out) or sites.point(get("hf_hook_name_out") or "")
    extra = {"source_hook": hook, **({"source_hook_out": hook_out} if hook_out else {})}
    if kind == "sae" and not apply_b_dec:
        extra["subtract_b_dec"] = False
    found = _Found(where=folder, arch=arch, kind=kind, d_in=d_in, d_sae=d_sae, d_out=d_out, tensors=t, k=k,
                   site=site_in, site_out=site_out, source_model=str(get("model_name") or ""), scale=scale,
                   extra=extra)
    return _finish(found, "saelens", model, site)


def _saelens_scale(cfg: dict, folder: Path, kind: str) -> float:
    """The input scale of `normalize_activations`: 1.0, or activation_scaler.json's factor."""
    norm = cfg.get("normalize_activations")
    if norm is None or norm is False or norm == "none":
        return 1.0
    if norm is True or norm == "expected_average_only_in":
        scaler = folder / "activation_scaler.json"
        if kind != "sae":
            raise ArtifactError(f"{folder}: a transcoder with normalize_activations 'expected_average_only_in' "
                                "is not supported (SAELens does not rescale a transcoder's output).")
        factor = _read_json(scaler).get("scaling_factor") if scaler.is_file() else None
        if isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor > 0:
            return float(factor)
        raise ArtifactError(f"{folder}: normalize_activations is 'expected_average_only_in' but its scaling factor "
                            "is unknown (no activation_scaler.json with a positive scaling_factor beside "
                            "cfg.json). Fold the factor into the weights with SAELens, or add that file.")
    raise ArtifactError(f"{folder}: normalize_activations {norm!r} rescales every token by its own norm, which "
                        "SparseCoder cannot express (it has one fixed scale). Only 'none' and "
                        "'expected_average_only_in' are supported.")


def _tl_site(hook: str) -> str:
    """A TransformerLens hook name ('blocks.6.hook_resid_post') as a site, or ''."""
    m = re.fullmatch(r"blocks\.(\d+)\.(\w+)", hook or "")
    return f"layers.{m.group(1)}.{_TL_KINDS[m.group(2)]}" if m and m.group(2) in _TL_KINDS else ""


# ---- sparsify ------------------------------------------------------------------------------
def load_sparsify(path: str | os.PathLike, *, model: Model | None = None, site: str | None = None) -> SparseCoder:
    """Load an EleutherAI sparsify folder (cfg.json + sae.safetensors), or pick one hookpoint
    of a parent folder with `site` (a hookpoint name like "layers.6", or a site)."""
    folder = _folder(path)
    sites = _Sites(model, "llama")
    if not (folder / "cfg.json").is_file():
        folder, site = _pick_hookpoint(folder, site, model, sites)
    cfg = _read_json(folder / "cfg.json")
    where = folder / WEIGHTS
    if cfg.get("activation", "topk") != "topk":
        raise ArtifactError(f"{folder}: sparsify activation {cfg.get('activation')!r} is not supported (topk is).")
    if cfg.get("signed"):
        raise ArtifactError(f"{folder}: signed sparsify coders are not supported.")
    d_in = _int_field(cfg, "d_in", folder)
    d_sae = cfg.get("num_latents") or d_in * cfg.get("expansion_factor", 32)  # sparsify's own rule
    if not isinstance(d_sae, int) or d_sae < 1:
        raise ArtifactError(f"{folder}: cannot tell the number of latents (num_latents / expansion_factor).")
    transcode, skip = bool(cfg.get("transcode", False)), bool(cfg.get("skip_connection", False))
    ts = _read_tensors(where)
    if "W_dec" not in ts or ts["W_dec"].ndim != 2:
        raise ArtifactError(f"{where} has no 2-d tensor 'W_dec' [num_latents, d_out] (it has {', '.join(sorted(ts))}).")
    d_out = int(ts["W_dec"].shape[1])
    if not transcode and d_out != d_in:
        raise ArtifactError(f"{where}: W_dec writes {d_out} dims but d_in is {d_in}; an autoencoder must match.")
    t = {"W_enc": _tensor(ts, "encoder.weight", (d_sae, d_in), "num_latents, d_in", where).T.contiguous(),
         "b_enc": _tensor(ts, "encoder.bias", (d_sae,), "num_latents", where),
         "W_dec": _tensor(ts, "W_dec", (d_sae, d_out), "num_latents, d_out", where),
         "b_dec": _tensor(ts, "b_dec", (d_out,), "d_out", where)}
    if skip:  # sparsify adds x @ W_skip.mT
        t["W_skip"] = _tensor(ts, "W_skip", (d_out, d_in), "d_out, d_in", where).T.contiguous()
    kind = "skip_transcoder" if skip else "transcoder" if transcode else "sae"
    hookpoint = folder.name
    if transcode:  # reads the hooked module's input, predicts its output
        site_in, site_out = sites.module(hookpoint, "input"), sites.module(hookpoint, "output")
    else:
        site_in = site_out = sites.module(hookpoint, "output")
    extra = {"source_hook": hookpoint}
    if skip and not transcode:  # an autoencoder with a skip path still subtracts b_dec
        extra["subtract_b_dec"] = True
    found = _Found(where=folder, arch="topk", kind=kind, d_in=d_in, d_sae=d_sae, d_out=d_out, tensors=t,
                   k=_int_field(cfg, "k", folder) if "k" in cfg else 32, site=site_in, site_out=site_out,
                   extra=extra)
    return _finish(found, "sparsify", model, site)


def _pick_hookpoint(parent: Path, site: str | None, model: Model | None, sites: _Sites
                    ) -> tuple[Path, str | None]:
    """The hookpoint folder of a sparsify parent folder that `site` names; returns it and the
    site still to apply (None when `site` was a hookpoint name)."""
    subs = [q for q in sorted(parent.iterdir()) if q.is_dir() and _is_sparsify_dir(q)]
    names = ", ".join(q.name for q in subs)
    if not subs:
        raise ArtifactError(f"{parent} holds no sparsify coder (cfg.json + {WEIGHTS}, or sub-folders of those).")
    if site is None:
        if len(subs) == 1:
            return subs[0], None
        raise ArtifactError(f"{parent} holds sparsify coders for several hookpoints ({names}); "
                            "pass site= with one of them (or a site like 'layers.6.resid_post').")
    for q in subs:
        if q.name == site:
            return q, None
    try:
        wanted = _canonical_site(site, model)
    except LmscopeError:
        raise InputError(f"site={site!r} is neither a hookpoint of {parent} ({names}) nor a site like "
                         "'layers.6.resid_post'.") from None
    hits = []
    for q in subs:
        cfg = _read_json(q / "cfg.json")
        if sites.module(q.name, "input" if cfg.get("transcode") else "output") == wanted:
            hits.append(q)
    if len(hits) != 1:
        raise ArtifactError(f"{parent}: {'no' if not hits else 'more than one'} hookpoint reads {wanted}; "
                            f"its hookpoints are {names}. Pass one of them as site=.")
    return hits[0], site


# ---- Gemma Scope 2 -------------------------------------------------------------------------
_GS2_SITE_DIRS = {"resid_post": "resid_post", "attn_out": "attn_out", "mlp_out": "mlp_out"}


def load_gemmascope2(path: str | os.PathLike, *, model: Model | None = None, site: str | None = None) -> SparseCoder:
    """Load a Gemma Scope 2 folder: params.safetensors (+ config.json). See the module docstring."""
    folder = _folder(path)
    where = folder / "params.safetensors"
    cfg = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    if cfg.get("architecture", "jump_relu") != "jump_relu":
        raise ArtifactError(f"{folder}: Gemma Scope 2 architecture {cfg['architecture']!r} is not supported (jump_relu is).")
    ts = _read_tensors(where)
    if "w_enc" not in ts or ts["w_enc"].ndim != 2:
        raise ArtifactError(f"{where} has no 2-d tensor 'w_enc' [d_in, d_sae] (it has {', '.join(sorted(ts))}).")
    if "w_dec" in ts and ts["w_dec"].ndim != 2:
        raise ArtifactError(f"{where}: w_dec has shape {list(ts['w_dec'].shape)}; this is a cross-layer transcoder, "
                            "which SparseCoder (one input, one output site) cannot hold.")
    d_in, d_sae = (int(n) for n in ts["w_enc"].shape)
    d_out = int(ts["w_dec"].shape[1]) if "w_dec" in ts else d_in
    t = {"W_enc": _tensor(ts, "w_enc", (d_in, d_sae), "d_in, d_sae", where),
         "b_enc": _tensor(ts, "b_enc", (d_sae,), "d_sae", where),
         "W_dec": _tensor(ts, "w_dec", (d_sae, d_out), "d_sae, d_out", where),
         "b_dec": _tensor(ts, "b_dec", (d_out,), "d_out", where),
         "threshold": _tensor(ts, "threshold", (d_sae,), "d_sae", where)}
    skip = "affine_skip_connection" in ts
    if skip:  # x @ affine_skip_connection, as stored
        t["W_skip"] = _tensor(ts, "affine_skip_connection", (d_in, d_out), "d_in, d_out", where)
    parent = folder.parent.name
    transcoder = cfg.get("type") == "transcoder" or parent.startswith("transcoder") or skip or d_out != d_in
    kind = "skip_transcoder" if skip else "transcoder" if transcoder else "sae"

    sites = _Sites(model, "gemma3_text")
    point_in, point_out = cfg.get("hf_hook_point_in") or "", cfg.get("hf_hook_point_out") or ""
    site_in, site_out = sites.point(point_in), sites.point(point_out)
    layer = re.match(r"layer_(\d+)(?:_|$)", folder.name)
    if not point_in and layer:  # no config: the folder names say it
        if parent in _GS2_SITE_DIRS and not transcoder:
            site_in = site_out = f"layers.{layer.group(1)}.{_GS2_SITE_DIRS[parent]}"
        elif transcoder and parent.startswith("transcoder"):
            site_in, site_out = f"layers.{layer.group(1)}.mlp_in", f"layers.{layer.group(1)}.mlp_out"
    extra: dict = {"source_hook": point_in or f"{parent}/{folder.name}"}
    if kind == "sae":
        extra["subtract_b_dec"] = False
    found = _Found(where=folder, arch="jumprelu", kind=kind, d_in=d_in, d_sae=d_sae, d_out=d_out, tensors=t,
                   site=site_in, site_out=site_out, source_model=str(cfg.get("model_name") or ""), extra=extra)
    return _finish(found, "gemmascope2", model, site)


# ---- sites ---------------------------------------------------------------------------------


class _Sites:
    """HF module names -> sites, through the model's architecture table (or a family's)."""

    def __init__(self, model: Model | None, family: str) -> None:
        self.model, self.family = model, FAMILIES[family]

    def module(self, module: str, io: str) -> str:
        return self.model.module_site(module, io) if self.model is not None else module_site(module, io, self.family)

    def point(self, point: str) -> str:
        mod, _, io = point.rpartition(".")
        return self.module(mod, io) if io in ("input", "output") else ""


# ---- small readers -------------------------------------------------------------------------
def _folder(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise ArtifactError(f"No sparse coder at {p}: no such file or folder.")
    return p if p.is_dir() else p.parent


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_bytes())
    except FileNotFoundError:
        raise ArtifactError(f"{file} is missing.") from None
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{file} is not readable JSON ({e}).") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{file} holds a JSON {type(data).__name__}, expected an object.")
    return data


def _read_tensors(file: Path) -> dict[str, Tensor]:
    if not file.is_file():
        raise ArtifactError(f"{file} is missing.")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{file} is not a readable safetensors file ({e}).") from None


def _tensor(ts: dict[str, Tensor], key: str, shape: tuple[int, ...], dims: str, file: Path) -> Tensor:
    """ts[key] as float32, checked for presence, shape ([dims] = shape) and finiteness."""
    if key not in ts:
        raise ArtifactError(f"{file} has no tensor {key!r} (it has {', '.join(sorted(ts)) or 'none'}).")
    x = ts[key]
    if tuple(x.shape) != tuple(shape):
        raise ArtifactError(f"{file}: {key} has shape {list(x.shape)}, expected [{dims}] = {list(shape)}.")
    x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ArtifactError(f"{file}: {key} holds NaN or infinite values.")
    return x


def _int_field(cfg: dict, key: str, folder: Path) -> int:
    v = cfg.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ArtifactError(f"{folder}: the config needs a positive integer {key!r}, found {v!r}.")
    return v
