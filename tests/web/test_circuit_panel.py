"""The studio's Circuits panel: `POST /api/circuit` answers with `find_circuit(...).to_dict()`
(the same numbers as the library call), a task the tokenizer cannot build is a 400 with the
library's message, a body that is not a known task name (a path, above all) is a 422; and, in
a real browser, the tab shows what the API returned, its threshold slider filters the graph and
reads the faithfulness off the measured curve, and no token text is interpreted as HTML.

The tiny tokenizer is one char per token, so none of the word-level tasks can be built on it:
a hand-made task of token ids, "toy", is injected where the library looks tasks up.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import live
from conftest import make_tiny
from fastapi.testclient import TestClient

from lmscope.circuits import discovery, pruning
from lmscope.circuits.discovery import CircuitConfig, find_circuit
from lmscope.datasets import circuit_tasks
from lmscope.datasets.circuit_tasks import TaskSet, load_task
from lmscope.engine.errors import InputError
from lmscope.web import create_app
from lmscope.web.circuits import json_safe

# n=2 with EAP keeps 8 edges of tiny llama's 190 at faithfulness ~0.8 (several slider steps)
BODY = {"task": "toy", "n": 2, "method": "eap", "ablation": "resample", "target": 0.8, "seed": 0}
HOSTILE = "<img src=x onerror=window.__xss=1>"  # a "token" that must stay text (no quotes: JSON keeps it as is)


def toy_task(n: int, seed: int = 0, flat: bool = False) -> TaskSet:
    """Random rows whose corrupt twin keeps the first 3 tokens (flat: the same row: no effect)."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, 120, (8,), generator=g).tolist() for _ in range(n)]
    corrupt = [list(r) if flat else r[:3] + torch.randint(3, 120, (5,), generator=g).tolist() for r in rows]
    meta = {"examples": [{"clean": "<b>bold</b> & co", "corrupt": HOSTILE}]}
    return TaskSet("toy-flat" if flat else "toy", "logit_diff", rows, corrupt, [[7]] * n, [[7]] * n, [[5, 9]] * n,
                   seed=seed, meta=meta)


@pytest.fixture(scope="module")
def lm():
    return make_tiny("llama")


@pytest.fixture(scope="module", autouse=True)
def toy_tasks():
    """"toy" and "toy-flat" become shipped task names, built by hand; everything else is the library's."""
    shipped, load = circuit_tasks.shipped_tasks, discovery.load_task

    def fake_load(name, model, n=None, seed=0):
        if name in ("toy", "toy-flat"):
            return toy_task(n or 4, seed, flat=name == "toy-flat")
        return load(name, model, n=n, seed=seed)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(circuit_tasks, "shipped_tasks", lambda: [*shipped(), "toy", "toy-flat"])
        mp.setattr(discovery, "load_task", fake_load)
        yield


@pytest.fixture(scope="module")
def library(lm) -> dict:
    """What the library returns for BODY, run directly."""
    cfg = CircuitConfig(task="toy", n=2, method="eap", ablation="resample", target=0.8, seed=0, steps=5,
                        prune="topk", random_draws=3, compare=False)
    return json_safe(find_circuit(lm, cfg).to_dict())


@pytest.fixture(scope="module")
def client(lm):
    with TestClient(create_app("tiny", model=lm)) as c:
        yield c


def post(client, body, status=200):
    r = client.post("/api/circuit", json=body)
    assert r.status_code == status, r.text
    return r.json()


def same_numbers(got: dict, want: dict) -> None:
    """The report's numbers agree (timings aside)."""
    g, w = got["prune"], want["prune"]
    assert got["clean"] == pytest.approx(want["clean"]) and got["corrupt"] == pytest.approx(want["corrupt"])
    assert g["circuit"]["faithfulness"] == pytest.approx(w["circuit"]["faithfulness"])
    assert [(e["source"], e["receiver"]) for e in g["circuit"]["edges"]] == \
           [(e["source"], e["receiver"]) for e in w["circuit"]["edges"]]
    assert [e["score"] for e in g["circuit"]["edges"]] == pytest.approx([e["score"] for e in w["circuit"]["edges"]])
    assert g["curve"]["faithfulness"] == pytest.approx(w["curve"]["faithfulness"])
    assert g["random_control"]["draws"] == pytest.approx(w["random_control"]["draws"])


# ---- the API -------------------------------------------------------------------------------------

def test_info_lists_the_tasks(client):
    s = client.get("/api/info").json()["studio"]
    assert s["circuit_tasks"] == ["ioi", "induction", "greater-than", "example_capitals", "toy", "toy-flat"]
    assert s["max_circuit_pairs"] == 64


