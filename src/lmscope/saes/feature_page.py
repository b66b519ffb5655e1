"""One latent's page: where it fires, what it writes, and who else writes the same way.

    page = feature_page(model, coder, stats, 123)
    page.tables()                      # the terminal tables
    print(page.to_text(color=True))    # contexts coloured by activation (ANSI, via rich)
    Path("f123.html").write_text(page.to_html())

The page holds:
    contexts          the max-activating contexts of `stats` (tokens and per-token activations)
    histogram         its activation histogram (log-spaced bins, `features.log_edges`)
    promoted          its decoder row read through the LM head, as `neurons.atlas` reads a neuron's
    suppressed        output weights: `to_token_space(W_dec[i] / s_out) @ W_U`; top and bottom
                      tokens. Only for a coder that writes the residual stream (output site
                      resid_*, attn_out or mlp_out; a transcoder writes to `site_out`)
    nearest_neurons   the MLP neurons of the output site's layer whose output weights (rows of
                      `model.weights.W_out(L)`) have the largest |cosine| with the decoder row,
                      signed (a neuron with cos -0.9 writes the opposite direction when it fires
                      positively), with their atlas tokens when an atlas is at hand
    nearest_features  the other latents with the largest decoder cosine
"""

from __future__ import annotations

import html
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from lmscope.engine.errors import ArtifactError, InputError
from lmscope.engine.model import Model
from lmscope.engine.results import Result, Table, jsonable
from lmscope.engine.sites import RESID_KINDS
from lmscope.neurons.atlas import to_token_space, topk_rows
from lmscope.neurons.recording import Example
from lmscope.saes.coder import SparseCoder
from lmscope.saes.features import FeatureStats

log = logging.getLogger(__name__)

ATLAS_TOKENS = 5  # atlas tokens shown per nearest neuron


# ---- decoding ---------------------------------------------------------------------------------
def writes_residual(model: Model, coder: SparseCoder) -> bool:
    """True when the coder's output is a residual-stream write (resid_*, attn_out, mlp_out) of
    the model's width: its decoder rows can be read through the LM head and compared with neurons."""
    out = coder.cfg.site_out
    return bool(out) and model.site(out).kind in RESID_KINDS and coder.d_out == model.d_model


def directions(coder: SparseCoder, features: Tensor | Sequence[int] | None = None) -> Tensor:
    """Decoder rows in raw output units, `feature_direction` of each: [n, d_out] float32."""
    w = coder.W_dec.detach() if features is None else coder.W_dec.detach()[torch.as_tensor(features)]
    return w.float() / coder.scale_out.float()


