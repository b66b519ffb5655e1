// The Neurons tab: atlas search, a neuron decoded through the LM head, "Clamp it in Generate".
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
function neuronView(d) {
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
  const clamp = el("button", { type: "button", onclick: () => {
    addEditRow({ type: "clamp", site, value: 8 });
    showTab("generate");
  } }, "Clamp it in Generate \u2192");
  return el("div", { class: "card" }, el("div", { class: "row", style: "margin:0 0 .6rem;align-items:center" },
    el("h3", { style: "margin:0" }, `Neuron ${d.layer}.${d.neuron}`), el("code", {}, site), clamp),
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
