"""The Inspect tab's glue: residual decomposition and direct logit attribution, one part in
token space, the Patchscope layer sweep of one source, the Patchscope precision sweeps over many
sources, and token-space edits. Each endpoint is one call of `lmscope.inspect` (the calls
`lmscope inspect ...` makes), answered as the result's `to_dict()`, JSON-safe.

    POST /api/inspect/decompose             logit_attribution(decompose(...)).to_dict() + layer_adds
    POST /api/inspect/part                  one part of the decomposition through the unembedding
    POST /api/inspect/patchscope_sweep      patchscope(...) at every asked layer (a job: progress, cancel)
    POST /api/inspect/patchscope_benchmark  identity_sweep / entity_sweep over shipped sources (a job)
    POST /api/inspect/token_edit            token_edit(...).to_dict()

Each also has its job form, POST /api/jobs/inspect/<action>. Sources of the precision sweeps are
the shipped ones only (the corpus paragraphs, `patchscope_entities.jsonl`): a request cannot
make the server read a file (`lmscope inspect patchscope --sources FILE` runs a user's own).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from lmscope.engine.errors import InputError
from lmscope.engine.progress import steps

from .bodies import MAX_NEW_TOKENS, MAX_PROMPT_CHARS, MAX_TARGET_CHARS, _Body
from .studio import Studio, json_safe

#: Parts listed in the top-contributors table, tokens per layer / part, top tokens per readout.
MAX_TOP, MAX_TOKENS = 100, 20
#: Greedy tokens per layer of the one-source sweep: each layer generates twice (patched, unpatched).
MAX_SWEEP_NEW_TOKENS = 32
#: Source positions of the token-identity sweep (the docs measure 40) and entities of the
#: description sweep (each entity generates twice per layer: patched and the shuffled control).
MAX_IDENTITY_SOURCES, MAX_ENTITIES, MAX_ENTITY_NEW_TOKENS = 40, 42, 16
UNEMBED_MODES = ("frozen", "own_norm", "raw")

Layer = Annotated[int, Field(ge=-4096, le=4095)]
Position = Annotated[int, Field(ge=-65536, le=65535)]
Prompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
TokenText = Annotated[str, Field(min_length=1, max_length=MAX_TARGET_CHARS)]
Layers = Annotated[list[Layer], Field(min_length=1, max_length=256)]


class DecomposeRequest(_Body):
    """`lmscope inspect decompose`: the residual at (layer, position) split into embeddings, each
    head, each MLP; each part's direct effect on the target's logit (minus the baseline's)."""

    prompt: Prompt
    target: TokenText
    baseline: TokenText | None = None
    layer: Layer = -1
    position: Position = -1
    top: int = Field(12, ge=1, le=MAX_TOP)
    layer_tokens: int = Field(5, ge=0, le=MAX_TOKENS)
    unembed_mode: Literal["frozen", "own_norm", "raw"] = "frozen"
    chat: bool = False


class PartRequest(_Body):
    """One part of the same decomposition ("L12.H2", "L3.mlp", "embed") read in token space."""

    prompt: Prompt
    part: str = Field(min_length=1, max_length=40)
    layer: Layer = -1
    position: Position = -1
    k: int = Field(10, ge=1, le=MAX_TOKENS)
    mode: Literal["frozen", "own_norm", "raw"] = "frozen"
    chat: bool = False


class SweepRequest(_Body):
    """`patchscope` of one source state at every asked layer (l* = l unless `target_layer`)."""

    source: Prompt
    source_position: Position = -1
    target: Literal["identity", "description", "custom"] = "identity"
    target_prompt: str | None = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS)
    placeholder: str = Field("x", min_length=1, max_length=40, pattern=r"^\S+$")
    layers: Layers | None = None
    target_layer: Layer | None = None
    k: int = Field(5, ge=1, le=MAX_TOKENS)
    max_new_tokens: int = Field(8, ge=0, le=MAX_SWEEP_NEW_TOKENS)

    @model_validator(mode="after")
    def _custom_needs_a_prompt(self):
        if self.target == "custom" and self.target_prompt is None:
            raise ValueError("target 'custom' needs a target_prompt containing the placeholder word")
        if self.target != "custom" and self.target_prompt is not None:
            raise ValueError(f"target_prompt is only read with target 'custom' (target is {self.target!r})")
        return self


class BenchmarkRequest(_Body):
    """`lmscope inspect patchscope --sweep identity|entities` over the shipped sources."""

    kind: Literal["identity", "entities"] = "identity"
    n: int = Field(8, ge=2, le=MAX_ENTITIES)
    layers: Layers | None = None
    seed: int = Field(0, ge=0, le=2**32 - 1)
    max_new_tokens: int = Field(10, ge=1, le=MAX_ENTITY_NEW_TOKENS)

    @model_validator(mode="after")
    def _bounded(self):
        if self.kind == "identity" and self.n > MAX_IDENTITY_SOURCES:
            raise ValueError(f"n: the token-identity sweep takes at most {MAX_IDENTITY_SOURCES} source texts")
        return self


class TokenEditRequest(_Body):
    """`lmscope inspect token-edit`: subtract one token's unembedding direction, add another's."""

    prompt: Prompt
    layer: Layer
    position: Position = -1
    subtract: TokenText | None = None
    add: TokenText | None = None
    scale: float = Field(0.25, ge=-1e6, le=1e6, allow_inf_nan=False)
    relative: bool = True
    divide_by_gain: bool = False
    k: int = Field(10, ge=1, le=MAX_TOKENS)
    max_new_tokens: int = Field(0, ge=0, le=MAX_NEW_TOKENS)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    chat: bool = False

    @model_validator(mode="after")
    def _some_token(self):
        if self.subtract is None and self.add is None:
            raise ValueError("give a token to subtract, a token to add, or both")
        return self


