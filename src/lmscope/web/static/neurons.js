// The Neurons tab: atlas search, a neuron decoded through the LM head, "Clamp it in Generate", and a neuron's
// page (POST /api/neurons/page: examples shaded by activation, histogram, statistics) with its causal tests
// (POST /api/neurons/ablate, /api/neurons/dose). Loaded after app.js, whose helpers it uses.
"use strict";

onInfo((i) => {
  $("neuron-layer").max = i.n_layers - 1;
  $("neuron-layer").min = -i.n_layers;
  $("neuron-n").max = i.d_mlp - 1;
  $("neuron-n").min = -i.d_mlp;
  if (!i.studio.atlas_available) {
    $("search-status").textContent = `No atlas at ${i.studio.atlas_path}; build it once with ` +
      `\`lmscope atlas build ${i.name}\` (decoding a neuron below works without it).`;
  }
});

// ---- Neurons ----------------------------------------------------------------------------------
// A neuron's four weight vectors read through the LM head (GET /api/neuron/L/N). `opts.clamp`: the
// "Clamp it in Generate" button (value 8); `opts.page`: a button that opens the neuron's page below.
function neuronView(d, opts = { clamp: true, page: true }) {
  const kinds = [["in_gate", "reads (gate row)"], ["in_up", "reads (up row)"], ["out", "writes (promotes)"],
    ["out_bottom", "writes (suppresses)"]];
  const cols = kinds.filter(([k]) => d[k]).map(([k, title]) => {
    const max = Math.max(...d[k].map((r) => Math.abs(r.score)), 1e-9);
    return el("div", {}, el("h4", {}, title, " ", el("span", { class: "dim" }, k)),
      el("table", {}, el("tbody", {}, d[k].map((r) => el("tr", {}, el("td", {}, tok(r.token)),
        el("td", { style: "width:45%" }, bar(Math.abs(r.score) / max, r.score < 0)),
        el("td", { class: "num" }, r.score.toFixed(2)))))));
  });
  const site = `layers.${d.layer}.mlp.neurons[${d.neuron}]`;
  const clamp = opts.clamp ? el("button", { type: "button", onclick: () => {
    addEditRow({ type: "clamp", site, value: 8 });
    showTab("generate");
  } }, "Clamp it in Generate \u2192") : null;
  const page = opts.page ? el("button", { type: "button", title: "record its layer and show its examples", onclick: () => {
    $("np-layer").value = d.layer;
    $("np-neuron").value = d.neuron;
    $("np-form").requestSubmit();
    $("np-form").scrollIntoView({ block: "nearest" });
  } }, "Open its page \u2193") : null;
  const title = opts.clamp || opts.page ? `Neuron ${d.layer}.${d.neuron}` : `Neuron ${d.layer}.${d.neuron}: weights through the LM head`;
  return resultCard(title, d, `neuron-${d.layer}.${d.neuron}-decoded`,
    el("div", { class: "row", style: "margin:0 0 .6rem;align-items:center" }, el("code", {}, site), clamp, page),
    el("div", { class: "kinds" }, cols));
}

async function decodeNeuron(layer, n) {
  $("neuron-layer").value = layer;
  $("neuron-n").value = n;
  const d = await api("GET", `/api/neuron/${layer}/${n}?k=12`);
  $("neuron-out").replaceChildren(neuronView(d));
  $("neuron-out").scrollIntoView({ block: "nearest" });
}

$("neuron-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  busy(ev.target, "neuron-status", "neuron-out", () => decodeNeuron(+$("neuron-layer").value, +$("neuron-n").value));
});

