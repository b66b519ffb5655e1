"""The studio's Steering panel: `/api/vectors/build` is `make_vector` on a shipped contrast set or on
texts typed in the page (as `from_pairs`, `from_completions`, `from_sets` build them), kept in the
session by id (the last few); `/save` writes one only inside the vector folders, never over another
file unless asked and never over a non-vector; `/upload` validates exactly as `Vector.load` (never
unpickling, no temporary path in messages); `/sweep` is `steering.sweep` with the task `lmscope
vector sweep` would score, as a job with progress and cancel; `/generate` is the steered text next
to the baseline and a random direction of the same norm; bad bodies are 422 before the queue; and,
in a real browser, the tab builds a vector, shows its card, draws the sweep as a layer x coefficient
heatmap whose every cell is the API's number in each metric, marks the recommended cell, moves
between cells by keyboard and generates from one, saves, lists and uploads vector files, and never
reads token text as HTML.
"""

from __future__ import annotations

import base64
import json
import pickle
import re
import tempfile
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import live
import torch
from conftest import make_tiny
from fastapi.testclient import TestClient

import lmscope
from lmscope.datasets.contrast import (
    BUILTIN,
    from_completions,
    from_pairs,
    from_sets,
    load_contrast,
)
from lmscope.engine.artifacts import save_artifact
from lmscope.engine.sites import RESID_KINDS
from lmscope.vectors import steering
from lmscope.vectors.steering import (
    SweepConfig,
    default_layers,
    default_task,
    make_task,
    random_vector,
    steer_edits,
    with_resid_norms,
)
from lmscope.vectors.vector import (
    ExtractConfig,
    Vector,
    best_separating_layer,
    make_vector,
)
from lmscope.web import create_app
from lmscope.web import vectors as panel
from lmscope.web.studio import json_safe

HOSTILE = "<img src=x onerror=window.__xss=1>"
POS, NEG = ["I love it", "what a joy", "so good", "great day"], ["I hate it", "what a pain", "so bad", "awful day"]
TYPED = {"format": "pairs", "positive": POS, "negative": NEG}
SWEEP = {"layers": [0, 2], "coefs": [0.25, 0.5], "n_eval": 3, "n_neutral": 4, "gen_tokens": 4, "n_gen": 2}


@pytest.fixture(scope="module")
def lm():
    return make_tiny("llama")


@pytest.fixture(scope="module")
def truth(lm) -> Vector:
    """The truthfulness vector of the first 12 items, as the build below asks for it."""
    return make_vector(lm, load_contrast("truthfulness").head(12), ExtractConfig(), held_out=0.25, seed=1)[0]


@pytest.fixture(scope="module")
def lab(lm, truth, tmp_path_factory):
    """root: a vector of this model, one made for another model, an LRE-kind artifact, junk, and a
    link to a folder outside (which holds a vector of this model)."""
    root = tmp_path_factory.mktemp("vectors")
    truth.save(root / "truth.safetensors")
    truth.save(root / "foreign.safetensors")
    side = root / "foreign.safetensors.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "model": "another-model"}))
    save_artifact(root / "lre.safetensors", {"w": torch.ones(3)}, kind="lre", model=lm)
    (root / "junk.safetensors").write_bytes(b"not safetensors")
    (root / "junk.safetensors.json").write_text("[1, 2]")
    outside = tmp_path_factory.mktemp("outside")
    truth.save(outside / "out.safetensors")
    (root / "link").symlink_to(outside)
    return root


@pytest.fixture(scope="module")
def client(lm, lab):
    with TestClient(create_app("tiny", model=lm, vector_dirs=[lab])) as c:
        yield c


def post(client, what: str, body: dict, status: int = 200) -> dict:
    r = client.post(f"/api/vectors/{what}", json=body)
    assert r.status_code == status, r.text
    return r.json()


