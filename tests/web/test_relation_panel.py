"""The studio's Relations panel: `/api/relations/fit` is `fit_lre` on the first facts the model
knows (saved only inside the LRE folders, never over another file), `/lens` is `attribute_lens`
(run in groups of layers: the same numbers), `/predict` is `predict_objects` beside the relation's
own objects; LRE files are read only inside the LRE folders (one message for missing and
outside, none naming a server folder for files inside), relations are shipped names, bad bodies
are 422; and, in a real browser, the tab fits an LRE, draws the attribute lens as a layer x token
heatmap whose every cell is the API's number, keeps its header in view, moves between cells by
keyboard, loads the saved file, compares predictions, and never reads token text as HTML.

A tiny random llama knows no capital, so `lmscope.relations.prompts.matches` (the paper's answer
check) is patched to say it knows every fact, except where a test says otherwise.
"""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import live
from conftest import make_tiny
from fastapi.testclient import TestClient

from lmscope.datasets.relations import TYPES, Relation, load_relation, shipped_relations
from lmscope.engine.artifacts import save_artifact
from lmscope.relations import prompts
from lmscope.relations.attribute_lens import attribute_lens
from lmscope.relations.lre import LRE, fit_lre
from lmscope.relations.study import predict_objects
from lmscope.web import create_app
from lmscope.web.circuits import json_safe

REL = "country_capital_city"
HOSTILE = "<img src=x onerror=window.__xss=1>"
PROMPT = "I flew to France"


@pytest.fixture(scope="module")
def lm():
    return make_tiny("llama")


@pytest.fixture(scope="module", autouse=True)
def knows_everything():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prompts, "matches", lambda model, token_id, obj: True)
        yield


@pytest.fixture(scope="module")
def rel():
    return load_relation(REL)


@pytest.fixture(scope="module")
def lab(lm, rel, tmp_path_factory):
    """root: a vector artifact, junk, an LRE made for another model, a link to a folder outside
    (which holds an LRE of this model)."""
    import torch

    root = tmp_path_factory.mktemp("lres")
    save_artifact(root / "vec.safetensors", {"v": torch.ones(lm.d_model)}, kind="vector", model=lm)
    (root / "junk.safetensors").write_bytes(b"not safetensors")
    (root / "junk.safetensors.json").write_text("[1, 2]")
    lre = fit_lre(lm, rel, layer=1, demos=list(rel.pairs[:2]), beta=2.0)
    lre.save(root / "foreign.safetensors", lm)
    side = root / "foreign.safetensors.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "model": "another-model"}))
    outside = tmp_path_factory.mktemp("outside")
    lre.save(outside / "out.safetensors", lm)
    (root / "link").symlink_to(outside)
    return root


@pytest.fixture(scope="module")
def client(lm, lab):
    with TestClient(create_app("tiny", model=lm, lre_dirs=[lab])) as c:
        yield c


def post(client, what: str, body: dict, status: int = 200) -> dict:
    r = client.post(f"/api/relations/{what}", json=body)
    assert r.status_code == status, r.text
    return r.json()


@pytest.fixture(scope="module")
def fitted(client, lm, rel) -> tuple[dict, LRE]:
    """One fit through the API (saved as caps.safetensors) and the same fit by the library."""
    d = post(client, "fit", {"relation": REL, "layer": 1, "n_train": 3, "beta": 2.5, "save": "caps.safetensors"})
    return d, fit_lre(lm, rel, layer=1, demos=list(rel.pairs[:3]), beta=2.5)


# ---- the API -------------------------------------------------------------------------------------

def test_relation_list_is_the_shipped_index(client, lab):
    assert client.get("/api/relations").json() == {"types": list(TYPES), "relations": shipped_relations()}
    assert client.get("/api/info").json()["studio"]["lre_dirs"] == [str(lab.resolve())]


