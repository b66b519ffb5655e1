"""Residual decomposition and direct logit attribution (DLA).

The residual stream after block L (`layers.L.resid_post`; for the last block this is the input
of the final norm) is a sum of writes:

    resid_post[L] = embed (+ pos_embed) + sum_{l <= L} ( sum_h head_out[l, h] + attn_bias[l] + mlp_out[l] )

- `embed` is the `embed` site (Gemma: already scaled by sqrt(d_model)).
- `pos_embed` is `resid_pre[0] - embed`: the learned position embeddings of GPT-2-style
  models. It is a part only where it is not exactly zero (RoPE families add nothing there).
- `head_out[l, h]` is each head's write (`layers.l.attn.head_out`); for post-norm families
  (Gemma 2/3, OLMo 2) it already goes through the post-attention norm with its scale frozen
  at the real o_proj output, so the heads sum to `attn_out`.
- `attn_bias[l]` is the o_proj bias (GPT-2, GPT-NeoX); zero parts are dropped. For a post-norm
  family with an o_proj bias it is measured as `attn_out - sum_h head_out` (the bias through
  the frozen post-norm scale).
- `mlp_out[l]` is the whole MLP write, down-projection bias included.

`decompose` checks the sum against the captured residual and reports the error.

DLA (`logit_attribution`) multiplies each part through the final norm with its scale *frozen at
the full residual being decomposed* (`norms.frozen_scale`; LayerNorm also centres each part)
and through the unembedding column of a target token (or of token A minus token B). This is the
standard linear approximation: the parts sum exactly to the real logit (before any final logit
softcap) minus a constant (the unembedding bias and the LayerNorm bias), but a part's DLA is
not what removing it would do, because removing it would change the norm's scale. Decomposing
at a layer before the last gives the same decomposition of the logit lens at that layer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lmscope.engine.errors import InputError
from lmscope.engine.model import Model
from lmscope.engine.readout import (
    final_norm,
    final_norm_bias,
    final_norm_centre,
    final_norm_scale,
    logit_softcap,
    logits_from_normed,
    unembed,
)
from lmscope.engine.results import Result, Table

log = logging.getLogger(__name__)

APPROXIMATION = (
    "Direct logit attribution with the final norm's scale frozen at the full residual "
    "(LayerNorm also centres each part); parts sum exactly to the logit before softcapping, "
    "minus the unembedding/norm bias; a part's DLA is not the effect of removing it."
)


@dataclass(frozen=True, kw_only=True)
class Decomposition(Result):
    """The parts of the residual at one position of each prompt.

    Attributes:
        model: Model name.
        prompts: The prompts (one row each).
        layer: Block whose `resid_post` is decomposed.
        position: Prompt token index (negative from the end) of the decomposed position.
        labels: Part names: "embed", "pos_embed", "L3.H2", "L3.attn_bias", "L3.mlp".
        kinds: Part kinds: "embed", "pos_embed", "head", "attn_bias", "mlp".
        layers: Layer of each part (-1 for embeddings).
        heads: Head of each part (-1 where not a head).
        parts: [batch, part, d_model] float32.
        resid: [batch, d_model] float32, the captured residual the parts should sum to.
        attn_out_error: Max |attn_out - (heads + bias)| over layers and rows.
    """

    model: str
    prompts: list[str]
    layer: int
    position: int
    labels: list[str]
    kinds: list[str]
    layers: list[int]
    heads: list[int]
    parts: Tensor
    resid: Tensor
    attn_out_error: float

    @property
    def total(self) -> Tensor:
        """Sum of the parts [batch, d_model]."""
        return self.parts.sum(1)

    @property
    def max_abs_error(self) -> float:
        """max |sum of parts - real residual|."""
        return float((self.total - self.resid).abs().max())

    @property
    def rel_error(self) -> float:
        """max_abs_error / max |residual| (the residual of Gemma reaches norms of ~3e4)."""
        return self.max_abs_error / max(float(self.resid.abs().max()), 1e-30)

    def index(self, label: str) -> int:
        """Index of a part by label."""
        try:
            return self.labels.index(label)
        except ValueError:
            raise InputError(f"No part {label!r}; parts are e.g. {', '.join(self.labels[:6])}, ...") from None

    def layer_writes(self) -> tuple[Tensor, Tensor]:
        """(attn [batch, layer, d_model], mlp [batch, layer, d_model]): each block's attention
        write (heads + bias) and MLP write, for layers 0..layer."""
        n = self.layer + 1
        attn = self.parts.new_zeros(self.parts.shape[0], n, self.parts.shape[-1])
        mlp = torch.zeros_like(attn)
        for i, (k, lay) in enumerate(zip(self.kinds, self.layers, strict=True)):
            if k in ("head", "attn_bias"):
                attn[:, lay] += self.parts[:, i]
            elif k == "mlp":
                mlp[:, lay] += self.parts[:, i]
        return attn, mlp

    def to_dict(self) -> dict:
        """The parts' labels and norms (not the [batch, part, d_model] vectors) and the errors."""
        return {"model": self.model, "prompts": self.prompts, "layer": self.layer, "position": self.position,
                "labels": self.labels, "kinds": self.kinds, "layers": self.layers, "heads": self.heads,
                "part_norms": self.parts.norm(dim=-1).tolist(), "resid_norms": self.resid.norm(dim=-1).tolist(),
                "max_abs_error": self.max_abs_error, "rel_error": self.rel_error,
                "attn_out_error": self.attn_out_error}

    def table(self, row: int = 0) -> Table:
        """Every part of one prompt's residual with its norm (layer / head -1: not a block / head)."""
        norms = self.parts[row].norm(dim=-1).tolist()
        return Table(["part", "kind", "layer", "head", "norm"],
                     [list(r) for r in zip(self.labels, self.kinds, self.layers, self.heads, norms, strict=True)],
                     title=f"{self.model} layers.{self.layer}.resid_post at position {self.position} of "
                           f"{self.prompts[row]!r}: {len(self.labels)} parts",
                     formats={"norm": ".3g"},
                     notes=[(f"max |sum - resid| = {self.max_abs_error:.2e} (relative {self.rel_error:.1e}); "
                             f"|resid| = {float(self.resid[row].norm()):.4g}")])


