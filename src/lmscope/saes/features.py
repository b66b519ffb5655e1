"""What each latent of a sparse coder does on text: one streaming pass over a corpus.

    stats = feature_stats(model, coder, read_texts(None), max_tokens=100_000)
    stats.save(sae_folder, model=model)          # sae_folder/features.safetensors + its JSON sidecar
    stats = FeatureStats.load(sae_folder, model=model, coder=coder)
    stats.contexts(123, model.tokenizer)         # max-activating contexts of latent 123

Per latent i, over the text tokens of the corpus windows (the tokenizer's prefix, BOS, is
skipped as in `evaluation`), with f_i the latent's activation from `coder.encode` of the
coder's input site (`spec.site`: an SAE and a transcoder are read the same way):

    fires[i]     tokens with f_i > 0                 frequency = fires / n_tokens
    act_sum[i]   sum of f_i over them (float64)      mean when active = act_sum / fires
    max_act[i]   largest f_i (0 when it never fired)
    hist[i, b]   tokens with edges[b] <= f_i < edges[b + 1], f_i > 0 only
    top          the `top_n` windows with the largest f_i: one entry per window (its maximum,
                 so the examples are different texts), the window index, the token position
                 and the ids and activations of a context around it (`neurons.stats.TopContexts`)

"Active" is f_i > 0, as `evaluation` counts L0 and dead latents (only a BatchTopK coder whose
threshold is <= 0 can output a negative value; it is not counted).

Histogram bins: one fixed log-spaced grid for every latent, `octave_bins` per power of two from
2**E_MIN to 2**E_MAX (default 4: 112 bins, each 19% wider than the one before); values beyond
land in the edge bins (`max_act` stays exact). Latent activations span orders of magnitude
across latents and coders (raw units: Gemma's late residual norms are in the hundreds), so a
linear grid would need each latent's range first, that is a second pass; a log grid keeps the
same relative resolution for weak and strong latents, and histograms of two runs add.

Memory: only one batch's dense code [batch, pos, d_sae] exists at a time; the accumulators
are O(d_sae * (bins + top_n * context)) and live on the model's device during the pass. The
result holds CPU tensors.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from lmscope.datasets.corpus import token_windows
from lmscope.engine.artifacts import load_artifact, save_artifact
from lmscope.engine.errors import ArtifactError, InputError
from lmscope.engine.model import Model
from lmscope.engine.results import Result, Table
from lmscope.neurons.recording import Example
from lmscope.neurons.stats import TopContexts
from lmscope.saes.activations import dictionary_positions, ordinary, site_width
from lmscope.saes.coder import SparseCoder

log = logging.getLogger(__name__)

E_MIN, E_MAX = -12, 16  # histogram grid: 2**-12 .. 2**16 in the latent's units
STATS_FILE = "features.safetensors"
ARTIFACT_KIND = "sae_features"
DENSE = 0.1  # a latent active on more than this share of tokens is "dense" (as in `evaluation`)
_EXACT = 2**24  # float32 holds integers exactly below this


def log_edges(octave_bins: int) -> Tensor:
    """Histogram bin edges [n_bins + 1], float64: 2**E_MIN .. 2**E_MAX, `octave_bins` per octave."""
    n = (E_MAX - E_MIN) * octave_bins
    return torch.exp2(E_MIN + torch.arange(n + 1, dtype=torch.float64) / octave_bins)


def coder_fingerprint(coder: SparseCoder) -> list[float]:
    """A few weights of the first and last latents, to refuse statistics made with another coder."""
    w = [coder.W_enc.detach()[:4, [0, -1]].flatten(), coder.W_dec.detach()[[0, -1], :4].flatten()]
    return [round(float(x), 6) for x in torch.cat(w).float().cpu()]


@dataclass
class FeatureStats(Result):
    """Per-latent statistics of a coder over a corpus (see the module docstring).

    Attributes:
        fires: [d_sae] int64, tokens where the latent is active.
        act_sum: [d_sae] float64, sum of its activations there.
        max_act: [d_sae] float32, its largest activation (0 when it never fired).
        hist: [d_sae, n_bins] int64 counts of its positive activations on `edges`.
        edges: [n_bins + 1] float64 bin edges (`log_edges`).
        top: The top contexts (CPU): `top.vals` [top_n, d_sae] descending, `top.window`,
            `top.pos` (token index among the window's text tokens), `top.ids` / `top.acts`
            [top_n, d_sae, before + 1 + after] (id -1 outside the text).
        fingerprint: `coder_fingerprint` of the coder.
    """

    model: str
    site: str
    site_out: str
    kind: str
    arch: str
    d_sae: int
    n_tokens: int
    n_windows: int
    window: int
    fires: Tensor = field(repr=False)
    act_sum: Tensor = field(repr=False)
    max_act: Tensor = field(repr=False)
    hist: Tensor = field(repr=False)
    edges: Tensor = field(repr=False)
    top: TopContexts = field(repr=False)
    fingerprint: list[float] = field(repr=False)
    corpus: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    # ---- per latent -------------------------------------------------------------------------
    @property
    def frequency(self) -> Tensor:
        """[d_sae] share of tokens where each latent is active."""
        return (self.fires.double() / max(self.n_tokens, 1)).float()

    @property
    def mean_act(self) -> Tensor:
        """[d_sae] mean activation over the tokens where each latent is active (0 if never)."""
        return (self.act_sum / self.fires.clamp_min(1).double()).float()

    def check_feature(self, i: int) -> int:
        if not isinstance(i, int) or isinstance(i, bool) or not -self.d_sae <= i < self.d_sae:
            raise InputError(f"Feature {i!r} is out of range: this coder has {self.d_sae} latents "
                             f"(0..{self.d_sae - 1}).")
        return i % self.d_sae

    def histogram(self, i: int) -> dict:
        """Latent i's histogram over its occupied bins: {"edges": [bars + 1], "counts": [bars]}
        (empty lists for a latent that never fired)."""
        h = self.hist[self.check_feature(i)]
        occ = h.nonzero().flatten()
        if len(occ) == 0:
            return {"edges": [], "counts": []}
        lo, hi = int(occ[0]), int(occ[-1]) + 1
        return {"edges": self.edges[lo : hi + 1].tolist(), "counts": h[lo:hi].tolist()}

    def contexts(self, i: int, tokenizer, k: int | None = None) -> list[Example]:
        """Latent i's max-activating contexts, highest first; windows where it never fired are
        left out. `Example.pos` is the maximum's index among its window's text tokens."""
        i, top = self.check_feature(i), self.top
        out = []
        for r in range(top.k if k is None else min(k, top.k)):
            v = float(top.vals[r, i])
            if not v > 0:
                break
            ids, acts = top.ids[r, i].tolist(), top.acts[r, i].tolist()
            keep = [c for c, t in enumerate(ids) if t >= 0]
            texts = tokenizer.batch_decode([[ids[c]] for c in keep])
            out.append(Example(tokens=texts, acts=[acts[c] for c in keep], max_act=v,
                               max_index=keep.index(top.before), window=int(top.window[r, i]),
                               pos=int(top.pos[r, i])))
        return out

    def top_token_ids(self) -> tuple[Tensor, Tensor]:
        """The token at the maximum of every kept context: (ids [top_n, d_sae], active mask)."""
        return self.top.ids[:, :, self.top.before].long(), self.top.vals > 0

    def feature(self, i: int) -> dict:
        """Latent i's numbers as a dict."""
        i = self.check_feature(i)
        return {"feature": i, "fires": int(self.fires[i]), "frequency": float(self.frequency[i]),
                "max_act": float(self.max_act[i]), "mean_act": float(self.mean_act[i])}

    # ---- result -----------------------------------------------------------------------------
    def summary(self) -> dict:
        freq = self.frequency
        live = freq[freq > 0]
        q = live.log10().quantile(torch.tensor([0.1, 0.5, 0.9])).tolist() if len(live) else [math.nan] * 3
        return {"model": self.model, "site": self.site, "site_out": self.site_out, "kind": self.kind,
                "arch": self.arch, "d_sae": self.d_sae, "n_tokens": self.n_tokens, "n_windows": self.n_windows,
                "window": self.window, "top_n": self.top.k, "n_bins": len(self.edges) - 1,
                "dead_fraction": float((self.fires == 0).float().mean()),
                "dense_fraction": float((freq > DENSE).float().mean()),
                "log10_frequency_q10_q50_q90": q, "corpus": self.corpus, "seconds": self.seconds}

    def to_dict(self) -> dict:
        return self.summary()

    def table(self) -> Table:
        s = self.summary()
        q10, q50, q90 = s["log10_frequency_q10_q50_q90"]
        rows = [["tokens", s["n_tokens"]], ["windows", s["n_windows"]], ["latents", s["d_sae"]],
                ["dead (never active)", s["dead_fraction"]], [f"dense (> {DENSE:.0%} of tokens)", s["dense_fraction"]],
                ["log10 frequency, 10% / 50% / 90% of live latents", f"{q10:.2f} / {q50:.2f} / {q90:.2f}"]]
        where = self.site if self.site == self.site_out else f"{self.site} -> {self.site_out}"
        return Table(["statistic", "value"], rows, formats={"value": ".4g"},
                     title=f"latent statistics of the {self.kind} at {where} of {self.model}",
                     notes=[f"corpus: {self.corpus}"] if self.corpus else ())

    def tables(self) -> list[Table]:
        order = self.fires.argsort(descending=True)[:10].tolist()
        densest = Table(["feature", "frequency", "mean when active", "max"],
                        [[i, float(self.frequency[i]), float(self.mean_act[i]), float(self.max_act[i])] for i in order],
                        title="most frequent latents", formats={"frequency": ".3%", "mean when active": ".4g"})
        return [self.table(), densest]

    # ---- files ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, model: Model) -> Path:
        """Write `features.safetensors` (+ JSON sidecar) into the folder `path` (the coder's
        folder), or to `path` itself when it names a .safetensors file. Atomic; counts exact."""
        tensors = {**_split_count("fires", self.fires), **_split_count("hist", self.hist),
                   "act_sum": self.act_sum.float(), "act_sum_lo": (self.act_sum - self.act_sum.float().double()).float(),
                   "max_act": self.max_act, **self.top.state()}
        meta = {"site": self.site, "site_out": self.site_out, "coder_kind": self.kind, "arch": self.arch,
                "d_sae": self.d_sae, "n_tokens": self.n_tokens, "n_windows": self.n_windows, "window": self.window,
                "octave_bins": _octave_bins(self.edges), "e_min": E_MIN, "e_max": E_MAX, "top": self.top.meta(),
                "fingerprint": self.fingerprint, "corpus": self.corpus, "seconds": self.seconds, "extra": self.extra}
        return save_artifact(stats_file(path), tensors, kind=ARTIFACT_KIND, model=model, meta=meta)

    @classmethod
    def load(cls, path: str | os.PathLike, *, model: Model | None = None, coder: SparseCoder | None = None
             ) -> FeatureStats:
        """Read statistics written by `save`; with `model` / `coder`, refuse those of another
        model or coder (ArtifactError)."""
        file = stats_file(path)
        t, side = load_artifact(file, kind=ARTIFACT_KIND, model=model)
        try:
            bins = int(side["octave_bins"])
            if (side["e_min"], side["e_max"]) != (E_MIN, E_MAX):
                raise ArtifactError(f"{file} uses the histogram grid 2**{side['e_min']}..2**{side['e_max']}, "
                                    f"this lmscope 2**{E_MIN}..2**{E_MAX}; compute the statistics again.")
            stats = cls(
                model=side["model"], site=side["site"], site_out=side["site_out"], kind=side["coder_kind"],
                arch=side["arch"], d_sae=int(side["d_sae"]), n_tokens=int(side["n_tokens"]),
                n_windows=int(side["n_windows"]), window=int(side["window"]), fires=_join_count(t, "fires"),
                act_sum=t["act_sum"].double() + t["act_sum_lo"].double(), max_act=t["max_act"].float(),
                hist=_join_count(t, "hist"), edges=log_edges(bins), top=TopContexts.from_state(t, side["top"]),
                fingerprint=list(side["fingerprint"]), corpus=side.get("corpus", ""),
                seconds=float(side.get("seconds", 0.0)), extra=side.get("extra") or {})
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{file} is not a complete feature-statistics artifact (missing or bad {e}); "
                                "compute it again with feature_stats.") from None
        n = stats.d_sae
        if stats.fires.shape != (n,) or stats.hist.shape != (n, len(stats.edges) - 1) or stats.top.vals.shape[1] != n:
            raise ArtifactError(f"{file} holds tensors of the wrong shape for {n} latents; it is corrupt.")
        if coder is not None:
            stats.check_coder(coder, what=str(file), error=ArtifactError)
        return stats

    def check_coder(self, coder: SparseCoder, *, what: str = "These statistics",
                    error: type[Exception] = InputError) -> None:
        """Raise `error` unless the statistics were computed with `coder`."""
        if coder.d_sae != self.d_sae or coder_fingerprint(coder) != self.fingerprint:
            raise error(f"{what} were computed with another coder ({self.d_sae} latents at {self.site}), not "
                        f"{coder!r}; run feature_stats with this coder.")


