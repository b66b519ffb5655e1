"""Neuron figures: max-activating examples as a self-contained HTML page, the ablation curve
(top-k vs random neurons), the dose-response line with the natural range shaded, the clamping
experiment's arms, and the agreement of two neuron atlases."""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._mpl import pyplot, save, save_text

if TYPE_CHECKING:
    from lmscope.neurons.causal import CurveResult, DoseResponse
    from lmscope.neurons.clamp import ClampReport


def _colour(a: float, scale: float) -> str:
    """Orange for positive activations, blue for negative, alpha ~ |a| / scale."""
    alpha = 0.0 if scale <= 0 else min(abs(a) / scale, 1.0)
    rgb = "255,140,0" if a >= 0 else "60,120,255"
    return f"rgba({rgb},{alpha:.3f})"


def _histogram_svg(hist: dict | None) -> str:
    """Inline SVG bars of {"edges": [..], "counts": [..]} (edges in activation units)."""
    if not hist or not hist.get("counts"):
        return ""
    counts, edges = hist["counts"], hist["edges"]
    top = max(counts) or 1
    w, h, n = 560, 90, len(counts)
    bars = "".join(
        f'<rect x="{i * w / n:.1f}" y="{h - h * math.log1p(c) / math.log1p(top):.1f}" width="{max(w / n - 1, 1):.1f}" '
        f'height="{h * math.log1p(c) / math.log1p(top):.1f}" fill="#e08a1e"><title>{edges[i]:.3g}..{edges[i + 1]:.3g}: '
        f'{c}</title></rect>' for i, c in enumerate(counts))
    return (f'<figure><svg width="{w}" height="{h + 14}" role="img">{bars}'
            f'<text x="0" y="{h + 12}" font-size="10">{edges[0]:.3g}</text>'
            f'<text x="{w}" y="{h + 12}" font-size="10" text-anchor="end">{edges[-1]:.3g}</text></svg>'
            '<figcaption>activation histogram (log counts, hover a bar)</figcaption></figure>')


def examples_html(title: str, examples: Sequence[dict], *, stats: dict | None = None,
                  decoding: dict | None = None, hist: dict | None = None) -> str:
    """A self-contained HTML page: every token of every example coloured by the neuron's
    activation (hover for the value), with statistics and the LM-head decoding when given.

    Args:
        title: Page title (the neuron).
        examples: `Example.to_dict()` rows (tokens, acts, max_act, max_index).
        stats: `NeuronRecording.neuron_stats` output.
        decoding: `lmscope.neurons.atlas.decode_neuron` output ({kind: [(token, score)]}).
        hist: {"edges", "counts"} for an activation histogram.
    """
    scale = max((abs(a) for e in examples for a in e["acts"]), default=1.0) or 1.0
    rows = []
    for i, e in enumerate(examples, 1):
        spans = []
        for j, (t, a) in enumerate(zip(e["tokens"], e["acts"], strict=True)):
            cls = ' class="max"' if j == e["max_index"] else ""
            spans.append(f'<span{cls} style="background:{_colour(a, scale)}" title="{a:.4g}">{html.escape(t)}</span>')
        rows.append(f'<tr><td class="n">{i}</td><td class="n">{e["max_act"]:.3f}</td><td class="ctx">{"".join(spans)}</td></tr>')
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if stats:
        q = stats.get("quantiles", {})
        cells = [("tokens", stats.get("count")), ("mean", stats.get("mean")), ("std", stats.get("std")),
                 ("share &gt; 0", stats.get("share_positive")), ("max", stats.get("max")), ("min", stats.get("min"))]
        cells += [(f"q{k}", v) for k, v in q.items()]
        parts.append('<table class="stats"><tr>' + "".join(f"<th>{k}</th>" for k, _ in cells) + "</tr><tr>"
                     + "".join(f"<td>{v:.4g}</td>" if isinstance(v, float) else f"<td>{v}</td>" for _, v in cells)
                     + "</tr></table>")
    parts.append(_histogram_svg(hist))
    if decoding:
        for kind, toks in decoding.items():
            if toks:
                items = " ".join(f'<code title="{s:.3g}">{html.escape(t)}</code>' for t, s in toks)
                parts.append(f"<p><b>{html.escape(kind)}</b>: {items}</p>")
    parts.append('<table class="ex"><tr><th>#</th><th>max</th><th>context (orange: positive, blue: negative)</th></tr>'
                 + "".join(rows) + "</table>")
    data = json.dumps({"title": title, "examples": list(examples), "stats": stats}, default=str)
    style = ("body{font-family:system-ui,sans-serif;margin:1.5em;max-width:70em}"
             "td.ctx{font-family:ui-monospace,monospace;white-space:pre-wrap}td.ctx span{border-radius:2px}"
             "span.max{outline:1px solid #333}td.n{text-align:right;padding-right:.8em;color:#555}"
             "table.stats td,table.stats th{padding:0 .6em;text-align:right}code{background:#eee;padding:0 .2em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}"
            f"<script type='application/json' id='data'>{html.escape(data, quote=False)}</script></body></html>")


