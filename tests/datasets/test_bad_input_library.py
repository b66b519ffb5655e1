"""Bad input to the library gets a clear LmscopeError naming what was expected; nothing is lost."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from lmscope.datasets import contrast as C
from lmscope.datasets import corpus
from lmscope.engine.artifacts import check_writable, load_artifact, save_artifact
from lmscope.engine.errors import ArtifactError, InputError


def test_from_pairs_reads_mappings_in_the_shape_of_the_shipped_records():
    s = C.from_pairs([{"positive": "a good day", "negative": "a bad day"}, ("fine", "awful")])
    assert s.positive == ("a good day", "fine") and s.negative == ("a bad day", "awful")
    c = C.from_completions([{"prompt": "Q?", "positive": "yes", "negative": "no"}])
    assert c.prompts == ("Q?",) and c.positive == ("yes",) and c.negative == ("no",)


@pytest.mark.parametrize("bad", [[{"pos": "a", "neg": "b"}], [("only one",)], "ab", [], [("a", 3)]])
def test_from_pairs_rejects_other_shapes_with_the_expected_shape(bad):
    with pytest.raises(InputError, match="Contrast set 'pairs'"):
        C.from_pairs(bad)


def test_from_sets_rejects_a_bare_string_and_empty_sides():
    with pytest.raises(InputError, match="list of strings"):
        C.from_sets("good", ["bad"])
    with pytest.raises(InputError, match="at least one"):
        C.from_sets([], ["bad"])


def test_non_utf8_data_files_name_the_file_and_the_byte(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"positive": "ok", "negative": "fine"}\n{"positive": "caf\xe9", "negative": "x"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl is not UTF-8 text: byte 56 \(line 2\)"):
        C.load_contrast(bad)
    txt = tmp_path / "corpus.txt"
    txt.write_bytes(b"plain \xff text")
    with pytest.raises(InputError, match="corpus.txt is not UTF-8 text: byte 6"):
        corpus.read_texts(txt)  # the corpus follows the same rule as every other file
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"one\n\x80two\n")
    with pytest.raises(InputError, match="prompts.txt is not UTF-8 text: byte 4"):
        corpus.read_prompts(prompts)


def test_shared_tensors_save_as_separate_copies(tiny_llama, tmp_path):
    v = torch.ones(tiny_llama.d_model)
    p = save_artifact(tmp_path / "v", {"a": v, "b": v, "c": v[:4]}, kind="test", model=tiny_llama)
    t, _ = load_artifact(p)
    assert torch.equal(t["a"], v) and torch.equal(t["b"], v) and torch.equal(t["c"], v[:4])


@pytest.mark.parametrize("sidecar", [b"\xff\xfe{}", b"3", b'"text"', b"[1, 2]", b"{not json"])
def test_malformed_sidecar_is_an_artifact_error(tiny_llama, tmp_path, sidecar):
    p = save_artifact(tmp_path / "v", {"a": torch.ones(3)}, kind="test", model=tiny_llama)
    (tmp_path / "v.safetensors.json").write_bytes(sidecar)
    with pytest.raises(ArtifactError, match="sidecar"):
        load_artifact(p)


def test_an_overlong_artifact_path_is_an_artifact_error():
    with pytest.raises(ArtifactError, match="Cannot open"):
        load_artifact("v" * 700 + ".safetensors")


def test_temp_files_of_killed_writers_are_swept_on_the_next_write(tiny_llama, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".v.safetensors.tmp-{dead.pid}-0000"
    stale.write_text("half a file")
    live = tmp_path / f".v.safetensors.tmp-{os.getppid()}-0000"  # a live process's write in progress
    live.write_text("being written")
    save_artifact(tmp_path / "v", {"a": torch.ones(3)}, kind="test", model=tiny_llama)
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "v.safetensors", "v.safetensors.json"]


@pytest.mark.parametrize("path", ["/proc/x.safetensors", "/etc/hostname/sub/out.json"])
def test_unwritable_output_paths_are_refused_before_any_work(path):
    with pytest.raises(InputError, match="Cannot write"):
        check_writable(path)
