"""Figures for residual decomposition / DLA, token edits, Patchscopes and back-patching.

Every function writes one PNG (matplotlib, Agg backend) and returns its path. Inputs are the
result objects of `lmscope.inspect.decomposition`, `lmscope.inspect.patchscopes` and `lmscope.inspect.backpatching`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ._mpl import pyplot, save

if TYPE_CHECKING:
    from lmscope.inspect.backpatching import BackpatchResult
    from lmscope.inspect.decomposition import Attribution, TokenEditResult
    from lmscope.inspect.patchscopes import EntitySweep, IdentitySweep


_plt = pyplot


def _int_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _what(attr: Attribution) -> str:
    return f"logit({attr.target!r})" + (f" - logit({attr.baseline!r})" if attr.baseline is not None else "")


def plot_dla_layers(attr: Attribution, path, row: int = 0) -> Path:
    """Grouped bars: attention (heads + bias) and MLP DLA per layer, embeddings as layer 'emb'."""
    plt = _plt()
    pl = attr.per_layer(row)
    n = len(pl["attn"])
    x = list(range(n))
    fig, ax = plt.subplots(figsize=(max(6, 0.38 * n + 2), 3.6))
    ax.bar([-1], [pl["embed"]], width=0.8, color="0.5", label="embed")
    ax.bar([i - 0.2 for i in x], pl["attn"], width=0.4, label="attention", color="tab:blue")
    ax.bar([i + 0.2 for i in x], pl["mlp"], width=0.4, label="MLP", color="tab:orange")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks([-1, *x], ["emb", *map(str, x)], fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("direct logit attribution")
    d = attr.decomposition
    ax.set_title(f"{d.model}: DLA to {_what(attr)} (frozen final-norm scale)\n{d.prompts[row]!r}", fontsize=9)
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_head_heatmap(attr: Attribution, path, row: int = 0) -> Path:
    """Layer x head heatmap of each head's DLA (diverging, centred at 0)."""
    plt = _plt()
    m = attr.head_matrix(row).numpy()
    lim = max(abs(m.min()), abs(m.max()), 1e-9)
    fig, ax = plt.subplots(figsize=(max(3.5, 0.45 * m.shape[1] + 2.5), max(3, 0.25 * m.shape[0] + 1.5)))
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(m.shape[1]))
    ax.set_title(f"head DLA to {_what(attr)}", fontsize=9)
    fig.colorbar(im, ax=ax)
    return save(fig, path)


def plot_token_edit(res: TokenEditResult, path) -> Path:
    """p(subtracted token) and p(added token) before, after, and under the random control."""
    plt = _plt()
    toks = list(res.probs["before"])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, cond in enumerate(("before", "after", "control")):
        ax.bar([j + 0.27 * (i - 1) for j in range(len(toks))], [res.probs[cond][t] for t in toks], width=0.27,
               label=cond if cond != "control" else "random vector (same norm)")
    ax.set_xticks(range(len(toks)), [repr(t) for t in toks])
    ax.set_ylabel("next-token probability")
    ax.set_title(f"token edit at layers.{res.layer}.resid_post, position {res.position}", fontsize=9)
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_identity_sweep(sw: IdentitySweep, path) -> Path:
    """Precision@1 per layer: token-identity Patchscope vs logit lens vs shuffled control."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(sw.layers, sw.patchscope, "o-", label="token-identity Patchscope")
    ax.plot(sw.layers, sw.logit_lens, "s-", label="logit lens")
    ax.plot(sw.layers, sw.shuffled, "x--", color="0.5", label="Patchscope, shuffled source (control)")
    ax.axhline(sw.unpatched, color="0.7", lw=0.8, ls=":", label="unpatched target")
    ax.xaxis.set_major_locator(_int_ticks())
    ax.set_xlabel("layer (source = target)")
    ax.set_ylabel("precision@1 vs model's own next token")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{sw.model}: next-token decoding, {sw.n} positions", fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, path)


def plot_entity_sweep(sw: EntitySweep, path) -> Path:
    """Keyword hit rate of entity descriptions per layer, with the shuffled control."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(sw.layers, sw.hit_rate, "o-", label="entity description Patchscope")
    ax.plot(sw.layers, sw.shuffled, "x--", color="0.5", label="another entity's state (control)")
    ax.axhline(sw.unpatched, color="0.7", lw=0.8, ls=":", label="unpatched target")
    ax.xaxis.set_major_locator(_int_ticks())
    ax.set_xlabel("layer (source = target)")
    ax.set_ylabel("share mentioning a keyword")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{sw.model}: entity description, {sw.n} entities", fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, path)


def plot_backpatch(res: BackpatchResult, path) -> Path:
    """Share fixed per (source layer, target layer), next to each control on the same scale."""
    plt = _plt()
    grids = {"back-patch": res.grid, **{f"control: {k}": v for k, v in res.control_grids.items()}}
    oracles = {"back-patch": res.oracle, **{f"control: {k}": v for k, v in res.control_oracles.items()}}
    vmax = max(float(g.nan_to_num(0).max()) for g in grids.values()) or 1.0
    fig, axes = plt.subplots(1, len(grids), figsize=(3.6 * len(grids) + 1, 3.6), squeeze=False,
                             constrained_layout=True)
    for ax, (name, g) in zip(axes[0], grids.items(), strict=True):
        im = ax.imshow(g.numpy(), origin="lower", cmap="viridis", vmin=0, vmax=vmax)
        ax.xaxis.set_major_locator(_int_ticks())
        ax.yaxis.set_major_locator(_int_ticks())
        ax.set_xlabel("target layer l_t")
        ax.set_ylabel("source layer l_s")
        ax.set_title(f"{name} (n={res.counts['cases']}; fixed by any pair {oracles[name]:.2f})", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="share fixed")
    fig.suptitle(f"{res.model}: back-patching, criterion {res.criterion}", fontsize=9)
    return save(fig, path)  # constrained layout: save leaves it alone
