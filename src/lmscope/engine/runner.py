"""One forward (`run`) or one generation (`generate`) with captures and edits.

Speed rules: logits are computed only where asked (`logits="last"` unembeds one position,
`logits=None` none at all), and a run that needs no logits stops right after the last block
a capture needs.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lmscope.engine.errors import EngineError, InputError
from lmscope.engine.hooks import Cache, StopForward, hooked, others_active
from lmscope.engine.interventions import Edit
from lmscope.engine.model import Batch, Model
from lmscope.engine.sites import GLOBAL_KINDS


@dataclass
class RunResult:
    """Logits (`[batch, d_vocab]` for "last", `[batch, pos, d_vocab]` for "all", or None),
    the capture cache, and the tokenized batch."""

    logits: Tensor | None
    cache: Cache
    batch: Batch

    def top_k(self, model: Model, k: int = 10, row: int = 0) -> list[dict]:
        """The next-token distribution's top k of one row: token, id, probability, logit."""
        if self.logits is None or self.logits.dim() != 2:
            raise InputError("top_k needs a run with logits='last'.")
        logits = self.logits[row].float()
        probs = logits.softmax(-1)
        p, i = probs.topk(min(k, probs.shape[-1]))
        return [
            {"token": model.tokenizer.decode([int(t)]), "id": int(t), "prob": float(q), "logit": float(logits[t])}
            for q, t in zip(p, i, strict=True)
        ]


def _as_batch(model: Model, prompts, chat: bool) -> Batch:
    return prompts if isinstance(prompts, Batch) else model.tokenize(prompts, chat=chat)


def _grad_mode(grad: bool):
    # no_grad, not inference_mode: captured tensors must mix freely with weights afterwards
    return contextlib.nullcontext() if grad else torch.no_grad()


def run(
    model: Model,
    prompts: str | Sequence[str] | Batch,
    *,
    capture: Sequence[str] | dict = (),
    edits: Sequence[Edit] = (),
    positions="all",
    logits: Literal["last", "all"] | None = "last",
    chat: bool = False,
    to_cpu: bool = False,
    grad: bool = False,
    on_capture: Callable[[str, Tensor], None] | None = None,
) -> RunResult:
    """Run prompts once, capturing and editing sites.

    Args:
        model: The wrapped model.
        prompts: One prompt, a list (left-padded into one batch), or a `Batch`.
        capture: Sites to record (see `lmscope.engine.sites`), or a dict site -> positions.
        edits: Interventions to apply during the forward.
        positions: Default positions for captures ("all", "last", ints...).
        logits: "last" (next-token logits only), "all" positions, or None (no unembedding;
            the forward stops after the last captured block).
        chat: Apply the chat template.
        to_cpu: Move captures to the CPU.
        grad: Run with autograd; captures stay in the graph with `.grad` retained.
        on_capture: Called as `on_capture(site_name, tensor)` with each capture as it is
            recorded (on the device the cache would hold it on), instead of keeping it in
            `result.cache`. A reduction over many sites then holds one block's activations at a
            time rather than all of them (`lmscope.neurons.record` streams its statistics so).
    """
    batch = _as_batch(model, prompts, chat)
    if logits not in ("last", "all", None):
        raise InputError(f"logits must be 'last', 'all' or None, got {logits!r}.")
    if on_capture is not None and grad:
        raise InputError("on_capture streams captures out of the forward and keeps none; it cannot be combined "
                         "with grad=True (capture into the cache instead).")
    cap_names = list(capture.keys()) if isinstance(capture, dict) else list(capture)
    resolved = [s for c in cap_names for s in model.sites(c)]
    stop = None
    if logits is None and resolved and not others_active(model) and not any(s.kind in GLOBAL_KINDS and s.kind != "embed" for s in resolved):
        stop = max((s.layer for s in resolved if s.layer is not None), default=0)
    keep = 0 if logits == "all" else 1
    out_logits = None
    with _grad_mode(grad), hooked(model, capture, edits, positions=positions, to_cpu=to_cpu, grad=grad,
                                  stop_at_layer=stop, sink=on_capture) as cache:
        cache.mask = batch.attention_mask
        try:
            out = model.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           position_ids=batch.position_ids, logits_to_keep=keep, use_cache=False)
            if logits is not None:
                out_logits = out.logits[:, -1] if logits == "last" else out.logits
        except StopForward:
            pass
    return RunResult(out_logits, cache, batch)


