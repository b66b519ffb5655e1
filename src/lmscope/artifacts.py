"""Saved artifacts: a safetensors file of float32 CPU tensors plus a JSON sidecar.

    vec.safetensors        tensors (never pickled)
    vec.safetensors.json   {"kind", "model", "revision", "d_model", "site", "method", "created",
                            "lmscope_version", ...user metadata}

Both files are written to temporary names and renamed into place (atomic). `load_artifact`
validates the sidecar and, given a model, refuses an artifact made for another model or width.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import ArtifactError

if TYPE_CHECKING:
    from .models import Model

SIDECAR_SUFFIX = ".json"
_REQUIRED = ("kind", "model", "d_model", "created", "lmscope_version")


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_artifact(path: str | os.PathLike, tensors: dict[str, Tensor], *, kind: str, model: Model,
                  meta: dict | None = None) -> Path:
    """Write tensors (as float32 on CPU) and a sidecar bound to `model`. Returns the path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(path.suffix + ".safetensors") if path.suffix else path.with_suffix(".safetensors")
    from . import __version__

    clean = {}
    for k, t in tensors.items():
        t = t.detach().to("cpu", torch.float32).contiguous()
        if not torch.isfinite(t).all():
            raise ArtifactError(f"Tensor {k!r} has NaN or infinite values; refusing to save it.")
        clean[k] = t
    side = {
        "kind": kind, "model": model.name, "model_source": model.source, "revision": model.revision,
        "family": model.spec.family, "d_model": model.d_model, "n_layers": model.n_layers,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "lmscope_version": __version__,
        **(meta or {}),
    }
    _atomic_write(path, lambda tmp: save_file(clean, tmp, metadata={"kind": kind}))
    _atomic_write(Path(str(path) + SIDECAR_SUFFIX),
                  lambda tmp: Path(tmp).write_text(json.dumps(side, indent=1, default=str)))
    return path


def load_artifact(path: str | os.PathLike, *, kind: str | None = None, model: Model | None = None
                  ) -> tuple[dict[str, Tensor], dict]:
    """Read and validate an artifact. Raises ArtifactError when it is missing, corrupt, of
    another kind, or made for another model (name or width)."""
    path = Path(path)
    side_path = Path(str(path) + SIDECAR_SUFFIX)
    if not path.is_file():
        raise ArtifactError(f"No artifact at {path}; expected a .safetensors file written by lmscope.")
    if not side_path.is_file():
        raise ArtifactError(f"{path} has no sidecar {side_path.name}; it was not written by lmscope.")
    try:
        side = json.loads(side_path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"The sidecar {side_path} is not valid JSON ({e}).") from e
    missing = [k for k in _REQUIRED if k not in side]
    if missing:
        raise ArtifactError(f"The sidecar {side_path} lacks {', '.join(missing)}.")
    if kind is not None and side["kind"] != kind:
        raise ArtifactError(f"{path} is a {side['kind']!r} artifact, expected {kind!r}.")
    if model is not None:
        if side["d_model"] != model.d_model:
            raise ArtifactError(
                f"{path} was made for {side['model']} (d_model {side['d_model']}); {model.name} has d_model "
                f"{model.d_model}. Recompute it for {model.name}."
            )
        if side["model"] != model.name:
            raise ArtifactError(
                f"{path} was made for {side['model']!r}, not {model.name!r}. Recompute it for {model.name}."
            )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{path} is not a readable safetensors file ({e}).") from e
    return tensors, side
