"""The studio's SAEs panel: `POST /api/sae` answers each action with the library's own result
(`load_sae` + the saved card, `feature_page`, `search_features`, `steer`), reads SAEs only inside
its SAE folders (one message for missing and outside, no server paths in messages), needs the
statistics `lmscope sae features` writes, refuses bad bodies with 422; and, in a real browser,
the tab shows the card, finds latents, shades every context token by its activation, follows
nearest features and steers, with token text never interpreted as HTML.

The SAE is a random TopK coder on a tiny random llama, saved with a card, statistics and an index.
"""

from __future__ import annotations

import json
import math
import re

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import live
from conftest import make_tiny
from fastapi.testclient import TestClient

from lmscope.saes.coder import CoderSpec, init_coder
from lmscope.saes.evaluation import evaluate
from lmscope.saes.feature_db import build_feature_index, search_features
from lmscope.saes.feature_page import feature_page
from lmscope.saes.features import FeatureStats, feature_stats
from lmscope.saes.loading import load_sae, save_coder
from lmscope.saes.steering import steer
from lmscope.web import create_app
from lmscope.web.circuits import json_safe

SITE = "layers.1.resid_post"
TEXTS = ["The quick brown fox jumps over the lazy dog near the river bank.",
         "Sparse autoencoders find features; transcoders predict an MLP's output from its input!",
         "A cat sat on a mat and ate a rat at half past ten."]
HOSTILE = "<img src=x onerror=window.__xss=1>"
STEER = {"action": "steer", "feature": 3, "mode": "add", "value": 4.0, "prompts": ["hello there"], "max_new_tokens": 3}


@pytest.fixture(scope="module")
def lm():
    return make_tiny("llama")


@pytest.fixture(scope="module")
def lab(lm, tmp_path_factory):
    """root/sae (card, statistics, index), root/bare (the coder only), root/junk (no SAE), and a
    copy of the SAE outside the SAE folders, reachable through root/link."""
    root = tmp_path_factory.mktemp("saes")
    coder = init_coder(CoderSpec(arch="topk", d_in=lm.d_model, d_sae=64, k=4, site=SITE), seed=1)
    card = evaluate(lm, coder, TEXTS, max_tokens=60, window=16)
    save_coder(coder, root / "sae", model=lm, card=card.to_dict())
    save_coder(coder, root / "bare", model=lm)
    stats = feature_stats(lm, coder, TEXTS, max_tokens=120, window=16, top_n=4, batch_size=4, corpus_label="three texts")
    stats.save(root / "sae", model=lm)
    build_feature_index(root / "sae", lm, coder, stats)
    (root / "junk").mkdir()
    (root / "junk" / "weights.safetensors").write_bytes(b"not safetensors")
    outside = tmp_path_factory.mktemp("outside")
    save_coder(coder, outside / "sae", model=lm)
    (root / "link").symlink_to(outside / "sae")
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """No atlas or cache of the developer's: LMSCOPE_CACHE in a temporary folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMSCOPE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def client(lm, lab, env):
    with TestClient(create_app("tiny", model=lm, sae_dirs=[lab])) as c:
        yield c


@pytest.fixture(scope="module")
def steered(lm, lab, env) -> dict:
    """What the library's `steer` returns for STEER."""
    coder = load_sae(lab / "sae", model=lm)
    return json_safe(steer(lm, coder, 3, mode="add", value=4.0, prompts=["hello there"], max_new_tokens=3).to_dict())


def post(client, body, status=200):
    r = client.post("/api/sae", json=body)
    assert r.status_code == status, r.text
    return r.json()


def library_page(lm, lab, i: int, k: int = 10) -> dict:
    coder = load_sae(lab / "sae", model=lm)
    stats = FeatureStats.load(lab / "sae", model=lm, coder=coder)
    return json_safe(feature_page(lm, coder, stats, i, k=k).to_dict())


# ---- the API -------------------------------------------------------------------------------------

def test_info_and_folders(client, lab):
    assert client.get("/api/info").json()["studio"]["sae_dirs"] == [str(lab.resolve())]
    d = client.get("/api/sae/folders").json()
    assert d["folders"] == ["bare", "sae"]  # not junk (no known format), not the link out


def test_card_is_the_saved_card_and_the_statistics_summary(client, lm, lab):
    d = post(client, {"path": "sae"})
    coder = load_sae(lab / "sae", model=lm)
    stats = FeatureStats.load(lab / "sae", model=lm, coder=coder)
    assert d == json_safe({"path": "sae", "coder": repr(coder), "spec": coder.cfg.to_dict(), "d_in": 64, "d_sae": 64,
                           "d_out": 64,
                           "card": coder.card, "train": None, "stats": stats.summary(), "index": True})
    assert d["spec"]["site"] == d["card"]["site"] == SITE and d["spec"]["k"] == 4 and d["card"]["n_tokens"] > 0 and d["stats"]["corpus"] == "three texts"
    bare = post(client, {"path": str(lab / "bare")})  # an absolute path inside the folders works too
    assert bare["card"] is None and bare["stats"] is None and bare["index"] is False