def stats_file(path: str | os.PathLike) -> Path:
    """`path/features.safetensors` for a folder (the coder's), else `path` itself."""
    p = Path(path).expanduser()
    return p if p.suffix == ".safetensors" else p / STATS_FILE


def _split_count(name: str, x: Tensor) -> dict[str, Tensor]:
    """Integer counts as two float32 tensors, exact up to 2**48 (artifacts hold float32)."""
    x = x.long().cpu()
    return {name: torch.div(x, _EXACT, rounding_mode="floor").float(), f"{name}_lo": (x % _EXACT).float()}


def _join_count(t: dict[str, Tensor], name: str) -> Tensor:
    return t[name].long() * _EXACT + t[f"{name}_lo"].long()


def _octave_bins(edges: Tensor) -> int:
    return (len(edges) - 1) // (E_MAX - E_MIN)


def input_site(model: Model, coder: SparseCoder) -> str:
    """The site the coder encodes, checked against the model (width included)."""
    spec = coder.cfg
    if not spec.site:
        raise InputError(f"{coder!r} does not say where it reads; load it with site='layers.L.resid_post' (or "
                         "the site it was trained on).")
    site = model.site(spec.site).name
    width = site_width(model, site)
    if width != coder.d_in:
        raise InputError(f"{coder!r} reads {coder.d_in} values but {site} of {model.name} has {width}; "
                         "it was made for another model or site.")
    return site


