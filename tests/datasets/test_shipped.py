"""One loader for the shipped data files: every reader agrees with it, errors name the file."""

from __future__ import annotations

import pytest

from lmscope.datasets import contrast, shipped
from lmscope.engine.errors import InputError


def test_neutral_prompts_come_from_one_place():
    all_ = shipped.neutral_prompts()
    assert len(all_) >= 32 and all(isinstance(t, str) and t.strip() for t in all_)
    assert shipped.neutral_prompts(5) == all_[:5]
    assert contrast.load_texts("neutral_prompts") == all_ == shipped.texts()
    assert contrast.load_texts("neutral_prompts", n=3) == all_[:3]


def test_rows_of_reads_shipped_names_and_user_paths(tmp_path):
    from lmscope.inspect.patchscopes import read_jsonl

    assert read_jsonl("two_hop.jsonl") == shipped.rows("two_hop.jsonl") == shipped.rows_of("two_hop.jsonl")
    f = tmp_path / "mine.jsonl"
    f.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    assert shipped.rows_of(str(f)) == [{"text": "a"}, {"text": "b"}]
    assert shipped.texts_of(f) == contrast.load_texts(f) == ["a", "b"]
    with pytest.raises(InputError, match="No data file 'nope.jsonl' in lmscope/datasets/data and no such path"):
        shipped.rows_of("nope.jsonl")
    assert not shipped.is_shipped(str(f)) and not shipped.is_shipped("../shipped.py")
    assert shipped.is_shipped("tasks/antonym.jsonl")


def test_text_files_name_the_bad_line(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"text": "ok"}\n{"prompt": "no text"}\n')
    with pytest.raises(InputError, match=r"t.jsonl:2: missing field 'text'"):
        shipped.texts_of(f)
    f.write_text("\n")
    with pytest.raises(InputError, match="holds no lines"):
        contrast.load_texts(f)
    with pytest.raises(InputError, match="No text file"):
        contrast.load_texts(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="missing from this install"):
        shipped.texts("no_such_file.jsonl")
