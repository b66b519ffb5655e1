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
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from lmscope.engine.errors import ArtifactError, InputError

if TYPE_CHECKING:
    from lmscope.engine.model import Model

SIDECAR_SUFFIX = ".json"
_REQUIRED = ("kind", "model", "d_model", "created", "lmscope_version")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def sweep_stale_temps(path: Path) -> None:
    """Remove `.NAME.tmp-<pid>-*` leftovers of `path` whose writer process is gone (killed
    mid-write); a live writer's file is left alone."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.tmp-(\d+)(-.*)?$")
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for p in entries:
        m = pattern.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside `path` (same filesystem, so `os.replace` is atomic),
    after sweeping leftovers of killed writers."""
    sweep_stale_temps(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def check_writable(path: str | os.PathLike, *, what: str = "output") -> Path:
    """Fail before any work when `path` cannot be written: its folder cannot be created or is
    not writable, or `path` is a directory. Returns the path."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"The {what} path {p} is a directory; pass a file name.")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"Cannot write the {what} {p}: {parent} is not a directory. Pass another --out.")
    probe = parent / f".lmscope-probe.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:  # a real write: permission bits say nothing for root, /proc or a read-only mount
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise InputError(f"Cannot write the {what} {p}: {parent} is not writable ({e.strerror or e}). "
                         "Pass another --out.") from None
    if p.exists() and not os.access(p, os.W_OK):
        raise InputError(f"Cannot write the {what} {p}: the file is read-only. Pass another --out.")
    return p


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call `write(tmp)` on a temporary path beside `path`, then rename it into place: readers
    see the old file or the new one, never half of one. OSError becomes InputError naming
    `path`; the temporary file never stays behind."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
    except OSError as e:
        raise InputError(f"Cannot write {path}: {e.strerror or e}.") from None
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InputError(f"Cannot write {path}: {e.strerror or e}.") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_artifact(path: str | os.PathLike, tensors: dict[str, Tensor], *, kind: str, model: Model,
                  meta: dict | None = None) -> Path:
    """Write tensors (as float32 on CPU) and a sidecar bound to `model`. Returns the path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(path.suffix + ".safetensors") if path.suffix else path.with_suffix(".safetensors")
    from lmscope import __version__

    clean, seen = {}, set()
    for k, t in tensors.items():
        if not isinstance(k, str) or not isinstance(t, Tensor):
            raise ArtifactError(f"Artifacts hold named tensors; entry {k!r} is a {type(t).__name__}.")
        t = t.detach().to("cpu", torch.float32).contiguous()
        if t.untyped_storage().data_ptr() in seen:  # safetensors refuses shared memory: store a copy
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        if not torch.isfinite(t).all():
            raise ArtifactError(f"Tensor {k!r} has NaN or infinite values; refusing to save it.")
        clean[k] = t
    side = {
        "kind": kind, "model": model.name, "model_source": model.source, "revision": model.revision,
        "family": model.family, "d_model": model.d_model, "n_layers": model.n_layers,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "lmscope_version": __version__,
        **(meta or {}),
    }
    atomic_write(path, lambda tmp: save_file(clean, str(tmp), metadata={"kind": kind}))
    atomic_write(Path(str(path) + SIDECAR_SUFFIX),
                  lambda tmp: Path(tmp).write_text(json.dumps(side, indent=1, default=str)))
    return path


def load_artifact(path: str | os.PathLike, *, kind: str | None = None, model: Model | None = None
                  ) -> tuple[dict[str, Tensor], dict]:
    """Read and validate an artifact. Raises ArtifactError when it is missing, corrupt, of
    another kind, or made for another model (name or width)."""
    path = Path(path)
    side_path = Path(str(path) + SIDECAR_SUFFIX)
    try:
        found, side_found = path.is_file(), side_path.is_file()
    except OSError as e:  # e.g. a name too long for the filesystem
        raise ArtifactError(f"Cannot open an artifact at {str(path)[:120]}: {e.strerror or e}.") from None
    if not found:
        raise ArtifactError(f"No artifact at {path}; expected a .safetensors file written by lmscope.")
    if not side_found:
        raise ArtifactError(f"{path} has no sidecar {side_path.name}; it was not written by lmscope.")
    try:
        side = json.loads(side_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ArtifactError(f"The sidecar {side_path} is not UTF-8 text (byte {e.start}); it was not written by "
                            "lmscope or is corrupt.") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"The sidecar {side_path} is not valid JSON ({e}).") from None
    except OSError as e:
        raise ArtifactError(f"Cannot read the sidecar {side_path}: {e.strerror or e}.") from None
    if not isinstance(side, dict):
        found = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
            type(side), "number")
        raise ArtifactError(f"The sidecar {side_path} holds a JSON {found}, not an object with kind, model, "
                            "d_model...; it was not written by lmscope.")
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
