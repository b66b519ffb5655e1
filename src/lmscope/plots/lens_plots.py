"""Figures for the logit / tuned lens and the latent-language analysis.

Every function writes one file (PNG with matplotlib's Agg backend, or a self-contained HTML
page with its data inline) and returns its path. Inputs are the result objects of
`lmscope.lens.logit`, `lmscope.lens.tuned` and `lmscope.lens.latent`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ._mpl import literal_text, pyplot, save, save_text

if TYPE_CHECKING:
    from lmscope.lens.latent import LatentLanguageResult
    from lmscope.lens.logit import LensResult
    from lmscope.lens.tuned import LensComparison


_plt = pyplot


def _int_layers(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _short(tok: str, n: int = 8) -> str:
    t = tok.replace("\n", "\\n").replace("\t", "\\t")
    if not t.strip():  # make blank tokens visible
        t = t.replace(" ", "␣") or "∅"
    return t if len(t) <= n else t[: n - 1] + "…"


@literal_text
def plot_lens_heatmap(result: LensResult, path) -> Path:
    """Layers (rows, last on top) x positions: each cell's top token, coloured by its probability."""
    plt = _plt()
    probs = result.top_probs[:, :, 0].numpy()  # [layer, pos]
    n_layer, n_pos = probs.shape
    fig, ax = plt.subplots(figsize=(min(28, 1.2 + 0.95 * n_pos), min(30, 1.2 + 0.32 * n_layer)))
    im = ax.imshow(probs, aspect="auto", origin="lower", cmap="Blues", vmin=0, vmax=1)
    size = 7 if n_pos <= 16 else 5
    for li in range(n_layer):
        for p in range(n_pos):
            ax.text(p, li, _short(result.top_tokens[li][p][0]), ha="center", va="center", fontsize=size,
                    color="white" if probs[li, p] > 0.6 else "black")
    ax.set_xticks(range(n_pos), [_short(t, 10) for t in result.tokens], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n_layer), [str(x) for x in result.layers], fontsize=7)
    ax.set_xlabel("input position (token read)")
    ax.set_ylabel("layer (resid_post)")
    ax.set_title(f"{result.model}: {result.lens} lens, top-1 prediction per cell", fontsize=9)
    fig.colorbar(im, ax=ax, label="top-1 probability", fraction=0.03)
    return save(fig, path)


@literal_text
def plot_target_probs(result: LensResult, path, *, position: int = -1) -> Path:
    """Probability of each target token across layers at `position` (log scale), with its rank."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for j, t in enumerate(result.targets):
        ax.plot(result.layers, result.target_probs[:, position, j].numpy(), marker="o", ms=3, label=repr(t))
    ax.set_yscale("log")
    ax.set_ylim(bottom=max(1e-9, float(result.target_probs[:, position].min()) * 0.5) if result.targets else 1e-9,
                top=1.5)
    _int_layers(ax)
    ax.set_xlabel("layer (resid_post)")
    ax.set_ylabel(f"{result.lens}-lens probability")
    tok = result.tokens[position]
    ax.set_title(f"{result.model}: targets at position {position} ({tok!r})\n{result.prompt!r}", fontsize=9)
    ax.grid(alpha=0.3)
    if result.targets:
        ax.legend(fontsize=8)
    return save(fig, path)


_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>%(title)s</title>
<style>
body{font-family:system-ui,sans-serif;margin:16px;color:#222}
table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ddd;padding:2px 4px;text-align:center;white-space:pre;max-width:110px;overflow:hidden}
th{background:#f4f4f4;font-weight:600}
td.c{cursor:default}
#tip{position:fixed;display:none;background:#fff;border:1px solid #888;padding:6px 8px;font-size:12px;
 box-shadow:2px 2px 6px rgba(0,0,0,.2);pointer-events:none;white-space:pre}
</style></head><body>
<h3>%(title)s</h3>
<p>Rows: layers (resid_post, last on top); columns: input tokens. Each cell shows the lens's top
token at that layer and position, shaded by its probability; hover for the top-k and the KL to the
model's output.</p>
<div id="grid"></div><div id="tip"></div>
<script>
const D = %(data)s;
const esc = s => s.replace(/&/g,"&amp;").replace(/</g,"&lt;").replace(/>/g,"&gt;");
const show = s => JSON.stringify(s).slice(1,-1);
let h = "<table><tr><th>layer</th>";
D.tokens.forEach((t,p) => h += "<th>" + p + "<br>" + esc(show(t)) + "</th>");
h += "</tr>";
for (let li = D.layers.length - 1; li >= 0; li--) {
  h += "<tr><th>" + D.layers[li] + "</th>";
  for (let p = 0; p < D.tokens.length; p++) {
    const c = D.cells[li][p], q = c.top[0][1];
    const bg = "rgba(33,102,172," + q.toFixed(3) + ")", fg = q > 0.6 ? "#fff" : "#000";
    h += '<td class="c" data-l="' + li + '" data-p="' + p + '" style="background:' + bg + ';color:' + fg + '">'
       + esc(show(c.top[0][0])) + "</td>";
  }
  h += "</tr>";
}
document.getElementById("grid").innerHTML = h + "</table>";
const tip = document.getElementById("tip");
document.querySelectorAll("td.c").forEach(td => {
  td.onmousemove = e => {
    const c = D.cells[+td.dataset.l][+td.dataset.p];
    let s = "layer " + D.layers[+td.dataset.l] + ", position " + td.dataset.p + " (" + show(D.tokens[+td.dataset.p])
          + ")\\nKL to output: " + c.kl.toFixed(3) + " nats\\n";
    c.top.forEach((x,i) => s += (i+1) + ". " + show(x[0]) + "  " + x[1].toFixed(4) + "\\n");
    tip.textContent = s; tip.style.display = "block";
    tip.style.left = (e.clientX + 14) + "px"; tip.style.top = (e.clientY + 14) + "px";
  };
  td.onmouseleave = () => tip.style.display = "none";
});
</script></body></html>
"""


