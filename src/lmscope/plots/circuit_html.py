"""The self-contained HTML page of a circuit (inline SVG + a little vanilla JS, no network).

`circuit_plots.circuit_html` lays the graph out and writes the file; this module only turns the
laid-out nodes and edges into the page text. The palette lives here so the PNG and the page agree.

Text from the model (node names, decoded tokens) reaches the page two ways, both escaped:
`html.escape` in the SVG and the node table, and JSON in the <script> with `<`, `>` and `&`
written as \\u escapes, so no token (not even "</script>") can end the script or open a tag.
"""

from __future__ import annotations

import html
import json
import math

POS, NEG, NAN = "#2166ac", "#b2182b", "#999999"  # edge colour by the sign of its score
KIND_COLORS = {"input": "#d9d9d9", "head": "#fdd49e", "mlp": "#c7e9c0", "logits": "#d9d9d9", "other": "#eeeeee"}
DASH = {"q": "6 3", "k": "1.5 3", "v": "", "mlp": "", "logits": "", "other": "8 3 2 3"}  # SVG stroke-dasharray

_SLOT, _ROW, _MARGIN, _LEFT = 74, 56, 30, 60  # px: node spacing, row spacing, margins, room for row labels
_NODE_W, _NODE_H = 60, 20


def edge_color(score: float | None) -> str:
    if score is None or math.isnan(score) or score == 0:  # None, NaN or 0: no sign
        return NAN
    return POS if score > 0 else NEG