def decode_features(model: Model, coder: SparseCoder, features: Tensor | Sequence[int] | None = None, *,
                    k: int = 10, largest: bool = True, chunk_mib: int = 256) -> tuple[Tensor, Tensor]:
    """Top-k LM-head tokens of decoder rows: (ids [n, k], scores [n, k]) on the CPU, best first.

    Scores are `to_token_space(direction) @ W_U` (the final norm linearised, as the neuron atlas
    decodes output weights); `largest=False` gives the most suppressed tokens. Rows go through in
    chunks of at most `chunk_mib` MiB of scores.
    """
    if not writes_residual(model, coder):
        raise InputError(f"{coder!r} does not write the residual stream (resid_*, attn_out, mlp_out of width "
                         f"{model.d_model}); its decoder rows have no LM-head reading.")
    idx = torch.arange(coder.d_sae) if features is None else torch.as_tensor(features).flatten()
    k = min(k, model.d_vocab)
    w_u = model.weights.W_U.detach().to(torch.float32)  # [d_model, d_vocab]
    chunk = max(1, chunk_mib * 2**20 // (4 * model.d_vocab))
    ids, vals = [], []
    with torch.inference_mode():
        for s in range(0, len(idx), chunk):
            scores = to_token_space(model, directions(coder, idx[s : s + chunk])) @ w_u  # [chunk, d_vocab]
            v, i = topk_rows(scores, k, largest=largest)
            ids.append(i.cpu())
            vals.append(v.float().cpu())
    return torch.cat(ids), torch.cat(vals)


def nearest_features(coder: SparseCoder, i: int, k: int = 10) -> list[tuple[int, float]]:
    """The k other latents whose decoder rows have the largest cosine with latent i's."""
    w = coder.W_dec.detach().float()
    w = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cos = w @ w[i]
    cos[i] = -math.inf
    v, j = cos.topk(min(k, coder.d_sae - 1))
    return [(int(a), float(b)) for a, b in zip(j, v, strict=True)]


def nearest_neurons(model: Model, direction: Tensor, layer: int, k: int = 10) -> list[tuple[int, float]]:
    """The k neurons of `layer` whose output weights have the largest |cosine| with
    `direction` [d_model]: [(neuron, signed cosine)]."""
    w = model.weights.W_out(layer).detach().float()  # [d_mlp, d_model]
    d = direction.detach().to(w.device, torch.float32)
    cos = (w @ d) / (w.norm(dim=-1) * d.norm()).clamp_min(1e-12)
    _, j = cos.abs().topk(min(k, len(cos)))
    return [(int(n), float(cos[n])) for n in j]


def _atlas_for(model: Model, atlas, notes: list[str]):
    """(Atlas or None, whether we opened it): the given one, a path, or the default file when
    it exists (one that does not match the model is skipped with a note)."""
    from lmscope.neurons.atlas_db import Atlas, default_path

    if isinstance(atlas, Atlas):
        return atlas, False
    path = Path(atlas) if atlas is not None else default_path(model)
    if atlas is None and not path.is_file():
        return None, False
    try:
        return Atlas.open(path, model=model), True
    except ArtifactError as e:
        if atlas is not None:
            raise
        notes.append(f"the atlas at {path} was not used: {e}")
        log.warning("Not using the atlas at %s: %s", path, e)
        return None, False


def _atlas_tokens(atlas, layer: int, neuron: int) -> list[str] | None:
    try:
        out = atlas.neuron(layer, neuron)["out"]
    except InputError:  # the atlas does not cover this layer
        return None
    return None if out is None else [t for t, _ in out[:ATLAS_TOKENS]]


# ---- the page -------------------------------------------------------------------------------------
@dataclass
class FeaturePage(Result):
    """Everything about one latent (see the module docstring).

    Attributes:
        contexts: Max-activating contexts, highest first (`neurons.recording.Example`).
        histogram: {"edges": [...], "counts": [...]} over its occupied log-spaced bins.
        promoted / suppressed: [(token, score)] from the LM head, None for a coder that does
            not write the residual stream.
        nearest_neurons: [{"layer", "neuron", "cosine", "atlas": [tokens] or None}], None when
            not computed.
        nearest_features: [{"feature", "cosine"}].
    """

    feature: int
    model: str
    site: str
    site_out: str
    kind: str
    n_tokens: int
    fires: int
    frequency: float
    max_act: float
    mean_act: float
    contexts: list[Example]
    histogram: dict
    promoted: list[tuple[str, float]] | None = None
    suppressed: list[tuple[str, float]] | None = None
    nearest_neurons: list[dict] | None = None
    nearest_features: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        where = self.site if self.site == self.site_out else f"{self.site} -> {self.site_out}"
        return f"feature {self.feature} of the {self.kind} at {where} of {self.model}"

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "contexts"}
        return jsonable({**d, "contexts": [e.to_dict() for e in self.contexts]})

    def table(self) -> Table:
        rows = [["tokens active", self.fires], ["frequency", self.frequency], ["mean when active", self.mean_act],
                ["max", self.max_act]]
        return Table(["statistic", "value"], rows, title=self.title, formats={"value": ".4g"},
                     notes=[f"of {self.n_tokens:,} corpus tokens", *self.notes])

    def tables(self) -> list[Table]:
        out = [self.table()]
        out.append(Table(["#", "activation", "window", "context (max token in [[ ]])"],
                         [[r, e.max_act, e.window, _plain_context(e)] for r, e in enumerate(self.contexts, 1)],
                         title="max-activating contexts", formats={"activation": ".4g"}))
        if self.promoted is not None:
            rows = [[p, ps, s, ss] for (p, ps), (s, ss) in zip(self.promoted, self.suppressed or [], strict=True)]
            out.append(Table(["promoted", "logit", "suppressed", "logit (suppressed)"], rows,
                             title="decoder row through the LM head",
                             formats={"logit": "+.3f", "logit (suppressed)": "+.3f"}))
        if self.nearest_neurons:
            out.append(Table(["neuron", "cosine", "atlas out tokens"],
                             [[f"{n['layer']}.{n['neuron']}", n["cosine"], " ".join(map(repr, n["atlas"] or []))]
                              for n in self.nearest_neurons],
                             title="nearest neurons (output weights)", formats={"cosine": "+.3f"}))
        out.append(Table(["feature", "cosine"], [[f["feature"], f["cosine"]] for f in self.nearest_features],
                         title="nearest features (decoder rows)", formats={"cosine": "+.3f"}))
        return out

    # ---- rendering ------------------------------------------------------------------------------
    def to_html(self) -> str:
        """A self-contained HTML page (no scripts, no external files); every text is escaped."""
        scale = self.max_act or 1.0
        rows = []
        for r, e in enumerate(self.contexts, 1):
            spans = "".join(
                f'<span{" class=m" if j == e.max_index else ""} style="background:rgba(230,110,20,'
                f'{min(max(a, 0.0) / scale, 1.0):.3f})" title="{a:.4g}">{html.escape(t)}</span>'
                for j, (t, a) in enumerate(zip(e.tokens, e.acts, strict=True)))
            rows.append(f"<tr><td>{r}</td><td>{e.max_act:.4g}</td><td>{e.window}:{e.pos}</td>"
                        f"<td class=ctx>{spans}</td></tr>")
        body = [f"<h1>{html.escape(self.title)}</h1>", _hist_svg(self.histogram),
                "<h2>max-activating contexts</h2><table><tr><th>#</th><th>max</th><th>window:token</th>"
                "<th>context (hover a token for its activation)</th></tr>" + "".join(rows) + "</table>"]
        body += [t.to_html() for t in self.tables() if t.title != "max-activating contexts"]
        style = ("body{font-family:system-ui,sans-serif;margin:1.5em;max-width:72em}td.ctx{font-family:ui-monospace,"
                 "monospace;white-space:pre-wrap}td.ctx span.m{outline:1px solid #333}td{padding:0 .5em}")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{style}</style></head><body>{''.join(body)}</body></html>")

    def to_text(self, *, color: bool = True, width: int = 120) -> str:
        """The tables and the contexts for a terminal; with `color`, ANSI colours (rich) shade
        each context token by its activation and underline the maximum (without: [[max]])."""
        from rich.console import Console
        from rich.table import Table as RichTable
        from rich.text import Text

        buf = io.StringIO()
        con = Console(file=buf, width=width, force_terminal=color, no_color=not color, highlight=False,
                      color_system="truecolor" if color else None)
        for t in self.tables():
            if t.title == "max-activating contexts":
                con.print(Text("max-activating contexts", style="bold"))
                for r, e in enumerate(self.contexts, 1):
                    con.print(_coloured(Text, e, r, self.max_act or 1.0) if color
                              else Text(f"{r:2d} {e.max_act:9.4g}  {_plain_context(e)}"))
                continue
            rt = RichTable(*map(str, t.columns), title=t.title)
            for row in t.text_rows():
                rt.add_row(*(Text(c) for c in row))  # Text: a token like "[red]" is not markup
            con.print(rt)
            for note in t.notes:
                con.print(Text(note))
        return buf.getvalue()


