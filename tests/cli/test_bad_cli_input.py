"""Bad command lines end in one clear `Error:` line, before any model load where the mistake is
in the arguments, and never as "Internal error" (each test is named after what it protects)."""

from __future__ import annotations

import sys

import pytest
import torch


def _run(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    from lmscope.cli import main as cli_main

    monkeypatch.setattr(sys, "argv", ["lmscope", *argv])
    try:
        cli_main.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    err = capsys.readouterr().err
    assert "Internal error" not in err and "Traceback" not in err
    return code, err


@pytest.mark.parametrize("argv", [
    ["lens", "logit", "gemma-3-270m", "The capital of Poland is", "--out", "/proc/x"],
    ["inspect", "decompose", "gemma-3-270m", "The capital of Poland is", "--out", "/etc/hostname/sub"],
    ["vector", "make", "gemma-3-270m", "--data", "sentiment", "--out", "/proc/x.safetensors"],
    ["atlas", "build", "gemma-3-270m", "--out", "/proc/atlas.db"],
])
def test_unwritable_output_fails_before_the_model_loads_and_names_the_path(monkeypatch, capsys, no_load, argv):
    code, err = _run(monkeypatch, capsys, *argv)
    out = argv[argv.index("--out") + 1]
    assert code == 2 and "Cannot write" in err and out in err and ".tmp" not in err


def test_atlas_search_with_a_missing_atlas_file_does_not_start_a_build(monkeypatch, capsys, no_load, tmp_path):
    missing = tmp_path / "none.db"
    code, err = _run(monkeypatch, capsys, "atlas", "search", "gemma-3-270m", "dog", "--atlas", str(missing))
    assert code == 2 and "does not exist" in err and not missing.exists()


def test_add_vector_without_layer_names_the_layers_the_file_holds(monkeypatch, capsys, tiny_load, tmp_path):
    from lmscope.vectors import Vector

    path = Vector({0: torch.ones(tiny_load.d_model), 2: torch.ones(tiny_load.d_model)}, model=tiny_load).save(
        tmp_path / "v.safetensors")
    code, err = _run(monkeypatch, capsys, "generate", "tiny", "hello", "--add-vector", path)
    assert code == 1 and "holds vectors for layers 0, 2; pass --layer" in err
    code, err = _run(monkeypatch, capsys, "generate", "tiny", "hello", "--add-vector", path, "--layer", "1")
    assert code == 1 and "no vector for layer 1 (it holds layers 0, 2)" in err


def test_a_non_utf8_prompt_file_names_the_file_and_the_byte_before_the_model_loads(monkeypatch, capsys, no_load,
                                                                                    tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_bytes(b"The cat\nThe caf\xe9\n")
    code, err = _run(monkeypatch, capsys, "neuron", "ablate", "gemma-3-270m", "10.1", "--prompts", str(f),
                     "--target", " these")
    assert code == 1 and "prompts.txt is not UTF-8 text: byte 15 (line 2)" in err


@pytest.mark.parametrize("sidecar", [b"3", b"\xff\xfe", b"[1]"])
def test_a_malformed_sidecar_is_one_error_line(monkeypatch, capsys, tmp_path, sidecar):
    (tmp_path / "v.safetensors").write_bytes(b"x")
    (tmp_path / "v.safetensors.json").write_bytes(sidecar)
    code, err = _run(monkeypatch, capsys, "vector", "info", str(tmp_path / "v.safetensors"))
    assert code == 1 and err.startswith("Error: The sidecar") and len(err.strip().splitlines()) == 1
