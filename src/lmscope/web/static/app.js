// lmscope studio: plain JS, no build step, no network access beyond this server.
// Every panel calls one JSON endpoint (see docs/studio.md) and renders the answer.
"use strict";

// ---- small helpers ---------------------------------------------------------------------------
const $ = (id) => document.getElementById(id);

const INTERACTIVE = new Set(["BUTTON", "A", "INPUT", "SELECT", "TEXTAREA", "SUMMARY", "LABEL", "OPTION"]);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  // Anything clickable is reachable by keyboard: Tab to it, Enter or Space to click it.
  if (attrs && attrs.onclick && !INTERACTIVE.has(e.tagName)) {
    if (!e.hasAttribute("tabindex")) e.tabIndex = 0;
    if (!e.hasAttribute("role")) e.setAttribute("role", "button");
    e.addEventListener("keydown", (ev) => {
      if (ev.target === e && (ev.key === "Enter" || ev.key === " ")) { ev.preventDefault(); e.click(); }
    });
  }
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

// Token text with invisible characters made visible: newline, tab, and a token made only of
// spaces (shown as open boxes). Other spaces stay as they are inside a highlighted chip, so
// " Warsaw" and "Warsaw" look different; the exact text is in the tooltip.
const visible = (t) => {
  if (t === "") return "\u2205";
  const v = t.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5").replace(/\r/g, "\u240d");
  return v.trim() === "" ? v.replace(/[ \u00a0]/g, "\u2423") : v;
};
const tok = (t) => el("span", { class: "tok", title: JSON.stringify(t) }, visible(t));
const pct = (p) => (p >= 0.9995 ? "100%" : p >= 0.001 ? (100 * p).toFixed(1) + "%" : p.toExponential(1));

function bar(frac, neg) {
  const w = Math.max(0, Math.min(1, frac)) * 100;
  return el("div", { class: "bar" + (neg ? " neg" : "") }, el("span", { style: `width:${w.toFixed(1)}%` }));
}

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { /* not JSON */ }
  if (!r.ok) {
    // every studio error carries a message in "error" (422s also keep FastAPI's "detail" list)
    let msg = (data && data.error) || `HTTP ${r.status}`;
    if (data && !data.error && Array.isArray(data.detail)) {
      msg = data.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("\n");
    }
    throw new Error(msg);
  }
  return data;
}

// Run `fn` with the form's submit button disabled and a timer in the status line. While it
// runs, the status shows how many requests wait for the model (from /api/info, which answers
// at once however long the queue is), unless `fn` runs a job, which shows its own progress.
async function busy(form, statusId, outId, fn) {
  const btn = form.querySelector("button[type=submit]");
  const status = $(statusId);
  const t0 = performance.now();
  btn.disabled = true;
  status.textContent = "working\u2026";
  const poll = setInterval(async () => {
    try {
      const q = (await api("GET", "/api/info")).studio.queue;
      if (btn.disabled && !status.dataset.job) status.textContent = `working\u2026 (model: ${q.running} running, ${q.waiting} waiting)`;
    } catch (e) { /* the answer itself will say what went wrong */ }
  }, 1000);
  try {
    await fn(status);
    status.textContent = `${((performance.now() - t0) / 1000).toFixed(2)} s`;
  } catch (e) {
    status.textContent = "";
    if (e instanceof JobCancelled) status.textContent = "cancelled";
    else $(outId).replaceChildren(el("div", { class: "error", role: "alert" }, e.message));
  } finally {
    clearInterval(poll);
    delete status.dataset.job;
    btn.disabled = false;
  }
}

// ---- jobs: long work with progress and a Cancel button -------------------------------------------
// POST /api/jobs/<path> starts the same work as POST /api/<path> and answers at once with a job
// id; the page polls GET /api/jobs/<id> for its progress bars and result, and DELETE cancels it.
class JobCancelled extends Error {}
// Jobs this page started and still waits for: closing or leaving the page cancels them, so a
// sweep nobody will read does not hold the model.
const OPEN_JOBS = new Set();
window.addEventListener("pagehide", () => {
  for (const id of OPEN_JOBS) fetch(`/api/jobs/${id}`, { method: "DELETE", keepalive: true }).catch(() => {});
});

