"""Studio jobs: every long endpoint's job form gives the plain answer; progress, errors and
cancellation (waiting and running) behave as the page relies on."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import make_tiny
from fastapi.testclient import TestClient
from pydantic import Field

from lmscope.engine.progress import steps
from lmscope.web import create_app
from lmscope.web.bodies import _Body
from lmscope.web.jobs import Jobs
from lmscope.web.worker import Worker


class SlowBody(_Body):
    n: int = Field(50, ge=1, le=10_000)
    sleep: float = Field(0.02, ge=0, le=1)


@pytest.fixture(scope="module")
def lm():
    return make_tiny("llama")


@pytest.fixture(scope="module")
def client(lm):
    app = create_app("tiny", model=lm, max_waiting=3)
    gate = threading.Event()

    def slow(req: SlowBody):  # a long job made of progress steps, like a family loop
        for _ in steps(range(req.n), desc="slow", unit="step"):
            time.sleep(req.sleep)
        return {"n": req.n}

    def blocked(req: SlowBody):  # holds the model until the test opens the gate
        gate.wait(30)
        return {"n": req.n}

    app.state.studio.post("test/slow", SlowBody, slow)
    app.state.studio.post("test/blocked", SlowBody, blocked)
    with TestClient(app) as c:
        c.gate = gate
        yield c


def wait(client, job_id: str, states=("done", "error", "cancelled"), timeout: float = 60) -> dict:
    t0 = time.monotonic()
    while True:
        j = client.get(f"/api/jobs/{job_id}").json()
        if j["state"] in states:
            return j
        assert time.monotonic() - t0 < timeout, j
        time.sleep(0.02)


def start(client, path: str, body: dict) -> dict:
    r = client.post(f"/api/jobs/{path}", json=body)
    assert r.status_code == 202, r.text
    return r.json()


def test_a_job_answers_what_the_plain_request_answers(client):
    body = {"prompt": "hello world", "top_k": 4}
    j = wait(client, start(client, "run", body)["id"])
    assert j["state"] == "done" and j["endpoint"] == "run" and j["seconds"] >= 0
    assert j["result"] == client.post("/api/run", json=body).json()


def test_every_long_endpoint_has_a_job_form(client):
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/api/run", "/api/generate", "/api/logit_lens", "/api/circuit", "/api/sae", "/api/relations/fit"):
        assert p in paths and "/api/jobs/" + p[len("/api/"):] in paths, p


def test_progress_is_visible_while_it_runs(client):
    j = start(client, "test/slow", {"n": 60, "sleep": 0.05})
    t0, seen = time.monotonic(), None
    while time.monotonic() - t0 < 30:
        v = client.get(f"/api/jobs/{j['id']}").json()
        if v["state"] == "running" and v["progress"] and v["progress"][0]["done"] > 0:
            seen = v["progress"][0]
            break
        time.sleep(0.02)
    assert seen is not None and seen["desc"] == "slow" and seen["total"] == 60 and seen["unit"] == "step"
    assert wait(client, j["id"])["result"] == {"n": 60}


def test_a_running_job_stops_when_cancelled_and_frees_the_model(client):
    j = start(client, "test/slow", {"n": 5000, "sleep": 0.01})  # ~50 s if not cancelled
    wait(client, j["id"], states=("running",))
    t0 = time.monotonic()
    r = client.delete(f"/api/jobs/{j['id']}")
    assert r.status_code == 200
    end = wait(client, j["id"])
    assert end["state"] == "cancelled" and "result" not in end and time.monotonic() - t0 < 10
    assert client.post("/api/run", json={"prompt": "hi"}).status_code == 200  # the worker is free again


def test_a_waiting_job_leaves_the_queue_when_cancelled(client):
    client.gate.clear()
    first = start(client, "test/blocked", {"n": 1})
    second = start(client, "run", {"prompt": "hello"})
    assert client.get(f"/api/jobs/{second['id']}").json()["state"] == "waiting"
    assert client.delete(f"/api/jobs/{second['id']}").json()["state"] == "cancelled"
    client.gate.set()
    assert wait(client, first["id"])["result"] == {"n": 1}
    assert wait(client, second["id"])["state"] == "cancelled"
    listed = {j["id"]: j for j in client.get("/api/jobs").json()["jobs"]}
    assert listed[second["id"]]["state"] == "cancelled" and "result" not in listed[first["id"]]


def test_a_failing_job_carries_the_plain_error(client):
    body = {"prompt": "x " * 1900}  # under the character limit, over the token limit: 400 with a message
    plain = client.post("/api/run", json=body)
    assert plain.status_code == 400
    j = wait(client, start(client, "run", body)["id"])
    assert j["state"] == "error" and j["status"] == 400 and j["error"] == plain.json()["error"]


def test_a_bad_body_is_refused_before_any_job(client):
    r = client.post("/api/jobs/run", json={"prompt": "hi", "top_k": "5"})
    assert r.status_code == 422 and "top_k" in r.json()["error"]


def test_an_unknown_job_is_404_with_a_message(client):
    for r in (client.get("/api/jobs/j999999"), client.delete("/api/jobs/nope")):
        assert r.status_code == 404 and "never ran" in r.json()["error"]


def test_a_full_queue_refuses_jobs_too(client):
    client.gate.clear()
    held = [start(client, "test/blocked", {"n": 1})]
    try:
        for _ in range(3):  # max_waiting=3
            held.append(start(client, "test/blocked", {"n": 1}))
        r = client.post("/api/jobs/run", json={"prompt": "hi"})
        assert r.status_code == 503 and "busy" in r.json()["error"] and "Retry-After" in r.headers
    finally:
        client.gate.set()
        for j in held:
            wait(client, j["id"])


def test_finished_jobs_are_kept_up_to_a_bound():
    w = Worker("test", 8)
    jobs = Jobs(lambda e: (500, str(e)), keep=2)
    started = [jobs.start(w, "x", lambda r: r, i) for i in range(4)]
    for j in started:
        t0 = time.monotonic()
        while j.state != "done":
            assert time.monotonic() - t0 < 10
            time.sleep(0.01)
    assert [j["id"] for j in jobs.list()] == [started[2].id, started[3].id]
    with pytest.raises(LookupError):
        jobs.get(started[0].id)
    w.close()