def test_fit_is_fit_lre_on_the_first_known_facts(client, lm, rel, lab, monkeypatch):
    # the model "knows" every fact but the second: the fit skips it
    monkeypatch.setattr(prompts, "matches", lambda model, token_id, obj: obj != rel.pairs[1][1])
    d = post(client, "fit", {"relation": REL, "layer": -2, "n_train": 3, "beta": 2.5, "max_facts": 10,
                             "save": "sub.safetensors"})
    train = [rel.pairs[0], rel.pairs[2], rel.pairs[3]]
    want = fit_lre(lm, rel, layer=1, demos=train, beta=2.5)
    assert d["train"] == [list(p) for p in train] and d["held_out"] == [list(p) for p in rel.pairs[4:10]]
    assert (d["n_examined"], d["n_known"], d["relation"], d["type"], d["saved"]) == (10, 9, REL, "factual",
                                                                                      "sub.safetensors")
    assert d["lre"] == want.to_dict() and d["lre"]["layer"] == 1  # -2 of 3 layers
    back = LRE.load(lab / "sub.safetensors", model=lm)
    assert back.weight.equal(want.weight) and back.bias.equal(want.bias) and back.demos == tuple(train)


def test_fitted_and_saved_lres_are_listed(client, fitted, lab):
    d = client.get("/api/relations/lres").json()
    assert d["lre_dirs"] == [str(lab.resolve())]
    assert {"id": fitted[0]["id"], "relation": REL, "layer": 1, "beta": 2.5, "n_demos": 3} in d["fitted"]
    files = {f["path"]: f for f in d["files"]}
    assert set(files) >= {"caps.safetensors", "foreign.safetensors"}  # not the vector, not the junk
    assert not {"vec.safetensors", "junk.safetensors"} & set(files) and not any("out.safetensors" in p for p in files)
    assert files["caps.safetensors"]["usable"] and not files["foreign.safetensors"]["usable"]
    assert (files["caps.safetensors"]["relation"], files["caps.safetensors"]["layer"]) == (REL, 1)
    assert files["foreign.safetensors"]["model"] == "another-model"


def test_lens_is_the_attribute_lens(client, lm, fitted, monkeypatch):
    d, lre = fitted
    want = json_safe({**attribute_lens(lm, lre, PROMPT, target="Paris").to_dict(), "lre": lre.to_dict()})
    got = post(client, "lens", {"fitted": d["id"], "prompt": PROMPT, "target": "Paris"})
    assert _close(got, want)
    assert len(got["top"]) == len(got["target_prob"]) == 3 and len(got["top"][0]) == len(got["tokens"])
    # from the saved file; the target's surrounding spaces do not count (the library adds the space)
    assert _close(post(client, "lens", {"path": "caps.safetensors", "prompt": PROMPT, "target": " Paris "}), want)
    sub = post(client, "lens", {"fitted": d["id"], "prompt": PROMPT, "layers": [-1, 0]})
    part = attribute_lens(lm, lre, PROMPT, layers=[2, 0]).to_dict()
    assert sub["layers"] == [2, 0] and sub["target_prob"] == [] and _close(sub, {**part, "lre": lre.to_dict()})


def _close(got: dict, want: dict) -> bool:
    """Equal, numbers to float32 precision (a lens run one layer at a time multiplies other shapes)."""
    assert set(got) == set(want)
    for k, v in want.items():
        if k in ("top_prob", "target_prob"):
            assert len(got[k]) == len(v) and all(g == pytest.approx(w, rel=1e-4, abs=1e-7)
                                                 for g, w in zip(got[k], v, strict=True)), k
        else:
            assert got[k] == v, k
    return True