def done(client) -> int:
    return client.get("/api/info").json()["studio"]["queue"]["done"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---- the API: vectors ------------------------------------------------------------------------------

def test_info_lists_the_shipped_sets_the_tasks_and_the_bounds(client):
    s = client.get("/api/info").json()["studio"]
    assert [d["name"] for d in s["vector_datasets"]] == list(BUILTIN)
    for d in s["vector_datasets"]:
        data = load_contrast(d["name"])
        assert (d["aliases"], d["format"], d["n"], d["task"]) == (list(BUILTIN[d["name"]]), data.format, len(data),
                                                                  default_task(d["name"]))
        assert d["chat"] is False  # the tiny model has no chat template
    assert s["vector_tasks"] == list(steering.TASKS) and panel.SITES == RESID_KINDS
    assert s["steering_limits"] == panel.LIMITS and s["steering_auto_layers"] == list(default_layers(3, 4))


def card_of(lm, v: Vector, layer: int, k: int = 8) -> dict:
    """What the card says of `v`, computed here from the library."""
    sep = {int(x): s for x, s in v.meta["evaluation"]["separation"].items()}
    norms, resid = v.norm(), v.resid_norms
    return {"layers": [{"layer": x, "norm": norms[x], "relative_norm": norms[x] / resid[x], **sep[x]} for x in v.layers],
            "best_layer": best_separating_layer(sep, 0.1, 0.85, lm.n_layers),
            "top_tokens": {"layer": layer, **v.top_tokens(lm, layer, k)}}


def test_a_build_from_a_shipped_set_is_make_vector(client, lm, truth, lab):
    d = post(client, "build", {"dataset": "truth", "limit": 12, "seed": 1})
    want = card_of(lm, truth, best_separating_layer(truth.meta["evaluation"]["separation"], 0.1, 0.85, 3))
    assert {k: d[k] for k in want} == json_safe(want)
    assert (d["label"], d["origin"], d["dataset"], d["format"], d["task"], d["chat"]) == (
        "truthfulness (first 12)", "built", "truthfulness", "pairs", "loglik", False)
    assert d["split"] == {"held_out": 0.25, "seed": 1, "n_train": 9, "n_test": 3} and d["seconds"] > 0
    post(client, "save", {"vector": d["vector"], "path": "built.safetensors"})
    back = Vector.load(lab / "built.safetensors", model=lm)
    assert back.layers == truth.layers and all(back[x].equal(truth[x]) for x in truth.layers)
    other = post(client, "card", {"vector": d["vector"], "layer": -1, "k": 3})
    assert other["top_tokens"] == json_safe({"layer": 2, **truth.top_tokens(lm, 2, 3)})


@pytest.mark.parametrize("typed, data", [
    (TYPED, from_pairs(list(zip(POS, NEG, strict=True)), name="typed")),
    ({"format": "completions", "prompts": ["Q?"], "positive": POS, "negative": NEG, "name": "mine"},
     from_completions([("Q?", p, n) for p, n in zip(POS, NEG, strict=True)], name="mine")),
    ({"format": "completions", "prompts": ["a", "b", "c", "d"], "positive": POS, "negative": NEG},
     from_completions(list(zip("abcd", POS, NEG, strict=True)), name="typed")),
    ({"format": "sets", "positive": POS, "negative": NEG[:3]}, from_sets(POS, NEG[:3], name="typed")),
])
def test_a_build_from_typed_texts_is_make_vector_on_the_same_set(client, lm, lab, typed, data):
    d = post(client, "build", {"typed": typed, "method": "mean-diff", "position": "mean", "held_out": 0.5})
    want, _ = make_vector(lm, data, ExtractConfig(position="mean"), held_out=0.5, seed=0)
    rows = [{"layer": x, "norm": n} for x, n in want.norm().items()]
    assert [{"layer": r["layer"], "norm": r["norm"]} for r in d["layers"]] == rows
    assert d["format"] == data.format and d["task"] == ("loglik" if data.paired else None)
    post(client, "save", {"vector": d["vector"], "path": "typed.safetensors", "overwrite": True})
    back = Vector.load(lab / "typed.safetensors", model=lm)
    assert all(back[x].equal(want[x]) for x in want.layers) and back.meta["split"]["full_sha256"] == data.sha256()


def test_pca_and_other_sites_reach_the_extraction(client, lm):
    d = post(client, "build", {"typed": TYPED, "method": "pca", "site": "mlp_out"})
    want, _ = make_vector(lm, from_pairs(list(zip(POS, NEG, strict=True)), name="typed"),
                          ExtractConfig(method="pca", site="mlp_out"))
    assert (d["method"], d["site"]) == ("pca", "mlp_out") and [r["norm"] for r in d["layers"]] == list(
        want.norm().values())


def test_the_session_keeps_the_last_vectors(lm, lab, monkeypatch):
    monkeypatch.setattr(panel, "KEEP", 2)
    with TestClient(create_app("tiny", model=lm, vector_dirs=[lab])) as c:
        ids = [post(c, "build", {"typed": TYPED})["vector"] for _ in range(3)]
        assert ids == ["vec-1", "vec-2", "vec-3"]
        assert [v["id"] for v in c.get("/api/vectors").json()["session"]] == ["vec-3", "vec-2"]
        d = post(c, "card", {"vector": "vec-1"}, 400)
        assert d["error"].startswith("No vector 'vec-1' in this studio session (it keeps the last 2")


def test_files_in_the_vector_folders_are_listed(client, lab):
    d = client.get("/api/vectors").json()
    files = {f["path"]: f for f in d["files"]}
    assert d["vector_dirs"] == [str(lab.resolve())]
    assert {"truth.safetensors", "foreign.safetensors"} <= set(files)
    assert not {"lre.safetensors", "junk.safetensors"} & set(files) and not any("out.safetensors" in p for p in files)
    assert files["truth.safetensors"]["usable"] and not files["foreign.safetensors"]["usable"]
    assert (files["truth.safetensors"]["layers"], files["truth.safetensors"]["dataset"]) == ([0, 1, 2], "truthfulness")


def test_the_card_of_a_file_is_its_vector(client, lm, truth):
    d = post(client, "card", {"path": "truth.safetensors", "layer": 1})
    assert {k: d[k] for k in ("layers", "best_layer", "top_tokens")} == json_safe(card_of(lm, truth, 1))
    assert (d["path"], d["origin"], d["label"], d["task"]) == ("truth.safetensors", "file", "truth.safetensors", "loglik")
    assert d["created"] is not None


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.safetensors", "nope.safetensors", "link/out.safetensors",
                                  "link/../../x", "\x00x", "a" * 1000, "truth", "."])
