"""Neuron atlas: every MLP neuron's weights read in token space through the LM head (Davies 2025).

A neuron reads the residual stream through its input rows and writes into it along its output
column. Passing such a direction `w` [d_model] through the model's own final norm (linearised:
centred for LayerNorm, times the gain, Gemma: 1 + w) and the unembedding gives one score per
token:

    scores = (w * final_norm_gain) @ W_U            # [d_vocab]

Decoded weight kinds (`KINDS`):

    in_gate     gate-projection row: what makes the neuron's gate open (gated MLPs only)
    in_up       up-projection row: the value the neuron reads. Davies decodes this one; for a
                gated MLP act(gate) * up reads the residual through both rows, so we decode
                both and store both (`in_gate` is None/absent for ungated MLPs)
    out         down-projection column: tokens the neuron promotes when it fires positively
    out_bottom  the same column, lowest scores: tokens it suppresses

The whole model costs one float32 matmul per layer and kind, `[d_mlp, d_model] x [d_model,
d_vocab]`, chunked over neurons so the `[chunk, d_vocab]` score block stays within
`chunk_mib`, with an exact two-stage top-k (block maxima, then the candidate blocks) that
costs a fraction of the matmul. No Python loop runs over neurons.

Not folded in: the MLP's own pre/post norms (Gemma's pre/post-feedforward norms, LLaMA's
post-attention norm), the unembedding bias and the final logit softcap (monotone, so top-k
is unchanged). Scores are directions' logits, not probabilities.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import Tensor

from lmscope.engine.errors import InputError
from lmscope.engine.model import Model
from lmscope.engine.readout import final_norm_centre, final_norm_gain
from lmscope.engine.weights import perturbed_mlp

log = logging.getLogger(__name__)

KINDS = ("in_gate", "in_up", "out", "out_bottom")
Search = Literal["exact", "approx", "half"]
SEARCHES: tuple[str, ...] = get_args(Search)
HALF = torch.bfloat16  # the candidate matmul of the "half" search: float32's range, so no overflow
# kind -> which weight matrix it decodes
_SOURCE = {"in_gate": "gate", "in_up": "up", "out": "out", "out_bottom": "out"}


@dataclass(frozen=True, kw_only=True)
class AtlasConfig:
    """What to decode and how.

    Attributes:
        k: Tokens kept per neuron and kind.
        kinds: Which of `KINDS` to decode (`in_gate` is skipped for ungated MLPs).
        layers: Layers to decode (None: all).
        chunk_mib: Memory bound of one float32 score block `[chunk, d_vocab]`, in MiB.
        block: Width of the vocabulary blocks of the two-stage top-k (None: about
            sqrt(d_vocab / k), rounded to a power of two, which balances its two stages).
        search: "exact" (the default: every token scored in float32); "approx": candidates
            from a low-rank score (each weight matrix's rows projected on their top `rank`
            principal directions); or "half": candidates from the full matmul in bfloat16
            (for GPUs, whose tensor cores run it many times faster than float32; on a CPU
            without bfloat16 instructions it is slower than "exact"). Both approximate
            searches rescore their best `candidates` exactly, so the kept scores are exact and
            a token can only be missed (recall: `benchmarks/bench_atlas.py approx`).
        rank: Principal directions of the approximate search.
        candidates: Tokens per neuron rescored exactly by the "approx" and "half" searches (>= k).
    """

    k: int = 20
    kinds: tuple[str, ...] = KINDS
    layers: tuple[int, ...] | None = None
    chunk_mib: int = 256
    block: int | None = None
    search: Search = "exact"
    rank: int = 64
    candidates: int = 256

    def __post_init__(self) -> None:
        if self.k < 1:
            raise InputError(f"k must be at least 1, got {self.k}.")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise InputError(f"Unknown atlas kinds {bad or '(none)'}; choose from {', '.join(KINDS)}.")
        if self.chunk_mib < 1 or (self.block is not None and self.block < 1):
            raise InputError("chunk_mib and block must be positive.")
        if self.search not in SEARCHES:
            raise InputError(f"Unknown atlas search {self.search!r}; choose from {', '.join(SEARCHES)}.")
        if self.rank < 1 or self.candidates < self.k:
            raise InputError(f"The approximate searches need rank >= 1 and candidates >= k (k={self.k}); "
                             f"got rank={self.rank}, candidates={self.candidates}.")

    def describe(self) -> dict:
        """How the tokens were searched (kept in the atlas's metadata)."""
        if self.search == "exact":
            return {"method": "exact"}
        if self.search == "half":
            return {"method": "half", "dtype": str(HALF).removeprefix("torch."), "candidates": self.candidates}
        return {"method": "approx", "rank": self.rank, "candidates": self.candidates}


@dataclass
class NeuronTopK:
    """Decoded top-k tokens of every neuron of the decoded layers.

    Attributes:
        layers: The decoded layers, in order (row i of every tensor is layer `layers[i]`).
        ids: kind -> token ids, LongTensor [n_layers_decoded, d_mlp, k] (CPU).
        scores: kind -> scores, float32 [n_layers_decoded, d_mlp, k] (CPU), sorted best first
            (descending; ascending for `out_bottom`).
        seconds: Wall time of the decoding.
        flops: Floating-point operations of its matmuls.
        search: How the tokens were searched (`AtlasConfig.describe()`).
    """

    layers: tuple[int, ...]
    ids: dict[str, Tensor] = field(default_factory=dict)
    scores: dict[str, Tensor] = field(default_factory=dict)
    seconds: float = 0.0
    flops: float = 0.0
    search: dict = field(default_factory=lambda: {"method": "exact"})

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.ids)