function progressView(j) {
  if (j.state === "waiting") return [el("span", {}, `waiting for the model (${j.waited.toFixed(0)} s)`)];
  if (!j.progress.length) return [el("span", {}, `running\u2026 ${j.seconds !== null ? j.seconds.toFixed(0) + " s" : ""}`)];
  return j.progress.map((b) => el("span", { class: "bar-step" },
    b.total ? el("progress", { max: b.total, value: b.done, "aria-label": b.desc }) : null,
    ` ${b.desc} ${b.done}${b.total ? "/" + b.total : ""} ${b.unit !== "it" ? b.unit : ""}`));
}

async function runJob(path, body, status) {
  const j0 = await api("POST", `/api/jobs/${path}`, body);
  let cancelled = false;
  const cancel = el("button", { type: "button", class: "cancel", onclick: async () => {
    cancelled = true;
    cancel.disabled = true;
    try { await api("DELETE", `/api/jobs/${j0.id}`); } catch (e) { /* the poll will say */ }
  } }, "Cancel");
  const prog = el("span", { class: "progress", "aria-live": "polite" });
  if (status) {
    status.dataset.job = j0.id;
    status.replaceChildren(prog, " ", cancel);
  }
  let j = j0;
  OPEN_JOBS.add(j0.id);
  try {
    for (let wait = 150; ; wait = Math.min(1000, wait * 1.5)) {
      if (j.state === "done") return j.result;
      if (j.state === "error") throw new Error(j.error);
      if (j.state === "cancelled") throw new JobCancelled("cancelled");
      prog.replaceChildren(...progressView(j));
      await new Promise((r) => setTimeout(r, cancelled ? 100 : wait));
      j = await api("GET", `/api/jobs/${j0.id}`);
    }
  } finally {
    OPEN_JOBS.delete(j0.id);
  }
}

