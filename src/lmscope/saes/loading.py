"""Reading and writing sparse coders: lmscope's own format, and one entry point for all formats.

    save_coder(coder, "out/l6", model=model, card={...})   # out/l6/sae.safetensors + its .json sidecar
    coder = load_coder("out/l6", model=model)               # coder.card, coder.train_info: the saved dicts
    coder = load_sae("somewhere/layer_6", model=model)      # any format below, told apart by its files

    format       files in the folder (pointing at one of them works too)
    lmscope      sae.safetensors + sae.safetensors.json     (`engine.artifacts`: safetensors + sidecar)
    saelens      cfg.json + sae_weights.safetensors          (SAELens v5 and v6)
    sparsify     cfg.json + sae.safetensors                  (EleutherAI sparsify; one folder per
                                                             hookpoint, or their parent with site=)
    gemmascope2  params.safetensors [+ config.json]          (Gemma Scope 2, on Gemma 3)

lmscope's sidecar holds the spec (`CoderSpec.to_dict()`), the card and the training record
beside the usual artifact fields; a coder saved with `model=` is refused for another model, one
saved without (model "") loads with any model of the right width. Every loaded coder carries
`coder.card` and `coder.train_info` (None for foreign formats). The foreign readers, and how each
format's math maps onto `SparseCoder`, are in `lmscope.saes.foreign`.

`site=` names where the coder reads, in lmscope's grammar ("layers.6.resid_post"): it sets a
site the files do not give, and overrides one they give (with a warning). Given `model=`, d_in
and d_out must equal the model's width at the coder's sites.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lmscope.engine.artifacts import SIDECAR_SUFFIX, load_artifact, save_artifact
from lmscope.engine.errors import ArtifactError, InputError, LmscopeError
from lmscope.engine.sites import GLOBAL_KINDS
from lmscope.engine.sites import parse as parse_site
from lmscope.saes.coder import CoderSpec, SparseCoder

if TYPE_CHECKING:
    from lmscope.engine.model import Model

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("lmscope", "saelens", "sparsify", "gemmascope2")
ARTIFACT_KIND = "sae"
WEIGHTS = "sae.safetensors"
_NEEDS = {
    "lmscope": f"{WEIGHTS} + {WEIGHTS}{SIDECAR_SUFFIX}",
    "saelens": "cfg.json + sae_weights.safetensors",
    "sparsify": f"cfg.json + {WEIGHTS} (or sub-folders of those, one per hookpoint)",
    "gemmascope2": "params.safetensors (+ config.json)",
}


# ---- lmscope's own format ----------------------------------------------------------------
@dataclass(frozen=True)
class _NoModel:
    """The model fields `save_artifact` records for a coder saved without a model: all empty."""

    name: str = ""
    source: str = ""
    revision: str | None = None
    family: str = ""
    d_model: int | None = None
    n_layers: int | None = None


def save_coder(coder: SparseCoder, path: str | os.PathLike, *, model: Model | None = None,
               card: dict | None = None, train: dict | None = None) -> Path:
    """Write `coder` into the folder `path`: `sae.safetensors` and its JSON sidecar.

    Both files are written atomically (temporary name, then rename). The sidecar holds the
    spec, the card and the training record beside the usual artifact fields.

    Args:
        coder: The coder to save (float32 copies of its tensors are written).
        path: Folder to write (created if missing).
        model: The model it belongs to; loading it with another model is then an error.
            None records model "" (any model of the right width may load it).
        card: JSON-able description (name, intended use...), returned as `coder.card`.
        train: JSON-able training record, returned as `coder.train_info`.

    Returns:
        The folder.
    """
    if not isinstance(coder, SparseCoder):
        raise InputError(f"save_coder saves a SparseCoder, got {type(coder).__name__}.")
    for name, value in (("card", card), ("train", train)):
        if value is not None and not isinstance(value, dict):
            raise InputError(f"{name} must be a dict (or None), got {type(value).__name__}.")
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file; save_coder writes a folder ({WEIGHTS} + its sidecar). "
                         "Pass a folder path.")
    spec = coder.cfg
    if model is not None:
        if spec.model and spec.model != model.name:
            raise InputError(f"This coder was made for {spec.model!r}, not {model.name!r}; "
                             "save it with that model or with model=None.")
        spec = replace(spec, model=model.name)
        _check_widths(spec, model, f"The {spec.kind}", InputError)
    meta = {"site": spec.site, "spec": spec.to_dict(), "card": card, "train": train}
    save_artifact(folder / WEIGHTS, coder.tensors(), kind=ARTIFACT_KIND,
                  model=model if model is not None else _NoModel(), meta=meta)  # type: ignore[arg-type]
    return folder


def load_coder(path: str | os.PathLike, *, model: Model | None = None) -> SparseCoder:
    """Read a coder written by `save_coder`.

    The returned coder carries the saved dicts as `coder.card` and `coder.train_info`
    (None when not saved).

    Args:
        path: The folder (or its `sae.safetensors`).
        model: Check it against this model: a coder saved for another model, or whose widths
            do not match the model at its sites, is an ArtifactError.
    """
    file = _native_file(path)
    # a coder saved without a model (model "") may be loaded with any model of the right width
    bound = model if model is not None and _sidecar_model(file) != "" else None
    tensors, side = load_artifact(file, kind=ARTIFACT_KIND, model=bound)
    raw = side.get("spec")
    if not isinstance(raw, dict):
        raise ArtifactError(f"The sidecar of {file} has no 'spec' object; it was not written by save_coder.")
    try:
        spec = CoderSpec.from_dict(raw)
    except (InputError, TypeError) as e:
        raise ArtifactError(f"The spec in the sidecar of {file} is invalid: {e}") from None
    coder = SparseCoder(spec)
    expected = {k: tuple(v.shape) for k, v in coder.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if found != expected:
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        shapes = [f"{k} is {list(found[k])}, expected {list(v)}" for k, v in expected.items()
                  if k in found and found[k] != v]
        what = "; ".join(p for p in (missing and f"missing {', '.join(missing)}",
                                      extra and f"unexpected {', '.join(extra)}", *shapes) if p)
        raise ArtifactError(f"{file} does not match its spec ({spec.kind} {spec.arch}, "
                            f"{spec.d_in}->{spec.d_sae}->{spec.d_out}): {what}. It is corrupt or was "
                            "edited; save the coder again.")
    coder.load_state_dict({k: t.to(torch.float32) for k, t in tensors.items()})
    if model is not None:
        if not spec.model:
            coder.cfg = spec = replace(spec, model=model.name)
        _check_widths(spec, model, str(file), ArtifactError)
    coder.card, coder.train_info = side.get("card"), side.get("train")
    return coder


def _native_file(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        return p / WEIGHTS
    if p.name.endswith(".safetensors" + SIDECAR_SUFFIX):
        return p.with_name(p.name[: -len(SIDECAR_SUFFIX)])
    return p


def _sidecar_model(file: Path) -> str | None:
    """The sidecar's model name, or None when it cannot be read (load_artifact then says why)."""
    try:
        side = json.loads(Path(str(file) + SIDECAR_SUFFIX).read_bytes())
    except (OSError, ValueError):
        return None
    return side.get("model") if isinstance(side, dict) else None