def test_circuit_is_the_library_report(client, library):
    d = post(client, BODY)
    assert set(d) == set(library) == {"model", "task", "clean", "corrupt", "scores", "prune", "agreement",
                                      "node_scores", "patching", "seconds"}
    c = d["prune"]["circuit"]
    assert {"nodes", "edges", "faithfulness", "n_edges", "n_edges_total", "clean", "baseline", "metric"} <= set(c)
    assert c["n_edges"] == len(c["edges"]) > 1 and c["n_edges_total"] == 190
    assert (c["model"], c["task"], c["method"], c["ablation"]) == ("tiny-llama", "toy", "top-k eap", "resample")
    assert d["task"]["n"] == 2 and d["patching"] == [] and d["agreement"] == {}  # compare=False: the fast run
    assert set(d["prune"]["curve"]) >= {"fractions", "faithfulness", "random", "cpr", "cmd", "target", "chosen_fraction"}
    assert d["prune"]["random_control"]["n_edges"] == c["n_edges"] and len(d["prune"]["random_control"]["draws"]) == 3
    same_numbers(d, library)
    # faithfulness is what its definition says, from the numbers beside it
    assert c["faithfulness"] == pytest.approx((c["metric"] - c["baseline"]) / (c["clean"] - c["baseline"]))


def test_a_task_without_effect_has_null_faithfulness_not_a_500(client):
    d = post(client, {"task": "toy-flat", "n": 2, "method": "eap"})
    c = d["prune"]["circuit"]
    assert c["faithfulness"] is None and c["n_edges"] == c["n_edges_total"]  # NaN -> null; nothing reached 0.8
    assert all(f is None for f in d["prune"]["curve"]["faithfulness"])


def test_missing_module_is_501(client, monkeypatch):
    monkeypatch.setitem(sys.modules, "lmscope.circuits.discovery", None)  # import now raises ImportError
    r = client.post("/api/circuit", json=BODY)
    assert r.status_code == 501 and "lmscope.circuits.discovery" in r.json()["error"]


def test_json_safe():
    assert json_safe({"a": [1.0, math.nan, (math.inf, -math.inf)], "b": "nan", "c": 3, "d": None}) == \
           {"a": [1.0, None, [None, None]], "b": "nan", "c": 3, "d": None}


@pytest.mark.parametrize("task, want", [
    ("ioi", "IOI needs at least 5 names"),
    ("greater-than", "greater-than supports tokenizers"),
])
def test_a_task_the_tokenizer_cannot_build_is_400_with_the_library_message(client, lm, task, want):
    with pytest.raises(InputError) as e:
        load_task(task, lm, n=4)
    assert post(client, {"task": task, "n": 4}, 400) == {"error": str(e.value)} and want in str(e.value)


@pytest.mark.parametrize("body, where", [
    ({"task": "nope"}, "Unknown circuit task 'nope'"),
    ({"task": "/etc/passwd"}, "is a file path; the studio takes task names"),
    ({"task": "../../secrets.jsonl"}, "is a file path; the studio takes task names"),
    ({"task": "src/lmscope/datasets/data/circuits/example_capitals.jsonl"}, "is a file path; the studio takes task names"),
    ({"task": "example_capitals.jsonl"}, "is a file path; the studio takes task names"),
    ({"task": "~/pairs"}, "is a file path; the studio takes task names"),
    ({"task": "ioi_names"}, "Unknown circuit task"),  # a shipped word list, not a task
    ({"task": ""}, "task"),
    ({}, "task: Field required"),
    ({"task": "toy", "n": 0}, "n: Input should be greater than or equal to 1"),
    ({"task": "toy", "n": 65}, "n: Input should be less than or equal to 64"),
    ({"task": "toy", "n": "8"}, "n: Input should be a valid integer"),
    ({"task": "toy", "n": 2.0}, "n: Input should be a valid integer"),
    ({"task": "toy", "method": "acdc"}, "method"),
    ({"task": "toy", "ablation": "noise"}, "ablation"),
    ({"task": "toy", "target": 0}, "target: Input should be greater than 0"),
    ({"task": "toy", "target": 1.6}, "target: Input should be less than or equal to 1.5"),
    ({"task": "toy", "seed": -1}, "seed"),
    ({"task": "toy", "steps": 50}, "steps: Extra inputs are not permitted"),
])
def test_bad_bodies_are_422_with_a_message(client, body, where):
    done = client.get("/api/info").json()["studio"]["queue"]["done"]
    d = post(client, body, 422)
    assert d["error"].startswith("Invalid request: ") and where in d["error"], d["error"]
    assert client.get("/api/info").json()["studio"]["queue"]["done"] == done  # refused before the model queue


