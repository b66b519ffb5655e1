"""`lmscope sae ...` end to end on a tiny random llama (the model load is stubbed): a tiny SAE
trained through the CLI on a small text file, then eval, features, show, search and steer on
it; and the bad input each command refuses with one clear line."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
from conftest import make_tiny
from incli import call

SITE = "layers.1.resid_post"
DOCS = [f"The quick brown fox number {i} jumps over the lazy dog near river {i * 7}." for i in range(40)]
TRAIN = ["--sample-tokens", "0", "--total-tokens", "640", "--batch-size", "64", "--d-sae", "128", "--k", "4",
         "--warmup-steps", "2", "--eval-tokens", "200", "--window", "32"]


def _json(*argv: str) -> dict:
    code, out, err = call(*argv[:2], "--json", *argv[2:])  # before any "--"
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A tiny SAE trained through `sae train --json` (also writing its training curve), and its
    text file; then `sae features` run on it."""
    from lmscope.engine import loading

    root = tmp_path_factory.mktemp("sae-cli")
    text = root / "text.jsonl"
    text.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
    model = make_tiny("llama")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loading, "load", lambda *a, **k: model)
        mp.setenv("LMSCOPE_CACHE", str(root / "cache"))
        train = _json("sae", "train", "tiny", "--site", SITE, "--out", str(root / "out"), "--text", str(text), *TRAIN,
                      "--plot", str(root / "curve.png"))
        sae = root / "out" / SITE
        features = _json("sae", "features", str(sae), "--text", str(text), "--tokens", "600", "--window", "32",
                         "--top-n", "5", "--plot", str(root / "density.png"))
    return SimpleNamespace(root=root, text=text, sae=sae, train=train, features=features)


@pytest.fixture
def names(tiny_load, monkeypatch, tmp_path):
    """Every model load returns the tiny llama; the names asked for are recorded."""
    from lmscope.engine import loading

    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))
    asked: list[str] = []
    load = loading.load
    monkeypatch.setattr(loading, "load", lambda name, *a, **k: asked.append(name) or load(name, *a, **k))
    return asked


def test_train_saves_the_coder_with_its_card(lab):
    d = lab.train
    assert d["model"] == "tiny-llama" and d["out"] == str(lab.root / "out") and len(d["coders"]) == 1
    c = d["coders"][0]
    assert {"spec", "card", "train", "text", "n_activation_tokens", "path"} <= set(c)
    assert c["spec"]["site"] == SITE and c["spec"]["d_sae"] == 128 and c["spec"]["k"] == 4
    assert c["train"]["steps"] == 10 and c["train"]["config"]["batch_size"] == 64 and c["train"]["final"]["fvu"] > 0
    card = c["card"]
    assert {"variance_explained", "l0", "dead_fraction", "ce_loss_recovered", "kl_spliced", "worst_tokens"} <= set(card)
    assert card["site"] == SITE and 0 < card["l0"] <= 4 and card["n_tokens"] > 0
    assert c["path"] == str(lab.sae) and (lab.sae / "sae.safetensors").is_file()
    assert d["figures"] == [str(lab.root / "curve.png")] and (lab.root / "curve.png").stat().st_size > 1000


def test_train_prints_tables_and_streams(names, tmp_path):
    text = tmp_path / "t.jsonl"
    text.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[:20]), encoding="utf-8")
    code, out, err = call("sae", "train", "tiny", "--site", SITE, "--out", str(tmp_path / "o"), "--text", str(text),
                           "--activations", "stream", "--no-card", *TRAIN)
    assert code == 0, err
    assert "[1/2] loading tiny" in err and "[2/2] training sae topk at layers.1.resid_post" in err
    assert f"{SITE}: 10 steps, 640 tokens" in out and "saved in" in out
    assert (tmp_path / "o" / SITE / "sae.safetensors").is_file()


