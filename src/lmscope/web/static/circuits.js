// lmscope studio, the Circuits tab (POST /api/circuit): the report's numbers, the faithfulness
// curve and the circuit graph, both inline SVG, with a live threshold slider. Loaded after
// app.js, whose helpers ($, el, svg, api, busy) it uses.
"use strict";

// ---- Circuits ---------------------------------------------------------------------------------
// The graph is drawn here from the JSON (the idea of plots/circuit_html.py's layout: one row per
// layer, the input at the bottom and the logits at the top; heads by index, then the MLP).
const POS = "#2166ac", NEG = "#b2182b", NOSIGN = "#999999";  // the palette of plots/circuit_html.py
const KIND_FILL = { input: "#d9d9d9", head: "#fdd49e", "kv-group": "#fde6c8", mlp: "#c7e9c0", logits: "#d9d9d9" };
const KIND_ORDER = { input: 0, head: 1, "kv-group": 2, mlp: 3, logits: 4 };
const DASH = { q: "6 3", k: "1.5 3" };  // query and key routes dashed; v, mlp, logits solid
const fix = (x, d = 3) => (x === null || x === undefined ? "n/a" : x.toFixed(d));
const signed = (x) => (x === null || x === undefined ? "n/a" : (x > 0 ? "+" : "") + x.toPrecision(3));
const edgeColor = (s) => (!s ? NOSIGN : s > 0 ? POS : NEG);

// Python's round() (half to even): a curve point at fraction f measured the top max(1, round(f * N)) edges.
function pyRound(x) {
  const f = Math.floor(x), r = x - f;
  return r > 0.5 ? f + 1 : r < 0.5 ? f : f % 2 === 0 ? f : f + 1;
}

// The measured faithfulness points, by number of edges kept: the curve's, and the circuit itself.
function measuredPoints(c, curve) {
  const N = c.n_edges_total, byK = new Map();
  if (curve) {
    curve.fractions.forEach((f, i) => {
      if (curve.faithfulness[i] !== null) byK.set(Math.max(1, pyRound(f * N)), curve.faithfulness[i]);
    });
  }
  if (c.faithfulness !== null) byK.set(c.n_edges, c.faithfulness);
  return [...byK.entries()].sort((a, b) => a[0] - b[0]);
}

// Faithfulness of the top-k circuit, read off the measured points: exact where k was measured,
// else interpolated linearly in log(k) between the two measured points around it.
function faithAt(points, k) {
  if (k === 0) return { value: 0, how: "no edge kept: the fully ablated model, 0 by definition" };
  const exact = points.find(([pk]) => pk === k);
  if (exact) return { value: exact[1], how: `measured at ${k} edges` };
  const hi = points.findIndex(([pk]) => pk > k);
  if (hi <= 0) return { value: null, how: `not measured: the measured curve starts at ${points.length ? points[0][0] : "?"} edges` };
  const [k0, y0] = points[hi - 1], [k1, y1] = points[hi];
  const t = (Math.log(k) - Math.log(k0)) / (Math.log(k1) - Math.log(k0));
  return { value: y0 + t * (y1 - y0), how: `interpolated from the measured curve, between ${k0} and ${k1} edges` };
}

function circuitLayout(c) {
  const byLayer = new Map();
  for (const n of c.nodes) {
    if (!byLayer.has(n.layer)) byLayer.set(n.layer, []);
    byLayer.get(n.layer).push(n);
  }
  const layers = [...byLayer.keys()].sort((a, b) => a - b);
  const rows = layers.map((lay) => byLayer.get(lay).sort((a, b) => (KIND_ORDER[a.kind] ?? 5) - (KIND_ORDER[b.kind] ?? 5) ||
    (a.head ?? -1) - (b.head ?? -1) || (a.name < b.name ? -1 : 1)));
  const labels = layers.map((lay, r) => (lay < 0 ? "input" : rows[r].some((n) => n.kind === "logits") ? "logits" : `layer ${lay}`));
  return { rows, labels };
}