def test_non_finite_target_is_422(client):
    r = client.post("/api/circuit", content=b'{"task": "toy", "target": NaN}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "target" in r.json()["error"]


# ---- the page, in a real browser (the pattern of test_studio_browser.py) -------------------------

@pytest.fixture(scope="module")
def sync_api():
    return live.playwright()


@pytest.fixture(scope="module")
def server(lm):
    """A real studio server on a free loopback port; yields its URL."""
    with live.serve(create_app("tiny", model=lm)) as url:
        yield url


def faith_at(d: dict, k: int) -> tuple[float | None, str]:
    """What the slider should read for the top-k circuit: the measured faithfulness at k edges (a
    curve point measures the top max(1, round(f * N)) edges; the circuit itself is one more
    point), else linear in log k between the measured points around k."""
    c, curve = d["prune"]["circuit"], d["prune"]["curve"]
    n = c["n_edges_total"]
    pts = {max(1, round(f * n)): y for f, y in zip(curve["fractions"], curve["faithfulness"], strict=True)
           if y is not None}
    pts[c["n_edges"]] = c["faithfulness"]
    if k in pts:
        return pts[k], "measured at"
    k0, k1 = max(x for x in pts if x < k), min(x for x in pts if x > k)
    t = (math.log(k) - math.log(k0)) / (math.log(k1) - math.log(k0))
    return pts[k0] + t * (pts[k1] - pts[k0]), "interpolated from the measured curve"


def test_circuits_tab_in_a_browser(sync_api, server, library, tmp_path, monkeypatch):
    # every node's decoded tokens also carry an HTML tag: the page must show it as text
    decode = pruning.decode_nodes
    monkeypatch.setattr(pruning, "decode_nodes", lambda run, nodes, k=5: {
        n: [*toks, HOSTILE] for n, toks in decode(run, nodes, k).items()})
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=live.CHROMIUM)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server + "/")
        page.wait_for_selector("#model-info b")  # /api/info answered: the task list is the server's
        page.click("nav button[data-tab=circuits]")
        assert "active" in page.get_attribute("#tab-circuits", "class")
        page.select_option("#circ-task", "toy")
        page.fill("#circ-n", "2")
        page.select_option("#circ-method", "eap")
        job = live.run_job(page, "circuit", lambda: page.click("#circ-form button[type=submit]"))
        assert job["state"] == "done", job
        d = job["result"]
        page.wait_for_selector("#circ-graph", timeout=30_000)
        same_numbers(d, library)  # the page's request was BODY

        c, rc = d["prune"]["circuit"], d["prune"]["random_control"]
        faith = page.locator("#circ-faith")
        assert float(faith.get_attribute("data-value")) == c["faithfulness"]
        assert faith.text_content() == f"{c['faithfulness']:.3f}"
        assert page.locator("#circ-edges").text_content() == f"{c['n_edges']} / {c['n_edges_total']}"
        assert page.locator("#circ-random").text_content() == f"{rc['mean']:.3f} \u00b1 {rc['std']:.3f}"
        assert float(page.locator("#circ-clean").get_attribute("data-value")) == d["clean"]
        assert float(page.locator("#circ-corrupt").get_attribute("data-value")) == d["corrupt"]
        assert page.locator("#circ-graph .n").count() == len(c["nodes"])
        assert page.locator("#circ-curve polyline.faith").count() == 1 and page.locator("#circ-curve .band").count() == 1

        def shown() -> tuple[int, int, float | None, str]:
            k = int(page.locator("#circ-count").get_attribute("data-k"))
            visible = page.locator("#circ-graph path.e").evaluate_all(
                "ps => ps.filter(p => p.style.display !== 'none').length")
            v = page.locator("#circ-faith-at").get_attribute("data-value")
            return k, visible, float(v) if v else None, page.locator("#circ-faith-at").text_content()

        k, visible, f, text = shown()  # the whole circuit: its own, measured faithfulness
        assert k == visible == c["n_edges"] and f == c["faithfulness"] and "measured at" in text
        mags = sorted({abs(e["score"]) for e in c["edges"]})
        page.locator("#circ-threshold").focus()
        page.keyboard.press("End")  # the highest threshold: only the top edge(s) left
        k, visible, f, text = shown()
        assert k == visible == sum(abs(e["score"]) >= mags[-1] for e in c["edges"]) < c["n_edges"]
        shot = tmp_path / "circuits.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 1000
        how = set()
        for i, level in enumerate(mags):  # every slider position: the count and the curve's reading
            page.locator("#circ-threshold").evaluate(
                "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }", str(i))
            k, visible, f, text = shown()
            assert k == visible == sum(abs(e["score"]) >= level for e in c["edges"])
            want, kind = faith_at(d, k)
            assert f == pytest.approx(want, abs=1e-9) and kind in text
            how.add(kind)
        assert how == {"measured at", "interpolated from the measured curve"}

        # token text stays text: the tag is in a node's hover title and in the examples, never in the DOM
        assert page.evaluate("window.__xss") is None and page.locator("#circ-out img, #circ-out b").count() == 0
        titles = page.locator("#circ-graph .n title").all_text_contents()
        assert any(HOSTILE in t for t in titles)
        cells = page.locator("#circ-out table.examples td").all_text_contents()
        assert cells == ["<b>bold</b> & co", HOSTILE]
        browser.close()
        assert errors == []
    assert Path(shot).is_file()
