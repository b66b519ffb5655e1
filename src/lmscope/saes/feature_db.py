"""Find latents by word: one SQLite file with full-text search (FTS5) over each latent's tokens.

    build_feature_index(sae_folder, model, coder, stats)      # sae_folder/features.sqlite
    for hit in search_features(sae_folder, "dog"): hit.feature, hit.score, hit.matched

Two token lists per latent, both normalised with the neuron atlas's `normalize_token`
(' Dog' / '▁Dog' / 'ĠDog' -> 'dog'):

    act     the tokens at the maxima of its top contexts (`FeatureStats`), the most frequent
            first; score = share of its (active) top contexts that peak on the token
    logit   the tokens its decoder row promotes through the LM head (`feature_page.decode_features`),
            best first; score = the logit. Absent for a coder that does not write the residual

Tables:
    meta(key, value)                     model, coder fingerprint, sites, d_sae, k... (JSON values)
    features(feature, fires, frequency, max_act, mean_act)
    feature_tokens(feature, source, rank, token_id, token, norm, score)   source 0 = act, 1 = logit
    feature_fts(tokens)                  FTS5, contentless: the normalised tokens of one
                                         (feature, source), rowid = feature * 2 + source

A search matches a word and its plural/singular variants (`atlas_db.query_variants`) exactly
against the normalised tokens and ranks the latents by

    score = sum over matching act tokens of their share + sum over matching logit tokens of 1 / (1 + rank)

so 1.0 is "every top context peaks on the word" or "the word is its top logit token", 2.0 both.
The file is written under a temporary name and renamed into place (`engine.artifacts.atomic_write`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lmscope.engine.artifacts import atomic_write
from lmscope.engine.errors import ArtifactError, InputError
from lmscope.engine.model import Model
from lmscope.engine.results import Result, Table
from lmscope.neurons.atlas_db import normalize_token, query_variants
from lmscope.saes.coder import SparseCoder
from lmscope.saes.feature_page import decode_features, writes_residual
from lmscope.saes.features import FeatureStats, coder_fingerprint

FORMAT_VERSION = 1
INDEX_FILE = "features.sqlite"
SOURCES = {"act": 0, "logit": 1}
_SCHEMA = """
PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE features(feature INTEGER PRIMARY KEY, fires INTEGER NOT NULL, frequency REAL NOT NULL,
    max_act REAL NOT NULL, mean_act REAL NOT NULL);
CREATE TABLE feature_tokens(feature INTEGER NOT NULL, source INTEGER NOT NULL, rank INTEGER NOT NULL,
    token_id INTEGER NOT NULL, token TEXT NOT NULL, norm TEXT NOT NULL, score REAL NOT NULL,
    PRIMARY KEY (feature, source, rank)) WITHOUT ROWID;
