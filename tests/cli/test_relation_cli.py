"""`lmscope relation ...` end to end on a tiny random llama (the model load is stubbed, and every
answer counts as right so that the random model "knows" the facts): fit with --out and --plot,
then predict and lens on the saved LRE; and the bad input each command refuses with one line."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import make_tiny
from incli import call

FAST = ["--layers", "0,1", "--max-facts", "12", "--n-train", "3", "--betas", "1,2", "--ranks", "4,8", "--rank", "4"]


def _json(*argv: str) -> dict:
    code, out, err = call(*argv, "--json")
    assert code == 0, err
    return json.loads(out)


def _all_known(mp) -> None:
    from lmscope.relations import prompts

    mp.setattr(prompts, "matches", lambda model, token_id, obj: True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """`relation fit country_capital_city tiny --out ... --plot ... --json` on one tiny llama."""
    from lmscope.engine import loading

    root = tmp_path_factory.mktemp("relation-cli")
    model = make_tiny("llama")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loading, "load", lambda *a, **k: model)
        _all_known(mp)
        fit = _json("relation", "fit", "country_capital_city", "tiny", *FAST,
                    "--out", str(root / "capital.safetensors"), "--plot", str(root / "figs"))
    return SimpleNamespace(root=root, model=model, fit=fit, lre=root / "capital.safetensors")


@pytest.fixture
def names(lab, monkeypatch):
    """Every model load returns the lab's tiny llama; the names asked for are recorded."""
    from lmscope.engine import loading

    asked: list[str] = []
    monkeypatch.setattr(loading, "load", lambda name, *a, **k: asked.append(name) or lab.model)
    _all_known(monkeypatch)
    return asked


def test_list_shows_the_shipped_relations():
    from lmscope.cli.relations import TYPES
    from lmscope.datasets.relations import TYPES as LIBRARY_TYPES
    from lmscope.datasets.relations import shipped_relations

    assert TYPES == LIBRARY_TYPES
    rows = _json("relation", "list")["relations"]
    assert rows == shipped_relations() and len(rows) == 38
    assert {"relation", "type", "n", "template", "domain", "range", "symmetric"} <= set(rows[0])
    bias = _json("relation", "list", "--type", "bias")["relations"]
    assert bias and {r["type"] for r in bias} == {"bias"} and len(bias) < len(rows)
    code, out, err = call("relation", "list", "--type", "factual")
    assert code == 0, err
    assert "country_capital_city" in out and "The capital city of {} is" in out and "degree_gender" not in out
    code, _, err = call("relation", "list", "--type", "gossip")
    assert code == 2 and "gossip" in err


def test_fit_reports_the_sweeps_and_saves_the_recommended_lre(lab):
    from lmscope.relations.lre import LRE

    d = lab.fit
    assert d["relation"] == "country_capital_city" and d["type"] == "factual" and d["model"] == "tiny-llama"
    assert d["n_facts"] == 12 and d["n_known"] == 12 and len(d["train"]) == 3
    assert d["layers"] == [0, 1] and d["betas"] == [1.0, 2.0] and d["ranks"] == [4, 8] and d["sweep_rank"] == 4
    assert len(d["faithfulness_grid"]) == 2 and all(len(row) == 2 for row in d["faithfulness_grid"])
    assert len(d["causality_by_layer"]) == 2 and len(d["causality_by_rank"]) == 2
    assert d["layer"] in (0, 1) and d["beta"] in (1.0, 2.0) and d["rank"] in (4, 8)
    assert d["faithfulness"] == 1.0  # every answer counts as right here
    assert set(d["baselines"]) == {"logit_lens", "translation", "regression", "majority"}
    sweep = lab.root / "figs" / "country_capital_city_sweep.png"
    assert d["path"] == str(lab.lre) and d["figures"] == [str(sweep)] and sweep.read_bytes()[:4] == b"\x89PNG"
    lre = LRE.load(lab.lre, model=lab.model)
    assert (lre.layer, lre.beta, lre.relation) == (d["layer"], d["beta"], "country_capital_city")
    assert lre.template == d["template"] == "The capital city of {} is"
    assert [list(p) for p in lre.demos] == d["train"]


