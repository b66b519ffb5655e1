"""Contrast datasets for steering vectors: what to read, in which format, with a seeded split.

Three JSONL formats (one JSON object per line; blank lines are skipped; extra keys are ignored):

    pairs        {"positive": "...", "negative": "..."}            two prompts that differ in the behaviour
    completions  {"prompt": "...", "positive": "...", "negative": "..."}
                 one prompt, two completions (CAA A/B answers, refusal vs compliance)
    sets         {"text": "...", "label": "positive" | "negative"}  two unpaired prompt sets
                 (label may also be 1/0 or true/false)

The format is detected from the first record; every later line must have the same fields, and
a line that does not is an `InputError` naming the file, the line number and the missing
field. The shipped datasets (`lmscope/datasets/data/*.jsonl`) load by name (`load_contrast("sentiment")`)
and so do the user's own files (`load_contrast("my_pairs.jsonl")`).

    data = load_contrast("refusal")            # alias of refusal_prompts
    train, test = data.split(held_out=0.25, seed=0)
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lmscope.datasets import files, shipped
from lmscope.engine.errors import InputError

Format = Literal["pairs", "completions", "sets"]

#: shipped dataset -> aliases accepted by `load_contrast` and the CLI
BUILTIN: dict[str, tuple[str, ...]] = {
    "refusal_prompts": ("refusal",),
    "refusal_completions": (),
    "sycophancy_ab": ("sycophancy",),
    "truthfulness": ("truth",),
    "sentiment": (),
    "topic_weddings": ("weddings",),
}
_FIELDS: dict[str, tuple[str, ...]] = {
    "completions": ("prompt", "positive", "negative"),
    "pairs": ("positive", "negative"),
    "sets": ("text", "label"),
}
_LABELS = {"positive": True, "pos": True, "1": True, "true": True,
           "negative": False, "neg": False, "0": False, "false": False}


@dataclass(frozen=True)
class ContrastSet:
    """Positive and negative examples of one behaviour.

    Attributes:
        name: Dataset name (shipped name, file stem, or what the caller passed).
        format: "pairs", "completions" or "sets" (see the module docstring).
        positive: Texts with the behaviour (for completions: the positive completions).
        negative: Texts without it; aligned with `positive` unless `format == "sets"`.
        prompts: The shared prompts of a completions set (aligned), else None.
        source: Path of the file it came from ("" when built in code).
    """

    name: str
    format: Format
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    prompts: tuple[str, ...] | None = None
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.positive or not self.negative:
            raise InputError(f"Contrast set {self.name!r} needs at least one positive and one negative example.")
        if self.format != "sets" and len(self.positive) != len(self.negative):
            raise InputError(f"Contrast set {self.name!r}: {len(self.positive)} positives but "
                             f"{len(self.negative)} negatives; paired formats need equal counts.")
        if (self.format == "completions") != (self.prompts is not None):
            raise InputError("A completions set needs prompts; other formats take none.")
        if self.prompts is not None and len(self.prompts) != len(self.positive):
            raise InputError(f"Contrast set {self.name!r}: {len(self.prompts)} prompts for {len(self.positive)} pairs.")

    @property
    def paired(self) -> bool:
        return self.format != "sets"

    def __len__(self) -> int:
        return len(self.positive) if self.paired else len(self.positive) + len(self.negative)

    def items(self) -> list[dict]:
        """The records as dicts, in the file's format (what `sha256` hashes)."""
        if self.format == "completions":
            return [{"prompt": q, "positive": p, "negative": n}
                    for q, p, n in zip(self.prompts, self.positive, self.negative, strict=True)]
        if self.format == "pairs":
            return [{"positive": p, "negative": n} for p, n in zip(self.positive, self.negative, strict=True)]
        return [{"text": t, "label": "positive"} for t in self.positive] + \
               [{"text": t, "label": "negative"} for t in self.negative]

    def sha256(self) -> str:
        """Hash of the items (canonical JSON lines, keys sorted): identifies the data of a vector."""
        h = hashlib.sha256()
        for item in self.items():
            h.update(json.dumps(item, sort_keys=True, ensure_ascii=False).encode())
            h.update(b"\n")
        return h.hexdigest()

    def subset(self, idx: list[int], idx_negative: list[int] | None = None) -> ContrastSet:
        """Items at `idx` (for sets: positives at `idx`, negatives at `idx_negative`)."""
        neg_idx = idx if self.paired else (idx_negative or [])
        return ContrastSet(
            self.name, self.format, tuple(self.positive[i] for i in idx),
            tuple(self.negative[i] for i in neg_idx),
            tuple(self.prompts[i] for i in idx) if self.prompts is not None else None, self.source,
        )

    def split(self, held_out: float = 0.25, seed: int = 0) -> tuple[ContrastSet, ContrastSet]:
        """(train, test): a seeded shuffle, then the last `held_out` fraction is the test part.

        For unpaired sets each side is split on its own. At least one item stays on each side.
        """
        if not 0.0 < held_out < 1.0:
            raise InputError(f"held_out must be a fraction in (0, 1), got {held_out}.")

        def cut(n: int, salt: int) -> tuple[list[int], list[int]]:
            if n < 2:
                raise InputError(f"Contrast set {self.name!r} is too small to split ({n} item); add examples.")
            idx = list(range(n))
            random.Random(seed * 1_000_003 + salt).shuffle(idx)
            n_test = min(n - 1, max(1, round(n * held_out)))
            return sorted(idx[: n - n_test]), sorted(idx[n - n_test:])

        if self.paired:
            tr, te = cut(len(self.positive), 0)
            return self.subset(tr), self.subset(te)
        tr_p, te_p = cut(len(self.positive), 0)
        tr_n, te_n = cut(len(self.negative), 1)
        return self.subset(tr_p, tr_n), self.subset(te_p, te_n)

    def head(self, n: int) -> ContrastSet:
        """The first n items (per side for sets): for quick runs."""
        if self.paired:
            return self.subset(list(range(min(n, len(self.positive)))))
        return self.subset(list(range(min(n, len(self.positive)))), list(range(min(n, len(self.negative)))))