@dataclass
class GenerateResult:
    texts: list[str]  # new text only
    tokens: Tensor  # [batch, new] generated ids (pad after EOS)
    sequences: Tensor  # [batch, prompt + new]
    batch: Batch
    cache: Cache


def generate(
    model: Model,
    prompts: str | Sequence[str] | Batch,
    *,
    edits: Sequence[Edit] = (),
    capture: Sequence[str] | dict = (),
    max_new_tokens: int = 32,
    chat: bool = False,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float | None = None,
    seed: int | None = None,
    min_new_tokens: int | None = None,
) -> GenerateResult:
    """Generate with the KV cache while edits apply (positions "all" covers the prompt and
    every new token; "generated" only new tokens; explicit indices only the prompt).

    Greedy by default; `do_sample=True` samples with `seed` for reproducibility.
    """
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    batch = _as_batch(model, prompts, chat)
    if model.n_ctx and batch.input_ids.shape[1] + max_new_tokens > model.n_ctx:
        raise InputError(f"Prompt + {max_new_tokens} new tokens exceed the context of {model.name} ({model.n_ctx}).")
    gen_kw = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
              "pad_token_id": model.tokenizer.pad_token_id}
    if min_new_tokens:
        gen_kw["min_new_tokens"] = min_new_tokens
    if do_sample:
        gen_kw["temperature"] = temperature
        if top_p is not None:
            gen_kw["top_p"] = top_p
        if seed is not None:
            torch.manual_seed(seed)
    else:
        gen_kw.update(temperature=None, top_p=None, top_k=None)
    with torch.no_grad(), hooked(model, capture, edits) as cache:
        cache.mask = batch.attention_mask
        seq = model.hf.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **gen_kw)
    new = seq[:, batch.input_ids.shape[1]:]
    texts = model.tokenizer.batch_decode(new, skip_special_tokens=True)
    return GenerateResult(texts, new, seq, batch, cache)


# ---- the prefix-cached last-token run ----------------------------------------------------

def cache_keyword(model: Model) -> str:
    """The name under which this model's forward takes a KV cache (`cache` from transformers
    5.24, `past_key_values` before)."""
    params = inspect.signature(model.hf.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise EngineError(f"{type(model.hf).__name__}.forward takes neither `cache` nor `past_key_values`; "
                      "lmscope cannot run it with a KV cache.")


def output_cache(out):
    """The KV cache returned by a forward (`out.cache`, or `out.past_key_values` before 5.24)."""
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if cache is None:
        raise EngineError("The forward returned no KV cache although use_cache=True was passed.")
    return cache


_LAST_ONLY = ("last", -1)


class PrefixRun:
    """Next-token logits of the same prompts under many edit sets that touch only the last
    prompt token, at the cost of one token per row per edit set.

    Causal attention means nothing before the last token sees an edit there, so every prompt
    minus its last token runs once (batched, left-padded, KV cache kept); each `logits(edits)`
    call runs only the last token against a copy of that cache. The result equals a full
    forward with the same edits (`run(..., edits=edits)`) up to float rounding (tested).

    Edits must use positions "last" or -1 (the last prompt token of every row); anything else
    would also touch the prefix, which ran without edits, and is refused.
    """

    def __init__(self, model: Model, prompts: str | Sequence[str] | Batch, *, chat: bool = False,
                 batch_size: int = 32) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}.")
        self.model = model
        self.key = cache_keyword(model)
        batches = ([prompts] if isinstance(prompts, Batch) else
                   [model.tokenize(list(ps), chat=chat) for ps in _chunks(_prompt_list(prompts), batch_size)])
        self.chunks = []
        with torch.inference_mode():
            for b in batches:
                ids, mask, pos = b.input_ids, b.attention_mask, b.position_ids
                pad = (mask.long().cumsum(1) == 0).sum(1)
                if ids.shape[1] < 2:
                    self.chunks.append((b, None, pad))
                    continue
                out = model.hf(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1],
                               use_cache=True, logits_to_keep=1)
                self.chunks.append((b, output_cache(out), pad))
        self.n = sum(c[0].input_ids.shape[0] for c in self.chunks)

    def logits(self, edits: Sequence[Edit] = (), *, rep: int = 1) -> Tensor:
        """Float logits [n * rep, d_vocab] of the last token with `edits`; `rep > 1` repeats
        every prompt `rep` times (rows prompt-major: row = i * rep + j), e.g. one row per
        head or per patched value for an `Apply` edit that reads its row."""
        for e in edits:
            if not (isinstance(e.positions, str | int) and e.positions in _LAST_ONLY):
                raise InputError(f"A prefix-cached run edits only the last prompt token: build edit {e!r} with "
                                 "positions='last' (or run the prompts with `run(..., edits=...)`).")
        if rep < 1:
            raise InputError(f"rep must be at least 1, got {rep}.")
        r = (lambda t: t.repeat_interleave(rep, 0)) if rep > 1 else (lambda t: t)
        out = []
        with torch.inference_mode():
            for b, past, pad in self.chunks:
                ids, mask = r(b.input_ids), r(b.attention_mask)
                t = ids.shape[1]
                if past is None:  # one-token prompts: nothing to cache
                    with hooked(self.model, edits=list(edits)):
                        o = self.model.hf(input_ids=ids, attention_mask=mask, position_ids=r(b.position_ids),
                                          use_cache=False, logits_to_keep=1)
                else:
                    cache = copy.deepcopy(past)
                    if rep > 1:
                        cache.batch_repeat_interleave(rep)
                    with hooked(self.model, edits=list(edits), prompt=(t, r(pad))):
                        o = self.model.hf(input_ids=ids[:, -1:], attention_mask=mask,
                                          position_ids=r(b.position_ids)[:, -1:], use_cache=True,
                                          logits_to_keep=1, **{self.key: cache})
                out.append(o.logits[:, -1].float())
        return torch.cat(out)


