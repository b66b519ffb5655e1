"""Circuit figures: each writes the file it returns, from plain `to_dict()`-shaped dicts, and
survives empty graphs, NaN scores, mathtext-looking tokens and a model-sized graph."""

from __future__ import annotations

import json
import math
import os
import random
import re

import pytest

from lmscope.plots import circuit_plots as cp

PNG = b"\x89PNG\r\n\x1a\n"
NASTY = ["<b>", "</script><script>alert(1)</script>", "a & b", '"q"', "'s", "$x$", "$\\frac{$", " ", "\n"]


def _node(name: str, n_layers: int = 4, score=0.5, decoded=()) -> dict:
    kind, layer, head = {"input": ("input", -1, None), "logits": ("logits", n_layers, None)}.get(name, (None,) * 3)
    if kind is None and name.startswith("a"):
        layer, head = (int(x) for x in name[1:].split(".h"))
        kind = "head"
    elif kind is None:
        kind, layer = "mlp", int(name[1:])
    return {"name": name, "kind": kind, "layer": layer, "head": head, "score": score, "decoded": list(decoded)}


def _circuit(nodes: list[dict], edges: list[dict], n_layers: int = 4, **kw) -> dict:
    return {"model": "smollm2-135m-instruct", "task": "ioi", "ablation": "resample", "method": "eap-ig",
            "n_layers": n_layers, "faithfulness": 0.83, "n_edges_total": 72000, "nodes": nodes, "edges": edges, **kw}


def _small() -> dict:
    nodes = [_node("input", decoded=[]), _node("a0.h1", decoded=["<b>", "a & b"]), _node("a0.h0"),
             _node("m0", score=float("nan")), _node("a2.h3", score=None, decoded=NASTY), _node("logits")]
    edges = [{"source": "input", "target": "a0.h1", "route": "v", "score": 0.9},
             {"source": "input", "target": "a0.h0", "route": "k", "score": -0.3},
             {"source": "a0.h1", "target": "m0", "route": "mlp", "score": 0.2},  # same row: drawn as a bow
             {"source": "m0", "target": "a2.h3", "route": "q", "score": float("nan")},
             {"source": "a2.h3", "target": "logits", "route": "logits", "score": -1.4},
             {"source": "m1", "target": "logits", "route": "logits", "score": 0.1}]  # m1 not listed: drawn anyway
    return _circuit(nodes, edges)


def _large(seed: int = 0) -> dict:
    rng = random.Random(seed)
    n_layers, n_heads = 30, 9
    names = ["input"] + [f"a{layer}.h{h}" for layer in range(n_layers) for h in range(n_heads)]
    names += [f"m{layer}" for layer in range(n_layers)] + ["logits"]
    nodes = [_node(n, n_layers, score=rng.gauss(0, 1), decoded=["tok", "<x>"]) for n in names]
    layer = {n["name"]: n["layer"] for n in nodes}
    edges = []
    while len(edges) < 3000:
        s, t = rng.sample(names, 2)
        if layer[s] < layer[t]:
            route = "logits" if t == "logits" else "mlp" if t.startswith("m") else rng.choice("qkv")
            edges.append({"source": s, "target": t, "route": route, "score": rng.gauss(0, 1)})
    return _circuit(nodes, edges, n_layers=n_layers)


def _png(path) -> None:
    assert path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def _page_data(text: str) -> dict:
    return json.loads(re.search(r"const D = (.*);\n", text)[1])


# ---- the circuit graph ---------------------------------------------------------------------------


def test_circuit_png_writes_the_returned_png(tmp_path):
    out = cp.circuit_png(_small(), tmp_path / "sub" / "c.png")
    assert out == tmp_path / "sub" / "c.png"
    _png(out)


def test_layout_puts_input_at_the_bottom_and_heads_in_order_before_the_mlp():
    nodes, edges, rows = cp._layout(_small())
    assert rows == ["input", "0", "1", "2", "logits"]  # only layers with a node, bottom first
    row0 = sorted((n for n in nodes if n["r"] == 1), key=lambda n: n["x"])
    assert [n["name"] for n in row0] == ["a0.h0", "a0.h1", "m0"]
    assert {n["name"] for n in nodes} == {"input", "a0.h0", "a0.h1", "m0", "a2.h3", "m1", "logits"}
    assert len(edges) == 6 and edges[3]["score"] is None  # NaN score -> None (no sign)
    assert cp._weights(edges)[4] == 1.0  # the largest |score| is the widest