def _first_token_warnings(model, texts: dict[str, str | None]) -> list[str]:
    """A line for each token text that is several tokens (the library then uses its first)."""
    out = []
    for what, text in texts.items():
        if text is None:
            continue
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > 1:
            out.append(f"The {what} {text!r} is {len(ids)} tokens; its first token "
                       f"{model.tokenizer.decode(ids[:1])!r} is used (a leading space usually matters).")
    return out


def add_routes(studio: Studio) -> None:
    from lmscope.inspect import decomposition as dec
    from lmscope.inspect import patchscopes as ps

    model = studio.model
    studio.info["inspect"] = {
        "max_top": MAX_TOP, "max_tokens": MAX_TOKENS, "max_sweep_new_tokens": MAX_SWEEP_NEW_TOKENS,
        "max_identity_sources": MAX_IDENTITY_SOURCES, "max_entities": MAX_ENTITIES,
        "max_entity_new_tokens": MAX_ENTITY_NEW_TOKENS, "unembed_modes": list(UNEMBED_MODES),
    }

    def decompose_job(req: DecomposeRequest) -> dict:
        batch = studio.tokenize(req.prompt, req.chat)
        d = dec.decompose(model, req.prompt, layer=req.layer, position=req.position, chat=req.chat)
        a = dec.logit_attribution(model, d, req.target, baseline=req.baseline)
        res = a.to_dict(k=req.top)
        if req.layer_tokens:
            res["layer_tokens"] = dec.layer_adds(model, d, k=req.layer_tokens, mode=req.unembed_mode)
        return json_safe({**res, "chat": req.chat, "tokens": studio.input_tokens(batch), "n_heads": model.n_heads,
                          "warnings": _first_token_warnings(model, {"target": req.target, "baseline": req.baseline})})

    def part_job(req: PartRequest) -> dict:
        studio.tokenize(req.prompt, req.chat)
        d = dec.decompose(model, req.prompt, layer=req.layer, position=req.position, chat=req.chat)
        i = d.index(req.part)
        logits = dec.unembed_vectors(model, d.parts[0, i:i + 1], mode=req.mode, resid=d.resid[0])
        return json_safe({"model": model.name, "prompt": req.prompt, "layer": d.layer, "position": d.position,
                          "part": req.part, "kind": d.kinds[i], "part_layer": d.layers[i], "head": d.heads[i],
                          "norm": float(d.parts[0, i].norm()), "mode": req.mode,
                          **dec.top_tokens_of(model, logits, req.k)[0]})

    def sweep_job(req: SweepRequest) -> dict:
        batch = studio.tokenize(req.source)
        target = req.target_prompt if req.target == "custom" else req.target
        if req.target == "custom":
            studio.tokenize(req.target_prompt)
        layers = req.layers if req.layers is not None else list(range(model.n_layers))
        for lay in layers:  # every layer checked before the first readout, not after a minute of work
            model.site(f"layers.{lay}.resid_post")
        if req.target_layer is not None:
            model.site(f"layers.{req.target_layer}.resid_post")
        rows = [ps.patchscope(model, req.source, source_layer=lay, source_position=req.source_position, target=target,
                              target_layer=req.target_layer, placeholder=req.placeholder, k=req.k,
                              max_new_tokens=req.max_new_tokens).to_dict()
                for lay in steps(layers, desc="layers", unit="layer")]
        return json_safe({"model": model.name, "source": req.source, "source_position": req.source_position,
                          "source_tokens": studio.input_tokens(batch), "target": req.target,
                          "placeholder": req.placeholder, "target_layer": req.target_layer, "k": req.k,
                          "max_new_tokens": req.max_new_tokens, "layers": [r["source_layer"] for r in rows],
                          "rows": rows})

    def benchmark_job(req: BenchmarkRequest) -> dict:
        if req.kind == "identity":
            res = ps.identity_sweep(model, ps.default_sources(req.n, req.seed), layers=req.layers, seed=req.seed).to_dict()
        else:
            ents = ps.read_jsonl("patchscope_entities.jsonl")
            if req.n > len(ents):
                raise InputError(f"n: {len(ents)} entities are shipped; ask for at most {len(ents)}.")
            res = ps.entity_sweep(model, ents[:req.n], layers=req.layers, max_new_tokens=req.max_new_tokens).to_dict()
            res["examples"] = {str(k): v for k, v in res["examples"].items()}  # JSON keys are strings
        return json_safe({"kind": req.kind, **res})

    def edit_job(req: TokenEditRequest) -> dict:
        studio.tokenize(req.prompt, req.chat)
        r = dec.token_edit(model, req.prompt, layer=req.layer, position=req.position, subtract=req.subtract,
                           add=req.add, scale=req.scale, relative=req.relative, divide_by_gain=req.divide_by_gain,
                           k=req.k, max_new_tokens=req.max_new_tokens, seed=req.seed, chat=req.chat)
        return json_safe({**r.to_dict(), "model": model.name, "scale": req.scale, "relative": req.relative,
                          "divide_by_gain": req.divide_by_gain, "seed": req.seed, "chat": req.chat,
                          "warnings": _first_token_warnings(model, {"token to subtract": req.subtract,
                                                                    "token to add": req.add})})

    studio.post("inspect/decompose", DecomposeRequest, decompose_job)
    studio.post("inspect/part", PartRequest, part_job)
    studio.post("inspect/patchscope_sweep", SweepRequest, sweep_job)
    studio.post("inspect/patchscope_benchmark", BenchmarkRequest, benchmark_job)
    studio.post("inspect/token_edit", TokenEditRequest, edit_job)
