// lmscope studio, the Steering tab (GET /api/vectors, POST /api/vectors/build, /upload, /card, /save, /sweep,
// /generate): build a steering vector from a shipped contrast set or from texts typed here, or pick or upload
// one; sweep it over layers x strengths with its side effects as a heatmap; click a cell for the steered text
// next to the baseline and a random direction of the same norm.
// Loaded after app.js, whose helpers ($, el, api, busy, runJob, tok, bar, withTools, onInfo, INFO, STATE) it
// uses; its own names stay inside this function so they cannot clash with the other tabs' scripts.
"use strict";

(() => {
  let SWEEP = null;  // the last sweep answer: re-drawn for another metric without a new request
  let METRIC = "effect";
  const n = (s) => (String(s).trim() !== "" && Number.isFinite(Number(s)) ? Number(s) : s);  // a bad number: the server names it
  const list = (s) => s.split(/[\s,]+/).filter((x) => x !== "").map(n);
  const lines = (id) => $(id).value.split(/\r?\n/).filter((s) => s.trim() !== "");
  const num = (x) => {
    if (x === null || x === undefined) return "n/a";
    const a = Math.abs(x);
    return a !== 0 && (a < 1e-3 || a >= 1e5) ? x.toExponential(2) : String(Number(x.toPrecision(3)));
  };
  const signed = (x) => (x === null || x === undefined ? "n/a" : (x > 0 ? "+" : "") + num(x));
  const span = (ls) => (ls.length > 2 && ls[ls.length - 1] - ls[0] === ls.length - 1 ? `${ls[0]}..${ls[ls.length - 1]}`
    : ls.join(","));
  const kb = (b) => `${(b / 1024).toFixed(0)} kB`;
  const plural = (k, what) => `${k} ${what}${k === 1 ? "" : "s"}`;

  // ---- the lists: shipped contrast sets (from /api/info), session vectors and files (GET /api/vectors) --------
  onInfo((i) => {
    const sets = i.studio.vector_datasets || [];
    const sel = $("vec-dataset");
    sel.replaceChildren(el("optgroup", { label: "shipped contrast sets" }, sets.map((s) => {
      const o = el("option", { value: s.name }, `${s.name} (${s.format}, ${s.n}` +
        (s.aliases.length ? `; also ${s.aliases.join(", ")}` : "") + `) \u2192 task ${s.task}` + (s.chat ? ", chat" : ""));
      o.defaultSelected = s.name === "sentiment";
      return o;
    })), el("option", { value: "" }, "texts typed below"));
    const lim = i.studio.steering_limits;
    $("vec-limit").max = lim.max_items;
    $("vec-gen-n").max = lim.max_new_tokens;
    const layer = $("vec-gen-layer");
    [layer.max, layer.min] = [i.n_layers - 1, -i.n_layers];
    layer.defaultValue = layer.value = Math.round(i.n_layers / 2);  // the default a shared URL leaves out
    $("vec-layers").placeholder = (i.studio.steering_auto_layers || []).join(", ");
    syncTyped();
  });

  function syncTyped() {
    const typed = $("vec-dataset").value === "";
    $("vec-typed").hidden = !typed;
    $("vec-limit-box").hidden = typed;
    $("vec-prompts-box").hidden = $("vec-format").value !== "completions";
  }
  $("vec-dataset").addEventListener("change", syncTyped);
  $("vec-format").addEventListener("change", syncTyped);

  async function loadList(select) {
    const d = await api("GET", "/api/vectors");
    const sel = $("vec-source");
    fillSource(sel, { key: "vector", keep: select || sel.value, sessionLabel: "this session",
      session: d.session.map((v) => [v.id, `${v.id}: ${v.label}, ${v.method}, layers ${span(v.layers)}` +
        (v.origin === "uploaded" ? " (uploaded)" : "")]),
      fileLabel: `files in ${d.vector_dirs.join(", ")}`,
      files: d.files.map((f) => [f, `${f.path}: ${f.dataset || f.method || "?"}, layers ${span(f.layers)}`]),
      empty: "(none yet: build or upload one, or save one in the vector folders)" });
  }

  const source = () => readSource($("vec-source"), "vector",
    "No vector chosen: build or upload one above, or put a vector file in the studio's vector folders and refresh.");

  // ---- the vector's card ---------------------------------------------------------------------------------------
  function cardView(d) {
    const name = d.vector || d.path;
    const facts = [`${d.method} at ${d.site}`, plural(d.layers.length, "layer")];
    if (d.dataset) facts.push(`from ${d.dataset}` + (d.format ? ` (${d.format})` : "") +
      (d.split.n_train !== null ? `: ${d.split.n_train} items to build, ${d.split.n_test} held out (seed ${d.split.seed})` : ""));
    if (d.position) facts.push(`position ${d.position}`);
    if (d.chat !== null) facts.push(`chat template ${d.chat ? "on" : "off"}`);
    if (d.created) facts.push(`saved ${d.created}`);
    facts.push(d.task ? `a sweep scores the ${d.task} task by default` : "no default task: pick one to sweep");
    if (d.recorded_sweep) facts.push(`its file records a sweep's pick: layer ${d.recorded_sweep.layer}, coef ${num(d.recorded_sweep.coef)}`);
    const rows = d.layers.map((r) => el("tr", { class: r.layer === d.best_layer ? "best" : "", "data-layer": String(r.layer) },
      el("th", { scope: "row" }, r.layer, r.layer === d.best_layer ? el("span", { class: "tag" }, " best") : ""),
      el("td", { class: "num" }, num(r.norm)), el("td", { class: "num" }, num(r.relative_norm)),
      el("td", { class: "num" }, num(r.auc)), el("td", { style: "width:30%" }, r.auc === null ? "" : bar(r.auc)),
      el("td", { class: "num" }, num(r.pair_acc)), el("td", { class: "num" }, num(r.gap))));
    const layerSel = el("select", { "aria-label": "layer of the top tokens" },
      d.layers.map((r) => el("option", { value: r.layer }, `layer ${r.layer}`)));
    layerSel.value = d.top_tokens.layer;
    layerSel.addEventListener("change", () => busy($("vec-pick-form"), "vec-pick-status", "vec-card-out", async () => {
      const src = d.vector ? { vector: d.vector } : { path: d.path };
      showCard(await api("POST", "/api/vectors/card", { ...src, layer: +layerSel.value }));
    }));
    const toks = (title, ts) => el("div", {}, el("h4", {}, title),
      el("div", { class: "tokens" }, ts.map((t) => el("span", { title: `logit ${num(t.logit)}` }, tok(t.token)))));
    const out = [el("h3", {}, `${name}: ${d.label}`),
      el("p", { class: "hint", id: "vec-facts" }, facts.join(" \u00b7 ") + "."),
      el("div", { class: "scroll vec-layers-box" }, el("table", { class: "stick-first", id: "vec-layers-table" },
        el("thead", {}, el("tr", {}, ["layer", "|v|", "|v| / residual", "held-out AUC", "", "pair accuracy",
          "gap"].map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, rows))),
      el("p", { class: "hint" }, d.best_layer !== null ? `Best separating layer (10%..85% of the depth): ${d.best_layer}. ` +
        "AUC: how often a held-out positive projects higher than a negative; gap: the mean projection gap over the " +
        "residual norm." : "No held-out separation recorded (the file was not made by make_vector)."),
      el("div", { class: "row vec-top-head" }, el("h4", {}, "What the direction writes, read through the unembedding at"), layerSel),
      el("div", { class: "two", id: "vec-top" }, toks("top tokens", d.top_tokens.top), toks("bottom tokens", d.top_tokens.bottom))];
    if (d.vector) out.push(saveForm(d));
    return withTools(el("div", { class: "card", id: "vec-card" }, out), d, `vector-${d.label}`);
  }

  // Save a session vector into the vector folders. No ids on its fields: a shared URL never saves a file.
  function saveForm(d) {
    const path = el("input", { type: "text", class: "mono grow", "aria-label": "save as",
      placeholder: `${d.label.split(" ")[0].replace(/[^\w.+-]+/g, "_")}.safetensors` });
    const over = el("input", { type: "checkbox", "aria-label": "overwrite" });
    const form = el("form", { class: "row vec-save" }, el("label", { class: "grow" }, "Save as (in the studio's vector folders) ",
      path), el("label", { class: "check" }, over, " overwrite"), el("button", { type: "submit" }, "Save"),
    el("span", { class: "status", id: "vec-save-status" }));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      busy(form, "vec-save-status", "vec-save-out", async () => {
        $("vec-save-out").replaceChildren();
        const r = await api("POST", "/api/vectors/save", { vector: d.vector, path: path.value.trim() || path.placeholder,
          overwrite: over.checked });
        await loadList();
        $("vec-save-out").replaceChildren(el("p", { class: "hint" }, `Saved ${r.vector} as ${r.saved}.`));
      });
    });
    return el("div", {}, form, el("div", { id: "vec-save-out" }));
  }

  // (The card leaves the layer box alone: a shared URL's fields would lose to it.)
  function showCard(d) {
    $("vec-card-out").replaceChildren(cardView(d));
    const task = $("vec-task").options[0];
    task.textContent = d.task ? `the vector's own (${d.task})` : "the vector's own (none: pick one)";
  }

  $("vec-pick-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(ev.target, "vec-pick-status", "vec-card-out", async () => showCard(await api("POST", "/api/vectors/card", source())));
  });
  $("vec-source").addEventListener("change", () => { if ($("vec-source").value) $("vec-pick-form").requestSubmit(); });
  $("vec-refresh").addEventListener("click", () => busy($("vec-pick-form"), "vec-pick-status", "vec-card-out", () => loadList()));

  // ---- build -------------------------------------------------------------------------------------------------
  function typed() {
    const fmt = $("vec-format").value;
    const t = { format: fmt, name: $("vec-name").value.trim() || "typed", positive: lines("vec-pos"), negative: lines("vec-neg") };
    if (fmt === "completions") t.prompts = lines("vec-prompts");
    return t;
  }

  $("vec-build-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(ev.target, "vec-build-status", "vec-card-out", async (status) => {
      const body = { method: $("vec-method").value, position: $("vec-position").value, held_out: n($("vec-held").value) };
      if ($("vec-chat").value) body.chat = $("vec-chat").value === "1";
      if ($("vec-dataset").value) Object.assign(body, { dataset: $("vec-dataset").value, limit: n($("vec-limit").value) });
      else body.typed = typed();
      const d = await runJob("vectors/build", body, status);
      await loadList(`vector:${d.vector}`);
      showCard(d);
    });
  });

  // ---- upload: the two files' bytes in base64, read on the server by Vector.load -----------------------------
  async function base64(file) {
    const bytes = new Uint8Array(await file.arrayBuffer());
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(s);
  }

  document.querySelector(".vec-upload-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(ev.target, "vec-up-status", "vec-card-out", async () => {
      const f = $("vec-up-file").files[0], s = $("vec-up-side").files[0];
      if (!f || !s) throw new Error("Choose both files: the .safetensors vector and its sidecar (NAME.safetensors.json).");
      const max = INFO ? INFO.studio.max_body_bytes : 262144, size = Math.ceil((f.size + s.size) / 3) * 4 + 200 + f.name.length;
      if (size > max) {
        throw new Error(`${f.name} and its sidecar are ${kb(f.size + s.size)}, ${kb(size)} in base64: over the studio's ` +
          `${kb(max)} request limit. Put the file in one of the vector folders and pick it above.`);
      }
      const d = await api("POST", "/api/vectors/upload", { name: f.name, safetensors: await base64(f), sidecar: await base64(s) });
      await loadList(`vector:${d.vector}`);
      showCard(d);
    });
  });

  // ---- the sweep and its heatmap ---------------------------------------------------------------------------------
  const BLUE = [43, 89, 195], RED = [192, 80, 77], ORANGE = [214, 137, 16], GREEN = [27, 127, 70];
  // white -> colour with alpha sqrt(t) (as the lens heatmap); t in [0, 1]
  const mix = (c, t) => { const a = Math.sqrt(Math.max(0, Math.min(1, t)));
    return `rgb(${c.map((x) => Math.round(255 + (x - 255) * a)).join(",")})`; };
  const GREY = "rgb(238,240,244)";

  // Each metric: its label, a cell's value and text, and its colour [css, t] given the whole sweep.
  const METRICS = {
    effect: { label: "change: score \u2212 unsteered", value: (r) => r.effect, text: (v) => signed(v),
      colour: (v, d, top) => [mix((v >= 0) === (d.goal === "increase") ? BLUE : RED, Math.abs(v) / top), Math.abs(v) / top],
      top: (vs) => Math.max(...vs.map(Math.abs), 1e-12),
      legend: (d) => `blue: moves the score the goal's way (${d.goal}); red: the other way; deeper = larger` },
    score: { label: "score", value: (r) => r.score, text: num,
      colour: (v, d, top, low) => { const t = top > low ? (v - low) / (top - low) : 0.5; return [mix(BLUE, t), t]; },
      top: (vs) => Math.max(...vs), low: (vs) => Math.min(...vs), legend: (d) => `${d.metric}: lowest white, highest blue` },
    kl: { label: "KL(unsteered \u2016 steered) on neutral prompts", value: (r) => r.kl, text: num,
      colour: (v, d) => { const t = Math.min(1, v / (2 * d.config.kl_max)); return [mix(ORANGE, t), t]; },
      legend: (d) => `nats; white 0, mid-orange at kl_max ${num(d.config.kl_max)}, full at twice it` },
    repetition: { label: "repeated 3-grams in short generations", value: (r) => r.repetition, text: num,
      colour: (v) => [mix(ORANGE, v), v],
      legend: (d) => `share 0..1 (unsteered ${num(d.base.repetition)}); n/a: not generated, the KL was already too high` },
    admissible: { label: "admissible (KL and repetition within bounds)", value: (r) => r.admissible,
      text: (v) => (v ? "ok" : "out"), colour: (v) => [v ? mix(GREEN, 0.3) : GREY, v ? 0.3 : 0],
      legend: (d) => `KL \u2264 ${num(d.config.kl_max)} and repetition \u2264 unsteered + ${num(d.config.repetition_margin)}` },
  };

  const isRec = (d, r) => d.recommended !== null && d.recommended.layer === r.layer && d.recommended.coef === r.coef;

  function cellText(d, r) {
    return `layer ${r.layer}, coef ${num(r.coef)}: score ${num(r.score)} (change ${signed(r.effect)}), KL ${num(r.kl)}, ` +
      `repetition ${r.repetition === null ? "not generated" : num(r.repetition)}, ` +
      (r.admissible ? "admissible" : "not admissible") + (isRec(d, r) ? ", recommended" : "") +
      (r.random_effect !== undefined && r.random_effect !== null ? `; a random direction there: change ${signed(r.random_effect)}` : "");
  }

  function heatTable(d) {
    const m = METRICS[METRIC];
    const layers = [...new Set(d.rows.map((r) => r.layer))].sort((a, b) => a - b);
    const coefs = [...new Set(d.rows.map((r) => r.coef))].sort((a, b) => a - b);
    const at = new Map(d.rows.map((r) => [`${r.layer}:${r.coef}`, r]));
    const vals = d.rows.map(m.value).filter((v) => v !== null && v !== undefined && typeof v === "number");
    const top = m.top && vals.length ? m.top(vals) : 1, low = m.low && vals.length ? m.low(vals) : 0;
    const head = el("tr", {}, el("th", { scope: "col", class: "corner" }, "layer \\ coef"),
      coefs.map((c) => el("th", { scope: "col" }, num(c))));
    const body = layers.map((layer) => el("tr", {}, el("th", { scope: "row" }, layer), coefs.map((c) => {
      const r = at.get(`${layer}:${c}`);
      if (!r) return el("td", { class: "empty" }, "");
      const v = m.value(r), missing = v === null || v === undefined;
      const [bg, t] = missing ? [GREY, 0] : m.colour(v, d, top, low);
      const cls = [r.admissible ? "" : "out", isRec(d, r) ? "rec" : ""].filter(Boolean).join(" ");
      return el("td", { class: cls, tabindex: "-1", role: "gridcell", title: cellText(d, r), "aria-label": cellText(d, r),
        "data-layer": String(r.layer), "data-coef": String(r.coef), "data-value": missing ? "" : String(v),
        style: `background-color:${bg};color:${t > 0.45 ? "#fff" : "#1d2330"}` },
      missing ? "n/a" : m.text(v), isRec(d, r) ? " \u2605" : "");
    })));
    const table = el("table", { class: "stick-first vec-heat", id: "vec-heat", role: "grid",
      "aria-label": `sweep: ${m.label} at every layer (rows) and coefficient (columns); Enter generates with that cell` },
    el("thead", {}, head), el("tbody", {}, body));
    const first = table.querySelector("td.rec") || table.querySelector("td[tabindex]");
    if (first) first.tabIndex = 0;  // one tab stop; the arrow keys move inside
    const row = (cell) => d.rows.find((r) => String(r.layer) === cell.dataset.layer && String(r.coef) === cell.dataset.coef);
    table.addEventListener("keydown", (ev) => {  // arrows move (app.js gridMove); Enter or Space generates
      if (ev.target.tagName === "TD" && (ev.key === "Enter" || ev.key === " ")) { ev.preventDefault(); ev.target.click(); }
      else gridMove(table, ev, "td[data-layer]");
    });
    table.addEventListener("focusin", (ev) => { if (ev.target.dataset.layer) readout(d, row(ev.target)); });
    table.addEventListener("mouseover", (ev) => { const c = ev.target.closest("td"); if (c && c.dataset.layer) readout(d, row(c)); });
    table.addEventListener("click", (ev) => {
      const c = ev.target.closest("td");
      if (!c || !c.dataset.layer) return;
      table.querySelectorAll("td[aria-selected]").forEach((x) => x.removeAttribute("aria-selected"));
      c.setAttribute("aria-selected", "true");
      table.querySelectorAll("td[tabindex='0']").forEach((x) => { x.tabIndex = -1; });
      c.tabIndex = 0;
      generateAt(+c.dataset.layer, +c.dataset.coef);
    });
    return table;
  }

  function readout(d, r) { if (r) $("vec-cell").textContent = cellText(d, r); }

  function sweepView(d) {
    const rec = d.recommended;
    const pick = el("select", { class: "vec-metric", "aria-label": "metric shown" },
      Object.entries(METRICS).map(([k, m]) => el("option", { value: k }, m.label)));
    pick.value = METRIC;
    pick.addEventListener("change", () => { METRIC = pick.value; drawSweep(); });
    const summary = rec ? `Recommended: layer ${rec.layer}, coef ${num(rec.coef)} (raw scale ${num(rec.scale)}): change ` +
      `${signed(rec.effect)} with KL ${num(rec.kl)}; a random direction of the same norm there: change ` +
      `${signed(rec.random_effect)}.` : "Nothing recommended: no admissible cell moves the score the goal's way by more " +
      "than a random direction of the same norm does.";
    return el("div", { class: "card", id: "vec-sweep" },
      el("h3", {}, `${d.label}: ${d.task} \u00b7 ${d.metric} \u00b7 goal ${d.goal} \u00b7 unsteered ${num(d.base.score)}`),
      el("p", { class: "hint", id: "vec-rec" }, summary + ` ${plural(d.task_detail.n_scored, "scored prompt")}, ` +
        `${plural(d.task_detail.neutral.length, "neutral prompt")} for the KL` + (d.task_detail.chat ? ", chat template" : "") +
        `; ${d.seconds.toFixed(1)} s.`),
      el("div", { class: "row vec-metric-row" }, el("label", {}, "Show ", pick),
        el("span", { class: "legend" }, METRICS[METRIC].legend(d), " \u00b7 hatched: not admissible \u00b7 \u2605 recommended")),
      el("div", { class: "scroll vec-heat-box" }, heatTable(d)),
      el("p", { class: "hint", id: "vec-cell", "aria-live": "polite" },
        "Hover or focus a cell (arrow keys move) for its numbers; click it or press Enter for the texts below."),
      el("details", {}, el("summary", {}, "the recommendation rule"), el("p", { class: "hint" }, d.rule)));
  }

  function drawSweep() {
    if (!SWEEP) return;
    const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest("#vec-heat");
    $("vec-sweep-out").replaceChildren(withTools(sweepView(SWEEP), SWEEP, `sweep-${SWEEP.task}`));
    if (focused) { const c = $("vec-heat").querySelector("td[tabindex='0']"); if (c) c.focus(); }
  }

  $("vec-sweep-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(ev.target, "vec-sweep-status", "vec-sweep-out", async (status) => {
      const body = { ...source(), coefs: list($("vec-coefs").value), goal: $("vec-goal").value,
        n_eval: n($("vec-neval").value), n_neutral: n($("vec-nneutral").value), n_gen: n($("vec-ngen").value),
        gen_tokens: n($("vec-gentok").value), kl_max: n($("vec-klmax").value), relative: !$("vec-raw").checked };
      if ($("vec-layers").value.trim()) body.layers = list($("vec-layers").value);
      if ($("vec-task").value) body.task = $("vec-task").value;
      if ($("vec-sweep-chat").value) body.chat = $("vec-sweep-chat").value === "1";
      SWEEP = await runJob("vectors/sweep", body, status);
      drawSweep();
      const at = SWEEP.recommended || SWEEP.rows[0];
      $("vec-gen-layer").value = at.layer;
      $("vec-gen-coef").value = at.coef;
      $("vec-gen-raw").checked = !SWEEP.config.relative;
      if (SWEEP.task_detail.chat && !$("vec-gen-chat").disabled) $("vec-gen-chat").checked = true;
    });
  });

  // ---- steered text next to the baseline and the random control ---------------------------------------------
  function generateAt(layer, coef) {
    $("vec-gen-layer").value = layer;
    $("vec-gen-coef").value = coef;
    $("vec-gen-raw").checked = SWEEP ? !SWEEP.config.relative : $("vec-gen-raw").checked;
    $("vec-gen-form").requestSubmit();
    $("vec-gen-form").scrollIntoView({ block: "nearest" });
  }

  // The text, marked from where it parts from the baseline.
  function parted(text, base) {
    let i = 0;
    while (i < text.length && i < base.length && text[i] === base[i]) i++;
    return [text.slice(0, i), i < text.length ? el("mark", {}, text.slice(i)) : null];
  }

  function genView(d) {
    const how = d.mode === "ablate" ? `ablate the layer-${d.layer} direction at every layer` :
      `${d.mode} at layer ${d.layer}, coef ${num(d.coef)}`;
    const norm = d.added_norm === null ? "" : `a vector of norm ${num(d.added_norm)}` +
      (d.relative_length !== null ? ` (${num(d.relative_length)} \u00d7 the residual norm)` : "") + `, raw scale ${num(d.raw_scale)}`;
    const col = (kind, title, sub, text) => el("div", { class: "card vec-col", "data-kind": kind }, el("h3", {}, title),
      sub ? el("p", { class: "hint" }, sub) : null,
      el("div", { class: "text" }, el("span", { class: "prompt" }, d.chat ? "" : d.prompt),
        el("span", { class: "vec-text" }, kind === "baseline" ? text : parted(text, d.baseline))));
    return el("div", { id: "vec-gen" },
      el("p", { class: "hint" }, `${d.label}: ${how}. Highlighted: where a text parts from the baseline.`),
      el("div", { class: "side vec-three" },
        col("baseline", "Baseline", "no edit", d.baseline),
        col("steered", "Steered", `${how}: ${norm || "projected out"}`, d.steered),
        col("random", "Random control", `a seeded random direction (seed ${d.seed}) of the same norm, applied the same way` +
          (d.random_added_norm !== null ? `: norm ${num(d.random_added_norm)}` : ""), d.random)));
  }

  $("vec-gen-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(ev.target, "vec-gen-status", "vec-gen-out", async (status) => {
      const body = { ...source(), layer: n($("vec-gen-layer").value), coef: n($("vec-gen-coef").value),
        mode: $("vec-mode").value, prompt: $("vec-prompt").value, max_new_tokens: n($("vec-gen-n").value),
        seed: n($("vec-seed").value), chat: $("vec-gen-chat").checked, relative: !$("vec-gen-raw").checked };
      const d = await runJob("vectors/generate", body, status);
      $("vec-gen-out").replaceChildren(withTools(el("div", { class: "card" }, el("h3", {}, "Steered vs baseline vs random"),
        genView(d)), d, `steered-${d.layer}-${d.coef}`));
    });
  });

  // ---- start: the list (a shared URL's fields are filled in once it is there: STATE.ready) ------------------
  STATE.ready.steering = (async () => {
    try {
      await STATE.infoLoaded;
      await loadList();
    } catch (e) {
      $("vec-pick-status").textContent = e.message;
    }
  })();
})();