def is_gated(model: Model) -> bool:
    return model.is_gated


def _kinds_for(model: Model, kinds: Sequence[str]) -> tuple[str, ...]:
    return tuple(k for k in kinds if k != "in_gate" or is_gated(model))


def to_token_space(model: Model, w: Tensor) -> Tensor:
    """Directions [..., d_model] -> what the LM head sees: centred (LayerNorm) and times the
    final-norm gain, float32 on the model's device."""
    w = final_norm_centre(model, w.detach().to(model.device, torch.float32))
    return w * final_norm_gain(model).to(model.device)


def _unembed_matrix(model: Model) -> Tensor:
    return model.weights.W_U.detach().to(torch.float32)  # [d_model, d_vocab]; a view when float32


def auto_block(d_vocab: int, k: int) -> int:
    """Block width balancing the block-maxima top-k (d_vocab / block) and the candidates (k * block)."""
    return int(min(1024, max(16, 2 ** round(math.log2(math.sqrt(d_vocab / k))))))


def topk_rows(x: Tensor, k: int, *, largest: bool = True, block: int | None = None) -> tuple[Tensor, Tensor]:
    """Exact `x.topk(k, dim=1)` for wide rows, faster: the top-k of a row lie in the k blocks
    (of `block` columns) with the largest block maxima, so only those are searched.

    Args:
        x: [n, V] scores.
        k: How many per row.
        largest: False for the bottom k.
        block: Block width (None: `auto_block`).

    Returns:
        (values [n, k], indices [n, k]), sorted best first. Ties may pick other indices than
        `torch.topk`, with equal values.
    """
    n, v = x.shape
    if k > v:
        raise InputError(f"k={k} exceeds the {v} columns.")
    block = block or auto_block(v, k)
    nb = v // block
    if nb <= k or v < 8 * block:
        return x.topk(k, dim=1, largest=largest)
    main = x[:, : nb * block].unflatten(1, (nb, block))  # [n, nb, block], a view
    ext = main.amax(-1) if largest else main.amin(-1)  # [n, nb]
    _, bi = ext.topk(k, dim=1, largest=largest)  # [n, k] blocks holding the top k
    idx = (bi[:, :, None] * block + torch.arange(block, device=x.device)).flatten(1)  # [n, k*block]
    if nb * block < v:  # the tail that does not fill a block is always a candidate
        tail = torch.arange(nb * block, v, device=x.device).expand(n, -1)
        idx = torch.cat([idx, tail], 1)
    vals, j = x.gather(1, idx).topk(k, dim=1, largest=largest)
    return vals, idx.gather(1, j)


def principal_basis(rows: Tensor, rank: int) -> Tensor:
    """The top `rank` principal directions (uncentred) of `rows` [n, d]: [rank, d], orthonormal.
    From the eigenvectors of the [d, d] Gram matrix, so it costs one small matmul."""
    gram = rows.T.double() @ rows.double()
    _, vecs = torch.linalg.eigh(gram)  # ascending eigenvalues
    return vecs[:, -min(rank, rows.shape[1]):].flip(1).T.to(rows.dtype).contiguous()


