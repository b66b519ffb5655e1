"""The studio: every JSON endpoint answers with its documented keys and the same numbers as the
library call behind it; errors map to 400/422/501; the page and its files are served; the CLI
refuses a non-loopback host. Tiny random llama only (fast); no real server is started."""

from __future__ import annotations

import sys
import threading

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from click.testing import CliRunner  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from lmscope.artifacts import save_artifact  # noqa: E402
from lmscope.cli.studio import is_loopback, studio  # noqa: E402
from lmscope.errors import SiteError  # noqa: E402
from lmscope.interventions import Add, Set, Zero  # noqa: E402
from lmscope.web import create_app  # noqa: E402

from conftest import make_tiny  # noqa: E402

PROMPT = "hello world"


@pytest.fixture(scope="module")
def lm():
    return make_tiny("llama")


@pytest.fixture(scope="module")
def atlas_file(lm, tmp_path_factory):
    from lmscope.atlas import AtlasConfig, build_atlas

    path = tmp_path_factory.mktemp("atlas") / "tiny.sqlite"
    build_atlas(lm, AtlasConfig(k=5), path=path).close()
    return path


@pytest.fixture(scope="module")
def client(lm, atlas_file):
    with TestClient(create_app("tiny", model=lm, atlas_path=atlas_file)) as c:
        yield c


def post(client, path, body, status=200):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    return r.json()


# ---- endpoints -------------------------------------------------------------------------------

def test_info(client, lm):
    d = client.get("/api/info").json()
    assert {"name", "family", "n_layers", "d_model", "d_mlp", "d_vocab", "chat_template", "sites", "studio"} <= set(d)
    assert d["n_layers"] == lm.n_layers and d["name"] == "tiny-llama"
    assert d["studio"]["max_new_tokens"] == 128 and d["studio"]["atlas_available"] is True


def test_run_matches_library(client, lm):
    d = post(client, "/api/run", {"prompt": PROMPT, "top_k": 7})
    assert set(d) == {"model", "prompt", "chat", "n_tokens", "tokens", "top"}
    assert len(d["top"]) == 7 and set(d["top"][0]) == {"token", "id", "prob", "logit"}
    assert d["n_tokens"] == len(d["tokens"]) == len(PROMPT) + 1  # 1 char per token + BOS
    want = lm.run(PROMPT).top_k(lm, 7)
    assert [r["id"] for r in d["top"]] == [r["id"] for r in want]
    assert [r["prob"] for r in d["top"]] == pytest.approx([r["prob"] for r in want], abs=1e-6)


def test_generate_without_edits_is_plain_generation(client, lm):
    d = post(client, "/api/generate", {"prompt": PROMPT, "max_new_tokens": 6})
    assert set(d) == {"model", "prompt", "chat", "max_new_tokens", "edits", "baseline", "edited"}
    assert d["edits"] == [] and d["baseline"] == d["edited"] == lm.generate(PROMPT, max_new_tokens=6).texts[0]


def test_generate_clamp_and_zero_are_the_library_edits(client, lm):
    site = "layers.1.mlp.neurons[3,5]"
    body = {"prompt": PROMPT, "max_new_tokens": 6,
            "edits": [{"type": "clamp", "site": site, "value": 40.0}, {"type": "zero", "site": "layers.2.attn_out"}]}
    d = post(client, "/api/generate", body)
    want = lm.generate(PROMPT, max_new_tokens=6, edits=[Set(site=site, value=40.0), Zero(site="layers.2.attn_out")])
    assert d["edited"] == want.texts[0]
    assert d["baseline"] == lm.generate(PROMPT, max_new_tokens=6).texts[0]
    assert d["edited"] != d["baseline"]  # the edits reached the model
    assert d["edits"][0] == {"type": "clamp", "site": site, "value": 40.0, "scale": 1.0}


def test_generate_add_vector_file(client, lm, tmp_path):
    v = torch.randn(lm.d_model) * 3
    path = save_artifact(tmp_path / "v.safetensors", {"layers.1": v}, kind="vector", model=lm, meta={"layer": 1})
    body = {"prompt": PROMPT, "max_new_tokens": 5,
            "edits": [{"type": "add", "site": "layers.1.resid_post", "vector_file": str(path), "scale": 2.0}]}
    d = post(client, "/api/generate", body)
    want = lm.generate(PROMPT, max_new_tokens=5, edits=[Add(site="layers.1.resid_post", vector=v, scale=2.0)])
    assert d["edited"] == want.texts[0] != d["baseline"]
    # the same file at a layer it has no vector for: a 400 naming what it holds
    body["edits"][0]["site"] = "layers.2.resid_post"
    assert "layers.1" in post(client, "/api/generate", body, 400)["error"]