$("search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  busy(ev.target, "search-status", "search-out", async () => {
    const q = encodeURIComponent($("search-q").value), kind = $("search-kind").value;
    const d = await api("GET", `/api/atlas/search?q=${q}&kind=${kind}&limit=25`);
    if (!d.results.length) {
      $("search-out").replaceChildren(el("p", { class: "hint" }, `No neuron has ${JSON.stringify(d.query)} among its top tokens.`));
      return;
    }
    const rows = d.results.map((h) => el("tr", { class: "click", title: "decode this neuron", onclick: () =>
      decodeNeuron(h.layer, h.neuron).catch((e) => $("neuron-out").replaceChildren(el("div", { class: "error" }, e.message))) },
      el("td", { class: "num" }, `${h.layer}.${h.neuron}`), el("td", {}, h.kind), el("td", { class: "num" }, h.rank + 1),
      el("td", {}, tok(h.token)), el("td", { class: "num" }, h.score.toFixed(2)), el("td", { class: "num" }, h.n_match),
      el("td", {}, h.top.slice(0, 8).map((t) => [tok(t), " "]))));
    $("search-out").replaceChildren(el("div", { class: "card" },
      el("h3", {}, `${d.results.length} neurons for ${JSON.stringify(d.query)}`, " ",
        el("span", { class: "dim" }, "(click one to decode it)")),
      el("table", {}, el("thead", {}, el("tr", {}, ["neuron", "kind", "rank", "token", "score", "matches", "top tokens"]
        .map((x) => el("th", {}, x)))), el("tbody", {}, rows))));
  });
});

