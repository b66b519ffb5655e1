"""Figures for circuits: the circuit graph (PNG and an interactive page), activation-patching
heatmaps, faithfulness curves, circuit overlap and per-head scores.

Every function writes one file (PNG with matplotlib's Agg backend, or one self-contained HTML
page) and returns its path. Inputs are plain dicts, the `to_dict()` of the circuits family's
result objects, so this module does not import the family. Text that comes from the model
(tokens, names) is drawn with mathtext off: a token such as "$x$" stays literal.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ._mpl import plain_text, pyplot, save, save_text
from .circuit_html import DASH, KIND_COLORS, NAN, NEG, POS, edge_color, page

_plt = pyplot
_HEAD, _MLP = re.compile(r"a(\d+)\.h(\d+)$"), re.compile(r"m(\d+)$")
_KIND_ORDER = {"input": 0, "head": 1, "mlp": 2, "other": 3, "logits": 4}
_MPL_DASH = {"q": (0, (5, 2)), "k": (0, (1, 1.5)), "v": "solid", "mlp": "solid", "logits": "solid",
             "other": (0, (6, 2, 1, 2))}



def _num(x) -> float | None:
    """A finite float, or None (None, NaN, inf, or not a number at all)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(x, spec: str = ".3g") -> str:
    v = _num(x)
    return "n/a" if v is None else format(v, spec)


def _short(tok, n: int = 12) -> str:
    t = str(tok).replace("\n", "\\n").replace("\t", "\\t")
    if not t.strip():  # make blank tokens visible
        t = t.replace(" ", "␣") or "∅"
    return t if len(t) <= n else t[: n - 1] + "…"


def _matrix(values) -> np.ndarray:
    """A 2-D float array (None and non-numbers -> NaN, ragged rows padded with NaN); a flat
    list is one row, nothing is a 0x0 array."""
    values = list(values) if values is not None else []
    if values and not any(isinstance(v, (list, tuple, np.ndarray)) for v in values):
        values = [values]
    rows = [list(r) if isinstance(r, (list, tuple, np.ndarray)) else [r] for r in values]
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = [np.nan if _num(v) is None else float(v) for v in r]
    return out


