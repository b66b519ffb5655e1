// lmscope studio, the Function vectors tab (POST /api/fv/run as a job, /api/fv/try, /api/fv/show, /api/fv/save,
// GET /api/fv/vectors; the tasks and limits in /api/info "studio" -> "fv"): make a task's vector, score it at every
// layer next to zero-shot, few-shot and a random vector, try it on a typed prompt, save it as a vector file.
// Loaded after app.js, whose helpers ($, el, svg, api, busy, runJob, resultCard, tok, pct, bar, heat, onInfo, STATE,
// showTab, addEditRow) it uses; its own names stay inside this function.
"use strict";

(() => {
  const METHODS = { "mean-diff": "task vector (mean difference, added)", replace: "mean few-shot state (replaces)",
    heads: "function vector of the top heads (added)" };
  const f2 = (x) => (x === null || x === undefined ? "\u2013" : x.toFixed(2));
  const f3 = (x) => (x === null || x === undefined ? "\u2013" : x.toFixed(3));
  const aieText = (v) => (v >= 0 ? "+" : "") + (Math.abs(v) >= 0.001 || v === 0 ? v.toFixed(3) : v.toExponential(1));
  const n = (s) => (s.trim() !== "" && Number.isFinite(Number(s)) ? Number(s) : s);  // a bad number: the server names it
  let SHOWN = null;  // the run answer on screen
  let AUTO_PROMPT = $("fv-prompt").value;  // the try prompt as this page last filled it (the user's own is kept)

  // "4:14" (4..13), "0:18:2", "6,9,11", "" (null: every layer); negatives count from the end on the server.
  function parseLayers(text, what) {
    const s = text.trim();
    if (s === "" || s === "all") return null;
    const out = [];
    for (const part of s.split(",").map((p) => p.trim()).filter((p) => p !== "")) {
      const m = part.match(/^(-?\d+)(?::(-?\d+)(?::(\d+))?)?$/);
      if (!m) throw new Error(`${what}: expected layers like 4:14, 0:18:2 or 6,9,11, got ${JSON.stringify(part)}.`);
      if (m[2] === undefined) { out.push(+m[1]); continue; }
      const [a, b, step] = [+m[1], +m[2], m[3] === undefined ? 1 : +m[3]];
      if (step < 1 || b <= a) throw new Error(`${what}: ${part} is an empty range (a:b takes a..b-1).`);
      for (let i = a; i < b && out.length <= 256; i += step) out.push(i);
    }
    return out;
  }

  // ---- the task list and the limits (from /api/info) --------------------------------------------------
  const infoReady = new Promise((resolve) => onInfo((info) => {
    const fv = info.studio.fv;
    const sel = $("fv-task"), was = sel.value;
    sel.replaceChildren(...fv.tasks.map((t) => el("option", { value: t.name, "data-x": t.example[0],
      "data-y": t.example[1], ...(t.name === "antonym" ? { selected: "" } : {}) }, `${t.name} (${t.pairs} pairs)`)));
    if (fv.tasks.some((t) => t.name === was)) sel.value = was;
    $("fv-shots").max = fv.max_shots;
    $("fv-n").max = fv.max_prompts;
    $("fv-test").max = fv.max_test;
    $("fv-top-heads").max = fv.max_top_heads;
    $("fv-aie-n").max = fv.max_aie_prompts;
    $("fv-k").max = fv.max_top_k;
    $("fv-new").max = fv.max_try_tokens;
    $("fv-layer").min = -info.n_layers;
    $("fv-layer").max = info.n_layers - 1;
    showExample();
    resolve();
  }));

  function showExample() {
    const o = $("fv-task").selectedOptions[0];
    $("fv-example").replaceChildren(o && o.dataset.x !== undefined ? el("span", {}, "first pair: ",
      el("code", {}, `${o.dataset.x} -> ${o.dataset.y}`)) : "");
  }
  $("fv-task").addEventListener("change", showExample);
  const showHeads = () => { $("fv-heads-row").hidden = $("fv-method").value !== "heads"; };
  $("fv-method").addEventListener("change", showHeads);
  showHeads();

  // ---- the vectors of this session ------------------------------------------------------------------------
  async function loadVectors(select) {
    const d = await api("GET", "/api/fv/vectors");
    const sel = $("fv-vec"), was = select || sel.value;
    sel.replaceChildren(...d.vectors.map((v) => el("option", { value: v.id },
      `${v.id}: ${v.task}, ${v.method}, best layer ${v.best_layer} (${f2(v.best)})`)));
    if (!d.vectors.length) sel.append(el("option", { value: "" }, "(none yet: make one above)"));
    if ([...sel.options].some((o) => o.value === was)) sel.value = was;
  }
  const vectorsReady = loadVectors().catch((e) => $("fv-out").replaceChildren(el("div", { class: "error" }, e.message)));
  STATE.ready.fv = Promise.all([infoReady, vectorsReady]);

  // ---- the chart: accuracy per layer, the random curve, zero-/few-shot lines ---------------------------------
  function chart(d) {
    const sw = d.sweep, L = sw.layers;
    const W = 900, H = 300, left = 44, right = 118, top = 14, bottom = 38;
    const lo = Math.min(...L), hi = Math.max(...L);
    const x = (layer) => left + (hi === lo ? (W - left - right) / 2 : ((layer - lo) * (W - left - right)) / (hi - lo));
    const y = (p) => top + (1 - p) * (H - top - bottom);
    const s = svg("svg", { class: "chart fv-chart", id: "fv-chart", viewBox: `0 0 ${W} ${H}`, width: W, height: H,
      role: "img", "aria-label": `accuracy per layer of the ${sw.task} vector; the table below has the numbers` });
    const text = (attrs, t) => { const e = svg("text", attrs); e.textContent = t; s.append(e); return e; };
    for (const p of [0, 0.25, 0.5, 0.75, 1]) {
      s.append(svg("line", { x1: left, x2: W - right, y1: y(p), y2: y(p), stroke: "#e1e4ea" }));
      text({ x: left - 6, y: y(p) + 4, "text-anchor": "end" }, p.toFixed(2));
    }
    const step = Math.max(1, Math.ceil(L.length / 18));
    L.forEach((layer, i) => {
      if (i % step && i !== L.length - 1) return;
      text({ x: x(layer), y: H - bottom + 16, "text-anchor": "middle" }, layer);
    });
    text({ x: (left + W - right) / 2, y: H - 4, "text-anchor": "middle" }, "layer the vector is put in \u2192 held-out accuracy");
    // the baselines: horizontal lines labelled at the right
    const refs = [["zero-shot", sw.zero_shot, "#6b7385"], [`${sw.shots}-shot`, sw.few_shot, "#1b7f46"]]
      .filter(([, v]) => v !== null);
    const used = [];
    for (const [name, v, colour] of refs) {
      s.append(svg("line", { class: "fv-ref", "data-name": name, "data-value": v, x1: left, x2: W - right, y1: y(v),
        y2: y(v), stroke: colour, "stroke-width": 1.5, "stroke-dasharray": "6 4" }));
      let ly = y(v) + 4;
      while (used.some((u) => Math.abs(u - ly) < 12)) ly += 12;  // labels of equal values do not overlap
      used.push(ly);
      text({ x: W - right + 6, y: ly, fill: colour, class: "fv-ref-label" }, `${name} ${f2(v)}`);
    }
    const line = (vals, attrs, cls) => {
      const pts = L.map((layer, i) => [layer, vals[i]]).filter(([, v]) => v !== null);
      s.append(svg("polyline", { points: pts.map(([l, v]) => `${x(l).toFixed(1)},${y(v).toFixed(1)}`).join(" "),
        fill: "none", class: cls, ...attrs }));
      return pts;
    };
    line(sw.prob, { stroke: "#8fa9e0", "stroke-width": 1.2, "stroke-dasharray": "2 3" }, "fv-prob");
    line(sw.random, { stroke: "#c0504d", "stroke-width": 1.5, "stroke-dasharray": "4 3" }, "fv-random");
    line(sw.accuracy, { stroke: "#2b59c3", "stroke-width": 2.2 }, "fv-acc");
    const best = sw.summary.best_layer;
    s.append(svg("line", { x1: x(best), x2: x(best), y1: top, y2: H - bottom, stroke: "#2b59c3",
      "stroke-dasharray": "1 3" }));
    L.forEach((layer, i) => {
      if (sw.random[i] !== null) s.append(svg("circle", { cx: x(layer), cy: y(sw.random[i]), r: 2.5, fill: "#c0504d" }));
      const c = svg("circle", { class: "fv-point" + (layer === best ? " best" : ""), "data-layer": layer,
        "data-acc": sw.accuracy[i], cx: x(layer), cy: y(sw.accuracy[i]), r: layer === best ? 6 : 3.5,
        fill: layer === best ? "#fff" : "#2b59c3", stroke: "#2b59c3", "stroke-width": 2 });
      const tip = svg("title", {});
      tip.textContent = `layer ${layer}: accuracy ${f2(sw.accuracy[i])}, P(answer) ${f3(sw.prob[i])}, random ${f2(sw.random[i])}`;
      c.append(tip);
      s.append(c);
    });
    const bi = L.indexOf(best);
    text({ x: Math.min(x(best) + 8, W - right - 90), y: Math.max(top + 12, y(sw.accuracy[bi]) - 10), fill: "#2b59c3",
      class: "fv-best-label" }, `best: layer ${best} (${f2(sw.accuracy[bi])})`);
    return s;
  }

  function legend(sw) {
    const key = (colour, dash, label) => el("span", { class: "fv-key" }, el("span", { class: "fv-swatch",
      style: `border-top:2px ${dash ? "dashed" : "solid"} ${colour}` }), label);
    return el("div", { class: "legend fv-legend" }, key("#2b59c3", false, "with the vector"),
      key("#c0504d", true, "random vector, same norm"), key("#8fa9e0", true, "P(answer) with the vector"),
      key("#6b7385", true, "zero-shot"), key("#1b7f46", true, `${sw.shots}-shot`));
  }

  // ---- the table, the held-out queries, the heads ---------------------------------------------------------
  function layerTable(d) {
    const sw = d.sweep, best = sw.summary.best_layer, norms = d.vector.norm, rel = d.vector.relative_norm;
    const count = (a) => (a === null ? "" : ` (${Math.round(a * sw.n_test)}/${sw.n_test})`);
    const rows = sw.layers.map((layer, i) => el("tr", { class: "click" + (layer === best ? " fv-best" : ""),
      "data-layer": layer, title: "show the held-out queries at this layer and try the vector here",
      onclick: () => pickLayer(d, layer) },
    el("th", { scope: "row" }, layer === best ? `\u2605 ${layer}` : String(layer)),
    el("td", { class: "num" }, f2(sw.accuracy[i]) + count(sw.accuracy[i])),
    el("td", { style: "min-width:8rem" }, bar(sw.accuracy[i] || 0)),
    el("td", { class: "num" }, f3(sw.prob[i])),
    el("td", { class: "num" }, norms[layer] === undefined ? "\u2013" : norms[layer].toFixed(2) +
      (rel[layer] !== undefined ? ` (${(100 * rel[layer]).toFixed(0)}%)` : "")),
    el("td", { class: "num" }, f2(sw.random[i]))));
    return el("div", { class: "scroll fv-scroll" }, el("table", { class: "stick-first stick-last", id: "fv-table" },
      el("thead", {}, el("tr", {}, ["layer", "accuracy", "", "P(answer)", "|vector| (of |state|)", "random"]
        .map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, rows)));
  }

  function queriesTable(d, layer) {
    const sw = d.sweep, q = d.queries, k = sw.layers.indexOf(layer);
    const pred = q.predicted[k];
    const right = pred.filter((t, i) => t === q.targets[i]).length;
    const rows = q.inputs.map((x, i) => el("tr", { class: pred[i] === q.targets[i] ? "fv-ok" : "" },
      el("td", {}, x), el("td", {}, q.outputs[i]), el("td", {}, tok(q.targets[i])),
      el("td", {}, tok(pred[i]), pred[i] === q.targets[i] ? " \u2713" : "")));
    return [el("p", { class: "hint", id: "fv-queries-note" }, `With the vector at layer ${layer}: ${right} of ` +
      `${q.inputs.length} held-out queries right (the top next token is the answer's first token). Click a row of ` +
      "the layer table for another layer."),
    el("div", { class: "scroll fv-scroll" }, el("table", { class: "stick-first stick-last", id: "fv-queries" },
      el("thead", {}, el("tr", {}, ["query", "answer", "its first token", `top token at layer ${layer}`]
        .map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, rows)))];
  }

  function pickLayer(d, layer) {
    $("fv-queries-box").replaceChildren(...queriesTable(d, layer));
    document.querySelectorAll("#fv-table tbody tr").forEach((r) => r.classList.toggle("fv-picked", +r.dataset.layer === layer));
    $("fv-layer").value = layer === d.sweep.summary.best_layer ? "" : String(layer);
  }

  // The heads' average indirect effect, layers x heads (NaN: not scanned), and the top heads summed.
  function headsView(d) {
    const aie = d.vector.meta.aie, heads = d.vector.meta.heads;
    const vals = aie.flat().filter((v) => v !== null);
    const scale = Math.max(1e-12, ...vals.map(Math.abs));
    const top = new Set(heads.map(([l, h]) => `${l}.${h}`));
    const cell = (v, l, h) => {
      if (v === null) return el("td", { class: "fv-aie na", title: `L${l}H${h}: not scanned` }, "\u00b7");
      const a = Math.min(1, Math.abs(v) / scale);
      const bg = v >= 0 ? heat(a) : `rgba(192,80,77,${(0.85 * Math.sqrt(a)).toFixed(3)})`;
      return el("td", { class: "fv-aie" + (top.has(`${l}.${h}`) ? " top" : ""), "data-v": v,
        title: `L${l}H${h}: AIE ${v.toFixed(4)}`, style: `background:${bg};color:${v >= 0 && a > 0.45 ? "#fff" : "#1d2330"}` },
      aieText(v));
    };
    const grid = el("table", { class: "lens stick-first fv-aie-grid", id: "fv-aie" },
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "layer"), aie[0].map((_, h) => el("th", { scope: "col" }, `H${h}`)))),
      el("tbody", {}, aie.map((row, l) => el("tr", {}, el("th", { scope: "row", class: "layer" }, l), row.map((v, h) => cell(v, l, h))))));
    const list = el("table", { id: "fv-heads" }, el("thead", {}, el("tr", {}, ["#", "head", "AIE"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, heads.map(([l, h, a], i) => el("tr", {}, el("td", { class: "num" }, i + 1), el("td", {}, `L${l}H${h}`),
        el("td", { class: "num" }, aieText(a))))));
    return resultCard(`Heads' average indirect effect on ${d.task}`, d, `fv-${d.task}-heads`,
      el("p", { class: "hint" }, `Each head's mean output on clean few-shot prompts, patched at the last token into ` +
        `${d.vector.meta.n_aie_prompts} prompts whose demonstrations have shuffled answers: the rise of P(answer). ` +
        `The function vector is the sum of the top ${heads.length} heads' mean outputs` +
        (d.vector.meta.heads_contrast ? " minus their zero-shot outputs" : "") + "; the same vector goes in at any layer."),
      el("div", { class: "fv-heads" }, el("div", { class: "scroll fv-scroll" }, grid), list));
  }

  function render(d) {
    SHOWN = d;
    const sw = d.sweep, s = sw.summary;
    const bi = sw.layers.indexOf(s.best_layer);
    const mode = sw.mode === "replace" ? "replacing the last token's state" : `added \u00d7 ${sw.scale} at ` +
      (sw.positions === "last" ? "the last token" : "every token");
    const out = [resultCard(`${d.task}: accuracy per layer, ${METHODS[sw.method] || sw.method}`, d,
      `fv-${d.task}-${sw.method}`,
    el("p", { class: "fv-summary", id: "fv-summary" },
      el("b", {}, `Best layer ${s.best_layer}: ${f2(s.best)}`), ` with the vector (${mode}); the random vector there ` +
      `${f2(s.random_at_best)}; zero-shot ${f2(s.zero_shot)}, ${sw.shots}-shot ${f2(s.few_shot)}; last layer ` +
      `${s.last_layer}: ${f2(s.last_layer_accuracy)}. ${sw.n_test} held-out queries, so one query is ` +
      `${f2(1 / sw.n_test)}; P(answer) at the best layer ${f3(sw.prob[bi])} (zero-shot ${f3(sw.zero_shot_prob)}, ` +
      `${sw.shots}-shot ${f3(sw.few_shot_prob)}). ${d.id}: ${d.n_train} training pairs of ${d.n_pairs} usable.`),
    el("div", { class: "fv-chart-wrap" }, chart(d)), legend(sw), layerTable(d),
    el("div", { id: "fv-queries-box" }))];
    if (sw.method === "heads" && d.vector.meta.aie) out.push(headsView(d));
    $("fv-out").replaceChildren(...out);
    pickLayer(d, s.best_layer);
  }

  // ---- make and score: one job ----------------------------------------------------------------------------
  function runBody() {
    const body = { task: $("fv-task").value, method: $("fv-method").value, shots: n($("fv-shots").value),
      n_prompts: n($("fv-n").value), n_test: n($("fv-test").value), seed: n($("fv-seed").value),
      template: $("fv-template").value, keep_ambiguous: $("fv-keep").checked, scale: n($("fv-scale").value),
      positions: $("fv-positions").value, layers: parseLayers($("fv-layers").value, "Layers scored") };
    if (body.method === "heads") {
      Object.assign(body, { top_heads: n($("fv-top-heads").value), n_aie_prompts: n($("fv-aie-n").value),
        aie_layers: parseLayers($("fv-aie-layers").value, "Layers scanned"), heads_contrast: $("fv-contrast").checked });
    }
    return body;
  }

  $("fv-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(ev.target, "fv-status", "fv-out", async (status) => {
      const d = await runJob("fv/run", runBody(), status);
      await loadVectors(d.id);
      if ($("fv-prompt").value === AUTO_PROMPT && d.queries.prompts.length) {
        $("fv-prompt").value = AUTO_PROMPT = d.queries.prompts[0];
      }
      $("fv-try-out").replaceChildren();
      $("fv-save-out").replaceChildren();
      render(d);
    });
  });

  // A kept vector chosen in the list (or named by a shared URL): its run, as it was answered.
  let ASKED = null;
  async function showStored(id) {
    if (!id || id === ASKED || (SHOWN && SHOWN.id === id)) return;
    ASKED = id;
    try {
      render(await api("POST", "/api/fv/show", { id }));
    } catch (e) {
      $("fv-out").replaceChildren(el("div", { class: "error", role: "alert" }, e.message));
    } finally {
      ASKED = null;
    }
  }
  $("fv-vec").addEventListener("change", () => showStored($("fv-vec").value));
  // The vector on screen travels in the URL, so a shared view tries (and shows) the same one.
  STATE.hooks.fv = {
    save: () => $("fv-vec").value || "",
    load: (id) => {
      if (!/^fv-[0-9]+$/.test(id)) return;
      const sel = $("fv-vec");  // one the session no longer keeps stays named: the server's message says so
      if (![...sel.options].some((o) => o.value === id)) sel.append(el("option", { value: id }, `${id} (not found)`));
      sel.value = id;
      showStored(id);
    },
  };

  // ---- try it -----------------------------------------------------------------------------------------------
  function topTable(rows, id) {
    return el("table", { class: "fv-top", id }, el("thead", {}, el("tr", {}, ["#", "next token", "", "prob"]
      .map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, rows.map((r, i) => el("tr", {},
      el("td", { class: "num" }, i + 1), el("td", {}, tok(r.token)), el("td", { style: "width:40%" }, bar(r.prob)),
      el("td", { class: "num" }, pct(r.prob))))));
  }

  function tryView(d) {
    const how = d.mode === "replace" ? `its state replaced at layer ${d.layer}` :
      `+ ${d.scale} \u00d7 vector at layer ${d.layer}` + (d.positions === "last" ? ", last token" : ", every token");
    const col = (title, r, id) => el("div", { class: "card" }, el("h3", {}, title), topTable(r.top, `${id}-top`),
      r.text !== undefined ? el("div", { class: "text", id: `${id}-text` }, el("span", { class: "prompt" }, d.prompt), r.text) : null);
    return resultCard(`Try ${d.id} (${d.task}) on a prompt`, d, `fv-try-${d.task}`,
      el("p", { class: "hint" }, `Greedy continuation and next tokens, without and with the vector (${how}` +
        (d.layer === d.best_layer ? ", its best layer" : `; its best layer is ${d.best_layer}`) + ")."),
      el("div", { class: "tokens" }, d.tokens.map(tok)),
      el("div", { class: "side fv-side" }, col("Without the vector", d.baseline, "fv-base"), col(`With it (${how})`, d.edited, "fv-edited")));
  }

  $("fv-try-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(ev.target, "fv-try-status", "fv-try-out", async () => {
      const id = $("fv-vec").value;
      if (!id) throw new Error("No vector yet: make one with the form above first.");
      const body = { id, prompt: $("fv-prompt").value, top_k: n($("fv-k").value), max_new_tokens: n($("fv-new").value) };
      if ($("fv-layer").value.trim() !== "") body.layer = n($("fv-layer").value);
      if ($("fv-try-scale").value.trim() !== "") body.scale = n($("fv-try-scale").value);
      const d = await api("POST", "/api/fv/try", body);
      $("fv-try-out").replaceChildren(tryView(d));
    });
  });

  // ---- save it (not a form: a shared URL must never write a file) ------------------------------------------------
  function save() {
    busy($("fv-save-box"), "fv-save-status", "fv-save-out", async () => {
      const id = $("fv-vec").value;
      if (!id) throw new Error("No vector yet: make one with the form above first.");
      const name = $("fv-save-name").value.trim();
      if (!name) throw new Error("Give a file name ending in .safetensors (it is written into the studio's vector folders).");
      const d = await api("POST", "/api/fv/save", { id, name, overwrite: $("fv-overwrite").checked });
      const use = d.mode === "replace" ? el("p", { class: "hint" }, "This vector replaces a state; the Generate tab " +
        "adds vectors, so it is not offered there.") :
        el("button", { type: "button", id: "fv-use", onclick: () => {
          addEditRow({ type: "add", site: d.site, value: "", vector_file: d.saved, scale: d.scale });
          showTab("generate");
        } }, `Add it in Generate at ${d.site}`);
      $("fv-save-out").replaceChildren(resultCard(`Saved ${d.id}`, d, `fv-save-${d.task}`,
        el("p", { class: "hint", id: "fv-saved" }, `Saved as `, el("code", {}, d.saved), ` (layers ${d.layers[0]}..` +
          `${d.layers[d.layers.length - 1]}; best layer ${d.best_layer}). The Generate tab adds it at every token.`), use));
    });
  }
  $("fv-save-btn").addEventListener("click", save);
  $("fv-save-name").addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.preventDefault(); save(); } });
})();