def lens_html(result: LensResult, path) -> Path:
    """A self-contained interactive page (no external scripts): the heatmap, hover = top-k."""
    def cell(li: int, p: int) -> dict:
        top = zip(result.top_tokens[li][p], result.top_probs[li, p], strict=True)
        return {"top": [[t, round(float(q), 5)] for t, q in top], "kl": round(float(result.kl[li, p]), 4)}

    cells = [[cell(li, p) for p in range(len(result.tokens))] for li in range(len(result.layers))]
    data = json.dumps({"tokens": result.tokens, "layers": result.layers, "cells": cells}, ensure_ascii=False)
    data = data.replace("</", "<\\/")  # a token like "</script>" must not end the script
    title = html.escape(f"{result.model}: {result.lens} lens of {result.prompt!r}")
    return save_text(_HTML % {"title": title, "data": data}, path)


@literal_text
def plot_kl_comparison(cmp: LensComparison, path) -> Path:
    """KL(final || lens) per layer, logit vs tuned lens (log scale, ±1.96 s.e. band). The last
    layer is left out: both lenses are the model's output there (KL 0 up to float error)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for res, color in ((cmp.logit, "tab:red"), (cmp.tuned, "tab:blue")):
        layers, kl, se = res.layers[:-1], res.kl[:-1].numpy(), res.kl_sem[:-1].numpy()
        ax.plot(layers, kl, marker="o", ms=3, color=color, label=f"{res.lens} lens")
        ax.fill_between(layers, (kl - 1.96 * se).clip(1e-4), kl + 1.96 * se, color=color, alpha=0.15)
    ax.set_yscale("log")
    _int_layers(ax)
    ax.set_xlabel("layer (resid_post); the last layer, where both are the output, is not drawn")
    ax.set_ylabel("KL(model output || lens), nats")
    wins = sum(cmp.tuned_wins)
    ax.set_title(f"{cmp.logit.model}: logit vs tuned lens (tuned lower on {wins}/{len(cmp.tuned_wins)} layers)\n"
                 f"{cmp.logit.n_positions} positions of {cmp.text}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save(fig, path)


@literal_text
def plot_latent_language(result: LatentLanguageResult, path) -> Path:
    """Mean lens probability of the answer in the target, English and source language per layer,
    with a 95% confidence band over the prompts."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    colors = {"target": "tab:blue", "en": "tab:orange", "source": "tab:green"}
    for key, label in result.curve_labels().items():
        mean, lo, hi = result.band(key)
        ax.plot(result.layers, mean, marker="o", ms=3, color=colors[key], label=label)
        ax.fill_between(result.layers, lo, hi, color=colors[key], alpha=0.15)
    ax.set_ylim(0, 1)
    _int_layers(ax)
    ax.set_xlabel("layer (resid_post)")
    ax.set_ylabel("logit-lens probability (first token)")
    ax.set_title(f"{result.model}: {result.src}→{result.tgt} translation, {result.n_items} words, "
                 f"accuracy {result.accuracy:.0%}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)
