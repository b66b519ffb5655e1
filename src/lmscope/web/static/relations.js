// lmscope studio, the Relations tab (GET /api/relations, GET /api/relations/lres, POST /api/relations/fit,
// /lens, /predict): fit a linear relational embedding (LRE) of a shipped relation, read a prompt with it at
// every layer and position (the attribute lens), and compare its predicted objects with the model's.
// Loaded after app.js, whose helpers ($, el, api, busy, tok, visible, pct, heat) it uses; its own names
// stay inside this function so they cannot clash with the other tabs' scripts.
"use strict";

(() => {
  let LAST = null;  // the last lens answer, re-coloured without a new request
  const fmt = (x) => (x === null || x === undefined ? "n/a" : pct(x));

  // ---- the relation list and the LRE list ------------------------------------------------------------
  async function loadRelations() {
    const d = await api("GET", "/api/relations");
    const sel = $("rel-relation");
    sel.replaceChildren(...d.types.map((t) => el("optgroup", { label: t },
      d.relations.filter((r) => r.type === t).map((r) => el("option", { value: r.relation, "data-template": r.template },
        `${r.relation} (${r.n})`)))));
    if ([...sel.options].some((o) => o.value === "country_capital_city")) sel.value = "country_capital_city";
    showTemplate();
  }

  function showTemplate() {
    const o = $("rel-relation").selectedOptions[0];
    $("rel-template").replaceChildren(o ? el("span", {}, "template: ", el("code", {}, o.dataset.template)) : "");
  }
  $("rel-relation").addEventListener("change", showTemplate);

  // The options of the LRE box: the LREs fitted in this session, then the files in the LRE folders.
  async function loadLres(select) {
    const d = await api("GET", "/api/relations/lres");
    const sel = $("rel-source");
    fillSource(sel, { key: "fitted", keep: select || sel.value, sessionLabel: "fitted in this session",
      session: d.fitted.map((f) => [f.id, `${f.id}: ${f.relation}, layer ${f.layer}, \u03b2 ${f.beta} (fitted here)`]),
      fileLabel: `files in ${d.lre_dirs.join(", ")}`,
      files: d.files.map((f) => [f, `${f.path}: ${f.relation || "?"}, layer ${f.layer}, \u03b2 ${f.beta}`]),
      empty: "(none yet: fit one, or save one in the LRE folders)" });
  }

  const source = () => readSource($("rel-source"), "fitted",
    "No LRE chosen: fit one above, or put an LRE file in the studio's LRE folders and refresh.");

  $("rel-src-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(ev.target, "rel-src-status", "rel-fit-out", () => loadLres());
  });

  // ---- fit -----------------------------------------------------------------------------------------------
  const n = (s) => (s.trim() !== "" && Number.isFinite(Number(s)) ? Number(s) : s);  // a bad number: the server names it

  $("rel-fit-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(ev.target, "rel-fit-status", "rel-fit-out", async (status) => {
      const body = { relation: $("rel-relation").value, layer: n($("rel-layer").value), n_train: n($("rel-n").value),
        beta: n($("rel-beta").value) };
      const save = $("rel-save").value.trim();
      if (save) Object.assign(body, { save, overwrite: $("rel-overwrite").checked });
      const d = await runJob("relations/fit", body, status);
      await loadLres(`fitted:${d.id}`);
      if (d.held_out.length) $("rel-subjects").value = d.held_out.slice(0, 6).map(([s]) => s).join("\n");
      $("rel-fit-out").replaceChildren(withTools(el("div", { class: "card", id: "rel-fit-summary" },
        el("h3", {}, `${d.id}: ${d.relation} at layer ${d.lre.layer}, \u03b2 ${d.lre.beta}`),
        el("p", { class: "hint" }, `${d.n_known} of the first ${d.n_examined} facts answered by the model; fitted on ` +
          `the first ${d.train.length} of them in ${d.seconds.toFixed(1)} s` + (d.saved ? `, saved as ${d.saved}` : "") +
          ". The held-out ones it knows are in the subjects box below."),
        el("div", { class: "tokens" }, d.train.map(([s, o]) => el("span", { class: "tok" }, `${s} \u2192 ${o}`)))),
        d, `lre-${d.relation}`));
    });
  });

  // ---- the attribute lens: a layer x token heatmap ---------------------------------------------------------
  // Colour: the target's probability (when a target was given and chosen) or the top token's.
  function grid(d) {
    return $("rel-colour").value === "target" && d.target ? d.target_prob : d.top_prob;
  }

  function cellText(d, k, pos) {
    const [l, t] = [d.layers[k], d.top[k][pos]];
    return `layer ${l}, token ${pos} ${JSON.stringify(d.tokens[pos])}: top ${JSON.stringify(t)} ${fmt(d.top_prob[k][pos])}` +
      (d.target ? ` \u00b7 p(${JSON.stringify(d.target)}) ${fmt(d.target_prob[k][pos])}` : "");
  }

  function heatTable(d) {
    const g = grid(d);
    const head = el("tr", {}, el("th", { class: "corner", scope: "col" }, "layer"),
      d.tokens.map((t, i) => el("th", { scope: "col", title: `position ${i}: ${JSON.stringify(t)}` }, tok(t))));
    const rows = d.layers.map((layer, k) => [layer, k]).reverse().map(([layer, k]) => el("tr", {},
      el("th", { class: "layer", scope: "row" }, layer),
      d.tokens.map((_, pos) => {
        const p = g[k][pos], t = d.top[k][pos];
        return el("td", { "data-layer": String(layer), "data-k": String(k), "data-pos": String(pos), "data-p": String(p),
          tabindex: "-1", title: cellText(d, k, pos),
          style: `background:${heat(p)};color:${p > 0.45 ? "#fff" : "#1d2330"}` }, visible(t));
      })));
    const table = el("table", { class: "lens rel-heat", id: "rel-heat", role: "grid",
      "aria-label": "attribute lens: the LRE's top token at every layer (rows, last layer first) and token (columns)" },
      el("thead", {}, head), el("tbody", {}, rows));
    const first = table.querySelector("tbody td");
    if (first) first.tabIndex = 0;  // one tab stop; arrow keys move inside
    table.addEventListener("keydown", (ev) => gridMove(table, ev));
    table.addEventListener("focusin", (ev) => readout(d, ev.target));
    table.addEventListener("mouseover", (ev) => readout(d, ev.target));
    return table;
  }

  function readout(d, cell) {
    if (!cell || cell.tagName !== "TD") return;
    $("rel-cell").textContent = cellText(d, +cell.dataset.k, +cell.dataset.pos);
  }

  function lensView(d) {
    const useTarget = $("rel-colour").value === "target" && d.target;
    const out = [el("h3", {}, `Attribute lens of ${d.relation || "the LRE"} (fitted at layer ${d.lre_layer}, ` +
      `\u03b2 ${d.lre.beta}) at every layer \u00d7 token`),
    el("div", { class: "legend" }, useTarget ? `p(${JSON.stringify(d.target)}) 0` : "top-token probability 0",
      el("span", { class: "ramp" }), "1",
      el("span", {}, "\u00b7 each cell: the LRE's top token read from that state; top row is the last layer")),
    ];
    if (d.target) {
      let best = [-1, 0, 0];
      d.target_prob.forEach((row, k) => row.forEach((p, pos) => { if (p > best[0]) best = [p, k, pos]; }));
      out.push(el("p", { class: "hint", id: "rel-peak" }, `p(${JSON.stringify(d.target)}) peaks at ${fmt(best[0])} at ` +
        `layer ${d.layers[best[1]]}, token ${best[2]} ${JSON.stringify(d.tokens[best[2]])} (its first token, after a space).`));
    } else if ($("rel-colour").value === "target") {
      out.push(el("p", { class: "hint" }, "No target given: coloured by the top token's probability."));
    }
    out.push(el("div", { class: "rel-wrap" }, heatTable(d)),
      el("p", { class: "hint", id: "rel-cell", "aria-live": "polite" },
        "Hover a cell, or focus the grid and move with the arrow keys, for its numbers."));
    return el("div", { class: "card" }, out);
  }

  $("rel-lens-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(ev.target, "rel-lens-status", "rel-lens-out", async () => {
      const d = await api("POST", "/api/relations/lens", { ...source(), prompt: $("rel-prompt").value,
        target: $("rel-target").value });
      LAST = d;
      $("rel-lens-out").replaceChildren(withTools(lensView(d), d, "attribute-lens"));
    });
  });
  $("rel-colour").addEventListener("change", () => {
    if (LAST) $("rel-lens-out").replaceChildren(withTools(lensView(LAST), LAST, "attribute-lens"));
  });

  // ---- the LRE's objects vs the model's -------------------------------------------------------------------
  function tops(list, correct) {
    return list.map(([t, p], i) => el("span", { class: "pred" + (i === 0 && correct !== null ? (correct ? " ok" : " bad") : "") },
      tok(t), ` ${fmt(p)}`, i === 0 && correct !== null ? (correct ? " \u2713" : " \u2717") : ""));
  }

  function predView(d) {
    const rows = d.subjects.map((s, i) => el("tr", {}, el("td", {}, s),
      el("td", {}, d.objects[i].length ? d.objects[i].join(", ") : "\u2013"),
      el("td", { class: "lre-top" }, tops(d.lre_top[i], d.lre_correct[i])),
      el("td", { class: "model-top" }, tops(d.model_top[i], d.model_correct[i])),
      el("td", {}, d.agree[i] ? "yes" : "no")));
    const known = d.lre_correct.filter((x) => x !== null);
    const score = (xs) => `${xs.filter((x) => x).length} / ${xs.length}`;
    return el("div", { class: "card" },
      el("h3", {}, `${d.relation}: LRE (layer ${d.layer}, \u03b2 ${d.beta}) vs the model`),
      known.length ? el("p", { class: "hint", id: "rel-pred-score" }, `top-1 starts the relation's object: LRE ` +
        `${score(known)}, model ${score(d.model_correct.filter((x) => x !== null))}; top-1 tokens agree on ` +
        `${d.agree.filter((x) => x).length} of ${d.agree.length}.`) : null,
      el("table", { id: "rel-pred" }, el("thead", {}, el("tr", {}, ["subject", "relation's object", "LRE top tokens",
        "model's next tokens", "agree"].map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, rows)));
  }

  $("rel-pred-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(ev.target, "rel-pred-status", "rel-pred-out", async () => {
      const subjects = $("rel-subjects").value.split("\n").map((s) => s.trim()).filter((s) => s !== "");
      const d = await api("POST", "/api/relations/predict", { ...source(), subjects, k: n($("rel-k").value) });
      $("rel-pred-out").replaceChildren(withTools(predView(d), d, `lre-vs-model-${d.relation}`));
    });
  });

  // ---- start: the lists, and the layer box's range from the model --------------------------------------------
  // (a shared URL's fields are filled in once this is done: STATE.ready)
  STATE.ready.relations = (async () => {
    try {
      const info = await api("GET", "/api/info");
      const layer = $("rel-layer");
      layer.max = info.n_layers - 1;
      layer.min = -info.n_layers;
      layer.value = Math.round(info.n_layers / 4);
      $("rel-n").max = info.studio.max_relation_train;
      await Promise.all([loadRelations(), loadLres()]);
    } catch (e) {
      $("rel-fit-out").replaceChildren(el("div", { class: "error" }, e.message));
    }
  })();
})();
