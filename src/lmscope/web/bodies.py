"""Request bodies of the studio's JSON API, and how a body that does not validate is reported.

Types are strict: `"top_k": "5"`, `"top_k": true`, `"top_k": 5.0` and `"chat": "yes"` are
refused rather than coerced (an integer is still accepted where a number is expected). A
strict `str` is also valid Unicode: a lone surrogate (`"\\ud800"`, which JSON allows, but which
can be neither tokenized nor written back as UTF-8) is refused with "unable to parse raw data
as a unicode string".
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import circuits, relations

MAX_NEW_TOKENS = 128
MAX_PROMPT_CHARS = 4000
MAX_TARGET_CHARS = 100  # a target is one token's text; long ones were logged whole


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RunRequest(_Body):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    top_k: int = Field(10, ge=1, le=100)
    chat: bool = False


class EditSpec(_Body):
    """One edit. add: `scale * vector` (from `vector_file`, or the scalar `value` added to every
    feature); clamp: set the site to `value`; zero: set it to 0."""

    type: Literal["add", "clamp", "zero"]
    site: str = Field(min_length=1, max_length=200)
    value: float | None = Field(None, allow_inf_nan=False)
    vector_file: str | None = Field(None, min_length=1, max_length=1000)
    scale: float = Field(1.0, allow_inf_nan=False)


class GenerateRequest(_Body):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    max_new_tokens: int = Field(32, ge=1, le=MAX_NEW_TOKENS)
    chat: bool = False
    edits: list[EditSpec] = Field(default_factory=list, max_length=16)


class LensRequest(_Body):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    targets: list[Annotated[str, Field(max_length=MAX_TARGET_CHARS)]] = Field(default_factory=list, max_length=8)
    top_k: int = Field(5, ge=1, le=20)
    chat: bool = False


class CircuitRequest(_Body):
    """A circuit search: a task *name* (`circuits.task_names()`; never a path), its size and the
    attribution, ablation and faithfulness target of `lmscope.circuits.CircuitConfig`."""

    task: str = Field(min_length=1, max_length=200)
    n: int = Field(8, ge=1, le=circuits.MAX_PAIRS)
    method: Literal["eap-ig", "eap"] = "eap-ig"
    ablation: Literal["resample", "mean", "zero"] = "resample"
    target: float = Field(0.8, gt=0, le=1.5, allow_inf_nan=False)
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        return circuits.check_task(v)


class SaeRequest(_Body):
    """One action on an SAE folder (see `web.saes`): its card, a latent's page, a search of the
    latents by word, or steering with a latent. `path` is checked against the SAE folders."""

    path: str = Field(min_length=1, max_length=1000)
    action: Literal["card", "feature", "search", "steer"] = "card"
    site: str | None = Field(None, min_length=1, max_length=200)
    format: Literal["lmscope", "saelens", "sparsify", "gemmascope2"] | None = None
    feature: int | None = Field(None, ge=-(2**31), le=2**31 - 1)
    k: int = Field(10, ge=1, le=50)
    query: str | None = Field(None, min_length=1, max_length=200)
    limit: int = Field(20, ge=1, le=200)
    mode: Literal["add", "clamp", "ablate"] = "add"
    value: float = Field(4.0, ge=-1000, le=1000, allow_inf_nan=False)
    prompts: list[Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]] = Field(default_factory=list,
                                                                                           max_length=8)
    keywords: list[Annotated[str, Field(min_length=1, max_length=MAX_TARGET_CHARS)]] = Field(default_factory=list,
                                                                                            max_length=16)
    max_new_tokens: int = Field(24, ge=1, le=MAX_NEW_TOKENS)
    generate: bool = True

    @model_validator(mode="after")
    def _needs(self):
        if self.action in ("feature", "steer") and self.feature is None:
            raise ValueError(f"action {self.action!r} needs a feature (a latent's index)")
        if self.action == "search" and (self.query is None or not self.query.strip()):
            raise ValueError("action 'search' needs a query (a word)")
        return self


class RelationFitRequest(_Body):
    """Fit an LRE of a shipped relation (a *name*, never a path) at one layer, on the first `n_train`
    of its first `max_facts` facts that the model knows; `save` writes it into the LRE folders."""

    relation: str = Field(min_length=1, max_length=200)
    layer: int = Field(ge=-4096, le=4095)
    n_train: int = Field(5, ge=1, le=relations.MAX_TRAIN)
    beta: float = Field(2.0, gt=0, le=20, allow_inf_nan=False)
    template: str | None = Field(None, min_length=1, max_length=200)
    max_facts: int = Field(24, ge=2, le=relations.MAX_FACTS)
    save: str | None = Field(None, min_length=1, max_length=1000)
    overwrite: bool = False

    @field_validator("relation")
    @classmethod
    def _known_relation(cls, v: str) -> str:
        return relations.check_relation(v)

    @model_validator(mode="after")
    def _enough_facts(self):
        if self.max_facts < self.n_train:
            raise ValueError(f"max_facts ({self.max_facts}) must be at least n_train ({self.n_train})")
        return self


class _LreSource(_Body):
    """An LRE: `fitted` (an id from /api/relations/fit) or `path` (a file in the LRE folders)."""

    path: str | None = Field(None, min_length=1, max_length=1000)
    fitted: str | None = Field(None, pattern=r"^fit-[0-9]{1,9}$")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.fitted is None):
            raise ValueError("give the LRE as either fitted (an id from /api/relations/fit) or path (a file in the "
                             "LRE folders)")
        return self


class RelationLensRequest(_LreSource):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    target: str = Field("", max_length=MAX_TARGET_CHARS)
    layers: list[Annotated[int, Field(ge=-4096, le=4095)]] | None = Field(None, min_length=1, max_length=256)


class RelationPredictRequest(_LreSource):
    subjects: list[Annotated[str, Field(min_length=1, max_length=200, pattern=r"\S")]] = Field(min_length=1,
                                                                                              max_length=16)
    k: int = Field(5, ge=1, le=20)


def _clean(x) -> str | int:
    """A JSON-safe, short rendering of one `loc` element or message."""
    if isinstance(x, int) and not isinstance(x, bool):
        return x
    s = str(x).encode("utf-8", "backslashreplace").decode("utf-8")
    return s if len(s) <= 200 else s[:200] + "…"


def validation_body(errors: list[dict]) -> dict:
    """FastAPI's validation errors -> `{"error": one readable line, "detail": [{loc, msg, type}]}`.

    The `input` of each error is dropped: it echoes what was sent, which may be NaN (the JSON
    encoder refuses it), a lone surrogate (UTF-8 refuses it) or megabytes long.
    """
    detail = [{"loc": [_clean(p) for p in e.get("loc", ())], "msg": _clean(e.get("msg", "")),
               "type": _clean(e.get("type", ""))} for e in errors[:20]]
    lines = [f"{'.'.join(str(p) for p in d['loc'][1:]) or d['loc'][0] if d['loc'] else 'request'}: {d['msg']}"
             for d in detail]
    more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
    return {"error": "Invalid request: " + "; ".join(lines) + more, "detail": detail}
