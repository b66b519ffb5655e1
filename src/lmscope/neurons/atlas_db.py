"""The neuron atlas on disk: one SQLite file with full-text search (FTS5).

Tables:
    meta(key, value)            model name/source/family, d_model, n_layers, d_mlp, d_vocab, k,
                                kinds, layers, lmscope version, weight sample (JSON values)
    neurons(layer, neuron, kind, rank, token_id, token, norm, score)
                                a view, one row per kept token; `norm` is the normalised text.
                                Stored compactly as neuron_tokens (ids, scores, kind codes from
                                `kinds`) joined with tokens(token_id, token, norm)
    neuron_fts(tokens)          FTS5, contentless: the normalised top tokens of one (layer, neuron,
                                kind), space separated; rowid = (layer * d_mlp + neuron) * 4 + code

The file is built under a temporary name in the same folder and moved into place with
`os.replace`, so a reader never sees half an atlas. Opening an atlas with a model checks the
model's name, widths and a sample of its weights: an atlas of another model is an ArtifactError.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lmscope.engine.errors import ArtifactError, InputError

if TYPE_CHECKING:
    from torch import Tensor

    from lmscope.engine.model import Model
    from lmscope.neurons.atlas import NeuronTopK

FORMAT_VERSION = 2
_DIMS = ("d_model", "n_layers", "d_mlp", "d_vocab")
_STRIP = " \t\n\r▁Ġ"  # leading spaces and the SentencePiece / byte-BPE space markers
TOP_KINDS = ("in_gate", "in_up", "out")  # what a search covers by default (not out_bottom)


def default_path(lm_or_name) -> Path:
    """`cache_dir()/atlas/<model name>.sqlite`."""
    from lmscope.engine.cache import cache_dir

    name = lm_or_name if isinstance(lm_or_name, str) else lm_or_name.name
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", name)
    return cache_dir() / "atlas" / f"{safe}.sqlite"


def normalize_token(text: str) -> str:
    """' Dog' / '▁Dog' / 'ĠDog' -> 'dog': strip spaces and space markers, lowercase."""
    return text.strip(_STRIP).lower()


def query_variants(word: str) -> list[str]:
    """A word and its simple plural/singular variants: dog -> dog, dogs, doges; puppies -> puppy."""
    w = normalize_token(word)
    if not w:
        return []
    out = [w, w + "s", w + "es"]
    if w.endswith("ies") and len(w) > 3:
        out.append(w[:-3] + "y")
    elif w.endswith("es") and len(w) > 2:
        out += [w[:-2], w[:-1]]
    elif w.endswith("s") and len(w) > 1:
        out.append(w[:-1])
    if w.endswith("y") and len(w) > 1:
        out.append(w[:-1] + "ies")
    return list(dict.fromkeys(out))


def weight_sample(model: Model) -> list[float]:
    """A few weights from every layer and the unembedding, to tell models that share a name apart."""
    import torch

    vals = [model.weights.W_U[:8, :4].reshape(-1)]
    for L in range(model.n_layers):
        vals += [model.weights.W_out(L)[:2, :4].reshape(-1), model.weights.W_in(L, "up")[:2, :4].reshape(-1)]
    return [round(float(x), 7) for x in torch.cat(vals).detach().float().cpu()]


def _model_meta(model: Model) -> dict:
    from lmscope import __version__

    return {"model": model.name, "source": model.source, "family": model.family, "d_model": model.d_model,
            "n_layers": model.n_layers, "d_mlp": model.d_mlp, "d_vocab": model.d_vocab, "lmscope_version": __version__,
            "format_version": FORMAT_VERSION, "weights_sample": weight_sample(model)}


def _decode_ids(model: Model, ids: Iterable[int]) -> dict[int, str]:
    ids = sorted(set(ids))
    return dict(zip(ids, model.tokenizer.batch_decode([[i] for i in ids]), strict=True))


KIND_CODES = {"in_gate": 0, "in_up": 1, "out": 2, "out_bottom": 3}
_SCHEMA = """
PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE kinds(code INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE tokens(token_id INTEGER PRIMARY KEY, token TEXT NOT NULL, norm TEXT NOT NULL);
CREATE TABLE neuron_tokens(id INTEGER PRIMARY KEY, token_id INTEGER NOT NULL, score REAL NOT NULL);
CREATE VIRTUAL TABLE neuron_fts USING fts5(tokens, content='', tokenize='unicode61 remove_diacritics 0');
"""
# id of a row: key(layer, neuron, kind) * k + rank, with key = (layer * d_mlp + neuron) * 4 + kind code
_VIEW = """
CREATE VIEW neurons AS SELECT n.id / {per_layer} AS layer, (n.id / {per_neuron}) % {d_mlp} AS neuron,
    k.name AS kind, n.id % {k} AS rank, n.token_id, t.token, t.norm, n.score
    FROM neuron_tokens n JOIN kinds k ON k.code = (n.id / {k}) % 4 JOIN tokens t ON t.token_id = n.token_id;
"""


def _key(layer: int, neuron: int, kind: str, d_mlp: int) -> int:
    """Row key of (layer, neuron, kind): the FTS rowid, and neuron_tokens.id // k."""
    return (layer * d_mlp + neuron) * 4 + KIND_CODES[kind]


def write_atlas(path: str | Path, model: Model, table: NeuronTopK) -> Path:
    """Write a decoded table as an SQLite atlas at `path`, atomically.

    Storage: `neuron_tokens(id, token_id, score)` with id = key * k + rank and key =
    (layer * d_mlp + neuron) * 4 + kind code (the FTS rowid), `tokens` the text of every token
    that occurs; the `neurons` view unpacks them into
    (layer, neuron, kind, rank, token_id, token, norm, score).
    """
    import torch

    from lmscope.engine.artifacts import temp_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    t0 = time.perf_counter()
    kinds = sorted(table.kinds, key=KIND_CODES.get)  # key order: rows go in as appends
    d_mlp, k = model.d_mlp, table.ids[kinds[0]].shape[-1]
    codes = torch.tensor([KIND_CODES[kd] for kd in kinds])
    try:
        con = sqlite3.connect(tmp)
        try:
            con.executescript(_SCHEMA + _VIEW.format(per_layer=d_mlp * 4 * k, per_neuron=4 * k, d_mlp=d_mlp, k=k))
            con.executemany("INSERT INTO kinds VALUES (?,?)", [(c, kd) for kd, c in KIND_CODES.items()])
            text = _decode_ids(model, torch.cat([t.unique() for t in table.ids.values()]).tolist())
            norm = {i: normalize_token(s) for i, s in text.items()}
            con.executemany("INSERT INTO tokens VALUES (?,?,?)", [(i, text[i], norm[i]) for i in sorted(text)])
            for li, layer in enumerate(table.layers):
                ids = torch.stack([table.ids[kd][li] for kd in kinds], 1)  # [d_mlp, kinds, k]
                sc = torch.stack([table.scores[kd][li] for kd in kinds], 1).double()
                keys = (layer * d_mlp + torch.arange(d_mlp)[:, None]) * 4 + codes  # [d_mlp, kinds]
                row_id = keys[..., None] * k + torch.arange(k)  # [d_mlp, kinds, k]
                con.executemany("INSERT INTO neuron_tokens VALUES (?,?,?)",
                                zip(row_id.flatten().tolist(), ids.flatten().tolist(), sc.flatten().tolist()))
                docs = [" ".join(filter(None, map(norm.__getitem__, tids))) for tids in ids.flatten(0, 1).tolist()]
                con.executemany("INSERT INTO neuron_fts(rowid, tokens) VALUES (?,?)",
                                zip(keys.flatten().tolist(), docs))
            meta = {**_model_meta(model), "k": k, "kinds": kinds, "layers": list(table.layers),
                    "decode_seconds": table.seconds, "flops": table.flops, "search": table.search,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            meta["write_seconds"] = time.perf_counter() - t0
            con.executemany("INSERT INTO meta VALUES (?,?)", [(key, json.dumps(v)) for key, v in meta.items()])
            con.commit()
        finally:
            con.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class Atlas:
    """An open atlas file. Use `Atlas.open(path, model=model)`; close it (or use `with`)."""

    def __init__(self, path: Path, con: sqlite3.Connection, meta: dict) -> None:
        self.path = path
        self.meta = meta
        self._con = con

    @classmethod
    def open(cls, path: str | Path, *, model: Model | None = None) -> Atlas:
        """Open and validate; with `model`, refuse an atlas built for another model."""
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"No atlas at {path}; build one with `lmscope atlas build MODEL --out {path}`.")
        try:
            con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            meta = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta")}
        except sqlite3.DatabaseError as e:
            raise ArtifactError(f"{path} is not an lmscope atlas (SQLite says: {e}).") from e
        missing = [k for k in ("model", *_DIMS, "kinds", "layers", "format_version") if k not in meta]
        if missing:
            con.close()
            raise ArtifactError(f"{path} lacks atlas metadata {', '.join(missing)}; rebuild it.")
        if meta["format_version"] != FORMAT_VERSION:
            con.close()
            raise ArtifactError(f"{path} has atlas format {meta['format_version']}, this lmscope reads "
                                f"{FORMAT_VERSION}; rebuild it with `lmscope atlas build`.")
        atlas = cls(path, con, meta)
        if model is not None:
            try:
                atlas.check_model(model)
            except ArtifactError:
                con.close()
                raise
        return atlas

    def check_model(self, model: Model) -> None:
        import torch

        m = self.meta
        fix = f"Rebuild it: `lmscope atlas build {model.name} --out {self.path}`."
        if m["model"] != model.name:
            raise ArtifactError(f"The atlas {self.path} was built for {m['model']!r}, not {model.name!r}. {fix}")
        for k in _DIMS:
            if m[k] != getattr(model, k):
                raise ArtifactError(f"The atlas {self.path} has {k}={m[k]} but {model.name} has "
                                    f"{getattr(model, k)}. {fix}")
        got = torch.tensor(weight_sample(model))
        want = torch.tensor(m.get("weights_sample", []))
        # relative 1%: tolerates bf16/fp16 reloads of the same weights, not other weights
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-2, atol=1e-6):
            raise ArtifactError(f"The atlas {self.path} was built from other weights than the loaded "
                                f"{model.name} (same name, different values). {fix}")

    def dims(self) -> dict:
        return {"name": self.meta["model"], **{k: self.meta[k] for k in _DIMS}}

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Atlas:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.meta
        return f"Atlas({m['model']!r}, layers={len(m['layers'])}, kinds={m['kinds']}, k={m.get('k')}, path={self.path})"

    # ---- queries ----------------------------------------------------------------------------
    def _kinds(self, kind: str) -> list[str]:
        groups = {"any": TOP_KINDS, "in": ("in_gate", "in_up"), "all": tuple(self.meta["kinds"])}
        kinds = groups.get(kind, (kind,))
        bad = [k for k in kinds if k not in ("in_gate", "in_up", "out", "out_bottom")]
        if bad:
            raise InputError(f"Unknown kind {kind!r}; use any, in, out, out_bottom, in_gate, in_up or all.")
        return [k for k in kinds if k in self.meta["kinds"]]

    def search(self, query: str, *, kind: str = "any", limit: int = 20) -> list[dict]:
        """Neurons whose top tokens match a word (or any of several space-separated words),
        with simple plural/singular variants. Best first: the matching token's rank, then the
        number of matching tokens, then the score.

        Returns:
            [{"layer", "neuron", "kind", "rank", "token", "score", "n_match", "top": [tokens]}].
        """
        variants = [v for w in query.split() for v in query_variants(w)]
        if not variants:
            raise InputError(f"Search query {query!r} has no words; pass e.g. 'dog'.")
        kinds = self._kinds(kind)
        if not kinds:
            return []
        fts = " OR ".join('"' + v.replace('"', '""') + '"' for v in variants)
        qv = ",".join("?" * len(variants))
        qk = ",".join("?" * len(kinds))
        d, k = self.meta["d_mlp"], self.meta["k"]
        # FTS rowid = key of (layer, neuron, kind); its rows are ids key * k .. key * k + k - 1
        sql = (
            f"SELECT f.r, MIN(n.id % {k}) AS best, COUNT(*) AS hits,"
            " MAX(CASE WHEN f.r % 4 = 3 THEN -n.score ELSE n.score END) AS strength"
            " FROM (SELECT rowid AS r FROM neuron_fts WHERE neuron_fts MATCH ?) f"
            f" JOIN neuron_tokens n ON n.id BETWEEN f.r * {k} AND f.r * {k} + {k - 1}"
            " JOIN tokens t ON t.token_id = n.token_id"
            f" WHERE t.norm IN ({qv}) AND f.r % 4 IN ({qk})"
            " GROUP BY f.r ORDER BY best ASC, hits DESC, strength DESC LIMIT ?"
        )
        try:
            found = self._con.execute(sql, [fts, *variants, *(KIND_CODES[x] for x in kinds), int(limit)]).fetchall()
        except sqlite3.OperationalError as e:
            raise InputError(f"Cannot search for {query!r}: {e}.") from e
        names = {c: x for x, c in KIND_CODES.items()}
        out = []
        for key, best, hits, _ in found:
            layer, neuron, kind_ = key // (4 * d), (key // 4) % d, names[key % 4]
            toks = self._tokens(layer, neuron, kind_)
            tok, score = toks[best]
            out.append({"layer": layer, "neuron": neuron, "kind": kind_, "rank": best, "token": tok,
                        "score": score, "n_match": hits, "top": [t for t, _ in toks[:10]]})
        return out

    def _tokens(self, layer: int, neuron: int, kind: str) -> list[tuple[str, float]]:
        k = self.meta["k"]
        lo = _key(layer, neuron, kind, self.meta["d_mlp"]) * k
        return [(t, s) for t, s in self._con.execute(
            "SELECT t.token, n.score FROM neuron_tokens n JOIN tokens t ON t.token_id = n.token_id"
            " WHERE n.id BETWEEN ? AND ? ORDER BY n.id", (lo, lo + k - 1))]

    def neuron(self, layer: int, neuron: int) -> dict[str, list[tuple[str, float]] | None]:
        """The stored top tokens of one neuron: kind -> [(token, score)] (None when not stored)."""
        if layer < 0:
            layer += self.meta["n_layers"]
        if layer not in self.meta["layers"] or not 0 <= neuron < self.meta["d_mlp"]:
            raise InputError(f"Neuron {layer}.{neuron} is not in this atlas (layers {self.meta['layers']}, "
                             f"neurons 0..{self.meta['d_mlp'] - 1}).")
        return {k: (self._tokens(layer, neuron, k) if k in self.meta["kinds"] else None)
                for k in ("in_gate", "in_up", "out", "out_bottom")}

    def top1(self, kind: str, layers: Sequence[int] | None = None) -> Tensor:
        """Top-1 token ids, LongTensor [n_layers_selected, d_mlp]."""
        import torch

        if kind not in self.meta["kinds"]:
            raise InputError(f"The atlas {self.path} has no {kind!r} rows (it has {self.meta['kinds']}).")
        layers = list(self.meta["layers"] if layers is None else layers)
        missing = [L for L in layers if L not in self.meta["layers"]]
        if missing:
            raise InputError(f"The atlas {self.path} does not cover layers {missing}.")
        d, k = self.meta["d_mlp"], self.meta["k"]
        out = torch.full((len(layers), d), -1, dtype=torch.long)
        for i, layer in enumerate(layers):
            lo, hi = _key(layer, 0, kind, d) * k, _key(layer, d - 1, kind, d) * k
            rows = self._con.execute(  # every 4th key is this kind; rank 0 is id % k == 0
                f"SELECT id, token_id FROM neuron_tokens WHERE id BETWEEN ? AND ? AND id % {4 * k} = ?",
                (lo, hi, lo % (4 * k))).fetchall()
            if len(rows) != d:
                raise ArtifactError(f"The atlas {self.path} has {len(rows)} of {d} {kind} rows in layer {layer}.")
            out[i] = torch.tensor([t for _, t in rows])
        return out