@pytest.mark.parametrize("what", ["card", "sweep", "generate"])
def test_vector_paths_outside_the_folders_get_one_message(client, lab, what, path):
    body = {"path": path, **({"layer": 0, "prompt": "x"} if what == "generate" else {})}
    d = post(client, what, body, 400)
    assert d["error"].startswith("No vector file ") and d["error"].endswith(
        f"in the studio's vector folders ({lab.resolve()}): give the path of a .safetensors file written by lmscope "
        f"(with its .json sidecar) inside one of them; relative paths start at {lab.resolve()}. `lmscope studio "
        "--vectors-dir DIR` adds a folder.")


def test_errors_about_files_inside_the_folders_name_no_server_path(client, lab):
    for path, want in (("lre.safetensors", "is a 'lre' artifact, expected 'vector'"),
                       ("foreign.safetensors", "was made for 'another-model', not 'tiny-llama'"),
                       ("junk.safetensors", "holds a JSON list")):
        d = post(client, "card", {"path": path}, 400)
        assert want in d["error"] and str(lab.resolve()) not in d["error"], d["error"]


# ---- saving and uploading ----------------------------------------------------------------------------

@pytest.mark.parametrize("save", ["../x.safetensors", "x.txt", "nodir/x.safetensors", "link/new.safetensors",
                                  "/tmp/x.safetensors", "\x00.safetensors", "link"])
def test_saves_outside_the_folders_are_refused(client, save):
    vec = post(client, "build", {"typed": TYPED})["vector"]
    d = post(client, "save", {"vector": vec, "path": save}, 400)
    assert d["error"].startswith("Cannot save a vector as ") and "inside the studio's vector folders" in d["error"]


def test_a_save_replaces_only_a_vector_and_only_when_asked(client, lm, lab):
    vec = post(client, "build", {"typed": TYPED})["vector"]
    post(client, "save", {"vector": vec, "path": "mine.safetensors"})
    before = (lab / "mine.safetensors").read_bytes()
    d = post(client, "save", {"vector": vec, "path": "mine.safetensors"}, 400)
    assert d["error"] == "'mine.safetensors' exists; pick another name, or set overwrite to replace it."
    d = post(client, "save", {"vector": vec, "path": "lre.safetensors", "overwrite": True}, 400)
    assert "is not a vector artifact" in d["error"] and Vector is not None
    assert (lab / "mine.safetensors").read_bytes() == before
    assert post(client, "save", {"vector": vec, "path": "mine.safetensors", "overwrite": True})["saved"] == \
           "mine.safetensors"
    assert post(client, "save", {"vector": "vec-999", "path": "x.safetensors"}, 400)["error"].startswith("No vector")


def upload_body(lab, name: str = "truth.safetensors", **files) -> dict:
    return {"name": name, "safetensors": b64(files.get("tensors", (lab / "truth.safetensors").read_bytes())),
            "sidecar": b64(files.get("sidecar", (lab / "truth.safetensors.json").read_bytes()))}


def test_an_upload_is_the_file_read_by_vector_load(client, lab):
    d = post(client, "upload", upload_body(lab))
    want = post(client, "card", {"path": "truth.safetensors"})
    assert d["origin"] == "uploaded" and d["vector"].startswith("vec-") and d["label"] == "truth.safetensors"
    assert {k: v for k, v in d.items() if k not in ("vector", "path", "origin")} == \
           {k: v for k, v in want.items() if k not in ("vector", "path", "origin")}
    assert any(v["id"] == d["vector"] and v["origin"] == "uploaded" for v in client.get("/api/vectors").json()["session"])


class Trap:
    def __reduce__(self):
        return (exec, ("import lmscope; lmscope._UNPICKLED = True",))


def _side(lab, **change) -> bytes:
    return json.dumps({**json.loads((lab / "truth.safetensors.json").read_text()), **change}).encode()


@pytest.mark.parametrize("files, want", [
    ({"sidecar": b"[1, 2]"}, "The sidecar truth.safetensors.json holds a JSON list, not an object"),
    ({"sidecar": b"\xff{}"}, "is not UTF-8 text (byte 0)"),
    ({"sidecar": b"{"}, "is not valid JSON"),
    ({"sidecar": "model"}, "was made for 'another-model', not 'tiny-llama'"),
    ({"sidecar": "kind"}, "is a 'lre' artifact, expected 'vector'"),
    ({"sidecar": "norms"}, "The sidecar of truth.safetensors has a field of the wrong type (ValueError)"),
    ({"sidecar": "negative"}, "The sidecar of truth.safetensors has resid_norms that are not {layer: positive number}"),
    ({"sidecar": "method"}, "or a method that is not text"),
    ({"tensors": pickle.dumps(Trap())}, "truth.safetensors is not a readable safetensors file"),
    ({"tensors": b"junk"}, "truth.safetensors is not a readable safetensors file"),
    ({"tensors": "shape"}, "truth.safetensors: layers.1 has shape (3,), the sidecar says d_model 64."),
])
def test_a_bad_upload_gets_vector_loads_message_without_a_server_path(client, lab, tmp_path, files, want):
    special = {"model": lambda: _side(lab, model="another-model"), "kind": lambda: _side(lab, kind="lre"),
               "norms": lambda: _side(lab, resid_norms={"0": "big"}),
               "negative": lambda: _side(lab, resid_norms={"0": -1.0}), "method": lambda: _side(lab, method=[1])}
    if files.get("sidecar") in special:
        files["sidecar"] = special[files["sidecar"]]()
    if files.get("tensors") == "shape":
        save_artifact(tmp_path / "s.safetensors", {"layers.1": torch.ones(3)}, kind="vector", model=client.app.state.model)
        files = {"tensors": (tmp_path / "s.safetensors").read_bytes()}
    d = post(client, "upload", upload_body(lab, **files), 400)
    assert want in d["error"], d["error"]
    assert "lmscope-upload-" not in d["error"] and tempfile.gettempdir() not in d["error"]
    assert not hasattr(lmscope, "_UNPICKLED")  # never unpickled