CREATE VIRTUAL TABLE feature_fts USING fts5(tokens, content='', tokenize='unicode61 remove_diacritics 0');
"""


def index_file(path: str | os.PathLike) -> Path:
    """`path/features.sqlite` for a folder (the coder's), else `path` itself."""
    p = Path(path).expanduser()
    return p / INDEX_FILE if p.is_dir() or not p.suffix else p


def activating_tokens(stats: FeatureStats, k: int) -> list[list[tuple[int, float]]]:
    """Per latent: up to k (token id, share of its active top contexts peaking on it), most first."""
    ids, active = stats.top_token_ids()  # [top_n, d_sae]
    out = []
    for col, ok in zip(ids.t().tolist(), active.t().tolist(), strict=True):
        seen = [t for t, a in zip(col, ok, strict=True) if a and t >= 0]
        out.append([(t, c / len(seen)) for t, c in Counter(seen).most_common(k)])  # ties: first seen first
    return out


def build_feature_index(path: str | os.PathLike, model: Model, coder: SparseCoder, stats: FeatureStats, *,
                        page_k: int = 10) -> Path:
    """Write the search index of `coder`'s latents (see the module docstring), atomically.

    Args:
        path: A folder (the coder's: the file is `features.sqlite` in it) or the file.
        model: The model.
        coder: The coder `stats` was computed with (checked).
        stats: From `feature_stats`.
        page_k: Tokens kept per latent and source.

    Returns:
        The file written.
    """
    stats.check_coder(coder)
    if page_k < 1:
        raise InputError(f"page_k must be at least 1, got {page_k}.")
    file = index_file(path)
    t0 = time.perf_counter()
    act = activating_tokens(stats, page_k)
    logit = None
    if writes_residual(model, coder):
        ids, vals = decode_features(model, coder, k=page_k)
        logit = [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), vals.tolist(), strict=True)]
    used = sorted({t for rows in (act, logit or []) for row in rows for t, _ in row})
    text = dict(zip(used, model.tokenizer.batch_decode([[t] for t in used]), strict=True))
    norm = {t: normalize_token(s) for t, s in text.items()}
    freq, mean = stats.frequency.tolist(), stats.mean_act.tolist()
    meta = {"format_version": FORMAT_VERSION, "model": model.name, "site": stats.site, "site_out": stats.site_out,
            "coder_kind": stats.kind, "arch": stats.arch, "d_sae": coder.d_sae, "fingerprint": stats.fingerprint,
            "n_tokens": stats.n_tokens, "page_k": page_k, "sources": ["act"] + (["logit"] if logit else []),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def write(tmp: Path) -> None:
        con = sqlite3.connect(tmp)
        try:
            con.executescript(_SCHEMA)
            con.executemany("INSERT INTO features VALUES (?,?,?,?,?)",
                            zip(range(coder.d_sae), stats.fires.tolist(), freq, stats.max_act.tolist(), mean))
            for src, per in (("act", act), ("logit", logit)):
                if per is None:
                    continue
                code = SOURCES[src]
                con.executemany("INSERT INTO feature_tokens VALUES (?,?,?,?,?,?,?)",
                                [(f, code, r, t, text[t], norm[t], s) for f, row in enumerate(per)
                                 for r, (t, s) in enumerate(row)])
                con.executemany("INSERT INTO feature_fts(rowid, tokens) VALUES (?,?)",
                                [(2 * f + code, " ".join(filter(None, (norm[t] for t, _ in row))))
                                 for f, row in enumerate(per) if row])
            meta["write_seconds"] = time.perf_counter() - t0
            con.executemany("INSERT INTO meta VALUES (?,?)", [(k, json.dumps(v)) for k, v in meta.items()])
            con.commit()
        finally:
            con.close()

    return atomic_write(file, write)


@dataclass
class FeatureHit:
    """One latent found by `search_features`.

    Attributes:
        feature: The latent.
        score: See the module docstring.
        matched: [{"source": "act" | "logit", "rank", "token", "score"}] of the matching tokens.
        top_act / top_logit: Its first five tokens of each source.
    """

    feature: int
    score: float
    matched: list[dict]
    frequency: float
    max_act: float
    top_act: list[str] = field(default_factory=list)
    top_logit: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class FeatureSearch(Result):
    """The hits of one search, best first; iterates, indexes and counts like a list of `FeatureHit`."""

    query: str
    path: str
    hits: list[FeatureHit]

    def __iter__(self):
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i):
        return self.hits[i]

    def to_dict(self) -> dict:
        return {"query": self.query, "path": self.path, "hits": [h.to_dict() for h in self.hits]}

    def table(self) -> Table:
        rows = [[h.feature, h.score, ", ".join(f"{m['token']!r} ({m['source']} #{m['rank'] + 1})" for m in h.matched),
                 h.frequency, " ".join(map(repr, h.top_act)), " ".join(map(repr, h.top_logit))] for h in self.hits]
        return Table(["feature", "score", "matched", "frequency", "top activating tokens", "top logit tokens"], rows,
                     title=f"features matching {self.query!r}", formats={"score": ".3f", "frequency": ".3%"},
                     notes=[] if rows else [f"no feature of {self.path} has {self.query!r} among its top tokens"])