// ---- downloads: every result as JSON, and as a PNG of what the page shows -------------------------
function download(blob, name) {
  const a = el("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}
const fileName = (name) => String(name).replace(/[^A-Za-z0-9._-]+/g, "_").slice(0, 80) || "lmscope";

// A PNG of `node` as the page draws it: the node (scroll boxes opened to their full size) with
// the page's own stylesheets, drawn through an SVG <foreignObject> onto a canvas at 2x.
async function nodePNG(node) {
  const css = [...document.styleSheets].flatMap((sh) => { try { return [...sh.cssRules].map((r) => r.cssText); }
    catch (e) { return []; } }).join("\n") +
    "\n.png-root { font: 15px/1.5 system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif; color: #1d2330; }" +
    "\n.png-root, .png-root * { max-height: none !important; overflow: visible !important; }" +
    "\n.png-root .tools, .png-root .cancel { display: none !important; }";
  const clone = node.cloneNode(true);
  clone.style.margin = "0";
  const box = el("div", { class: "png-root", style: `position:absolute;left:-100000px;top:0;width:${node.offsetWidth}px;` +
    "background:#fff" }, el("style", {}, css), clone);
  document.body.append(box);
  const w = Math.ceil(Math.max(box.scrollWidth, box.offsetWidth)), h = Math.ceil(box.scrollHeight);
  box.style.position = box.style.left = box.style.top = "";
  const xml = new XMLSerializer().serializeToString(box);
  box.remove();
  const svgText = `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}">` +
    `<foreignObject x="0" y="0" width="${w}" height="${h}">${xml}</foreignObject></svg>`;
  const img = new Image();
  img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(svgText);
  await img.decode();
  const scale = 2, canvas = el("canvas", { width: w * scale, height: h * scale });
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.scale(scale, scale);
  ctx.drawImage(img, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

// The JSON / PNG buttons of a result: `data` is what the API answered, `node()` what to draw.
function tools(data, name, node) {
  return el("span", { class: "tools" },
    el("button", { type: "button", class: "chip", title: "download what the API answered",
      onclick: () => download(new Blob([JSON.stringify(data, null, 2)], { type: "application/json" }), fileName(name) + ".json") },
    "\u2913 JSON"),
    el("button", { type: "button", class: "chip", title: "download this view as an image",
      onclick: async () => download(await nodePNG(node()), fileName(name) + ".png") }, "\u2913 PNG"));
}

// The download buttons in an existing card's title row (its first <h3>); returns the card.
function withTools(card, data, name) {
  const h = [...card.children].find((c) => c.tagName === "H3");
  const head = el("div", { class: "card-head" });
  if (h) { h.replaceWith(head); head.append(h); } else card.prepend(head);
  head.append(tools(data, name, () => card));
  return card;
}

// A heatmap table is one tab stop: the arrow keys move the focus between its cells (the elements
// matching `cells` in its body rows; default every <td>), Home / End to a row's ends. Call it from the
// table's keydown; true when it moved.
function gridMove(table, ev, cells = "td") {
  const cell = ev.target.closest && ev.target.closest(cells);
  if (!cell || !table.contains(cell)) return false;
  const rows = [...table.tBodies[0].rows].map((row) => [...row.querySelectorAll(cells)]).filter((row) => row.length);
  const r = rows.findIndex((row) => row.includes(cell)), c = rows[r].indexOf(cell);
  const to = { ArrowUp: [r - 1, c], ArrowDown: [r + 1, c], ArrowLeft: [r, c - 1], ArrowRight: [r, c + 1],
    Home: [r, 0], End: [r, Infinity] }[ev.key];
  if (!to) return false;
  ev.preventDefault();
  const rr = Math.max(0, Math.min(rows.length - 1, to[0]));
  const next = rows[rr][Math.max(0, Math.min(rows[rr].length - 1, to[1]))];
  cell.tabIndex = -1;
  next.tabIndex = 0;
  next.focus();
  return true;
}

// A "made in this session, then files" picker (the Relations tab's LREs, the Steering tab's
// vectors). Option values are `<key>:<id>` for the session's objects and `path:<file>` for files;
// a file made for another model is listed but disabled. `keep` stays chosen if it still can be.
function fillSource(sel, { key, session, sessionLabel, files, fileLabel, empty, keep }) {
  const groups = [];
  if (session.length) {
    groups.push(el("optgroup", { label: sessionLabel }, session.map(([id, text]) => el("option", { value: `${key}:${id}` }, text))));
  }
  if (files.length) {
    groups.push(el("optgroup", { label: fileLabel }, files.map(([f, text]) => el("option",
      { value: `path:${f.path}`, ...(f.usable ? {} : { disabled: "" }) }, text + (f.usable ? "" : ` (for ${f.model})`)))));
  }
  sel.replaceChildren(...groups);
  if (!groups.length) sel.append(el("option", { value: "" }, empty));
  if ([...sel.options].some((o) => o.value === keep && !o.disabled)) sel.value = keep;
}

// The request fields of a `fillSource` choice: {<key>: id} or {path}; `missing` when none is chosen.
function readSource(sel, key, missing) {
  const v = sel.value;
  if (!v) throw new Error(missing);
  const i = v.indexOf(":");
  return v.slice(0, i) === key ? { [key]: v.slice(i + 1) } : { path: v.slice(i + 1) };
}

// A result card: a title row with the download buttons, then the content.
function resultCard(title, data, name, ...content) {
  const card = el("div", { class: "card result" });
  card.append(el("div", { class: "card-head" }, el("h3", {}, title), tools(data, name, () => card)),
    ...content.flat(Infinity).filter((c) => c !== null && c !== undefined));
  return card;
}

// ---- tabs and model info ---------------------------------------------------------------------
const TABS = [...document.querySelectorAll("nav [role=tab]")];
function showTab(name, { keepHash = false } = {}) {
  TABS.forEach((b) => {
    const on = b.dataset.tab === name;
    b.classList.toggle("active", on);
    b.setAttribute("aria-selected", on ? "true" : "false");
    b.tabIndex = on ? 0 : -1;
  });
  document.querySelectorAll(".panel").forEach((p) => p.classList.toggle("active", p.id === "tab-" + name));
  if (!keepHash) history.replaceState(null, "", "#" + (STATE.saved[name] || name));
}
TABS.forEach((b, i) => {
  b.id = b.id || `tabbtn-${b.dataset.tab}`;
  b.setAttribute("aria-controls", "tab-" + b.dataset.tab);
  $("tab-" + b.dataset.tab).setAttribute("role", "tabpanel");
  $("tab-" + b.dataset.tab).setAttribute("aria-labelledby", b.id);
  b.addEventListener("click", () => showTab(b.dataset.tab));
  b.addEventListener("keydown", (ev) => {  // the WAI-ARIA tabs pattern: arrows, Home, End
    const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: TABS.length - 1 }[ev.key];
    if (to === undefined) return;
    ev.preventDefault();
    const t = TABS[(to + TABS.length) % TABS.length];
    showTab(t.dataset.tab);
    t.focus();
  });
});

// ---- shareable URLs: a view's state in the hash -----------------------------------------------
// Submitting a form writes `#<tab>?<field>=<value>&...&go=<form id>` (only fields that differ
// from the page's defaults); opening such a URL fills the fields and submits that form again.
// A panel with state beyond its fields (Generate's edit rows) registers STATE.hooks[tab] =
// {save() -> string, load(string)}; one whose options load later registers STATE.ready[tab].
const STATE = { saved: {}, hooks: {}, ready: {} };

function fieldsOf(panel) {
  return [...panel.querySelectorAll("input[id], select[id], textarea[id]")].filter((f) => f.type !== "file");
}
function changed(f) {
  if (f.type === "checkbox") return f.checked !== f.defaultChecked;
  if (f.tagName === "SELECT") {
    const d = [...f.options].find((o) => o.defaultSelected) || f.options[0];
    return !d || f.value !== d.value;
  }
  return f.value !== f.defaultValue;
}
function saveState(form) {
  const panel = form.closest(".panel");
  if (!panel) return;
  const tab = panel.id.slice(4), q = new URLSearchParams();
  for (const f of fieldsOf(panel)) {
    if (changed(f)) q.set(f.id, f.type === "checkbox" ? (f.checked ? "1" : "0") : f.value);
  }
  const hook = STATE.hooks[tab];
  if (hook) { const v = hook.save(); if (v) q.set("_", v); }
  if (form.id) q.set("go", form.id);
  STATE.saved[tab] = `${tab}?${q}`;
  history.replaceState(null, "", "#" + STATE.saved[tab]);
}
document.addEventListener("submit", (ev) => saveState(ev.target), true);

async function restoreState() {
  const h = decodeURIComponent(location.hash.slice(1));
  if (!h) return;
  const [tab, query] = [h.split("?")[0], h.includes("?") ? h.slice(h.indexOf("?") + 1) : ""];
  if (!$("tab-" + tab)) return;
  showTab(tab, { keepHash: true });
  if (!query) return;
  await STATE.ready[tab];
  const q = new URLSearchParams(query), panel = $("tab-" + tab);
  for (const f of fieldsOf(panel)) {
    if (!q.has(f.id)) continue;
    if (f.type === "checkbox") f.checked = q.get(f.id) === "1";
    else f.value = q.get(f.id);
    f.dispatchEvent(new Event("change"));
  }
  if (q.has("_") && STATE.hooks[tab]) STATE.hooks[tab].load(q.get("_"));
  const form = q.get("go") && $(q.get("go"));
  if (form && panel.contains(form)) form.requestSubmit();
}

let INFO = null;
async function loadInfo() {
  try {
    INFO = await api("GET", "/api/info");
  } catch (e) {
    $("model-info").textContent = "model info unavailable: " + e.message;
    return;
  }
  const i = INFO;
  const parts = [
    el("b", {}, i.name), ` \u00b7 ${i.family} \u00b7 ${i.n_layers} layers \u00b7 d_model ${i.d_model} \u00b7 ` +
    `${i.n_heads}\u00d7${i.d_head} heads \u00b7 d_mlp ${i.d_mlp} \u00b7 vocab ${i.d_vocab.toLocaleString()} \u00b7 ` +
    `${i.dtype} on ${i.device}`,
  ];
  $("model-info").replaceChildren(...parts);
  document.title = `lmscope studio \u00b7 ${i.name}`;
  if (!i.chat_template) {
    document.querySelectorAll(".chat-box").forEach((c) => { c.disabled = true; c.parentElement.title = "no chat template"; });
  }
  if (i.studio.circuit_tasks) {  // the generators and the shipped task files the server runs
    const sel = $("circ-task"), was = sel.value;
    sel.replaceChildren(...i.studio.circuit_tasks.map((t) => el("option", { value: t }, t)));
    if (i.studio.circuit_tasks.includes(was)) sel.value = was;
    $("circ-n").max = i.studio.max_circuit_pairs;
  }
  INFO_LISTENERS.forEach((fn) => fn(i));
}
// Panels that adapt to the model (ranges, lists) register here; called once /api/info answers.
const INFO_LISTENERS = [];
const onInfo = (fn) => (INFO ? fn(INFO) : INFO_LISTENERS.push(fn));

// ---- Next token ------------------------------------------------------------------------------
$("run-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  busy(ev.target, "run-status", "run-out", async () => {
    const d = await api("POST", "/api/run", {
      prompt: $("run-prompt").value, top_k: +$("run-k").value, chat: $("run-chat").checked,
    });
    // bars are probabilities (full width = 1), not relative to the top token
    const rows = d.top.map((r, i) =>
      el("tr", {}, el("td", { class: "num" }, i + 1), el("td", {}, tok(r.token)),
        el("td", { style: "width:40%" }, bar(r.prob)), el("td", { class: "num" }, pct(r.prob)),
        el("td", { class: "num" }, r.logit.toFixed(2)), el("td", { class: "num dim" }, r.id)));
    $("run-out").replaceChildren(resultCard(`Input: ${d.n_tokens} tokens`, d, "next-token",
      el("div", { class: "tokens" }, d.tokens.map(tok)),
      el("table", {}, el("thead", {}, el("tr", {}, ["#", "next token", "", "prob", "logit", "id"].map((h) => el("th", {}, h)))),
        el("tbody", {}, rows))));
  });
});

