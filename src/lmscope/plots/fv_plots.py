"""Figures for in-context task / function vectors (PNG via matplotlib, Agg backend):

- `plot_layer_sweep`: held-out accuracy vs the layer the vector is added at, with the
  zero-shot and few-shot accuracies as horizontal lines and the random-vector control.
- `plot_tasks`: one panel per task (several `LayerSweep`s side by side).
- `plot_composition`: composed vector vs each single vector, the directly extracted vector
  and the random control on the composed task.
- `plot_head_aie`: Todd et al.'s average indirect effect per (layer, head), top heads marked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._mpl import pyplot, save

if TYPE_CHECKING:
    from lmscope.function_vectors.core import Composition, LayerSweep


_plt = pyplot


def _save(fig, path) -> Path:
    return save(fig, path, bbox_tight=True)


def _sweep_axes(ax, sw: LayerSweep, title: str | None = None) -> None:
    ax.plot(sw.layers, sw.accuracy, "o-", color="C0", label=f"{sw.method} vector (×{sw.scale:g}, {sw.positions})")
    if not all(math.isnan(r) for r in sw.random):
        ax.plot(sw.layers, sw.random, "s--", color="C7", ms=4, label="random vector, equal norm")
    if not math.isnan(sw.few_shot):
        ax.axhline(sw.few_shot, color="C2", ls="-", lw=1.2, label=f"{sw.shots}-shot ICL")
    if not math.isnan(sw.zero_shot):
        ax.axhline(sw.zero_shot, color="C3", ls=":", lw=1.5, label="zero-shot")
    ax.set_ylim(-0.03, 1.03)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("layer (vector added to resid_post)")
    ax.set_ylabel(f"first-token accuracy (n={sw.n_test})")
    ax.set_title(title or f"{sw.task}", fontsize=10)
    ax.grid(alpha=0.3)


def plot_layer_sweep(sweep: LayerSweep, path, *, title: str | None = None) -> Path:
    """Accuracy vs layer for one task, with zero-shot / few-shot lines and the random control."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    how = sweep.method if sweep.mode in sweep.method else f"{sweep.method}, {sweep.mode}"
    _sweep_axes(ax, sweep, title or f"{sweep.model}: {sweep.task} ({how})")
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_tasks(sweeps: Sequence[LayerSweep], path, *, title: str | None = None) -> Path:
    """One panel per task, shared axes."""
    plt = _plt()
    n = len(sweeps)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False, sharey=True)
    for ax, sw in zip(axes.flat, sweeps, strict=False):
        _sweep_axes(ax, sw)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="best")
    if title or sweeps:
        fig.suptitle(title or f"{sweeps[0].model}: task vectors by layer", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_composition(comp: Composition, path, *, title: str | None = None) -> Path:
    """Accuracy on the composed task vs layer: composed, singles, direct, random; ICL lines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(comp.layers, comp.composed, "o-", color="C0", lw=2, label=comp.expression)
    for i, (name, acc) in enumerate(comp.singles.items()):
        ax.plot(comp.layers, acc, "^-", color=f"C{4 + i}", ms=4, lw=1, label=f"{name} alone")
    ax.plot(comp.layers, comp.direct, "d-", color="C1", ms=4, lw=1, label=f"extracted from {comp.target} ICL")
    if comp.plus_only:
        ax.plot(comp.layers, comp.plus_only, "v-", color="C9", ms=4, lw=1,
                label=comp.expression.split(" - ")[0] + " (no subtraction)")
    ax.plot(comp.layers, comp.random, "s--", color="C7", ms=4, label="random, equal norm")
    ax.axhline(comp.few_shot, color="C2", lw=1.2, label="few-shot ICL")
    ax.axhline(comp.zero_shot, color="C3", ls=":", lw=1.5, label="zero-shot")
    ax.set_ylim(-0.03, 1.03)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("layer (vector added to resid_post)")
    ax.set_ylabel(f"accuracy on {comp.target} (n={comp.n_test})")
    ax.set_title(title or f"{comp.model}: {comp.expression} on {comp.target}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_head_aie(aie, heads: Sequence[Sequence], path, *, title: str | None = None) -> Path:
    """Heatmap of the average indirect effect [layer, head]; the chosen heads are boxed."""
    import numpy as np

    plt = _plt()
    a = np.array(aie, dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 0.5 * a.shape[1], 1.2 + 0.28 * a.shape[0]))
    lim = np.nanmax(np.abs(a)) if np.isfinite(a).any() else 1.0
    im = ax.imshow(a, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", origin="lower")
    for lay, hd, *_ in heads:
        ax.add_patch(plt.Rectangle((hd - 0.5, lay - 0.5), 1, 1, fill=False, ec="black", lw=1.5))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(a.shape[1]))
    ax.set_title(title or "average indirect effect (ΔP(answer))", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)