def test_an_upload_that_is_not_base64_or_too_large_is_refused(client, lab):
    d = post(client, "upload", {**upload_body(lab), "safetensors": "not base64!"}, 400)
    assert d["error"].startswith("The upload's safetensors and sidecar must be base64")
    r = client.post("/api/vectors/upload", json={**upload_body(lab), "safetensors": "A" * 300_000})
    assert r.status_code == 413 and "bytes" in r.json()["error"]


def test_a_sidecar_never_makes_the_studio_read_its_data_file(client, lab, tmp_path):
    """An uploaded sidecar naming a data file (`dataset_source`) that exists: the studio does not
    open it, so there is no default task and loglik has no data."""
    data = tmp_path / "mine.jsonl"
    data.write_text("\n".join(json.dumps({"positive": p, "negative": n}) for p, n in zip(POS, NEG, strict=True)))
    d = post(client, "upload", upload_body(lab, sidecar=_side(lab, dataset="mine", dataset_source=str(data))))
    assert d["task"] is None
    e = post(client, "sweep", {"vector": d["vector"], **SWEEP}, 400)["error"]
    assert e.startswith("This vector was made from data the studio cannot read") and "refusal, sycophancy" in e
    e = post(client, "sweep", {"vector": d["vector"], "task": "loglik", **SWEEP}, 400)["error"]
    assert e.startswith("The loglik task scores held-out pairs of the vector's own data")


# ---- sweep and generate --------------------------------------------------------------------------------

def test_the_sweep_is_the_library_sweep_with_the_clis_task(client, lm, truth):
    got = post(client, "sweep", {"path": "truth.safetensors", **SWEEP})
    task = make_task("loglik", data=load_contrast("truthfulness"), held_out=0.25, seed=1, n_eval=3, n_neutral=4,
                     chat=False)
    cfg = SweepConfig(layers=(0, 2), coefs=(0.25, 0.5), gen_tokens=4, n_gen=2)
    want = json_safe(steering.sweep(lm, truth, task, cfg).to_dict())
    assert {k: got[k] for k in want} == want
    assert got["path"] == "truth.safetensors" and got["task_detail"] == {"chat": False, "n_scored": 3,
                                                                           "neutral": list(task.neutral)}
    # the refusal task, the other goal, raw coefficients, the default layers
    body = {"path": "truth.safetensors", "task": "refusal", "goal": "decrease", "relative": False,
            "coefs": [-2.0, 2.0], "gen_tokens": 0, "n_eval": 2, "n_neutral": 2, "kl_max": 0.5}
    got = post(client, "sweep", body)
    task = make_task("refusal", data=load_contrast("truthfulness"), held_out=0.25, seed=1, n_eval=2, n_neutral=2,
                     chat=False)
    cfg = SweepConfig(layers=default_layers(3, 4), coefs=(-2.0, 2.0), relative=False, goal="decrease", kl_max=0.5,
                      gen_tokens=0)
    want = json_safe(steering.sweep(lm, truth, task, cfg).to_dict())
    assert {k: got[k] for k in want} == want and got["config"]["layers"] == [0, 1, 2]


def test_the_sweep_job_reports_progress_and_stops_when_cancelled(client, monkeypatch):
    slow = steering.generation_repetition

    def repetition(*a, **kw):
        time.sleep(0.3)
        return slow(*a, **kw)

    monkeypatch.setattr(steering, "generation_repetition", repetition)
    r = client.post("/api/jobs/vectors/sweep", json={"path": "truth.safetensors", **SWEEP, "layers": [0, 1, 2]})
    assert r.status_code == 202
    job = r.json()["id"]
    for _ in range(200):
        j = client.get(f"/api/jobs/{job}").json()
        if any(b["desc"] == "sweep" for b in j["progress"]):
            break
        time.sleep(0.05)
    bar = next(b for b in j["progress"] if b["desc"] == "sweep")
    assert j["state"] == "running" and bar["total"] == 6 and j["endpoint"] == "vectors/sweep"
    client.delete(f"/api/jobs/{job}")
    for _ in range(200):
        j = client.get(f"/api/jobs/{job}").json()
        if j["state"] != "running":
            break
        time.sleep(0.05)
    assert j["state"] == "cancelled" and "result" not in j
    assert post(client, "card", {"path": "truth.safetensors"})["path"] == "truth.safetensors"  # the model is free