def test_resume_continues_from_the_checkpoint(lab, names, tmp_path):
    out = str(tmp_path / "o")
    code, _, err = call("sae", "train", "tiny", "--site", SITE, "--out", out, "--text", str(lab.text), *TRAIN,
                         "--resume")
    assert code == 1 and "needs a checkpoint" in err.splitlines()[-1]
    first = _json("sae", "train", "tiny", "--site", SITE, "--out", out, "--text", str(lab.text), *TRAIN,
                  "--checkpoint-every", "5", "--no-card")
    assert (tmp_path / "o" / "checkpoint" / "checkpoint.json").is_file()
    again = _json("sae", "train", "tiny", "--site", SITE, "--out", out, "--text", str(lab.text), *TRAIN,
                  "--checkpoint-every", "5", "--no-card", "--resume")
    assert again["coders"][0]["train"]["steps"] == first["coders"][0]["train"]["steps"] == 10
    code, _, err = call("sae", "train", "tiny", "--site", SITE, "--out", out, "--text", str(lab.text), *TRAIN,
                         "--k", "8", "--checkpoint-every", "5", "--resume")
    assert code == 1 and "other settings (k)" in err


def test_eval_uses_the_sae_s_own_model(lab, names):
    d = _json("sae", "eval", str(lab.sae), "--text", str(lab.text), "--tokens", "300", "--window", "32")
    assert names == ["tiny-llama"]  # MODEL not given: the sidecar's
    assert d["path"] == str(lab.sae) and d["site"] == SITE and d["d_sae"] == 128
    assert {"variance_explained", "l0", "dead_fraction", "dense_fraction", "ce_clean", "ce_spliced", "ce_zero",
            "ce_loss_recovered", "kl_spliced", "kl_zero", "worst_tokens", "text"} <= set(d)
    assert d["n_tokens"] == 300 and d["text"] == str(lab.text)
    code, out, err = call("sae", "eval", str(lab.sae), "other-name", "--tokens", "100", "--window", "32")
    assert code == 0, err
    assert names[-1] == "other-name" and "variance explained" in out and "held out from the shipped corpus" in out


def test_features_writes_stats_index_and_density(lab):
    d = lab.features
    assert d["d_sae"] == 128 and d["n_tokens"] == 600 and d["corpus"] == str(lab.text) and d["top_n"] == 5
    assert 0 <= d["dead_fraction"] <= 1 and len(d["most_frequent"]) == 10
    assert set(d["most_frequent"][0]) == {"feature", "frequency", "mean when active", "max"}
    assert d["files"] == {"stats": str(lab.sae / "features.safetensors"), "index": str(lab.sae / "features.sqlite"),
                          "density_plot": str(lab.root / "density.png")}
    assert all((lab.root / f).is_file() for f in d["files"].values())


def test_show_prints_the_page_and_writes_html_and_plot(lab, names, tmp_path):
    i = lab.features["most_frequent"][0]["feature"]
    d = _json("sae", "show", str(lab.sae), str(i), "--k", "5", "--html", str(tmp_path / "f.html"),
              "--plot", str(tmp_path / "h.png"))
    assert d["feature"] == i and d["site"] == SITE and d["fires"] > 0 and d["contexts"]
    assert {"tokens", "acts", "max_act", "max_index"} <= set(d["contexts"][0])
    assert d["histogram"]["counts"] and len(d["promoted"]) == len(d["suppressed"]) == 5
    assert len(d["nearest_features"]) == 5 and d["files"] == [str(tmp_path / "f.html"), str(tmp_path / "h.png")]
    assert (tmp_path / "f.html").read_text().startswith("<!doctype html>") and (tmp_path / "h.png").stat().st_size > 0
    code, out, err = call("sae", "show", str(lab.sae), str(i), "--color")
    assert code == 0, err
    assert "\x1b[" in out and f"feature {i} of the sae" in out and "max-activating contexts" in out
    code, out, err = call("sae", "show", "--no-color", str(lab.sae), "--", "-1")  # the last latent
    assert code == 0, err
    assert "\x1b[" not in out and "feature 127 of the sae" in out


def test_search_reads_only_the_index(lab, no_load):
    d = _json("sae", "search", str(lab.sae), "a b c", "--limit", "3")
    assert d["query"] == "a b c" and d["path"] == str(lab.sae / "features.sqlite") and 1 <= len(d["hits"]) <= 3
    assert {"feature", "score", "matched", "frequency", "max_act", "top_act", "top_logit"} <= set(d["hits"][0])
    code, out, _ = call("sae", "search", str(lab.sae), "zebra-nothing")
    assert code == 0 and "features matching" in out


def test_search_builds_a_missing_index_from_the_statistics(lab, names, tmp_path):
    copy = tmp_path / "sae"
    shutil.copytree(lab.sae, copy)
    (copy / "features.sqlite").unlink()
    d = _json("sae", "search", str(copy), "a")
    assert names == ["tiny-llama"] and (copy / "features.sqlite").is_file() and d["hits"]


