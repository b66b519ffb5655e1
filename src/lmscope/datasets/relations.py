"""Relations for linear relational embeddings: (subject, object) facts and a prompt template.

The 38 shipped relations (`lmscope/datasets/data/relations/`, facts from Hernandez et al. 2023,
MIT, attribution in that folder's README; templates written for lmscope) load by name; a user's
relation is a JSONL file of `{"subject": ..., "object": ...}` lines plus a template:

    rel = load_relation("country_capital_city")
    rel = load_relation("my_pairs.jsonl", template="The mascot of {} is a")
    rel.prompt("France")                       # "The capital city of France is"
    shipped_relations()                        # [{"relation", "type", "n", "template"}, ...]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lmscope.datasets import files, shipped
from lmscope.engine.errors import InputError

FOLDER = "relations"
TYPES = ("factual", "commonsense", "linguistic", "bias")


@dataclass(frozen=True)
class Relation:
    """A relation: its facts and the template that asks for the object.

    Attributes:
        name: "country_capital_city", or the user file's stem.
        template: Text with one "{}" for the subject; the object follows after a space.
        pairs: (subject, object) facts, duplicates removed, in file order.
        type: "factual", "commonsense", "linguistic", "bias", or "user".
        source: The file the facts came from.
    """

    name: str
    template: str
    pairs: tuple[tuple[str, str], ...]
    type: str = "user"
    source: str = ""

    def prompt(self, subject: str) -> str:
        """The template with `subject` filled in."""
        return self.template.replace("{}", subject, 1)

    def subject_span(self, subject: str) -> tuple[int, int]:
        """Character span [start, end) of the subject inside `prompt(subject)`."""
        a = self.template.index("{}")
        return a, a + len(subject)

    @property
    def subjects(self) -> list[str]:
        return [s for s, _ in self.pairs]


def check_template(template: str) -> str:
    """A template must hold "{}" exactly once and end before the object (no trailing space)."""
    if not isinstance(template, str) or template.count("{}") != 1:
        raise InputError(f"A relation template needs exactly one '{{}}' where the subject goes, got {template!r} "
                         "(e.g. 'The capital city of {} is').")
    if template != template.rstrip() or not template.strip().replace("{}", ""):
        raise InputError(f"Template {template!r} must end with the word before the object, with no trailing "
                         "space, and hold more than the subject (e.g. '{} is located in the country of').")
    return template


def _index() -> dict[str, dict]:
    return {r["relation"]: r for r in shipped.rows(f"{FOLDER}/index.jsonl")}


def _templates() -> dict[str, str]:
    return {r["relation"]: r["template"] for r in shipped.rows(f"{FOLDER}/templates.jsonl")}


def shipped_relations(kind: str | None = None) -> list[dict]:
    """The shipped relations: name, type, domain, range, number of facts, template."""
    if kind is not None and kind not in TYPES:
        raise InputError(f"Unknown relation type {kind!r}; expected one of {', '.join(TYPES)}.")
    tpl = _templates()
    return [{**r, "template": tpl[name]} for name, r in _index().items() if kind in (None, r["type"])]


def _pairs(rows: list[tuple[int, dict]], where: str) -> tuple[tuple[str, str], ...]:
    out, seen = [], set()
    for line, rec in rows:
        s, o = rec.get("subject"), rec.get("object")
        if not (isinstance(s, str) and s.strip() and isinstance(o, str) and o.strip()):
            raise InputError(f'{where}:{line}: each line needs non-empty "subject" and "object" strings, '
                             'e.g. {"subject": "France", "object": "Paris"}.')
        key = (s.strip(), o.strip())
        if key not in seen:
            seen.add(key)
            out.append(key)
    if len(out) < 2:
        raise InputError(f"{where} holds {len(out)} distinct fact(s); a relation needs at least 2 (better 20+).")
    return tuple(out)


def load_relation(source: str | os.PathLike, *, template: str | None = None) -> Relation:
    """A shipped relation by name ("country_capital_city"), or a user's JSONL file with `template`.

    Args:
        source: Shipped relation name or a path to `{"subject", "object"}` JSONL.
        template: Required for a user file; overrides the shipped template otherwise.
    """
    name = str(source)
    index = _index()
    if name in index:
        rel_file = f"{FOLDER}/{name}.jsonl"
        rows = list(files.read_jsonl(shipped.path(rel_file)))
        return Relation(name, check_template(template or _templates()[name]), _pairs(rows, rel_file),
                        index[name]["type"], rel_file)
    p = Path(name).expanduser()
    if not p.is_file():
        close = [n for n in index if name.lower() in n]
        hint = f" Did you mean {', '.join(close[:4])}?" if close else ""
        raise InputError(f"{name!r} is neither a shipped relation nor a file.{hint} List them with "
                         "`lmscope relation list`; a user relation is JSONL of {\"subject\", \"object\"} lines.")
    if template is None:
        raise InputError(f"{p} is a user relation: pass its template, e.g. --template 'The capital city of {{}} is'.")
    rows = list(files.read_jsonl(p, what="relation file", example='{"subject": "France", "object": "Paris"}'))
    return Relation(p.stem, check_template(template), _pairs(rows, str(p)), "user", str(p))
