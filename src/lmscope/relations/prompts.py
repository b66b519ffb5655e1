"""Few-shot prompts of a relation, the subject's last token, and the paper's answer check.

    prompt, end = icl_prompt(rel, "Germany", demos=[("France", "Paris"), ("Japan", "Tokyo")])
    # "The capital city of France is Paris\\nThe capital city of Japan is Tokyo\\nThe capital city of Germany is"
    subject_token(model, prompt, end)     # index of the token holding the subject's last character
"""

from __future__ import annotations

from collections.abc import Sequence

from lmscope.datasets.relations import Relation
from lmscope.engine.errors import InputError
from lmscope.engine.model import Model


def icl_prompt(rel: Relation, subject: str, demos: Sequence[tuple[str, str]]) -> tuple[str, int]:
    """The few-shot prompt (one "template(s) o" line per demonstration, then the query) and the
    character index just past the query's subject."""
    head = "".join(f"{rel.prompt(s)} {o}\n" for s, o in demos)
    return head + rel.prompt(subject), len(head) + rel.subject_span(subject)[1]


def subject_token(model: Model, prompt: str, end_char: int) -> int:
    """Index (special tokens included, as the engine counts positions) of the token that holds
    character `end_char - 1`, the subject's last character."""
    tok = model.tokenizer
    try:
        enc = tok(prompt, return_offsets_mapping=True, add_special_tokens=True)
        offsets = enc["offset_mapping"]
    except (TypeError, KeyError, NotImplementedError, ValueError):  # slow tokenizers have no offsets
        offsets = None
    if offsets:
        hits = [i for i, (a, b) in enumerate(offsets) if b > a and a < end_char]
        if hits:
            return hits[-1]
    n = len(tok(prompt[:end_char], add_special_tokens=True)["input_ids"])
    if n < 1:
        raise InputError(f"Cannot find the subject's tokens in {prompt[:80]!r}.")
    return n - 1


def first_token(model: Model, obj: str) -> int:
    """The first token of " obj" (the object as it follows the template)."""
    ids = model.tokenizer(" " + obj, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError(f"The object {obj!r} encodes to no tokens.")
    return int(ids[0])


def is_prefix(token: str, obj: str) -> bool:
    """The paper's check on a token's text: a non-trivial prefix of the object (case-insensitive,
    surrounding spaces ignored): " Par" counts for "Paris", " " does not."""
    text = token.strip().lower()
    return bool(text) and obj.strip().lower().startswith(text)


def matches(model: Model, token_id: int, obj: str) -> bool:
    """`is_prefix` of the predicted token's text and the object."""
    return is_prefix(model.tokenizer.decode([int(token_id)]), obj)