def _plain_context(e: Example) -> str:
    return "".join(f"[[{t}]]" if j == e.max_index else t for j, t in enumerate(e.tokens)).replace("\n", "\u21b5")


def _coloured(text_cls, e: Example, rank: int, scale: float):
    line = text_cls(f"{rank:2d} {e.max_act:9.4g}  ")
    for j, (tok, a) in enumerate(zip(e.tokens, e.acts, strict=True)):
        g = int(255 - 150 * min(max(a, 0.0) / scale, 1.0))  # white -> orange with the activation
        style = f"black on rgb(255,{g},{max(g - 100, 0) if a > 0 else 255})"
        line.append(tok.replace("\n", "\u21b5"), style=style + (" bold underline" if j == e.max_index else ""))
    return line


def _hist_svg(hist: dict) -> str:
    """Inline SVG bars of the log-spaced histogram (equal widths: the bins are log-spaced)."""
    counts, edges = hist.get("counts") or [], hist.get("edges") or []
    if not counts:
        return "<p>never active on the corpus</p>"
    w, h, n, top = 600, 100, len(counts), max(counts)
    bars = "".join(f'<rect x="{j * w / n:.1f}" y="{h - h * c / top:.1f}" width="{max(w / n - 1, 1):.1f}" '
                   f'height="{h * c / top:.1f}" fill="#e06e14"><title>{edges[j]:.3g} to {edges[j + 1]:.3g}: {c}'
                   "</title></rect>" for j, c in enumerate(counts))
    return (f'<figure><svg width="{w}" height="{h + 14}" role="img">{bars}<text x="0" y="{h + 12}" '
            f'font-size="10">{edges[0]:.3g}</text><text x="{w}" y="{h + 12}" font-size="10" text-anchor="end">'
            f"{edges[-1]:.3g}</text></svg><figcaption>activations when active (log-spaced bins)</figcaption></figure>")