@pytest.mark.parametrize("mode, coef, relative", [("add", 0.5, True), ("subtract", 0.25, True), ("add", 2.0, False),
                                                  ("ablate", 0.5, True)])
def test_generate_is_steered_next_to_the_baseline_and_a_random_direction(client, lm, truth, mode, coef, relative):
    body = {"path": "truth.safetensors", "layer": -2, "coef": coef, "mode": mode, "relative": relative,
            "prompt": "hello there", "max_new_tokens": 6, "seed": 3}
    d = post(client, "generate", body)
    v = with_resid_norms(lm, truth.at(1)) if relative and mode != "ablate" else truth
    rnd = random_vector(v, 1, 3)
    gen = [lm.generate("hello there", edits=e, max_new_tokens=6).texts[0]
           for e in ([], steer_edits(v, 1, coef, mode=mode, relative=relative),
                     steer_edits(rnd, 1, coef, mode=mode, relative=relative))]
    assert [d["baseline"], d["steered"], d["random"]] == gen and d["layer"] == 1
    if mode == "ablate":
        assert d["raw_scale"] is None and d["added_norm"] is None
    else:
        assert d["added_norm"] == pytest.approx(d["random_added_norm"], rel=1e-5)
        assert d["added_norm"] == pytest.approx(abs(d["raw_scale"]) * float(truth[1].norm()), rel=1e-6)
        if relative:
            assert d["relative_length"] == pytest.approx(coef, rel=1e-5)


def test_layers_the_vector_lacks_and_out_of_range_are_400(client, lm, lab):
    truth = Vector.load(lab / "truth.safetensors", model=lm)
    truth.at(1).save(lab / "one.safetensors")
    d = post(client, "generate", {"path": "one.safetensors", "layer": 2, "prompt": "x"}, 400)
    assert d["error"] == "The vector has no layer 2 (it holds 1)."
    d = post(client, "generate", {"path": "one.safetensors", "layer": 3, "prompt": "x"}, 400)
    assert d["error"] == "Layer 3 is out of range for tiny-llama (3 layers: 0..2, or -3..-1)."
    d = post(client, "sweep", {"path": "one.safetensors", **SWEEP}, 400)
    assert "The vector has no layer 0" in d["error"]
    # a one-layer vector sweeps its own layer by default
    assert post(client, "sweep", {"path": "one.safetensors", **SWEEP, "layers": None})["config"]["layers"] == [1]


def test_prompts_past_the_token_limit_are_400(lm, lab):
    with TestClient(create_app("tiny", model=lm, vector_dirs=[lab], max_prompt_tokens=8)) as c:
        d = post(c, "generate", {"path": "truth.safetensors", "layer": 1, "prompt": "a prompt of many tokens"}, 400)
        assert "tokens" in d["error"]
        d = post(c, "build", {"typed": {**TYPED, "positive": ["a long positive text", *POS[1:]]}}, 400)
        assert "tokens" in d["error"]


def test_chat_on_a_model_without_a_template_is_400(client):
    d = post(client, "build", {"typed": TYPED, "chat": True}, 400)
    assert "has no chat template" in d["error"]