def test_predict_is_predict_objects_beside_the_relations_objects(client, lm, rel, fitted):
    d, lre = fitted
    subjects = ["France", "Japan", "Atlantis"]
    got = post(client, "predict", {"fitted": d["id"], "subjects": [" France", "Japan ", "Atlantis"], "k": 3})
    want = json_safe(predict_objects(lm, lre, subjects, rel=Relation(REL, rel.template, lre.demos), k=3).to_dict())
    assert {k: got[k] for k in want} == want
    assert got["objects"] == [["Paris"], ["Tokyo"], []]
    tops = [(a[0][0], b[0][0]) for a, b in zip(want["lre_top"], want["model_top"], strict=True)]
    assert got["agree"] == [a.strip() == b.strip() for a, b in tops]
    for i, obj in enumerate(["Paris", "Tokyo"]):
        for key, j in (("lre_correct", 0), ("model_correct", 1)):
            t = tops[i][j].strip().lower()
            assert got[key][i] == (bool(t) and obj.lower().startswith(t))
    assert got["lre_correct"][2] is None and got["model_correct"][2] is None  # not one of the relation's subjects
    assert post(client, "predict", {"path": "caps.safetensors", "subjects": subjects, "k": 3}) == got


def test_a_model_that_knows_too_few_facts_is_400(client, rel, monkeypatch):
    monkeypatch.setattr(prompts, "matches", lambda model, token_id, obj: obj in (rel.pairs[0][1], rel.pairs[5][1]))
    d = post(client, "fit", {"relation": REL, "layer": 1, "n_train": 3, "max_facts": 8}, 400)
    assert d["error"].startswith(f"tiny-llama answers only 2 of the first 8 {REL} facts") and "Lower n_train" in d["error"]


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.safetensors", "nope.safetensors", "link/out.safetensors",
                                  "link/../../x", "\x00x", "a" * 1000, "vec", "."])
def test_lre_paths_outside_the_folders_get_one_message(client, path):
    d = post(client, "lens", {"path": path, "prompt": "x"}, 400)
    generic = post(client, "predict", {"path": "nope.safetensors", "subjects": ["x"]}, 400)["error"]
    assert d["error"].startswith("No LRE file ") and d["error"].split(" in the studio's")[1] == \
           generic.split(" in the studio's")[1]


def test_errors_about_files_inside_the_folders_name_no_server_path(client, lab):
    for path, want in (("vec.safetensors", "is a 'vector' artifact, expected 'lre'"),
                       ("foreign.safetensors", "was made for 'another-model', not 'tiny-llama'"),
                       ("junk.safetensors", "holds a JSON list")):
        d = post(client, "lens", {"path": path, "prompt": "x"}, 400)
        assert want in d["error"] and str(lab.resolve()) not in d["error"], d["error"]
    d = post(client, "lens", {"fitted": "fit-999", "prompt": "x"}, 400)
    assert d["error"].startswith("No LRE fitted as 'fit-999' in this studio session")


@pytest.mark.parametrize("save", ["../x.safetensors", "x.txt", "nodir/x.safetensors", "link/new.safetensors", "/tmp/x.safetensors",
                                  "\x00.safetensors"])
def test_saves_outside_the_folders_are_refused_before_fitting(client, save):
    done = client.get("/api/info").json()["studio"]["queue"]["done"]
    d = post(client, "fit", {"relation": REL, "layer": 1, "save": save}, 400)
    assert d["error"].startswith("Cannot save an LRE as ") and "inside the studio's LRE folders" in d["error"]
    assert client.get("/api/info").json()["studio"]["queue"]["done"] == done + 1  # one quick job, no fit


def test_a_save_replaces_only_an_lre_and_only_when_asked(client, fitted, lab):
    before = (lab / "caps.safetensors").read_bytes()
    d = post(client, "fit", {"relation": REL, "layer": 0, "n_train": 2, "save": "caps.safetensors"}, 400)
    assert d["error"].startswith("'caps.safetensors' exists") and "overwrite" in d["error"]
    d = post(client, "fit", {"relation": REL, "layer": 0, "n_train": 2, "save": "vec.safetensors", "overwrite": True},
             400)
    assert "is not an LRE artifact" in d["error"]
    assert (lab / "caps.safetensors").read_bytes() == before
    d = post(client, "fit", {"relation": REL, "layer": 0, "n_train": 2, "save": "caps2.safetensors"})
    post(client, "fit", {"relation": REL, "layer": 0, "n_train": 2, "save": "caps2.safetensors", "overwrite": True})
    assert LRE.load(lab / "caps2.safetensors").layer == 0 and d["saved"] == "caps2.safetensors"


