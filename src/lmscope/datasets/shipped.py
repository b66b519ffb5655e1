"""The data files shipped with lmscope (`lmscope/datasets/data/`, formats and provenance in its
README.md), read by one loader.

    rows("facts.jsonl")                  # the JSON objects of a shipped JSONL file
    texts("corpus.jsonl")                # their "text" strings
    neutral_prompts(16)                  # the prompts every side-effect measurement uses
    rows_of("two_hop.jsonl"), rows_of("/my/file.jsonl")     # shipped by name, or a user's file
    texts_of("/my/prompts.jsonl")        # the "text" strings of any JSONL file

Every read goes through `lmscope.datasets.files` (UTF-8, errors that name the file and line).
"""

from __future__ import annotations

import os
from pathlib import Path

from lmscope.datasets import files
from lmscope.engine.errors import InputError

DATA_DIR = Path(__file__).parent / "data"
NEUTRAL = "neutral_prompts.jsonl"


def is_shipped(name: str | os.PathLike) -> bool:
    """Whether `name` ("corpus.jsonl", "tasks/antonym.jsonl") is a file shipped with lmscope."""
    p = DATA_DIR / name
    return p.is_file() and p.resolve().is_relative_to(DATA_DIR.resolve())


def path(name: str) -> Path:
    """The path of a shipped file, e.g. "corpus.jsonl" or "tasks/antonym.jsonl"."""
    p = DATA_DIR / name
    if not p.is_file():
        raise InputError(f"The data file lmscope/datasets/data/{name} is missing from this install.")
    return p


def rows(name: str) -> list[dict]:
    """The JSON objects of a shipped JSONL file, in order."""
    return [rec for _, rec in files.read_jsonl(path(name))]


def texts(name: str = NEUTRAL, field: str = "text") -> list[str]:
    """The `field` strings of a shipped JSONL file (default: the neutral prompts)."""
    return texts_of(path(name), field)


def neutral_prompts(n: int | None = None) -> list[str]:
    """The shipped neutral prompts (`neutral_prompts.jsonl`; the first n), on which techniques
    measure the side effects of an edit (KL, repetition)."""
    out = texts(NEUTRAL)
    return out[:n] if n is not None else out


def _user_file(source: str | os.PathLike) -> Path:
    p = Path(source).expanduser()
    if not p.is_file():
        raise InputError(f"No data file {str(source)!r} in lmscope/datasets/data and no such path.")
    return p


def rows_of(source: str | os.PathLike) -> list[dict]:
    """Rows of a shipped file by name, or of a user's JSONL file by path."""
    if is_shipped(source):
        return rows(str(source))
    return [rec for _, rec in files.read_jsonl(_user_file(source))]


def texts_of(file: str | os.PathLike, field: str = "text") -> list[str]:
    """The non-empty `field` strings of the JSONL file at `file` (a path, shipped or not). A line
    without one is an InputError naming the file and line."""
    p = Path(file).expanduser()
    out = []
    for line_no, rec in files.read_jsonl(p, what="text file", example=f'{{"{field}": "..."}}'):
        t = rec.get(field)
        if not isinstance(t, str) or not t.strip():
            raise InputError(f"{p}:{line_no}: missing field {field!r} (each line needs a non-empty \"{field}\").")
        out.append(t)
    if not out:
        raise InputError(f"{p} holds no lines; expected JSON lines like {{\"{field}\": \"...\"}}.")
    return out