@pytest.mark.parametrize("what, body, where", [
    ("build", {}, "give either dataset"),
    ("build", {"dataset": "sentiment", "typed": TYPED}, "give either dataset"),
    ("build", {"dataset": "/etc/passwd"}, "is a file path; the studio takes shipped contrast sets"),
    ("build", {"dataset": "my.jsonl"}, "is a file path"),
    ("build", {"dataset": "sentiment.jsonl"}, "is a file path"),
    ("build", {"dataset": "happy"}, "Unknown contrast set 'happy'; shipped: refusal_prompts"),
    ("build", {"dataset": "sentiment", "limit": 1}, "limit"),
    ("build", {"dataset": "sentiment", "limit": 129}, "limit"),
    ("build", {"dataset": "sentiment", "held_out": 0.9}, "held_out"),
    ("build", {"dataset": "sentiment", "method": "svd"}, "method"),
    ("build", {"dataset": "sentiment", "site": "logits"}, "site"),
    ("build", {"dataset": "sentiment", "layers": [1]}, "layers: Extra inputs are not permitted"),
    ("build", {"typed": {**TYPED, "negative": NEG[:3]}}, "pairs need as many negative texts as positive ones"),
    ("build", {"typed": {**TYPED, "prompts": ["p"]}}, "completions need prompts"),
    ("build", {"typed": {**TYPED, "format": "completions"}}, "completions need prompts"),
    ("build", {"typed": {**TYPED, "format": "completions", "prompts": ["a", "b"]}}, "give one prompt, or one per pair"),
    ("build", {"typed": {**TYPED, "positive": [" ", *POS[1:]]}}, "typed.positive.0"),
    ("build", {"typed": {**TYPED, "positive": ["x" * 1001, *POS[1:]]}}, "typed.positive.0"),
    ("build", {"typed": {**TYPED, "positive": ["x"] * 65, "negative": ["y"] * 65}}, "typed.positive"),
    ("build", {"typed": {**TYPED, "name": "../x"}}, "typed.name"),
    ("card", {}, "give the vector as either vector"),
    ("card", {"vector": "vec-1", "path": "truth.safetensors"}, "give the vector as either vector"),
    ("card", {"vector": "1"}, "vector: String should match pattern"),
    ("card", {"vector": "vec-1", "k": 21}, "k"),
    ("upload", {"name": "../x.safetensors", "safetensors": "AA==", "sidecar": "AA=="}, "name"),
    ("upload", {"name": ".x", "safetensors": "AA==", "sidecar": "AA=="}, "name"),
    ("save", {"vector": "vec-1"}, "path: Field required"),
    ("save", {"vector": "vec-1", "path": "x.safetensors", "overwrite": "yes"}, "overwrite"),
    ("sweep", {"vector": "vec-1", "coefs": []}, "coefs"),
    ("sweep", {"vector": "vec-1", "coefs": [9.0]}, "coefs.0"),
    ("sweep", {"vector": "vec-1", "coefs": ["0.5"]}, "coefs.0"),
    ("sweep", {"vector": "vec-1", "layers": list(range(9))}, "layers"),
    ("sweep", {"vector": "vec-1", "layers": [0, 1, 2, 3, 4], "coefs": [0.1 * i for i in range(1, 8)]},
     "35 (layer, coef) cells; the studio sweeps at most 32"),
    ("sweep", {"vector": "vec-1", "task": "happiness"}, "task"),
    ("sweep", {"vector": "vec-1", "kl_max": 0}, "kl_max"),
    ("sweep", {"vector": "vec-1", "n_eval": 33}, "n_eval"),
    ("sweep", {"vector": "vec-1", "gen_tokens": 33}, "gen_tokens"),
    ("sweep", {"vector": "vec-1", "random_checks": 5}, "random_checks: Extra inputs are not permitted"),
    ("generate", {"vector": "vec-1", "prompt": "x"}, "layer: Field required"),
    ("generate", {"vector": "vec-1", "layer": 1, "prompt": ""}, "prompt"),
    ("generate", {"vector": "vec-1", "layer": 1.0, "prompt": "x"}, "layer: Input should be a valid integer"),
    ("generate", {"vector": "vec-1", "layer": 1, "prompt": "x", "max_new_tokens": 65}, "max_new_tokens"),
    ("generate", {"vector": "vec-1", "layer": 1, "prompt": "x", "mode": "clamp"}, "mode"),
])
def test_bad_bodies_are_422_before_the_queue(client, what, body, where):
    before = done(client)
    d = post(client, what, body, 422)
    assert d["error"].startswith("Invalid request: ") and where in d["error"], d["error"]
    assert done(client) == before


