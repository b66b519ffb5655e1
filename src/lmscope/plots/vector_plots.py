"""Figures for steering vectors: the layer x coefficient sweep, the verification table, and the
per-layer profile of a vector (relative norm, held-out separation). PNG via matplotlib (Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ._mpl import pyplot, save

if TYPE_CHECKING:
    from lmscope.vectors.steering import SweepResult, VerifyReport
    from lmscope.vectors.vector import Vector


_plt = pyplot


def _save(fig, path) -> Path:
    return save(fig, path, bbox_tight=True)


def plot_sweep(result: SweepResult, path, *, title: str | None = None) -> Path:
    """Two heatmaps over layers x coefficients: the behaviour change (score - base) and the KL
    on neutral prompts. Inadmissible cells (KL or repetition over the limits) are hatched; the
    recommended cell is outlined."""
    import numpy as np

    plt = _plt()
    layers, coefs, eff = result.grid("effect")
    _, _, kl = result.grid("kl")
    _, _, ok = result.grid("admissible")
    eff_a = np.array([[np.nan if v is None else v for v in row] for row in eff], dtype=float)
    kl_a = np.array([[np.nan if v is None else v for v in row] for row in kl], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.3 * len(coefs) * 2, 1.2 + 0.42 * len(layers)))
    lim = np.nanmax(np.abs(eff_a)) or 1.0
    panels = ((axes[0], eff_a, "RdBu_r", -lim, lim, f"Δ {result.metric}"),
              (axes[1], kl_a, "viridis", 0.0, max(np.nanmax(kl_a), result.config["kl_max"]), "KL to unsteered (nats)"))
    for ax, arr, cmap, lo, hi, label in panels:
        im = ax.imshow(arr, cmap=cmap, vmin=lo, vmax=hi, aspect="auto", origin="lower")
        ax.set_xticks(range(len(coefs)), [f"{c:g}" for c in coefs])
        ax.set_yticks(range(len(layers)), [str(lay) for lay in layers])
        ax.set_xlabel("coefficient (× typical residual norm)" if result.config.get("relative", True) else "raw scale")
        ax.set_ylabel("layer")
        ax.set_title(label, fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        for i in range(len(layers)):
            for j in range(len(coefs)):
                if not np.isnan(arr[i, j]):
                    ax.text(j, i, f"{arr[i, j]:.2g}", ha="center", va="center", fontsize=7,
                            color="black" if cmap == "RdBu_r" or arr[i, j] > 0.6 * hi else "white")
                if not ok[i][j]:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", lw=0,
                                               edgecolor="grey", alpha=0.6))
        rec = result.recommended
        if rec:
            i, j = layers.index(rec["layer"]), coefs.index(rec["coef"])
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.5, edgecolor="gold"))
    rec = result.recommended
    sub = (f"recommended: layer {rec['layer']}, coef {rec['coef']:g} (Δ {rec['effect']:+.3g}, KL {rec['kl']:.2g})"
           if rec else "no admissible setting (hatched: KL or repetition over the limit)")
    fig.suptitle((title or f"{result.task} sweep") + f"\n{sub}", fontsize=11, y=1.0 + 0.5 / fig.get_figheight())
    return _save(fig, path)


def plot_verify(report: VerifyReport, path, *, title: str | None = None) -> Path:
    """Bars: base / +vector / +random on prompts without the behaviour, and base / -vector /
    -random on prompts with it; each random seed is a dot."""
    plt = _plt()
    n = 3 if report.swing else 2
    fig, axes = plt.subplots(1, n, figsize=(4.25 * n, 3.4), sharey=False)
    rm = "ablate" if report.mode == "ablate" else "−"
    if report.swing:
        ax = axes[2]
        sw = report.swing
        ax.bar([0, 1], [sw["vector"], sum(sw["random_all"]) / len(sw["random_all"])], color=["#d6604d", "#4393c3"])
        ax.scatter([1] * len(sw["random_all"]), sw["random_all"], color="black", s=12, zorder=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks([0, 1], ["vector", "random"])
        ax.set_title("swing: score(+coef) − score(−coef)", fontsize=10)
    for ax, key, names in ((axes[0], "add", ("base", "+vector", "+random")),
                           (axes[1], "remove", ("base", f"{rm} vector", f"{rm} random"))):
        d = getattr(report, key)
        vals = [d["base"], d["vector"], d["random"]]
        ax.bar(range(3), vals, color=["#999999", "#d6604d", "#4393c3"])
        ax.scatter([2] * len(d["random_all"]), d["random_all"], color="black", s=12, zorder=3)
        ax.set_xticks(range(3), names)
        ax.set_title("prompts without the behaviour" if key == "add" else "prompts with the behaviour", fontsize=10)
        ax.set_ylabel(report.metric)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom" if v >= 0 else "top", fontsize=8)
    fig.suptitle(title or f"{report.task}: layer {report.layer}, coef {report.coef:g}", fontsize=11, y=1.04)
    return _save(fig, path)


def plot_layers(vector: Vector, path, *, title: str | None = None) -> Path:
    """Per layer: |v| / typical residual norm, and held-out separation AUC when recorded."""
    plt = _plt()
    layers = vector.layers
    norms, rn = vector.norm(), vector.resid_norms
    sep = vector.meta.get("evaluation", {}).get("separation", {})
    fig, ax = plt.subplots(figsize=(7, 3.2))
    rel = [norms[k] / rn[k] if rn.get(k) else float("nan") for k in layers]
    ax.plot(layers, rel, "o-", color="#d6604d", label="|v| / residual norm")
    ax.set_xlabel("layer")
    ax.set_ylabel("|v| / residual norm", color="#d6604d")
    if sep:
        ax2 = ax.twinx()
        ax2.plot(layers, [sep.get(str(k), {}).get("auc", float("nan")) for k in layers], "s--", color="#4393c3")
        ax2.set_ylabel("held-out separation AUC", color="#4393c3")
        ax2.set_ylim(0.4, 1.02)
    ax.set_title(title or f"{vector.meta.get('dataset', vector.method)} vector on {vector.model.name}", fontsize=10)
    return _save(fig, path)
