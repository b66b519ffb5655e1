"""The studio's Neurons panel: `/api/neurons/page` is `record` over the shipped corpus (or pasted
text, or a recording file inside the studio's folders) read back with `neuron_stats`, the
histogram and `examples`, kept in the session; `/ablate` is `ablate` next to `ablation_curve`'s
random neurons of the same layer; `/dose` is `dose_response` over values spanning the recorded
range; each also as a job; bad bodies are 422 and family errors 400. In a real browser the page
shades every example token by its activation, draws the histogram and the dose curve from the
API's numbers, downloads exactly the API's answer, clamps the neuron into Generate by keyboard,
fits 1280 px and reopens from its URL. On gemma-3-270m (slow) the agreement neuron 10.1624 does
what docs/neurons.md measured: ablating it lowers the " these" - " this" logit difference more
than random neurons, and setting it higher raises it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import live
from conftest import make_tiny
from fastapi.testclient import TestClient

from lmscope.datasets import shipped
from lmscope.datasets.corpus import read_prompts
from lmscope.engine.artifacts import save_artifact
from lmscope.neurons import causal as nc
from lmscope.neurons.recording import NeuronRecording, RecordConfig, record
from lmscope.web import create_app
from lmscope.web import neurons as web_neurons
from lmscope.web.studio import json_safe

SOURCE = {"layer": 1, "corpus": "shipped", "max_tokens": 512}
PROMPTS = ["hello world", "the cat sat on"]
CAUSAL = {**SOURCE, "neuron": 5, "prompts": PROMPTS, "target": "a", "baseline": "b"}
DOCS = "First pasted document, about cats and dogs.\n\nA second one, about the sea and the wind."


@pytest.fixture(scope="module")
def lm():
    return make_tiny("llama")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """No atlas or cache of the developer's: LMSCOPE_CACHE in a temporary folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMSCOPE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def lab(lm, tmp_path_factory):
    """The studio's folder: a recording of layer 2 (written as `lmscope neuron record --out` does),
    a vector artifact, and a recording made for another model."""
    import torch

    root = tmp_path_factory.mktemp("recordings")
    rec = record(lm, "layers.2.mlp.neurons", None, config=RecordConfig(max_tokens=300, top_k=5))
    rec.save(root / "l2.safetensors", lm)
    rec.save(root / "foreign.safetensors", lm)
    side = root / "foreign.safetensors.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "model": "another-model"}))
    save_artifact(root / "vec.safetensors", {"v": torch.ones(lm.d_model)}, kind="vector", model=lm)
    return root


@pytest.fixture(scope="module")
def client(lm, lab, env):
    with TestClient(create_app("tiny", model=lm, vector_dirs=[lab])) as c:
        yield c


def post(client, what: str, body: dict, status: int = 200) -> dict:
    r = client.post(f"/api/neurons/{what}", json=body)
    assert r.status_code == status, r.text
    return r.json()


def job(client, what: str, body: dict) -> dict:
    """The job form: 202 at once, then polled until it ends."""
    r = client.post(f"/api/jobs/neurons/{what}", json=body)
    assert r.status_code == 202, r.text
    for _ in range(3000):
        j = client.get(f"/api/jobs/{r.json()['id']}").json()
        if j["state"] not in ("waiting", "running"):
            return j
        time.sleep(0.02)
    raise AssertionError("the job did not finish")


def library_page(rec: NeuronRecording, lm, layer: int, n: int, k: int = 10, bins: int = 60) -> dict:
    site, j = rec.find(layer, n)
    return json_safe({"stats": rec.neuron_stats(layer, n), "histogram": site.stats.histogram(j, n=bins),
                      "examples": [e.to_dict() for e in rec.examples(layer, n, lm.tokenizer, k=k)]})


def same_summary(got: dict, rec: NeuronRecording) -> None:
    want = json_safe(rec.summary())
    for key in ("seconds", "tokens_per_s"):  # timings
        got.pop(key), want.pop(key)
    assert {k: v for k, v in got.items() if k in want} == want


# ---- the API -------------------------------------------------------------------------------------