def test_vector_file_of_another_model_is_refused(client, tmp_path):
    other = make_tiny("qwen2")  # same widths, another name
    path = save_artifact(tmp_path / "o.safetensors", {"layers.1": torch.ones(other.d_model)}, kind="vector", model=other)
    body = {"prompt": PROMPT, "max_new_tokens": 2,
            "edits": [{"type": "add", "site": "layers.1.resid_post", "vector_file": str(path)}]}
    err = post(client, "/api/generate", body, 400)["error"]
    assert "tiny-qwen2" in err and "tiny-llama" in err


def test_out_of_range_layer_is_400_with_the_lmscope_message(client, lm):
    with pytest.raises(SiteError) as e:
        lm.sites("layers.99.resid_post")
    body = {"prompt": PROMPT, "edits": [{"type": "zero", "site": "layers.99.resid_post"}]}
    assert post(client, "/api/generate", body, 400) == {"error": str(e.value)}
    assert "99" in str(e.value)


@pytest.mark.parametrize("body, status", [
    ({"prompt": PROMPT, "edits": [{"type": "clamp", "site": "layers.1.resid_post"}]}, 400),  # clamp without value
    ({"prompt": PROMPT, "edits": [{"type": "add", "site": "layers.1.resid_post"}]}, 400),  # nothing to add
    ({"prompt": PROMPT, "edits": [{"type": "scale", "site": "layers.1.resid_post"}]}, 422),  # unknown type
    ({"prompt": PROMPT, "max_new_tokens": 129}, 422),  # over the cap
    ({"prompt": ""}, 422),
    ({"prompt": PROMPT, "typo": 1}, 422),  # unknown field
    ({"prompt": PROMPT, "chat": True}, 400),  # the tiny tokenizer has no chat template
])
def test_generate_bad_requests(client, body, status):
    d = post(client, "/api/generate", body, status)
    assert ("error" in d) if status == 400 else ("detail" in d)


def test_logit_lens(client, lm):
    d = post(client, "/api/logit_lens", {"prompt": PROMPT, "targets": ["a", "b"], "top_k": 3})
    assert {"model", "prompt", "lens", "tokens", "layers", "top_k", "cells", "targets", "kl_per_layer"} <= set(d)
    n_pos = len(d["tokens"])
    assert d["layers"] == list(range(lm.n_layers)) and len(d["cells"]) == lm.n_layers * n_pos
    cell = d["cells"][-1]
    assert (cell["layer"], cell["pos"]) == (lm.n_layers - 1, n_pos - 1) and len(cell["top"]) == 3
    # the last layer at the last position is the model's own next-token distribution
    top = lm.run(PROMPT).top_k(lm, 1)[0]
    assert cell["top"][0][0] == top["token"] and cell["top"][0][1] == pytest.approx(top["prob"], abs=1e-5)
    assert [t["token"] for t in d["targets"]] == ["a", "b"] and len(d["targets"][0]["prob"]) == lm.n_layers
    assert post(client, "/api/logit_lens", {"prompt": PROMPT, "targets": [""]}, 400)["error"]


def test_neuron(client, lm):
    from lmscope.atlas import decode_neuron

    d = client.get("/api/neuron/-1/7?k=4").json()
    assert set(d) == {"model", "layer", "neuron", "k", "in_gate", "in_up", "out", "out_bottom"}
    assert (d["layer"], d["neuron"]) == (lm.n_layers - 1, 7) and len(d["out"]) == 4
    want = decode_neuron(lm, lm.n_layers - 1, 7, 4)
    assert [r["token"] for r in d["out"]] == [t for t, _ in want["out"]]
    assert [r["score"] for r in d["in_gate"]] == pytest.approx([s for _, s in want["in_gate"]])
    r = client.get(f"/api/neuron/0/{lm.d_mlp}")
    assert r.status_code == 400 and str(lm.d_mlp) in r.json()["error"]
    assert client.get("/api/neuron/x/1").status_code == 422