def _fields(items, keys: tuple[str, ...], name: str) -> list[tuple[str, ...]]:
    """Each item as a tuple of `keys`: a mapping with those keys (the shape of the shipped
    JSONL records) or a tuple/list of exactly that many texts."""
    if isinstance(items, str | bytes | Mapping):
        raise InputError(f"Contrast set {name!r}: expected a list of items, got one {type(items).__name__}.")
    out = []
    shape = "(" + ", ".join(keys) + ")"
    for i, it in enumerate(items):
        if isinstance(it, Mapping):
            missing = [k for k in keys if k not in it]
            if missing:
                raise InputError(f"Contrast set {name!r}, item {i}: the mapping lacks {', '.join(map(repr, missing))}; "
                                 f"expected keys {', '.join(map(repr, keys))} (or a tuple {shape}).")
            it = tuple(it[k] for k in keys)
        elif isinstance(it, tuple | list) and len(it) == len(keys):
            it = tuple(it)
        else:
            raise InputError(f"Contrast set {name!r}, item {i}: expected a tuple {shape} or a mapping with those "
                             f"keys, got {type(it).__name__} {str(it)[:80]!r}.")
        _check_texts(list(it), name)
        out.append(it)
    if not out:
        raise InputError(f"Contrast set {name!r} is empty; pass at least one item.")
    return out


def from_pairs(pairs, name: str = "pairs") -> ContrastSet:
    """A pairs set from `[(positive, negative), ...]` or `[{"positive": ..., "negative": ...}, ...]`."""
    rows = _fields(pairs, ("positive", "negative"), name)
    return ContrastSet(name, "pairs", tuple(p for p, _ in rows), tuple(n for _, n in rows))


def from_completions(items, name: str = "completions") -> ContrastSet:
    """A completions set from `[(prompt, positive_completion, negative_completion), ...]` or
    mappings with the keys "prompt", "positive", "negative"."""
    rows = _fields(items, ("prompt", "positive", "negative"), name)
    return ContrastSet(name, "completions", tuple(r[1] for r in rows), tuple(r[2] for r in rows),
                       tuple(r[0] for r in rows))


def from_sets(positive, negative, name: str = "sets") -> ContrastSet:
    """An unpaired set from two lists of prompts (counts may differ; mean-diff only)."""
    for side, texts in (("positive", positive), ("negative", negative)):
        if isinstance(texts, str | bytes | Mapping):
            raise InputError(f"Contrast set {name!r}: {side} must be a list of strings, got one {type(texts).__name__}.")
    positive, negative = list(positive), list(negative)
    if not positive or not negative:
        raise InputError(f"Contrast set {name!r} needs at least one positive and one negative text "
                         f"(got {len(positive)} and {len(negative)}).")
    _check_texts(positive + negative, name)
    return ContrastSet(name, "sets", tuple(positive), tuple(negative))


