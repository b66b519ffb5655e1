// lmscope studio, the SAEs tab (POST /api/sae, GET /api/sae/folders): an SAE's card, search over its
// latents, a latent's page with its contexts shaded by activation, and steering with a latent.
// Loaded after app.js, whose helpers ($, el, svg, api, busy, tok, visible, pct, showTab, decodeNeuron) it uses.
"use strict";

const ACT = [224, 110, 20];  // the orange of the HTML feature page (saes.feature_page.to_html)
const num = (x, d = 4) => (x === null || x === undefined ? "n/a" : Number(x).toPrecision(d));
// Shade of a token: alpha = activation / the latent's max activation, clipped to [0, 1].
const shade = (a, max) => Math.max(0, Math.min(1, max > 0 ? a / max : 0));
const share = (p) => (p === 0 ? "0%" : pct(p));  // pct() writes 0 as 0.0e+0

let SAE = null;  // {path, site} of the loaded SAE

function saeBody(extra) {
  const path = SAE ? SAE.path : $("sae-path").value.trim();
  const site = SAE ? SAE.site : $("sae-site").value.trim();
  return { path, ...(site ? { site } : {}), ...extra };
}

// ---- the SAE folders the server found (suggestions for the path box) --------------------------------
async function loadSaeFolders() {
  try {
    const d = await api("GET", "/api/sae/folders");
    $("sae-found").replaceChildren(...d.folders.map((f) => el("option", { value: f })));
    if (!$("sae-path").value && d.folders.length) $("sae-path").value = d.folders[0];
  } catch (e) { /* the Load button will say what is wrong */ }
}

// ---- card ---------------------------------------------------------------------------------------------
function kv(rows) {
  return el("table", { class: "stats" }, el("tbody", {}, rows.filter((r) => r).map(([k, v, id]) =>
    el("tr", {}, el("th", {}, k), el("td", { class: "num", ...(id ? { id } : {}) }, v)))));
}

function cardView(d) {
  const c = d.card, s = d.stats;
  const out = [el("h3", {}, d.coder)];
  const size = [["d_in \u2192 latents \u2192 d_out", `${d.d_in} \u2192 ${d.d_sae} \u2192 ${d.d_out}`, "sae-size"]];
  if (c) {
    out.push(el("div", { class: "two" },
      kv([...size, ["variance explained", num(c.variance_explained), "sae-ve"], ["L0 (active latents per token)", num(c.l0), "sae-l0"],
        ["dead latents", share(c.dead_fraction)], ["dense latents (>10% of tokens)", share(c.dense_fraction)]]),
      kv([["CE loss clean / spliced / zero", `${num(c.ce_clean)} / ${num(c.ce_spliced)} / ${num(c.ce_zero)}`],
        ["CE loss recovered", num(c.ce_loss_recovered), "sae-ce"], ["KL(clean \u2016 spliced)", num(c.kl_spliced)],
        ["KL(clean \u2016 zero)", num(c.kl_zero)], ["held-out tokens", String(c.n_tokens)]])));
    if (c.text) out.push(el("p", { class: "hint" }, `card computed on ${c.n_tokens} tokens: ${c.text}`));
  } else {
    out.push(kv(size), el("p", { class: "hint" }, "No saved card (a foreign format, or trained with --no-card): " +
      "`lmscope sae eval DIR` computes one."));
  }
  const t = d.train;
  if (t && t.steps !== undefined) {
    out.push(el("p", { class: "hint", id: "sae-train" }, `Trained ${t.steps} steps on ${Number(t.tokens).toLocaleString()} ` +
      `tokens (${Math.round(t.tokens_per_s).toLocaleString()} tokens/s)` + (t.final ? `, final training FVU ${num(t.final.fvu)}` : "") +
      (d.spec.source ? ` · source ${d.spec.source}` : "") + "."));
  }
  if (s) {
    const [q10, q50, q90] = s.log10_frequency_q10_q50_q90;
    out.push(el("p", { class: "hint", id: "sae-stats" }, `Feature statistics: ${s.n_tokens.toLocaleString()} tokens of ` +
      `${s.corpus || "a corpus"}; ${share(s.dead_fraction)} of latents never active, ${share(s.dense_fraction)} dense; ` +
      `log10 frequency ${num(q10, 3)} / ${num(q50, 3)} / ${num(q90, 3)} (10% / 50% / 90% of live latents).` +
      (d.index ? " Search index present." : " No search index.")));
  } else {
    out.push(el("div", { class: "warning" }, "No feature statistics beside this SAE: feature pages and search need " +
      `them. Compute them once with \`lmscope sae features ${d.path}\`.`));
  }
  return el("div", { class: "card" }, out);
}

