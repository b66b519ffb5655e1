"""Offline English text for the SAE measurements, from files every Python install has.

    python benchmarks/sae_text.py OUT.jsonl

Writes one {"text": ...} per document: the shipped corpus, the Python reference topics
(pydoc_data) and the docstrings of the standard library's modules, classes and functions
(paragraphs of 200+ characters). It is technical English with some code, not web text: a stand-in
for the datasets dictionaries are usually trained on, which cannot be downloaded here.
"""

from __future__ import annotations

import ast
import json
import sys
import sysconfig
from pathlib import Path


def stdlib_docstrings(min_chars: int = 200) -> list[str]:
    out = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "test" in path.parts or "idlelib" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text("utf-8", errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    out.append(doc)
    return out


def main() -> None:
    import pydoc_data.topics

    from lmscope.datasets.corpus import read_texts

    docs = read_texts(None) + list(pydoc_data.topics.topics.values()) + stdlib_docstrings()
    out = Path(sys.argv[1])
    out.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), "utf-8")
    print(f"{len(docs)} documents, {sum(map(len, docs)):,} characters -> {out}")


if __name__ == "__main__":
    main()
