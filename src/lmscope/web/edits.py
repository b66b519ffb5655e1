"""Edits of the Generate tab -> lmscope interventions, and the vector files they may read.

A `vector_file` is a path on the server's disk, so the studio reads one only inside its vector
folders (the working directory it started in, plus `lmscope studio --vectors-dir DIR`). A path
that is missing, unreadable, too long or outside those folders gets one and the same message:
the API does not tell a caller which files exist on the server. Inside the folders, a file
that is there but wrong (a sidecar that is not a JSON object, another model's vector) gets
the specific message, since those are the folders the user chose to expose.
"""

from __future__ import annotations

import os
from pathlib import Path

from lmscope.engine.errors import ArtifactError, InputError

from .bodies import EditSpec
from .guard import MAX_SIDECAR_BYTES, Folders, short

#: A vector artifact holds at most n_layers x d_model float32 values; anything far larger is
#: not one, and reading it whole would hold the model's queue.
MAX_VECTOR_FILE_BYTES = 256 * 2**20


class VectorFolders(Folders):
    """The folders `vector_file` paths may point into; relative paths start at the first."""

    what = "vector"

    def accepts(self, p: Path) -> bool:
        return p.is_file() and Path(f"{p}.json").is_file()

    def refusal(self, name: str) -> str:
        return (f"No vector file {short(name, 120)} in the studio's vector folders ({self}): give the path of a "
                f".safetensors file written by lmscope (with its .json sidecar) inside one of them; relative paths "
                f"start at {self.folders[0]}. `lmscope studio --vectors-dir DIR` adds a folder.")


class VectorTargets(VectorFolders):
    """Where a vector may be saved: a `.safetensors` name in an existing folder inside the vector folders."""

    def accepts(self, p: Path) -> bool:
        return p.suffix == ".safetensors" and p.parent.is_dir() and not p.is_dir()

    def refusal(self, name: str) -> str:
        return (f"Cannot save a vector as {short(name, 120)}: give a name ending in .safetensors in an existing "
                f"folder inside the studio's vector folders ({self}); relative paths start at {self.folders[0]}. "
                "`lmscope studio --vectors-dir DIR` adds a folder.")


def check_sizes(path: Path) -> None:
    """The studio's own limits before anything is read: a vector file or sidecar this large is
    not an lmscope vector (their contents are validated by `Vector.load`)."""
    side = Path(f"{path}.json")
    try:
        if path.stat().st_size > MAX_VECTOR_FILE_BYTES:
            raise ArtifactError(f"{path.name} is over {MAX_VECTOR_FILE_BYTES // 2**20} MiB: not a vector artifact.")
        if side.is_file() and side.stat().st_size > MAX_SIDECAR_BYTES:
            raise ArtifactError(f"The sidecar {side.name} is over 1 MiB: not an lmscope sidecar.")
    except OSError as e:
        raise ArtifactError(f"{path.name} or its sidecar cannot be read ({e.strerror}).") from e


def artifact_vector(model, folders: VectorFolders, name: str, layer: int):
    """The [d_model] vector for `layer` of a saved vector (`Vector.load`, validated against the model)."""
    from lmscope.vectors import Vector

    path = folders.resolve(name)
    check_sizes(path)
    try:
        vec = Vector.load(path, model=model)
    except OSError as e:
        raise ArtifactError(f"{path.name} cannot be read ({e.strerror}).") from e
    except ArtifactError as e:  # name the file, never the server's folders
        raise ArtifactError(str(e).replace(f"{path.parent}{os.sep}", "")) from None
    if layer % model.n_layers not in vec.layers:
        held = ", ".join(f"layers.{x}" for x in vec.layers)
        raise InputError(f"{path.name} has no vector for layer {layer} (it holds: {held}); "
                         "pick a site at one of those layers.")
    return vec[layer % model.n_layers]


def build_edits(model, specs: list[EditSpec], folders: VectorFolders) -> list:
    """`EditSpec`s -> lmscope interventions. Sites are resolved first, so a bad layer, unit or
    name is a SiteError naming the valid range before anything runs."""
    from lmscope.engine.interventions import Add, Set, Zero

    edits = []
    for i, e in enumerate(specs):
        sites = model.sites(e.site)  # validates; "*" may name several
        if any(s.kind == "logits" for s in sites):
            # the studio's edits are about activations; editing logits is the library's business
            raise InputError(f"Edit {i + 1}: the studio edits activations, not logits; pick a site such as "
                             "final_norm or layers.L.resid_post.")
        if e.type == "zero":
            edits.append(Zero(site=e.site))
        elif e.type == "clamp":
            if e.value is None:
                raise InputError(f"Edit {i + 1} (clamp {e.site}) needs a value, e.g. 8.")
            edits.append(Set(site=e.site, value=e.value))
        elif e.vector_file:
            if len(sites) != 1:
                raise InputError(f"Edit {i + 1}: a vector file is added at one site; {e.site!r} names {len(sites)}.")
            vec = artifact_vector(model, folders, e.vector_file, sites[0].layer)
            edits.append(Add(site=e.site, vector=vec, scale=e.scale))
        elif e.value is not None:
            edits.append(Add(site=e.site, vector=e.value, scale=e.scale))
        else:
            raise InputError(f"Edit {i + 1} (add at {e.site}) needs a vector_file (a saved vector) or a value.")
    return edits
