"""What one neuron does, part 1: record a neuron's activations over a corpus, its statistics
and max-activating examples, and which neurons correlate with a labelled behaviour.

    rec = record(model, "layers.5.mlp.neurons", corpus=None, config=RecordConfig(max_tokens=100_000))
    rec.neuron_stats(5, 123)          # mean, std, share > 0, max, quantiles
    rec.examples(5, 123, model.tokenizer)   # top-k contexts, each token with its activation
    rec.save("l5.safetensors", model); NeuronRecording.load("l5.safetensors", model=model)

A neuron is a unit of `layers.L.mlp.neurons` (the input of the down projection,
act(gate) * up), or of the pre-activations `mlp.gate` / `mlp.up`. Recording uses
`logits=None` runs, so a forward stops after the last recorded layer. Correlation with a
labelled behaviour lives in `lmscope.neurons.correlation`; causal tools (ablation, attribution,
dose-response) in `lmscope.neurons.causal`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from lmscope.datasets.corpus import TokenWindows, read_texts, token_windows
from lmscope.engine.errors import InputError, SiteError
from lmscope.engine.grammar import parse_layers
from lmscope.engine.grammar import parse_neurons as parse_neuron_spec
from lmscope.engine.model import Model
from lmscope.engine.progress import bar as progress_bar
from lmscope.engine.results import Result, Table
from lmscope.engine.sharded import ShardOptions
from lmscope.engine.sites import Site
from lmscope.neurons.stats import NeuronStats, TopContexts

log = logging.getLogger(__name__)

NEURON_KINDS = ("mlp.neurons", "mlp.gate", "mlp.up")
DEFAULT_QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99, 0.999)
_KIND_ALIASES = {"neurons": "mlp.neurons", "gate": "mlp.gate", "up": "mlp.up"}


def neuron_kind(kind: str) -> str:
    """'neurons' / 'gate' / 'up' (or the full 'mlp.*' name) -> the site kind."""
    full = _KIND_ALIASES.get(kind, kind)
    if full not in NEURON_KINDS:
        raise SiteError(f"Unknown neuron kind {kind!r}; expected one of neurons, gate, up.")
    return full


def parse_neurons(model: Model, spec: str) -> list[tuple[int, int]]:
    """'L.N[,L.N...]' or 'layers.L.mlp.neurons[N,M]' (the engine's grammar) -> [(layer, neuron)],
    checked against `model` (negative indices resolved)."""
    out = []
    for layer, n in parse_neuron_spec(spec):
        site = model.site(f"layers.{layer}.mlp.neurons[{n}]")
        out.append((site.layer, site.units[0]))
    return out


def neuron_sites(model: Model, layers: Sequence[int] | str | None = None, *, kind: str = "neurons",
                 units: Sequence[int] | None = None) -> list[str]:
    """Site names for `layers` (ints, or the layer grammar: 'all', '3,5', '4:12'; None = all) of
    one neuron kind."""
    kind = neuron_kind(kind)
    layers = parse_layers(layers, model.n_layers)
    if layers is None:
        layers = range(model.n_layers)
    sel = "" if units is None else "[" + ",".join(map(str, units)) + "]"
    return [s.name for L in layers for s in model.sites(f"layers.{L}.{kind}{sel}")]


@dataclass(frozen=True, kw_only=True)
class RecordConfig:
    """How to record.

    Attributes:
        window: Tokens per window, the tokenizer's prefix (BOS) included.
        batch_size: Windows per forward.
        max_tokens: Stop after this many text tokens (None: the whole corpus).
        top_k: Max-activating windows kept per neuron.
        before: Context tokens kept before each maximum.
        after: Context tokens kept after it.
        octave_bins: Histogram bins per power of two (a power of two; 16 -> 801 bins per neuron,
            3.1-6.3% wide; memory n_neurons x 801 x 4 bytes).
        shard_tokens: About this many tokens per shard of a sharded run (whole batches).
    """

    window: int = 64
    batch_size: int = 16
    max_tokens: int | None = None
    top_k: int = 20
    before: int = 12
    after: int = 4
    octave_bins: int = 16
    shard_tokens: int = 32768

    def __post_init__(self) -> None:
        for name in ("window", "batch_size", "top_k", "octave_bins", "shard_tokens"):
            if getattr(self, name) < 1:
                raise InputError(f"RecordConfig.{name} must be at least 1, got {getattr(self, name)}.")
        if self.before < 0 or self.after < 0:
            raise InputError("RecordConfig.before/after must be >= 0.")
        if self.octave_bins & (self.octave_bins - 1):
            raise InputError(f"RecordConfig.octave_bins must be a power of two, got {self.octave_bins}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InputError(f"RecordConfig.max_tokens must be at least 1, got {self.max_tokens}.")


@dataclass
class SiteRecord:
    """Statistics and top contexts of the units of one site."""

    site: Site
    units: Tensor  # [n] neuron indices
    stats: NeuronStats
    top: TopContexts


@dataclass
class Example:
    """One max-activating context: tokens and the neuron's activation on each."""

    tokens: list[str]
    acts: list[float]
    max_act: float
    max_index: int  # index of the maximum in `tokens`
    window: int  # window index in the recording's corpus
    pos: int  # token index of the maximum among the window's text tokens

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NeuronRecording(Result):
    """A recording of neuron activations over a corpus (see `record`)."""

    model: str
    config: RecordConfig
    sites: dict[str, SiteRecord]
    n_tokens: int
    n_windows: int
    seconds: float
    corpus: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else float("nan")

    def find(self, layer: int, neuron: int, kind: str = "neurons") -> tuple[SiteRecord, int]:
        """The site record holding a neuron and its column there."""
        kind = neuron_kind(kind)
        for rec in self.sites.values():
            if rec.site.kind == kind and rec.site.layer == layer:
                hit = (rec.units == neuron).nonzero()
                if len(hit):
                    return rec, int(hit[0])
        have = ", ".join(self.sites) or "nothing"
        raise SiteError(f"The recording has no layers.{layer}.{kind}[{neuron}] (it holds {have}); record it first.")

    def neuron_stats(self, layer: int, neuron: int, kind: str = "neurons",
                     quantiles: Sequence[float] = DEFAULT_QUANTILES) -> dict:
        """mean, std, share_positive, max, min, count and quantiles of one neuron."""
        rec, j = self.find(layer, neuron, kind)
        s = rec.stats
        qv = s.quantiles(list(quantiles))[j]
        return {
            "site": f"layers.{layer}.{rec.site.kind}[{neuron}]", "count": s.count,
            "mean": float(s.mean[j]), "std": float(s.std[j]), "share_positive": float(s.share_positive[j]),
            "max": float(s.max[j]), "min": float(s.min[j]),
            "quantiles": {f"{q:g}": float(v) for q, v in zip(quantiles, qv, strict=True)},
        }

    def examples(self, layer: int, neuron: int, tokenizer, kind: str = "neurons", k: int | None = None) -> list[Example]:
        """The top-k contexts of a neuron, highest first (fewer when fewer windows were seen)."""
        rec, j = self.find(layer, neuron, kind)
        top = rec.top
        out = []
        for i in range(top.k if k is None else min(k, top.k)):
            v = float(top.vals[i, j])
            if v == float("-inf"):
                break
            ids, acts = top.ids[i, j].tolist(), top.acts[i, j].tolist()
            keep = [c for c, t in enumerate(ids) if t >= 0]
            centre = top.before
            out.append(Example(
                tokens=[tokenizer.decode([ids[c]]) for c in keep], acts=[acts[c] for c in keep], max_act=v,
                max_index=keep.index(centre), window=int(top.window[i, j]), pos=int(top.pos[i, j]),
            ))
        return out

    def summary(self) -> dict:
        """Counts and throughput (what `lmscope neuron record --json` prints)."""
        return {
            "model": self.model, "sites": list(self.sites), "n_neurons": sum(len(r.units) for r in self.sites.values()),
            "n_tokens": self.n_tokens, "n_windows": self.n_windows, "seconds": round(self.seconds, 3),
            "tokens_per_s": round(self.tokens_per_s, 1), "corpus": self.corpus, "config": asdict(self.config),
            **({"job": self.extra["job"]} if "job" in self.extra else {}),
        }

    def to_dict(self) -> dict:
        """`summary()`: counts and throughput (the statistics stay in the artifact, `save`)."""
        return self.summary()

    def table(self) -> Table:
        """One row per recorded site: its neurons and their activation range."""
        rows = [[name, r.site.kind, r.site.layer, len(r.units), float(r.stats.min.min()) if len(r.units) else None,
                 float(r.stats.max.max()) if len(r.units) else None] for name, r in self.sites.items()]
        s = self.summary()
        return Table(["site", "kind", "layer", "neurons", "min activation", "max activation"], rows,
                     title=f"{self.model}: {s['n_neurons']} neurons in {len(self.sites)} sites over {self.n_tokens} "
                           f"tokens in {self.seconds:.1f} s ({self.tokens_per_s:.0f} tokens/s)",
                     formats={"min activation": ".4g", "max activation": ".4g"})

    def save(self, path: str | os.PathLike, model: Model) -> Path:
        """Write a `neuron_recording` artifact (safetensors + sidecar; no pickling)."""
        from lmscope.engine.artifacts import save_artifact

        tensors, sites = {}, []
        for i, (name, rec) in enumerate(self.sites.items()):
            if len(rec.top.ids) and int(rec.top.ids.max()) >= 2**24:
                raise InputError("Token ids >= 2**24 cannot be stored exactly as float32.")
            tensors[f"s{i}.units"] = rec.units.float()
            for k, t in {**rec.stats.state(), **rec.top.state()}.items():
                tensors[f"s{i}.{k}"] = t
            sites.append({"name": name, "kind": rec.site.kind, "layer": rec.site.layer,
                          "stats": rec.stats.meta(), "top": rec.top.meta()})
        meta = {"method": "stream", "sites": sites, "config": asdict(self.config), "n_tokens": self.n_tokens,
                "n_windows": self.n_windows, "seconds": self.seconds, "corpus": self.corpus, **self.extra}
        return save_artifact(path, tensors, kind="neuron_recording", model=model, meta=meta)

    @classmethod
    def load(cls, path: str | os.PathLike, model: Model | None = None) -> NeuronRecording:
        """Read a recording; given a model, refuse one made for another model."""
        from lmscope.engine.artifacts import load_artifact

        t, side = load_artifact(path, kind="neuron_recording", model=model)
        sites = {}
        for i, s in enumerate(side["sites"]):
            sub = {k.split(".", 1)[1]: v for k, v in t.items() if k.startswith(f"s{i}.")}
            site = Site(s["kind"], s["layer"], None)
            sites[s["name"]] = SiteRecord(site, sub["units"].long(), NeuronStats.from_state(sub, s["stats"]),
                                          TopContexts.from_state(sub, s["top"]))
        return cls(model=side["model"], config=RecordConfig(**side["config"]), sites=sites,
                   n_tokens=side["n_tokens"], n_windows=side["n_windows"], seconds=side["seconds"],
                   corpus=side.get("corpus", ""))


def record(
    model: Model,
    sites: str | Sequence[str],
    corpus: str | os.PathLike | Sequence[str] | TokenWindows | None = None,
    *,
    config: RecordConfig = RecordConfig(),  # noqa: B008 - frozen
    progress: bool = False,
    shards: ShardOptions | None = None,
) -> NeuronRecording:
    """Record neuron activations over a corpus into streaming statistics and top contexts.

    Args:
        model: The wrapped model.
        sites: Neuron sites: `layers.L.mlp.neurons` (whole layer), `layers.L.mlp.gate[5,7]`
            (a unit selection), `layers.*.mlp.up` (every layer), or a list of them.
        corpus: Texts, a file/directory (see `lmscope.datasets.corpus`), prepared `TokenWindows`, or
            None for the shipped corpus.
        config: Window size, batch size, token budget, top-k and histogram settings.
        progress: Show a tqdm progress bar (tokens; shards for a sharded run).
        shards: Run as a sharded job (`lmscope.engine.sharded.ShardOptions`: a folder,
            in-process or on Ray workers, resumable); None: one pass in this process.

    Returns:
        A `NeuronRecording`; memory is O(neurons x (bins + top_k x context)), not O(tokens).
    """
    names = [sites] if isinstance(sites, str) else list(sites)
    resolved = [s for n in names for s in model.sites(n)]
    if not resolved:
        raise SiteError("No site to record; pass e.g. 'layers.5.mlp.neurons'.")
    for s in resolved:
        if s.kind not in NEURON_KINDS:
            raise SiteError(f"{s} is not a neuron site; record layers.L.mlp.neurons / mlp.gate / mlp.up.")
    if isinstance(corpus, TokenWindows):
        windows, desc = corpus, "token windows"
    else:
        desc = str(corpus) if isinstance(corpus, str | os.PathLike) else ("shipped corpus" if corpus is None
                                                                           else f"{len(corpus)} texts")
        windows = token_windows(model, read_texts(corpus), window=config.window, max_tokens=config.max_tokens)
    if shards is not None:
        return _record_sharded(model, resolved, windows, config, desc, shards, progress)
    t0 = time.perf_counter()
    with progress_bar(total=windows.n_tokens, unit="tok", desc="record", show=progress) as bar:
        recs = _record_span(model, resolved, windows, config, None, bar)
    seconds = time.perf_counter() - t0
    log.info("Recorded %d tokens in %.1f s", windows.n_tokens, seconds)
    return NeuronRecording(model.name, config, recs, windows.n_tokens, len(windows), seconds, desc)


def _empty_records(model: Model, resolved: Sequence[Site], config: RecordConfig, device) -> dict[str, SiteRecord]:
    recs = {}
    for s in resolved:
        units = torch.tensor(s.units) if s.units is not None else torch.arange(model.d_mlp)
        recs[s.name] = SiteRecord(
            s, units, NeuronStats(len(units), octave_bins=config.octave_bins, device=device),
            TopContexts(len(units), k=config.top_k, before=config.before, after=config.after, device=device))
    return recs


def _record_span(model: Model, resolved: Sequence[Site], windows: TokenWindows, config: RecordConfig,
                 span: tuple[int, int] | None, bar=None) -> dict[str, SiteRecord]:
    """Statistics and top contexts of windows span[0]..span[1]-1 (None: all)."""
    recs = _empty_records(model, resolved, config, model.device)
    for rows, batch, valid in windows.batches(config.batch_size, model.device, span=span):
        ids = batch.input_ids

        def reduce(name: str, x: Tensor, valid=valid, ids=ids, rows=rows) -> None:  # x: [b, t, n], as recorded
            rec = recs[name]
            rec.stats.update(x[valid].float())
            rec.top.update(x, valid, ids, rows)

        model.run(batch, capture=list(recs), positions="all", logits=None, on_capture=reduce)  # one block's x at a time
        if bar is not None:
            bar.update(int(valid.sum()))
    return recs


@dataclass
class RecordTask:
    """A recording as a sharded job (`lmscope.engine.sharded`): shards are runs of consecutive
    windows (a whole number of batches, so every forward is the one an unsharded run does),
    each writing its statistics and top contexts at full precision; `merge` adds them up."""

    sites: list[str]
    windows: TokenWindows
    config: RecordConfig
    kind: str = "neuron_recording"

    def identity(self) -> dict:
        return {"sites": self.sites, "config": asdict(self.config), "windows": self.windows.fingerprint(),
                "n_windows": len(self.windows)}

    def plan(self) -> list[dict]:
        return self.windows.spans(self.config.shard_tokens, self.config.batch_size)

    def _resolved(self, model: Model) -> list[Site]:
        return [s for name in self.sites for s in model.sites(name)]

    def run(self, model: Model, shard: dict) -> dict[str, Tensor]:
        recs = _record_span(model, self._resolved(model), self.windows, self.config, (shard["lo"], shard["hi"]))
        out = {}
        for i, rec in enumerate(recs.values()):
            for k, t in {**rec.stats.exact_state(), **rec.top.exact_state()}.items():
                out[f"s{i}.{k}"] = t
        return out

    def merge(self, model: Model, done, corpus: str = "") -> NeuronRecording:
        """The recording of the whole corpus from the job's shards (`ShardSet`), in plan order."""
        recs = _empty_records(model, self._resolved(model), self.config, model.device)
        c = self.config
        for _, t in done:
            for i, rec in enumerate(recs.values()):
                sub = {k.split(".", 1)[1]: v for k, v in t.items() if k.startswith(f"s{i}.")}
                rec.stats.merge(NeuronStats.from_exact_state(sub, octave_bins=c.octave_bins, device=model.device))
                rec.top.merge(TopContexts.from_exact_state(sub, before=c.before, after=c.after, device=model.device))
        extra = {"job": {"folder": str(done.folder), "shards": len(done), "ran": done.ran,
                         "shard_seconds": round(sum(done.shard_seconds), 3)}}
        return NeuronRecording(model.name, self.config, recs, self.windows.n_tokens, len(self.windows), done.seconds,
                               corpus, extra)


def _record_sharded(model, resolved, windows, config, desc, shards, progress) -> NeuronRecording:
    from lmscope.engine.sharded import run_sharded

    task = RecordTask([s.name for s in resolved], windows, config)
    t0 = time.perf_counter()
    done = run_sharded(model, task, shards, progress=progress)
    rec = task.merge(model, done, desc)
    rec.seconds = time.perf_counter() - t0
    return rec