class SuffixRun:
    """Next-token logits of one prompt under many edit sets that touch only tokens from `start`
    on, at the cost of the suffix (start to the end) per edit set.

    Nothing before token `start` sees an edit there, so the prompt's first `start` tokens run once
    and keep their KV cache; each `logits(edits, rows=k)` call runs only the suffix, k rows at
    once against a copy of that cache (an edit whose value has k rows gives each row its own:
    e.g. one `Add` with a [k, 1, d_model] vector tries k directions in one forward). The result
    equals `run(prompt, edits=...)` on the prompt repeated k times, up to float rounding (tested).
    """

    def __init__(self, model: Model, prompt: str, start: int) -> None:
        self.model = model
        self.batch = model.tokenize(prompt)
        t = self.batch.input_ids.shape[1]
        self.start = start + t if start < 0 else start
        if not 0 <= self.start < t:
            raise InputError(f"start {start} is outside the prompt's {t} tokens.")
        self.key = cache_keyword(model)
        self.past = None
        if self.start > 0:
            with torch.inference_mode():
                out = model.hf(input_ids=self.batch.input_ids[:, :self.start],
                               attention_mask=self.batch.attention_mask[:, :self.start], use_cache=True,
                               logits_to_keep=1)
            self.past = output_cache(out)

    def _check(self, edits: Sequence[Edit]) -> None:
        t = self.batch.input_ids.shape[1]
        for e in edits:
            pos = e.positions
            ints = ([pos] if isinstance(pos, int) else pos if isinstance(pos, list) else
                    pos.reshape(-1).tolist() if isinstance(pos, torch.Tensor) else None)
            if pos == "last":
                continue
            if ints is None or any((i + t if i < 0 else i) < self.start for i in ints):
                raise InputError(f"A suffix run from token {self.start} edits only tokens from there on: build edit "
                                 f"{e!r} with token indices >= {self.start} (or use `run(..., edits=...)`).")

    def logits(self, edits: Sequence[Edit] = (), *, rows: int = 1) -> Tensor:
        """Float logits [rows, d_vocab] of the last token with `edits`, the prompt repeated `rows` times."""
        if rows < 1:
            raise InputError(f"rows must be at least 1, got {rows}.")
        self._check(edits)
        ids, mask = self.batch.input_ids.expand(rows, -1), self.batch.attention_mask.expand(rows, -1)
        kw = {}
        if self.past is not None:
            cache = copy.deepcopy(self.past)
            if rows > 1:
                cache.batch_repeat_interleave(rows)
            kw = {self.key: cache, "use_cache": True}
        pad = torch.zeros(rows, dtype=torch.long, device=ids.device)
        with torch.inference_mode(), hooked(self.model, edits=list(edits), prompt=(ids.shape[1], pad)):
            o = self.model.hf(input_ids=ids[:, self.start:], attention_mask=mask, logits_to_keep=1, **kw)
        return o.logits[:, -1].float()


def _prompt_list(prompts) -> list[str]:
    ps = [prompts] if isinstance(prompts, str) else list(prompts)
    if not ps:
        raise InputError("No prompts given; pass at least one non-empty string.")
    return ps


def _chunks(xs: list, n: int):
    for i in range(0, len(xs), n):
        yield xs[i:i + n]
