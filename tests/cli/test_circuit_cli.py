"""`lmscope circuit ...` end to end on a tiny random model (the model load is stubbed) with a
user task file, and its bad input."""

from __future__ import annotations

import json
import sys

import pytest


def _run(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    from lmscope.cli import main as cli_main

    monkeypatch.setattr(sys, "argv", ["lmscope", *argv])
    try:
        cli_main.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    assert "Internal error" not in err and "Traceback" not in err
    return code, out, err


@pytest.fixture
def task_file(tmp_path):
    """Pairs that tokenize to equal lengths with the tiny char-level tokenizer."""
    rows = [{"clean": f"the {w} went home", "corrupt": f"the {v} went home", "answer": "x", "wrong": "y"}
            for w, v in [("cat", "dog"), ("man", "boy"), ("owl", "fox"), ("ant", "bee"), ("elk", "yak")]]
    p = tmp_path / "toy.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return str(p)


def test_find_writes_the_circuit_and_its_figures(monkeypatch, capsys, tiny_load, task_file, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = _run(monkeypatch, capsys, "circuit", "find", "tiny", "--task", task_file, "--n", "4",
                          "--steps", "2", "--random-draws", "1", "--out", str(out_dir), "--json")
    assert code == 0, err
    data = json.loads(out)
    c = data["prune"]["circuit"]
    assert c["ablation"] == "resample" and 0 < c["n_edges"] <= c["n_edges_total"]
    assert set(data["agreement"]) and data["prune"]["curve"]["fractions"]
    for name in ("circuit.json", "circuit.png", "circuit.html", "faithfulness.png", "report.json",
                 "patching_heads.png"):
        assert (out_dir / name).stat().st_size > 0, name
    code, out, _ = _run(monkeypatch, capsys, "circuit", "show", str(out_dir / "circuit.json"), "--json")
    assert code == 0 and json.loads(out)["edges"] == c["edges"]


@pytest.mark.parametrize("argv", [
    ["patch", "--component", "heads"],
    ["patch", "--component", "resid", "--direction", "denoising"],
    ["path", "--senders", "0.1,1.2", "--receivers", "logits,2.1.q,2.0.k"],
    ["attribute", "--level", "edges", "--method", "eap"],
    ["attribute", "--level", "nodes", "--ablation", "mean"],
])
def test_each_command_prints_json(monkeypatch, capsys, tiny_load, task_file, argv):
    code, out, err = _run(monkeypatch, capsys, "circuit", argv[0], "tiny", "--task", task_file, "--n", "3",
                          *argv[1:], "--json")
    assert code == 0, err
    assert isinstance(json.loads(out), dict)


def test_induction_and_tasks(monkeypatch, capsys, tiny_load):
    code, out, err = _run(monkeypatch, capsys, "circuit", "induction", "tiny", "--n", "2", "--seq-len", "6",
                          "--random-draws", "1", "--key-paths", "0", "--json")
    assert code == 0, err
    assert json.loads(out)["induction_heads"]
    code, out, _ = _run(monkeypatch, capsys, "circuit", "tasks", "--json")
    assert {t["name"] for t in json.loads(out)["tasks"]} >= {"ioi", "induction", "greater-than"}


def test_bad_input_is_one_clear_line(monkeypatch, capsys, no_load, tmp_path):
    code, _, err = _run(monkeypatch, capsys, "circuit", "find", "gemma-3-270m", "--task", "nope")
    assert code == 2 and "not a built-in task" in err
    code, _, err = _run(monkeypatch, capsys, "circuit", "patch", "gemma-3-270m", "--component", "neurons")
    assert code == 2 and "--neurons" in err
    bad = tmp_path / "c.json"
    bad.write_text("[1, 2]")
    code, _, err = _run(monkeypatch, capsys, "circuit", "show", str(bad))
    assert code == 1 and "not an lmscope circuit" in err
