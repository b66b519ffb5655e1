"""Patchscopes (Ghandeharioun et al. 2024): let the model read out its own hidden states.

Take the hidden state h at (source prompt S, position i, layer l), write it into a target
prompt T at (position i*, layer l*) and read the target's next-token distribution or
generation. "The hidden state at layer l" is `layers.l.resid_post` (the block's output,
`hidden_states[l + 1]` in HF terms, as in the official code), and the patch is a `Patch` on
`layers.l*.resid_post`: blocks after l* read h in the target's context. With l* = l the
state lands exactly where it came from in depth; patching into the last layer of the same
prompt at the same position is the logit lens.

Built-in targets:
    identity     "cat -> cat\\n1135 -> 1135\\nhello -> hello\\n?" patched at "?" (the official
                 next-token-prediction notebook), read the next token;
    description  "Syria: Country in the Middle East. Leonardo DiCaprio: American actor.
                 Samsung: South Korean multinational corporation. x:" patched at "x", generate.
    any text     containing a placeholder word ("x" by default), patched there.

A patch at an explicit prompt position applies to that position only, never to generated
tokens, so `generate` continues from the patched prompt.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmscope.datasets import shipped
from lmscope.engine.errors import InputError
from lmscope.engine.interventions import Patch
from lmscope.engine.model import Batch, Model
from lmscope.engine.progress import steps
from lmscope.engine.results import Result, Table

log = logging.getLogger(__name__)

IDENTITY_PROMPT = "cat -> cat\n1135 -> 1135\nhello -> hello\n?"
DESCRIPTION_PROMPT = ("Syria: Country in the Middle East. Leonardo DiCaprio: American actor. "
                      "Samsung: South Korean multinational corporation. x:")


def read_jsonl(name: str) -> list[dict]:
    """Rows of a JSONL file shipped in `lmscope/datasets/data` by name, or of any path."""
    return shipped.rows_of(name)


@dataclass(frozen=True, kw_only=True)
class Target:
    """A target prompt and the token index the state is written to."""

    name: str
    prompt: str
    position: int


def find_placeholder(model: Model, prompt: str, placeholder: str = "x") -> int:
    """Token index of the last whole-word `placeholder` in `prompt`.

    The prompt is cut right after the placeholder and tokenized; that prefix must tokenize as
    a prefix of the full prompt (otherwise the placeholder merges with what follows)."""
    hits = list(re.finditer(rf"(?<!\w){re.escape(placeholder)}(?!\w)", prompt))
    if not hits:
        raise InputError(f"The target prompt has no placeholder {placeholder!r} as a separate word: {prompt!r}.")
    end = hits[-1].end()
    full = model.tokenizer(prompt)["input_ids"]
    pre = model.tokenizer(prompt[:end])["input_ids"]
    if full[: len(pre)] != pre:
        raise InputError(
            f"The placeholder {placeholder!r} merges with the text after it when tokenized; "
            "put a space or punctuation after it."
        )
    return len(pre) - 1


def make_target(model: Model, target: str, placeholder: str = "x") -> Target:
    """"identity", "description", or a prompt with a placeholder word."""
    if target == "identity":
        return Target(name="identity", prompt=IDENTITY_PROMPT, position=-1)
    if target == "description":
        return Target(name="description", prompt=DESCRIPTION_PROMPT,
                      position=find_placeholder(model, DESCRIPTION_PROMPT, "x"))
    return Target(name="custom", prompt=target, position=find_placeholder(model, target, placeholder))


def source_states(model: Model, prompts: Sequence[str] | Batch, positions: Sequence[int] | int = -1,
                  layers: Sequence[int] | None = None, final: bool = True) -> tuple[Tensor, Tensor | None]:
    """resid_post of every asked layer at one position per prompt, in one forward.

    Returns:
        (states [n, layer, d_model] float32, final-layer resid_post [n, d_model] or None).
    """
    layers = list(range(model.n_layers)) if layers is None else [model.site(f"layers.{x}.resid_post").layer
                                                                  for x in layers]
    n = prompts.input_ids.shape[0] if isinstance(prompts, Batch) else len(prompts)
    pos = torch.tensor([positions] * n if isinstance(positions, int) else list(positions))
    sites = [f"layers.{x}.resid_post" for x in layers]
    last = f"layers.{model.n_layers - 1}.resid_post"
    caps = sites + ([last] if final and last not in sites else [])
    res = model.run(prompts if isinstance(prompts, Batch) else list(prompts), capture=caps, positions=pos, logits=None)
    states = torch.stack([res.cache[s].float() for s in sites], 1)
    return states, (res.cache[last].float() if final else None)


def patched_run(model: Model, target: Target, states: Tensor, layer: int) -> Tensor:
    """Next-token logits [n, d_vocab] of the target with row i's state [n, d_model] patched
    into `layers.{layer}.resid_post` at the target position (n copies of the prompt)."""
    n = states.shape[0]
    edit = Patch(site=f"layers.{layer}.resid_post", source=states[:, None, :], positions=[target.position])
    return model.run([target.prompt] * n, edits=[edit], logits="last").logits


def last_token_logits(model: Model, prompt: str, values: Tensor, layers: Tensor | int,
                      batch_size: int = 128) -> Tensor:
    """Next-token logits [n, d_vocab] of `prompt` with row i's *last-token* resid_post of layer
    `layers[i]` replaced by `values[i]` ([n, d_model]; `layers` an int or LongTensor [n]).

    Fast path for patches at the last position: nothing before it can see the patch (causal
    attention), so the prompt minus its last token runs once (one row, KV cache), the cache is
    repeated for the n rows, and only the last token runs per row. Rows with different layers
    share the forward: the edit at each layer replaces only its own rows (an `Apply` masked by
    row). Equal to `patched_run` up to float rounding (tested).
    """
    from lmscope.engine.interventions import Apply
    from lmscope.engine.runner import PrefixRun

    n = values.shape[0]
    lay = torch.full((n,), layers) if isinstance(layers, int) else layers.cpu()
    lay = torch.tensor([model.site(f"layers.{int(x)}.resid_post").layer for x in lay])
    prefix = PrefixRun(model, prompt)
    out = []
    for i in range(0, n, batch_size):
        vals = values[i:i + batch_size].to(model.device, model.dtype)  # [m, d]
        rows = lay[i:i + batch_size]
        m = vals.shape[0]
        edits = []
        for layer in rows.unique().tolist():
            mask = (rows == layer).to(model.device)[:, None, None]

            def fn(x, mask=mask, vals=vals):
                return torch.where(mask, vals[:, None, :], x)

            edits.append(Apply(site=f"layers.{layer}.resid_post", fn=fn, positions="last", name="patch"))
        out.append(prefix.logits(edits, rep=m))
    return torch.cat(out)


@dataclass(frozen=True, kw_only=True)
class PatchscopeResult(Result):
    """One Patchscope readout (JSON-ready fields)."""

    source: str
    source_position: int
    source_token: str
    source_layer: int
    target: str
    target_prompt: str
    target_position: int
    target_layer: int
    top: list[dict]  # patched next-token distribution
    top_unpatched: list[dict]  # the target prompt alone
    source_next: list[dict]  # the source model's own next-token prediction at the source position
    logit_lens: list[dict]  # h read through the final norm + unembedding
    text: str | None = None
    text_unpatched: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def table(self) -> Table:
        """The top tokens of each readout side by side: patched, the target alone, the source's
        own next token, and the logit lens of the patched state."""
        reads = {"patched": self.top, "unpatched target": self.top_unpatched,
                 "source's own next token": self.source_next, "logit lens of the state": self.logit_lens}
        n = max(len(r) for r in reads.values())
        rows = []
        for i in range(n):
            row = [i + 1]
            for r in reads.values():
                row += [repr(r[i]["token"]), r[i]["prob"]] if i < len(r) else [None, None]
            rows.append(row)
        cols = [c for name in reads for c in (name, f"p ({name})")]
        notes = [f"generated: {self.text!r}", f"unpatched: {self.text_unpatched!r}"] if self.text is not None else []
        return Table(["rank", *cols], rows,
                     title=f"source {self.source!r} token {self.source_token!r} layer {self.source_layer} -> target "
                           f"'{self.target}' position {self.target_position} layer {self.target_layer}",
                     formats={f"p ({name})": ".2f" for name in reads}, notes=notes)


def _rows(model: Model, logits: Tensor, k: int) -> list[dict]:
    p = logits.float().softmax(-1)
    v, i = p.topk(k)
    return [{"token": model.tokenizer.decode([int(t)]), "id": int(t), "prob": float(q)}
            for q, t in zip(v, i, strict=True)]


def patchscope(model: Model, source: str, *, source_layer: int, source_position: int = -1,
               target: str = "identity", target_layer: int | None = None, placeholder: str = "x",
               k: int = 10, max_new_tokens: int = 20) -> PatchscopeResult:
    """Read the state at (source, source_position, source_layer) through a target prompt.

    Args:
        model: The wrapped model.
        source: Source prompt.
        source_layer: Layer whose resid_post is taken.
        source_position: Prompt token index in the source (-1 = last).
        target: "identity", "description" or a prompt containing `placeholder`.
        target_layer: Layer whose resid_post is overwritten in the target (default: source_layer).
        placeholder: Placeholder word of a custom target.
        k: Top-k tokens to report.
        max_new_tokens: Greedy tokens to generate from the patched target (0: none).
    """
    from lmscope.engine.readout import unembed

    tgt = make_target(model, target, placeholder)
    src_layer = model.site(f"layers.{source_layer}.resid_post").layer
    tgt_layer = src_layer if target_layer is None else model.site(f"layers.{target_layer}.resid_post").layer
    states, final = source_states(model, [source], source_position, [src_layer])
    h = states[:, 0]  # [1, d]
    with torch.inference_mode():
        src_next = unembed(model, final)[0]
        lens = unembed(model, h)[0]
    patched = patched_run(model, tgt, h, tgt_layer)[0]
    plain = model.run(tgt.prompt, logits="last").logits[0]
    text = plain_text = None
    if max_new_tokens:
        edit = Patch(site=f"layers.{tgt_layer}.resid_post", source=h[:, None, :], positions=[tgt.position])
        text = model.generate(tgt.prompt, edits=[edit], max_new_tokens=max_new_tokens).texts[0]
        plain_text = model.generate(tgt.prompt, max_new_tokens=max_new_tokens).texts[0]
    ids = model.tokenizer(source)["input_ids"]
    return PatchscopeResult(
        source=source, source_position=source_position, source_token=model.tokenizer.decode([ids[source_position]]),
        source_layer=src_layer, target=tgt.name, target_prompt=tgt.prompt, target_position=tgt.position,
        target_layer=tgt_layer, top=_rows(model, patched, k), top_unpatched=_rows(model, plain, k),
        source_next=_rows(model, src_next, k), logit_lens=_rows(model, lens, k), text=text, text_unpatched=plain_text,
    )


# ---- layer sweeps -------------------------------------------------------------------------------


def default_sources(n: int = 40, seed: int = 0) -> list[str]:
    """Source texts: paragraphs of corpus.jsonl when shipped, else facts.jsonl prompts."""
    try:
        rows = [r["text"] for r in read_jsonl("corpus.jsonl")]
    except InputError:
        rows = [r["prompt"] for r in read_jsonl("facts.jsonl")]
    rng = random.Random(seed)
    rng.shuffle(rows)
    return rows[:n]


@dataclass(frozen=True, kw_only=True)
class IdentitySweep(Result):
    """Precision@1 per layer against the model's own next-token prediction at each source
    position: token-identity Patchscope, logit lens, and a shuffled control (the state of
    another source position patched in)."""

    model: str
    layers: list[int]
    n: int
    patchscope: list[float]
    logit_lens: list[float]
    shuffled: list[float]
    patchscope_surprisal: list[float]
    logit_lens_surprisal: list[float]
    unpatched: float  # agreement of the unpatched target's own prediction
    sources: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def table(self) -> Table:
        return Table(["layer", "Patchscope p@1", "logit lens p@1", "shuffled control"],
                     [list(r) for r in zip(self.layers, self.patchscope, self.logit_lens, self.shuffled, strict=True)],
                     title=f"{self.model}: token identity, {self.n} positions (unpatched target: {self.unpatched:.2f})",
                     formats=dict.fromkeys(("Patchscope p@1", "logit lens p@1", "shuffled control"), ".2f"))


def _pick_positions(model: Model, texts: Sequence[str], max_tokens: int, seed: int) -> Batch:
    """One random token index per text among its first `max_tokens` tokens, skipping index 0
    (BOS, or a first word without context); each row is cut to end at that token, so the
    chosen position is the last one (-1). Returns a left-padded Batch."""
    rng = random.Random(seed)
    seqs, shown = [], []
    for t in texts:
        ids = model.tokenizer(t)["input_ids"][:max_tokens]
        if len(ids) < 2:
            continue
        p = rng.randint(1, len(ids) - 1)
        seqs.append(ids[: p + 1])
        shown.append(model.tokenizer.decode(ids[: p + 1]))
    if not seqs:
        raise InputError("No source text has 2 or more tokens.")
    n = max(map(len, seqs))
    pad = model.tokenizer.pad_token_id or 0
    ids = torch.tensor([[pad] * (n - len(s)) + s for s in seqs], device=model.device)
    mask = torch.tensor([[0] * (n - len(s)) + [1] * len(s) for s in seqs], device=model.device)
    return Batch(ids, mask, shown)


def _rows_of(batch: Batch, i: int, j: int) -> Batch:
    return Batch(batch.input_ids[i:j], batch.attention_mask[i:j], batch.prompts[i:j])


def identity_sweep(model: Model, texts: Sequence[str], *, layers: Sequence[int] | None = None, seed: int = 0,
                   max_tokens: int = 48, batch_size: int = 32, progress: bool = False) -> IdentitySweep:
    """Token-identity Patchscope vs logit lens, precision@1 per layer (same layer in source and
    target), on one random position per text.

    Cost: one source forward for all layers, then per layer one unembedding of the n states
    (logit lens) and one target run of only the last token for 2n rows (`last_token_logits`:
    the identity target is patched at its last token).
    """
    from lmscope.engine.readout import unembed

    batch = _pick_positions(model, texts, max_tokens, seed)
    layers = list(range(model.n_layers)) if layers is None else [model.site(f"layers.{x}.resid_post").layer
                                                                  for x in layers]
    n = batch.input_ids.shape[0]
    states, finals = [], []
    for i in range(0, n, batch_size):
        s, f = source_states(model, _rows_of(batch, i, i + batch_size), -1, layers)
        states.append(s)
        finals.append(f)
    states = torch.cat(states)  # [n, layer, d]
    tgt = make_target(model, "identity")
    with torch.inference_mode():
        want = torch.cat([unembed(model, f).argmax(-1) for f in finals])  # [n] the model's own prediction
        plain = model.run(tgt.prompt, logits="last").logits[0].argmax()
    perm = torch.roll(torch.arange(n), 1)  # derangement: row i gets row i-1's state
    ps, ll, sh, ps_s, ll_s = [], [], [], [], []
    ar = torch.arange(n)
    for j, lay in enumerate(steps(layers, desc="layers", show=progress, unit="layer")):
        h = states[:, j]
        with torch.inference_mode():
            lens = torch.cat([unembed(model, h[i:i + batch_size]).float() for i in range(0, n, batch_size)])
        both = last_token_logits(model, tgt.prompt, torch.cat([h, h[perm]]), lay, batch_size)  # [2n, vocab]
        patched, shuf = both[:n], both[n:]
        w = want.to(patched.device)
        ps.append(float((patched.argmax(-1) == w).float().mean()))
        ll.append(float((lens.argmax(-1) == w.to(lens.device)).float().mean()))
        sh.append(float((shuf.argmax(-1) == w).float().mean()))
        ps_s.append(float(-patched.log_softmax(-1)[ar, w].mean()))
        ll_s.append(float(-lens.log_softmax(-1)[ar, w.to(lens.device)].mean()))
    dec = model.tokenizer.decode
    srcs = [{"text": t, "token": dec([int(ids[-1])]), "prediction": dec([int(w)])}
            for t, ids, w in zip(batch.prompts, batch.input_ids, want, strict=True)]
    return IdentitySweep(model=model.name, layers=layers, n=n, patchscope=ps, logit_lens=ll, shuffled=sh,
                         patchscope_surprisal=ps_s, logit_lens_surprisal=ll_s,
                         unpatched=float((want == plain.to(want.device)).float().mean()), sources=srcs)


@dataclass(frozen=True, kw_only=True)
class EntitySweep(Result):
    """Share of entity-description generations that mention one of the entity's keywords, per
    layer, with a shuffled control (another entity's state, scored against this entity's
    keywords) and the unpatched target as baseline."""

    model: str
    layers: list[int]
    n: int
    hit_rate: list[float]
    shuffled: list[float]
    unpatched: float
    examples: dict  # layer -> [(entity, text)] for a few entities

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def table(self) -> Table:
        return Table(["layer", "keyword hit rate", "shuffled control"],
                     [list(r) for r in zip(self.layers, self.hit_rate, self.shuffled, strict=True)],
                     title=f"{self.model}: entity description, {self.n} entities (unpatched: {self.unpatched:.2f})",
                     formats={"keyword hit rate": ".2f", "shuffled control": ".2f"})


def _hit(text: str, keywords: Sequence[str]) -> bool:
    t = text.lower()
    return any(k.lower() in t for k in keywords)


def _first_item(text: str) -> str:
    """The generated description up to the first newline or sentence end (the target lists
    items as "Name: description. Name: ..."; later items describe made-up entities)."""
    return re.split(r"\n|\.\s", text, maxsplit=1)[0]


def entity_sweep(model: Model, entities: Sequence[dict] | None = None, *, layers: Sequence[int] | None = None,
                 max_new_tokens: int = 16, batch_size: int = 48, n_examples: int = 3,
                 progress: bool = False) -> EntitySweep:
    """Entity-description Patchscope per layer: patch the entity's last token (source = the
    entity name alone) into "x" of the description prompt at the same layer, generate greedily,
    and score the first item of the generation with `patchscope_entities.jsonl` keywords."""
    entities = list(entities if entities is not None else read_jsonl("patchscope_entities.jsonl"))
    bad = [e for e in entities if not isinstance(e, dict) or not e.get("entity") or not e.get("keywords")]
    if bad or not entities:
        raise InputError(f"Entities must be rows like {{'entity': 'Barack Obama', 'keywords': ['president']}}; "
                         f"got {bad[0] if bad else 'no rows'!r}.")
    layers = list(range(model.n_layers)) if layers is None else [model.site(f"layers.{x}.resid_post").layer
                                                                  for x in layers]
    names = [e["entity"] for e in entities]
    kws = [e["keywords"] for e in entities]
    n = len(names)
    states, _ = source_states(model, names, -1, layers, final=False)  # [n, layer, d]
    tgt = make_target(model, "description")
    plain = _first_item(model.generate(tgt.prompt, max_new_tokens=max_new_tokens).texts[0])
    perm = torch.roll(torch.arange(n), 1)
    rates, shuf, examples = [], [], {}
    for j, lay in enumerate(steps(layers, desc="layers", show=progress, unit="layer")):
        texts = {}
        for name, src in (("patched", states[:, j]), ("shuffled", states[perm, j])):
            out = []
            for i in range(0, n, batch_size):
                edit = Patch(site=f"layers.{lay}.resid_post", source=src[i:i + batch_size, None, :],
                             positions=[tgt.position])
                rows = min(batch_size, n - i)
                out += model.generate([tgt.prompt] * rows, edits=[edit], max_new_tokens=max_new_tokens).texts
            texts[name] = [_first_item(t) for t in out]
        rates.append(sum(_hit(t, k) for t, k in zip(texts["patched"], kws, strict=True)) / n)
        shuf.append(sum(_hit(t, k) for t, k in zip(texts["shuffled"], kws, strict=True)) / n)
        examples[lay] = list(zip(names[:n_examples], texts["patched"][:n_examples], strict=True))
    return EntitySweep(model=model.name, layers=layers, n=n, hit_rate=rates, shuffled=shuf,
                       unpatched=sum(_hit(plain, k) for k in kws) / n, examples=examples)