def test_info_names_the_limits(client):
    lim = client.get("/api/info").json()["studio"]["neuron_limits"]
    assert lim["default_tokens"] == web_neurons.DEFAULT_TOKENS and lim["max_tokens"] == web_neurons.MAX_TOKENS
    assert lim["keep"] == web_neurons.KEEP


def test_page_is_the_layers_recording_read_back(client, lm):
    d = post(client, "page", {**SOURCE, "neuron": 5, "k": 6})
    rec = record(lm, "layers.1.mlp.neurons", None, config=RecordConfig(max_tokens=512, top_k=20))
    assert {k: d[k] for k in ("stats", "histogram", "examples")} == library_page(rec, lm, 1, 5, k=6)
    assert (d["layer"], d["neuron"], d["site"]) == (1, 5, "layers.1.mlp.neurons[5]")
    assert d["recording"]["source"] == "shipped" and d["recording"]["n_tokens"] == 512 == d["stats"]["count"]
    same_summary(dict(d["recording"]), rec)
    e = d["examples"][0]
    assert len(e["tokens"]) == len(e["acts"]) and e["acts"][e["max_index"]] == e["max_act"] == d["stats"]["max"]
    assert sum(d["histogram"]["counts"]) == 512

    # another neuron of the layer (a negative index) reads the same recording: nothing recorded again
    other = post(client, "page", {**SOURCE, "neuron": -1, "k": 6, "bins": 20})
    assert other["neuron"] == lm.d_mlp - 1 and other["recording"] == d["recording"]
    assert {k: other[k] for k in ("stats", "histogram", "examples")} == library_page(rec, lm, 1, lm.d_mlp - 1, 6, 20)
    held = client.get("/api/neurons/recordings").json()
    assert [r["id"] for r in held["recordings"]].count(d["recording"]["id"]) == 1

    # the job form answers the same
    j = job(client, "page", {**SOURCE, "neuron": 5, "k": 6})
    assert j["state"] == "done" and j["result"] == d


def test_pasted_text_is_recorded_as_documents(client, lm):
    d = post(client, "page", {"layer": 0, "corpus": "text", "text": DOCS, "neuron": 3, "max_tokens": 1000, "top_k": 4})
    docs = ["First pasted document, about cats and dogs.", "A second one, about the sea and the wind."]
    rec = record(lm, "layers.0.mlp.neurons", docs, config=RecordConfig(max_tokens=1000, top_k=4))
    assert {k: d[k] for k in ("stats", "histogram", "examples")} == library_page(rec, lm, 0, 3)
    assert d["recording"]["n_tokens"] == sum(map(len, docs)) and len(d["examples"]) == 2  # one per window
    assert d["recording"]["source"] == "text"
    assert "needs text" in post(client, "page", {"layer": 0, "corpus": "text", "text": "\n\n  \n", "neuron": 3}, 422)["error"]


def test_the_session_holds_the_last_recordings(client):
    ids = [post(client, "record", {"layer": 0, "max_tokens": 16 + i})["recording"]["id"] for i in range(web_neurons.KEEP + 1)]
    held = [r["id"] for r in client.get("/api/neurons/recordings").json()["recordings"]]
    assert held[: web_neurons.KEEP] == ids[::-1][: web_neurons.KEEP] and ids[0] not in held
    assert len(held) == web_neurons.KEEP


