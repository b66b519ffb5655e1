"""Sparse-coder figures: one latent's activation histogram, the density of all latents (the
standard SAE plot: how many latents fire how often, on a log10 axis), and a latent's page."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lmscope.engine.errors import InputError

from ._mpl import pyplot, save, save_text

if TYPE_CHECKING:
    from lmscope.saes.feature_page import FeaturePage
    from lmscope.saes.features import FeatureStats


def plot_feature_histogram(page_or_stats: FeaturePage | FeatureStats, i: int | None, path: str | os.PathLike
                           ) -> Path:
    """Latent i's activations when active: counts per log-spaced bin, on a log x axis.

    `page_or_stats` is a `FeaturePage` (then `i` is None or its feature) or `FeatureStats`."""
    from lmscope.saes.feature_page import FeaturePage

    if isinstance(page_or_stats, FeaturePage):
        if i is not None and i != page_or_stats.feature:
            raise InputError(f"This page is feature {page_or_stats.feature}, not {i}; pass i=None or "
                             f"{page_or_stats.feature}.")
        i, hist, d = page_or_stats.feature, page_or_stats.histogram, page_or_stats
        where, freq, mx = d.site, d.frequency, d.max_act
    else:
        if i is None:
            raise InputError("Name the feature: plot_feature_histogram(stats, i, path).")
        i = page_or_stats.check_feature(i)
        hist, nb = page_or_stats.histogram(i), page_or_stats.feature(i)
        where, freq, mx = page_or_stats.site, nb["frequency"], nb["max_act"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    if hist["counts"]:
        ax.stairs(hist["counts"], hist["edges"], fill=True, color="#e06e14")
        ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "never active on the corpus", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("activation (when active)")
    ax.set_ylabel("tokens")
    ax.set_title(f"feature {i} at {where}: active on {freq:.3%} of tokens, max {mx:.4g}", fontsize=9)
    return save(fig, path)


def plot_feature_density(stats: FeatureStats, path: str | os.PathLike, *, bins: int = 50) -> Path:
    """Histogram over all latents of log10(firing frequency); dead latents (never active,
    log10 0 = -inf) are counted in the title instead."""
    freq = stats.frequency
    live = freq[freq > 0].double().log10().tolist()
    dead = stats.d_sae - len(live)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    if live:
        ax.hist(live, bins=bins, color="#3b75af")
    ax.axvline(math.log10(1 / max(stats.n_tokens, 1)), color="grey", ls=":", lw=1, label="one token")
    ax.set_xlabel("log10(share of tokens where the latent is active)")
    ax.set_ylabel("latents")
    ax.legend(fontsize=8)
    ax.set_title(f"{stats.d_sae} latents at {stats.site} over {stats.n_tokens:,} tokens; {dead} dead "
                 f"({dead / max(stats.d_sae, 1):.1%})", fontsize=9)
    return save(fig, path)


def write_feature_html(page: FeaturePage, path: str | os.PathLike) -> Path:
    """Write `page.to_html()` to `path` atomically; returns the path."""
    return save_text(page.to_html(), path)


def plot_training_curve(history_rows, path: str | os.PathLike) -> Path:
    """Training curves against tokens seen: FVU (log y), L0 and the dead fraction, one panel each.

    `history_rows` is one coder's `History.rows` (dicts with tokens, fvu, l0, dead), or
    `{label: rows}` for several coders trained together (one line each)."""
    curves = dict(history_rows) if isinstance(history_rows, dict) else {"": list(history_rows)}
    if not any(curves.values()):
        raise InputError("No training history rows to plot (train for at least one step).")
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    panels = (("fvu", "FVU (fraction of variance unexplained)"), ("l0", "L0 (active latents per token)"),
              ("dead", "dead latents (fraction)"))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for name, rows in curves.items():
            pts = [(r["tokens"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if pts:
                ax.plot(*zip(*pts, strict=True), lw=1.3, label=name or None)
        if key == "fvu" and any(v > 0 for rows in curves.values() for v in (r.get("fvu", 0) for r in rows)):
            ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_title(label, fontsize=9)
    if len(curves) > 1:
        axes[0].legend(fontsize=7)
    return save(fig, path)