$("sae-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  busy(ev.target, "sae-status", "sae-card", async () => {
    SAE = null;
    const d = await api("POST", "/api/sae", saeBody({ action: "card" }));
    SAE = { path: $("sae-path").value.trim(), site: $("sae-site").value.trim() };
    for (const id of ["sae-feature", "sae-steer-feature"]) { $(id).max = d.d_sae - 1; $(id).min = -d.d_sae; }
    $("sae-card").replaceChildren(withTools(cardView(d), d, "sae-card"));
    $("sae-page").replaceChildren();
    $("sae-search-out").replaceChildren();
    $("sae-steer-out").replaceChildren();
  });
});

// ---- the feature page -----------------------------------------------------------------------------------
// One context: a chip per token, its background the activation's share of the latent's max.
function contextRow(e, rank, max) {
  const spans = e.tokens.map((t, j) => el("span", {
    class: "act" + (j === e.max_index ? " max" : ""), "data-act": String(e.acts[j]),
    title: `${JSON.stringify(t)}: ${num(e.acts[j])}`,
    style: `background:rgba(${ACT.join(",")},${shade(e.acts[j], max).toFixed(3)})`,
  }, visible(t)));
  return el("tr", {}, el("td", { class: "num" }, rank), el("td", { class: "num" }, num(e.max_act)),
    el("td", { class: "num dim" }, `${e.window}:${e.pos}`), el("td", { class: "ctx" }, spans));
}

function histChart(h) {
  const W = 420, H = 110, B = 16;
  const s = svg("svg", { id: "sae-hist", class: "chart", width: W, height: H + B, viewBox: `0 0 ${W} ${H + B}` });
  if (!h.counts.length) {
    const t = svg("text", { x: 4, y: H / 2 }); t.textContent = "never active on the corpus"; s.append(t);
    return s;
  }
  const top = Math.max(...h.counts), n = h.counts.length;
  h.counts.forEach((c, j) => {
    const r = svg("rect", { class: "hist-bar", x: (j * W) / n, y: H - (H * c) / top, width: Math.max(W / n - 1, 1),
      height: (H * c) / top, fill: `rgb(${ACT.join(",")})` });
    const tip = svg("title", {}); tip.textContent = `${num(h.edges[j], 3)} to ${num(h.edges[j + 1], 3)}: ${c} tokens`;
    r.append(tip); s.append(r);
  });
  for (const [x, v, anchor] of [[0, h.edges[0], "start"], [W, h.edges[n], "end"]]) {
    const t = svg("text", { x, y: H + 12, "text-anchor": anchor }); t.textContent = num(v, 3); s.append(t);
  }
  return s;
}

function tokenScores(title, rows) {
  if (!rows) return null;
  const max = Math.max(...rows.map(([, v]) => Math.abs(v)), 1e-12);
  return el("div", {}, el("h4", {}, title), el("table", {}, el("tbody", {}, rows.map(([t, v]) => el("tr", {},
    el("td", {}, tok(t)), el("td", { style: "width:45%" }, bar(Math.abs(v) / max, v < 0)),
    el("td", { class: "num" }, Math.abs(v) >= 0.01 ? v.toFixed(3) : v.toExponential(2)))))));
}