def test_atlas_search(client, lm):
    from lmscope.atlas import decode_neuron

    token = decode_neuron(lm, 1, 5, 1)["out"][0][0]
    d = client.get(f"/api/atlas/search?q={token}&kind=out&limit=200").json()
    assert set(d) == {"model", "query", "kind", "atlas", "results"}
    assert {"layer", "neuron", "kind", "rank", "token", "score", "n_match", "top"} <= set(d["results"][0])
    assert all(r["kind"] == "out" for r in d["results"])
    assert any((r["layer"], r["neuron"]) == (1, 5) for r in d["results"])
    assert client.get("/api/atlas/search?q=").status_code == 422


def test_missing_atlas_is_a_clear_400(lm, tmp_path):
    with TestClient(create_app("tiny", model=lm, atlas_path=tmp_path / "none.sqlite")) as c:
        assert c.get("/api/info").json()["studio"]["atlas_available"] is False
        r = c.get("/api/atlas/search?q=dog")
        assert r.status_code == 400 and "atlas build" in r.json()["error"]


def test_missing_module_is_501(client, monkeypatch):
    monkeypatch.setitem(sys.modules, "lmscope.lens", None)  # import now raises ImportError
    r = client.post("/api/logit_lens", json={"prompt": PROMPT})
    assert r.status_code == 501 and "lmscope.lens" in r.json()["error"]


def test_concurrent_requests_are_serialised(client, lm):
    want = lm.generate(PROMPT, max_new_tokens=4).texts[0]
    body = {"prompt": PROMPT, "max_new_tokens": 4, "edits": [{"type": "zero", "site": "layers.0.attn_out"}]}
    edited = post(client, "/api/generate", body)["edited"]
    out: list = []

    def go(i):
        out.append((i, post(client, "/api/generate", body if i % 2 else {"prompt": PROMPT, "max_new_tokens": 4})))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(out) == 6
    for i, d in out:
        assert d["baseline"] == want and d["edited"] == (edited if i % 2 else want)


# ---- page, hosts, CLI --------------------------------------------------------------------------

def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "lmscope studio" in page.text and "/static/app.js" in page.text and "/static/style.css" in page.text
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    for endpoint in ("/api/info", "/api/run", "/api/generate", "/api/logit_lens", "/api/atlas/search", "/api/neuron/"):
        assert endpoint in js.text  # every tab is backed by its JSON endpoint
    assert client.get("/static/style.css").status_code == 200
    assert "http" not in page.text.replace("http://www.w3.org", "")  # nothing loaded from the network
    assert client.get("/docs").status_code == 404  # Swagger UI would need a CDN


def test_foreign_host_header_is_refused(client):
    assert client.get("/api/info", headers={"host": "evil.example:8765"}).status_code == 400
    assert client.get("/api/info", headers={"host": "127.0.0.1:8765"}).status_code == 200
    assert client.get("/api/info", headers={"host": "localhost:8765"}).status_code == 200


def test_cli_refuses_remote_host_without_flag():
    r = CliRunner().invoke(studio, ["tiny", "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "--allow-remote" in r.output and "not a loopback" in r.output


def test_cli_wires_model_app_and_uvicorn(lm, monkeypatch):
    import json

    import uvicorn

    import lmscope.cli.studio as mod

    seen = {}
    monkeypatch.setattr(mod, "load_model", lambda name, device, dtype: lm)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    r = CliRunner().invoke(studio, ["tiny", "--port", "9001", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"model": "tiny-llama", "url": "http://127.0.0.1:9001/", "host": "127.0.0.1",
                                    "port": 9001}
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 9001) and seen["app"].state.model is lm
    r = CliRunner().invoke(studio, ["tiny", "--host", "0.0.0.0", "--allow-remote"])
    assert r.exit_code == 0 and seen["host"] == "0.0.0.0"
    with TestClient(seen["app"]) as c:  # remote mode: any Host header is accepted
        assert c.get("/api/info", headers={"host": "studio.lan"}).status_code == 200


@pytest.mark.parametrize("host, ok", [("127.0.0.1", True), ("127.1.2.3", True), ("localhost", True), ("::1", True),
                                      ("[::1]", True), ("0.0.0.0", False), ("192.168.1.5", False), ("::", False),
                                      ("example.com", False)])
def test_is_loopback(host, ok):
    assert is_loopback(host) is ok


def test_studio_command_is_registered():
    from lmscope.cli.main import cli

    assert "studio" in cli.commands
    r = CliRunner().invoke(cli, ["studio", "--help"])
    assert r.exit_code == 0 and "--allow-remote" in r.output and "127.0.0.1" in r.output
