"""Logit lens: read every layer's residual stream with the model's own final norm and head.

    p_l = softmax(W_U · FinalNorm(h_l))            h_l = resid_post of block l

(nostalgebraist 2020). At the last block this *is* the model's output distribution. The final
norm is always applied, exactly as the model applies it (`lmscope.engine.readout.unembed`: Gemma's
`1 + w` gain included, logit softcapping where the family has it); skipping it, as some lens
code silently does (tuned-lens issue #56), reads a different, miscalibrated distribution.

Cost: every (layer, position) cell needs a full-vocabulary matmul (Gemma: 262,144 x 640), so
cells are unembedded in chunks of at most `ROW_BUDGET` logits and reduced on the spot to the
top-k, the target tokens' probabilities and ranks, and the KL to the final distribution; a
`[layer, pos, d_vocab]` tensor is never held.

A `translator(layer, h) -> h'` (the tuned lens, `lmscope.lens.tuned`) is applied before the
final norm when given; the reference ("final") distribution is always the model's own output.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmscope.engine.errors import InputError
from lmscope.engine.model import Batch, Model
from lmscope.engine.readout import unembed
from lmscope.engine.results import Result, Table

log = logging.getLogger(__name__)

#: Largest number of logits (rows x d_vocab) materialised at once: 32M floats = 128 MiB.
ROW_BUDGET = 2**25

Translator = Callable[[int, Tensor], Tensor]  # (layer, [..., d_model]) -> [..., d_model]


@dataclass(frozen=True, kw_only=True)
class LensResult(Result):
    """A lens read at every (layer, position) of one prompt.

    Attributes:
        model: Model name.
        prompt: The prompt as given.
        lens: "logit" or "tuned".
        tokens: Input tokens as text [pos].
        n_prefix: Leading special tokens (BOS) among `tokens`; excluded from averages.
        layers: Block indices read (resid_post) [layer].
        top_ids: Top-k token ids [layer, pos, k].
        top_probs: Their probabilities [layer, pos, k].
        top_tokens: Their text, nested [layer][pos][k].
        targets: Target tokens as text [target].
        target_ids: Their ids [target].
        target_probs: Probability of each target [layer, pos, target].
        target_ranks: Rank of each target, 1 = top [layer, pos, target].
        kl: KL(final || lens) in nats [layer, pos]; 0 at the last block of the logit lens.
    """

    model: str
    prompt: str
    lens: str
    tokens: list[str]
    n_prefix: int
    layers: list[int]
    top_ids: Tensor
    top_probs: Tensor
    top_tokens: list[list[list[str]]]
    targets: list[str] = field(default_factory=list)
    target_ids: list[int] = field(default_factory=list)
    target_probs: Tensor | None = None
    target_ranks: Tensor | None = None
    kl: Tensor | None = None

    @property
    def top_k(self) -> int:
        return self.top_ids.shape[-1]

    def _target_index(self, target: str | int) -> int:
        if isinstance(target, int) and target in self.target_ids:
            return self.target_ids.index(target)
        if target in self.targets:
            return self.targets.index(target)
        raise InputError(f"{target!r} is not a target of this lens run (targets: {self.targets}); pass it in targets=.")

    def entry_layer(self, target: str | int, *, k: int | None = None, position: int = -1) -> int | None:
        """First layer (block index) where `target` is among the top `k` (default: the run's
        top_k) at `position`, or None if it never is."""
        k = self.top_k if k is None else k
        ranks = self.target_ranks[:, position, self._target_index(target)]  # [layer]
        hit = (ranks <= k).nonzero()
        return self.layers[int(hit[0])] if len(hit) else None

    def settle_layer(self, target: str | int, *, k: int | None = None, position: int = -1) -> int | None:
        """First layer from which `target` stays in the top `k` through the last layer read."""
        k = self.top_k if k is None else k
        inside = (self.target_ranks[:, position, self._target_index(target)] <= k).tolist()
        if not inside[-1]:
            return None
        i = len(inside) - 1
        while i > 0 and inside[i - 1]:
            i -= 1
        return self.layers[i]

    def kl_per_layer(self) -> Tensor:
        """Mean KL(final || lens) over the text positions (prefix excluded) [layer]."""
        return self.kl[:, self.n_prefix :].mean(-1) if self.kl.shape[1] > self.n_prefix else self.kl.mean(-1)

    def to_dict(self, *, position: int | None = None) -> dict:
        """JSON-ready summary. Stable keys: model, prompt, lens, tokens, layers, top_k, cells
        (one per layer x position: layer, pos, top [[token, prob], ...], kl), targets (token,
        id, prob [layer], rank [layer] at `position`, entry_layer, settle_layer), kl_per_layer.
        `position` (default: the last) is where the target curves are read."""
        pos = -1 if position is None else position
        cells = []
        for li, layer in enumerate(self.layers):
            for p in range(len(self.tokens)):
                cells.append({
                    "layer": layer, "pos": p,
                    "top": [[t, round(float(q), 6)]
                            for t, q in zip(self.top_tokens[li][p], self.top_probs[li, p], strict=True)],
                    "kl": round(float(self.kl[li, p]), 6),
                })
        targets = []
        for j, (t, i) in enumerate(zip(self.targets, self.target_ids, strict=True)):
            targets.append({
                "token": t, "id": i, "prob": [round(float(x), 6) for x in self.target_probs[:, pos, j]],
                "rank": [int(x) for x in self.target_ranks[:, pos, j]],
                "entry_layer": self.entry_layer(i, position=pos), "settle_layer": self.settle_layer(i, position=pos),
            })
        return {
            "model": self.model, "prompt": self.prompt, "lens": self.lens, "tokens": self.tokens, "layers": self.layers,
            "top_k": self.top_k, "position": pos, "cells": cells, "targets": targets,
            "kl_per_layer": [round(float(x), 6) for x in self.kl_per_layer()],
        }

    def table(self) -> Table:
        """Per layer at the last position: the top 5 tokens, the KL to the output, and each
        target's probability and rank (what `lmscope lens logit` prints)."""
        n = min(5, self.top_k)
        rows = []
        for li, layer in enumerate(self.layers):
            tops = "  ".join(f"{t!r} {float(q):.2f}" for t, q in zip(self.top_tokens[li][-1][:n],
                                                                         self.top_probs[li, -1, :n], strict=True))
            targets = []
            for j in range(len(self.targets)):
                targets += [float(self.target_probs[li, -1, j]), int(self.target_ranks[li, -1, j])]
            rows.append([layer, tops, float(self.kl[li, -1]), *targets])
        cols = [f"p({t!r})" for t in self.targets]
        return Table(
            ["layer", f"top {n} at the last position", "KL", *(c for t, p in zip(self.targets, cols, strict=True)
                                                                for c in (p, f"rank of {t!r}"))],
            rows, title=f"{self.model}: {self.lens} lens of {self.prompt!r}",
            formats={"KL": ".2f", **{c: ".3f" for c in cols}},
            notes=[f"{t!r}: enters the top-{self.top_k} at layer {self.entry_layer(i)}, stays from layer "
                   f"{self.settle_layer(i)}." for t, i in zip(self.targets, self.target_ids, strict=True)])


