"""Text corpora -> fixed-size token windows, for recording activations.

Sources: a list of strings, a `.txt` file (one document), a `.jsonl` file (one `{"text": ...}`
per line), a `.json` file (a list of strings or of `{"text": ...}`), or a directory of such
files (sorted by name). `None` means the shipped corpus `lmscope/datasets/data/corpus.jsonl`.

Windows never cross documents: each document is tokenized without special tokens, cut into
chunks of `window - n_prefix` tokens, and each chunk gets the tokenizer's own prefix (BOS for
Gemma, nothing for SmolLM2) so every window looks like a fresh prompt to the model. The
prefix positions are marked so that statistics can skip them (the BOS position is the same
token in every window and carries attention-sink activations that say nothing about the text).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lmscope.datasets import files, shipped
from lmscope.engine.errors import InputError
from lmscope.engine.model import Batch

DEFAULT_CORPUS = shipped.DATA_DIR / "corpus.jsonl"
_SUFFIXES = (".txt", ".jsonl", ".json")


def _read_jsonl(path: Path, field: str) -> list[str]:
    return [_text_of(row, field, f"{path}:{i}") for i, row in files.read_jsonl(path, objects=False)]


def _text_of(row, field: str, where: str) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, dict) and isinstance(row.get(field), str):
        return row[field]
    keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
    raise InputError(f"{where}: expected a string or an object with a {field!r} string; found {keys}.")


def _read_file(path: Path, field: str) -> list[str]:
    if path.suffix == ".jsonl":
        return _read_jsonl(path, field)
    if path.suffix == ".json":
        data = files.read_json(path)
        if not isinstance(data, list):
            raise InputError(f"{path} holds a {type(data).__name__}; expected a JSON list of texts.")
        return [_text_of(r, field, f"{path}[{i}]") for i, r in enumerate(data)]
    return [files.read_text(path, what="corpus file")]


def read_texts(source: str | os.PathLike | Sequence[str] | None = None, *, field: str = "text") -> list[str]:
    """Documents of a corpus source (see the module docstring), empty ones dropped.

    Args:
        source: Texts, a file, a directory, or None for the shipped corpus.
        field: The JSON key holding the text.
    """
    if source is None:
        source = shipped.path(DEFAULT_CORPUS.name)
    if isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        if path.is_dir():
            paths = sorted(p for p in path.iterdir() if p.suffix in _SUFFIXES)
            if not paths:
                raise InputError(f"Directory {path} has no {', '.join(_SUFFIXES)} files.")
            texts = [t for f in paths for t in _read_file(f, field)]
        elif path.is_file():
            texts = _read_file(path, field)
        else:
            raise InputError(f"Corpus {str(source)!r} is not a file or directory; pass a .txt/.jsonl/.json path.")
    else:
        texts = list(source)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise InputError(f"Corpus item {bad[0]} is a {type(texts[bad[0]]).__name__}; pass strings.")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InputError("The corpus is empty; pass at least one non-empty text.")
    return texts


def read_prompts(path: str | os.PathLike, *, field: str | None = None) -> list[str]:
    """Prompts from a `.txt` file (one per line) or JSONL rows (the `field` key; by default
    "text", else "prompt")."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"No prompt file at {p}; pass a .txt (one prompt per line) or .jsonl file.")
    if p.suffix != ".jsonl":
        out = files.read_lines(p, what="prompt file")
    else:
        out = []
        for i, row in files.read_jsonl(p, what="prompt file", objects=False):
            key = field or next((k for k in ("text", "prompt") if isinstance(row, dict) and k in row), None)
            if key is None or not isinstance(row, dict) or not isinstance(row.get(key), str):
                keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                raise InputError(f"{p}:{i} has no {field or 'text/prompt'!r} string (keys: {keys}); pass --field KEY.")
            out.append(row[key])
    if not out:
        raise InputError(f"{p} holds no prompts.")
    return out