def test_a_recording_file_in_the_folders(client, lm, lab):
    d = post(client, "page", {"layer": 2, "corpus": "file", "file": "l2.safetensors", "neuron": 7})
    rec = NeuronRecording.load(lab / "l2.safetensors", model=lm)
    assert {k: d[k] for k in ("stats", "histogram", "examples")} == library_page(rec, lm, 2, 7)
    assert d["recording"]["file"] == "l2.safetensors" and d["recording"]["n_tokens"] == 300
    assert client.get("/api/neurons/recordings").json()["files"] == ["l2.safetensors"]  # not foreign, not the vector
    # it holds layer 2 only
    e = post(client, "page", {"layer": 1, "corpus": "file", "file": "l2.safetensors", "neuron": 7}, 400)["error"]
    assert "layers.1.mlp.neurons[7]" in e and "layers.2.mlp.neurons" in e
    # missing and outside: one message; wrong files inside: named, without the server's folder
    miss = post(client, "page", {"layer": 2, "corpus": "file", "file": "nope.safetensors", "neuron": 7}, 400)["error"]
    out = post(client, "page", {"layer": 2, "corpus": "file", "file": "/etc/passwd", "neuron": 7}, 400)["error"]
    assert miss.replace("'nope.safetensors'", "X") == out.replace("'/etc/passwd'", "X")
    for name, words in (("foreign.safetensors", "another-model"), ("vec.safetensors", "vector")):
        e = post(client, "page", {"layer": 2, "corpus": "file", "file": name, "neuron": 7}, 400)["error"]
        assert words in e and str(lab) not in e and name in e


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_ablate_is_ablate_next_to_random_neurons_of_the_layer(client, lm, method):
    d = post(client, "ablate", {**CAUSAL, "method": method, "n_random": 2, "n_neutral": 3, "seed": 4})
    ref = None if method == "zero" else nc.reference_activations(lm, None, max_tokens=web_neurons.REFERENCE_TOKENS)
    neutral = read_prompts(shipped.path("neutral_prompts.jsonl"))[:3]
    kw = {"target": "a", "baseline": "b", "method": method, "reference": ref, "neutral": neutral, "seed": 4}
    eff = nc.ablate(lm, [(1, 5)], PROMPTS, **kw)
    curve = nc.ablation_curve(lm, [(1, 5)], PROMPTS, ks=[1], n_random=2, pool_layers=[1], **kw)
    assert d["effect"] == json_safe(eff.to_dict(per_prompt=True))
    assert d["control"] == json_safe(curve.to_dict()["random"][0])
    assert d["reference"] == (None if method == "zero" else "512 tokens of the shipped corpus")
    assert (d["target_token"], d["baseline_token"]) == (lm.tokenizer.decode([lm.token_id("a")]),
                                                        lm.tokenizer.decode([lm.token_id("b")]))
    if method == "zero":
        assert d["effect"]["p_target_after"] != d["effect"]["p_target_before"]  # the neuron matters a little
        j = job(client, "ablate", {**CAUSAL, "method": method, "n_random": 2, "n_neutral": 3, "seed": 4})
        assert j["result"] == d


def test_ablate_without_control_or_kl(client, lm):
    d = post(client, "ablate", {**CAUSAL, "n_random": 0, "n_neutral": 0, "baseline": None})
    assert d["control"] is None and d["effect"]["kl_neutral"] is None and d["effect"]["ld_before"] is None
    assert d["effect"] == json_safe(nc.ablate(lm, [(1, 5)], PROMPTS, target="a").to_dict(per_prompt=True))


def test_dose_spans_the_recorded_range(client, lm):
    d = post(client, "dose", {**CAUSAL, "n_values": 5})
    stats = post(client, "page", {**SOURCE, "neuron": 5})["stats"]
    lo, hi = min(stats["min"], 0.0), 2 * stats["max"]
    assert len(d["values"]) == 5 and d["values"][0] == pytest.approx(lo, rel=1e-3)
    assert d["values"][-1] == pytest.approx(hi, rel=1e-3) and d["values"] == sorted(d["values"])
    want = nc.dose_response(lm, [(1, 5)], PROMPTS, target="a", baseline="b", values=d["values"])
    assert {k: d[k] for k in want.to_dict()} == json_safe(want.to_dict())
    q = stats["quantiles"]
    assert d["recorded"] == {"min": stats["min"], "q01": q["0.01"], "q50": q["0.5"], "q99": q["0.99"],
                             "max": stats["max"], "mean": stats["mean"]}
    # typed values, at the last token only
    d = post(client, "dose", {**CAUSAL, "values": [-1, 0, 2.5], "positions": "last"})
    want = nc.dose_response(lm, [(1, 5)], PROMPTS, target="a", baseline="b", values=[-1, 0, 2.5], positions="last")
    assert {k: d[k] for k in want.to_dict()} == json_safe(want.to_dict()) and d["positions"] == "last"
    assert job(client, "dose", {**CAUSAL, "values": [-1, 0, 2.5], "positions": "last"})["result"] == d


