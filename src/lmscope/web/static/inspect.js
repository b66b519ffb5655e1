// lmscope studio, the Inspect tab (POST /api/inspect/decompose, /part, /patchscope_sweep,
// /patchscope_benchmark, /token_edit): direct logit attribution per layer and head, one part of the
// residual in token space, Patchscope layer sweeps and token-space edits. Loaded after app.js, whose
// helpers ($, el, svg, tok, visible, pct, bar, api, busy, runJob, resultCard, onInfo, STATE, diffView)
// it uses; its own names stay inside this function so they cannot clash with the other tabs' scripts.
"use strict";

(() => {
  let LAST = null;      // {body, data} of the attribution shown: a part is read with the same request
  let PART = null;      // the part whose tokens are shown (kept in the URL)
  let PENDING = null;   // a part to open once a restored attribution has loaded
  const N_LAYERS = () => (INFO ? INFO.n_layers : null);

  // A number field's value; one that does not parse is sent as typed, so the server's message names it.
  const num = (s) => (s.trim() !== "" && Number.isFinite(Number(s)) ? Number(s) : s);
  const signed = (x, d = 3) => (x === null || x === undefined ? "n/a" : (x >= 0 ? "+" : "\u2212") + Math.abs(x).toFixed(d));
  const optText = (id) => ($(id).value === "" ? null : $(id).value);
  // JSON has no NaN: a non-finite number arrives as null (a residual that overflowed its dtype)
  const fix = (x, d = 3) => (x === null || x === undefined ? "n/a" : x.toFixed(d));
  const pc = (p) => (p === null || p === undefined ? "n/a" : pct(p));

  // "0,4,8", "4:12" (4..11), "0:18:3", "-1" -> a list of layers; empty -> null (every layer).
  function parseLayers(text) {
    const s = text.replace(/\s+/g, "");
    if (!s) return null;
    const out = [];
    for (const part of s.split(",")) {
      if (/^-?\d+$/.test(part)) { out.push(Number(part)); continue; }
      const m = part.match(/^(-?\d*):(-?\d*)(?::(\d+))?$/);
      if (!m || !N_LAYERS()) throw new Error(`Layers: cannot read ${JSON.stringify(part)}; write them like 0,4,8 or 4:12 (4..11) or 0:18:3.`);
      const n = N_LAYERS(), at = (v, d) => (v === "" ? d : Number(v) < 0 ? n + Number(v) : Number(v));
      const [a, b, step] = [at(m[1], 0), Math.min(n, at(m[2], n)), m[3] ? Number(m[3]) : 1];
      if (step < 1) throw new Error("Layers: a step must be 1 or more.");
      for (let x = a; x < b; x += step) out.push(x);
    }
    if (!out.length) throw new Error(`Layers: ${JSON.stringify(text)} names no layer.`);
    return out;
  }

  // ---- colours: blue for a positive part, red for a negative one, white for zero ----------------------
  const POS_RGB = [33, 102, 172], NEG_RGB = [178, 24, 43];
  function diverge(v, max) {
    const a = Math.min(1, Math.abs(v) / (max || 1)), c = v >= 0 ? POS_RGB : NEG_RGB;
    return `rgb(${c.map((x) => Math.round(255 + (x - 255) * a)).join(",")})`;
  }
  const ink = (v, max) => (Math.abs(v) / (max || 1) > 0.55 ? "#fff" : "#1d2330");
  const legend = (max, what) => el("div", { class: "legend" }, signed(-max, 2), el("span", { class: "insp-ramp" }),
    signed(max, 2), el("span", {}, `\u00b7 ${what}`));

  function tokenChips(tokens, at) {
    const p = at < 0 ? tokens.length + at : at;
    return el("div", { class: "tokens" }, tokens.map((t, i) => {
      const c = tok(t);
      c.title = `position ${i} (${i - tokens.length}): ${JSON.stringify(t)}`;
      if (i === p) c.classList.add("insp-at");
      return c;
    }));
  }
  const warnings = (d) => (d.warnings || []).map((w) => el("div", { class: "warning" }, w));

  // Arrow keys move between the grid's focusable cells (one tab stop); Home / End to a row's ends.
  function gridKeys(table, readout) {
    table.addEventListener("keydown", (ev) => gridMove(table, ev, "[data-cell]"));
    const say = (ev) => { const c = ev.target.closest && ev.target.closest("[data-cell]"); if (c) readout.textContent = c.title; };
    table.addEventListener("focusin", say);
    table.addEventListener("mouseover", say);
  }

  // ---- decomposition and DLA --------------------------------------------------------------------------
  function what(d) {
    return `logit ${JSON.stringify(d.target)}` + (d.baseline !== null ? ` \u2212 logit ${JSON.stringify(d.baseline)}` : "");
  }

  // One coloured, focusable cell of a part (a head, a bias, an MLP, an embedding) or a total.
  function dlaCell(label, v, max, title, click) {
    return el("td", { class: "num dla-cell", "data-cell": "", "data-part": label, "data-dla": String(v), tabindex: "-1",
      role: "gridcell", title: `${title}: DLA ${String(v)}`, style: `background:${diverge(v, max)};color:${ink(v, max)}`,
      ...(click ? { onclick: click } : {}) }, signed(v, 2));
  }

  function heatTable(d) {
    const L = d.per_layer.attn.length, H = d.n_heads, P = d.parts;
    const hasBias = Object.keys(P).some((k) => k.endsWith(".attn_bias"));
    const max = Math.max(1e-12, ...Object.values(P).map(Math.abs));
    const totals = d.per_layer.attn.map((a, l) => a + d.per_layer.mlp[l]);
    const tmax = Math.max(1e-12, ...totals.map(Math.abs), Math.abs(d.per_layer.embed));
    const heads = [...Array(H).keys()];
    const head = el("tr", {}, el("th", { scope: "col" }, "layer"), heads.map((h) => el("th", { scope: "col", class: "num" }, `H${h}`)),
      hasBias ? el("th", { scope: "col", class: "num", title: "the o_proj bias" }, "bias") : null,
      el("th", { scope: "col", class: "num" }, "MLP"), el("th", { scope: "col", class: "num", title: "heads + bias" }, "attention"),
      el("th", { scope: "col", class: "num", title: "attention + MLP" }, "layer total"));
    const embParts = ["embed", "pos_embed"].filter((k) => k in P);
    const embRow = el("tr", { class: "insp-embed" }, el("th", { scope: "row" }, "emb"),
      el("td", { colspan: String(H + (hasBias ? 1 : 0) + 2) }, embParts.map((k) => el("span", { class: "insp-emb-part" },
        `${k} `, el("span", { class: "dla-cell chip-cell", "data-cell": "", "data-part": k, "data-dla": String(P[k]),
          tabindex: "-1", role: "gridcell", title: `${k}: DLA ${String(P[k])}`, onclick: () => showPart(k),
          style: `background:${diverge(P[k], max)};color:${ink(P[k], max)}` }, signed(P[k], 2))))),
      dlaCell("emb total", d.per_layer.embed, tmax, "embeddings"));
    const rows = [...Array(L).keys()].map((l) => el("tr", {}, el("th", { scope: "row" }, `L${l}`),
      heads.map((h) => dlaCell(`L${l}.H${h}`, d.heads[l][h], max, `L${l}.H${h}`, () => showPart(`L${l}.H${h}`))),
      hasBias ? (`L${l}.attn_bias` in P ? dlaCell(`L${l}.attn_bias`, P[`L${l}.attn_bias`], max, `L${l}.attn_bias`,
        () => showPart(`L${l}.attn_bias`)) : el("td", {})) : null,
      dlaCell(`L${l}.mlp`, P[`L${l}.mlp`], max, `L${l}.mlp`, () => showPart(`L${l}.mlp`)),
      dlaCell(`L${l} attention`, d.per_layer.attn[l], tmax, `L${l} attention (heads + bias)`),
      dlaCell(`L${l} total`, totals[l], tmax, `L${l} total (attention + MLP)`)));
    const table = el("table", { id: "insp-heat", class: "insp-heat stick-first stick-last", role: "grid",
      "aria-label": "direct logit attribution of every head and MLP: layers are rows" },
    el("thead", {}, head), el("tbody", {}, embRow, rows));
    const first = table.querySelector("tbody tr:nth-child(2) [data-cell]") || table.querySelector("[data-cell]");
    if (first) first.tabIndex = 0;
    const readout = el("p", { class: "hint", id: "insp-cell", "aria-live": "polite" },
      "Hover a cell, or focus the grid and move with the arrow keys, for its exact value; click a head, MLP or " +
      "embedding (or press Enter) for the tokens it writes.");
    gridKeys(table, readout);
    return [legend(max, "heads, bias, MLP and embedding parts; the two total columns have their own scale " +
      `(\u00b1${tmax.toFixed(2)})`), el("div", { class: "scroll" }, table), readout];
  }

  // Attention and MLP DLA per layer as bars around zero (inline SVG).
  function layerChart(d) {
    const attn = d.per_layer.attn, mlp = d.per_layer.mlp, n = attn.length;
    const W = 640, H = 200, L = 48, R = 10, T = 10, B = 34;
    const top = Math.max(1e-12, ...attn.map(Math.abs), ...mlp.map(Math.abs));
    const y = (v) => T + (1 - (v + top) / (2 * top)) * (H - T - B);
    const slot = (W - L - R) / n, bw = Math.max(1, slot * 0.38);
    const s = svg("svg", { class: "chart", id: "insp-layer-chart", width: W, height: H, viewBox: `0 0 ${W} ${H}`,
      role: "img", "aria-label": "attention and MLP DLA per layer" });
    for (const f of [-1, -0.5, 0, 0.5, 1]) {
      s.append(svg("line", { x1: L, x2: W - R, y1: y(f * top), y2: y(f * top), stroke: f === 0 ? "#9aa1ad" : "#e1e4ea" }));
      const t = svg("text", { x: L - 6, y: y(f * top) + 4, "text-anchor": "end" });
      t.textContent = (f * top).toFixed(top < 1 ? 2 : 1);
      s.append(t);
    }
    const step = Math.max(1, Math.ceil(n / 18));
    for (let l = 0; l < n; l++) {
      [[attn[l], "#2b59c3", 0, "attention"], [mlp[l], "#d68910", 1, "MLP"]].forEach(([v, c, k, name]) => {
        const x = L + l * slot + slot * 0.1 + k * bw;
        const r = svg("rect", { x, y: Math.min(y(v), y(0)), width: bw, height: Math.max(0.5, Math.abs(y(v) - y(0))), fill: c });
        const tt = svg("title", {});
        tt.textContent = `L${l} ${name}: ${String(v)}`;
        r.append(tt);
        s.append(r);
      });
      if (l % step === 0 || l === n - 1) {
        const t = svg("text", { x: L + (l + 0.5) * slot, y: H - B + 14, "text-anchor": "middle" });
        t.textContent = l;
        s.append(t);
      }
    }
    const lab = svg("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" });
    lab.textContent = "layer \u2192 DLA (blue: attention, orange: MLP)";
    s.append(lab);
    return s;
  }

  function topTable(d) {
    const max = Math.max(1e-12, ...d.top_parts.map((r) => Math.abs(r.dla)));
    return el("table", { id: "insp-top" }, el("thead", {}, el("tr", {}, ["#", "part", "DLA", ""].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, d.top_parts.map((r, i) => el("tr", { class: "click", onclick: () => showPart(r.part), title: `${r.part}: DLA ${String(r.dla)}` },
        el("td", { class: "num" }, i + 1), el("td", { class: "mono" }, r.part),
        el("td", { class: "num", "data-dla": String(r.dla) }, signed(r.dla)),
        el("td", { style: "width:40%" }, bar(Math.abs(r.dla) / max, r.dla < 0))))));
  }

  const tokList = (pairs) => el("span", { class: "insp-toks" }, pairs.map(([t, v]) => {
    const c = tok(t);
    c.title = `${JSON.stringify(t)}: ${String(v)}`;
    return c;
  }));

  function layerTokensTable(d) {
    const mode = d.layer_tokens[0].mode;
    return [el("h4", {}, `What each block writes, in tokens (${mode === "frozen" ? "through the final norm, its scale frozen" :
      mode === "own_norm" ? "each write through the final norm on its own: a logit lens of the write" : "W_U only"})`),
    el("div", { class: "scroll" }, el("table", { id: "insp-layer-tokens", class: "stick-first stick-last" },
      el("thead", {}, el("tr", {}, ["layer", "attention writes", "attention removes", "MLP writes", "MLP removes"].map((h) =>
        el("th", { scope: "col" }, h)))),
      el("tbody", {}, d.layer_tokens.map((r) => el("tr", {}, el("th", { scope: "row" }, `L${r.layer}`),
        el("td", {}, tokList(r.attn.top)), el("td", {}, tokList(r.attn.bottom)),
        el("td", {}, tokList(r.mlp.top)), el("td", {}, tokList(r.mlp.bottom)))))))];
  }

  function dlaView(d) {
    const last = d.per_layer.attn.length - 1;
    const err = d.dla_sum_error === null ? "n/a" : d.dla_sum_error.toExponential(1);
    return resultCard(`DLA to ${what(d)} at layers.${d.layer}.resid_post, position ${d.position}`, d,
      `dla_${d.layer}_${d.position}`, ...warnings(d),
      tokenChips(d.tokens, d.position),
      el("p", { id: "insp-dla-summary" }, `${what(d)} = `, el("b", {}, fix(d.logit)),
        `; the parts sum to ${fix(d.dla_sum)} + constant ${fix(d.constant)} (error ${err}).` +
        (d.softcap ? ` After the final softcap (${d.softcap}) the model's own value is ${fix(d.logit_final)}.` : "") +
        ` The parts sum to the real residual within a relative error of ${d.resid_rel_error === null ? "n/a" :
          d.resid_rel_error.toExponential(1)}. Embeddings ${signed(d.per_layer.embed)}; attention of all ${last + 1} ` +
        `blocks ${signed(d.per_layer.attn.reduce((a, b) => a + b, 0))}, MLPs ${signed(d.per_layer.mlp.reduce((a, b) => a + b, 0))}.`),
      el("p", { class: "hint" }, d.approximation),
      ...heatTable(d),
      el("div", { class: "two insp-two" }, el("div", {}, el("h4", {}, "Attention and MLP per layer"), layerChart(d)),
        el("div", {}, el("h4", {}, `Top ${d.top_parts.length} parts by |DLA|`), topTable(d))),
      ...(d.layer_tokens ? layerTokensTable(d) : []));
  }

  async function showPart(label) {
    if (!LAST) return;
    const out = $("insp-part-out"), b = LAST.body;
    const body = { prompt: b.prompt, part: label, layer: b.layer, position: b.position, chat: b.chat, k: 10,
      mode: b.unembed_mode };
    out.replaceChildren(el("p", { class: "status" }, `reading ${label}\u2026`));
    try {
      const d = await api("POST", "/api/inspect/part", body);
      const dla = LAST.data.parts[label];
      const col = (title, pairs) => el("div", {}, el("h4", {}, title), el("table", {}, el("tbody", {},
        pairs.map(([t, v]) => el("tr", {}, el("td", {}, tok(t)), el("td", { class: "num" }, fix(v)))))));
      out.replaceChildren(resultCard(`${label} in token space`, d, `part_${label}`,
        el("p", { class: "hint", id: "insp-part-summary" }, `${label} (${d.kind}${d.head >= 0 ? `, layer ${d.part_layer} head ${d.head}` :
          d.part_layer >= 0 ? `, layer ${d.part_layer}` : ""}): norm ${d.norm === null ? "n/a" : d.norm.toPrecision(4)}, DLA ${signed(dla)}; ` +
          `its logits ${d.mode === "frozen" ? "through the final norm with the scale frozen at the full residual" :
            d.mode === "own_norm" ? "through the final norm on its own" : "through W_U only"}.`),
        el("div", { class: "two" }, col("tokens it raises", d.top), col("tokens it lowers", d.bottom))));
      PART = label;
      saveState($("insp-dla-form"));
    } catch (e) {
      out.replaceChildren(el("div", { class: "error", role: "alert" }, e.message));
    }
  }

  $("insp-dla-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    PART = null;
    $("insp-part-out").replaceChildren();
    saveState(ev.target);  // without the part of an earlier answer
    busy(ev.target, "insp-dla-status", "insp-dla-out", async () => {
      const body = { prompt: $("insp-dla-prompt").value, target: $("insp-dla-target").value,
        baseline: optText("insp-dla-baseline"), layer: num($("insp-dla-layer").value), position: num($("insp-dla-pos").value),
        top: num($("insp-dla-top").value), layer_tokens: num($("insp-dla-ltk").value), unembed_mode: $("insp-dla-mode").value,
        chat: $("insp-dla-chat").checked };
      const d = await api("POST", "/api/inspect/decompose", body);
      LAST = { body, data: d };
      $("insp-dla-out").replaceChildren(dlaView(d));
      if (PENDING) { const p = PENDING; PENDING = null; await showPart(p); }
    });
  });

  STATE.hooks.inspect = {
    save: () => PART || "",
    load: (v) => { PENDING = v || null; },
  };

  // ---- Patchscope layer sweep ---------------------------------------------------------------------------
  const syncTarget = () => { $("insp-ps-custom").hidden = $("insp-ps-target").value !== "custom"; };
  $("insp-ps-target").addEventListener("change", syncTarget);

  const probCell = (r) => el("td", { class: "insp-tp", title: `${JSON.stringify(r.token)} id ${r.id}: ${String(r.prob)}` },
    tok(r.token), " ", el("span", { class: "dim" }, pc(r.prob)));
  const topLine = (rows) => el("span", { class: "insp-toks" }, rows.map((r) => el("span", { class: "insp-tp",
    title: `${JSON.stringify(r.token)}: ${String(r.prob)}` }, tok(r.token), " ", el("span", { class: "dim" }, pc(r.prob)))));

  function sweepView(d) {
    const r0 = d.rows[0], k = d.k;
    const head = el("tr", {}, el("th", { scope: "col" }, "layer"),
      [...Array(k).keys()].map((i) => el("th", { scope: "col" }, `patched #${i + 1}`)),
      el("th", { scope: "col", title: "the state read through the final norm and unembedding" }, "logit lens #1"),
      el("th", { scope: "col" }, d.max_new_tokens ? "generated" : "generated (none asked)"));
    const rows = d.rows.map((r) => el("tr", { "data-layer": String(r.source_layer) },
      el("th", { scope: "row" }, r.target_layer === r.source_layer ? `${r.source_layer}` : `${r.source_layer} \u2192 ${r.target_layer}`),
      r.top.map(probCell), probCell(r.logit_lens[0]),
      el("td", { class: "insp-gen", title: JSON.stringify(r.text) }, r.text === null ? "\u2013" : visible(r.text))));
    return resultCard(`Patchscope of ${JSON.stringify(r0.source_token)} (source position ${d.source_position}) through ` +
      `the ${d.target === "custom" ? "your" : d.target} target, ${d.rows.length} layers`, d, `patchscope_sweep`,
    tokenChips(d.source_tokens, d.source_position),
    el("p", { class: "hint" }, `Target prompt, patched at token ${r0.target_position} ` +
      `(${d.target_layer === null ? "the same layer as the source" : `layer ${r0.target_layer}`}):`),
    el("pre", { class: "insp-prompt" }, r0.target_prompt),
    el("p", { id: "insp-ps-plain" }, "Without a patch the target predicts ", topLine(r0.top_unpatched.slice(0, 3)),
      r0.text_unpatched !== null ? [" and continues ", el("code", { class: "insp-code" }, visible(r0.text_unpatched))] : "",
      "; the source itself predicts ", topLine(r0.source_next.slice(0, 3)), " after that token."),
    el("div", { class: "scroll" }, el("table", { id: "insp-ps-table", class: "stick-first stick-last" },
      el("thead", {}, head), el("tbody", {}, rows))));
  }

  $("insp-ps-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    PENDING = null;  // a part restored from a URL belongs to an attribution, not to this form
    busy(ev.target, "insp-ps-status", "insp-ps-out", async (st) => {
      const target = $("insp-ps-target").value;
      const body = { source: $("insp-ps-source").value, source_position: num($("insp-ps-pos").value), target,
        placeholder: $("insp-ps-ph").value, k: num($("insp-ps-k").value), max_new_tokens: num($("insp-ps-n").value) };
      if (target === "custom") body.target_prompt = $("insp-ps-tprompt").value;
      const layers = parseLayers($("insp-ps-layers").value);
      if (layers) body.layers = layers;
      if ($("insp-ps-tlayer").value.trim() !== "") body.target_layer = num($("insp-ps-tlayer").value);
      const d = await runJob("inspect/patchscope_sweep", body, st);
      $("insp-ps-out").replaceChildren(sweepView(d));
    });
  });

  // ---- Patchscope precision over many sources ---------------------------------------------------------------
  const rateCell = (v) => el("td", { class: "insp-rate", "data-v": String(v), title: String(v) },
    el("span", { class: "num" }, v === null ? "n/a" : v.toFixed(2)), bar(v || 0));

  function benchView(d) {
    const identity = d.kind === "identity";
    const cols = identity ? [["Patchscope", d.patchscope], ["logit lens", d.logit_lens], ["shuffled control", d.shuffled]]
      : [["keyword hit rate", d.hit_rate], ["shuffled control", d.shuffled]];
    const head = el("tr", {}, el("th", { scope: "col" }, "layer"), cols.map(([c]) => el("th", { scope: "col" }, c)),
      identity ? el("th", { scope: "col", title: "mean -log p of the model's own next token" }, "surprisal (Patchscope / lens)")
        : el("th", { scope: "col" }, "examples"));
    const rows = d.layers.map((lay, i) => el("tr", {}, el("th", { scope: "row" }, lay), cols.map(([, v]) => rateCell(v[i])),
      identity ? el("td", { class: "num" }, `${fix(d.patchscope_surprisal[i], 2)} / ${fix(d.logit_lens_surprisal[i], 2)}`)
        : el("td", { class: "insp-gen" }, (d.examples[String(lay)] || []).map(([e, t]) => `${e}: ${visible(t)}`).join(" \u00b7 "))));
    return resultCard(identity ? `Token identity: precision@1 per layer over ${d.n} source positions`
      : `Entity description: keyword hits per layer over ${d.n} entities`, d, `patchscope_${d.kind}`,
    el("p", { class: "hint" }, identity ? `How often the top token equals the model's own next token at the source ` +
      `position; the unpatched target agrees ${fix(d.unpatched, 2)} of the time.` :
      `Share of the descriptions whose first item names one of the entity's keywords; the unpatched target ` +
      `scores ${fix(d.unpatched, 2)}.`),
    el("div", { class: "scroll" }, el("table", { id: "insp-bench-table", class: "stick-first stick-last" },
      el("thead", {}, head), el("tbody", {}, rows))),
    identity && d.sources.length ? el("details", {}, el("summary", {}, `the ${d.sources.length} source positions`),
      el("ul", { class: "insp-sources" }, d.sources.map((x) => el("li", {}, el("span", { class: "dim" }, visible(x.text)),
        " \u2192 next token ", tok(x.prediction))))) : "");
  }

  $("insp-bench-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    PENDING = null;  // a part restored from a URL belongs to an attribution, not to this form
    busy(ev.target, "insp-bench-status", "insp-bench-out", async (st) => {
      const body = { kind: $("insp-bench-kind").value, n: num($("insp-bench-n").value), seed: num($("insp-bench-seed").value),
        max_new_tokens: num($("insp-bench-n-new").value) };
      const layers = parseLayers($("insp-bench-layers").value);
      if (layers) body.layers = layers;
      const d = await runJob("inspect/patchscope_benchmark", body, st);
      $("insp-bench-out").replaceChildren(benchView(d));
    });
  });

  // ---- token-space edit -------------------------------------------------------------------------------------
  function editView(d) {
    const toks = Object.keys(d.probs.before);
    const probs = el("table", { id: "insp-edit-probs" }, el("thead", {}, el("tr", {},
      ["token", "before", "after", "random control"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, toks.map((t) => el("tr", {}, el("td", {}, tok(t)),
      ["before", "after", "control"].map((k) => el("td", { class: "num", "data-p": String(d.probs[k][t]),
        title: String(d.probs[k][t]) }, pc(d.probs[k][t])))))));
    const dist = (title, rows, id) => el("div", { class: "card" }, el("h4", {}, title), el("table", { id },
      el("tbody", {}, rows.map((r, i) => el("tr", {}, el("td", { class: "num dim" }, i + 1), el("td", {}, tok(r.token)),
        el("td", { style: "width:35%" }, bar(r.prob || 0)), el("td", { class: "num", title: String(r.prob) }, pc(r.prob)))))));
    const out = [...warnings(d),
      el("p", { id: "insp-edit-summary" }, `${d.subtract !== null ? `\u2212 ${JSON.stringify(d.subtract)} ` : ""}` +
        `${d.add !== null ? `+ ${JSON.stringify(d.add)} ` : ""}at layers.${d.layer}.resid_post, position ${d.position}: ` +
        `a vector of norm ${fix(d.vector_norm, 1)} on a residual of norm ${fix(d.resid_norm, 1)} ` +
        `(scale ${d.scale}${d.relative ? " of the residual norm" : ", absolute"}${d.divide_by_gain ? ", divided by the norm's gain" : ""}).`),
      probs,
      el("div", { class: "insp-three" }, dist("before", d.before, "insp-edit-before"), dist("after the edit", d.after, "insp-edit-after"),
        dist(`random vector of the same norm (seed ${d.seed})`, d.control, "insp-edit-control"))];
    if (d.text_after !== null && d.text_after !== undefined) {
      const v = diffView(d.text_before, d.text_after);
      const col = (title, parts, id) => el("div", { class: "card" }, el("h4", {}, title),
        el("div", { class: "text", id }, el("span", { class: "prompt" }, d.chat ? "" : d.prompt), parts));
      out.push(el("p", { class: "hint" }, v.same ? "The greedy continuation did not change." :
        "Greedy continuations; highlighted: where they part."),
      el("div", { class: "side" }, col("before", v.base, "insp-gen-before"), col("after the edit", v.edited, "insp-gen-after")));
    }
    return resultCard(`Token-space edit at layers.${d.layer}.resid_post`, d, `token_edit_${d.layer}`, ...out);
  }

  $("insp-edit-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    PENDING = null;  // a part restored from a URL belongs to an attribution, not to this form
    busy(ev.target, "insp-edit-status", "insp-edit-out", async (st) => {
      const body = { prompt: $("insp-edit-prompt").value, layer: num($("insp-edit-layer").value),
        position: num($("insp-edit-pos").value), subtract: optText("insp-edit-sub"), add: optText("insp-edit-add"),
        scale: num($("insp-edit-scale").value), relative: !$("insp-edit-abs").checked,
        divide_by_gain: $("insp-edit-gain").checked, k: num($("insp-edit-k").value), max_new_tokens: num($("insp-edit-n").value),
        seed: num($("insp-edit-seed").value), chat: $("insp-edit-chat").checked };
      const d = await runJob("inspect/token_edit", body, st);
      $("insp-edit-out").replaceChildren(editView(d));
    });
  });

  // ---- ranges from the model: layer boxes, and the token edit's default layer (2/3 of the depth) ----------
  onInfo((info) => {
    const n = info.n_layers;
    for (const id of ["insp-dla-layer", "insp-edit-layer", "insp-ps-tlayer"]) { $(id).min = -n; $(id).max = n - 1; }
    $("insp-edit-layer").defaultValue = String(Math.round((2 * n) / 3));
    const lim = info.studio.inspect;
    if (lim) {
      $("insp-ps-n").max = lim.max_sweep_new_tokens;
      $("insp-bench-n-new").max = lim.max_entity_new_tokens;
    }
    $("insp-edit-n").max = info.studio.max_new_tokens;
  });
  syncTarget();
})();