@dataclass
class TokenWindows:
    """Token windows, left-padded to one width.

    Attributes:
        ids: [n_windows, window] token ids (padding: the tokenizer's pad id).
        mask: [n_windows, window] True on real tokens.
        n_prefix: Special tokens at the start of every window (excluded from statistics).
        doc: [n_windows] index of the source document.
        start: [n_windows] offset of the window's first text token in its document's tokens.
    """

    ids: Tensor
    mask: Tensor
    n_prefix: int
    doc: Tensor
    start: Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def n_tokens(self) -> int:
        """Text tokens (prefix excluded): what statistics are computed over."""
        return int(self.mask.sum()) - self.n_prefix * len(self)

    def valid(self, rows: slice | Tensor | None = None) -> Tensor:
        """[rows, window] True on text tokens (real and not part of the prefix)."""
        mask = self.mask if rows is None else self.mask[rows]
        return mask & (mask.long().cumsum(1) > self.n_prefix)

    def fingerprint(self) -> str:
        """A short hash of the token ids and mask (names a sharded job's input)."""
        h = hashlib.sha256(self.ids.numpy().tobytes())
        h.update(self.mask.numpy().tobytes())
        return h.hexdigest()[:16]

    def spans(self, tokens: int, batch_size: int) -> list[dict]:
        """Consecutive window ranges [{"lo", "hi"}] of about `tokens` tokens each, a whole number
        of `batch_size` batches (so a shard's forwards are those of a single pass)."""
        width = max(self.ids.shape[1] - self.n_prefix, 1)
        per = max(1, tokens // width // batch_size) * batch_size
        return [{"lo": lo, "hi": min(lo + per, len(self))} for lo in range(0, len(self), per)]

    def batches(self, batch_size: int, device, *, start: int = 0, span: tuple[int, int] | None = None
                ) -> Iterator[tuple[Tensor, Batch, Tensor]]:
        """(window indices [b], Batch, valid [b, cols]) chunks from batch number `start` on;
        all-padding columns trimmed. `span` (lo, hi) restricts them to windows lo..hi-1 (a
        shard; window indices stay those of the whole corpus)."""
        first_row, end = span if span is not None else (0, len(self))
        end = min(end, len(self))
        for lo in range(first_row + start * batch_size, end, batch_size):
            rows = torch.arange(lo, min(lo + batch_size, end))
            mask = self.mask[rows]
            first = int((mask.any(0)).long().argmax())  # first column holding a real token
            ids, mask = self.ids[rows, first:], mask[:, first:]
            valid = self.valid(rows)[:, first:]
            batch = Batch(ids.to(device), mask.long().to(device), [f"<window {int(r)}>" for r in rows])
            yield rows, batch, valid.to(device)


def _prefix_ids(tokenizer) -> list[int]:
    return list(tokenizer("", add_special_tokens=True)["input_ids"])


def token_windows(model, texts: Sequence[str], *, window: int = 64, max_tokens: int | None = None) -> TokenWindows:
    """Cut documents into windows of at most `window` tokens (prefix included).

    Args:
        model: A `lmscope.Model` (its tokenizer is used).
        texts: Documents (from `read_texts`).
        window: Tokens per window, prefix included.
        max_tokens: Stop after this many text tokens (prefix excluded).
    """
    tok = model.tokenizer
    prefix = _prefix_ids(tok)
    body = window - len(prefix)
    if body < 1:
        raise InputError(f"window={window} leaves no room for text after {len(prefix)} special tokens; use 8 or more.")
    if max_tokens is not None and max_tokens < 1:
        raise InputError(f"max_tokens must be at least 1, got {max_tokens}.")
    rows, docs, starts = [], [], []
    total = 0
    for d, text in enumerate(texts):
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        for s in range(0, len(ids), body):
            chunk = ids[s : s + body]
            if max_tokens is not None:
                chunk = chunk[: max_tokens - total]
            rows.append(prefix + chunk)
            docs.append(d)
            starts.append(s)
            total += len(chunk)
            if max_tokens is not None and total >= max_tokens:
                break
        if max_tokens is not None and total >= max_tokens:
            break
    if not rows:
        raise InputError("The corpus produced no tokens.")
    width = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = True
    return TokenWindows(ids, mask, len(prefix), torch.tensor(docs), torch.tensor(starts))
