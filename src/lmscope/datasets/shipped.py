"""The data files shipped with lmscope (`lmscope/datasets/data/`, formats and provenance in its
README.md), read by one loader."""

from __future__ import annotations

from pathlib import Path

from lmscope.datasets import files
from lmscope.engine.errors import InputError

DATA_DIR = Path(__file__).parent / "data"


def path(name: str) -> Path:
    """The path of a shipped file, e.g. "corpus.jsonl" or "tasks/antonym.jsonl"."""
    p = DATA_DIR / name
    if not p.is_file():
        raise InputError(f"The data file lmscope/datasets/data/{name} is missing from this install.")
    return p


def rows(name: str) -> list[dict]:
    """The JSON objects of a shipped JSONL file, in order."""
    return [rec for _, rec in files.read_jsonl(path(name))]


def texts(name: str = "neutral_prompts.jsonl", field: str = "text") -> list[str]:
    """The `field` strings of a shipped JSONL file (default: the neutral prompts)."""
    return [r[field] for r in rows(name)]


def rows_of(source: str) -> list[dict]:
    """Rows of a shipped file by name, or of a user's JSONL file by path."""
    if (DATA_DIR / source).is_file():
        return rows(source)
    return [rec for _, rec in files.read_jsonl(source)]