def decompose(model: Model, prompts: str | Sequence[str], *, layer: int = -1, position: int = -1,
              chat: bool = False) -> Decomposition:
    """Decompose `layers.{layer}.resid_post` at prompt token `position` into its writes.

    One forward (stopping after `layer`) captures every site needed at that position only.

    Args:
        model: The wrapped model.
        prompts: One prompt or a list (left-padded; `position` counts within each prompt).
        layer: Block whose output is decomposed; -1 (default) = the input of the final norm.
        position: Prompt token index; -1 = the last token.
        chat: Apply the chat template.
    """
    layer = model.site(f"layers.{layer}.resid_post").layer
    caps = ["embed", "layers.0.resid_pre", f"layers.{layer}.resid_post"]
    for lay in range(layer + 1):
        caps += [f"layers.{lay}.attn.head_out", f"layers.{lay}.attn_out", f"layers.{lay}.mlp_out"]
    res = model.run(prompts, capture=caps, positions=position, logits=None, chat=chat)
    c = {k: v.float() for k, v in res.cache.items()}  # each [batch, d] or [batch, head, d]

    labels, kinds, layers, heads, parts = [], [], [], [], []

    def add(label, kind, lay, head, vec):
        labels.append(label)
        kinds.append(kind)
        layers.append(lay)
        heads.append(head)
        parts.append(vec)

    add("embed", "embed", -1, -1, c["embed"])
    pos = c["layers.0.resid_pre"] - c["embed"]
    if pos.abs().max() > 0:
        add("pos_embed", "pos_embed", -1, -1, pos)
    post_norm = model.has_attn_post_norm
    attn_err = 0.0
    for lay in range(layer + 1):
        ho = c[f"layers.{lay}.attn.head_out"]  # [batch, head, d_model]
        for h in range(model.n_heads):
            add(f"L{lay}.H{h}", "head", lay, h, ho[:, h])
        heads_sum = ho.sum(1)
        b_o = model.weights.b_O(lay)
        bias = None
        if b_o is not None:
            if post_norm:  # the bias went through the post-norm: measure it
                bias = c[f"layers.{lay}.attn_out"] - heads_sum
            else:
                bias = b_o.detach().float().expand_as(heads_sum)
            add(f"L{lay}.attn_bias", "attn_bias", lay, -1, bias)
        recon = heads_sum if bias is None else heads_sum + bias
        attn_err = max(attn_err, float((recon - c[f"layers.{lay}.attn_out"]).abs().max()))
        add(f"L{lay}.mlp", "mlp", lay, -1, c[f"layers.{lay}.mlp_out"])
    return Decomposition(
        model=model.name, prompts=list(res.batch.prompts), layer=layer, position=position, labels=labels,
        kinds=kinds, layers=layers, heads=heads, parts=torch.stack(parts, 1),
        resid=c[f"layers.{layer}.resid_post"], attn_out_error=attn_err,
    )