def test_circuit_html_is_self_contained_and_escapes_every_token(tmp_path):
    out = cp.circuit_html(_small(), tmp_path / "c.html")
    text = out.read_text(encoding="utf-8")
    assert out == tmp_path / "c.html" and text.startswith("<!doctype html>")
    for name in ("a0.h1", "a2.h3", "m0", "m1", "input", "logits"):
        assert f">{name}</text>" in text
    assert "&lt;b&gt;" in text and "<b>" not in text  # the token, never a tag
    assert "<script>alert" not in text and text.count("</script>") == 1 and text.count("<script>") == 1
    assert "a &amp; b" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.IGNORECASE)
    assert "http://" not in text and "https://" not in text and "@import" not in text
    data = _page_data(text)  # the embedded data is valid JSON and round-trips the tokens exactly
    by_name = {n["name"]: n for n in data["nodes"]}
    assert by_name["a2.h3"]["decoded"] == NASTY and by_name["a2.h3"]["score"] is None
    assert [e["route"] for e in data["edges"]] == ["v", "k", "mlp", "q", "logits", "logits"]
    assert "smollm2-135m-instruct · ioi · eap-ig · resample ablation · faithfulness 0.83 · 6/72000 edges" in text


@pytest.mark.parametrize("writer,suffix", [(cp.circuit_png, "png"), (cp.circuit_html, "html")])
def test_empty_and_single_node_circuits(tmp_path, writer, suffix):
    empty = _circuit([], [], faithfulness=None)
    single = _circuit([_node("a1.h2", score=float("nan"), decoded=["<b>"])], [], faithfulness=float("nan"))
    no_scores = _circuit([], [{"source": "input", "target": "logits", "route": "logits", "score": None}])
    for i, c in enumerate((empty, single, no_scores)):
        out = writer(c, tmp_path / f"{i}.{suffix}")
        assert out.exists() and out.stat().st_size > 0
        if suffix == "png":
            _png(out)
        else:
            text = out.read_text(encoding="utf-8")
            assert "faithfulness n/a" in text if i < 2 else "a1.h2" not in text
            assert "NaN" not in text.split("const D = ")[1].split(";\n")[0]


def test_a_model_sized_circuit_renders(tmp_path):
    big = _large()
    _png(cp.circuit_png(big, tmp_path / "big.png"))
    text = cp.circuit_html(big, tmp_path / "big.html").read_text(encoding="utf-8")
    data = _page_data(text)
    assert len(data["nodes"]) == 30 * 9 + 30 + 2 and len(data["edges"]) == 3000
    assert text.count('class="e"') == 3000 and text.count('class="n"') == 302


def test_circuit_html_hover_in_a_browser(tmp_path):
    """The page's script runs, fetches nothing, and hovering shows the tooltip and lights the edges."""
    chromium = os.environ.get("LMSCOPE_CHROMIUM", "/usr/bin/chromium")
    required = os.environ.get("LMSCOPE_REQUIRE_BROWSER") == "1"  # CI: a missing browser fails
    if not os.access(chromium, os.X_OK):
        why = f"no Chromium at {chromium}: `apt-get install -y chromium` (or set LMSCOPE_CHROMIUM)"
        if required:
            raise RuntimeError(why)
        pytest.skip(why)
    sync_api = pytest.importorskip("playwright.sync_api") if not required else __import__(
        "playwright.sync_api", fromlist=["sync_api"])
    out = cp.circuit_html(_small(), tmp_path / "c.html")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        try:
            page, problems = browser.new_page(), []
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: problems.append(r.url) if not r.url.startswith("file:") else None)
            page.goto(out.as_uri())
            page.locator('.n:has(text:text-is("a2.h3"))').hover()
            tip = page.locator("#tip").inner_text()
            assert "a2.h3" in tip and "head" in tip and "n/a" in tip and '"<b>"' in tip
            assert page.locator(".e.hl").count() == 2  # m0 -> a2.h3 and a2.h3 -> logits
            page.locator("h3").hover()  # leaving the graph clears the highlight
            assert page.locator(".e.hl").count() == 0
            assert problems == []
        finally:
            browser.close()