# ---- the entry point ---------------------------------------------------------------------
def load_sae(path: str | os.PathLike, *, model: Model | None = None, site: str | None = None,
             format: str | None = None) -> SparseCoder:
    """Load a sparse coder of any supported format (detected from the files unless given).

    Args:
        path: A folder holding one coder, or one of its files; for sparsify also the parent
            folder of several hookpoints (then `site` picks one).
        model: Check d_in / d_out against the model's width at the coder's sites and record
            its name in `spec.model` (lmscope files made for another model are refused).
        site: Where the coder reads, in lmscope's grammar ("layers.6.resid_post"), when the
            files do not say it or say it wrongly; for a sparsify parent folder also a
            hookpoint name ("layers.6").
        format: One of "lmscope", "saelens", "sparsify", "gemmascope2"; None detects it.
    """
    if format is not None and format not in FORMATS:
        raise InputError(f"Unknown SAE format {format!r}; expected one of {', '.join(FORMATS)} (or None to detect it).")
    fmt = format or detect_format(path)
    if fmt == "lmscope":
        coder = load_coder(path, model=model)
        if site is not None:
            coder.cfg = _override_site(coder.cfg, site, model, str(path))
            if model is not None:
                _check_widths(coder.cfg, model, str(path), ArtifactError)
        return coder
    from lmscope.saes import foreign  # foreign imports this module's helpers

    reader = {"saelens": foreign.load_saelens, "sparsify": foreign.load_sparsify,
              "gemmascope2": foreign.load_gemmascope2}[fmt]
    return reader(path, model=model, site=site)