# ---- direct logit attribution -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Attribution(Result):
    """DLA of every part of a `Decomposition` to one logit or a logit difference.

    Attributes:
        target: Target token text; `baseline` the subtracted token (or None).
        target_id / baseline_id: Their ids.
        dla: [batch, part] each part's contribution (frozen final-norm scale).
        constant: [batch] the part of the logit no residual part explains (unembedding bias,
            LayerNorm bias), so that `dla.sum(-1) + constant == logit`.
        logit: [batch] the real logit (difference) before any final softcap.
        logit_final: [batch] the model's own logit (difference), softcap included.
        softcap: The final logit softcap, or None.
    """

    decomposition: Decomposition
    target: str
    target_id: int
    baseline: str | None
    baseline_id: int | None
    dla: Tensor
    constant: Tensor
    logit: Tensor
    logit_final: Tensor
    softcap: float | None

    @property
    def sum_error(self) -> float:
        """max |sum of parts' DLA + constant - real logit (difference)|."""
        return float((self.dla.sum(-1) + self.constant - self.logit).abs().max())

    def per_layer(self, row: int = 0) -> dict[str, list[float]]:
        """Attention (heads + bias) and MLP DLA per layer, and embeddings, for one row."""
        d = self.decomposition
        attn = [0.0] * (d.layer + 1)
        mlp = [0.0] * (d.layer + 1)
        embed = 0.0
        for i, (k, lay) in enumerate(zip(d.kinds, d.layers, strict=True)):
            v = float(self.dla[row, i])
            if k in ("head", "attn_bias"):
                attn[lay] += v
            elif k == "mlp":
                mlp[lay] += v
            else:
                embed += v
        return {"attn": attn, "mlp": mlp, "embed": embed}

    def head_matrix(self, row: int = 0) -> Tensor:
        """[layer, head] DLA of each head."""
        d = self.decomposition
        out = torch.zeros(d.layer + 1, max(d.heads) + 1)
        for i, k in enumerate(d.kinds):
            if k == "head":
                out[d.layers[i], d.heads[i]] = self.dla[row, i]
        return out

    def top_parts(self, k: int = 10, row: int = 0) -> list[dict]:
        """The k parts with the largest |DLA|."""
        v = self.dla[row]
        idx = v.abs().argsort(descending=True)[:k]
        return [{"part": self.decomposition.labels[i], "dla": float(v[i])} for i in idx.tolist()]

    def to_dict(self, row: int = 0, k: int = 10) -> dict:
        d = self.decomposition
        return {
            "model": d.model, "prompt": d.prompts[row], "layer": d.layer, "position": d.position,
            "target": self.target, "target_id": self.target_id, "baseline": self.baseline,
            "baseline_id": self.baseline_id, "logit": float(self.logit[row]),
            "logit_final": float(self.logit_final[row]), "softcap": self.softcap,
            "constant": float(self.constant[row]), "dla_sum": float(self.dla[row].sum()),
            "dla_sum_error": self.sum_error, "resid_max_abs_error": d.max_abs_error,
            "resid_rel_error": d.rel_error, "approximation": APPROXIMATION,
            "per_layer": self.per_layer(row), "heads": self.head_matrix(row).tolist(),
            "top_parts": self.top_parts(k, row),
            "parts": {lab: float(self.dla[row, i]) for i, lab in enumerate(d.labels)},
        }

    def _what(self) -> str:
        return repr(self.target) + (f" - {self.baseline!r}" if self.baseline is not None else "")

    def table(self, row: int = 0) -> Table:
        """Every part by |DLA|, largest first (the HTML shows the top 12, as the CLI does)."""
        d = self.decomposition
        order = self.dla[row].abs().argsort(descending=True).tolist()
        return Table(["part", "kind", "layer", "head", "DLA"],
                     [[d.labels[i], d.kinds[i], d.layers[i], d.heads[i], float(self.dla[row, i])] for i in order],
                     title=f"{d.model}: DLA to logit {self._what()} at layers.{d.layer}.resid_post, position "
                           f"{d.position}: top parts by |DLA|",
                     formats={"DLA": "+.3f"}, max_rows=12,
                     notes=[(f"logit {self._what()} = {float(self.logit[row]):.3f}; parts sum to "
                             f"{float(self.dla[row].sum()):.3f} + constant {float(self.constant[row]):.3f} "
                             f"(error {self.sum_error:.1e})"), APPROXIMATION])

    def tables(self, row: int = 0) -> list[Table]:
        pl = self.per_layer(row)
        per_layer = Table(["layer", "attention", "MLP"],
                          [[i, a, m] for i, (a, m) in enumerate(zip(pl["attn"], pl["mlp"], strict=True))],
                          title="DLA per layer", formats={"attention": "+.3f", "MLP": "+.3f"},
                          notes=[f"embeddings: {pl['embed']:+.3f}"])
        return [self.table(row), per_layer]