// The circuit as inline SVG; returns the svg and, per edge, its path and |score| (for the slider).
function circuitGraph(c) {
  const W_NODE = 58, H_NODE = 20, SLOT = 68, ROW = 52, LEFT = 62, M = 14;
  const { rows, labels } = circuitLayout(c);
  const widest = Math.max(1, ...rows.map((r) => r.length));
  const W = LEFT + widest * SLOT + M, H = 2 * M + (rows.length - 1) * ROW + H_NODE;
  const at = new Map();
  rows.forEach((row, r) => row.forEach((n, i) => at.set(n.name, {
    x: LEFT + ((widest - row.length) / 2 + i + 0.5) * SLOT, y: M + H_NODE / 2 + (rows.length - 1 - r) * ROW, n })));
  const s = svg("svg", { id: "circ-graph", class: "graph", width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  rows.forEach((row, r) => {
    const y = M + H_NODE / 2 + (rows.length - 1 - r) * ROW;
    s.append(svg("line", { x1: LEFT - 4, x2: W - 4, y1: y, y2: y, stroke: "#f0f1f4" }));
    const t = svg("text", { x: 4, y: y + 4, class: "row-label" }); t.textContent = labels[r]; s.append(t);
  });
  const top = Math.max(0, ...c.edges.map((e) => Math.abs(e.score ?? 0)));
  const gEdges = svg("g", {}), gNodes = svg("g", {});
  const order = c.edges.map((e, i) => i).sort((a, b) => Math.abs(c.edges[a].score ?? 0) - Math.abs(c.edges[b].score ?? 0));
  const edges = [];
  for (const i of order) {  // strongest drawn last, on top
    const e = c.edges[i], a = at.get(e.source), b = at.get(e.target);
    if (!a || !b) continue;
    const mag = Math.abs(e.score ?? 0), w = top > 0 ? mag / top : 0;
    const d = Math.abs(a.y - b.y) < 1 ?  // same row (a head into its layer's MLP): bow upwards
      `M${a.x},${a.y} Q${(a.x + b.x) / 2},${a.y - 0.6 * ROW} ${b.x},${b.y}` : `M${a.x},${a.y} L${b.x},${b.y}`;
    const p = svg("path", { class: "e", d, fill: "none", stroke: edgeColor(e.score), "stroke-width": (1 + 5 * w).toFixed(2),
      "stroke-opacity": (0.35 + 0.6 * w).toFixed(2), "data-score": e.score ?? "" });
    if (DASH[e.route]) p.setAttribute("stroke-dasharray", DASH[e.route]);
    const tip = svg("title", {});
    const promotes = a.n.decoded && a.n.decoded.length ? `\n${e.source} promotes: ${a.n.decoded.map((t) => JSON.stringify(t)).join(" ")}` : "";
    tip.textContent = `${e.source} \u2192 ${e.receiver} (route ${e.route})\nscore ${signed(e.score)}${promotes}`;
    p.append(tip);
    gEdges.append(p);
    edges.push({ path: p, mag, source: e.source, target: e.target });
  }
  const nodeEls = new Map();
  for (const { x, y, n } of at.values()) {
    const g = svg("g", { class: "n", "data-name": n.name });
    g.append(svg("rect", { x: x - W_NODE / 2, y: y - H_NODE / 2, width: W_NODE, height: H_NODE, rx: 5,
      fill: KIND_FILL[n.kind] || "#eee" }));
    const t = svg("text", { x, y: y + 4, "text-anchor": "middle" }); t.textContent = n.name; g.append(t);
    const tip = svg("title", {});
    const where = n.kind === "head" ? `head ${n.head} of layer ${n.layer}` : n.kind === "kv-group" ?
      `key/value group ${n.head} of layer ${n.layer}` : n.kind === "mlp" ? `MLP of layer ${n.layer}` : n.kind;
    tip.textContent = `${n.name}: ${where}\nscore ${signed(n.score)} (its edges' scores summed)` +
      (n.decoded && n.decoded.length ? `\npromotes: ${n.decoded.map((d) => JSON.stringify(d)).join(" ")}` : "");
    g.append(tip);
    gNodes.append(g);
    nodeEls.set(n.name, g);
  }
  s.append(gEdges, gNodes);
  return { svg: s, edges, nodeEls };
}

// Faithfulness against the fraction of edges kept (log x), the random control as mean ± std band.
function curveChart(c, curve) {
  const W = 560, H = 240, L = 46, R = 14, T = 12, B = 34, N = c.n_edges_total;
  const xs = curve.fractions.map((f) => Math.max(1, pyRound(f * N)) / N);
  const rnd = curve.random;
  const ys = [...curve.faithfulness, c.faithfulness, curve.target, 0, 1];
  if (rnd) rnd.mean.forEach((m, i) => m !== null && ys.push(m - (rnd.std[i] ?? 0), m + (rnd.std[i] ?? 0)));
  const fin = ys.filter((v) => v !== null && Number.isFinite(v));
  let lo = Math.min(...fin), hi = Math.max(...fin);
  const pad = 0.05 * (hi - lo || 1); lo -= pad; hi += pad;
  const xlo = Math.min(...xs, 1 / N), lx = Math.log10(xlo), span = Math.max(1e-9, -lx);
  const x = (f) => L + ((Math.log10(f) - lx) / span) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  const s = svg("svg", { id: "circ-curve", class: "chart", width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  const text = (attrs, str) => { const t = svg("text", attrs); t.textContent = str; s.append(t); };
  for (let p = Math.ceil(lx); p <= 0; p++) {
    s.append(svg("line", { x1: x(10 ** p), x2: x(10 ** p), y1: T, y2: H - B, stroke: "#eef0f4" }));
    text({ x: x(10 ** p), y: H - B + 14, "text-anchor": "middle" }, String(10 ** p));
  }
  for (const [v, label, color, dash] of [[0, "0 ablated", "#999", ""], [1, "1 full", "#555", ""],
    [curve.target, `target ${curve.target}`, "#1b7f46", "3 3"]]) {
    if (v === null || v === undefined) continue;
    s.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: color, "stroke-dasharray": dash }));
    text({ x: L - 4, y: y(v) + 4, "text-anchor": "end" }, label.split(" ")[0]);
  }
  if (rnd) {
    const ok = rnd.mean.map((m, i) => i).filter((i) => rnd.mean[i] !== null);
    const up = ok.map((i) => `${x(xs[i]).toFixed(1)},${y(rnd.mean[i] + (rnd.std[i] ?? 0)).toFixed(1)}`);
    const down = ok.map((i) => `${x(xs[i]).toFixed(1)},${y(rnd.mean[i] - (rnd.std[i] ?? 0)).toFixed(1)}`).reverse();
    s.append(svg("polygon", { class: "band", points: [...up, ...down].join(" "), fill: "#999", "fill-opacity": 0.22 }));
    s.append(svg("polyline", { class: "random", points: ok.map((i) => `${x(xs[i]).toFixed(1)},${y(rnd.mean[i]).toFixed(1)}`)
      .join(" "), fill: "none", stroke: "#777", "stroke-dasharray": "4 3" }));
  }
  const pts = curve.faithfulness.map((v, i) => [xs[i], v]).filter(([, v]) => v !== null);
  s.append(svg("polyline", { class: "faith", points: pts.map(([f, v]) => `${x(f).toFixed(1)},${y(v).toFixed(1)}`).join(" "),
    fill: "none", stroke: POS, "stroke-width": 2 }));
  for (const [f, v] of pts) s.append(svg("circle", { cx: x(f), cy: y(v), r: 2.5, fill: POS }));
  if (c.faithfulness !== null) {
    s.append(svg("circle", { class: "chosen", cx: x(c.n_edges / N), cy: y(c.faithfulness), r: 5, fill: "#c0504d" }));
  }
  const now = svg("line", { id: "circ-curve-now", y1: T, y2: H - B, stroke: "#c0504d", "stroke-dasharray": "2 2" });
  s.append(now);
  text({ x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" },
    "fraction of the model's edges kept (log scale)");
  s.moveTo = (k) => {  // the slider's circuit, as a vertical line
    const f = Math.max(k, 1) / N;
    now.setAttribute("x1", x(f)); now.setAttribute("x2", x(f));
    now.style.display = k > 0 ? "" : "none";
  };
  return s;
}

function circuitView(d) {
  const c = d.prune.circuit, curve = d.prune.curve, rc = d.prune.random_control, task = d.task;
  const out = [];
  if (c.faithfulness === null) {
    out.push(el("div", { class: "warning" }, "The clean and fully ablated metrics are equal: the task shows no effect " +
      "on this model, so faithfulness is undefined (shown as n/a)."));
  } else if (curve && c.faithfulness < curve.target) {
    out.push(el("div", { class: "warning" }, `No top-k circuit reached the target faithfulness ${curve.target}: ` +
      `the circuit is every edge (faithfulness ${fix(c.faithfulness)}).`));
  }
  const val = (id, x, text) => el("td", { class: "num", id, "data-value": x === null ? "" : String(x) }, text ?? fix(x));
  const rows = [
    ["task", el("td", {}, `${task.name} \u00b7 ${task.n} pairs \u00b7 metric ${task.metric}`)],
    ["clean metric", val("circ-clean", d.clean)],
    ["corrupt metric", val("circ-corrupt", d.corrupt)],
    ["every edge ablated (faithfulness 0)", val("circ-baseline", c.baseline)],
    ["circuit metric", val("circ-metric", c.metric)],
    ["faithfulness of the circuit", val("circ-faith", c.faithfulness)],
    ["edges kept / total", el("td", { class: "num", id: "circ-edges" }, `${c.n_edges} / ${c.n_edges_total}`)],
    [`random circuits of the same size (${rc.n_edges} edges, ${rc.draws.length} draws)`,
      el("td", { class: "num", id: "circ-random" }, `${fix(rc.mean)} \u00b1 ${fix(rc.std)}`)],
  ];
  if (curve) rows.push(["curve: CPR (higher is better) \u00b7 CMD (lower)", el("td", { class: "num" }, `${fix(curve.cpr)} \u00b7 ${fix(curve.cmd)}`)]);
  rows.push(["time", el("td", { class: "num" }, Object.entries(d.seconds).map(([k, v]) => `${k} ${v} s`).join(" \u00b7 "))]);
  const doc = task.meta && task.meta.metric_doc;
  const examples = (task.examples || []).map((ex) => el("tr", {}, el("td", { class: "text" }, ex.clean), el("td", { class: "text" }, ex.corrupt)));
  out.push(el("div", { class: "two" },
    el("div", { class: "card", id: "circ-summary" }, el("h3", {}, `${c.task} circuit \u00b7 ${c.method} \u00b7 ${c.ablation} ablation`),
      el("table", { class: "stats" }, el("tbody", {}, rows.map(([k, v]) => el("tr", {}, el("th", {}, k), v)))),
      el("p", { class: "hint" }, "faithfulness = (circuit metric \u2212 ablated) / (clean \u2212 ablated): 1 = the circuit " +
        "alone recovers the clean metric, 0 = no better than every edge ablated.", doc ? " " + doc : ""),
      examples.length ? el("table", { class: "examples" }, el("thead", {}, el("tr", {}, el("th", {}, "clean"), el("th", {}, "corrupt"))),
        el("tbody", {}, examples)) : null),
    curve ? el("div", { class: "card" }, el("h3", {}, "Faithfulness curve (top-k edges by |score|)"), curveChart(c, curve),
      el("p", { class: "hint" }, "Faithfulness (y) of the top-k edges by |score| (blue, measured points); grey: random " +
        "edge sets of the same sizes, mean \u00b1 std; red dot: the circuit; dashed red line: what the slider below keeps.")) : null));

  const g = circuitGraph(c);
  const points = measuredPoints(c, curve);
  const levels = [...new Set(g.edges.map((e) => e.mag))].sort((a, b) => a - b);  // slider position -> threshold
  const slider = el("input", { type: "range", id: "circ-threshold", min: 0, max: Math.max(0, levels.length - 1), step: 1,
    value: 0, "aria-label": "edge threshold" });
  if (levels.length < 2) slider.disabled = true;
  const count = el("span", { id: "circ-count" }), faith = el("span", { id: "circ-faith-at" });
  const update = () => {
    const t = levels.length ? levels[+slider.value] : 0;
    const alive = new Set();
    let k = 0;
    for (const e of g.edges) {
      const on = e.mag >= t;
      e.path.style.display = on ? "" : "none";
      if (on) { k++; alive.add(e.source); alive.add(e.target); }
    }
    for (const [name, node] of g.nodeEls) node.classList.toggle("faded", !alive.has(name));
    count.textContent = `${k} of ${c.n_edges} circuit edges shown (|score| \u2265 ${t.toPrecision(3)}): ` +
      `${k} of the model's ${c.n_edges_total} edges (${(100 * k / c.n_edges_total).toFixed(2)}%)`;
    count.dataset.k = k;
    const f = faithAt(points, k);
    faith.textContent = `faithfulness of these ${k} edges \u2248 ${fix(f.value)} (${f.how})`;
    faith.dataset.value = f.value === null ? "" : String(f.value);
    const cv = $("circ-curve");
    if (cv && cv.moveTo) cv.moveTo(k);
  };
  slider.addEventListener("input", update);
  out.push(el("div", { class: "card" }, el("h3", {}, "Circuit graph"),
    el("div", { class: "row threshold" }, el("label", {}, "Edge threshold (|score|) ", slider), el("div", {}, count, el("br", {}), faith)),
    el("div", { class: "legend" }, el("span", { style: `color:${POS}` }, "\u2501 positive score"),
      el("span", { style: `color:${NEG}` }, "\u2501 negative score"), el("span", {}, "width \u221d |score| \u00b7 dashed: " +
        "query route, dotted: key route \u00b7 hover an edge or a node for its score and the tokens it promotes")),
    el("div", { class: "graph-wrap" }, g.svg)));
  return { nodes: out, update };
}

$("circ-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  busy(ev.target, "circ-status", "circ-out", async (status) => {
    const num = (s) => (s.trim() !== "" && Number.isFinite(Number(s)) ? Number(s) : s);  // a bad number: the server names it
    const d = await runJob("circuit", {
      task: $("circ-task").value, n: num($("circ-n").value), method: $("circ-method").value,
      ablation: $("circ-ablation").value, target: num($("circ-target").value), seed: num($("circ-seed").value),
    }, status);
    const v = circuitView(d);
    $("circ-out").replaceChildren(...v.nodes);
    $("circ-out").querySelectorAll(".card").forEach((c) => withTools(c, d, `circuit-${d.prune.circuit.task}`));
    v.update();
  });
});
