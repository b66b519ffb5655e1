"""Training text for dictionaries: the offline default (shipped corpus + model-sampled text,
cached), files, one-document files split into paragraphs, the held-out split, and errors."""

from __future__ import annotations

import pytest

from lmscope.datasets.text_sources import split, training_text
from lmscope.engine.errors import InputError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))


def test_the_offline_default_adds_sampled_text_and_caches_it(tiny_llama, tmp_path):
    src = training_text(tiny_llama, None, sample_tokens=40, seed=0)
    assert "shipped corpus" in src.label and "sampled from tiny-llama" in src.label
    assert src.held_out and not set(src.held_out) & set(src.train)
    cached = list((tmp_path / "cache" / "texts").glob("*.jsonl"))
    assert len(cached) == 1
    again = training_text(tiny_llama, None, sample_tokens=40, seed=0)
    assert again.train == src.train and again.held_out == src.held_out
    corpus_only = training_text(tiny_llama, None, sample_tokens=0)
    assert "sampled" not in corpus_only.label and len(corpus_only.train) < len(src.train)


def test_a_single_text_file_is_split_into_paragraphs(tiny_llama, tmp_path):
    f = tmp_path / "book.txt"
    f.write_text("\n\n".join(f"Paragraph {i} of the book, with some words." for i in range(30)))
    src = training_text(tiny_llama, f, held_out=0.1)
    assert len(src.train) + len(src.held_out) == 30 and len(src.held_out) == 3


def test_split_is_seeded_and_checked():
    texts = [str(i) for i in range(20)]
    assert split(texts, 0.25, 1) == split(texts, 0.25, 1) != split(texts, 0.25, 2)
    with pytest.raises(InputError, match="held_out"):
        split(texts, 1.5, 0)


def test_a_hugging_face_source_offline_says_what_to_do(tiny_llama, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="datasets|network"):
        training_text(tiny_llama, "hf:wikitext:wikitext-2-raw-v1")