def test_feature_page_is_the_library_page(client, lm, lab):
    for i in (0, 7, -1):
        d = post(client, {"path": "sae", "action": "feature", "feature": i, "k": 5})
        assert d == {"path": "sae", "d_sae": 64, **library_page(lm, lab, i % 64, k=5)}
    d = post(client, {"path": "sae", "action": "feature", "feature": 7})
    assert {"contexts", "histogram", "promoted", "suppressed", "nearest_features", "nearest_neurons"} <= set(d)
    e = d["contexts"][0]
    assert len(e["tokens"]) == len(e["acts"]) and e["acts"][e["max_index"]] == e["max_act"] == d["max_act"]


def test_search_is_the_library_search(client, lab):
    d = post(client, {"path": "sae", "action": "search", "query": "a", "limit": 5})
    want = search_features(lab / "sae", "a", limit=5).to_dict()
    assert d == json_safe({**want, "path": "sae"}) and d["hits"]  # the request's path, not the server's


def test_steer_is_the_library_report(client, steered):
    d = post(client, {"path": "sae", **STEER})
    assert d == {"path": "sae", **steered}
    assert set(d["arms"]) == {"baseline", "feature", "random feature"} and d["arms"]["feature"]["texts"]


@pytest.mark.parametrize("path", ["/etc", "../outside", "nope", "link", "sae/../../outside", "\x00x", "a" * 1000])
def test_paths_outside_the_sae_folders_get_one_message(client, path):
    d = post(client, {"path": path}, 400)
    assert d["error"].startswith("No SAE at ") and "in the studio's SAE folders" in d["error"]
    assert d["error"].split(" in the studio's")[1] == post(client, {"path": "nope"}, 400)["error"].split(" in the studio's")[1]


def test_errors_inside_the_folders_name_no_server_path(client, lab):
    d = post(client, {"path": "junk"}, 400)
    assert "Cannot tell which sparse-coder format" in d["error"] and str(lab.resolve()) not in d["error"]
    d = post(client, {"path": "bare", "action": "feature", "feature": 1}, 400)
    assert d["error"].startswith("No feature statistics beside 'bare'") and "lmscope sae features bare" in d["error"]
    d = post(client, {"path": "bare", "action": "search", "query": "a"}, 400)
    assert d["error"].startswith("No search index beside 'bare'")
    for i in (64, -65):
        d = post(client, {"path": "sae", "action": "feature", "feature": i}, 400)
        assert d["error"] == f"Feature {i} is out of range: this SAE has 64 latents (0..63, or -64..-1)."
    post(client, {"path": "sae", "action": "search", "query": "a", "site": "layers.9.resid_post"}, 200)  # no coder read
    d = post(client, {"path": "sae", "site": "layers.9.resid_post"}, 400)
    assert "layers.9" in d["error"] and str(lab.resolve()) not in d["error"]


@pytest.mark.parametrize("body, where", [
    ({}, "path: Field required"),
    ({"path": ""}, "path"),
    ({"path": "sae", "action": "feature"}, "needs a feature"),
    ({"path": "sae", "action": "steer"}, "needs a feature"),
    ({"path": "sae", "action": "search"}, "needs a query"),
    ({"path": "sae", "action": "search", "query": "   "}, "needs a query"),
    ({"path": "sae", "action": "train"}, "action"),
    ({"path": "sae", "format": "npz"}, "format"),
    ({"path": "sae", "action": "feature", "feature": "3"}, "feature: Input should be a valid integer"),
    ({"path": "sae", "action": "feature", "feature": 1.0}, "feature: Input should be a valid integer"),
    ({"path": "sae", "action": "steer", "feature": 1, "value": 1e9}, "value"),
    ({"path": "sae", "action": "steer", "feature": 1, "mode": "scale"}, "mode"),
    ({"path": "sae", "action": "steer", "feature": 1, "prompts": ["a"] * 9}, "prompts"),
    ({"path": "sae", "action": "steer", "feature": 1, "prompts": [""]}, "prompts.0"),
    ({"path": "sae", "action": "steer", "feature": 1, "max_new_tokens": 129}, "max_new_tokens"),
    ({"path": "sae", "limit": 0}, "limit"),
    ({"path": "sae", "k": 51}, "k"),
    ({"path": "sae", "layers": 3}, "layers: Extra inputs are not permitted"),
])
def test_bad_bodies_are_422_before_the_queue(client, body, where):
    done = client.get("/api/info").json()["studio"]["queue"]["done"]
    d = post(client, body, 422)
    assert d["error"].startswith("Invalid request: ") and where in d["error"], d["error"]
    assert client.get("/api/info").json()["studio"]["queue"]["done"] == done