function pageView(d) {
  const where = d.site === d.site_out ? d.site : `${d.site} \u2192 ${d.site_out}`;
  const steer = el("button", { type: "button", onclick: () => {
    $("sae-steer-feature").value = d.feature;
    $("sae-steer-form").scrollIntoView({ block: "nearest" });
  } }, "Steer with it \u2193");
  const head = el("div", { class: "row", style: "margin:0 0 .6rem;align-items:center" },
    el("h3", { style: "margin:0", id: "sae-page-title" }, `Feature ${d.feature}`),
    el("span", { class: "dim" }, `of the ${d.kind} at ${where} of ${d.model}`), steer);
  const stats = kv([["active on", `${d.fires.toLocaleString()} of ${d.n_tokens.toLocaleString()} tokens (${share(d.frequency)})`, "sae-fires"],
    ["mean when active", num(d.mean_act)], ["max", num(d.max_act), "sae-max"]]);
  const contexts = d.contexts.length ? el("table", { class: "contexts", id: "sae-contexts" },
    el("thead", {}, el("tr", {}, ["#", "max", "window:token", "context (hover a token for its activation)"].map((h) => el("th", {}, h)))),
    el("tbody", {}, d.contexts.map((e, r) => contextRow(e, r + 1, d.max_act)))) :
    el("p", { class: "hint" }, "This latent never fired on the corpus the statistics read.");
  const nearF = el("div", {}, el("h4", {}, "nearest features (decoder cosine)"), el("div", { class: "tokens", id: "sae-near" },
    d.nearest_features.map((f) => el("button", { type: "button", class: "chip", "data-feature": String(f.feature),
      title: `cosine ${f.cosine.toFixed(3)}`, onclick: () => showFeature(f.feature) }, `${f.feature} (${f.cosine.toFixed(2)})`))));
  const nearN = d.nearest_neurons ? el("div", {}, el("h4", {}, "nearest neurons (output weights, cosine)"),
    el("div", { class: "tokens" }, d.nearest_neurons.map((n) => el("button", { type: "button", class: "chip",
      title: (n.atlas ? `atlas: ${n.atlas.map((t) => JSON.stringify(t)).join(" ")}\n` : "") + "decode it in the Neurons tab",
      onclick: () => { showTab("neurons"); decodeNeuron(n.layer, n.neuron).catch((e) =>
        $("neuron-out").replaceChildren(el("div", { class: "error" }, e.message))); } },
    `${n.layer}.${n.neuron} (${n.cosine >= 0 ? "+" : ""}${n.cosine.toFixed(2)})`)))) : null;
  return el("div", { class: "card" }, head,
    el("div", { class: "two" }, stats, el("div", {}, histChart(d.histogram),
      el("p", { class: "hint" }, "activations when active, log-spaced bins"))),
    ...d.notes.map((n) => el("p", { class: "hint" }, n)),
    el("div", { class: "legend" }, "activation 0", el("span", { class: "ramp act-ramp" }), `${num(d.max_act)} (the max)`),
    contexts,
    el("div", { class: "kinds" }, tokenScores("promotes (decoder row through the LM head)", d.promoted),
      tokenScores("suppresses", d.suppressed)),
    el("div", { class: "two" }, nearF, nearN));
}

async function showFeature(i) {
  $("sae-feature").value = i;
  const d = await api("POST", "/api/sae", saeBody({ action: "feature", feature: i }));
  $("sae-page").replaceChildren(withTools(pageView(d), d, `sae-feature-${d.feature}`));
  $("sae-page").scrollIntoView({ block: "nearest" });
}

$("sae-feature-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const v = $("sae-feature").value, i = v.trim() !== "" && Number.isFinite(Number(v)) ? Number(v) : v;
  busy(ev.target, "sae-feature-status", "sae-page", () => showFeature(i));
});