// ---- Generate with edits -----------------------------------------------------------------------
// An edit row. The page starts with none (a fresh page generates without edits); "+ add edit"
// adds an empty one and a row whose site is left blank is not sent.
function addEditRow(spec) {
  spec = spec || { type: "add", site: "", value: "", vector_file: "", scale: 1 };
  const type = el("select", {}, ["add", "clamp", "zero"].map((t) => el("option", { value: t }, t)));
  type.value = spec.type;
  const inp = (v, cls, ph) => el("input", { type: "text", class: cls || "", value: v ?? "", placeholder: ph || "" });
  const site = inp(spec.site, "", "layers.L.resid_post");
  const value = inp(spec.value, "", "number");
  const file = inp(spec.vector_file, "", "path/to/vector.safetensors (add)");
  const scale = inp(spec.scale ?? 1, "", "1.0");
  value.style.width = "6rem";
  scale.style.width = "5rem";
  const row = el("tr", {}, el("td", {}, type), el("td", {}, site), el("td", {}, value), el("td", {}, file),
    el("td", {}, scale), el("td", {}, el("button", { type: "button", title: "remove", onclick: () => row.remove() }, "\u00d7")));
  const sync = () => {  // grey out the fields a type ignores
    file.disabled = scale.disabled = type.value !== "add";
    value.disabled = type.value === "zero";
  };
  type.addEventListener("change", sync);
  sync();
  // A number that does not parse is sent as typed, so the server's message names the field.
  const num = (s) => (s.trim() !== "" && Number.isFinite(Number(s)) ? Number(s) : s);
  row.read = () => {
    if (site.value.trim() === "") return null;  // blank row: not an edit
    const e = { type: type.value, site: site.value.trim() };
    if (!value.disabled && value.value.trim() !== "") e.value = num(value.value);
    if (!file.disabled && file.value.trim() !== "") e.vector_file = file.value.trim();
    if (!scale.disabled && scale.value.trim() !== "") e.scale = num(scale.value);
    return e;
  };
  $("edit-rows").append(row);
}
$("add-edit").addEventListener("click", () => addEditRow());
STATE.hooks.generate = {  // the edit rows travel in the URL as JSON
  save: () => { const e = [...$("edit-rows").children].map((r) => r.read()).filter((x) => x !== null);
    return e.length ? JSON.stringify(e) : ""; },
  load: (v) => { $("edit-rows").replaceChildren(); JSON.parse(v).forEach((e) => addEditRow(e)); },
};

