"""The studio's page in a real browser: one scenario per tab, the "Clamp it in Generate" flow
and the display of errors and warnings. Each drives the page served by a real uvicorn server
(tiny random llama), takes a screenshot into a temporary folder, and compares what the page
shows with what the JSON API returns for the same request.

Needs Playwright's Python package and the Debian `chromium` package (Playwright cannot download
its own browser here): `pip install playwright` and `apt-get install -y chromium`. Without
either, every test is skipped with that reason; with both, a failure to start is an error.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import live
import pytest
from conftest import make_tiny

from lmscope.engine.progress import steps
from lmscope.web import create_app
from lmscope.web.bodies import _Body

sync_api = live.playwright(module_level=True)

PROMPT = "hello world"


@pytest.fixture(scope="module")
def lm():
    return make_tiny("llama")


@pytest.fixture(scope="module")
def server(lm, tmp_path_factory):
    """A real studio server on a free loopback port; yields its URL."""
    from lmscope.neurons.atlas import AtlasConfig, build_atlas

    atlas = tmp_path_factory.mktemp("atlas") / "tiny.sqlite"
    build_atlas(lm, AtlasConfig(k=5), path=atlas).close()
    app = create_app("tiny", model=lm, atlas_path=atlas)
    app.state.studio.post("test/slow", SlowBody, slow)  # a long job for the progress and Cancel scenario
    with live.serve(app) as url:
        yield url


class SlowBody(_Body):
    n: int = 100


def slow(req: SlowBody) -> dict:
    for _ in steps(range(req.n), desc="slow", unit="step"):
        time.sleep(0.02)
    return {"n": req.n}


@pytest.fixture(scope="module")
def api(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=live.CHROMIUM)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("studio-screens")
    print(f"\nscreenshots: {d}")
    return d


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))  # an exception in app.js fails the test
    pg.goto(server + "/")
    pg.wait_for_selector("#model-info b")  # /api/info has answered
    yield pg
    ctx.close()
    assert errors == []


def shot(page, shots: Path, name: str) -> None:
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000


def call(api, method: str, path: str, body=None, status: int = 200) -> dict:
    r = api.request(method, path, json=body)
    assert r.status_code == status, r.text
    return r.json()


def titles(page, selector: str) -> list:
    """Exact token texts of the chips matching `selector` (their tooltip is JSON.stringify(token))."""
    return [json.loads(t) for t in page.locator(selector).evaluate_all("els => els.map(e => e.title)")]


def tab(page, name: str) -> None:
    page.click(f"nav button[data-tab={name}]")
    assert "active" in page.get_attribute(f"#tab-{name}", "class")


# ---- one scenario per tab ----------------------------------------------------------------------

def test_next_token_tab_shows_the_api_answer(page, api, shots):
    page.fill("#run-prompt", PROMPT)
    page.fill("#run-k", "5")
    page.click("#run-form button[type=submit]")
    page.wait_for_selector("#run-out table tbody tr")
    shot(page, shots, "next-token")
    d = call(api, "POST", "/api/run", {"prompt": PROMPT, "top_k": 5, "chat": False})
    assert titles(page, "#run-out .tokens .tok") == d["tokens"]
    assert titles(page, "#run-out tbody td:nth-child(2) .tok") == [r["token"] for r in d["top"]]
    ids = page.locator("#run-out tbody td:nth-child(6)").all_text_contents()
    assert [int(i) for i in ids] == [r["id"] for r in d["top"]]
    logits = page.locator("#run-out tbody td:nth-child(5)").all_text_contents()
    assert logits == [f"{r['logit']:.2f}" for r in d["top"]]
    # bars are probabilities: full width is probability 1, not the top token
    widths = page.locator("#run-out .bar > span").evaluate_all("els => els.map(e => e.style.width)")
    assert [float(w.rstrip("%")) for w in widths] == pytest.approx([100 * r["prob"] for r in d["top"]], abs=0.051)


def test_generate_tab_fresh_page_and_edits(page, api, shots):
    tab(page, "generate")
    assert page.locator("#edit-rows tr").count() == 0  # a fresh page sends no edit
    page.fill("#gen-prompt", PROMPT)
    page.fill("#gen-n", "6")
    page.click("#gen-form button[type=submit]")
    page.wait_for_selector("#gen-out .side")
    assert page.locator("#gen-out .error").count() == 0
    d = call(api, "POST", "/api/generate", {"prompt": PROMPT, "max_new_tokens": 6, "chat": False, "edits": []})
    texts = page.locator("#gen-out .side .text").all_text_contents()
    assert texts == [PROMPT + d["baseline"], PROMPT + d["edited"]]

    page.click("#add-edit")  # a zero edit ...
    row = page.locator("#edit-rows tr").nth(0)
    row.locator("select").select_option("zero")
    row.locator("input").nth(0).fill("layers.2.attn_out")
    page.click("#add-edit")  # ... and a blank row, which is not sent
    page.click("#gen-form button[type=submit]")
    page.wait_for_selector("#gen-out .hint:has-text('zero layers.2.attn_out')")
    shot(page, shots, "generate-edits")
    d = call(api, "POST", "/api/generate", {"prompt": PROMPT, "max_new_tokens": 6, "chat": False,
                                            "edits": [{"type": "zero", "site": "layers.2.attn_out"}]})
    texts = page.locator("#gen-out .side .text").all_text_contents()
    assert texts == [PROMPT + d["baseline"], PROMPT + d["edited"]] and d["edited"] != d["baseline"]
    assert page.locator("#gen-out .side mark").count() == 2  # where the texts part is highlighted


def test_logit_lens_tab_shows_every_cell(page, api, shots, lm):
    tab(page, "lens")
    page.fill("#lens-prompt", PROMPT)
    page.fill("#lens-targets", "a\nb")
    page.fill("#lens-k", "3")
    page.click("#lens-form button[type=submit]")
    page.wait_for_selector("#lens-out table.lens")
    shot(page, shots, "logit-lens")
    d = call(api, "POST", "/api/logit_lens", {"prompt": PROMPT, "targets": ["a", "b"], "top_k": 3, "chat": False})
    top = {(c["layer"], c["pos"]): c["top"][0][0] for c in d["cells"]}
    shown = page.locator("#lens-out table.lens tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.querySelectorAll('td')].map(td => td.textContent))")
    want = [[top[(layer, pos)] for pos in range(len(d["tokens"]))] for layer in reversed(d["layers"])]
    assert shown == want and len(shown) == lm.n_layers  # top row = the model's output
    assert titles(page, "#lens-out table.lens thead .tok") == d["tokens"]
    assert page.locator("#lens-out svg.chart polyline").count() == 2
    finals = page.locator("#lens-out .two tbody td:nth-child(3)").all_text_contents()  # final rank
    assert [int(x) for x in finals] == [t["rank"][-1] for t in d["targets"]]


def test_neurons_tab_search_and_decode(page, api, shots, lm):
    from lmscope.neurons.atlas import decode_neuron

    tab(page, "neurons")
    kinds = page.locator("#search-kind option").evaluate_all("os => os.map(o => o.value)")
    assert kinds == ["any", "in", "out", "out_bottom", "in_gate", "in_up"]
    word = decode_neuron(lm, 1, 5, 1)["out"][0][0]
    page.fill("#search-q", word)
    page.select_option("#search-kind", "out")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#search-out table tbody tr")
    d = call(api, "GET", f"/api/atlas/search?q={word}&kind=out&limit=25")
    shown = page.locator("#search-out tbody td:nth-child(1)").all_text_contents()
    assert shown == [f"{h['layer']}.{h['neuron']}" for h in d["results"]]

    page.locator("#search-out tbody tr").first.click()  # decode the first hit
    first = d["results"][0]
    page.wait_for_selector(f"#neuron-out h3:has-text('Neuron {first['layer']}.{first['neuron']}')")
    n = call(api, "GET", f"/api/neuron/{first['layer']}/{first['neuron']}?k=12")
    out_col = page.locator("#neuron-out .kinds > div").nth(2)  # in_gate, in_up, out, out_bottom
    assert titles(out_col, ".tok") == [r["token"] for r in n["out"]]

    page.fill("#neuron-layer", "-1")  # negative indices: the page shows the resolved neuron
    page.fill("#neuron-n", "-1")
    page.click("#neuron-form button[type=submit]")
    n = call(api, "GET", "/api/neuron/-1/-1?k=12")
    assert (n["layer"], n["neuron"]) == (lm.n_layers - 1, lm.d_mlp - 1)
    page.wait_for_selector(f"#neuron-out h3:has-text('Neuron {n['layer']}.{n['neuron']}')")
    shot(page, shots, "neurons")
    assert page.locator("#neuron-out code").text_content() == f"layers.{n['layer']}.mlp.neurons[{n['neuron']}]"


# ---- flows and errors ----------------------------------------------------------------------------

def test_clamp_it_in_generate_works(page, api, shots):
    tab(page, "neurons")
    page.fill("#neuron-layer", "1")
    page.fill("#neuron-n", "3")
    page.click("#neuron-form button[type=submit]")
    page.click("#neuron-out button:has-text('Clamp it in Generate')")
    assert "active" in page.get_attribute("#tab-generate", "class")
    row = page.locator("#edit-rows tr")
    assert row.count() == 1 and row.locator("select").input_value() == "clamp"
    assert [row.locator("input").nth(i).input_value() for i in (0, 1)] == ["layers.1.mlp.neurons[3]", "8"]
    page.fill("#gen-prompt", PROMPT)
    page.fill("#gen-n", "6")
    page.click("#gen-form button[type=submit]")
    page.wait_for_selector("#gen-out .side")
    shot(page, shots, "clamp-flow")
    assert page.locator("#gen-out .error").count() == 0
    d = call(api, "POST", "/api/generate", {"prompt": PROMPT, "max_new_tokens": 6, "chat": False, "edits": [
        {"type": "clamp", "site": "layers.1.mlp.neurons[3]", "value": 8}]})
    assert page.locator("#gen-out .side .text").all_text_contents() == [PROMPT + d["baseline"], PROMPT + d["edited"]]


def test_errors_and_warnings_are_shown(page, api, shots):
    page.fill("#run-prompt", "")  # 422
    page.click("#run-form button[type=submit]")
    page.wait_for_selector("#run-out .error")
    d = call(api, "POST", "/api/run", {"prompt": "", "top_k": 10, "chat": False}, 422)
    assert page.locator("#run-out .error").text_content() == d["error"]

    tab(page, "generate")  # 400 from the library: an out-of-range layer
    page.fill("#gen-prompt", PROMPT)
    page.fill("#gen-n", "3")
    page.click("#add-edit")
    row = page.locator("#edit-rows tr").nth(0)
    row.locator("select").select_option("zero")
    row.locator("input").nth(0).fill("layers.99.resid_post")
    page.click("#gen-form button[type=submit]")
    page.wait_for_selector("#gen-out .error")
    shot(page, shots, "error")
    d = call(api, "POST", "/api/generate", {"prompt": PROMPT, "max_new_tokens": 3, "chat": False,
                                            "edits": [{"type": "zero", "site": "layers.99.resid_post"}]}, 400)
    assert page.locator("#gen-out .error").text_content() == d["error"] and "99" in d["error"]

    row.locator("select").select_option("clamp")  # non-finite activations: a warning above the texts
    row.locator("input").nth(0).fill("layers.1.resid_post")
    row.locator("input").nth(1).fill("1e30")
    page.click("#gen-form button[type=submit]")
    page.wait_for_selector("#gen-out .warning")
    shot(page, shots, "warning")
    d = call(api, "POST", "/api/generate", {"prompt": PROMPT, "max_new_tokens": 3, "chat": False,
                                            "edits": [{"type": "clamp", "site": "layers.1.resid_post", "value": 1e30}]})
    assert page.locator("#gen-out .warning").all_text_contents() == d["warnings"] and d["warnings"]


# ---- what every panel shares: shareable URLs, downloads, jobs, keyboard, 1280 px -------------------

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_shared_url_reproduces_the_view(page, browser, server, api, shots):
    page.fill("#run-prompt", "shared view")
    page.fill("#run-k", "3")
    page.click("#run-form button[type=submit]")
    page.wait_for_selector("#run-out tbody tr")
    url = page.url
    assert "#run?" in url and "go=run-form" in url and "run-k=3" in url
    tab(page, "generate")  # with an edit row: it travels in the URL too
    page.fill("#gen-prompt", PROMPT)
    page.fill("#gen-n", "5")
    page.click("#add-edit")
    row = page.locator("#edit-rows tr").nth(0)
    row.locator("select").select_option("clamp")
    row.locator("input").nth(0).fill("layers.1.mlp.neurons[3]")
    row.locator("input").nth(1).fill("6")
    page.click("#gen-form button[type=submit]")
    page.wait_for_selector("#gen-out .side")
    gen_url = page.url
    assert "#generate?" in gen_url
    tab(page, "run")
    assert page.url == url  # each tab keeps its own view's URL

    for u, wait in ((url, "#run-out tbody tr"), (gen_url, "#gen-out .side")):
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        fresh = ctx.new_page()
        fresh.goto(u)
        fresh.wait_for_selector(wait)
        if wait.startswith("#run"):
            d = call(api, "POST", "/api/run", {"prompt": "shared view", "top_k": 3, "chat": False})
            assert fresh.input_value("#run-prompt") == "shared view"
            assert titles(fresh, "#run-out tbody td:nth-child(2) .tok") == [r["token"] for r in d["top"]]
        else:
            d = call(api, "POST", "/api/generate", {"prompt": PROMPT, "max_new_tokens": 5, "chat": False, "edits": [
                {"type": "clamp", "site": "layers.1.mlp.neurons[3]", "value": 6}]})
            assert fresh.locator("#edit-rows tr").count() == 1
            assert fresh.locator("#gen-out .side .text").all_text_contents() == [PROMPT + d["baseline"],
                                                                                PROMPT + d["edited"]]
            shot(fresh, shots, "shared-url")
        ctx.close()


def test_results_download_as_the_api_json_and_a_png(page, api, shots):
    page.fill("#run-prompt", PROMPT)
    page.fill("#run-k", "4")
    page.click("#run-form button[type=submit]")
    page.wait_for_selector("#run-out tbody tr")
    with page.expect_download() as dl:
        page.click("#run-out .tools button:has-text('JSON')")
    assert dl.value.suggested_filename == "next-token.json"
    assert json.loads(Path(dl.value.path()).read_text()) == call(api, "POST", "/api/run",
                                                                {"prompt": PROMPT, "top_k": 4, "chat": False})
    with page.expect_download() as dl:
        page.click("#run-out .tools button:has-text('PNG')")
    png = Path(dl.value.path()).read_bytes()
    assert dl.value.suggested_filename == "next-token.png" and png.startswith(PNG)
    width = int.from_bytes(png[16:20], "big")
    card = page.locator("#run-out .card").bounding_box()["width"]
    assert abs(width - 2 * card) <= 4  # drawn at 2x the card's width
    (Path(shots) / "download.png").write_bytes(png)
    # the lens: a wide table in a scroll box; its PNG holds the whole table, not the visible part
    tab(page, "lens")
    page.fill("#lens-prompt", " ".join(["word"] * 40))
    page.click("#lens-form button[type=submit]")
    page.wait_for_selector("#lens-out table.lens td")
    with page.expect_download() as dl:
        page.click("#lens-out .tools button:has-text('PNG')")
    png = Path(dl.value.path()).read_bytes()
    table = page.evaluate("document.querySelector('#lens-out table.lens').scrollWidth")
    assert png.startswith(PNG) and int.from_bytes(png[16:20], "big") >= 2 * table


def test_a_job_shows_progress_and_can_be_cancelled(page, api, shots):
    page.evaluate("""() => { window.slowJob = busy(document.getElementById('run-form'), 'run-status', 'run-out',
        (st) => runJob('test/slow', {n: 3000}, st)); }""")
    page.wait_for_selector("#run-status progress")
    page.wait_for_function("document.querySelector('#run-status progress').value > 0")
    text = page.text_content("#run-status")
    assert "slow" in text and "/3000" in text
    shot(page, shots, "job-progress")
    assert page.locator("#run-form button[type=submit]").is_disabled()
    page.focus("#run-status button.cancel")  # by keyboard
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('run-status').textContent === 'cancelled'")
    assert not page.locator("#run-form button[type=submit]").is_disabled()
    jobs = call(api, "GET", "/api/jobs")["jobs"]
    assert [j["state"] for j in jobs if j["endpoint"] == "test/slow"][-1] == "cancelled"
    # leaving the page cancels the jobs it still waits for
    page.evaluate("() => { window.left = runJob('test/slow', {n: 3000}, null).catch(() => {}); }")
    page.wait_for_function("OPEN_JOBS.size === 1")
    job_id = page.evaluate("[...OPEN_JOBS][0]")
    page.reload()
    page.wait_for_selector("#model-info b")
    for _ in range(100):
        if call(api, "GET", f"/api/jobs/{job_id}")["state"] == "cancelled":
            break
        time.sleep(0.1)
    assert call(api, "GET", f"/api/jobs/{job_id}")["state"] == "cancelled"


def test_keyboard_reaches_every_tab_and_runs_a_form(page):
    names = page.locator("nav [role=tab]").evaluate_all("els => els.map(e => e.dataset.tab)")
    assert len(names) >= 10
    page.focus("nav [role=tab][data-tab=run]")
    for name in names[1:]:
        page.keyboard.press("ArrowRight")
        assert page.evaluate("document.activeElement.dataset.tab") == name
        assert "active" in page.get_attribute(f"#tab-{name}", "class")
        assert page.get_attribute(f"nav [data-tab={name}]", "aria-selected") == "true"
    page.keyboard.press("Home")
    assert page.evaluate("document.activeElement.dataset.tab") == "run"
    page.keyboard.press("Tab")  # into the panel: the prompt box first
    assert page.evaluate("document.activeElement.id") == "run-prompt"
    page.keyboard.type(" again")
    page.focus("#run-form button[type=submit]")
    page.keyboard.press("Enter")
    page.wait_for_selector("#run-out tbody tr")


def test_every_tab_fits_1280_pixels(page):
    page.fill("#run-prompt", " ".join(["word"] * 45))  # long inputs (tiny-llama: 256 tokens at most): wide rows
    page.click("#run-form button[type=submit]")
    page.wait_for_selector("#run-out tbody tr")
    tab(page, "lens")
    page.fill("#lens-prompt", " ".join(["word"] * 45))
    page.click("#lens-form button[type=submit]")
    page.wait_for_selector("#lens-out table.lens td")
    names = page.locator("nav [role=tab]").evaluate_all("els => els.map(e => e.dataset.tab)")
    for name in names:
        tab(page, name)
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280, name
    # the lens table scrolls inside its box with its header row and first and last columns in view
    tab(page, "lens")
    box = page.locator("#lens-out .scroll")
    box.evaluate("b => { b.scrollLeft = b.scrollWidth; b.scrollTop = b.scrollHeight; }")
    first = page.locator("#lens-out table.lens tbody th").first.bounding_box()
    head = page.locator("#lens-out table.lens thead th").nth(3).bounding_box()
    wrap = box.bounding_box()
    assert first["x"] >= wrap["x"] - 1 and head["y"] >= wrap["y"] - 1
    last = page.locator("#lens-out table.lens tbody tr").first.locator("td").last.bounding_box()
    assert last["x"] + last["width"] <= wrap["x"] + wrap["width"] + 1