// ---- search ---------------------------------------------------------------------------------------------
$("sae-search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  busy(ev.target, "sae-search-status", "sae-search-out", async () => {
    const d = await api("POST", "/api/sae", saeBody({ action: "search", query: $("sae-q").value, limit: 25 }));
    if (!d.hits.length) {
      $("sae-search-out").replaceChildren(el("p", { class: "hint" }, `No latent has ${JSON.stringify(d.query)} among its top tokens.`));
      return;
    }
    const rows = d.hits.map((h) => el("tr", { class: "click", title: "show this feature", "data-feature": String(h.feature),
      onclick: () => showFeature(h.feature).catch((e) => $("sae-page").replaceChildren(el("div", { class: "error" }, e.message))) },
      el("td", { class: "num" }, h.feature), el("td", { class: "num" }, h.score.toFixed(3)),
      el("td", {}, h.matched.map((m) => [tok(m.token), ` ${m.source} #${m.rank + 1} `])),
      el("td", { class: "num" }, share(h.frequency)),
      el("td", {}, h.top_act.map((t) => [tok(t), " "])), el("td", {}, h.top_logit.map((t) => [tok(t), " "]))));
    $("sae-search-out").replaceChildren(withTools(el("div", { class: "card" },
      el("h3", {}, `${d.hits.length} features for ${JSON.stringify(d.query)}`, " ", el("span", { class: "dim" }, "(click one for its page)")),
      el("table", { id: "sae-hits" }, el("thead", {}, el("tr", {}, ["feature", "score", "matched", "frequency",
        "top activating tokens", "top logit tokens"].map((x) => el("th", {}, x)))), el("tbody", {}, rows))), d, "sae-search"));
  });
});

// ---- steering -------------------------------------------------------------------------------------------
function steerView(d) {
  const fmt = (x, f) => (x === null || x === undefined ? "\u2013" : f(x));
  const arms = Object.values(d.arms);
  const rows = arms.map((a) => el("tr", {}, el("td", {}, a.name), el("td", { class: "num" }, a.feature ?? "\u2013"),
    el("td", { class: "num" }, fmt(a.concept_prob, (x) => x.toExponential(2))),
    el("td", { class: "num" }, fmt(a.concept_rate, (x) => x.toFixed(2))),
    el("td", { class: "num" }, fmt(a.kl_neutral, (x) => x.toFixed(3))),
    el("td", { class: "num" }, fmt(a.repetition, (x) => x.toFixed(2)))));
  const gens = arms.filter((a) => a.texts.length).map((a) => el("div", { class: "card" }, el("h4", {}, a.name),
    a.texts.map((t, i) => el("div", { class: "text" }, el("span", { class: "prompt" }, d.prompts[i] ?? ""), t))));
  return [el("div", { class: "card" },
    el("h3", {}, `${d.mode} feature ${d.feature} at ${d.site}` + (d.mode === "ablate" ? "" : ` (\u00d7${d.value} of its max activation ${num(d.typical)})`)),
    el("p", { class: "hint" }, "concept tokens (what its decoder row promotes): ", d.concept_tokens.slice(0, 10).map((t) => [tok(t), " "])),
    el("table", { id: "sae-arms" }, el("thead", {}, el("tr", {}, ["arm", "feature", "p(concept next)", "concept rate",
      "KL neutral", "repetition"].map((h) => el("th", {}, h)))), el("tbody", {}, rows))),
    gens.length ? el("div", { class: "side steer-gens" }, gens) : null];
}

$("sae-steer-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  busy(ev.target, "sae-steer-status", "sae-steer-out", async (status) => {
    const n = (s) => (s.trim() !== "" && Number.isFinite(Number(s)) ? Number(s) : s);  // a bad number: the server names it
    const prompts = $("sae-prompts").value.split("\n").filter((p) => p.trim() !== "");
    const d = await runJob("sae", saeBody({ action: "steer", feature: n($("sae-steer-feature").value),
      mode: $("sae-mode").value, value: n($("sae-value").value), max_new_tokens: n($("sae-n").value),
      generate: $("sae-generate").checked, prompts }), status);
    const [first, ...rest] = steerView(d).filter((x) => x);
    $("sae-steer-out").replaceChildren(withTools(first, d, `sae-steer-${d.feature}`), ...rest);
  });
});

loadSaeFolders();
