"""Figures for linear relational embeddings (PNG via matplotlib, Agg backend):

- `sweep_plot`: a `RelationReport`'s sweeps: dev faithfulness by layer and beta (the recommended
  cell boxed), dev causality by layer and by rank.
- `attribute_lens_plot`: an `AttributeLens` as a layer x token heatmap of p(target) (or of the
  top token's probability), each cell labelled with the LRE's top token.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from ._mpl import plain_text, pyplot, save

if TYPE_CHECKING:
    from lmscope.relations.attribute_lens import AttributeLens
    from lmscope.relations.study import RelationReport

_plt = pyplot


def _short(tok: str, n: int = 8) -> str:
    t = tok.replace("\n", "\\n").replace("\t", "\\t")
    if not t.strip():  # make blank tokens visible
        t = t.replace(" ", "␣") or "∅"
    return t if len(t) <= n else t[: n - 1] + "…"


def _nan(x) -> float:
    return math.nan if x is None else float(x)


def _fmt(x) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.2f}"


def sweep_plot(report: RelationReport, path) -> Path:
    """Dev faithfulness (layer x beta heatmap, recommended cell boxed), dev causality by layer
    (at the sweep's rank) and by rank (at the recommended layer)."""
    import numpy as np

    plt = _plt()
    with plain_text():
        grid = np.array([[_nan(v) for v in row] for row in report.faithfulness_grid], dtype=float).reshape(
            len(report.layers), len(report.betas))
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.2 + 0.12 * len(report.layers)),
                                 gridspec_kw={"width_ratios": [1.3, 1, 1]})
        ax = axes[0]
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if grid.shape[0] * grid.shape[1] <= 400 and not math.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if grid[i, j] > 0.6 else "white")
        if report.layer in report.layers and report.beta in report.betas:
            i, j = report.layers.index(report.layer), report.betas.index(report.beta)
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
        ax.set_xticks(range(len(report.betas)), [f"{b:g}" for b in report.betas], fontsize=7)
        ax.set_yticks(range(len(report.layers)), [str(x) for x in report.layers], fontsize=7)
        ax.set_xlabel("beta (scale of W s)")
        ax.set_ylabel("layer of the subject state")
        ax.set_title(f"dev faithfulness (n={report.n_dev}); red: recommended", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)

        ax = axes[1]
        ax.plot(report.layers, [_nan(v) for v in report.causality_by_layer], "o-", color="C0", ms=4)
        ax.axvline(report.layer, color="red", lw=1, ls=":", label=f"recommended layer {report.layer}")
        ax.set_xlabel("layer of the subject state")
        ax.set_ylabel("dev causality")
        ax.set_title(f"causality by layer (rank {report.sweep_rank})", fontsize=9)
        if report.layers:  # the layers swept, also when no edit was possible (all NaN)
            ax.set_xlim(min(report.layers) - 0.5, max(report.layers) + 0.5)
        if len(report.layers) <= 20:
            ax.set_xticks(report.layers, [str(x) for x in report.layers], fontsize=7)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)

        ax = axes[2]
        ax.plot(report.ranks, [_nan(v) for v in report.causality_by_rank], "o-", color="C1", ms=4)
        ax.axvline(report.rank, color="red", lw=1, ls=":", label=f"recommended rank {report.rank}")
        if report.ranks and min(report.ranks) > 0 and max(report.ranks) > 2 * min(report.ranks):
            ax.set_xscale("log", base=2)
        ax.set_xticks(report.ranks, [str(r) for r in report.ranks], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("rank of the pseudo-inverse")
        ax.set_title(f"causality by rank (layer {report.layer})", fontsize=9)
        for ax in axes[1:]:
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
            if all(math.isnan(_nan(v)) for v in (report.causality_by_layer if ax is axes[1]
                                                 else report.causality_by_rank)):
                ax.text(0.5, 0.5, "no edits (objects share a first token)", transform=ax.transAxes, ha="center",
                        va="center", fontsize=8, color="gray")
        fig.suptitle(f"{report.model}: {report.relation} ({report.type}); test faithfulness "
                     f"{_fmt(report.faithfulness)}, causality {_fmt(report.causality)} "
                     f"(random edit {_fmt(report.causality_control)})", fontsize=10)
        return save(fig, path)


def attribute_lens_plot(lens: AttributeLens, path) -> Path:
    """Layers (rows, last on top) x tokens: p(target) when the lens follows one, else the top
    token's probability; each cell shows the LRE's top token there."""
    import numpy as np

    plt = _plt()
    with plain_text():
        values = np.array(lens.target_prob if lens.target else lens.top_prob, dtype=float).reshape(
            len(lens.layers), len(lens.tokens))
        n_layer, n_pos = values.shape
        fig, ax = plt.subplots(figsize=(min(28, max(6.5, 1.6 + 0.95 * n_pos)), min(30, 1.8 + 0.32 * n_layer)))
        im = ax.imshow(values, aspect="auto", origin="lower", cmap="Blues", vmin=0, vmax=1)
        size = 7 if n_pos <= 16 else 5
        for li in range(n_layer):
            for p in range(n_pos):
                tok = lens.top[li][p]
                ax.text(p, li, _short(tok.strip() or tok), ha="center", va="center", fontsize=size,
                        color="white" if values[li, p] > 0.6 else "black")
        ax.set_xticks(range(n_pos), [_short(t, 10) for t in lens.tokens], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(n_layer), [str(x) for x in lens.layers], fontsize=7)
        if lens.lre_layer in lens.layers:  # the layer the LRE was fitted at: its tick in red
            tick = ax.get_yticklabels()[lens.layers.index(lens.lre_layer)]
            tick.set_color("red")
            tick.set_fontweight("bold")
        ax.set_xlabel("input position (token read)")
        ax.set_ylabel("layer (resid_post)")
        what = f"p({lens.target!r})" if lens.target else "top-1 probability"
        rel = lens.relation or "relation"
        prompt = lens.prompt if len(lens.prompt) <= 80 else lens.prompt[:79] + "…"
        ax.set_title(f"attribute lens: {rel} LRE (fitted at layer {lens.lre_layer}, in red)\n"
                     f"colour: {what}; cell: the LRE's top token\n{prompt!r}", fontsize=9)
        fig.colorbar(im, ax=ax, label=what, fraction=0.03)
        return save(fig, path, bbox_tight=True)