def test_fit_prints_its_tables_and_stages(names, tmp_path):
    code, out, err = call("relation", "fit", "country_capital_city", "tiny", *FAST, "--out", str(tmp_path / "lre"))
    assert code == 0, err
    assert names == ["tiny"]
    assert "[1/3] loading tiny" in err and "[2/3] country_capital_city: the model's answers to 12 facts" in err
    assert "[3/3] writing" in err
    assert "country_capital_city (factual) on tiny-llama" in out and "baseline: logit lens" in out
    assert "dev faithfulness by layer and beta" in out and "dev causality by rank" in out
    saved = tmp_path / "lre.safetensors"  # the artifact writer adds the suffix
    assert "saved the LRE" in out and str(saved) in out and saved.is_file()
    code, out, err = call("relation", "fit", "country_capital_city", "tiny", *FAST)
    assert code == 0, err
    assert "pass --out" in out and "[1/2] loading tiny" in err


def test_fit_a_user_relation_with_its_template(names, tmp_path):
    src = tmp_path / "mascots.jsonl"
    src.write_text("".join(json.dumps({"subject": f"team {c}", "object": f"animal {c}"}) + "\n"
                           for c in "abcdefghij"), encoding="utf-8")
    d = _json("relation", "fit", str(src), "tiny", "--template", "The mascot of {} is a", *FAST[:2], "--max-facts",
              "10", "--n-train", "3", "--betas", "1", "--ranks", "4", "--rank", "4")
    assert d["relation"] == "mascots" and d["type"] == "user" and d["template"] == "The mascot of {} is a"
    assert d["n_facts"] == 10 and d["path"] is None and d["figures"] == []


def test_predict_answers_for_each_subject_with_the_lre_s_own_model(lab, names):
    d = _json("relation", "predict", str(lab.lre), "France", "Japan", "--k", "3")
    assert names == ["tiny-llama"]  # no --model: the one the sidecar names
    assert d["model"] == "tiny-llama" and d["lre"] == str(lab.lre) and d["relation"] == "country_capital_city"
    assert d["subjects"] == ["France", "Japan"] and d["layer"] == lab.fit["layer"] and d["beta"] == lab.fit["beta"]
    assert d["template"] == "The capital city of {} is"
    assert [len(t) for t in d["lre_top"]] == [3, 3] and [len(t) for t in d["model_top"]] == [3, 3]
    assert all(isinstance(tok, str) and 0 <= p <= 1 for top in d["lre_top"] for tok, p in top)
    code, out, err = call("relation", "predict", str(lab.lre), "Peru", "--model", "other-name")
    assert code == 0, err
    assert names[-1] == "other-name" and "[1/2] loading other-name" in err
    assert "Peru" in out and "LRE (layer" in out and "agree" in out
    d = _json("relation", "predict", str(lab.lre), "Peru", "--template", "{} has its capital in")
    assert d["template"] == "{} has its capital in"


def test_lens_reads_every_layer_and_token(lab, names, tmp_path):
    prompt = "Paris is in"
    d = _json("relation", "lens", str(lab.lre), prompt, "--target", "France", "--layers", "0,2",
              "--plot", str(tmp_path / "lens.png"))
    assert names == ["tiny-llama"]
    assert d["prompt"] == prompt and d["layers"] == [0, 2] and d["target"] == "France"
    assert d["relation"] == "country_capital_city" and d["lre_layer"] == lab.fit["layer"]
    n = len(d["tokens"])
    assert n == len(prompt) + 1  # the tiny tokenizer: BOS, then one token per character
    assert [len(r) for r in d["top"]] == [n, n] and [len(r) for r in d["top_prob"]] == [n, n]
    assert [len(r) for r in d["target_prob"]] == [n, n]
    assert all(0 <= p <= q <= 1 for rp, rq in zip(d["target_prob"], d["top_prob"], strict=True)
               for p, q in zip(rp, rq, strict=True))
    assert d["figures"] == [str(tmp_path / "lens.png")] and (tmp_path / "lens.png").read_bytes()[:4] == b"\x89PNG"
    d = _json("relation", "lens", str(lab.lre), prompt)
    assert d["layers"] == [0, 1, 2] and d["target"] == "" and d["target_prob"] == [] and d["figures"] == []
    code, out, err = call("relation", "lens", str(lab.lre), prompt, "--target", "France")
    assert code == 0, err
    assert "attribute lens" in out and "peaks at" in out