def _open(file: Path) -> tuple[sqlite3.Connection, dict]:
    if not file.is_file():
        raise ArtifactError(f"No feature index at {file}; build it with build_feature_index(path, model, coder, stats).")
    con = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
    try:
        meta = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta")}
    except (sqlite3.DatabaseError, ValueError) as e:
        con.close()
        raise ArtifactError(f"{file} is not an lmscope feature index ({e}); build it again with "
                            "build_feature_index.") from None
    if meta.get("format_version") != FORMAT_VERSION or "d_sae" not in meta:
        con.close()
        raise ArtifactError(f"{file} has feature-index format {meta.get('format_version')!r}, this lmscope reads "
                            f"{FORMAT_VERSION}; build it again with build_feature_index.")
    return con, meta


def search_features(path: str | os.PathLike, word: str, *, limit: int = 20, coder: SparseCoder | None = None
                    ) -> FeatureSearch:
    """Latents whose top activating or top logit tokens are `word` (or any of several
    space-separated words), with plural/singular variants, best first (see the module docstring).

    Args:
        path: The index file or the folder holding `features.sqlite`.
        word: What to look for.
        limit: Hits returned at most.
        coder: Refuse an index built for another coder (ArtifactError).
    """
    variants = [v for w in word.split() for v in query_variants(w)]
    if not variants:
        raise InputError(f"Search query {word!r} has no words; pass e.g. 'dog'.")
    if limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}.")
    file = index_file(path)
    con, meta = _open(file)
    try:
        if coder is not None and (coder.d_sae != meta["d_sae"] or
                                  coder_fingerprint(coder) != meta.get("fingerprint")):
            raise ArtifactError(f"{file} indexes another coder ({meta['d_sae']} latents at {meta.get('site')}), "
                                f"not {coder!r}; build it again for this coder.")
        fts = " OR ".join('"' + v.replace('"', '""') + '"' for v in variants)
        sql = ("SELECT t.feature, t.source, t.rank, t.token, t.score FROM"
               " (SELECT rowid AS r FROM feature_fts WHERE feature_fts MATCH ?) f"
               " JOIN feature_tokens t ON t.feature = f.r / 2 AND t.source = f.r % 2"
               f" WHERE t.norm IN ({','.join('?' * len(variants))}) ORDER BY t.feature, t.source, t.rank")
        try:
            rows = con.execute(sql, [fts, *variants]).fetchall()
        except sqlite3.OperationalError as e:
            raise InputError(f"Cannot search for {word!r}: {e}.") from None
        except sqlite3.DatabaseError as e:
            raise ArtifactError(f"{file} is corrupt ({e}); build it again with build_feature_index.") from None
        score: dict[int, float] = {}
        matched: dict[int, list[dict]] = {}
        names = {c: s for s, c in SOURCES.items()}
        for f, src, rank, tok, s in rows:
            score[f] = score.get(f, 0.0) + (s if src == SOURCES["act"] else 1.0 / (1 + rank))
            matched.setdefault(f, []).append({"source": names[src], "rank": rank, "token": tok, "score": s})
        best = sorted(score, key=lambda f: (-score[f], f))[:limit]
        hits = []
        for f in best:
            freq, mx = con.execute("SELECT frequency, max_act FROM features WHERE feature = ?",
                                          (f,)).fetchone()
            top = {s: [t for (t,) in con.execute("SELECT token FROM feature_tokens WHERE feature = ? AND source = ?"
                                                 " ORDER BY rank LIMIT 5", (f, c))] for s, c in SOURCES.items()}
            hits.append(FeatureHit(feature=f, score=score[f], matched=matched[f], frequency=freq, max_act=mx,
                                   top_act=top["act"], top_logit=top["logit"]))
    finally:
        con.close()
    return FeatureSearch(query=word, path=str(file), hits=hits)