def test_layer_out_of_range_is_400(client):
    d = post(client, "fit", {"relation": REL, "layer": 3}, 400)
    assert d["error"] == "Layer 3 is out of range for tiny-llama (3 layers: 0..2, or -3..-1)."
    d = post(client, "lens", {"path": "caps.safetensors", "prompt": "x", "layers": [5]}, 400)
    assert "Layer 5 is out of range" in d["error"]


@pytest.mark.parametrize("what, body, where", [
    ("fit", {"layer": 1}, "relation: Field required"),
    ("fit", {"relation": REL}, "layer: Field required"),
    ("fit", {"relation": "/etc/passwd", "layer": 1}, "is a file path; the studio takes shipped relation names"),
    ("fit", {"relation": "my_facts.jsonl", "layer": 1}, "is a file path"),
    ("fit", {"relation": "capital", "layer": 1}, "Unknown relation 'capital'; did you mean country_capital_city"),
    ("fit", {"relation": REL, "layer": "1"}, "layer: Input should be a valid integer"),
    ("fit", {"relation": REL, "layer": 1.0}, "layer: Input should be a valid integer"),
    ("fit", {"relation": REL, "layer": 1, "n_train": 0}, "n_train"),
    ("fit", {"relation": REL, "layer": 1, "n_train": 9}, "n_train: Input should be less than or equal to 8"),
    ("fit", {"relation": REL, "layer": 1, "beta": 0}, "beta: Input should be greater than 0"),
    ("fit", {"relation": REL, "layer": 1, "beta": 21}, "beta"),
    ("fit", {"relation": REL, "layer": 1, "n_train": 5, "max_facts": 4}, "max_facts (4) must be at least n_train (5)"),
    ("fit", {"relation": REL, "layer": 1, "max_facts": 65}, "max_facts"),
    ("fit", {"relation": REL, "layer": 1, "save": ""}, "save"),
    ("fit", {"relation": REL, "layer": 1, "overwrite": "yes"}, "overwrite"),
    ("fit", {"relation": REL, "layer": 1, "rank": 8}, "rank: Extra inputs are not permitted"),
    ("lens", {"prompt": "x"}, "give the LRE as either fitted"),
    ("lens", {"prompt": "x", "fitted": "fit-1", "path": "caps.safetensors"}, "give the LRE as either fitted"),
    ("lens", {"prompt": "x", "fitted": "1"}, "fitted: String should match pattern"),
    ("lens", {"prompt": "", "fitted": "fit-1"}, "prompt"),
    ("lens", {"prompt": "x", "fitted": "fit-1", "target": "t" * 101}, "target"),
    ("lens", {"prompt": "x", "fitted": "fit-1", "layers": []}, "layers"),
    ("lens", {"prompt": "x", "fitted": "fit-1", "layers": [1.0]}, "layers.0"),
    ("predict", {"fitted": "fit-1", "subjects": []}, "subjects"),
    ("predict", {"fitted": "fit-1", "subjects": ["  "]}, "subjects.0"),
    ("predict", {"fitted": "fit-1", "subjects": ["x"] * 17}, "subjects"),
    ("predict", {"fitted": "fit-1", "subjects": ["x"], "k": 0}, "k"),
    ("predict", {"fitted": "fit-1", "subjects": ["x"], "k": 21}, "k"),
])
def test_bad_bodies_are_422_before_the_queue(client, what, body, where):
    done = client.get("/api/info").json()["studio"]["queue"]["done"]
    d = post(client, what, body, 422)
    assert d["error"].startswith("Invalid request: ") and where in d["error"], d["error"]
    assert client.get("/api/info").json()["studio"]["queue"]["done"] == done