def _token(model: Model, tok: str | int) -> tuple[str, int]:
    if isinstance(tok, int):
        if not 0 <= tok < model.d_vocab:
            raise InputError(f"Token id {tok} is out of range (vocabulary of {model.d_vocab}).")
        return model.tokenizer.decode([tok]), tok
    tid = model.token_id(tok)
    return tok, tid


def frozen_normed(model: Model, parts: Tensor, resid: Tensor) -> Tensor:
    """Parts [batch, n, d] through the final norm with its scale frozen at `resid` [batch, d]
    (centred first for LayerNorm; no norm bias). Sums to final_norm(resid) - bias."""
    scale = final_norm_scale(model, resid.to(model.device)).float()  # [batch, d]
    return final_norm_centre(model, parts.to(model.device).float()) * scale[:, None, :]


def logit_attribution(model: Model, dec: Decomposition, target: str | int,
                      baseline: str | int | None = None) -> Attribution:
    """DLA of every part of `dec` to `target`'s logit (minus `baseline`'s when given).

    See the module docstring for the approximation (frozen final-norm scale).
    """
    t_text, t_id = _token(model, target)
    b_text, b_id = _token(model, baseline) if baseline is not None else (None, None)
    with torch.inference_mode():
        w_u = model.weights.W_U  # [d_model, d_vocab]
        direction = w_u[:, t_id].float()
        if b_id is not None:
            direction = direction - w_u[:, b_id].float()
        normed = frozen_normed(model, dec.parts, dec.resid)  # [batch, part, d]
        dla = normed @ direction  # [batch, part]
        b_u = model.weights.b_U
        head_bias = 0.0
        if b_u is not None:
            head_bias = float(b_u[t_id]) - (float(b_u[b_id]) if b_id is not None else 0.0)
        nb = final_norm_bias(model)
        const = head_bias + (float(nb.float() @ direction) if nb is not None else 0.0)
        constant = torch.full((dla.shape[0],), const, dtype=torch.float32, device=dla.device)
        # The real logit, straight from the model's own norm and head (before softcap).
        real_normed = final_norm(model, dec.resid).float()  # [batch, d], norm bias included
        logit = real_normed @ direction + head_bias
        full = logits_from_normed(model, final_norm(model, dec.resid)).float()  # [batch, vocab]
        logit_final = full[:, t_id] - (full[:, b_id] if b_id is not None else 0.0)
    cap = logit_softcap(model)
    return Attribution(decomposition=dec, target=t_text, target_id=t_id, baseline=b_text, baseline_id=b_id,
                       dla=dla.cpu(), constant=constant.cpu(), logit=logit.cpu(), logit_final=logit_final.cpu(),
                       softcap=cap)