function diffView(base, edited) {
  let i = 0;
  while (i < base.length && i < edited.length && base[i] === edited[i]) i++;
  const same = i === base.length && i === edited.length;
  const render = (s) => [s.slice(0, i), i < s.length ? el("mark", {}, s.slice(i)) : null];
  return { same, base: render(base), edited: render(edited) };
}

$("gen-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  busy(ev.target, "gen-status", "gen-out", async () => {
    const edits = [...$("edit-rows").children].map((r) => r.read()).filter((e) => e !== null);
    const d = await api("POST", "/api/generate", {
      prompt: $("gen-prompt").value, max_new_tokens: +$("gen-n").value, chat: $("gen-chat").checked, edits,
    });
    const v = diffView(d.baseline, d.edited);
    const desc = d.edits.length ? d.edits.map((e) => `${e.type} ${e.site}` +
      (e.value !== undefined ? ` = ${e.value}` : "") + (e.vector_file ? ` + ${e.scale} \u00d7 ${e.vector_file}` : "") +
      (e.type === "add" && !e.vector_file ? ` (\u00d7 ${e.scale})` : "")).join("; ") : "no edits";
    const col = (title, parts) => el("div", { class: "card" }, el("h3", {}, title),
      el("div", { class: "text" }, el("span", { class: "prompt" }, d.chat ? "" : d.prompt), parts));
    $("gen-out").replaceChildren(
      ...(d.warnings || []).map((w) => el("div", { class: "warning" }, w)),
      resultCard("Generation", d, "generate",
        el("p", { class: "hint" }, `Edits: ${desc}. ` + (d.edits.length ? (v.same ? "The text did not change." :
          "Highlighted: where the texts part.") : "")),
        el("div", { class: "side" }, col("Baseline", v.base), col("Edited", v.edited))));
  });
});