def test_steer_reports_baseline_feature_and_control(lab, names):
    d = _json("sae", "steer", "--mode", "clamp", "--value", "3", "--prompt", "hello there", "--max-new-tokens", "3",
              "--reference", str(lab.text), str(lab.sae), "--", "-2")
    assert d["model"] == "tiny-llama" and d["feature"] == 126 and d["mode"] == "clamp" and d["site"] == SITE
    assert set(d["arms"]) == {"baseline", "feature", "random feature"} and d["prompts"] == ["hello there"]
    assert len(d["arms"]["feature"]["texts"]) == 1 and d["arms"]["baseline"]["kl_neutral"] == 0.0
    code, out, err = call("sae", "steer", str(lab.sae), "5", "--mode", "ablate", "--prompt", "hi", "--no-generate",
                           "--no-control", "--reference", str(lab.text))
    assert code == 0, err
    assert "ablate feature 5" in out and "random feature" not in out


@pytest.mark.parametrize("argv, code, message", [
    (["train", "gemma-3-270m", "--site", "layers.40.resid_post", "--out", "{tmp}/o"], 2, "Layer 40 is out of range"),
    (["train", "gemma-3-270m", "--site", "layers.2.nope", "--out", "{tmp}/o"], 2, "--site"),
    (["train", "gemma-3-270m", "--site", SITE, "--out", "{tmp}/o", "--arch", "gated"], 2, "arch must be one of"),
    (["train", "gemma-3-270m", "--site", SITE, "--out", "{tmp}/o", "--batch-size", "64", "--total-tokens", "10"], 2,
     "less than one batch"),
    (["train", "gemma-3-270m", "--site", SITE, "--out", "{tmp}/o", "--text", "{tmp}/missing.txt"], 2,
     "is not a file or folder"),
    (["train", "gemma-3-270m", "--out", "{tmp}/o"], 2, "Missing option '--site'"),
    (["train", "gemma-3-270m", "--site", SITE, "--out", "{tmp}/o", "--decay-frac", "nan"], 2, "not a finite number"),
    (["train", "gemma-3-270m", "--site", SITE, "--out", "{tmp}/o", "--d-sae", "99999999999999999999"], 2,
     "--d-sae"),
    (["train", "gemma-3-270m", "--site", SITE, "--out", "{tmp}/o", "--site-out", "layers.1.mlp_out"], 2,
     "--site-out is for --kind transcoder"),
    (["eval", "{tmp}/no-such-sae"], 2, "does not exist"),
    (["features", "{tmp}/no-such-sae"], 2, "does not exist"),
    (["show", "{sae}", "128"], 2, "Feature 128 is out of range"),
    (["show", "{sae}", "--", "-129"], 2, "Feature -129 is out of range"),
    (["steer", "{sae}", "500"], 2, "Feature 500 is out of range"),
    (["steer", "{sae}", "1", "--value", "nan"], 2, "not a finite number"),
    (["steer", "{sae}", "1", "--mode", "scale"], 2, "'scale' is not one of"),
    (["steer", "{sae}", "1", "--prompt", " "], 2, "a prompt is empty"),
    (["show", "{bare}", "1"], 1, "compute them first with `lmscope sae features"),
    (["eval", "{tmp}", "--format", "npz"], 2, "'npz' is not one of"),
    (["eval", "{tmp}"], 1, "Cannot tell which sparse-coder format"),
])
def test_bad_input_is_one_clear_line_before_the_model_loads(lab, no_load, tmp_path, argv, code, message):
    bare = tmp_path / "bare"
    shutil.copytree(lab.sae, bare, ignore=shutil.ignore_patterns("features.*"))
    args = [a.format(tmp=tmp_path, sae=lab.sae, bare=bare) for a in argv]
    got, out, err = call("sae", *args)
    assert got == code and message in err, err
    assert out == ""


def test_a_site_the_model_lacks_is_exit_1_after_the_load(names, tmp_path):
    code, _, err = call("sae", "train", "tiny", "--site", "layers.7.resid_post", "--out", str(tmp_path / "o"))
    assert code == 1 and err.splitlines()[-1].startswith("Error: Layer 7 is out of range for tiny-llama")


def test_formats_are_the_library_s():
    from lmscope.cli.saes import FORMATS
    from lmscope.saes.loading import FORMATS as LIBRARY

    assert FORMATS == LIBRARY