def test_non_finite_coefficients_are_422(client):
    r = client.post("/api/vectors/generate", content=b'{"vector": "vec-1", "layer": 1, "prompt": "x", "coef": NaN}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "coef" in r.json()["error"]


def test_the_page_defaults_are_the_bodies_defaults(client):
    """What a fresh page sends is what the API does without those fields (one place states the defaults)."""
    page = client.get("/").text
    value = {k: re.search(rf'id="{k}"[^>]*value="([^"]*)"', page).group(1) for k in
             ("vec-limit", "vec-held", "vec-coefs", "vec-neval", "vec-nneutral", "vec-ngen", "vec-gentok", "vec-klmax",
              "vec-gen-coef", "vec-gen-n", "vec-seed")}
    build, sweep, gen = (m.model_fields for m in (panel.VectorBuildRequest, panel.VectorSweepRequest,
                                                    panel.VectorGenerateRequest))
    assert (int(value["vec-limit"]), float(value["vec-held"])) == (build["limit"].default, build["held_out"].default)
    assert [float(x) for x in value["vec-coefs"].split(",")] == sweep["coefs"].default
    assert [int(value[k]) for k in ("vec-neval", "vec-nneutral", "vec-ngen", "vec-gentok")] == [
        sweep[f].default for f in ("n_eval", "n_neutral", "n_gen", "gen_tokens")]
    assert float(value["vec-klmax"]) == sweep["kl_max"].default
    assert (float(value["vec-gen-coef"]), int(value["vec-gen-n"]), int(value["vec-seed"])) == (
        gen["coef"].default, gen["max_new_tokens"].default, gen["seed"].default)


# ---- the page, in a real browser (the pattern of test_relation_panel.py) ------------------------------

@pytest.fixture(scope="module")
def sync_api():
    return live.playwright()


@pytest.fixture(scope="module")
def page_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("page_vectors")


@pytest.fixture(scope="module")
def server(lm, page_dir):
    with live.serve(create_app("tiny", model=lm, vector_dirs=[page_dir])) as url:
        yield url


def js_num(x) -> str:
    """vectors.js `num`: 3 significant digits, exponent form below 1e-3 and from 1e5."""
    if x is None:
        return "n/a"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{x:.2e}")
    s = repr(float(f"{x:.3g}"))
    return s.removesuffix(".0")


def js_text(metric: str, v) -> str:
    if v is None:
        return "n/a"
    if metric == "effect":
        return ("+" if v > 0 else "") + js_num(v)
    return ("ok" if v else "out") if metric == "admissible" else js_num(v)


def shown_cells(page) -> list[list]:
    return page.locator("#vec-heat td[data-layer]").evaluate_all(
        "es => es.map(e => { const v = e.dataset.value; return [+e.dataset.layer, +e.dataset.coef, "
        "v === '' ? null : v === 'true' ? true : v === 'false' ? false : +v, e.textContent, e.className]; })")


def want_cells(d: dict, metric: str) -> list[list]:
    rec = d["recommended"]
    out = []
    for r in sorted(d["rows"], key=lambda r: (r["layer"], r["coef"])):
        v = r[metric]
        is_rec = rec is not None and (rec["layer"], rec["coef"]) == (r["layer"], r["coef"])
        cls = " ".join(c for c in ("" if r["admissible"] else "out", "rec" if is_rec else "") if c)
        out.append([r["layer"], r["coef"], v, js_text(metric, v) + (" \u2605" if is_rec else ""), cls])
    return out


def test_steering_tab_in_a_browser(sync_api, server, lm, page_dir, monkeypatch):
    # tokens "a".."e" decode to an HTML tag from here on: the page must show it as text
    decode = type(lm.tokenizer).decode
    monkeypatch.setattr(lm.tokenizer, "decode", lambda ids, skip_special_tokens=False: "".join(
        HOSTILE if c in "abcde" else c for c in decode(lm.tokenizer, ids)), raising=False)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=live.CHROMIUM)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server + "/#steering")
        assert "active" in page.get_attribute("#tab-steering", "class")
        page.wait_for_function(f"document.querySelectorAll('#vec-dataset option').length === {len(BUILTIN) + 1}")
        assert page.input_value("#vec-dataset") == "sentiment" and page.is_hidden("#vec-typed")

        # build from pairs typed into the page
        page.select_option("#vec-dataset", "")
        assert page.is_visible("#vec-typed") and page.is_hidden("#vec-prompts-box") and page.is_hidden("#vec-limit")
        page.fill("#vec-pos", "\n".join(POS) + "\n\n")
        page.fill("#vec-neg", "\n".join(NEG))
        with page.expect_response("**/api/jobs/vectors/build") as resp:
            page.click("#vec-build-form button[type=submit]")
        assert json.loads(resp.value.request.post_data)["typed"] == {**TYPED, "name": "typed"}
        page.wait_for_selector("#vec-card")
        card = post_card(page, server)
        assert page.input_value("#vec-source") == f"vector:{card['vector']}"
        assert page.locator("#vec-layers-table tbody th").all_text_contents()[0] == "0"
        norms = page.locator("#vec-layers-table tbody tr td:nth-child(2)").all_text_contents()
        assert norms == [js_num(r["norm"]) for r in card["layers"]]
        best = page.locator("#vec-layers-table tr.best").get_attribute("data-layer")
        assert int(best) == card["best_layer"]
        tops = page.locator("#vec-top .tok").all_text_contents()
        assert tops == [t["token"] for t in card["top_tokens"]["top"] + card["top_tokens"]["bottom"]]
        assert any(HOSTILE in t for t in tops)

        # save it into the vector folder; it is listed
        page.fill(".vec-save input[type=text]", "page.safetensors")
        with page.expect_response("**/api/vectors/save"):
            page.click(".vec-save button[type=submit]")
        page.wait_for_selector("#vec-save-out p")
        assert (page_dir / "page.safetensors").is_file()
        page.wait_for_selector("#vec-source option[value='path:page.safetensors']", state="attached")

        # sweep: every cell is the API's number, in every metric; the recommended cell is marked
        page.fill("#vec-layers", "0, 1, 2")
        page.fill("#vec-coefs", "-0.5, 0.25, 0.5")
        page.fill("#vec-gentok", "0")
        page.fill("#vec-nneutral", "4")
        page.fill("#vec-neval", "4")
        page.fill("#vec-klmax", "0.0047")
        with page.expect_response("**/api/jobs/vectors/sweep"):
            page.click("#vec-sweep-form button[type=submit]")
        page.wait_for_selector("#vec-heat td", timeout=120_000)
        d = page.evaluate("async () => (await (await fetch('/api/jobs')).json()).jobs.at(-1).id")
        d = page.evaluate(f"async () => (await (await fetch('/api/jobs/{d}')).json()).result")
        assert d["recommended"] is not None and any(not r["admissible"] for r in d["rows"])
        for metric in ("effect", "score", "kl", "repetition", "admissible"):
            page.select_option(".vec-metric", metric)
            assert shown_cells(page) == want_cells(d, metric), metric
        page.select_option(".vec-metric", "effect")
        heads = page.locator("#vec-heat thead th").all_text_contents()
        assert heads == ["layer \\ coef", "-0.5", "0.25", "0.5"]
        rec = page.locator("#vec-heat td.rec")
        assert rec.count() == 1 and rec.get_attribute("tabindex") == "0"
        assert page.locator("#vec-heat td[tabindex='0']").count() == 1

        # keyboard: from the recommended cell, arrows move, the readout follows, Enter generates there
        rec.focus()
        page.keyboard.press("Home")
        page.keyboard.press("ArrowRight")
        cell = page.evaluate("() => [+document.activeElement.dataset.layer, +document.activeElement.dataset.coef]")
        assert cell == [d["recommended"]["layer"], 0.25]
        assert page.text_content("#vec-cell").startswith(f"layer {cell[0]}, coef 0.25: score ")
        with page.expect_response("**/api/jobs/vectors/generate") as resp:
            page.keyboard.press("Enter")
        body = json.loads(resp.value.request.post_data)
        assert (body["layer"], body["coef"], body["vector"]) == (cell[0], 0.25, card["vector"])
        page.wait_for_selector("#vec-gen")
        g = page.evaluate("async () => { const js = (await (await fetch('/api/jobs')).json()).jobs; "
                          "return (await (await fetch('/api/jobs/' + js.at(-1).id)).json()).result; }")
        shown = {k: page.text_content(f"#vec-gen [data-kind={k}] .vec-text") for k in ("baseline", "steered", "random")}
        assert shown == {k: g[k] for k in shown} and (g["layer"], g["coef"]) == tuple(cell)
        assert page.get_attribute("#vec-heat td[aria-selected=true]", "data-coef") == "0.25"

        assert page.evaluate("document.documentElement.scrollWidth") <= 1280  # the tab fits the window

        # the saved file, picked from the list: its card; its texts again from a shared URL
        page.select_option("#vec-source", "path:page.safetensors")
        page.wait_for_function("document.querySelector('#vec-card h3').textContent.startsWith('page.safetensors')")
        assert page.locator(".vec-save").count() == 0  # a file is saved already
        with page.expect_response("**/api/jobs/vectors/generate"):
            page.click("#vec-gen-form button[type=submit]")
        page.wait_for_function("document.getElementById('vec-gen-status').textContent.endsWith(' s')")
        assert "vec-source=path%3Apage.safetensors" in page.url and page.url.endswith("go=vec-gen-form")
        other = browser.new_page(viewport={"width": 1280, "height": 900})
        with other.expect_response("**/api/jobs/vectors/generate") as resp:
            other.goto(page.url)
        want = {k: v for k, v in body.items() if k != "vector"} | {"path": "page.safetensors"}
        assert json.loads(resp.value.request.post_data) == want
        other.wait_for_selector("#vec-gen")
        assert [other.text_content(f"#vec-gen [data-kind={k}] .vec-text") for k in ("baseline", "steered", "random")] \
               == [g[k] for k in ("baseline", "steered", "random")]
        other.close()

        # the same file uploaded: the same vector
        page.set_input_files("#vec-up-file", str(page_dir / "page.safetensors"))
        page.set_input_files("#vec-up-side", str(page_dir / "page.safetensors.json"))
        with page.expect_response("**/api/vectors/upload") as resp:
            page.click(".vec-upload-form button[type=submit]")
        up = resp.value.json()
        page.wait_for_function(f"document.querySelector('#vec-card h3').textContent.startsWith('{up['vector']}')")
        assert up["origin"] == "uploaded" and page.input_value("#vec-source") == f"vector:{up['vector']}"
        assert [r["norm"] for r in up["layers"]] == [r["norm"] for r in card["layers"]]

        # an upload the server refuses: its message, as text
        page.set_input_files("#vec-up-side", files=[{"name": "x.json", "mimeType": "application/json",
                                                     "buffer": b"[1, 2]"}])
        page.click(".vec-upload-form button[type=submit]")
        page.wait_for_selector("#vec-card-out .error")
        assert "holds a JSON list" in page.text_content("#vec-card-out .error")
        assert page.evaluate("window.__xss") is None and page.locator("#tab-steering img").count() == 0
        browser.close()
        assert errors == []