def _script_json(obj) -> str:
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _svg(nodes: list[dict], edges: list[dict], rows: list[str], weights: list[float]) -> str:
    max_x = max((abs(n["x"]) for n in nodes), default=0.0)
    width = int(2 * max_x * _SLOT + _NODE_W + 2 * _MARGIN + _LEFT)
    height = int((len(rows) - 1) * _ROW + _NODE_H + 2 * _MARGIN) if rows else 2 * _MARGIN
    cx = _LEFT + _MARGIN + _NODE_W / 2 + max_x * _SLOT

    def px(n: dict) -> tuple[float, float]:  # row 0 (the input) at the bottom
        return cx + n["x"] * _SLOT, _MARGIN + _NODE_H / 2 + (len(rows) - 1 - n["r"]) * _ROW

    out = [f'<svg id="g" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    for r, label in enumerate(rows):
        y = _MARGIN + _NODE_H / 2 + (len(rows) - 1 - r) * _ROW
        out.append(f'<text class="row" x="6" y="{y + 4:.1f}">{html.escape(label)}</text>'
                   f'<line class="grid" x1="{_LEFT - 4}" x2="{width - 4}" y1="{y:.1f}" y2="{y:.1f}"/>')
    out.append('<g id="edges">')
    for i in sorted(range(len(edges)), key=lambda j: weights[j]):  # strongest drawn last, on top
        e, w = edges[i], weights[i]
        (x0, y0), (x1, y1) = px(nodes[e["s"]]), px(nodes[e["t"]])
        if abs(y1 - y0) < 1e-6:  # same row (a head into its layer's MLP): bow upwards
            h = min(0.8, 0.2 + 0.12 * abs(x1 - x0) / _SLOT) * _ROW
            d = f"M{x0:.1f},{y0:.1f} Q{(x0 + x1) / 2:.1f},{y0 - h:.1f} {x1:.1f},{y1:.1f}"
        else:
            d = f"M{x0:.1f},{y0:.1f} L{x1:.1f},{y1:.1f}"
        dash = DASH.get(e["route"], DASH["other"])
        out.append(f'<path class="e" data-e="{i}" d="{d}" stroke="{edge_color(e["score"])}" '
                   f'stroke-width="{1 + 5 * w:.2f}" stroke-opacity="{0.35 + 0.6 * w:.2f}"'
                   + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
    out.append('</g><g id="nodes">')
    for i, n in enumerate(nodes):
        x, y = px(n)
        fill = KIND_COLORS.get(n["kind"], KIND_COLORS["other"])
        out.append(f'<g class="n" data-n="{i}"><rect x="{x - _NODE_W / 2:.1f}" y="{y - _NODE_H / 2:.1f}" '
                   f'width="{_NODE_W}" height="{_NODE_H}" rx="5" fill="{fill}"/>'
                   f'<text x="{x:.1f}" y="{y + 4:.1f}">{html.escape(n["name"])}</text></g>')
    out.append("</g></svg>")
    return "\n".join(out)


def _legend(routes: list[str]) -> str:
    def line(color: str, dash: str, label: str) -> str:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        return (f'<span class="key"><svg width="34" height="10"><line x1="1" y1="5" x2="33" y2="5" '
                f'stroke="{color}" stroke-width="2.5"{d}/></svg>{html.escape(label)}</span>')

    def box(color: str, label: str) -> str:
        return f'<span class="key"><i style="background:{color}"></i>{html.escape(label)}</span>'

    keys = [line(POS, "", "positive score"), line(NEG, "", "negative score")]
    keys += [line("#444", DASH.get(r, DASH["other"]), f"route {r}") for r in routes]
    keys += [box(KIND_COLORS[k], k) for k in ("input", "head", "mlp", "logits")]
    return "".join(keys) + '<span class="key">width ∝ |score| (max = widest)</span>'


def _table(nodes: list[dict]) -> str:
    def score(s) -> str:
        return "n/a" if s is None else f"{s:.4g}"

    rows = "".join(f"<tr><td>{html.escape(n['name'])}</td><td>{html.escape(n['kind'])}</td><td>{score(n['score'])}</td>"
                   f"<td>{html.escape(' | '.join(repr(t) for t in n['decoded']))}</td></tr>" for n in nodes)
    return ("<details><summary>nodes (" + str(len(nodes)) + ")</summary><table><tr><th>node</th><th>kind</th>"
            "<th>score</th><th>decoded tokens (top promoted)</th></tr>" + rows + "</table></details>")


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>%(title)s</title>
<style>
body{font-family:system-ui,sans-serif;margin:16px;color:#222}
h3{margin:0 0 6px}
#legend{font-size:12px;margin:4px 0 10px}
.key{display:inline-flex;align-items:center;gap:4px;margin-right:14px}
.key i{display:inline-block;width:14px;height:10px;border:1px solid #777;border-radius:2px}
#wrap{overflow:auto;border:1px solid #eee}
svg text{font-size:10px;font-family:ui-monospace,monospace;text-anchor:middle;pointer-events:none}
svg text.row{text-anchor:start;fill:#666}
line.grid{stroke:#f0f0f0}
.n rect{stroke:#555;stroke-width:1;cursor:default}
.e{fill:none}
#g.focus .e{stroke-opacity:.06}
#g.focus .e.hl{stroke-opacity:1}
#g.focus .n{opacity:.35}
#g.focus .n.hl{opacity:1}
.n.hl rect{stroke:#000;stroke-width:2}
#tip{position:fixed;display:none;background:#fff;border:1px solid #888;padding:6px 8px;font-size:12px;
 box-shadow:2px 2px 6px rgba(0,0,0,.2);pointer-events:none;white-space:pre;max-width:520px}
table{border-collapse:collapse;font-size:12px;margin-top:6px}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;white-space:pre}
</style></head><body>
<h3>%(title)s</h3>
<div id="legend">%(legend)s</div>
<div id="wrap">%(svg)s</div>
%(table)s
<div id="tip"></div>
<script>
const D = %(data)s;
const svg = document.getElementById("g"), tip = document.getElementById("tip");
const fmt = s => s === null ? "n/a" : (Math.abs(s) >= 1e-3 || s === 0 ? s.toFixed(4) : s.toExponential(2));
const adj = D.nodes.map(() => []);
D.edges.forEach((e, i) => { adj[e.s].push(i); adj[e.t].push(i); });
const edgeEls = Array.from(svg.querySelectorAll(".e")), nodeEls = Array.from(svg.querySelectorAll(".n"));
const byE = [], byN = [];
edgeEls.forEach(el => byE[+el.dataset.e] = el);
nodeEls.forEach(el => byN[+el.dataset.n] = el);
function clear() {
  svg.classList.remove("focus");
  svg.querySelectorAll(".hl").forEach(el => el.classList.remove("hl"));
}
function focusOn(edges, nodes) {
  clear(); svg.classList.add("focus");
  edges.forEach(i => byE[i].classList.add("hl"));
  nodes.forEach(i => byN[i].classList.add("hl"));
}
function nodeText(i) {
  const n = D.nodes[i];
  let s = n.name + "  (" + n.kind + (n.head === null ? "" : ", layer " + n.layer + " head " + n.head) + ")\\n";
  s += "score: " + fmt(n.score) + "\\nedges: " + adj[i].length + "\\n";
  s += "decoded: " + (n.decoded.length ? n.decoded.map(t => JSON.stringify(t)).join("  ") : "(none)");
  return s;
}
function edgeText(i) {
  const e = D.edges[i];
  return D.nodes[e.s].name + " -> " + D.nodes[e.t].name + "\\nroute: " + e.route + "\\nscore: " + fmt(e.score);
}
svg.addEventListener("mousemove", ev => {
  const n = ev.target.closest(".n"), e = ev.target.closest(".e");
  if (n) {
    const i = +n.dataset.n, nb = new Set([i]);
    adj[i].forEach(j => { nb.add(D.edges[j].s); nb.add(D.edges[j].t); });
    focusOn(adj[i], nb); tip.textContent = nodeText(i);
  } else if (e) {
    const i = +e.dataset.e;
    focusOn([i], [D.edges[i].s, D.edges[i].t]); tip.textContent = edgeText(i);
  } else { clear(); tip.style.display = "none"; return; }
  tip.style.display = "block";
  tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 300) + "px";
  tip.style.top = (ev.clientY + 14) + "px";
});
svg.addEventListener("mouseleave", () => { clear(); tip.style.display = "none"; });
</script></body></html>
"""


def page(title: str, nodes: list[dict], edges: list[dict], rows: list[str], weights: list[float]) -> str:
    """The page text. `nodes`: dicts with name, kind, layer, head, score (float or None), decoded,
    x (slot, centred on 0) and r (row, 0 = bottom); `edges`: dicts with s and t (node indices),
    route and score; `rows`: one label per row, bottom first; `weights`: |score| / max, per edge."""
    data = {"nodes": [{k: n[k] for k in ("name", "kind", "layer", "head", "score", "decoded")} for n in nodes],
            "edges": [{k: e[k] for k in ("s", "t", "route", "score")} for e in edges]}
    routes = sorted({e["route"] for e in edges}, key=lambda r: (list(DASH).index(r) if r in DASH else 99, r))
    return _PAGE % {"title": html.escape(title), "legend": _legend(routes), "svg": _svg(nodes, edges, rows, weights),
                    "table": _table(nodes), "data": _script_json(data)}