@pytest.mark.parametrize(("what", "body", "where"), [
    ("page", {**SOURCE, "neuron": 1, "text": "x"}, "text is read only with corpus 'text'"),
    ("page", {**SOURCE, "neuron": 1, "corpus": "text"}, "needs text"),
    ("page", {**SOURCE, "neuron": 1, "corpus": "file"}, "needs file"),
    ("page", {**SOURCE, "neuron": 1, "max_tokens": web_neurons.MAX_TOKENS + 1}, "max_tokens"),
    ("page", {**SOURCE, "neuron": 1, "corpus": "text", "text": "x" * (web_neurons.MAX_CORPUS_CHARS + 1)}, "text"),
    ("page", {**SOURCE, "neuron": "1"}, "neuron"),
    ("page", {**SOURCE, "neuron": 1, "k": 0}, "k"),
    ("page", {**SOURCE, "neuron": 1, "kind": "gate"}, "kind"),
    ("record", {"layer": 1, "corpus": "web"}, "corpus"),
    ("ablate", {**CAUSAL, "prompts": []}, "prompts"),
    ("ablate", {**CAUSAL, "prompts": ["x"] * (web_neurons.MAX_PROMPTS + 1)}, "prompts"),
    ("ablate", {**CAUSAL, "method": "noise"}, "method"),
    ("ablate", {**CAUSAL, "target": ""}, "target"),
    ("ablate", {**CAUSAL, "n_random": web_neurons.MAX_RANDOM + 1}, "n_random"),
    ("dose", {**CAUSAL, "values": [0.0] * (web_neurons.MAX_VALUES + 1)}, "values"),
    ("dose", {**CAUSAL, "values": [1e9]}, "values"),
    ("dose", {**CAUSAL, "positions": "first"}, "positions"),
])
def test_bad_bodies_are_422(client, what, body, where):
    e = post(client, what, body, 422)["error"]
    assert where in e