// ---- the neuron page and its causal tests ---------------------------------------------------------
(() => {
  const POS = [224, 110, 20], NEG = [43, 89, 195];  // orange above zero, blue below
  const fmt = (x, d = 4) => (x === null || x === undefined ? "n/a" : Number(x).toPrecision(d));
  const signed = (x, d = 3) => (x === null || x === undefined ? "\u2013" : (x >= 0 ? "+" : "") + Number(x).toPrecision(d));
  // A number that does not parse is sent as typed, so the server's message names the field.
  const num = (s) => (String(s).trim() !== "" && Number.isFinite(Number(s)) ? Number(s) : s);
  const lines = (s) => s.split("\n").filter((p) => p.trim() !== "");
  const share = (p) => (p === 0 ? "0%" : pct(p));  // pct() writes 0 as 0.0e+0

  onInfo((i) => {
    for (const id of ["np-layer"]) { $(id).max = i.n_layers - 1; $(id).min = -i.n_layers; }
    $("np-neuron").max = i.d_mlp - 1;
    $("np-neuron").min = -i.d_mlp;
    const mid = String(Math.floor(i.n_layers / 2));  // a middle layer: past the token-level ones
    $("np-layer").value = $("np-layer").defaultValue = mid;
    const lim = i.studio.neuron_limits;
    if (lim) {
      $("np-tokens").max = lim.max_tokens;
      $("np-text").maxLength = lim.max_corpus_chars;
    }
    refreshRecordings();
  });

  function showSource() {
    const c = $("np-corpus").value;
    $("np-text-box").hidden = c !== "text";
    $("np-file-box").hidden = c !== "file";
    $("np-tokens").disabled = c === "file";
  }
  $("np-corpus").addEventListener("change", showSource);
  showSource();

  // The recording a request reads (the session keeps it: the same source opens at once next time).
  function source() {
    const corpus = $("np-corpus").value, b = { layer: num($("np-layer").value), corpus };
    if (corpus === "text") b.text = $("np-text").value;
    if (corpus === "file") b.file = $("np-file").value.trim();
    else b.max_tokens = num($("np-tokens").value);
    return b;
  }
  const target = () => ({ neuron: num($("np-neuron").value), prompts: lines($("nc-prompts").value),
    target: $("nc-target").value, ...($("nc-baseline").value !== "" ? { baseline: $("nc-baseline").value } : {}) });

  async function refreshRecordings() {
    try {
      const d = await api("GET", "/api/neurons/recordings");
      $("np-files").replaceChildren(...d.files.map((f) => el("option", { value: f })));
      $("np-held").textContent = d.recordings.length ? "Held in this session: " + d.recordings.map((r) =>
        `${r.sites.join(", ")} over ${r.n_tokens.toLocaleString()} tokens of ${r.file || r.corpus}`).join("; ") + "." : "";
    } catch (e) { /* the Show button will say what is wrong */ }
  }

  // ---- the page -------------------------------------------------------------------------------------
  // A token's background: its activation as a share of the recorded max (above zero, orange) or of the
  // recorded min (below zero, blue).
  function shade(a, s) {
    const f = a >= 0 ? (s.max > 0 ? a / s.max : 0) : (s.min < 0 ? a / s.min : 0);
    return `rgba(${(a >= 0 ? POS : NEG).join(",")},${Math.max(0, Math.min(1, f)).toFixed(3)})`;
  }

  function exampleRow(e, rank, s) {
    const spans = e.tokens.map((t, j) => el("span", { class: "act" + (j === e.max_index ? " max" : ""),
      "data-act": String(e.acts[j]), title: `${JSON.stringify(t)}: ${e.acts[j]}`, style: `background:${shade(e.acts[j], s)}` },
    visible(t)));
    return el("tr", {}, el("td", { class: "num" }, rank), el("td", { class: "num" }, fmt(e.max_act)),
      el("td", { class: "num dim" }, `${e.window}:${e.pos}`), el("td", { class: "ctx" }, spans));
  }

  // The recorded histogram: equal-width bars over log-spaced bins (finer near zero, both signs), their
  // heights log10(1 + count), so the rare large activations stay visible next to the mass near zero.
  function histogram(h, s) {
    const W = 460, H = 130, L = 34, B = 30, T = 6;
    const g = svg("svg", { class: "chart np-hist", width: W, height: H + B + T, viewBox: `0 0 ${W} ${H + B + T}`,
      role: "img", "aria-label": "activation histogram" });
    const text = (x, y, str, anchor = "middle") => { const t = svg("text", { x, y, "text-anchor": anchor }); t.textContent = str; g.append(t); };
    if (!h.counts.length) { text(W / 2, H / 2, "no activations recorded"); return g; }
    const n = h.counts.length, top = Math.max(...h.counts), ly = (c) => Math.log10(1 + c) / Math.log10(1 + top);
    const x = (j) => L + (j * (W - L)) / n;
    h.counts.forEach((c, j) => {
      const r = svg("rect", { class: "np-bar", x: x(j), y: T + H * (1 - ly(c)), width: Math.max((W - L) / n - 1, 1),
        height: H * ly(c), fill: `rgb(${(h.edges[j + 1] <= 0 ? NEG : POS).join(",")})`, "data-count": c });
      const tip = svg("title", {}); tip.textContent = `${fmt(h.edges[j], 3)} to ${fmt(h.edges[j + 1], 3)}: ${c} tokens`;
      r.append(tip); g.append(r);
    });
    const zero = h.edges.findIndex((e, j) => j > 0 && h.edges[j - 1] < 0 && e > 0);
    if (zero > 0) g.append(svg("line", { x1: x(zero - 0.5), x2: x(zero - 0.5), y1: T, y2: T + H, stroke: "#6b7385",
      "stroke-dasharray": "3 3" }));
    g.append(svg("line", { x1: L, x2: W, y1: T + H, y2: T + H, stroke: "#6b7385" }));
    text(L - 4, T + 9, String(top), "end");
    text(L - 4, T + H, "0", "end");
    text(L, T + H + 13, fmt(h.edges[0], 3), "start");
    text(W, T + H + 13, fmt(h.edges[n], 3), "end");
    if (zero > 0) text(x(zero - 0.5), T + H + 13, "0");
    text((L + W) / 2, T + H + 27, "activation (log-spaced bins) \u2192 tokens (log scale)");
    return g;
  }

  function statsTable(s, d) {
    const rows = [["tokens", s.count.toLocaleString(), "count"], ["mean", fmt(s.mean), "mean"], ["std", fmt(s.std), "std"],
      ["share > 0", share(s.share_positive), "share_positive"], ["min", fmt(s.min), "min"], ["max", fmt(s.max), "max"],
      ...Object.entries(s.quantiles).map(([q, v]) => [`quantile ${q}`, fmt(v), `q${q}`])];
    return el("table", { class: "stats np-stats" }, el("tbody", {}, rows.map(([k, v, key]) =>
      el("tr", {}, el("th", {}, k), el("td", { class: "num", "data-stat": key }, v)))));
  }

  // "Clamp it in Generate" with a value read from the recording.
  function clampControl(d) {
    const s = d.stats, q = s.quantiles;
    const opts = [["max", s.max], ["quantile 0.999", q["0.999"]], ["quantile 0.99", q["0.99"]], ["2 \u00d7 max", 2 * s.max],
      ["5 \u00d7 max", 5 * s.max], ["10 \u00d7 max", 10 * s.max]].filter(([, v]) => v !== null && v !== undefined)
      .map(([k, v]) => [k, Number(Number(v).toPrecision(4))]);
    const pick = el("select", { class: "np-clamp-at", "aria-label": "clamp value" },
      opts.map(([k, v]) => el("option", { value: String(v) }, `${k} = ${v}`)));
    const go = el("button", { type: "button", class: "np-clamp", onclick: () => {
      addEditRow({ type: "clamp", site: d.site, value: Number(pick.value) });
      showTab("generate");
    } }, "Clamp it in Generate \u2192");
    return el("div", { class: "row np-clamp-row" }, el("label", {}, "Clamp to ", pick), go,
      el("span", { class: "hint" }, "adds a clamp edit on this neuron in the Generate tab"));
  }

  function pageView(d) {
    const s = d.stats, r = d.recording;
    const about = `${d.site} over ${r.n_tokens.toLocaleString()} tokens of ${r.file || r.corpus} ` +
      `(${r.id}; recorded in ${r.seconds.toFixed(1)} s, ${Math.round(r.tokens_per_s).toLocaleString()} tokens/s)`;
    const examples = d.examples.length ? el("table", { class: "contexts np-examples" },
      el("thead", {}, el("tr", {}, ["#", "max", "window:token", "context (hover a token for its activation)"].map((h) => el("th", {}, h)))),
      el("tbody", {}, d.examples.map((e, i) => exampleRow(e, i + 1, s)))) :
      el("p", { class: "hint" }, "No example: the recording saw no text.");
    return resultCard(`Neuron ${d.layer}.${d.neuron} over a corpus`, d, `neuron-${d.layer}.${d.neuron}-page`,
      el("p", { class: "hint np-about" }, about), clampControl(d),
      el("div", { class: "two" }, statsTable(s, d), el("div", {}, histogram(d.histogram, s),
        el("p", { class: "hint" }, "every recorded token of the layer's text (the BOS excluded)"))),
      el("div", { class: "legend" }, `${fmt(s.min, 3)} (min)`, el("span", { class: "ramp np-ramp-neg" }), "0",
        el("span", { class: "ramp act-ramp" }), `${fmt(s.max, 3)} (max) \u00b7 outlined: each text's maximum`),
      examples);
  }

  $("np-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(ev.target, "np-status", "np-out", async (st) => {
      const body = { ...source(), neuron: num($("np-neuron").value), k: num($("np-k").value) };
      const d = await runJob("neurons/page", body, st);
      const out = [pageView(d)];
      try {
        out.push(neuronView(await api("GET", `/api/neuron/${d.layer}/${d.neuron}?k=12`), { clamp: false, page: false }));
      } catch (e) {
        out.push(el("div", { class: "warning" }, `Decoded weights unavailable: ${e.message}`));
      }
      $("np-out").replaceChildren(...out);
      refreshRecordings();
    });
  });

  // ---- ablation ------------------------------------------------------------------------------------
  function ablationView(d) {
    const e = d.effect, c = d.control;
    const rnd = (key, f) => (c && c[key] ? `${f(c[key].mean)} \u00b1 ${Number(c[key].std).toPrecision(2)}` : "\u2013");
    const tgt = JSON.stringify(d.target_token), base = d.baseline_token !== null ? JSON.stringify(d.baseline_token) : null;
    const rows = [
      [`mean p(${tgt})`, fmt(e.p_target_before), fmt(e.p_target_after), signed(e.rel_change_p_target) + " (relative)",
        rnd("rel_change_p_target", signed), "p"],
      ...(e.ld_before !== null ? [
        [`mean logit difference ${tgt} \u2212 ${base}`, signed(e.ld_before), signed(e.ld_after), signed(e.delta_ld),
          rnd("delta_ld", signed), "ld"],
        [`share preferring ${tgt}`, share(e.acc_before), share(e.acc_after), "", rnd("acc_after", share), "acc"],
        ["judgement flips (sign of the difference)", "", share(e.judgement_flip_rate), "", rnd("judgement_flip_rate", share), "flips"],
      ] : []),
      ["top-1 token flips", "", share(e.top1_flip_rate), "", rnd("top1_flip_rate", share), "top1"],
      ...(e.kl_neutral !== null ? [[`KL(clean \u2016 ablated) on ${d.n_neutral} neutral prompts`, "", fmt(e.kl_neutral, 3), "",
        rnd("kl_neutral", (x) => fmt(x, 3)), "kl"]] : []),
    ];
    const table = el("table", { class: "np-ablation" }, el("thead", {}, el("tr", {}, ["metric", "before", "after", "change",
      `${d.n_random} random neurons of layer ${d.layer} (mean \u00b1 std)`].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map(([k, ...v]) => el("tr", { "data-metric": v[4] }, el("th", {}, k),
      v.slice(0, 4).map((x) => el("td", { class: "num" }, x))))));
    const pp = e.per_prompt;
    const per = el("div", { class: "scroll" }, el("table", { class: "stick-first stick-last np-per-prompt" },
      el("thead", {}, el("tr", {}, ["prompt", "p before", "p after", ...(pp.ld_before ? ["LD before", "LD after"] : [])]
        .map((h) => el("th", {}, h)))),
      el("tbody", {}, d.prompts.map((p, i) => el("tr", {}, el("td", { class: "np-prompt" }, el("div", {}, p)),
        el("td", { class: "num" }, fmt(pp.p_target_before[i])), el("td", { class: "num" }, fmt(pp.p_target_after[i])),
        ...(pp.ld_before ? [el("td", { class: "num" }, signed(pp.ld_before[i])), el("td", { class: "num" }, signed(pp.ld_after[i]))] : []))))));
    return resultCard(`${d.method} ablation of neuron ${d.layer}.${d.neuron}`, d, `neuron-${d.layer}.${d.neuron}-ablation`,
      el("p", { class: "hint" }, `${d.site} ${d.method === "zero" ? "set to 0" : `${d.method}-ablated (reference: ${d.reference})`} ` +
        `at every position of ${d.prompts.length} prompts; measured at the last token.`), table, per);
  }

  $("nab-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(ev.target, "nab-status", "nab-out", async (st) => {
      const body = { ...source(), ...target(), method: $("nab-method").value, n_random: num($("nab-random").value),
        n_neutral: num($("nab-neutral").value) };
      $("nab-out").replaceChildren(ablationView(await runJob("neurons/ablate", body, st)));
      refreshRecordings();
    });
  });

  // ---- dose-response ---------------------------------------------------------------------------------
  function doseChart(d) {
    const W = 560, H = 240, L = 52, R = 14, T = 12, B = 40;
    const lo = Math.min(...d.values), hi = Math.max(...d.values), span = hi - lo || 1;
    const ps = [...d.p_target, ...(d.p_baseline || []), d.clean_p_target];
    const topP = Math.max(...ps, 1e-4);
    const ymax = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1].find((v) => v >= topP) || 1;
    const x = (v) => L + ((v - lo) / span) * (W - L - R), y = (p) => T + (1 - p / ymax) * (H - T - B);
    const g = svg("svg", { class: "chart np-dose", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": "dose-response curve" });
    const text = (tx, ty, str, anchor = "middle") => { const t = svg("text", { x: tx, y: ty, "text-anchor": anchor }); t.textContent = str; g.append(t); };
    const band = (a, b, fill, cls, tip) => {
      const x0 = x(Math.max(lo, Math.min(hi, a))), x1 = x(Math.max(lo, Math.min(hi, b)));
      const r = svg("rect", { class: cls, x: x0, y: T, width: Math.max(x1 - x0, 0), height: H - T - B, fill });
      const t = svg("title", {}); t.textContent = tip; r.append(t); g.append(r);
    };
    band(d.recorded.q01, d.recorded.q99, "rgba(107,115,133,.16)", "np-band-corpus",
      `recorded over the corpus: 1% to 99% of tokens, ${fmt(d.recorded.q01, 3)} to ${fmt(d.recorded.q99, 3)}`);
    band(d.natural.q01, d.natural.q99, "rgba(224,110,20,.18)", "np-band-prompts",
      `on these prompts: 1% to 99%, ${fmt(d.natural.q01, 3)} to ${fmt(d.natural.q99, 3)}`);
    for (const f of [0, 0.25, 0.5, 0.75, 1]) {
      g.append(svg("line", { x1: L, x2: W - R, y1: y(f * ymax), y2: y(f * ymax), stroke: "#e1e4ea" }));
      text(L - 6, y(f * ymax) + 4, String(Number((f * ymax).toPrecision(2))), "end");
    }
    for (const v of [lo, (lo + hi) / 2, hi]) text(x(v), H - B + 15, fmt(v, 3));
    text((L + W - R) / 2, H - 6, `value the neuron is set to \u2192 p(${JSON.stringify(d.target)}) at the last token`);
    g.append(svg("line", { x1: L, x2: W - R, y1: y(d.clean_p_target), y2: y(d.clean_p_target), stroke: COLORS[0],
      "stroke-dasharray": "4 3", class: "np-clean" }));
    const curve = (vals, colour, cls, name) => {
      g.append(svg("polyline", { points: vals.map((p, i) => `${x(d.values[i]).toFixed(1)},${y(p).toFixed(1)}`).join(" "),
        fill: "none", stroke: colour, "stroke-width": 2 }));
      vals.forEach((p, i) => {
        const c = svg("circle", { class: cls, cx: x(d.values[i]), cy: y(p), r: 3.5, fill: colour,
          "data-value": d.values[i], "data-p": p });
        const t = svg("title", {}); t.textContent = `${name} = ${fmt(p)} at ${d.values[i]}`; c.append(t); g.append(c);
      });
    };
    if (d.p_baseline) curve(d.p_baseline, COLORS[1], "np-pt-base", `p(${JSON.stringify(d.baseline)})`);
    curve(d.p_target, COLORS[0], "np-pt", `p(${JSON.stringify(d.target)})`);
    return g;
  }

  function doseView(d) {
    const key = el("div", { class: "legend" }, el("span", { class: "np-key", style: `background:${COLORS[0]}` }),
      `p(${JSON.stringify(d.target)})`, d.p_baseline ? [el("span", { class: "np-key", style: `background:${COLORS[1]}` }),
        `p(${JSON.stringify(d.baseline)})`] : null, ` \u00b7 dashed: clean p = ${fmt(d.clean_p_target)} \u00b7`,
      el("span", { class: "np-key", style: "background:rgba(107,115,133,.3)" }), "corpus 1\u201399%",
      el("span", { class: "np-key", style: "background:rgba(224,110,20,.35)" }), "these prompts 1\u201399%");
    const table = el("div", { class: "scroll np-dose-wrap" }, el("table", { class: "stick-first np-dose-table" },
      el("thead", {}, el("tr", {}, ["value", `p(${JSON.stringify(d.target)})`,
        ...(d.p_baseline ? [`p(${JSON.stringify(d.baseline)})`, "LD"] : [])].map((h) => el("th", {}, h)))),
      el("tbody", {}, d.values.map((v, i) => el("tr", {}, el("td", { class: "num" }, String(v)),
        el("td", { class: "num" }, fmt(d.p_target[i])),
        ...(d.p_baseline ? [el("td", { class: "num" }, fmt(d.p_baseline[i])), el("td", { class: "num" }, signed(d.ld[i]))] : []))))));
    return resultCard(`Dose-response of neuron ${d.layer}.${d.neuron}`, d, `neuron-${d.layer}.${d.neuron}-dose`,
      el("p", { class: "hint" }, `${d.site} set to each value at ${d.positions === "all" ? "every position" : "the last token"} ` +
        `of ${d.prompts.length} prompts. Recorded over the corpus: min ${fmt(d.recorded.min, 3)}, max ${fmt(d.recorded.max, 3)}.`),
      key, el("div", { class: "np-dose-grid" }, doseChart(d), table));
  }

  $("ndose-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(ev.target, "ndose-status", "ndose-out", async (st) => {
      const typed = $("ndose-values").value.split(/[\s,]+/).filter((v) => v !== "").map(num);
      const body = { ...source(), ...target(), positions: $("ndose-positions").value,
        ...(typed.length ? { values: typed } : { n_values: num($("ndose-n").value) }) };
      $("ndose-out").replaceChildren(doseView(await runJob("neurons/dose", body, st)));
      refreshRecordings();
    });
  });
})();