@torch.no_grad()
def feature_stats(model: Model, coder: SparseCoder, texts: Sequence[str], *, max_tokens: int | None = 100_000,
                  window: int = 64, top_n: int = 20, octave_bins: int = 4, batch_size: int = 8, before: int = 12,
                  after: int = 4, corpus_label: str = "", progress: bool = False) -> FeatureStats:
    """Frequency, mean and max activation, histogram and top contexts of every latent.

    Args:
        model: The model the coder belongs to.
        coder: An SAE or transcoder; it is encoded from `spec.site` (never modified: a copy
            moves to the model's device when it lives elsewhere).
        texts: Documents (`lmscope.datasets.corpus.read_texts`).
        max_tokens: Text tokens to read (None: all of `texts`).
        window: Tokens per window, the tokenizer's prefix included.
        top_n: Max-activating windows kept per latent.
        octave_bins: Histogram bins per power of two (see the module docstring).
        batch_size: Windows per forward; one batch's [batch, window, d_sae] code is dense.
        before / after: Context tokens kept around each maximum.
        corpus_label: A description of `texts`, kept in the result.
        progress: Show a tqdm bar over the batches.
    """
    from tqdm.auto import tqdm

    for name, v in (("top_n", top_n), ("octave_bins", octave_bins), ("batch_size", batch_size)):
        if not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive integer, got {v!r}.")
    if before < 0 or after < 0:
        raise InputError(f"before and after must be >= 0, got {before}, {after}.")
    spec = coder.cfg
    site = input_site(model, coder)
    dev = model.device
    enc = coder if coder.W_enc.device == dev else copy.deepcopy(coder).to(dev)
    windows = token_windows(model, texts, window=window, max_tokens=max_tokens)
    edges = log_edges(octave_bins)
    inner = edges[1:-1].to(dev)  # bucketize -> 0 .. n_bins - 1, the edge bins open-ended
    n_bins, d_sae = len(edges) - 1, coder.d_sae
    fires = torch.zeros(d_sae, dtype=torch.long, device=dev)
    act_sum = torch.zeros(d_sae, dtype=torch.float64, device=dev)
    max_act = torch.zeros(d_sae, device=dev)
    hist = torch.zeros(d_sae * n_bins, dtype=torch.int32, device=dev)  # int32: < 2**31 per bin
    top = TopContexts(d_sae, k=top_n, before=before, after=after, device=dev)
    n_tokens, t0 = 0, time.perf_counter()
    bar = tqdm(total=len(windows), desc=f"features {site}", unit="window", disable=not progress)
    try:
        for rows, batch, valid in windows.batches(batch_size, dev):
            valid = dictionary_positions(valid, windows.n_prefix)
            x = model.run(batch, capture=[site], logits=None).cache[site]  # [b, t, d_in]
            valid = ordinary(valid, x)
            f = enc.encode(x).float().masked_fill(~valid[..., None], 0.0)  # [b, t, d_sae]
            pos = f.flatten(0, 1).clamp_min(0.0)  # [b*t, d_sae]; padding and prefix are 0
            fires += (pos > 0).sum(0)
            act_sum += pos.sum(0, dtype=torch.float64)
            torch.maximum(max_act, pos.amax(0), out=max_act)
            tok, lat = pos.nonzero(as_tuple=True)
            b = torch.bucketize(pos[tok, lat].double(), inner, right=True)
            hist.index_add_(0, lat * n_bins + b, torch.ones_like(b, dtype=torch.int32))
            top.update(f, valid, batch.input_ids, rows)
            n_tokens += int(valid.sum())
            bar.update(len(rows))
    finally:
        bar.close()
    cpu_top = TopContexts.from_state(top.state(), top.meta())
    return FeatureStats(
        model=model.name, site=site, site_out=spec.site_out or site, kind=spec.kind, arch=spec.arch, d_sae=d_sae,
        n_tokens=n_tokens, n_windows=len(windows), window=window, fires=fires.cpu(), act_sum=act_sum.cpu(),
        max_act=max_act.cpu(), hist=hist.view(d_sae, n_bins).long().cpu(), edges=edges, top=cpu_top,
        fingerprint=coder_fingerprint(coder), corpus=corpus_label, seconds=time.perf_counter() - t0)