def detect_format(path: str | os.PathLike) -> str:
    """Which format a folder (or a file in it) holds, from the files present."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ArtifactError(f"No sparse coder at {p}: no such file or folder.")
    if p.is_file() and Path(str(p) + SIDECAR_SUFFIX).is_file():
        return "lmscope"
    folder = p if p.is_dir() else p.parent
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        raise ArtifactError(f"Cannot list {folder}: {e.strerror or e}.") from None
    names = {q.name for q in entries if q.is_file()}
    subs = [q for q in entries if q.is_dir()]
    if WEIGHTS in names and WEIGHTS + SIDECAR_SUFFIX in names:
        return "lmscope"
    if "cfg.json" in names and "sae_weights.safetensors" in names:
        return "saelens"
    if "cfg.json" in names and WEIGHTS in names:
        return "sparsify"
    if "params.safetensors" in names:
        return "gemmascope2"
    if any(_is_sparsify_dir(q) for q in subs):
        return "sparsify"
    shown = sorted(names)[:12] + [q.name + "/" for q in subs[:12]]
    hints = ""
    if any(n.endswith(".npz") for n in names):
        hints += " params.npz is Gemma Scope 1 (numpy), which lmscope does not read."
    if any(n.endswith((".pt", ".pth", ".bin", ".pkl")) for n in names):
        hints += " Pickled checkpoints (.pt/.pth/.bin/.pkl) are never loaded; convert them to safetensors."
    if any((q / "params.safetensors").is_file() for q in subs):
        hints += " Its sub-folders hold Gemma Scope 2 coders: point at one of them."
    needs = "; ".join(f"{k}: {v}" for k, v in _NEEDS.items())
    raise ArtifactError(f"Cannot tell which sparse-coder format {folder} holds. Found: "
                        f"{', '.join(shown) or 'nothing'}. Each format needs — {needs}.{hints} "
                        "Point at the folder of one coder, or pass format=.")


def _is_sparsify_dir(folder: Path) -> bool:
    return (folder / "cfg.json").is_file() and (folder / WEIGHTS).is_file() and not (
        folder / (WEIGHTS + SIDECAR_SUFFIX)).is_file()


# ---- sites and widths ---------------------------------------------------------------------
def _canonical_site(site: str, model: Model | None) -> str:
    """A user's site= as a canonical single site name (InputError when it is not one)."""
    try:
        s = model.site(site) if model is not None else parse_site(site)[0]
    except LmscopeError as e:
        raise InputError(f"site={site!r} is not a site: {e}") from None
    if s.units is not None or (s.layer is None and s.kind not in GLOBAL_KINDS):
        raise InputError(f"site={site!r} must name one whole site, e.g. 'layers.6.resid_post'.")
    if s.layer is not None and s.layer < 0:
        raise InputError(f"site={site!r} counts layers from the end; pass model= (or a layer >= 0).")
    return s.name


def _override_site(spec: CoderSpec, site: str, model: Model | None, where: str) -> CoderSpec:
    new = _canonical_site(site, model)
    if spec.site and spec.site != new:
        log.warning("%s says it reads %s; using site=%s as given.", where, spec.site, new)
    return replace(spec, site=new, site_out=new if spec.kind == "sae" else spec.site_out)


def _check_widths(spec: CoderSpec, model: Model, where: str, error: type[LmscopeError]) -> None:
    """d_in / d_out must equal the model's width at the coder's (known) sites."""
    for role, site, width in (("reads", spec.site, spec.d_in), ("writes", spec.site_out, spec.d_out)):
        if not site:
            continue
        try:
            width_there = math.prod(model.feature_shape(model.site(site)))
        except LmscopeError as e:
            raise error(f"{where} {role} {site}, which {model.name} does not have: {e}") from None
        if width_there != width:
            made = f" (made for {spec.model})" if spec.model and spec.model != model.name else ""
            raise error(f"{where}{made} {role} {width}-wide activations at {site}, but {model.name} is "
                        f"{width_there} wide there. Use the model it was trained on.")
