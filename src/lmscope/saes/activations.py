"""Activations for training: streamed from the model, or cached on disk as sharded safetensors.

Both sources yield *chunks*: `{site: Tensor[n, d]}`, one row per text token (the BOS/prefix
positions, a BOS-less window's first token and padding are dropped: `dictionary_positions`;
the trainer also drops massive-activation rows: `drop_massive`), rows aligned across sites (a transcoder's `mlp_in` row i
and `mlp_out` row i are the same token). A `Cursor` says where a source is, so a checkpoint
can resume exactly.

A cache is a folder:

    manifest.json            {"format": "lmscope-activations", "model", "sites", "d", "dtype",
                              "n_tokens", "shards": [{"file", "n"}], "text", "window", ...}
    shard-00000.safetensors  one tensor per site, [n, d], float16 or float32

Shards are written atomically, the manifest last: a folder without a manifest is an interrupted
build and is rebuilt; a manifest is validated on open (format, model, sites, shard sizes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from lmscope.datasets.corpus import TokenWindows, token_windows
from lmscope.engine.artifacts import atomic_write
from lmscope.engine.errors import ArtifactError, InputError
from lmscope.engine.model import Model

log = logging.getLogger(__name__)

FORMAT = "lmscope-activations"
MANIFEST = "manifest.json"
Chunk = dict[str, Tensor]


@dataclass
class Cursor:
    """Where a source is: pass `epoch`, next item `index` (window batch or shard)."""

    epoch: int = 0
    index: int = 0

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}


def site_width(model: Model, site: str) -> int:
    """Width of one token's activation at a site (a flat vector site)."""
    shape = model.feature_shape(model.site(site))
    if len(shape) != 1:
        raise InputError(f"{site} is [{', '.join(map(str, shape))}] per token; SAEs read flat sites such as "
                         "layers.L.resid_post, attn_out, mlp_out, mlp_in or mlp.neurons.")
    return shape[0]


def dictionary_positions(valid: Tensor, n_prefix: int) -> Tensor:
    """The positions a dictionary reads, trains on and is judged on: text tokens, and without a
    BOS prefix not the first token of a window either. That token is the attention sink: in
    SmolLM2 its residual is ~100x any other's, and 1% of the rows would carry 99% of the variance."""
    if n_prefix:
        return valid
    return valid & (valid.long().cumsum(1) > 1)


MASSIVE = 10.0  # a token whose activation norm exceeds this many times the median is a massive activation


def ordinary(valid: Tensor, x: Tensor) -> Tensor:
    """`valid` ([batch, pos]) without massive-activation tokens: an activation `x` ([batch, pos, d])
    whose norm is over MASSIVE times the median norm of the valid tokens. Llama-family models write
    a huge fixed vector at a few delimiter tokens (Sun et al. 2024); in SmolLM2 twelve such rows in
    131k hold 58% of the variance, so they would decide both the loss and the variance explained."""
    n = x.float().norm(dim=-1)
    if not bool(valid.any()):
        return valid
    return valid & (n <= MASSIVE * n[valid].median())


def drop_massive(chunk: Chunk) -> Chunk:
    """The rows of a chunk that are ordinary at every site (see `ordinary`)."""
    keep = None
    for x in chunk.values():
        n = x.float().norm(dim=-1)
        ok = n <= MASSIVE * n.median()
        keep = ok if keep is None else keep & ok
    return chunk if keep is None or bool(keep.all()) else {s: x[keep] for s, x in chunk.items()}


def window_chunks(model: Model, windows: TokenWindows, sites: Sequence[str], *, batch_windows: int = 16,
                  start: int = 0, span: tuple[int, int] | None = None) -> Iterator[tuple[int, Chunk]]:
    """(index of the next window batch, chunk) for window batches from `start` on (within the
    windows `span`, default all): one forward each, capture only, stopping after the last layer
    the sites need."""
    sites = list(sites)
    for b, (_, batch, valid) in enumerate(windows.batches(batch_windows, model.device, start=start, span=span),
                                          start):
        valid = dictionary_positions(valid, windows.n_prefix)
        res = model.run(batch, capture=sites, logits=None)
        yield b + 1, {s: res.cache[s][valid].float() for s in sites}


class StreamSource:
    """Chunks straight from the model (no disk): every epoch re-runs the model over the text."""

    def __init__(self, model: Model, windows: TokenWindows, sites: Sequence[str], *, batch_windows: int = 16) -> None:
        self.model, self.windows, self.sites, self.batch_windows = model, windows, list(sites), batch_windows

    @property
    def n_tokens(self) -> int:
        return self.windows.n_tokens

    def chunks(self, cursor: Cursor) -> Iterator[tuple[Cursor, Chunk]]:
        while True:
            for nxt, chunk in window_chunks(self.model, self.windows, self.sites, batch_windows=self.batch_windows,
                                            start=cursor.index):
                cursor = Cursor(cursor.epoch, nxt)
                yield cursor, chunk
            cursor = Cursor(cursor.epoch + 1, 0)