def post_card(page, server) -> dict:
    """The card the page shows, asked again from the API for the chosen vector."""
    src = page.input_value("#vec-source")
    kind, _, ref = src.partition(":")
    return page.evaluate("async (b) => (await (await fetch('/api/vectors/card', {method: 'POST', headers: "
                         "{'Content-Type': 'application/json'}, body: JSON.stringify(b)})).json())", {kind: ref})


# ---- the real model -----------------------------------------------------------------------------

@pytest.mark.slow
def test_on_gemma_the_sentiment_vector_raises_the_score_and_its_reverse_lowers_it(tmp_path):
    """Built in the studio from the shipped sentiment pairs, the vector at a mid-late layer raises
    log p(positive words) / p(negative words) on neutral prompts; the same pairs with the sides
    swapped (typed into the page) give a vector that lowers it, scored on the same task."""
    m = lmscope.load("gemma-3-270m")
    data = load_contrast("sentiment").head(48)
    with TestClient(create_app("gemma-3-270m", model=m, vector_dirs=[tmp_path])) as c:
        forward = post(c, "build", {"dataset": "sentiment", "limit": 48})
        typed = {"format": "pairs", "positive": list(data.negative), "negative": list(data.positive), "name": "rev"}
        reverse = post(c, "build", {"typed": typed})
        sweep = {"task": "sentiment", "layers": [13], "coefs": [0.25], "gen_tokens": 0, "n_neutral": 8}
        up = post(c, "sweep", {"vector": forward["vector"], **sweep})
        down = post(c, "sweep", {"vector": reverse["vector"], **sweep})
    assert up["base"]["score"] == pytest.approx(down["base"]["score"])  # the same task and prompts
    assert up["rows"][0]["effect"] > 2.0 and down["rows"][0]["effect"] < -2.0, (up["rows"], down["rows"])