# ---- unembedding single parts ------------------------------------------------------------------

UNEMBED_MODES = ("frozen", "own_norm", "raw")


def unembed_vectors(model: Model, vectors: Tensor, *, mode: str = "frozen", resid: Tensor | None = None) -> Tensor:
    """Logits [n, d_vocab] of residual-stream parts [n, d_model].

    Modes:
        frozen: through the final norm with its scale frozen at `resid` ([n, d_model] or
            [d_model], the full residual the parts belong to), then W_U; no biases, no softcap.
            This is each part's direct additive effect on every logit (its DLA over the vocab).
        own_norm: `readout.unembed` on the part alone (the model's final norm rescales the part
            by its own rms; softcap included): a logit lens of the part.
        raw: W_U only, no norm, no gain (`readout.unembed(normalize=False)` minus the bias).
    """
    if mode not in UNEMBED_MODES:
        raise InputError(f"mode must be one of {', '.join(UNEMBED_MODES)}, got {mode!r}.")
    with torch.inference_mode():
        v = vectors.to(model.device).float()
        w_u = model.weights.W_U.float()
        if mode == "frozen":
            if resid is None:
                raise InputError("mode='frozen' needs the full residual (resid=) to freeze the norm's scale at.")
            r = resid.to(model.device).float().expand_as(v)
            return (frozen_normed(model, v[:, None], r)[:, 0]) @ w_u
        if mode == "raw":
            return v @ w_u
        return unembed(model, v.to(model.dtype)).float()


def top_tokens_of(model: Model, logits: Tensor, k: int = 10) -> list[dict]:
    """Top and bottom k tokens (text, logit) of each row of logits [n, d_vocab]."""
    dec = model.tokenizer.decode
    out = []
    for row in logits:
        hi = row.topk(k)
        lo = (-row).topk(k)
        out.append({
            "top": [(dec([int(i)]), float(v)) for v, i in zip(hi.values, hi.indices, strict=True)],
            "bottom": [(dec([int(i)]), float(-v)) for v, i in zip(lo.values, lo.indices, strict=True)],
        })
    return out


def layer_adds(model: Model, dec: Decomposition, *, row: int = 0, k: int = 10, mode: str = "frozen") -> list[dict]:
    """What each block adds, in token space: the top/bottom tokens of each block's attention
    write and MLP write at the decomposed position (see `unembed_vectors` for `mode`)."""
    attn, mlp = dec.layer_writes()
    vecs = torch.cat([attn[row], mlp[row]], 0)  # [2 * layers, d]
    logits = unembed_vectors(model, vecs, mode=mode, resid=dec.resid[row])
    tops = top_tokens_of(model, logits, k)
    n = attn.shape[1]
    return [{"layer": lay, "mode": mode, "attn": tops[lay], "mlp": tops[n + lay]} for lay in range(n)]


# ---- editing in token space ---------------------------------------------------------------------


def token_direction(model: Model, token: str | int, *, divide_by_gain: bool = False) -> Tensor:
    """Unit residual-stream direction [d_model] of a token: its W_U column, float32.

    `divide_by_gain=True` divides by the final norm's gain first, so that after the norm the
    direction is the bare unembedding vector. On gemma-3-270m (gains 0.19..301) that variant
    barely moves the output (the high-gain channels are what the head reads), so the default
    is the plain column.
    """
    _, tid = _token(model, token)
    u = model.weights.W_U[:, tid].detach().float()
    if divide_by_gain:
        u = u / model.weights.final_norm.float()
    return u / u.norm()