def test_non_finite_values_are_422(client):
    r = client.post("/api/neurons/dose", content=json.dumps({**CAUSAL, "values": [0.0]}).replace("0.0", "NaN"),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "values" in r.json()["error"]


def test_family_errors_are_400(client, lm):
    e = post(client, "page", {**SOURCE, "layer": 7, "neuron": 1}, 400)["error"]
    assert "Layer 7 is out of range" in e
    e = post(client, "ablate", {**CAUSAL, "neuron": lm.d_mlp}, 400)["error"]
    assert str(lm.d_mlp) in e


def test_a_prompt_past_the_token_limit_is_400(lm, env):
    with TestClient(create_app("tiny", model=lm, max_prompt_tokens=8)) as c:
        r = c.post("/api/neurons/dose", json={**CAUSAL, "prompts": ["a much longer prompt than eight tokens"]})
        assert r.status_code == 400 and "at most 8 tokens" in r.json()["error"]


def test_a_cancelled_recording_is_not_held(lm, env):
    with TestClient(create_app("tiny", model=lm)) as c:
        r = c.post("/api/jobs/neurons/record", json={"layer": 2, "max_tokens": web_neurons.MAX_TOKENS})
        c.delete(f"/api/jobs/{r.json()['id']}")
        for _ in range(3000):
            j = c.get(f"/api/jobs/{r.json()['id']}").json()
            if j["state"] not in ("waiting", "running"):
                break
            time.sleep(0.02)
        assert j["state"] == "cancelled"
        assert c.get("/api/neurons/recordings").json()["recordings"] == []


# ---- the page in a real browser ------------------------------------------------------------------

def visible(t: str) -> str:
    """app.js `visible`: what a token chip shows."""
    if t == "":
        return "\u2205"
    v = t.replace("\n", "\u21b5").replace("\t", "\u21e5").replace("\r", "\u240d")
    return v.replace(" ", "\u2423").replace("\u00a0", "\u2423") if v.strip() == "" else v


def close(shown: str, want: float) -> bool:
    """A number the page wrote with 4 significant digits."""
    return math.isclose(float(shown), want, rel_tol=1e-3, abs_tol=1e-12)


def shown_examples(page) -> list:
    return page.locator("#np-out .np-examples tbody tr").evaluate_all(
        "rs => rs.map(r => [...r.querySelectorAll('span.act')].map(s => [s.textContent, +s.dataset.act, "
        "s.classList.contains('max')]))")


def want_examples(d: dict) -> list:
    return [[[visible(t), a, j == e["max_index"]] for j, (t, a) in enumerate(zip(e["tokens"], e["acts"], strict=True))]
            for e in d["examples"]]


@pytest.fixture(scope="module")
def server(lm, env):
    with live.serve(create_app("tiny", model=lm)) as url:
        yield url


def test_neuron_page_in_a_browser(server, lm, tmp_path):
    import httpx

    sync_api = live.playwright()
    api = httpx.Client(base_url=server, timeout=120)
    with live.chromium(sync_api) as pages:
        page = pages.open(server + "/#neurons")
        assert page.input_value("#np-layer") == "1"  # a middle layer of 3
        assert not page.is_visible("#np-file-box") and not page.is_visible("#np-text")
        page.select_option("#np-corpus", "file")
        assert page.is_visible("#np-file") and page.is_disabled("#np-tokens")
        page.select_option("#np-corpus", "shipped")

        # the page, by mouse: a recording job, then the examples, statistics and histogram
        page.fill("#np-neuron", "5")
        page.fill("#np-tokens", "512")
        page.click("#np-form button[type=submit]")
        page.wait_for_selector("#np-out .np-examples tbody tr", timeout=60_000)
        d = api.post("/api/neurons/page", json={**SOURCE, "neuron": 5, "k": 10}).json()
        assert shown_examples(page) == want_examples(d)
        stats = page.locator("#np-out td[data-stat]").evaluate_all("es => es.map(e => [e.dataset.stat, e.textContent])")
        assert [k for k, _ in stats] == ["count", "mean", "std", "share_positive", "min", "max",
                                         *(f"q{q}" for q in d["stats"]["quantiles"])]
        for key, text in stats:
            if key == "count":
                assert text == f"{d['stats']['count']:,}"
            elif key != "share_positive":  # a percentage
                assert close(text, d["stats"][key] if key[0] != "q" else d["stats"]["quantiles"][key[1:]]), key
        bars = page.locator("#np-out svg.np-hist rect.np-bar").evaluate_all(
            "rs => rs.map(r => [+r.dataset.count, r.getBoundingClientRect().height])")
        assert [c for c, _ in bars] == d["histogram"]["counts"]
        top, tallest = max(bars)  # each bar as tall as log(1 + count) says (counts on a log scale)
        assert tallest > 50 and all(abs(h - tallest * math.log1p(c) / math.log1p(top)) < 0.5 for c, h in bars)
        assert page.locator("#np-out .kinds h4").count() >= 3  # the decoded weights below the page

        # the JSON download is exactly the API's answer
        with page.expect_download() as dl:
            page.locator("#np-out .result").first.locator("button:has-text('JSON')").click()
        assert json.loads(Path(dl.value.path()).read_text(encoding="utf-8")) == d

        # keyboard: another neuron of the layer by Enter (held recording), then clamp it into Generate
        page.focus("#np-neuron")
        page.keyboard.press("Control+a")
        page.keyboard.type("7")
        page.keyboard.press("Enter")
        page.wait_for_selector("#np-out h3:has-text('Neuron 1.7 over a corpus')")
        d7 = api.post("/api/neurons/page", json={**SOURCE, "neuron": 7, "k": 10}).json()
        assert d7["recording"]["id"] == d["recording"]["id"] and shown_examples(page) == want_examples(d7)
        url = page.url
        assert "np-neuron=7" in url and "go=np-form" in url
        page.select_option("#np-out .np-clamp-at", index=3)  # 2 x max
        page.focus("#np-out .np-clamp-at")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent").startswith("Clamp it in Generate")
        page.keyboard.press("Enter")
        assert "active" in page.get_attribute("#tab-generate", "class")
        row = page.locator("#edit-rows tr").last
        assert row.locator("select").input_value() == "clamp"
        assert row.locator("input").nth(0).input_value() == "layers.1.mlp.neurons[7]"
        assert close(row.locator("input").nth(1).input_value(), 2 * d7["stats"]["max"])
        page.click("#tabs [data-tab=neurons]")

        # ablation and dose-response of neuron 7 on typed prompts
        page.fill("#nc-prompts", "\n".join(PROMPTS))
        page.fill("#nc-target", "a")
        page.fill("#nc-baseline", "b")
        page.select_option("#nab-method", "mean")
        page.click("#nab-form button[type=submit]")
        page.wait_for_selector("#nab-out .np-ablation", timeout=60_000)
        body = {**SOURCE, "neuron": 7, "prompts": PROMPTS, "target": "a", "baseline": "b"}
        ab = api.post("/api/neurons/ablate", json={**body, "method": "mean", "n_random": 3, "n_neutral": 8}).json()
        e = ab["effect"]
        cells = page.locator("#nab-out tr[data-metric=p] td").all_text_contents()
        assert close(cells[0], e["p_target_before"]) and close(cells[1], e["p_target_after"])
        per = page.locator("#nab-out .np-per-prompt tbody tr").evaluate_all(
            "rs => rs.map(r => [...r.querySelectorAll('td')].map(c => c.textContent))")
        assert [r[0] for r in per] == PROMPTS
        assert all(close(r[2], a) for r, a in zip(per, e["per_prompt"]["p_target_after"], strict=True))

        page.fill("#ndose-n", "5")
        page.click("#ndose-form button[type=submit]")
        page.wait_for_selector("#ndose-out circle.np-pt", timeout=60_000)
        dose = api.post("/api/neurons/dose", json={**body, "n_values": 5, "positions": "all"}).json()
        pts = page.locator("#ndose-out circle.np-pt").evaluate_all("cs => cs.map(c => [+c.dataset.value, +c.dataset.p])")
        assert pts == [list(x) for x in zip(dose["values"], dose["p_target"], strict=True)]
        assert page.locator("#ndose-out rect.np-band-corpus").count() == 1
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        shot = tmp_path / "neurons.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 1000

        # the URL the page wrote reopens the same page view in a fresh page
        fresh = pages.open(url)
        fresh.wait_for_selector("#np-out h3:has-text('Neuron 1.7 over a corpus')", timeout=60_000)
        assert shown_examples(fresh) == want_examples(d7)
    api.close()


# ---- a real model (slow) -------------------------------------------------------------------------

@pytest.mark.slow
def test_gemma_agreement_neuron_ablation_and_dose(gemma, env):
    """10.1624 is gemma-3-270m's top " these"-vs-" this" neuron (docs/neurons.md): zero-ablating it
    lowers the logit difference on plural prompts more than random neurons of its layer do, and
    its dose-response over the recorded range raises the difference as the value rises."""
    rows = shipped.rows("singular_plural_agreement.jsonl")
    body = {"layer": 10, "neuron": 1624, "prompts": [r["prompt_plural"] for r in rows[-6:]], "target": " these",
            "baseline": " this"}
    with TestClient(create_app("gemma-3-270m", model=gemma)) as c:
        page = post(c, "page", {"layer": 10, "neuron": 1624, "max_tokens": 2048})
        assert page["recording"]["n_tokens"] == 2048 and page["examples"]
        assert page["stats"]["max"] > page["stats"]["quantiles"]["0.99"] > 0
        ab = post(c, "ablate", {**body, "method": "zero", "n_random": 2, "n_neutral": 2})
        eff, ctrl = ab["effect"], ab["control"]
        assert eff["delta_ld"] < -0.2 and eff["delta_ld"] < ctrl["delta_ld"]["mean"] - 0.2
        dose = post(c, "dose", {**body, "max_tokens": 2048, "n_values": 5})
        assert dose["values"][0] <= 0 < dose["values"][-1] and dose["values"][-1] == pytest.approx(2 * page["stats"]["max"], rel=1e-3)
        assert dose["ld"][-1] - dose["ld"][0] > 0.5
        print(f"\nrecorded {page['recording']['n_tokens']} tokens in {page['recording']['seconds']:.1f} s; "
              f"max {page['stats']['max']:.3f}; ablation dLD {eff['delta_ld']:+.3f} vs random "
              f"{ctrl['delta_ld']['mean']:+.3f}; dose values {dose['values']} LD {[round(x, 3) for x in dose['ld']]}")
