"""The studio's Inspect panel: `/api/inspect/decompose` is `logit_attribution(decompose(...))` with
`layer_adds`, `/part` one part of the same decomposition through `unembed_vectors`, `/patchscope_sweep`
is `patchscope` at every asked layer (a job with a progress bar per layer, and Cancel),
`/patchscope_benchmark` is `identity_sweep` / `entity_sweep` over the shipped sources, `/token_edit`
is `token_edit`; the job forms answer the same; bad bodies are 422 and library refusals 400. In a
real browser the tab draws the attribution as a layers x (heads + MLP) heatmap whose every cell is
the API's number, opens a head's tokens by mouse and by keyboard, sweeps layers, edits in token
space, downloads what the API answered, fits 1280 px, and a fresh page on the URL it wrote shows the
same view. One slow test checks the directions on gemma-3-270m.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import live
from conftest import make_tiny
from fastapi.testclient import TestClient

from lmscope.inspect import patchscopes as ps
from lmscope.inspect.decomposition import (
    decompose,
    layer_adds,
    logit_attribution,
    token_direction,
    token_edit,
    top_tokens_of,
    unembed_vectors,
)
from lmscope.web import create_app
from lmscope.web.studio import json_safe

PROMPT = "hello world"


@pytest.fixture(scope="module")
def lm():
    return make_tiny("llama")


@pytest.fixture(scope="module")
def client(lm):
    with TestClient(create_app("tiny", model=lm)) as c:
        yield c


def post(client, what: str, body: dict, status: int = 200) -> dict:
    r = client.post(f"/api/inspect/{what}", json=body)
    assert r.status_code == status, r.text
    return r.json()


def as_json(x):
    """What JSON makes of a result (tuples -> lists, int keys -> strings)."""
    return json.loads(json.dumps(json_safe(x)))


def wait_job(client, job_id: str) -> dict:
    for _ in range(2000):
        j = client.get(f"/api/jobs/{job_id}").json()
        if j["state"] in ("done", "error", "cancelled"):
            return j
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish: {j}")


def job(client, what: str, body: dict) -> dict:
    r = client.post(f"/api/jobs/inspect/{what}", json=body)
    assert r.status_code == 202, r.text
    j = wait_job(client, r.json()["id"])
    assert j["state"] == "done", j
    return j["result"]


# ---- the API -------------------------------------------------------------------------------------

def test_decompose_is_logit_attribution_and_layer_adds(client, lm):
    body = {"prompt": PROMPT, "target": "a", "baseline": "b", "layer": -2, "position": -3, "top": 5,
            "layer_tokens": 3, "unembed_mode": "own_norm"}
    got = post(client, "decompose", body)
    d = decompose(lm, PROMPT, layer=-2, position=-3)
    a = logit_attribution(lm, d, "a", baseline="b")
    want = as_json({**a.to_dict(k=5), "layer_tokens": layer_adds(lm, d, k=3, mode="own_norm")})
    assert {k: got[k] for k in want} == want
    assert got["layer"] == 1 and len(got["heads"]) == 2 and len(got["heads"][0]) == got["n_heads"] == lm.n_heads
    assert got["tokens"] == [lm.tokenizer.decode([i]) for i in lm.tokenizer(PROMPT)["input_ids"]]
    assert got["warnings"] == [] and got["chat"] is False
    # the parts the heatmap draws add up to the logit difference
    assert sum(got["parts"].values()) + got["constant"] == pytest.approx(got["logit"], abs=1e-5)
    # defaults: the last block, the last token, no baseline; the job form answers the same
    plain = post(client, "decompose", {"prompt": PROMPT, "target": "a", "layer_tokens": 0})
    d = decompose(lm, PROMPT)
    assert {k: plain[k] for k in ("layer", "position", "baseline")} == {"layer": lm.n_layers - 1, "position": -1,
                                                                         "baseline": None}
    assert plain["parts"] == as_json(logit_attribution(lm, d, "a").to_dict())["parts"] and "layer_tokens" not in plain
    assert job(client, "decompose", {"prompt": PROMPT, "target": "a", "layer_tokens": 0}) == plain


def test_a_target_of_several_tokens_is_warned_about(client, lm):
    got = post(client, "decompose", {"prompt": PROMPT, "target": "ab", "baseline": "b"})
    first = lm.tokenizer("ab", add_special_tokens=False)["input_ids"][0]
    assert got["target_id"] == first
    assert got["warnings"] == [(f"The target 'ab' is 2 tokens; its first token {lm.tokenizer.decode([first])!r} is used "
                                "(a leading space usually matters).")]


@pytest.mark.parametrize("part, mode", [("L1.H2", "frozen"), ("L0.mlp", "raw"), ("embed", "own_norm")])
def test_part_is_one_part_through_the_unembedding(client, lm, part, mode):
    got = post(client, "part", {"prompt": PROMPT, "part": part, "layer": 1, "position": -2, "k": 4, "mode": mode})
    d = decompose(lm, PROMPT, layer=1, position=-2)
    i = d.labels.index(part)
    tops = top_tokens_of(lm, unembed_vectors(lm, d.parts[0, i:i + 1], mode=mode, resid=d.resid[0]), 4)[0]
    assert got["top"] == as_json(tops["top"]) and got["bottom"] == as_json(tops["bottom"])
    assert (got["part"], got["kind"], got["part_layer"], got["head"], got["mode"], got["layer"]) == (
        part, d.kinds[i], d.layers[i], d.heads[i], mode, 1)
    assert got["norm"] == pytest.approx(float(d.parts[0, i].norm()))


def test_a_part_the_decomposition_lacks_is_400(client):
    d = post(client, "part", {"prompt": PROMPT, "part": "L2.H0", "layer": 1}, 400)  # layer 2 is after the cut
    assert d["error"].startswith("No part 'L2.H0'; parts are e.g. embed, L0.H0")


def test_patchscope_sweep_is_patchscope_per_layer(client, lm):
    body = {"source": PROMPT, "source_position": -2, "target": "custom", "target_prompt": "so x is", "layers": [0, -1],
            "k": 3, "max_new_tokens": 2}
    got = post(client, "patchscope_sweep", body)
    want = [ps.patchscope(lm, PROMPT, source_layer=lay, source_position=-2, target="so x is", k=3,
                          max_new_tokens=2).to_dict() for lay in (0, -1)]
    assert got["rows"] == as_json(want) and got["layers"] == [0, lm.n_layers - 1]
    assert got["source_tokens"] == [lm.tokenizer.decode([i]) for i in lm.tokenizer(PROMPT)["input_ids"]]
    assert got["rows"][0]["target_position"] == 4 and got["rows"][0]["source_token"] == got["source_tokens"][-2]
    assert job(client, "patchscope_sweep", body) == got
    # every layer by default; a fixed target layer; the description target
    d = post(client, "patchscope_sweep", {"source": PROMPT, "target_layer": 0, "k": 2, "max_new_tokens": 0})
    assert d["layers"] == list(range(lm.n_layers)) and {r["target_layer"] for r in d["rows"]} == {0}
    assert d["rows"][2] == as_json(ps.patchscope(lm, PROMPT, source_layer=2, target_layer=0, k=2,
                                                 max_new_tokens=0).to_dict())
    d = post(client, "patchscope_sweep", {"source": PROMPT, "target": "description", "layers": [1], "k": 2,
                                          "max_new_tokens": 0})
    assert d["rows"][0]["target_prompt"] == ps.DESCRIPTION_PROMPT


def test_sweep_job_shows_a_bar_per_layer_and_cancels(client, monkeypatch):
    entered, gate, calls = threading.Event(), threading.Event(), []
    real = ps.patchscope

    def held(*a, **kw):
        calls.append(kw["source_layer"])
        entered.set()
        gate.wait(60)
        return real(*a, **kw)

    monkeypatch.setattr(ps, "patchscope", held)
    r = client.post("/api/jobs/inspect/patchscope_sweep", json={"source": PROMPT, "max_new_tokens": 1})
    assert r.status_code == 202
    jid = r.json()["id"]
    assert entered.wait(60)
    j = client.get(f"/api/jobs/{jid}").json()
    assert j["state"] == "running" and j["progress"] == [{"desc": "layers", "done": 0, "total": 3, "unit": "layer"}]
    assert client.delete(f"/api/jobs/{jid}").status_code == 200
    gate.set()
    assert wait_job(client, jid)["state"] == "cancelled" and calls == [0]  # the first layer's forwards stop it


def test_benchmark_is_identity_sweep_and_entity_sweep(client, lm):
    got = post(client, "patchscope_benchmark", {"kind": "identity", "n": 3, "layers": [0, -1], "seed": 1})
    want = ps.identity_sweep(lm, ps.default_sources(3, 1), layers=[0, -1], seed=1).to_dict()
    assert got == as_json({"kind": "identity", **want}) and got["layers"] == [0, 2] and got["n"] == 3
    body = {"kind": "entities", "n": 3, "layers": [1], "max_new_tokens": 2}
    got = job(client, "patchscope_benchmark", body)
    want = ps.entity_sweep(lm, ps.read_jsonl("patchscope_entities.jsonl")[:3], layers=[1], max_new_tokens=2).to_dict()
    assert got == as_json({"kind": "entities", **want}) and list(got["examples"]) == ["1"]


def test_token_edit_is_token_edit(client, lm):
    body = {"prompt": PROMPT, "layer": 1, "position": -2, "subtract": "a", "add": "b", "scale": 0.5, "relative": False,
            "k": 4, "max_new_tokens": 3, "seed": 7}
    got = post(client, "token_edit", body)
    want = as_json(token_edit(lm, PROMPT, layer=1, position=-2, subtract="a", add="b", scale=0.5, relative=False,
                              k=4, max_new_tokens=3, seed=7).to_dict())
    assert {k: got[k] for k in want} == want and want["text_after"] is not None
    norm = 0.5 * float((token_direction(lm, "b") - token_direction(lm, "a")).norm())  # absolute: 0.5 |u_b - u_a|
    assert (got["vector_norm"], got["scale"], got["relative"], got["seed"]) == (pytest.approx(norm), 0.5, False, 7)
    assert job(client, "token_edit", body) == got
    only_add = post(client, "token_edit", {"prompt": PROMPT, "layer": -1, "add": "c"})
    assert only_add["subtract"] is None and only_add["text_after"] is None and only_add["layer"] == lm.n_layers - 1
    assert only_add["probs"] == as_json(token_edit(lm, PROMPT, layer=-1, add="c").to_dict())["probs"]


def test_info_carries_the_panels_limits(client):
    d = client.get("/api/info").json()["studio"]["inspect"]
    assert d["unembed_modes"] == ["frozen", "own_norm", "raw"] and d["max_identity_sources"] == 40


@pytest.mark.parametrize("what, body, where", [
    ("decompose", {"prompt": PROMPT}, "target: Field required"),
    ("decompose", {"prompt": "", "target": "a"}, "prompt"),
    ("decompose", {"prompt": PROMPT, "target": ""}, "target"),
    ("decompose", {"prompt": PROMPT, "target": "a", "layer": "1"}, "layer: Input should be a valid integer"),
    ("decompose", {"prompt": PROMPT, "target": "a", "top": 0}, "top"),
    ("decompose", {"prompt": PROMPT, "target": "a", "layer_tokens": 21}, "layer_tokens"),
    ("decompose", {"prompt": PROMPT, "target": "a", "unembed_mode": "logit"}, "unembed_mode"),
    ("decompose", {"prompt": PROMPT, "target": "a", "heads": True}, "heads: Extra inputs are not permitted"),
    ("part", {"prompt": PROMPT, "part": ""}, "part"),
    ("part", {"prompt": PROMPT, "part": "L1.H0", "k": 21}, "k"),
    ("patchscope_sweep", {"source": PROMPT, "target": "custom"}, "target 'custom' needs a target_prompt"),
    ("patchscope_sweep", {"source": PROMPT, "target_prompt": "so x"}, "target_prompt is only read with target 'custom'"),
    ("patchscope_sweep", {"source": PROMPT, "target": "mine"}, "target"),
    ("patchscope_sweep", {"source": PROMPT, "layers": []}, "layers"),
    ("patchscope_sweep", {"source": PROMPT, "layers": [0.5]}, "layers.0"),
    ("patchscope_sweep", {"source": PROMPT, "max_new_tokens": 33}, "max_new_tokens"),
    ("patchscope_sweep", {"source": PROMPT, "placeholder": "a b"}, "placeholder"),
    ("patchscope_benchmark", {"kind": "identity", "n": 41}, "at most 40 source texts"),
    ("patchscope_benchmark", {"kind": "entities", "n": 43}, "n"),
    ("patchscope_benchmark", {"kind": "entities", "n": 1}, "n"),
    ("patchscope_benchmark", {"kind": "files"}, "kind"),
    ("token_edit", {"prompt": PROMPT, "add": "a"}, "layer: Field required"),
    ("token_edit", {"prompt": PROMPT, "layer": 1}, "give a token to subtract, a token to add, or both"),
    ("token_edit", {"prompt": PROMPT, "layer": 1, "add": "a", "scale": "1"}, "scale"),
    ("token_edit", {"prompt": PROMPT, "layer": 1, "add": "a", "max_new_tokens": 129}, "max_new_tokens"),
])
def test_bad_bodies_are_422_before_the_queue(client, what, body, where):
    done = client.get("/api/info").json()["studio"]["queue"]["done"]
    d = post(client, what, body, 422)
    assert d["error"].startswith("Invalid request: ") and where in d["error"], d["error"]
    assert client.get("/api/info").json()["studio"]["queue"]["done"] == done


def test_non_finite_scale_is_422(client):
    r = client.post("/api/inspect/token_edit", content=b'{"prompt": "x", "layer": 1, "add": "a", "scale": Infinity}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "scale" in r.json()["error"]


@pytest.mark.parametrize("what, body, where", [
    ("decompose", {"prompt": PROMPT, "target": "a", "layer": 3}, "Layer 3 is out of range for tiny-llama (3 layers"),
    ("decompose", {"prompt": PROMPT, "target": "a", "position": 40}, "Position 40 is out of range for prompt 0"),
    ("token_edit", {"prompt": PROMPT, "layer": -4, "add": "a"}, "Layer -4 is out of range"),
    ("patchscope_sweep", {"source": PROMPT, "layers": [0, 7]}, "Layer 7 is out of range"),
    ("patchscope_sweep", {"source": PROMPT, "target_layer": 9}, "Layer 9 is out of range"),
    ("patchscope_sweep", {"source": PROMPT, "source_position": -20}, "Position -20 is out of range"),
    ("patchscope_sweep", {"source": PROMPT, "target": "custom", "target_prompt": "no placeholder"},
     "The target prompt has no placeholder 'x' as a separate word"),
    ("patchscope_sweep", {"source": PROMPT, "target": "custom", "target_prompt": "so y", "placeholder": "y",
                          "layers": [9]}, "Layer 9 is out of range"),
])
def test_library_refusals_are_400(client, what, body, where):
    d = post(client, what, body, 400)
    assert where in d["error"], d["error"]


def test_a_prompt_past_the_token_limit_is_400(lm):
    with TestClient(create_app("tiny", model=lm, max_prompt_tokens=8)) as c:
        for what, body in (("decompose", {"prompt": "a prompt of many tokens", "target": "a"}),
                           ("part", {"prompt": "a prompt of many tokens", "part": "embed"}),
                           ("token_edit", {"prompt": "a prompt of many tokens", "layer": 1, "add": "a"}),
                           ("patchscope_sweep", {"source": "a prompt of many tokens"}),
                           ("patchscope_sweep", {"source": "hi", "target": "custom", "target_prompt": "so x is many"})):
            d = post(c, what, body, 400)
            assert "the studio takes at most 8 tokens per prompt" in d["error"], what


# ---- the page, in a real browser -------------------------------------------------------------------

@pytest.fixture(scope="module")
def sync_api():
    return live.playwright()


@pytest.fixture(scope="module")
def server(lm):
    with live.serve(create_app("tiny", model=lm)) as url:
        yield url


def signed(x: float, d: int = 2) -> str:
    """inspect.js `signed`."""
    return ("+" if x >= 0 else "\u2212") + f"{abs(x):.{d}f}"


def heat_cells(page) -> dict:
    return dict(page.locator("#insp-heat [data-part]").evaluate_all(
        "es => es.map(e => [e.dataset.part, [+e.dataset.dla, e.textContent]])"))


def want_cells(d: dict) -> dict:
    out = {}
    for lay, row in enumerate(d["heads"]):
        for h, v in enumerate(row):
            out[f"L{lay}.H{h}"] = v
        out[f"L{lay}.mlp"] = d["parts"][f"L{lay}.mlp"]
        out[f"L{lay} attention"] = d["per_layer"]["attn"][lay]
        out[f"L{lay} total"] = d["per_layer"]["attn"][lay] + d["per_layer"]["mlp"][lay]
    out["embed"] = d["parts"]["embed"]
    out["emb total"] = d["per_layer"]["embed"]
    return {k: [pytest.approx(v, abs=1e-12), signed(v)] for k, v in out.items()}


def test_inspect_tab_in_a_browser(sync_api, server, lm, tmp_path):
    with live.chromium(sync_api) as pages:
        page = pages.open(server + "/")
        page.click("nav button[data-tab=inspect]")
        assert "active" in page.get_attribute("#tab-inspect", "class")
        assert page.get_attribute("#insp-dla-layer", "max") == "2" and page.input_value("#insp-edit-layer") == "2"

        # decomposition + DLA: every cell of the heatmap is the API's number
        page.fill("#insp-dla-prompt", PROMPT)
        page.fill("#insp-dla-target", "a")
        page.fill("#insp-dla-baseline", "b")
        page.fill("#insp-dla-ltk", "3")
        with page.expect_response("**/api/inspect/decompose") as resp:
            page.click("#insp-dla-form button[type=submit]")
        d = resp.value.json()
        page.wait_for_selector("#insp-heat")
        assert heat_cells(page) == want_cells(d)
        shown = page.locator("#insp-top tbody tr").evaluate_all(
            "rs => rs.map(r => [r.cells[1].textContent, +r.cells[2].dataset.dla])")
        assert shown == [[r["part"], r["dla"]] for r in d["top_parts"]]
        assert page.locator("#insp-heat thead th").all_text_contents() == [
            "layer", *(f"H{h}" for h in range(lm.n_heads)), "MLP", "attention", "layer total"]
        toks = page.locator("#insp-layer-tokens tbody tr").evaluate_all(
            "rs => rs.map(r => [...r.cells].slice(1).map(c => [...c.querySelectorAll('.tok')].map(t => JSON.parse(t.title.split(': ')[0]))))")
        assert toks == [[[t for t, _ in r[w][s]] for w in ("attn", "mlp") for s in ("top", "bottom")]
                        for r in d["layer_tokens"]]
        assert page.locator("#insp-layer-chart rect").count() == 2 * lm.n_layers

        # a head by mouse: its tokens are the part endpoint's answer
        with page.expect_response("**/api/inspect/part") as resp:
            page.click("#insp-heat td[data-part='L1.H2']")
        part = resp.value.json()
        page.wait_for_selector("#insp-part-summary")
        body = {"prompt": PROMPT, "part": "L1.H2", "layer": -1, "position": -1, "chat": False, "k": 10, "mode": "frozen"}
        assert part == post_live(server, "part", body)
        rows = page.locator("#insp-part-out table").first.locator("tr")
        assert [json.loads(rows.nth(i).locator(".tok").get_attribute("title")) for i in range(rows.count())] == \
               [t for t, _ in part["top"]]

        # ... and by keyboard: one tab stop, arrows move, Enter opens
        page.locator("#insp-heat [data-cell][tabindex='0']").focus()
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowRight")
        focused = page.evaluate("document.activeElement.dataset.part")
        label, value = page.text_content("#insp-cell").split(": DLA ")
        assert focused == label == "L1.H1" and float(value) == d["heads"][1][1]
        with page.expect_response("**/api/inspect/part") as resp:
            page.keyboard.press("Enter")
        assert resp.value.json()["part"] == "L1.H1"
        page.wait_for_selector("#insp-part-out h3:has-text('L1.H1 in token space')")
        assert page.locator("#insp-heat [data-cell][tabindex='0']").count() == 1

        # the JSON download is what the API answered
        with page.expect_download() as dl:
            page.locator("#insp-dla-out button:has-text('JSON')").click()
        assert json.loads(Path(dl.value.path()).read_text(encoding="utf-8")) == d

        # the Patchscope sweep (a job) and a token-space edit (a job)
        page.fill("#insp-ps-source", PROMPT)
        page.fill("#insp-ps-layers", "0:3:2")
        page.fill("#insp-ps-k", "3")
        page.fill("#insp-ps-n", "2")
        page.click("#insp-ps-form button[type=submit]")
        page.wait_for_selector("#insp-ps-table")
        sw = post_live(server, "patchscope_sweep", {"source": PROMPT, "source_position": -1, "target": "identity",
                                                    "placeholder": "x", "k": 3, "max_new_tokens": 2, "layers": [0, 2]})
        cells = page.locator("#insp-ps-table tbody tr").evaluate_all(
            "rs => rs.map(r => [r.cells[0].textContent, ...[...r.cells].slice(1, -1).map(c => "
            "JSON.parse(c.querySelector('.tok').title)), JSON.parse(r.cells[r.cells.length - 1].title)])")
        assert cells == [[str(r["source_layer"]), *(x["token"] for x in r["top"]), r["logit_lens"][0]["token"], r["text"]]
                         for r in sw["rows"]]
        page.fill("#insp-edit-prompt", PROMPT)
        page.fill("#insp-edit-sub", "a")
        page.fill("#insp-edit-add", "b")
        page.fill("#insp-edit-n", "3")
        page.click("#insp-edit-form button[type=submit]")
        page.wait_for_selector("#insp-edit-probs")
        ed = post_live(server, "token_edit", {"prompt": PROMPT, "layer": 2, "position": -1, "subtract": "a", "add": "b",
                                              "scale": 0.25, "relative": True, "divide_by_gain": False, "k": 10,
                                              "max_new_tokens": 3, "seed": 0, "chat": False})
        probs = page.locator("#insp-edit-probs tbody td[data-p]").evaluate_all("es => es.map(e => +e.dataset.p)")
        assert probs == [ed["probs"][k][t] for t in ("a", "b") for k in ("before", "after", "control")]
        for side, key in (("before", "before"), ("after", "after")):
            shown = page.locator(f"#insp-edit-{side} .tok").evaluate_all("es => es.map(e => JSON.parse(e.title))")
            assert shown == [r["token"] for r in ed[key]]
        assert page.text_content("#insp-gen-after") == PROMPT + ed["text_after"]

        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        shot = tmp_path / "inspect.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 1000

        # the URL it wrote: a fresh page shows the edit again; the DLA view with its head comes back too
        url = page.url
        assert "#inspect?" in url and "go=insp-edit-form" in url and "_=L1.H1" in url
        fresh = pages.open(url)
        fresh.wait_for_selector("#insp-edit-probs")
        assert fresh.locator("#insp-edit-probs tbody td[data-p]").evaluate_all("es => es.map(e => +e.dataset.p)") == probs
        page.fill("#insp-dla-top", "4")
        page.click("#insp-dla-form button[type=submit]")
        page.wait_for_selector("#insp-top tbody tr:nth-child(4)")
        page.click("#insp-heat td[data-part='L0.mlp']")
        page.wait_for_selector("#insp-part-out h3:has-text('L0.mlp in token space')")
        again = pages.open(page.url)
        again.wait_for_selector("#insp-part-out h3:has-text('L0.mlp in token space')")
        assert heat_cells(again) == heat_cells(page) and again.locator("#insp-top tbody tr").count() == 4
        assert again.input_value("#insp-dla-target") == "a" and "active" in again.get_attribute("#tab-inspect", "class")


def post_live(server: str, what: str, body: dict) -> dict:
    import httpx

    r = httpx.post(f"{server}/api/inspect/{what}", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


# ---- the real model ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_directions_on_gemma(gemma):
    """The Eiffel Tower prompt: " Paris" beats " London" and the late blocks write most of it; the
    Paris -> Rome edit at layer 12 moves the probabilities where the same-norm random vector does not;
    the token-identity Patchscope reads " Paris" from layer 12's state, not from layer 0's."""
    p = "The Eiffel Tower is in the city of"
    with TestClient(create_app("gemma-3-270m", model=gemma)) as c:
        d = post(c, "decompose", {"prompt": p, "target": " Paris", "baseline": " London", "layer_tokens": 0})
        assert d["logit"] > 1 and abs(d["dla_sum"] + d["constant"] - d["logit"]) < 1e-3
        late = sum(d["per_layer"]["attn"][8:]) + sum(d["per_layer"]["mlp"][8:])
        early = sum(d["per_layer"]["attn"][:8]) + sum(d["per_layer"]["mlp"][:8]) + d["per_layer"]["embed"]
        top = re.match(r"L(\d+)\.", d["top_parts"][0]["part"])
        assert late > early and top and int(top[1]) >= 8
        e = post(c, "token_edit", {"prompt": p, "layer": 12, "subtract": " Paris", "add": " Rome"})
        before, after, ctrl = (e["probs"][k] for k in ("before", "after", "control"))
        assert after[" Rome"] > 10 * before[" Rome"] and after[" Paris"] < before[" Paris"] / 10
        assert ctrl[" Rome"] < after[" Rome"]
        s = post(c, "patchscope_sweep", {"source": p, "layers": [0, 12], "k": 10, "max_new_tokens": 0})
        paris = [sum(x["prob"] for x in r["top"] if x["token"] == " Paris") for r in s["rows"]]
        assert paris[1] > paris[0] + 0.1
