"""Reading text and JSONL files, one rule for all: UTF-8 (a BOM is dropped), and a file that
is not UTF-8, not valid JSON, or not one JSON object per line is an `InputError` that names the
file and where (byte offset or line) and says what was expected."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lmscope.engine.errors import InputError


def read_text(path: str | os.PathLike, *, what: str = "file") -> str:
    """The whole file as text. Non-UTF-8 bytes raise InputError with the byte offset."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except IsADirectoryError:
        raise InputError(f"{p} is a directory; expected a {what}.") from None
    except FileNotFoundError:
        raise InputError(f"No {what} at {p}.") from None
    except OSError as e:
        raise InputError(f"Cannot read the {what} {p}: {e.strerror or e}.") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(
            f"{p} is not UTF-8 text: byte {e.start} (line {line}) is 0x{data[e.start]:02x}. "
            "Save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
        ) from None


def read_lines(path: str | os.PathLike, *, what: str = "file") -> list[str]:
    """Non-blank lines of a UTF-8 text file."""
    return [line for line in read_text(path, what=what).splitlines() if line.strip()]


def read_jsonl(path: str | os.PathLike, *, what: str = "JSONL file", objects: bool = True,
               example: str = "") -> list[tuple[int, object]]:
    """(line number, record) for every non-blank line. `objects=True` requires each record to
    be a JSON object (`example` shows the expected shape in the error)."""
    out = []
    for n, line in enumerate(read_text(path, what=what).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); "
                             "expected one JSON object per line.") from None
        if objects and not isinstance(rec, dict):
            hint = f" like {example}" if example else ""
            raise InputError(f"{path}:{n}: expected a JSON object{hint}, got {type(rec).__name__}.")
        out.append((n, rec))
    return out


def read_json(path: str | os.PathLike, *, what: str = "JSON file"):
    """A whole JSON document."""
    text = read_text(path, what=what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from None