# ---- patching, faithfulness, overlap, head scores ------------------------------------------------


def _patching(values, cols) -> dict:
    return {"kind": "resid", "direction": "denoising", "ablation": "resample", "metric": "logit_diff", "task": "ioi",
            "model": "m", "values": values, "row_labels": list(range(len(values))), "col_labels": cols,
            "row_title": "layer", "col_title": "position", "clean": 3.2, "corrupt": -0.4}


def test_patching_heatmap_with_nan_and_tokens_that_look_like_math(tmp_path):
    values = [[0.1 * (i - j) if (i, j) != (1, 2) else float("nan") for j in range(len(NASTY))] for i in range(5)]
    _png(cp.patching_heatmap(_patching(values, NASTY), tmp_path / "p.png"))
    heads = _patching([[None, 1.0], [-2.0, 0.0]], ["0", "1"]) | {"kind": "heads", "col_title": "head"}
    _png(cp.patching_heatmap(heads, tmp_path / "h.png"))
    many = _patching([[math.sin(i * j) for j in range(60)] for i in range(30)], [f"tok{j}" for j in range(60)])
    _png(cp.patching_heatmap(many, tmp_path / "many.png"))
    all_nan = _patching([[float("nan")] * 3] * 2, ["a"])  # wrong number of labels: indices instead
    _png(cp.patching_heatmap(all_nan, tmp_path / "nan.png"))
    _png(cp.patching_heatmap(_patching([], []) | {"clean": None}, tmp_path / "empty.png"))


def test_faithfulness_curve(tmp_path):
    fr = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
    curve = {"task": "ioi", "model": "m", "method": "eap-ig", "ablation": "resample", "fractions": fr,
             "faithfulness": [0.0, 0.1, 0.5, float("nan"), 0.85, 0.95, 1.0],
             "random": {"fractions": fr, "mean": [0.0, 0.0, 0.02, 0.05, 0.1, 0.3, 1.0], "std": [0.01] * 7},
             "cpr": 0.91, "cmd": 0.08, "target": 0.8, "chosen_fraction": 0.1}
    _png(cp.faithfulness_curve(curve, tmp_path / "f.png"))
    bare = curve | {"random": None, "target": None, "chosen_fraction": None, "cpr": float("nan"), "cmd": None}
    _png(cp.faithfulness_curve(bare, tmp_path / "bare.png"))
    _png(cp.faithfulness_curve(curve | {"fractions": [], "faithfulness": [], "random": None}, tmp_path / "e.png"))
    zero = curve | {"fractions": [0.0, *fr[1:]], "random": {"fractions": fr, "mean": fr, "std": None}}
    _png(cp.faithfulness_curve(zero, tmp_path / "zero.png"))  # a fraction of 0 is left off the log axis


def test_overlap_matrix(tmp_path):
    overlap = {"tasks": ["ioi", "induction", "greater-than"], "model": "m",
               "jaccard": [[1.0, 0.25, 0.1], [0.25, 1.0, float("nan")], [0.1, None, 1.0]],
               "shared": {"ioi|induction": ["a5.h1", "a6.h9"], "greater-than|ioi": ["m3"]}}
    _png(cp.overlap_matrix(overlap, tmp_path / "o.png"))
    _png(cp.overlap_matrix({"tasks": [], "jaccard": [], "shared": {}, "model": "m"}, tmp_path / "e.png"))
    _png(cp.overlap_matrix({"tasks": ["$a$"], "jaccard": [[1.0]]}, tmp_path / "one.png"))


def test_head_scores(tmp_path):
    values = [[(layer * 9 + h) % 7 / 7 for h in range(9)] for layer in range(30)]
    values[3][4] = float("nan")
    scores = {"model": "m", "title": "prefix-matching score", "values": values,
              "highlight": [[5, 1], [29, 8], [40, 0], [-1, 2]]}  # out-of-range heads are skipped
    _png(cp.head_scores(scores, tmp_path / "h.png"))
    signed = {"model": "m", "title": "$score$", "values": [[-1.0, 0.5], [0.2, None]], "highlight": [[0, 0]]}
    _png(cp.head_scores(signed, tmp_path / "s.png"))
    _png(cp.head_scores({"values": [], "highlight": []}, tmp_path / "e.png"))