@dataclass(frozen=True, kw_only=True)
class TokenEditResult(Result):
    """Before/after next-token distributions of a token-space edit (see `token_edit`)."""

    prompt: str
    layer: int
    position: int
    subtract: str | None
    add: str | None
    vector_norm: float
    resid_norm: float
    before: list[dict]
    after: list[dict]
    probs: dict  # {"before": {tok: p}, "after": {tok: p}, "control": {tok: p}}
    control: list[dict]  # top-k with a random vector of the same norm (seeded)
    text_before: str | None = None
    text_after: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def table(self) -> Table:
        """The edited tokens' probabilities before, after, and with the random control."""
        notes = [(f"layers.{self.layer}.resid_post position {self.position}: vector norm {self.vector_norm:.1f} "
                  f"(residual norm {self.resid_norm:.1f})")]
        if self.text_after is not None:
            notes += [f"before: {self.text_before!r}", f"after: {self.text_after!r}"]
        return Table(["token", "before", "after", "random control"],
                     [[repr(t), *(self.probs[k][t] for k in ("before", "after", "control"))]
                      for t in self.probs["before"]],
                     title="probabilities", formats=dict.fromkeys(("before", "after", "random control"), ".4f"),
                     notes=notes)

    def tables(self) -> list[Table]:
        ranks = Table(["rank", "before", "p before", "after", "p after"],
                      [[i, repr(b["token"]), b["prob"], repr(a["token"]), a["prob"]]
                       for i, (b, a) in enumerate(zip(self.before, self.after, strict=True), 1)],
                      title="top tokens", formats={"p before": ".3f", "p after": ".3f"})
        return [self.table(), ranks]


def token_edit(model: Model, prompt: str, *, layer: int, position: int = -1, subtract: str | int | None = None,
               add: str | int | None = None, scale: float = 0.25, relative: bool = True,
               divide_by_gain: bool = False, k: int = 10, max_new_tokens: int = 0, seed: int = 0,
               chat: bool = False) -> TokenEditResult:
    """Subtract one token's unembedding direction and add another's at `layers.{layer}.resid_post`,
    prompt token `position`, via an `Add` edit; compare the next-token distribution.

    The vector is `s * (dir(add) - dir(subtract))` with unit directions (`token_direction`);
    `s = scale * |resid|` at that site when `relative` (the residual norm grows ~250x over
    gemma-3-270m's depth, so a fixed absolute scale means different things at different
    layers), else `s = scale`. A control adds a seeded random vector of the same norm.
    """
    from lmscope.engine.interventions import Add

    if subtract is None and add is None:
        raise InputError("Give a token to subtract, a token to add, or both.")
    layer = model.site(f"layers.{layer}.resid_post").layer
    site = f"layers.{layer}.resid_post"
    base = model.run(prompt, capture=[site], positions=position, logits="last", chat=chat)
    resid_norm = float(base.cache[site][0].float().norm())
    vec = torch.zeros(model.d_model)
    if add is not None:
        vec += token_direction(model, add, divide_by_gain=divide_by_gain).cpu()
    if subtract is not None:
        vec -= token_direction(model, subtract, divide_by_gain=divide_by_gain).cpu()
    s = scale * resid_norm if relative else scale
    vec = vec * s
    gen = torch.Generator().manual_seed(seed)
    rand = torch.randn(model.d_model, generator=gen)
    rand = rand / rand.norm() * vec.norm()
    edit = Add(site=site, vector=vec, positions=[position])
    after = model.run(prompt, edits=[edit], logits="last", chat=chat)
    ctrl = model.run(prompt, edits=[Add(site=site, vector=rand, positions=[position])], logits="last", chat=chat)
    toks = {t: _token(model, t) for t in (subtract, add) if t is not None}
    probs = {}
    for name, r in (("before", base), ("after", after), ("control", ctrl)):
        p = r.logits[0].float().softmax(-1)
        probs[name] = {text: float(p[tid]) for text, tid in toks.values()}
    texts = (None, None)
    if max_new_tokens:
        texts = (model.generate(prompt, max_new_tokens=max_new_tokens, chat=chat).texts[0],
                 model.generate(prompt, edits=[edit], max_new_tokens=max_new_tokens, chat=chat).texts[0])
    return TokenEditResult(
        prompt=prompt, layer=layer, position=position,
        subtract=toks[subtract][0] if subtract is not None else None,
        add=toks[add][0] if add is not None else None, vector_norm=float(vec.norm()), resid_norm=resid_norm,
        before=base.top_k(model, k), after=after.top_k(model, k), probs=probs, control=ctrl.top_k(model, k),
        text_before=texts[0], text_after=texts[1],
    )