def rescore(rows: Tensor, tokens: Tensor, approx: Tensor, config: AtlasConfig, *, largest: bool = True
            ) -> tuple[Tensor, Tensor]:
    """The approximate searches' second stage: the best `config.candidates` tokens of the
    approximate scores [n, V] (low-rank or bfloat16), scored exactly (rows [n, d] . their
    unembedding columns, `tokens` [V, d] = W_U.T, contiguous), and their top `config.k`.
    Returns (values, ids) [n, k], best first."""
    _, cand = topk_rows(approx, min(config.candidates, approx.shape[1]), largest=largest, block=config.block)
    cols = tokens.index_select(0, cand.flatten()).view(*cand.shape, -1)  # [n, K, d]: the candidates' columns
    exact = torch.bmm(cols, rows[:, :, None]).squeeze(2)  # [n, K]
    v, j = exact.topk(config.k, dim=1, largest=largest)
    return v, cand.gather(1, j)


def chunk_rows(model: Model, config: AtlasConfig) -> int:
    """Neurons per matmul chunk: a float32 [chunk, d_vocab] block within `config.chunk_mib`."""
    return max(1, min(model.d_mlp, config.chunk_mib * 2**20 // (4 * model.d_vocab)))


def _token_rows(w_u: Tensor) -> Tensor:
    """The unembedding as contiguous token rows [d_vocab, d_model], which the approximate searches
    gather their candidates from (a view when W_U is a transposed lm_head)."""
    return w_u.T.contiguous()


def score_buffer(model: Model, config: AtlasConfig) -> Tensor:
    """The [chunk, d_vocab] score block the chunks are written into (reused: no page faults per
    chunk); bfloat16 for the "half" search."""
    dtype = HALF if config.search == "half" else torch.float32
    return torch.empty(chunk_rows(model, config), model.d_vocab, device=model.device, dtype=dtype)


def decode_layer(model: Model, layer: int, config: AtlasConfig = AtlasConfig(), *, _w_u: Tensor | None = None,
                 _w_half: Tensor | None = None, _tokens: Tensor | None = None, _buf: Tensor | None = None,
                 _on_chunk: Callable[[int], None] | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """Top-k tokens of every neuron of one layer: kind -> (ids [d_mlp, k], scores [d_mlp, k]),
    on the model's device. `_on_chunk(rows)` is called after each chunk (progress)."""
    w_u = _unembed_matrix(model) if _w_u is None else _w_u
    chunk = chunk_rows(model, config)
    buf = score_buffer(model, config) if _buf is None else _buf
    kinds = _kinds_for(model, config.kinds)
    tokens = _tokens if _tokens is not None or config.search == "exact" else _token_rows(w_u)
    if config.search == "half":
        w_half = w_u.to(HALF) if _w_half is None else _w_half
    out: dict[str, tuple[list, list]] = {k: ([], []) for k in kinds}
    with torch.inference_mode():
        for src in dict.fromkeys(_SOURCE[k] for k in kinds):  # each matrix once: out feeds two kinds
            w = model.weights.W_out(layer) if src == "out" else model.weights.W_in(layer, src)
            rows = to_token_space(model, w)  # [d_mlp, d_model]
            if config.search == "approx":
                basis = principal_basis(rows, config.rank)  # [r, d_model]
                low = basis @ w_u  # [r, d_vocab]: the tokens in the rows' principal subspace
            for s in range(0, model.d_mlp, chunk):
                part = rows[s : s + chunk]
                if config.search == "approx":
                    scores = torch.mm(part @ basis.T, low, out=buf[: len(part)])  # low-rank scores
                elif config.search == "half":
                    scores = torch.mm(part.to(HALF).contiguous(), w_half, out=buf[: len(part)])  # rounded scores
                else:
                    scores = torch.mm(part, w_u, out=buf[: len(part)])  # [chunk, d_vocab]
                for kind in kinds:
                    if _SOURCE[kind] == src:
                        largest = kind != "out_bottom"
                        if config.search == "exact":
                            v, i = topk_rows(scores, config.k, largest=largest, block=config.block)
                        else:
                            v, i = rescore(part, tokens, scores, config, largest=largest)
                        out[kind][0].append(i)
                        out[kind][1].append(v)
                if _on_chunk is not None:
                    _on_chunk(len(part))
    return {k: (torch.cat(i), torch.cat(v)) for k, (i, v) in out.items()}


def decode_flops(model: Model, config: AtlasConfig, n_layers: int) -> float:
    """Floating-point operations of the matmuls decoding `n_layers` layers (the "approx"
    search's candidate matmul has `rank` instead of `d_model` as its inner size; the "half"
    search's runs in bfloat16)."""
    n_mats = len({_SOURCE[k] for k in _kinds_for(model, config.kinds)})
    inner = min(config.rank, model.d_model) if config.search == "approx" else model.d_model
    return 2.0 * n_layers * n_mats * model.d_mlp * inner * model.d_vocab


def _layers(model: Model, layers: Sequence[int] | None) -> tuple[int, ...]:
    if layers is None:
        return tuple(range(model.n_layers))
    return tuple(model.site(f"layers.{L}.resid_post").layer for L in layers)  # validates, normalises


def _about(seconds: float) -> str:
    return f"about {seconds:.0f} s" if seconds < 90 else f"about {seconds / 60:.0f} min"


def decode_model(model: Model, config: AtlasConfig = AtlasConfig(), *, progress: bool = False,
                 notify: Callable[[str], None] | None = None) -> NeuronTopK:
    """Decode every neuron of the selected layers (see the module docstring).

    Args:
        progress: Show a tqdm bar over the matmul chunks.
        notify: Called with a few status lines (the CLI prints them on stderr): the time the
            whole decoding will take, estimated from the first chunk, and, without a bar,
            how far it got every ~15 s.
    """
    from tqdm.auto import tqdm

    layers = _layers(model, config.layers)
    kinds = _kinds_for(model, config.kinds)
    w_u = _unembed_matrix(model)
    w_half = w_u.to(HALF) if config.search == "half" else None  # converted once for all layers
    tokens = _token_rows(w_u) if config.search != "exact" else None  # likewise
    buf = score_buffer(model, config)
    if config.search == "half" and model.device.type == "cpu":
        log.warning("The 'half' atlas search is meant for GPUs: on a CPU its bfloat16 matmul is usually slower "
                    "than the exact float32 search.")
    n_mats = len({_SOURCE[k] for k in kinds})
    n_rows = len(layers) * n_mats * model.d_mlp  # one weight row (or column) per neuron and matrix
    res = NeuronTopK(layers=layers, flops=decode_flops(model, config, len(layers)), search=config.describe())
    per: dict[str, tuple[list, list]] = {k: ([], []) for k in kinds}
    bar = tqdm(total=n_rows, desc=f"atlas {model.name}", disable=not progress, unit="row", unit_scale=True)

    def say(msg: str) -> None:
        if notify is not None:
            bar.clear()  # keep a live bar intact around the line
            notify(msg)
            bar.refresh()

    chunks = [0]  # chunks decoded (a disabled bar does not count)

    def on_chunk(rows: int) -> None:
        bar.update(rows)
        chunks[0] += 1
        if chunks[0] == 1:  # includes warm-up, so the estimate errs on the long side
            if model.device.type == "cuda":
                torch.cuda.synchronize(model.device)
            first = time.perf_counter() - t0
            say(f"atlas: the first chunk ({rows} of {n_rows} weight rows x {model.d_vocab} tokens) took {first:.2f} s, "
                f"so decoding takes {_about(first * n_rows / rows)}")

    t0 = time.perf_counter()
    shown = t0
    try:
        for j, layer in enumerate(layers, 1):
            decoded = decode_layer(model, layer, config, _w_u=w_u, _w_half=w_half, _tokens=tokens, _buf=buf,
                               _on_chunk=on_chunk)
            for kind, (i, v) in decoded.items():
                per[kind][0].append(i.cpu())
                per[kind][1].append(v.cpu())
            now = time.perf_counter()
            if not progress and j < len(layers) and now - shown > 15:
                left = (now - t0) / j * (len(layers) - j)
                say(f"atlas: {j}/{len(layers)} layers decoded in {now - t0:.0f} s, {_about(left)} left")
                shown = now
    finally:
        bar.close()
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    res.seconds = time.perf_counter() - t0
    for kind, (i, v) in per.items():
        res.ids[kind] = torch.stack(i)
        res.scores[kind] = torch.stack(v).float()
    log.info("Decoded %d layers x %d neurons x %d kinds of %s in %.1f s (%.0f GFLOP/s)", len(layers),
             model.d_mlp, len(kinds), model.name, res.seconds, res.flops / max(res.seconds, 1e-9) / 1e9)
    return res


def decode_neuron(model: Model, layer: int, neuron: int, k: int = 10) -> dict[str, list[tuple[str, float]] | None]:
    """One neuron's weights in token space.

    Returns:
        {"in_gate", "in_up", "out", "out_bottom"} -> [(token text, score)] best first
        (`out_bottom`: most suppressed first); "in_gate" is None for ungated MLPs.
    """
    site = model.site(f"layers.{layer}.mlp.neurons[{neuron}]")  # validates layer and neuron
    L, n = site.layer, site.units[0]
    with torch.inference_mode():
        mats = {"in_up": model.weights.W_in(L, "up")[n], "out": model.weights.W_out(L)[n]}
        if is_gated(model):
            mats["in_gate"] = model.weights.W_in(L, "gate")[n]
        names = list(mats)
        scores = to_token_space(model, torch.stack([mats[m] for m in names])) @ _unembed_matrix(model)  # [m, vocab]
    k = min(k, scores.shape[1])
    dec = model.tokenizer.decode
    res: dict[str, list[tuple[str, float]] | None] = {"in_gate": None}
    for row, name in zip(scores, names, strict=True):
        for kind, largest in ((name, True), ("out_bottom", False)) if name == "out" else ((name, True),):
            v, i = row.topk(k, largest=largest)
            res[kind] = [(dec([int(t)]), float(s)) for s, t in zip(v, i, strict=True)]
    return {kind: res[kind] for kind in KINDS}


@dataclass
class AtlasTask:
    """The atlas as a sharded job (`lmscope.engine.sharded`): one shard per layer, holding the
    layer's top-k ids and scores of every kind; `merge` stacks them in layer order into the
    `NeuronTopK` that `decode_model` returns."""

    config: AtlasConfig
    layers: tuple[int, ...]
    kind: str = "atlas"

    def identity(self) -> dict:
        c = self.config
        return {"k": c.k, "kinds": list(c.kinds), "layers": list(self.layers), "search": c.describe()}

    def plan(self) -> list[dict]:
        return [{"layer": L} for L in self.layers]

    def run(self, model: Model, shard: dict) -> dict[str, Tensor]:
        out = {}
        for kind, (i, v) in decode_layer(model, shard["layer"], self.config).items():
            out[f"{kind}.ids"], out[f"{kind}.scores"] = i, v
        return out

    def merge(self, model: Model, done) -> NeuronTopK:
        kinds = _kinds_for(model, self.config.kinds)
        res = NeuronTopK(layers=self.layers, seconds=sum(done.shard_seconds), search=self.config.describe(),
                         flops=decode_flops(model, self.config, len(self.layers)))
        parts = [t for _, t in done]
        for kind in kinds:
            res.ids[kind] = torch.stack([t[f"{kind}.ids"] for t in parts])
            res.scores[kind] = torch.stack([t[f"{kind}.scores"] for t in parts]).float()
        return res


def build_atlas(model: Model, config: AtlasConfig = AtlasConfig(), *, path: str | Path | None = None,
                progress: bool = False, notify: Callable[[str], None] | None = None, shards=None):
    """Decode the model and write the SQLite atlas (atomically). Returns the open `Atlas`.

    `progress` shows a tqdm bar; `notify` receives status lines (where, how long) for a
    person to read (see `decode_model`). `shards` (`lmscope.engine.sharded.ShardOptions`)
    decodes the layers as a resumable sharded job, in this process or on Ray workers."""
    from lmscope.neurons.atlas_db import Atlas, default_path, write_atlas

    path = Path(path) if path is not None else default_path(model)
    n_layers = model.n_layers if config.layers is None else len(config.layers)
    if notify is not None:
        notify(f"atlas: decoding {n_layers} layers x {model.d_mlp} neurons of {model.name} through the LM head "
               f"({', '.join(_kinds_for(model, config.kinds))}) into {path}")
    if shards is not None:
        from lmscope.engine.sharded import run_sharded

        task = AtlasTask(config, _layers(model, config.layers))
        table = task.merge(model, run_sharded(model, task, shards, progress=progress))
    else:
        table = decode_model(model, config, progress=progress, notify=notify)
    if notify is not None:
        notify(f"atlas: decoded in {table.seconds:.0f} s; writing the SQLite file {path}")
    write_atlas(path, model, table)
    return Atlas.open(path, model=model)


def load_atlas(model: Model, *, path: str | Path | None = None, build: bool = True, k: int = 20,
               progress: bool = False, notify: Callable[[str], None] | None = None):
    """The atlas of `model` at `path` (default: the cache), built on first use when `build`
    (`progress`, `notify`: see `build_atlas`)."""
    from lmscope.engine.errors import ArtifactError
    from lmscope.neurons.atlas_db import Atlas, default_path

    path = Path(path) if path is not None else default_path(model)
    if path.is_file():
        return Atlas.open(path, model=model)
    if not build:
        raise ArtifactError(f"No atlas at {path}; build it with `lmscope atlas build {model.name}`.")
    log.info("No atlas for %s at %s: building it (once)", model.name, path)
    if notify is not None:
        notify(f"atlas: none for {model.name} at {path} yet; building it once (later runs read it in a moment)")
    return build_atlas(model, AtlasConfig(k=k), path=path, progress=progress, notify=notify)


# ---- comparing two models of one architecture -----------------------------------------------

def _top1(src, kinds: Sequence[str], layers: Sequence[int] | None, progress: bool) -> tuple[dict, dict, list]:
    """kind -> top-1 ids [n_layers, d_mlp], the dims of `src` (a Model, an Atlas or a path),
    and the layers covered."""
    from lmscope.neurons.atlas_db import Atlas

    if isinstance(src, (str, Path)):
        with Atlas.open(src) as atlas:
            return _top1(atlas, kinds, layers, progress)
    if isinstance(src, Atlas):
        have = [k for k in kinds if k in src.meta["kinds"]]
        return {k: src.top1(k, layers) for k in have}, src.dims(), list(layers or src.meta["layers"])
    table = decode_model(src, AtlasConfig(k=1, kinds=tuple(kinds), layers=tuple(layers) if layers else None),
                         progress=progress)
    dims = {"name": src.name, "n_layers": src.n_layers, "d_mlp": src.d_mlp, "d_vocab": src.d_vocab,
            "d_model": src.d_model}
    return {k: v[..., 0] for k, v in table.ids.items()}, dims, list(table.layers)


def compare_atlases(a, b, *, kinds: Sequence[str] = ("in_gate", "in_up", "out"),
                    layers: Sequence[int] | None = None, progress: bool = False) -> dict:
    """Share of neurons whose top token is the same in two models of one architecture.

    Args:
        a, b: Models (decoded now, top-1 only) or `Atlas` objects / SQLite paths.
        kinds: Which weight kinds to compare (`in_gate` is skipped when either is ungated).
        layers: Restrict to these layers (None: all).

    Returns:
        {"a", "b", "n_neurons", "kinds": {kind: {"overall": share, "per_layer": [share, ...]}},
         "layers": [...]}. Shares are in [0, 1].
    """
    ta, da, la = _top1(a, kinds, layers, progress)
    tb, db, lb = _top1(b, kinds, layers, progress)
    for key in ("n_layers", "d_mlp", "d_vocab"):
        if da[key] != db[key]:
            raise InputError(f"Cannot compare {da['name']} and {db['name']}: {key} differs ({da[key]} vs "
                             f"{db[key]}); compare models of one architecture and tokenizer.")
    common = [k for k in kinds if k in ta and k in tb]
    if la != lb:
        raise InputError(f"The two sides cover different layers ({la} vs {lb}); pass layers=[...] to compare.")
    if not common:
        raise InputError(f"None of the kinds {list(kinds)} was decoded in both atlases.")
    out = {"a": da["name"], "b": db["name"], "kinds": {}}
    for kind in common:
        x, y = ta[kind], tb[kind]
        same = (x == y).float()  # [n_layers, d_mlp]
        out["kinds"][kind] = {"overall": float(same.mean()), "per_layer": same.mean(1).tolist()}
        out["n_neurons"] = int(same.numel())
    out["layers"] = la
    return out


def perturb_mlp(model: Model, *, noise: float, seed: int = 0) -> Model:
    """A copy of `model` whose MLP weights (gate, up, down of every layer) get Gaussian noise of
    `noise` x each matrix's standard deviation. The original model is not touched."""
    return perturbed_mlp(model, noise=noise, seed=seed)

