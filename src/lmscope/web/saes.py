"""The SAEs tab's glue: the folders an SAE may be read from, the coders kept loaded, and one
library call per action of `POST /api/sae`.

    {"path": "out/layers.6.resid_post", "action": "card"}        what the SAE is: its spec, its saved
                                                                   card, the statistics' summary, the index
    {"path": ..., "action": "feature", "feature": 12}             `feature_page(...).to_dict()`
    {"path": ..., "action": "search", "query": "dog"}             `search_features(...).to_dict()`
    {"path": ..., "action": "steer", "feature": 12, "mode": "add", "value": 4}
                                                                   `steer(...).to_dict()`

`path` names a folder on the server's disk, so the studio reads one only inside its **SAE
folders** (the working directory it started in, plus `lmscope studio --sae-dir DIR`), with the
rule of vector files (`edits.VectorFolders`): a path that is missing, unreadable or outside them
gets one and the same message, so the API does not tell a caller which files exist on the
server. Feature statistics and the search index are written by `lmscope sae features` (a pass
over a corpus: minutes on a real model, too long to hold the studio's model), so "feature" and
"search" need them beside the SAE and say so when they are missing.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from lmscope.engine.errors import InputError, LmscopeError

from .guard import MAX_FOUND, Folders, short
from .studio import json_safe

#: Coders (and their statistics) kept loaded, most recently used first.
KEEP = 4
#: Prompts steered when a request gives none: the first neutral prompts.
DEFAULT_PROMPTS = 8


class SaeFolders(Folders):
    """The folders an SAE `path` may point into; relative paths start at the first."""

    what = "SAE"

    def accepts(self, p: Path) -> bool:
        return p.exists()

    def refusal(self, name: str) -> str:
        return (f"No SAE at {short(name, 120)} in the studio's SAE folders ({self}): give the path of a folder written "
                f"by `lmscope sae train` (or a SAELens, sparsify or Gemma Scope 2 folder) inside one of them; relative "
                f"paths start at {self.folders[0]}. `lmscope studio --sae-dir DIR` adds a folder.")

    def find(self) -> list[str]:
        """Folders below the SAE folders that hold a coder of a known format, as paths a
        request can give (relative to the first folder where they are inside it)."""
        from lmscope.saes.loading import detect_format

        found = []
        for here, files in self.walk():
            if any(f.endswith(".safetensors") for f in files):
                try:
                    detect_format(here)
                except LmscopeError:
                    continue
                found.append(self.shown(here))
                if len(found) >= MAX_FOUND:
                    break
        return found
        return found


def _folder(path: Path) -> Path:
    """Where the SAE's feature statistics and index live: its folder."""
    return path if path.is_dir() else path.parent


class Coders:
    """Loaded coders and their statistics, by path and file times, the last `KEEP` of them.
    Only the model thread uses it (coders are loaded and checked against the model there)."""

    def __init__(self, model) -> None:
        self.model = model
        self._coders: OrderedDict = OrderedDict()
        self._stats: OrderedDict = OrderedDict()

    def _get(self, cache: OrderedDict, key, make):
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        value = cache[key] = make()
        while len(cache) > KEEP:
            cache.popitem(last=False)
        return value

    def coder(self, path: Path, site: str | None, fmt: str | None):
        from lmscope.saes.loading import load_sae

        key = (str(path), site, fmt, _mtime(path), *(_mtime(p) for p in sorted(_folder(path).glob("*.safetensors"))))
        return self._get(self._coders, key, lambda: load_sae(path, model=self.model, site=site, format=fmt))

    def stats(self, path: Path, coder):
        """The saved `FeatureStats` beside the SAE (None when there are none)."""
        from lmscope.saes.features import FeatureStats, stats_file

        file = stats_file(_folder(path))
        if not file.is_file():
            return None
        key = (str(file), _mtime(file), id(coder))
        return self._get(self._stats, key, lambda: FeatureStats.load(file, model=self.model, coder=coder))


def _mtime(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except OSError:
        return 0


def _need_stats(stats, path: str):
    if stats is None:
        raise InputError(f"No feature statistics beside {short(path, 120)} (features.safetensors): compute them once "
                         f"with `lmscope sae features {path}` (a pass over a corpus), then reload.")
    return stats


def _feature(coder, i: int | None) -> int:
    n = coder.d_sae
    if i is None or not -n <= i < n:
        raise InputError(f"Feature {i} is out of range: this SAE has {n} latents (0..{n - 1}, or -{n}..-1).")
    return i % n


def card(coders: Coders, path: Path, req) -> dict:
    """What the SAE is: its size, its saved card and training record, the statistics' summary."""
    from lmscope.saes.feature_db import index_file

    coder = coders.coder(path, req.site, req.format)
    stats = coders.stats(path, coder)
    return json_safe({"path": req.path, "coder": repr(coder), "spec": coder.cfg.to_dict(), "d_in": coder.d_in,
                      "d_sae": coder.d_sae, "d_out": coder.d_out, "card": getattr(coder, "card", None),
                      "train": getattr(coder, "train_info", None),
                      "stats": stats.summary() if stats is not None else None,
                      "index": index_file(_folder(path)).is_file()})


def feature(coders: Coders, path: Path, req, atlas: Path | None) -> dict:
    """The latent's page: contexts with per-token activations, histogram, tokens, neighbours."""
    from lmscope.saes.feature_page import feature_page

    coder = coders.coder(path, req.site, req.format)
    stats = _need_stats(coders.stats(path, coder), req.path)
    page = feature_page(coders.model, coder, stats, _feature(coder, req.feature), atlas=atlas, k=req.k)
    return json_safe({"path": req.path, "d_sae": coder.d_sae, **page.to_dict()})


def search(path: Path, req) -> dict:
    """Latents whose top tokens match the query (reads only the index beside the SAE)."""
    from lmscope.saes.feature_db import index_file, search_features

    if not index_file(_folder(path)).is_file():
        raise InputError(f"No search index beside {short(req.path, 120)} (features.sqlite): build it once with "
                         f"`lmscope sae features {req.path}`.")
    hits = search_features(_folder(path), req.query, limit=req.limit).to_dict()
    return json_safe({**hits, "path": req.path})  # the request's path, not the server's


def steer(coders: Coders, path: Path, req) -> dict:
    """Steering with the latent next to the baseline and a random latent (`saes.steering.steer`)."""
    from lmscope.datasets.shipped import neutral_prompts
    from lmscope.saes.steering import steer as steer_with

    coder = coders.coder(path, req.site, req.format)
    rep = steer_with(coders.model, coder, _feature(coder, req.feature), mode=req.mode, value=req.value,
                     prompts=req.prompts or neutral_prompts(DEFAULT_PROMPTS), keywords=req.keywords,
                     max_new_tokens=req.max_new_tokens, generate=req.generate)
    return json_safe({"path": req.path, **rep.to_dict()})