def write_examples_html(path: str | os.PathLike, title: str, examples: Sequence[dict], **kw) -> Path:
    """Write `examples_html` to a file; returns the path."""
    return save_text(examples_html(title, examples, **kw), path)


_plt = pyplot


def plot_ablation_curve(curve: CurveResult | dict, path: str | os.PathLike, *, title: str = "") -> Path:
    """Two panels over k: change of the logit difference, and judgement / top-1 flip rates, for
    the top-k ranked neurons (solid) and k random neurons (dashed, band = +-1 std). `curve` is
    a `CurveResult` or its `to_dict()`."""
    plt = _plt()
    curve = curve if isinstance(curve, dict) else curve.to_dict()
    ks = curve["ks"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    panels = [("delta_ld", "delta logit difference"), ("flip", "share of prompts flipped")]
    for ax, (key, label) in zip(axes, panels, strict=True):
        series = [("judgement_flip_rate", "judgement (LD sign)", "C0"), ("top1_flip_rate", "top-1 token", "C1")] \
            if key == "flip" else [("delta_ld", "delta LD", "C0")]
        for k_name, name, colour in series:
            top = [e.get(k_name) for e in curve["top"]]
            if any(v is None for v in top):
                continue
            rnd = [r.get(k_name, {"mean": math.nan, "std": 0.0}) for r in curve["random"]]
            mean = [r["mean"] for r in rnd]
            std = [r["std"] for r in rnd]
            ax.plot(ks, top, "o-", color=colour, label=f"top-k: {name}")
            ax.plot(ks, mean, "s--", color=colour, alpha=0.7, label=f"random: {name}")
            ax.fill_between(ks, [m - s for m, s in zip(mean, std, strict=True)],
                            [m + s for m, s in zip(mean, std, strict=True)], color=colour, alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("neurons ablated (k)")
        ax.set_ylabel(label)
        ax.axhline(0, color="grey", lw=0.6)
        ax.legend(fontsize=7)
    fig.suptitle(title or f"{curve['method']} ablation of the top-k neurons vs {curve['n_random']} random draws")
    return save(fig, path)


def plot_dose(dose: DoseResponse | dict, path: str | os.PathLike, *, title: str = "") -> Path:
    """p(target) (and p(baseline)) against the value the neurons are set to; the natural
    activation range (1st-99th percentile) is shaded, the clean run dotted. `dose` is a
    `DoseResponse` or its `to_dict()`."""
    plt = _plt()
    dose = dose if isinstance(dose, dict) else dose.to_dict()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    v = dose["values"]
    nat = dose["natural"]
    ax.axvspan(nat["q01"], nat["q99"], color="grey", alpha=0.18, label="natural range (q01-q99)")
    ax.axvline(nat["q50"], color="grey", lw=0.8, ls=":")
    ax.plot(v, dose["p_target"], "o-", color="C0", label=f"p({dose['target']!r})")
    ax.axhline(dose["clean_p_target"], color="C0", ls=":", lw=1)
    if dose.get("p_baseline") is not None:
        ax.plot(v, dose["p_baseline"], "s-", color="C1", label=f"p({dose['baseline']!r})")
        ax.axhline(dose["clean_p_baseline"], color="C1", ls=":", lw=1)
    ax.set_xlabel("activation value set")
    ax.set_ylabel("mean probability at the last token")
    names = ", ".join(f"{L}.{n}" for L, n in dose["neurons"][:4]) + (" ..." if len(dose["neurons"]) > 4 else "")
    ax.set_title(title or f"dose-response of neuron {names} (positions {dose['positions']})", fontsize=10)
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_clamp(report: ClampReport, path: str | os.PathLike) -> Path:
    """Per arm (baseline, clamped, control): the share of generations with a keyword, and the
    concept tokens' next-token probability over the baseline's (log scale)."""
    plt = _plt()
    names = list(report.arms)
    colours = ["grey", "tab:red", "tab:blue"][: len(names)]
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.8))
    axes[0].bar(names, [report.arms[n].concept_rate or 0.0 for n in names], color=colours)
    axes[0].set_ylim(0, 1)
    axes[0].set_title("concept in generations", fontsize=9)
    axes[1].bar(names, [report.ratio(n) or 0.0 for n in names], color=colours)
    axes[1].set_yscale("log")
    axes[1].set_title("p(concept token next) / baseline", fontsize=9)
    return save(fig, path)


def plot_atlas_comparison(result: dict, path: str | os.PathLike) -> Path:
    """`lmscope.neurons.atlas.compare_atlases` output: the share of neurons with the same top
    token per layer, one line per kind."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for kind, r in result["kinds"].items():
        ax.plot(result["layers"], r["per_layer"], marker="o", ms=3, label=f"{kind} (overall {r['overall']:.2f})")
    ax.set_xlabel("layer")
    ax.set_ylabel("same top token")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{result['a']} vs {result['b']}", fontsize=9)
    ax.legend(fontsize=8)
    return save(fig, path)