def _check_layers(model: Model, layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(model.n_layers))
    out = []
    for layer in layers:
        if not -model.n_layers <= layer < model.n_layers:
            raise InputError(
                f"Layer {layer} is out of range for {model.name} ({model.n_layers} layers: 0..{model.n_layers - 1}, "
                f"or {-model.n_layers}..-1)."
            )
        out.append(layer % model.n_layers)
    if not out:
        raise InputError("layers is empty; pass at least one layer (or None for all).")
    return sorted(set(out))


def target_ids(model: Model, targets: Sequence[str | int]) -> list[int]:
    """Token ids of targets given as text (first token, warning if longer) or as ids."""
    ids = []
    for t in targets:
        if isinstance(t, int):
            if not 0 <= t < model.d_vocab:
                raise InputError(f"Token id {t} is outside the vocabulary of {model.name} (0..{model.d_vocab - 1}).")
            ids.append(t)
        else:
            ids.append(model.token_id(t))
    return ids


def n_prefix_tokens(model: Model) -> int:
    """Special tokens the tokenizer puts before every text (BOS for Gemma, none for SmolLM2)."""
    return len(model.tokenizer("", add_special_tokens=True)["input_ids"])


@dataclass
class _Reading:
    """What the chunked readout keeps of every cell."""

    top_ids: Tensor  # [layer, n, k]
    top_probs: Tensor  # [layer, n, k]
    target_probs: Tensor  # [layer, n, target]
    target_ranks: Tensor  # [layer, n, target]
    kl: Tensor  # [layer, n]