def test_tables_print_tokens_as_text_not_markup(capsys):
    from lmscope.cli._common import print_tables
    from lmscope.relations.study import Predictions

    pred = Predictions("r[/]", 1, 1.0, ["[bold]x"], [[("[/]", 0.5)]], [[("[red]", 0.25)]])
    print_tables(pred)
    out = capsys.readouterr().out
    assert "[bold]x" in out and "[/] 0.50" in out and "[red] 0.25" in out and "r[/]" in out


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["fit", "capitals_of_mars"], 1, "neither a shipped relation nor a file"),
    (["fit", "capital"], 1, "Did you mean country_capital_city"),
    (["fit", "country_capital_city", "--template", "no subject here"], 1, "exactly one '{}'"),
    (["fit", "country_capital_city", "--template", "The capital of {} is "], 1, "no trailing space"),
    (["fit", "country_capital_city", "--layers", "17"], 2, "Layer 17 cannot be swept on gemma-3-270m"),
    (["fit", "country_capital_city", "--layers", "40"], 2, "Layer 40 cannot be swept"),
    (["fit", "country_capital_city", "--ranks", "0,8"], 2, "Ranks are positive integers"),
    (["fit", "country_capital_city", "--ranks", "all"], 2, "Ranks are positive integers"),
    (["fit", "country_capital_city", "--betas", "-1"], 2, "betas must be numbers in"),
    (["fit", "country_capital_city", "--ridge", "nan"], 2, "ridge must be a finite number"),
    (["fit", "country_capital_city", "--n-train", "9", "--max-facts", "10"], 2, "must exceed n_train"),
    (["fit", "name_gender", "--n-train", "18", "--max-facts", "40"], 2, "facts; --n-train 18 needs at least 20"),
    (["fit", "country_capital_city", "--out", "/proc/x/lre.safetensors"], 2, "Cannot write"),
    (["fit", "country_capital_city", "--plot", "/proc/figs"], 2, "Cannot write"),
    (["lens", "x.safetensors", "Paris is", "--plot", "lens.txt"], 2, "should end in .png"),
    (["predict", "missing.safetensors", "France"], 1, "No artifact at missing.safetensors"),
    (["predict", "missing.safetensors"], 2, "Missing argument"),
    (["predict", "missing.safetensors", "France", "--template", "{} and {}"], 1, "exactly one '{}'"),
    (["lens", "missing.safetensors", "Paris is"], 1, "No artifact at missing.safetensors"),
])
def test_bad_input_is_one_clear_line_before_the_model_loads(no_load, monkeypatch, tmp_path, argv, code, message):
    monkeypatch.chdir(tmp_path)
    got, _, err = call("relation", *argv)
    assert got == code and message in err, err
    assert len([line for line in err.splitlines() if line.startswith("Error")]) == 1


def test_a_user_relation_needs_its_template(no_load, tmp_path):
    src = tmp_path / "pairs.jsonl"
    src.write_text('{"subject": "France", "object": "Paris"}\n{"subject": "Japan", "object": "Tokyo"}\n')
    code, _, err = call("relation", "fit", str(src))
    assert code == 1 and "pass its template" in err
    src.write_text('{"subject": "France"}\n')
    code, _, err = call("relation", "fit", str(src), "--template", "The capital of {} is")
    assert code == 1 and "pairs.jsonl:1" in err and '"subject" and "object"' in err


def test_an_lre_for_another_model(lab, tmp_path, monkeypatch, no_load):
    """Its sidecar names an embedded model: --layers is checked against it before any load, and
    the loaded model is refused when its name differs."""
    from lmscope.engine import loading

    lre = tmp_path / "gemma.safetensors"
    lre.write_bytes(lab.lre.read_bytes())
    side = json.loads((lab.root / "capital.safetensors.json").read_text())
    (tmp_path / "gemma.safetensors.json").write_text(json.dumps({**side, "model": "gemma-3-270m"}))
    code, _, err = call("relation", "lens", str(lre), "Paris is", "--layers", "30")
    assert code == 2 and "Layer 30 is out of range for gemma-3-270m" in err
    monkeypatch.setattr(loading, "load", lambda *a, **k: lab.model)
    code, _, err = call("relation", "predict", str(lre), "France")
    assert code == 1 and "was made for 'gemma-3-270m', not 'tiny-llama'" in err


def test_bad_subjects_and_layers_after_the_load(lab, names):
    code, _, err = call("relation", "predict", str(lab.lre), "France", " ")
    assert code == 2 and "a subject is empty" in err and names == []
    code, _, err = call("relation", "lens", str(lab.lre), "Paris is", "--layers", "5")
    assert code == 1 and "Layer 5 is out of range for tiny-llama" in err
    code, _, err = call("relation", "fit", "country_capital_city", "tiny", "--layers", "2", "--max-facts", "12")
    assert code == 1 and "Layer 2 cannot be swept on tiny-llama" in err