# ---- the on-disk cache ---------------------------------------------------------------------

def cache_key(model: Model, sites: Sequence[str], texts: Sequence[str], *, window: int, max_tokens: int | None,
              dtype: str) -> str:
    """A short hash naming a cache: same model, sites, text and settings -> same folder."""
    h = hashlib.sha256()
    h.update(json.dumps([model.name, model.source, list(sites), window, max_tokens, dtype, "no-sink"]).encode())
    for t in texts:
        h.update(hashlib.sha256(t.encode()).digest())
    return h.hexdigest()[:16]


def default_cache_path(model: Model, key: str) -> Path:
    from lmscope.engine.cache import cache_dir

    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in model.name)
    return cache_dir() / "activations" / safe / key


class ActivationCache:
    """A validated cache folder (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise ArtifactError(f"{self.path} has no {MANIFEST}: not an activation cache, or an interrupted build.")
        try:
            m = json.loads(mpath.read_text("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{mpath} is not valid JSON ({e}); delete the folder to rebuild it.") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise ArtifactError(f"{mpath} is not an lmscope activation manifest (format {FORMAT!r}).")
        for key in ("model", "sites", "d", "dtype", "n_tokens", "shards"):
            if key not in m:
                raise ArtifactError(f"{mpath} lacks {key!r}; delete the folder to rebuild it.")
        if sum(s["n"] for s in m["shards"]) != m["n_tokens"]:
            raise ArtifactError(f"{mpath}: shard sizes do not add up to n_tokens; delete the folder to rebuild it.")
        self.manifest = m

    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    @property
    def n_shards(self) -> int:
        return len(self.manifest["shards"])

    def check(self, model: Model | None = None, sites: Sequence[str] | None = None) -> ActivationCache:
        """Refuse a cache of another model, or one that lacks a site."""
        m = self.manifest
        if model is not None and m["model"] != model.name:
            raise ArtifactError(f"The activation cache {self.path} is of {m['model']!r}, not {model.name!r}.")
        missing = [s for s in (sites or ()) if s not in m["sites"]]
        if missing:
            raise ArtifactError(f"The activation cache {self.path} holds {', '.join(m['sites'])}; "
                                f"it lacks {', '.join(missing)}.")
        return self

    def shard(self, i: int) -> Chunk:
        info = self.manifest["shards"][i]
        p = self.path / info["file"]
        try:
            t = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            raise ArtifactError(f"Cannot read {p} ({e}); delete {self.path} to rebuild the cache.") from None
        for s in self.sites:
            x = t.get(s)
            if x is None or tuple(x.shape) != (info["n"], self.manifest["d"][s]):
                raise ArtifactError(f"{p}: tensor {s!r} is missing or not [{info['n']}, {self.manifest['d'][s]}]; "
                                    f"delete {self.path} to rebuild the cache.")
        return {s: t[s].float() for s in self.sites}

    def order(self, epoch: int, seed: int) -> list[int]:
        """Shard order of an epoch: a seeded permutation (epoch 0 of seed s is always the same)."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return torch.randperm(self.n_shards, generator=g).tolist()

    def chunks(self, cursor: Cursor, *, seed: int = 0, sites: Sequence[str] | None = None
               ) -> Iterator[tuple[Cursor, Chunk]]:
        keep = list(sites or self.sites)
        while True:
            order = self.order(cursor.epoch, seed)
            for j in range(cursor.index, len(order)):
                chunk = self.shard(order[j])
                cursor = Cursor(cursor.epoch, j + 1)
                yield cursor, {s: chunk[s] for s in keep}
            cursor = Cursor(cursor.epoch + 1, 0)

    def sample(self, n: int, site: str, *, seed: int = 0) -> Tensor:
        """Up to n rows of one site from the first shards of epoch 0 (for initialisation)."""
        out, have = [], 0
        for i in self.order(0, seed):
            x = self.shard(i)[site]
            out.append(x[: n - have])
            have += out[-1].shape[0]
            if have >= n:
                break
        return torch.cat(out)