def _no_data(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


# ---- the circuit graph ---------------------------------------------------------------------------


def _parse_node(name: str, n_layers: int) -> dict:
    if name == "input":
        return {"kind": "input", "layer": -1, "head": None}
    if name == "logits":
        return {"kind": "logits", "layer": n_layers, "head": None}
    if m := _HEAD.match(name):
        return {"kind": "head", "layer": int(m[1]), "head": int(m[2])}
    if m := _MLP.match(name):
        return {"kind": "mlp", "layer": int(m[1]), "head": None}
    return {"kind": "other", "layer": 0, "head": None}


def _layout(circuit: dict) -> tuple[list[dict], list[dict], list[str]]:
    """Nodes (listed ones and edge ends) with a row `r` (one per layer present, input at the
    bottom) and a slot `x` (heads by index then the MLP, centred on 0); edges with node indices."""
    listed = [n for n in circuit.get("nodes") or [] if n.get("name") is not None]
    raw_edges = [e for e in circuit.get("edges") or [] if e.get("source") is not None and e.get("target") is not None]
    layers_seen = [int(n["layer"]) for n in listed if _num(n.get("layer")) is not None and n.get("kind") != "logits"]
    n_layers = int(circuit.get("n_layers") or max(layers_seen, default=-1) + 1)
    by_name: dict[str, dict] = {}
    for n in listed:
        name = str(n["name"])
        node = {"name": name, **_parse_node(name, n_layers)}
        node.update({k: n[k] for k in ("kind", "head") if n.get(k) is not None})
        if _num(n.get("layer")) is not None:
            node["layer"] = int(n["layer"])
        node["score"] = _num(n.get("score"))
        node["decoded"] = [str(t) for t in n.get("decoded") or []]
        by_name.setdefault(name, node)
    for e in raw_edges:
        for end in (str(e["source"]), str(e["target"])):
            if end not in by_name:
                by_name[end] = {"name": end, **_parse_node(end, n_layers), "score": None, "decoded": []}
    layers = sorted({n["layer"] for n in by_name.values()})
    kinds = {lay: {n["kind"] for n in by_name.values() if n["layer"] == lay} for lay in layers}
    rows = ["input" if lay < 0 else "logits" if "logits" in kinds[lay] else str(lay) for lay in layers]
    nodes: list[dict] = []
    for r, lay in enumerate(layers):
        group = sorted((n for n in by_name.values() if n["layer"] == lay), key=lambda n: (
            _KIND_ORDER.get(n["kind"], 3), n["head"] if n["head"] is not None else -1, n["name"]))
        for i, n in enumerate(group):
            nodes.append({**n, "r": r, "x": i - (len(group) - 1) / 2})
    index = {n["name"]: i for i, n in enumerate(nodes)}
    edges = [{"s": index[str(e["source"])], "t": index[str(e["target"])], "route": str(e.get("route") or "other"),
              "score": _num(e.get("score"))} for e in raw_edges]
    return nodes, edges, rows


def _weights(edges: list[dict]) -> list[float]:
    """|score| / max |score| per edge (0 for a missing or NaN score)."""
    mags = [abs(e["score"]) if e["score"] is not None else 0.0 for e in edges]
    top = max(mags, default=0.0)
    return [m / top if top > 0 else 0.0 for m in mags]


def _title(c: dict, n_kept: int) -> str:
    total = c.get("n_edges_total")
    kept = f"{n_kept}/{total} edges" if total is not None else f"{n_kept} edges"
    parts = [c.get("model"), c.get("task"), c.get("method"), c.get("ablation") and f"{c['ablation']} ablation",
             f"faithfulness {_fmt(c.get('faithfulness'), '.2f')}", kept]
    return " · ".join(str(p) for p in parts if p)


def _curve(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """The points of an edge: a straight segment, or an upward bow between nodes of one row."""
    if abs(y1 - y0) > 1e-9:
        return np.array([[x0, y0], [x1, y1]])
    t = np.linspace(0, 1, 13)[:, None]
    ctrl = np.array([(x0 + x1) / 2, y0 + min(0.8, 0.2 + 0.12 * abs(x1 - x0))])
    return (1 - t) ** 2 * np.array([x0, y0]) + 2 * (1 - t) * t * ctrl + t**2 * np.array([x1, y1])


def circuit_png(circuit: dict, path) -> Path:
    """The circuit as a residual-stream diagram: layers bottom (input) to top (logits); edge
    width ∝ |score| (the largest is widest), colour by sign, line style by route."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D
    from matplotlib.path import Path as MplPath

    nodes, edges, rows = _layout(circuit)
    weights = _weights(edges)
    widest = max((sum(n["r"] == r for n in nodes) for r in range(len(rows))), default=1)
    with plain_text():
        plt = _plt()
        size = (min(24, max(6.5, 2.5 + 0.8 * widest)), min(30, max(3.5, 1.4 + 0.45 * len(rows))))
        fig, ax = plt.subplots(figsize=size)
        alpha0 = 0.2 if len(edges) > 300 else 0.4
        for route in sorted({e["route"] for e in edges}):
            idx = sorted((i for i, e in enumerate(edges) if e["route"] == route), key=lambda i: weights[i])
            segs = [_curve(nodes[edges[i]["s"]]["x"], nodes[edges[i]["s"]]["r"],
                           nodes[edges[i]["t"]]["x"], nodes[edges[i]["t"]]["r"]) for i in idx]
            ax.add_collection(LineCollection(
                segs, linewidths=[0.4 + 3.6 * weights[i] for i in idx],
                colors=[to_rgba(edge_color(edges[i]["score"]), alpha0 + (0.95 - alpha0) * weights[i]) for i in idx],
                linestyles=_MPL_DASH.get(route, _MPL_DASH["other"]), zorder=1, capstyle="round"))
        font = 7 if widest <= 12 and len(nodes) <= 120 else 5.5
        w, h = font * (0.62 * max((len(n["name"]) for n in nodes), default=1) + 1.2), font * 1.8  # points
        box = MplPath([(-w, -h), (w, -h), (w, h), (-w, h), (-w, -h)], closed=True)  # scaled to w across
        fills = [KIND_COLORS.get(n["kind"], KIND_COLORS["other"]) for n in nodes]
        ax.scatter([n["x"] for n in nodes], [n["r"] for n in nodes], s=w**2, marker=box, zorder=2, c=fills,
                   edgecolors="0.35", linewidths=0.5)
        for n in nodes:  # the boxes are one scatter: faster than a bbox patch per label
            ax.text(n["x"], n["r"], n["name"], ha="center", va="center", fontsize=font, zorder=3)
        half = max((abs(n["x"]) for n in nodes), default=0.0)
        ax.set_xlim(-half - 0.7, half + 0.7)
        ax.set_ylim(-0.6, max(len(rows) - 1, 0) + 0.9)
        ax.set_xticks([])
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_ylabel("layer (information flows up)")
        for side in ("top", "right", "bottom"):
            ax.spines[side].set_visible(False)
        if not nodes:
            _no_data(ax, "empty circuit")
        ax.set_title(_title(circuit, len(edges)), fontsize=9)
        handles = [Line2D([], [], color=POS, lw=2, label="positive score"),
                   Line2D([], [], color=NEG, lw=2, label="negative score")]
        if any(e["score"] is None for e in edges):
            handles.append(Line2D([], [], color=NAN, lw=2, label="no score"))
        routes = sorted({e["route"] for e in edges}, key=lambda r: (list(DASH).index(r) if r in DASH else 99, r))
        handles += [Line2D([], [], color="0.25", lw=1.5, ls=_MPL_DASH.get(r, _MPL_DASH["other"]), label=f"route {r}")
                    for r in routes]
        if edges:
            ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        return save(fig, path, dpi=100 if len(nodes) > 150 else 120)


def circuit_html(circuit: dict, path) -> Path:
    """One self-contained page (inline SVG + vanilla JS, nothing fetched): hover a node for its
    kind, score and decoded tokens (its edges light up), an edge for its route and score."""
    nodes, edges, rows = _layout(circuit)
    return save_text(page(_title(circuit, len(edges)), nodes, edges, rows, _weights(edges)), path)


# ---- patching, faithfulness, overlap, head scores ------------------------------------------------


def _ticks(ax, axis: str, labels: list[str], n: int, *, rotate: bool = False) -> None:
    """Label every tick, or every k-th one when there are too many to read."""
    labels = [_short(t) for t in labels] if len(labels) == n else [str(i) for i in range(n)]
    step = max(1, math.ceil(n / 40))
    pos = list(range(0, n, step))
    kw = {"rotation": 60, "ha": "right", "rotation_mode": "anchor"} if rotate else {}
    (ax.set_xticks if axis == "x" else ax.set_yticks)(pos, [labels[i] for i in pos], fontsize=7, **kw)


def _annotate(ax, m: np.ndarray, dark, *, limit: int = 200) -> None:
    """Write each finite value in its cell (white where `dark(value)`), unless there are too many."""
    if m.size > limit:
        return
    for (i, j), v in np.ndenumerate(m):
        if np.isfinite(v):
            text = f"{v:.2f}" if v == 0 or abs(v) >= 0.01 else f"{v:.0e}"
            ax.text(j, i, text, ha="center", va="center", fontsize=6, color="white" if dark(v) else "black")


def patching_heatmap(result: dict, path) -> Path:
    """Rows (layers, 0 at the bottom) x columns (positions / heads): the patched metric, on a
    diverging colour scale centred at 0 with symmetric limits; NaN cells grey."""
    m = _matrix(result.get("values"))
    n_rows, n_cols = m.shape
    lim = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
    lim = lim if lim > 0 else 1.0
    col_labels = [str(t) for t in result.get("col_labels") or []]
    rotate = any(len(_short(t)) > 2 for t in col_labels)
    metric = str(result.get("metric") or "metric")
    with plain_text():
        plt = _plt()
        fig, ax = plt.subplots(figsize=(min(26, max(5.0, 2.8 + 0.34 * n_cols)), min(24, max(3.4, 1.8 + 0.26 * n_rows))))
        if m.size:
            cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.85")
            im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=-lim, vmax=lim, aspect="auto", origin="lower",
                           interpolation="nearest")
            _ticks(ax, "x", col_labels, n_cols, rotate=rotate)
            _ticks(ax, "y", [str(t) for t in result.get("row_labels") or []], n_rows)
            _annotate(ax, m, lambda v: abs(v) > 0.6 * lim)
            fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02).set_label(metric)
        else:
            _no_data(ax)
        ax.set_xlabel(str(result.get("col_title") or ""))
        ax.set_ylabel(str(result.get("row_title") or "layer"))
        head = " · ".join(str(p) for p in (result.get("task"), result.get("kind"), result.get("direction"),
                                           result.get("ablation") and f"{result['ablation']} ablation") if p)
        model = result.get("model")
        ax.set_title(f"{model + ': ' if model else ''}{head}\nclean {metric} {_fmt(result.get('clean'))}, "
                     f"corrupt {_fmt(result.get('corrupt'))}", fontsize=9)
        return save(fig, path)


def _series(xs, *ys) -> list[np.ndarray]:
    """x and each y as float rows cut to a common length, only where x is finite and > 0 (a log
    axis); a missing y is all NaN."""
    rows = [_matrix([list(v or [])]).reshape(-1) for v in (xs, *ys)]
    n = min(len(r) for r in rows)
    x = rows[0][:n]
    keep = np.isfinite(x) & (x > 0)
    return [r[:n][keep] for r in rows]


def faithfulness_curve(curve: dict, path) -> Path:
    """Faithfulness against the fraction of edges kept (log x), with the random-edge control as
    a mean ± std band, the 0 (ablated) and 1 (full model) lines, the target and the chosen circuit."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    x, y = _series(curve.get("fractions"), curve.get("faithfulness"))
    rnd = curve.get("random") or {}
    with plain_text():
        plt = _plt()
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.axhline(1, color="0.3", lw=0.8, label="full model (1)")
        ax.axhline(0, color="0.6", lw=0.8, label="ablated model (0)")
        if rnd:
            rx, mean = _series(rnd.get("fractions"), rnd.get("mean"))
            std = _series(rnd.get("fractions"), rnd.get("std") or [0.0] * len(rx))[1]
            std = np.nan_to_num(np.pad(std, (0, len(mean) - len(std))))
            ax.plot(rx, mean, color="0.45", lw=1, ls="--", label="random edges (mean ± std)")
            ax.fill_between(rx, mean - std, mean + std, color="0.6", alpha=0.25, lw=0)
        label = f"{curve.get('method') or 'circuit'} (CPR {_fmt(curve.get('cpr'))}, CMD {_fmt(curve.get('cmd'))})"
        ax.plot(x, y, "o-", ms=3, color="tab:blue", label=label)
        target = _num(curve.get("target"))
        if target is not None:
            ax.axhline(target, color="tab:green", lw=1, ls=":", label=f"target {target:g}")
        chosen = _num(curve.get("chosen_fraction"))
        if chosen is not None and chosen > 0:
            ok = np.isfinite(y)
            at = float(np.interp(np.log(chosen), np.log(x[ok]), y[ok])) if ok.any() else float("nan")
            ax.axvline(chosen, color="tab:red", lw=0.8, alpha=0.6)
            if math.isfinite(at):
                ax.plot([chosen], [at], marker="*", ms=13, color="tab:red", ls="none",
                        label=f"chosen circuit ({chosen:.3g} of edges)")
        if not len(x):  # nothing to scale the axis by: the usual range, down to the chosen fraction
            ax.set_xlim(min(1e-3, chosen / 2) if chosen is not None and chosen > 0 else 1e-3, 1.0)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.01, not mathtext 10^-2
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("fraction of edges kept (log scale)")
        ax.set_ylabel("faithfulness (normalised metric)")
        head = " · ".join(str(p) for p in (curve.get("task"), curve.get("method"),
                                           curve.get("ablation") and f"{curve['ablation']} ablation") if p)
        model = curve.get("model")
        ax.set_title(f"{model + ': ' if model else ''}{head}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="best")
        return save(fig, path)


def overlap_matrix(overlap: dict, path) -> Path:
    """Annotated tasks x tasks heatmap of the Jaccard overlap of circuits' node sets (with the
    number of shared nodes under each off-diagonal value when `shared` gives it)."""
    tasks = [str(t) for t in overlap.get("tasks") or []]
    n = len(tasks)
    given = _matrix(overlap.get("jaccard"))
    m = np.full((n, n), np.nan)
    k, w = min(n, given.shape[0]), min(n, given.shape[1] if given.ndim == 2 else 0)
    m[:k, :w] = given[:k, :w]
    shared = overlap.get("shared") or {}
    with plain_text():
        plt = _plt()
        side = min(16, max(3.8, 2.2 + 0.7 * n))
        fig, ax = plt.subplots(figsize=(side + 1.2, side))
        if n:
            cmap = plt.get_cmap("Blues").with_extremes(bad="0.85")
            im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=0, vmax=1)
            ax.set_xticks(range(n), [_short(t, 16) for t in tasks], rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(n), [_short(t, 16) for t in tasks], fontsize=8)
            if n <= 20:
                for (i, j), v in np.ndenumerate(m):
                    names = shared.get(f"{tasks[i]}|{tasks[j]}", shared.get(f"{tasks[j]}|{tasks[i]}"))
                    text = ("–" if not np.isfinite(v) else f"{v:.2f}") + (
                        f"\n{len(names)} shared" if names is not None and i != j else "")
                    ax.text(j, i, text, ha="center", va="center", fontsize=7,
                            color="white" if np.isfinite(v) and v > 0.6 else "black")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label("Jaccard overlap of node sets")
        else:
            _no_data(ax)
        model = overlap.get("model")
        ax.set_title(f"{model + ': ' if model else ''}circuit overlap", fontsize=9)
        return save(fig, path)


def head_scores(scores: dict, path) -> Path:
    """Layer (0 at the bottom) x head heatmap of a per-head score, the `highlight` heads
    outlined; sequential colours for non-negative scores, diverging around 0 otherwise."""
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator

    m = _matrix(scores.get("values"))
    n_layers, n_heads = m.shape
    finite = m[np.isfinite(m)]
    with plain_text():
        plt = _plt()
        size = (min(20, max(4.5, 2.8 + 0.42 * n_heads)), min(24, max(3.4, 1.6 + 0.26 * n_layers)))
        fig, ax = plt.subplots(figsize=size)
        if m.size:
            if finite.size and finite.min() < 0:
                lim = float(np.abs(finite).max()) or 1.0
                cmap, lo, hi = "RdBu_r", -lim, lim
            else:
                cmap, lo, hi = "viridis", 0.0, (float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
            im = ax.imshow(np.ma.masked_invalid(m), cmap=plt.get_cmap(cmap).with_extremes(bad="0.85"), vmin=lo, vmax=hi,
                           aspect="auto", origin="lower", interpolation="nearest")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            drawn = 0
            for pair in scores.get("highlight") or []:
                layer, head = int(pair[0]), int(pair[1])
                if 0 <= layer < n_layers and 0 <= head < n_heads:  # a white line on a black one: seen on any colour
                    for color, lw in (("black", 2.6), ("white", 1.2)):
                        ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec=color, lw=lw))
                    drawn += 1
            _annotate(ax, m, (lambda v: abs(v) > 0.6 * hi) if lo < 0 else (lambda v: v < 0.5 * hi), limit=150)
            fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02).set_label(str(scores.get("title") or "score"))
        else:
            drawn = 0
            _no_data(ax)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        model = scores.get("model")
        sub = f"\n{drawn} heads outlined" if drawn else ""
        ax.set_title(f"{model + ': ' if model else ''}{scores.get('title') or 'head scores'}{sub}", fontsize=9)
        return save(fig, path)