def test_non_finite_beta_is_422(client):
    r = client.post("/api/relations/fit", content=b'{"relation": "country_capital_city", "layer": 1, "beta": NaN}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "beta" in r.json()["error"]


def test_a_prompt_past_the_token_limit_is_400(lm, lab, fitted):
    with TestClient(create_app("tiny", model=lm, lre_dirs=[lab], max_prompt_tokens=8)) as c:
        d = post(c, "lens", {"path": "caps.safetensors", "prompt": "a prompt of many tokens"}, 400)
        assert "tokens" in d["error"]
        d = post(c, "predict", {"path": "caps.safetensors", "subjects": ["France"]}, 400)
        assert d["error"].startswith("The few-shot prompt for 'France' is ")


# ---- the page, in a real browser (the pattern of test_sae_panel.py) ------------------------------

@pytest.fixture(scope="module")
def sync_api():
    return live.playwright()


@pytest.fixture(scope="module")
def page_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("page_lres")


@pytest.fixture(scope="module")
def server(lm, page_dir):
    with live.serve(create_app("tiny", model=lm, lre_dirs=[page_dir])) as url:
        yield url


def visible(t: str) -> str:
    """app.js `visible`: what a token chip shows."""
    if t == "":
        return "\u2205"
    v = t.replace("\n", "\u21b5").replace("\t", "\u21e5").replace("\r", "\u240d")
    return v.replace(" ", "\u2423").replace("\u00a0", "\u2423") if v.strip() == "" else v


def heat(p: float) -> str:
    """app.js `heat`: white -> accent blue, alpha sqrt(p), as getComputedStyle writes it."""
    a = math.sqrt(max(0.0, min(1.0, p)))
    return "rgb({}, {}, {})".format(*(math.floor(255 + (x - 255) * a + 0.5) for x in (43, 89, 195)))


def shown_cells(page) -> list[list]:
    return page.locator("#rel-heat td").evaluate_all(
        "es => es.map(e => [+e.dataset.layer, +e.dataset.pos, e.textContent, +e.dataset.p, "
        "getComputedStyle(e).backgroundColor])")


def want_cells(d: dict, by: str) -> list[list]:
    grid = d["target_prob"] if by == "target" else d["top_prob"]
    return [[d["layers"][k], pos, visible(d["top"][k][pos]), grid[k][pos], heat(grid[k][pos])]
            for k in reversed(range(len(d["layers"]))) for pos in range(len(d["tokens"]))]


def test_relations_tab_in_a_browser(sync_api, server, lm, page_dir, tmp_path, monkeypatch):
    # every "a" token decodes to an HTML tag from here on ("e" encodes to one): the page must show it as text
    decode = type(lm.tokenizer).decode
    monkeypatch.setattr(lm.tokenizer, "decode", lambda ids, skip_special_tokens=False: "".join(
        HOSTILE if c == "a" else c for c in decode(lm.tokenizer, ids)), raising=False)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=live.CHROMIUM)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server + "/#relations")
        assert "active" in page.get_attribute("#tab-relations", "class")
        page.wait_for_function(f"document.querySelectorAll('#rel-relation option').length === {len(shipped_relations())}")
        assert page.input_value("#rel-relation") == REL and "The capital city of {} is" in page.text_content("#rel-template")
        assert page.get_attribute("#rel-layer", "max") == "2"

        # fit, saved into the LRE folder
        page.fill("#rel-layer", "1")
        page.fill("#rel-n", "2")
        page.fill("#rel-save", "browser.safetensors")
        fit = live.run_job(page, "relations/fit", lambda: page.click("#rel-fit-form button[type=submit]"))["result"]
        page.wait_for_selector("#rel-fit-summary")
        assert fit["saved"] == "browser.safetensors" and (page_dir / "browser.safetensors").is_file()
        page.wait_for_function(f"document.getElementById('rel-source').value === 'fitted:{fit['id']}'")
        assert page.input_value("#rel-subjects") == "\n".join(s for s, _ in fit["held_out"][:6])

        # the attribute lens: every cell is the API's top token and probability
        page.fill("#rel-prompt", PROMPT)
        page.fill("#rel-target", "Paris")
        with page.expect_response("**/api/relations/lens") as resp:
            page.click("#rel-lens-form button[type=submit]")
        d = resp.value.json()
        page.wait_for_selector("#rel-heat td")
        assert shown_cells(page) == want_cells(d, "target")
        heads = page.locator("#rel-heat thead th").all_text_contents()
        assert heads == ["layer", *map(visible, d["tokens"])] and any(HOSTILE in t for t in d["tokens"])
        assert page.locator("#rel-heat tbody th").all_text_contents() == [str(x) for x in reversed(d["layers"])]
        page.select_option("#rel-colour", "top")  # re-coloured from the same answer
        assert shown_cells(page) == want_cells(d, "top")
        page.select_option("#rel-colour", "target")

        # the header row stays in view when the grid scrolls
        page.evaluate("() => { const w = document.querySelector('.rel-wrap'); w.style.maxHeight = '4.5rem'; "
                      "w.scrollTop = 1000; }")
        wrap_top, head_top, scrolled = page.evaluate(
            "() => { const w = document.querySelector('.rel-wrap'); return [w.getBoundingClientRect().top, "
            "document.querySelector('#rel-heat thead th').getBoundingClientRect().top, w.scrollTop]; }")
        assert scrolled > 0 and abs(head_top - wrap_top) <= 2
        shot = tmp_path / "relations.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 1000

        # keyboard: one tab stop in the grid, arrows move, the readout says the cell's numbers
        page.locator("#rel-heat td[tabindex='0']").focus()
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowRight")
        cell = page.evaluate("() => { const e = document.activeElement; return [+e.dataset.k, +e.dataset.pos]; }")
        k = len(d["layers"]) - 2  # one row down from the top row (the last layer)
        assert cell == [k, 2]
        text = page.text_content("#rel-cell")
        assert text.startswith(f"layer {d['layers'][k]}, token 2 {json.dumps(d['tokens'][2])}: top "
                               f"{json.dumps(d['top'][k][2])}")
        assert page.locator("#rel-heat td[tabindex='0']").count() == 1

        # the saved file: found by the list, read to the same lens
        page.click("#rel-src-form button[type=submit]")
        page.wait_for_selector("#rel-source option[value='path:browser.safetensors']", state="attached")
        page.select_option("#rel-source", "path:browser.safetensors")
        page.evaluate("() => document.getElementById('rel-lens-out').replaceChildren()")
        with page.expect_response("**/api/relations/lens") as resp:
            page.click("#rel-lens-form button[type=submit]")
        again = resp.value.json()
        assert again == d
        page.wait_for_selector("#rel-heat td")
        assert shown_cells(page) == want_cells(again, "target")

        # the LRE vs the model, for the held-out subjects
        with page.expect_response("**/api/relations/predict") as resp:
            page.click("#rel-pred-form button[type=submit]")
        pr = resp.value.json()
        page.wait_for_selector("#rel-pred tbody tr")
        rows = page.locator("#rel-pred tbody tr")
        assert rows.count() == len(pr["subjects"]) == len(fit["held_out"][:6])
        for i in range(rows.count()):
            lre_toks = rows.nth(i).locator("td.lre-top .tok").all_text_contents()
            model_toks = rows.nth(i).locator("td.model-top .tok").all_text_contents()
            assert lre_toks == [visible(t) for t, _ in pr["lre_top"][i]]
            assert model_toks == [visible(t) for t, _ in pr["model_top"][i]]
            assert rows.nth(i).locator("td").nth(1).text_content() == ", ".join(pr["objects"][i])
        assert page.evaluate("window.__xss") is None and page.locator("#tab-relations img").count() == 0
        browser.close()
        assert errors == []