def feature_page(model: Model, coder: SparseCoder, stats: FeatureStats, i: int, *, atlas=None, k: int = 10
                 ) -> FeaturePage:
    """The page of latent i.

    Args:
        model: The model.
        coder: The coder `stats` was computed with (checked).
        stats: From `feature_stats` (or `FeatureStats.load`).
        i: The latent (negative counts from the end).
        atlas: A `neurons.atlas_db.Atlas` or its path for the nearest neurons' tokens; None
            uses the model's default atlas file when it exists (never builds one).
        k: Tokens, neurons and features listed.
    """
    stats.check_coder(coder)
    i = stats.check_feature(i)
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}.")
    nb = stats.feature(i)
    page = FeaturePage(feature=i, model=stats.model, site=stats.site, site_out=stats.site_out, kind=stats.kind,
                       n_tokens=stats.n_tokens, fires=nb["fires"], frequency=nb["frequency"], max_act=nb["max_act"],
                       mean_act=nb["mean_act"], contexts=stats.contexts(i, model.tokenizer),
                       histogram=stats.histogram(i))
    page.nearest_features = [{"feature": j, "cosine": c} for j, c in nearest_features(coder, i, k)]
    if not writes_residual(model, coder):
        page.notes.append(f"{stats.site_out} is not a residual-stream write: no LM-head tokens or nearest neurons.")
        return page
    dec = model.tokenizer.batch_decode
    for name, largest in (("promoted", True), ("suppressed", False)):
        ids, vals = decode_features(model, coder, [i], k=k, largest=largest)
        setattr(page, name, list(zip(dec([[t] for t in ids[0].tolist()]), vals[0].tolist(), strict=True)))
    layer = model.site(stats.site_out).layer
    found, owned = _atlas_for(model, atlas, page.notes)
    try:
        page.nearest_neurons = [
            {"layer": layer, "neuron": n, "cosine": c, "atlas": _atlas_tokens(found, layer, n) if found else None}
            for n, c in nearest_neurons(model, directions(coder, [i])[0], layer, k)]
    finally:
        if owned:
            found.close()
    return page