def test_non_finite_value_is_422(client):
    r = client.post("/api/sae", content=b'{"path": "sae", "action": "steer", "feature": 1, "value": NaN}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "value" in r.json()["error"]


def test_a_prompt_past_the_token_limit_is_400(lm, lab, env):
    with TestClient(create_app("tiny", model=lm, sae_dirs=[lab], max_prompt_tokens=8)) as c:
        d = post(c, {"path": "sae", "action": "steer", "feature": 1, "prompts": ["a long prompt of many tokens"]}, 400)
        assert "tokens" in d["error"]


# ---- the page, in a real browser (the pattern of test_circuit_panel.py) ---------------------------

@pytest.fixture(scope="module")
def sync_api():
    return live.playwright()


@pytest.fixture(scope="module")
def server(lm, lab, env):
    """A real studio server on a free loopback port; yields its URL."""
    with live.serve(create_app("tiny", model=lm, sae_dirs=[lab])) as url:
        yield url


def alpha(css: str) -> float:
    """The alpha of a computed colour, 'rgba(224, 110, 20, 0.5)' or 'rgb(224, 110, 20)'."""
    nums = [float(x) for x in re.findall(r"[\d.]+", css)]
    return nums[3] if len(nums) == 4 else 1.0


def test_saes_tab_in_a_browser(sync_api, server, lm, lab, steered, tmp_path, monkeypatch):
    # every "a" token decodes to an HTML tag from here on: the page must show it as text
    decode = type(lm.tokenizer).decode
    monkeypatch.setattr(lm.tokenizer, "decode", lambda ids, skip_special_tokens=False: "".join(
        HOSTILE if c == "a" else c for c in decode(lm.tokenizer, ids)), raising=False)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=live.CHROMIUM)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server + "/#saes")
        page.wait_for_selector("#model-info b")
        assert "active" in page.get_attribute("#tab-saes", "class")
        page.wait_for_function("document.querySelectorAll('#sae-found option').length === 2")
        page.fill("#sae-path", "sae")
        page.click("#sae-form button[type=submit]")
        page.wait_for_selector("#sae-ve")
        card = load_sae(lab / "sae", model=lm).card
        assert float(page.text_content("#sae-ve")) == pytest.approx(card["variance_explained"], rel=1e-3)
        assert page.text_content("#sae-size") == "64 \u2192 64 \u2192 64"
        assert "three texts" in page.text_content("#sae-stats")

        page.fill("#sae-q", "b")
        with page.expect_response("**/api/sae") as resp:
            page.click("#sae-search-form button[type=submit]")
        hits = resp.value.json()["hits"]
        page.wait_for_selector("#sae-hits tbody tr")
        assert page.locator("#sae-hits tbody tr").count() == len(hits) > 0
        with page.expect_response("**/api/sae") as resp:
            page.locator("#sae-hits tbody tr").first.click()
        d = resp.value.json()
        page.wait_for_selector("#sae-contexts")
        # the histogram's bars are as tall as their counts (the page's `.bar` rule once flattened them)
        heights = page.locator("#sae-hist rect").evaluate_all("rs => rs.map(r => r.getBoundingClientRect().height)")
        counts = d["histogram"]["counts"]
        assert len(heights) == len(counts) > 0
        assert heights == pytest.approx([110 * c / max(counts) for c in counts], abs=0.6)
        assert page.text_content("#sae-page-title") == f"Feature {hits[0]['feature']}" == f"Feature {d['feature']}"
        # every context token is a chip, in order, with its activation and a shade of act / max
        chips = page.locator("#sae-contexts span.act")
        want = [(t, a) for e in d["contexts"] for t, a in zip(e["tokens"], e["acts"], strict=True)]
        assert chips.count() == len(want)
        got = chips.evaluate_all("es => es.map(e => [e.title, +e.dataset.act, getComputedStyle(e).backgroundColor])")
        for (title, act, color), (t, a) in zip(got, want, strict=True):
            assert act == pytest.approx(a, rel=1e-6) and title.startswith(json.dumps(t) + ": ")
            assert alpha(color) == pytest.approx(max(0.0, min(1.0, a / d["max_act"])), abs=2e-3)
        assert page.locator("#sae-contexts span.act.max").count() == len(d["contexts"])
        assert any(HOSTILE in t for t, _ in want)  # the hostile token is there, as text
        shot = tmp_path / "saes.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 1000

        nxt = d["nearest_features"][0]["feature"]
        page.click(f"#sae-near button[data-feature='{nxt}']")
        page.wait_for_function(f"document.getElementById('sae-page-title').textContent === 'Feature {nxt}'")

        page.fill("#sae-steer-feature", "3")
        page.fill("#sae-n", "3")
        page.fill("#sae-prompts", "hello there")
        s = live.run_job(page, "sae", lambda: page.click("#sae-steer-form button[type=submit]"))["result"]
        page.wait_for_selector("#sae-arms tbody tr")
        assert [r.split("\t")[0] for r in page.locator("#sae-arms tbody tr").all_inner_texts()] == \
               ["baseline", "feature", "random feature"]
        assert s["arms"]["feature"]["concept_prob"] == pytest.approx(steered["arms"]["feature"]["concept_prob"])
        assert not math.isnan(s["arms"]["baseline"]["concept_prob"])

        assert page.evaluate("window.__xss") is None and page.locator("#tab-saes img").count() == 0
        browser.close()
        assert errors == []