def _check_texts(texts: list, name: str) -> None:
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise InputError(f"Contrast set {name!r} has an empty or non-string text ({t!r}).")


def resolve_name(source: str) -> str | None:
    """The shipped dataset a name or alias refers to, or None."""
    key = source.removesuffix(".jsonl")
    for name, aliases in BUILTIN.items():
        if key == name or key in aliases:
            return name
    return None


def dataset_path(source: str | Path) -> Path:
    """Path of a shipped dataset (by name or alias) or of a user file."""
    name = resolve_name(str(source)) if not isinstance(source, Path) else None
    if name is not None:
        return shipped.path(f"{name}.jsonl")
    p = Path(source).expanduser()
    if not p.is_file():
        known = ", ".join(f"{n} ({', '.join(a)})" if a else n for n, a in BUILTIN.items())
        raise InputError(f"No dataset {str(source)!r}: not a shipped name ({known}) and no such file.")
    return p


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) for every non-blank line; malformed lines are InputErrors."""
    out = files.read_jsonl(path, what="contrast set", example='{"positive": ..., "negative": ...}')
    if not out:
        raise InputError(f"{path} has no records; expected JSON lines.")
    return out


def _detect(path: Path, n: int, rec: dict) -> Format:
    if "prompt" in rec and "positive" in rec:
        return "completions"
    if "positive" in rec or "negative" in rec:
        return "pairs"
    if "text" in rec and "label" in rec:
        return "sets"
    raise InputError(
        f"{path}:{n}: cannot tell the format from the keys {sorted(rec)}. Expected "
        "{\"positive\", \"negative\"} (pairs), {\"prompt\", \"positive\", \"negative\"} (completions) "
        "or {\"text\", \"label\"} (sets)."
    )


def load_contrast(source: str | Path, *, name: str | None = None) -> ContrastSet:
    """Load a shipped dataset by name/alias or a user JSONL file in one of the three formats."""
    path = dataset_path(source)
    rows = read_jsonl(path)
    fmt = _detect(path, *rows[0])
    need = _FIELDS[fmt]
    for n, rec in rows:
        for key in need:
            if key not in rec:
                raise InputError(
                    f"{path}:{n}: missing field {key!r}. This file is in the {fmt!r} format (detected from "
                    f"line {rows[0][0]}), so every line needs {', '.join(need)}."
                )
            val = rec[key]
            if key == "label":
                if str(val).lower() not in _LABELS:
                    raise InputError(f"{path}:{n}: label {val!r} is not 'positive'/'negative' (or 1/0, true/false).")
            elif not isinstance(val, str) or not val.strip():
                raise InputError(f"{path}:{n}: field {key!r} must be a non-empty string, got {val!r}.")
    label = name or resolve_name(str(source)) or path.stem
    if fmt == "sets":
        pos = tuple(r["text"] for _, r in rows if _LABELS[str(r["label"]).lower()])
        neg = tuple(r["text"] for _, r in rows if not _LABELS[str(r["label"]).lower()])
        if not pos or not neg:
            raise InputError(f"{path}: a 'sets' file needs both positive and negative labels "
                             f"(found {len(pos)} positive, {len(neg)} negative).")
        return ContrastSet(label, "sets", pos, neg, None, str(path))
    prompts = tuple(r["prompt"] for _, r in rows) if fmt == "completions" else None
    return ContrastSet(label, fmt, tuple(r["positive"] for _, r in rows),
                       tuple(r["negative"] for _, r in rows), prompts, str(path))


def load_texts(source: str | Path = "neutral_prompts", *, n: int | None = None) -> list[str]:
    """Plain texts from a `{"text": ...}` JSONL file (shipped name like "neutral_prompts" or a path)."""
    name = f"{source}.jsonl"
    if not isinstance(source, Path) and shipped.is_shipped(name):
        out = shipped.texts(name)
    elif Path(source).expanduser().is_file():
        out = shipped.texts_of(source)
    else:
        raise InputError(f"No text file {str(source)!r}; pass a shipped name (neutral_prompts) or a JSONL path.")
    return out[:n] if n is not None else out