def build_cache(model: Model, texts: Sequence[str], sites: Sequence[str], *, path: str | Path | None = None,
                window: int = 128, max_tokens: int | None = None, dtype: str = "float16",
                shard_tokens: int = 65536, batch_windows: int = 16, text_label: str = "",
                progress: bool = False, shards=None) -> ActivationCache:
    """Run the model once over `texts` and write the activations of `sites` as shards.

    An existing complete cache for the same key is reused as it is (no model run).

    Args:
        model: The model.
        texts: Documents.
        sites: Flat sites to record (several layers in one pass).
        path: Folder; default `cache_dir()/activations/<model>/<key>`.
        window: Tokens per window (prefix included).
        max_tokens: Stop after this many text tokens.
        dtype: "float16" (half the disk; refused if a value overflows) or "float32".
        shard_tokens: Rows per shard.
        batch_windows: Windows per forward.
        text_label: What the text is, recorded in the manifest.
        progress: Show a progress bar.
        shards: Build it as a resumable sharded job (`lmscope.engine.sharded.ShardOptions`: in
            this process or on Ray workers) into `shards.folder`; its shards are the cache's
            (about `shard_tokens` rows each, whole window batches).
    """
    if dtype not in ("float16", "float32"):
        raise InputError(f"dtype must be 'float16' or 'float32', got {dtype!r}.")
    sites = [s.name for spec in sites for s in model.sites(spec)]
    key = cache_key(model, sites, texts, window=window, max_tokens=max_tokens, dtype=dtype)
    if shards is not None:
        if path is not None and Path(path).resolve() != Path(shards.folder).resolve():
            raise InputError("A sharded cache is written into its job folder: pass path=None or the same folder.")
        path = Path(shards.folder)
    path = Path(path) if path is not None else default_cache_path(model, key)
    if (path / MANIFEST).is_file():
        cache = ActivationCache(path)
        if cache.manifest.get("key") == key:
            log.info("reusing the activation cache %s", path)
            return cache
        raise ArtifactError(f"{path} holds another activation cache (other model, sites or text); "
                            "pick another folder or delete it.")
    widths = {s: site_width(model, s) for s in sites}
    windows = token_windows(model, texts, window=window, max_tokens=max_tokens)
    t0 = time.perf_counter()
    manifest = {
        "format": FORMAT, "version": 1, "key": key, "model": model.name, "model_source": model.source,
        "sites": sites, "d": widths, "dtype": dtype,
        "text": text_label or f"{len(texts)} documents", "n_documents": len(texts), "window": window,
    }
    if shards is not None:
        from lmscope.engine.sharded import run_sharded, shard_name

        done = run_sharded(model, ActivationTask(sites, windows, dtype, batch_windows, shard_tokens), shards,
                           progress=progress)
        files = [{"file": shard_name(i), "n": done.rows(i, sites[0])} for i in range(len(done))]
        manifest |= {"n_tokens": sum(f["n"] for f in files), "shards": files, "job": "job.json",
                     "seconds": round(time.perf_counter() - t0, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write(path / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
        return ActivationCache(path)
    path.mkdir(parents=True, exist_ok=True)
    tdtype = getattr(torch, dtype)
    files, pending = [], {s: [] for s in sites}

    def flush(final: bool) -> None:
        n = sum(x.shape[0] for x in pending[sites[0]])
        while n >= shard_tokens or (final and n > 0):
            take = min(n, shard_tokens)
            cat = {s: torch.cat(pending[s]) for s in sites}
            out = {s: cat[s][:take].to(tdtype).contiguous() for s in sites}
            for s, x in out.items():
                if not torch.isfinite(x).all():
                    raise InputError(f"Activations of {s} overflow {dtype}; build the cache with dtype='float32'.")
            name = f"shard-{len(files):05d}.safetensors"
            atomic_write(path / name, lambda tmp, out=out: save_file(out, str(tmp)))
            files.append({"file": name, "n": take})
            for s in sites:
                pending[s] = [cat[s][take:]]
            n -= take

    from tqdm.auto import tqdm

    n_batches = (len(windows) + batch_windows - 1) // batch_windows
    for _, chunk in tqdm(window_chunks(model, windows, sites, batch_windows=batch_windows), total=n_batches,
                         disable=not progress, desc="activations", unit="batch"):
        for s in sites:
            pending[s].append(chunk[s].cpu())
        flush(final=False)
    flush(final=True)
    manifest |= {"n_tokens": sum(s["n"] for s in files), "shards": files,
                 "seconds": round(time.perf_counter() - t0, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write(path / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
    return ActivationCache(path)


@dataclass
class ActivationTask:
    """An activation cache as a sharded job (`lmscope.engine.sharded`): each shard runs whole
    window batches and writes their rows of every site, in the cache's dtype; the job's shard
    files are the cache's shards."""

    sites: list[str]
    windows: TokenWindows
    dtype: str
    batch_windows: int
    shard_tokens: int
    kind: str = "activations"

    def identity(self) -> dict:
        return {"sites": self.sites, "dtype": self.dtype, "windows": self.windows.fingerprint(),
                "n_windows": len(self.windows), "batch_windows": self.batch_windows}

    def plan(self) -> list[dict]:
        return self.windows.spans(self.shard_tokens, self.batch_windows)

    def run(self, model: Model, shard: dict) -> dict[str, Tensor]:
        parts: dict[str, list[Tensor]] = {s: [] for s in self.sites}
        for _, chunk in window_chunks(model, self.windows, self.sites, batch_windows=self.batch_windows,
                                      span=(shard["lo"], shard["hi"])):
            for s in self.sites:
                parts[s].append(chunk[s].cpu())
        out = {s: torch.cat(parts[s]).to(getattr(torch, self.dtype)).contiguous() for s in self.sites}
        for s, x in out.items():
            if not torch.isfinite(x).all():
                raise InputError(f"Activations of {s} overflow {self.dtype}; build the cache with dtype='float32'.")
        return out


class TensorSource:
    """Chunks from in-memory tensors (tests, benchmarks): `{site: [N, d]}` cut into pieces."""

    def __init__(self, data: Chunk, *, chunk_tokens: int = 65536) -> None:
        n = {x.shape[0] for x in data.values()}
        if len(n) != 1:
            raise InputError("Every site's activations need the same number of rows.")
        self.data, self.chunk_tokens, self.n_tokens = data, chunk_tokens, n.pop()

    def chunks(self, cursor: Cursor, *, seed: int = 0) -> Iterator[tuple[Cursor, Chunk]]:
        n_chunks = (self.n_tokens + self.chunk_tokens - 1) // self.chunk_tokens
        while True:
            g = torch.Generator().manual_seed(seed * 1_000_003 + cursor.epoch)
            order = torch.randperm(n_chunks, generator=g).tolist()
            for j in range(cursor.index, n_chunks):
                lo = order[j] * self.chunk_tokens
                cursor = Cursor(cursor.epoch, j + 1)
                yield cursor, {s: x[lo: lo + self.chunk_tokens].float() for s, x in self.data.items()}
            cursor = Cursor(cursor.epoch + 1, 0)


class ShuffleBuffer:
    """Mixes rows across chunks: fill to `capacity`, shuffle, hand out the first half in batches,
    keep the rest. Seeded; its whole state (rows + generator) goes into checkpoints."""

    def __init__(self, capacity: int, batch_size: int, *, seed: int = 0) -> None:
        if capacity < 2 * batch_size:
            raise InputError(f"The shuffle buffer ({capacity} rows) must hold at least two batches "
                             f"({2 * batch_size}); raise buffer_tokens or lower batch_size.")
        self.capacity, self.batch_size = capacity, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.rows: Chunk = {}
        self.queue: list[Chunk] = []  # batches handed out by `take` and not yet used

    def __len__(self) -> int:
        return next(iter(self.rows.values())).shape[0] if self.rows else 0

    def add(self, chunk: Chunk) -> None:
        self.rows = dict(chunk) if not self.rows else {s: torch.cat([self.rows[s], chunk[s]]) for s in chunk}

    def ready(self) -> bool:
        return len(self) >= self.capacity

    def take(self) -> list[Chunk]:
        """Shuffle and hand out batches from the first half; keep the rest."""
        n = len(self)
        perm = torch.randperm(n, generator=self.gen)
        n_out = (n // 2) // self.batch_size * self.batch_size
        out_idx, keep_idx = perm[:n_out], perm[n_out:]
        batches = [{s: x[out_idx[i: i + self.batch_size]] for s, x in self.rows.items()}
                   for i in range(0, n_out, self.batch_size)]
        self.rows = {s: x[keep_idx] for s, x in self.rows.items()}
        return batches

    def next_batch(self) -> Chunk | None:
        """The next queued batch, refilling the queue from the buffer when it is full."""
        if not self.queue and self.ready():
            self.queue = self.take()
        return self.queue.pop(0) if self.queue else None

    def state(self) -> dict:
        queued = {s: torch.cat([b[s] for b in self.queue]) for s in self.rows} if self.queue else {}
        return {"rows": {s: x.clone() for s, x in self.rows.items()}, "queue": queued, "gen": self.gen.get_state()}

    def load_state(self, st: dict) -> None:
        self.rows = dict(st["rows"])
        q = st.get("queue") or {}
        n = next(iter(q.values())).shape[0] if q else 0
        self.queue = [{s: x[i: i + self.batch_size] for s, x in q.items()} for i in range(0, n, self.batch_size)]
        self.gen.set_state(st["gen"])