def read_states(
    model: Model,
    states: Tensor,  # [layer, n, d_model] resid_post of `layers` at n positions
    final: Tensor | None,  # [n, d_model] resid_post of the last block; None: states[-1] is it
    layers: Sequence[int],
    *,
    k: int = 5,
    targets: Sequence[int] = (),
    translator: Translator | None = None,
) -> _Reading:
    """Top-k, target probabilities/ranks and KL(final || lens) of every cell, in chunks.

    Chunks hold a few positions of every layer at once (at most `ROW_BUDGET` logits), so the
    head's weight is read once per chunk for all layers. `final=None` means the last row of
    `states` is the last block and the translator leaves it unchanged (so its logits are the
    model's own and are computed once). Call under `torch.inference_mode()`.
    """
    n_layer, n = states.shape[:2]
    per_chunk = max(1, ROW_BUDGET // (model.d_vocab * (n_layer + (final is not None))))
    tid = torch.tensor(list(targets), dtype=torch.long, device=model.device)
    out = {"ti": [], "tp": [], "gp": [], "gr": [], "kl": []}
    for lo in range(0, n, per_chunk):
        hi = min(n, lo + per_chunk)
        h = states[:, lo:hi].to(model.device)  # [layer, c, d]
        if translator is not None:
            h = torch.stack([translator(layer, h[i]) for i, layer in enumerate(layers)])
        z = unembed(model, h.flatten(0, 1)).float().unflatten(0, (n_layer, hi - lo))  # [layer, c, vocab]
        zf = z[-1] if final is None else unembed(model, final[lo:hi].to(model.device)).float()  # [c, vocab]
        buf = torch.empty_like(z)  # one scratch buffer: fresh vocabulary-sized temporaries are slow
        lse = _logsumexp(z, buf)  # [layer, c]
        lse_f = lse[-1] if final is None else torch.logsumexp(zf, -1)  # [c]
        pf = (zf - lse_f[:, None]).exp_()  # [c, vocab]
        # KL(f || l) = sum pf (zf - z_l) - lse_f + lse_l: one dot product per cell over the
        # logit *differences* (in the scratch buffer). Dotting pf with z_l and zf separately
        # loses ~1e-3 nats to float32 accumulation over a 262k vocabulary; the difference is
        # exactly 0 where the lens reads the model's own last state.
        torch.sub(zf[None], z, out=buf)
        cross = torch.einsum("lcv,cv->lc", buf, pf)  # [layer, c]
        out["kl"].append((cross - lse_f[None] + lse).clamp_min_(0.0))
        tv, ti = topk_last(z, k)  # [layer, c, k]
        out["ti"].append(ti)
        out["tp"].append((tv - lse[..., None]).exp_())
        if len(tid):
            zt = z[..., tid]  # [layer, c, target]
            out["gp"].append((zt - lse[..., None]).exp_())
            ranks = []
            for j in range(len(tid)):  # rank = 1 + #logits above the target's (a float count is exact < 2^24)
                torch.gt(z, zt[..., j, None], out=buf)
                ranks.append(buf.sum(-1).long() + 1)
            out["gr"].append(torch.stack(ranks, -1))
        del z, zf, pf, buf
    empty = torch.zeros(n_layer, n, 0)
    return _Reading(
        top_ids=torch.cat(out["ti"], 1).cpu(), top_probs=torch.cat(out["tp"], 1).cpu(),
        target_probs=torch.cat(out["gp"], 1).cpu() if len(tid) else empty,
        target_ranks=torch.cat(out["gr"], 1).cpu() if len(tid) else empty.long(),
        kl=torch.cat(out["kl"], 1).cpu(),
    )


def _logsumexp(z: Tensor, buf: Tensor) -> Tensor:
    """logsumexp over the last dim, using `buf` (same shape) as scratch."""
    m = z.amax(-1, keepdim=True)
    torch.sub(z, m, out=buf)
    return buf.exp_().sum(-1).log_() + m[..., 0]


def topk_last(z: Tensor, k: int, block: int = 1024) -> tuple[Tensor, Tensor]:
    """Exact `z.topk(k, -1)` for wide rows, ~5x faster on CPU: the top k values lie in the k
    blocks with the largest maxima, so only those are searched."""
    v = z.shape[-1]
    if v % block or k > v // block or z.device.type != "cpu":
        return z.topk(k, -1)
    blocks = z.unflatten(-1, (v // block, block))  # [..., n_block, block]
    best = blocks.amax(-1).topk(k, -1).indices  # [..., k]
    cand = blocks.gather(-2, best[..., None].expand(*best.shape, block)).flatten(-2)  # [..., k * block]
    val, i = cand.topk(k, -1)
    return val, best.gather(-1, i // block) * block + i % block


def decode_ids(model: Model, ids: Tensor) -> list:
    """Nested lists of token texts for an id tensor of any shape (each id decoded once)."""
    memo: dict[int, str] = {}
    dec = model.tokenizer.decode

    def one(i: int) -> str:
        if i not in memo:
            memo[i] = dec([i])
        return memo[i]

    def walk(x: list):
        return [walk(v) for v in x] if isinstance(x, list) else one(x)

    return walk(ids.tolist())


def run_lens(
    model: Model,
    prompt: str,
    *,
    targets: Sequence[str | int] = (),
    top_k: int = 5,
    layers: Sequence[int] | None = None,
    chat: bool = False,
    translator: Translator | None = None,
    lens_name: str = "logit",
) -> LensResult:
    """The logit lens, or any lens given as a `translator` (see `logit_lens`)."""
    if not isinstance(prompt, str):
        raise InputError(f"prompt must be one string, got {type(prompt).__name__}; run prompts one at a time.")
    if not 1 <= top_k <= model.d_vocab:
        raise InputError(f"top_k must be between 1 and {model.d_vocab}, got {top_k}.")
    layers = _check_layers(model, layers)
    tids = target_ids(model, targets)
    last = model.n_layers - 1
    with torch.inference_mode():
        res = model.run(prompt, capture=[f"layers.{x}.resid_post" for x in sorted({*layers, last})],
                        logits=None, chat=chat)
        states = torch.stack([res.cache[f"layers.{x}.resid_post"][0] for x in layers])  # [layer, pos, d]
        final = None if layers[-1] == last else res.cache[f"layers.{last}.resid_post"][0]  # [pos, d]
        reading = read_states(model, states, final, layers, k=top_k, targets=tids, translator=translator)
    ids = res.batch.input_ids[0].tolist()
    prefix = n_prefix_tokens(model) if not chat else 0
    return LensResult(
        model=model.name, prompt=prompt, lens=lens_name, tokens=[model.tokenizer.decode([i]) for i in ids],
        n_prefix=min(prefix, len(ids) - 1), layers=layers, top_ids=reading.top_ids, top_probs=reading.top_probs,
        top_tokens=decode_ids(model, reading.top_ids),
        targets=[t if isinstance(t, str) else model.tokenizer.decode([t]) for t in targets],
        target_ids=tids, target_probs=reading.target_probs, target_ranks=reading.target_ranks, kl=reading.kl,
    )


def logit_lens(
    model: Model,
    prompt: str,
    *,
    targets: Sequence[str | int] = (),
    top_k: int = 5,
    layers: Sequence[int] | None = None,
    chat: bool = False,
) -> LensResult:
    """Decode every layer x position of `prompt` with the model's final norm and head.

    Args:
        model: The wrapped model.
        prompt: One prompt.
        targets: Tokens to follow (text like " Warsaw", first token used, or ids).
        top_k: Tokens kept per cell.
        layers: Blocks to read (resid_post; negative allowed); None = every block.
        chat: Apply the chat template.

    Returns:
        A `LensResult`; `result.entry_layer(" Warsaw")` is the first layer where the target is
        in the top-k at the last position, `result.kl` the KL to the model's output per cell.

    Example:
        >>> r = logit_lens(model, "The capital of Poland is", targets=[" Warsaw"])
        >>> r.top_tokens[-1][-1][0], r.entry_layer(" Warsaw")
    """
    return run_lens(model, prompt, targets=targets, top_k=top_k, layers=layers, chat=chat)


# ---- the lens over a corpus: KL to the model's output per layer ------------------------------


def pick_windows(rows: Tensor, n_positions: int, generator: torch.Generator, *, per_window: int = 8) -> Tensor:
    """A random subset of `rows` with room for `n_positions` at ~`per_window` positions each.

    Unembedding a position at every layer costs far more than running its window through the
    model (Gemma: ~30x), so positions are spread over few windows rather than all of them.
    """
    n = min(len(rows), max(1, -(-n_positions // per_window)))
    return rows[torch.randperm(len(rows), generator=generator)[:n].sort().values]


def sample_states(
    model: Model,
    windows,  # lmscope.datasets.corpus.TokenWindows
    rows: Tensor,  # [n_rows] window indices to run
    n_positions: int | None,
    generator: torch.Generator,
    *,
    batch_size: int = 8,
) -> tuple[Tensor, Tensor]:
    """resid_post of every block at up to `n_positions` random text positions of `rows`.

    Text positions exclude padding and the tokenizer's prefix (the BOS position is the same
    token in every window and its attention-sink state says nothing about the text). The
    choice is drawn from `generator`, so it is reproducible.

    Returns:
        states [layer, n, d_model] on the model's device (model dtype), and the windows'
        token ids at those positions [n] (CPU).
    """
    valid = windows.valid(rows)  # [n_rows, width]
    cells = valid.nonzero()  # [n_cells, 2] (row within rows, column)
    if len(cells) == 0:
        raise InputError("The selected windows hold no text tokens; pass a longer corpus.")
    if n_positions is not None and n_positions < len(cells):
        pick = torch.randperm(len(cells), generator=generator)[:n_positions]
        cells = cells[pick.sort().values]
    out, toks = [], []
    sites = [f"layers.{x}.resid_post" for x in range(model.n_layers)]
    with torch.inference_mode():
        for lo in range(0, len(rows), batch_size):
            sel = (cells[:, 0] >= lo) & (cells[:, 0] < lo + batch_size)
            if not sel.any():
                continue
            r = rows[lo : lo + batch_size]
            ids, mask = windows.ids[r], windows.mask[r]
            first = int(mask.any(0).long().argmax())  # drop all-padding columns
            batch = Batch(ids[:, first:].to(model.device), mask[:, first:].long().to(model.device), [""] * len(r))
            res = model.run(batch, capture=sites, logits=None)
            bi = (cells[sel, 0] - lo).to(model.device)
            pi = (cells[sel, 1] - first).to(model.device)
            out.append(torch.stack([res.cache[s][bi, pi] for s in sites]))  # [layer, k, d]
            toks.append(ids[cells[sel, 0] - lo, cells[sel, 1]])
    return torch.cat(out, 1), torch.cat(toks)


@dataclass(frozen=True, kw_only=True)
class LayerKL(Result):
    """How far each layer's lens is from the model's output, over text positions.

    Attributes:
        model: Model name.
        lens: "logit" or "tuned".
        layers: Block indices [layer].
        kl: Mean KL(final || lens) in nats [layer].
        kl_sem: Its standard error over positions [layer].
        top1_agreement: Fraction of positions whose lens top-1 is the model's top-1 [layer].
        n_positions: Positions averaged.
    """

    model: str
    lens: str
    layers: list[int]
    kl: Tensor
    kl_sem: Tensor
    top1_agreement: Tensor
    n_positions: int

    def to_dict(self) -> dict:
        return {"model": self.model, "lens": self.lens, "layers": self.layers, "n_positions": self.n_positions,
                "kl": [round(float(x), 5) for x in self.kl], "kl_sem": [round(float(x), 5) for x in self.kl_sem],
                "top1_agreement": [round(float(x), 4) for x in self.top1_agreement]}

    def table(self) -> Table:
        return Table(["layer", "KL", "KL s.e.", "top-1 agreement"],
                     [[layer, float(self.kl[i]), float(self.kl_sem[i]), float(self.top1_agreement[i])]
                      for i, layer in enumerate(self.layers)],
                     title=f"{self.model}: KL(output || {self.lens} lens), {self.n_positions} positions",
                     formats={"KL": ".3f", "KL s.e.": ".3f", "top-1 agreement": ".2f"})


def kl_of_states(model: Model, states: Tensor, *, translator: Translator | None = None,
                 lens_name: str = "logit") -> LayerKL:
    """Per-layer KL to the model's output for states [layer (all blocks), n, d_model]."""
    layers = list(range(model.n_layers))
    if states.shape[0] != model.n_layers:
        raise InputError(f"states hold {states.shape[0]} layers; {model.name} has {model.n_layers}.")
    with torch.inference_mode():
        r = read_states(model, states, None, layers, k=1, translator=translator)
    n = r.kl.shape[1]
    agree = (r.top_ids[:, :, 0] == r.top_ids[-1:, :, 0]).float().mean(1)
    sem = r.kl.std(1) / n**0.5 if n > 1 else torch.zeros(len(layers))
    return LayerKL(model=model.name, lens=lens_name, layers=layers, kl=r.kl.mean(1), kl_sem=sem,
                   top1_agreement=agree, n_positions=n)


def layer_kl(
    model: Model,
    corpus=None,
    *,
    n_positions: int = 256,
    window: int = 64,
    seed: int = 0,
    translator: Translator | None = None,
    lens_name: str = "logit",
) -> LayerKL:
    """Per-layer KL(final || lens) and top-1 agreement on text from a corpus.

    Args:
        model: The wrapped model.
        corpus: Texts, a .txt/.jsonl/.json file, or None for the shipped corpus
            (`lmscope.datasets.corpus.read_texts`).
        n_positions: Random text positions to average over (seeded).
        window: Tokens per window the texts are cut into.
        seed: Seed of the position sample.
        translator: A lens translator (the tuned lens); None = logit lens.
        lens_name: Label of the lens in the result.
    """
    from lmscope.datasets.corpus import read_texts, token_windows

    wins = token_windows(model, read_texts(corpus), window=window)
    g = torch.Generator().manual_seed(seed)
    rows = pick_windows(torch.arange(len(wins)), n_positions, g)
    states, _ = sample_states(model, wins, rows, n_positions, g)
    return kl_of_states(model, states, translator=translator, lens_name=lens_name)