// ---- Logit lens -------------------------------------------------------------------------------
const heat = (p) => {  // white -> accent blue
  const c = [43, 89, 195], a = Math.sqrt(Math.max(0, Math.min(1, p)));
  return `rgb(${c.map((x) => Math.round(255 + (x - 255) * a)).join(",")})`;
};
const COLORS = ["#2b59c3", "#c0504d", "#1b7f46", "#8e44ad", "#d68910", "#17a2b8", "#6b7385", "#e83e8c"];

function targetChart(d) {
  const W = 560, H = 220, L = 46, R = 12, T = 12, B = 32;
  const n = d.layers.length;
  const x = (i) => L + (n === 1 ? 0 : (i * (W - L - R)) / (n - 1));
  // y axis up to the smallest "nice" value above the largest probability, so small ones show
  const top = Math.max(...d.targets.flatMap((tg) => tg.prob), 0.005);
  const ymax = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1].find((v) => v >= top) || 1;
  const y = (p) => T + (1 - p / ymax) * (H - T - B);
  const s = svg("svg", { class: "chart", width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  for (const f of [0, 0.25, 0.5, 0.75, 1]) {
    const p = f * ymax;
    s.append(svg("line", { x1: L, x2: W - R, y1: y(p), y2: y(p), stroke: "#e1e4ea" }));
    const t = svg("text", { x: L - 6, y: y(p) + 4, "text-anchor": "end" });
    t.textContent = ymax < 0.1 ? p.toFixed(3) : p.toFixed(2); s.append(t);
  }
  const step = Math.max(1, Math.ceil(n / 12));
  d.layers.forEach((layer, i) => {
    if (i % step && i !== n - 1) return;
    const t = svg("text", { x: x(i), y: H - B + 16, "text-anchor": "middle" }); t.textContent = layer; s.append(t);
  });
  const lab = svg("text", { x: (L + W - R) / 2, y: H - 2, "text-anchor": "middle" });
  lab.textContent = "layer (resid_post) \u2192 probability at the last position"; s.append(lab);
  d.targets.forEach((tg, j) => {
    const pts = tg.prob.map((p, i) => `${x(i).toFixed(1)},${y(p).toFixed(1)}`).join(" ");
    s.append(svg("polyline", { points: pts, fill: "none", stroke: COLORS[j % COLORS.length], "stroke-width": 2 }));
  });
  return s;
}

function lensTable(d) {
  const byCell = new Map(d.cells.map((c) => [`${c.layer}:${c.pos}`, c]));
  const head = el("tr", {}, el("th", {}, ""), d.tokens.map((t, i) => el("th", { title: `position ${i}` }, tok(t))));
  const last = d.layers[d.layers.length - 1];
  const rows = [...d.layers].reverse().map((layer) => el("tr", { class: layer === last ? "final" : "" },
    el("th", { class: "layer" }, layer),
    d.tokens.map((_, pos) => {
      const c = byCell.get(`${layer}:${pos}`);
      const [t, p] = c.top[0];
      const tip = c.top.map(([tt, pp]) => `${JSON.stringify(tt)}  ${pct(pp)}`).join("\n") + `\nKL to output ${c.kl.toFixed(3)} nats`;
      return el("td", { style: `background:${heat(p)};color:${p > 0.45 ? "#fff" : "#1d2330"}`, title: tip }, visible(t));
    })));
  return el("table", { class: "lens stick-first stick-last" }, el("thead", {}, head), el("tbody", {}, rows));
}

$("lens-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  busy(ev.target, "lens-status", "lens-out", async () => {
    const targets = $("lens-targets").value.split("\n").filter((t) => t.trim() !== "");
    const d = await api("POST", "/api/logit_lens", {
      prompt: $("lens-prompt").value, targets, top_k: +$("lens-k").value, chat: $("lens-chat").checked,
    });
    const out = [withTools(el("div", { class: "card" },
      el("h3", {}, `Top token at every layer \u00d7 position (${d.lens} lens)`),
      el("div", { class: "legend" }, "probability 0", el("span", { class: "ramp" }), "1",
        el("span", {}, "\u00b7 top row is the model's output; hover a cell for its top tokens")),
      el("div", { class: "scroll" }, lensTable(d))), d, "logit-lens")];
    if (d.targets.length) {
      const rows = d.targets.map((tg, j) => el("tr", {},
        el("td", {}, el("span", { style: `color:${COLORS[j % COLORS.length]}` }, "\u25a0 "), tok(tg.token)),
        el("td", { class: "num" }, pct(tg.prob[tg.prob.length - 1])),
        el("td", { class: "num" }, tg.rank[tg.rank.length - 1]),
        el("td", { class: "num" }, tg.entry_layer ?? "\u2013"), el("td", { class: "num" }, tg.settle_layer ?? "\u2013")));
      out.push(el("div", { class: "card" }, el("h3", {}, "Targets at the last position"),
        el("div", { class: "two" }, targetChart(d),
          el("table", {}, el("thead", {}, el("tr", {}, ["target", "final prob", "final rank", `enters top ${d.top_k}`,
            "settles"].map((h) => el("th", {}, h)))), el("tbody", {}, rows)))));
    }
    $("lens-out").replaceChildren(...out);
  });
});

// Scripts of the panels load after this one: restore a shared view once they all have.
window.addEventListener("load", async () => { await STATE.infoLoaded; restoreState(); });
STATE.infoLoaded = loadInfo();
