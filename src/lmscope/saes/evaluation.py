"""The evaluation card of a sparse coder, computed on held-out text.

    variance explained  1 - sum ||y - y_hat||^2 / sum ||y - mean(y)||^2   (over held-out tokens)
    L0                  mean number of active latents per token
    dead / dense        fraction of latents active on no held-out token / on more than 10% of them
                        (a short held-out text counts rare latents as dead: training cards also
                        give the dead fraction over the trainer's window, `dead_fraction_training`)
    CE loss             next-token cross-entropy with the site left alone (clean), replaced by the
                        coder's output (spliced), and zeroed (zero-ablated), at every text token
    CE loss recovered   (CE_zero - CE_spliced) / (CE_zero - CE_clean)
    KL                  KL(clean || spliced) and KL(clean || zero), nats per token
    worst tokens        the tokens with the largest relative error ||y - y_hat||^2 / ||y||^2

The BOS/prefix position is never spliced or counted (Gemma's BOS residual is hundreds of times
larger than any other and says nothing about the text), nor is the first token of a window of a
tokenizer without BOS (SmolLM2), the attention sink (`activations.dictionary_positions`), nor a
massive-activation token (norm over 10x the median; `activations.ordinary`). A transcoder is spliced by replacing
its output site with its prediction from its input site, in the same forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmscope.datasets.corpus import token_windows
from lmscope.engine.interventions import Apply
from lmscope.engine.model import Model
from lmscope.engine.results import Result, Table
from lmscope.saes.activations import dictionary_positions, ordinary
from lmscope.saes.coder import SparseCoder

DENSE = 0.1


@dataclass
class Card(Result):
    """What a dictionary is worth (see the module docstring)."""

    model: str
    site: str
    site_out: str
    kind: str
    arch: str
    d_sae: int
    n_tokens: int
    variance_explained: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    ce_clean: float
    ce_spliced: float
    ce_zero: float
    ce_loss_recovered: float
    kl_spliced: float
    kl_zero: float
    text: str = ""
    worst_tokens: list[dict] = field(default_factory=list)
    dead_fraction_training: float | None = None  # not active in the last `dead_window` training tokens
    dead_window: int | None = None

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    def table(self) -> Table:
        rows = [["variance explained", self.variance_explained], ["L0 (active latents per token)", self.l0],
                ["dead latents (held-out text)", self.dead_fraction],
                *([[f"dead latents (last {self.dead_window:,} training tokens)", self.dead_fraction_training]]
                  if self.dead_fraction_training is not None else []),
                ["dense latents (>10% of tokens)", self.dense_fraction],
                ["CE loss clean", self.ce_clean], ["CE loss spliced", self.ce_spliced],
                ["CE loss zero-ablated", self.ce_zero], ["CE loss recovered", self.ce_loss_recovered],
                ["KL(clean || spliced)", self.kl_spliced], ["KL(clean || zero)", self.kl_zero]]
        where = self.site if self.site == self.site_out else f"{self.site} -> {self.site_out}"
        return Table(["metric", "value"], rows, formats={"value": ".4g"},
                     title=f"{self.kind} {self.arch} ({self.d_sae} latents) at {where} of {self.model}",
                     notes=[f"{self.n_tokens:,} held-out tokens: {self.text}"] if self.text else ())

    def tables(self) -> list[Table]:
        worst = Table(["token", "context", "relative error"],
                      [[w["token"], w["context"], w["rel_error"]] for w in self.worst_tokens],
                      title="tokens reconstructed worst", formats={"relative error": ".3f"})
        return [self.table(), worst]


def splice_edits(coder: SparseCoder, valid: Tensor, *, zero: bool = False) -> list[Apply]:
    """Edits that replace the coder's output site by its output (or by zeros) where `valid`
    ([batch, pos], the run's text tokens) holds; other positions are left alone."""
    spec = coder.cfg
    keep = valid[..., None]
    if zero:
        return [Apply(site=spec.site_out, fn=lambda y: torch.where(keep, torch.zeros_like(y), y), name="zero")]
    if spec.site == spec.site_out:
        return [Apply(site=spec.site, fn=lambda x: torch.where(keep, coder(x).to(x.dtype), x), name="sae")]
    stash: dict[str, Tensor] = {}

    def read(x: Tensor) -> Tensor:
        stash["x"] = x
        return x

    def write(y: Tensor) -> Tensor:
        return torch.where(keep, coder(stash["x"]).to(y.dtype), y)

    return [Apply(site=spec.site, fn=read, name="transcoder-in"), Apply(site=spec.site_out, fn=write, name="transcoder")]


def _ce_kl(logits: Tensor, clean_lp: Tensor | None, targets: Tensor, tmask: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
    lp = logits[:, :-1].float().log_softmax(-1)[tmask]  # [n, vocab] at positions whose next token counts
    ce = -lp.gather(-1, targets[:, None])[:, 0]
    kl = None if clean_lp is None else (clean_lp.exp() * (clean_lp - lp)).sum(-1)
    return ce, kl, lp


@torch.no_grad()
def evaluate(model: Model, coder: SparseCoder, texts: Sequence[str], *, max_tokens: int = 16384, window: int = 128,
             batch_windows: int = 4, n_worst: int = 10, text_label: str = "") -> Card:
    """The evaluation card of `coder` on `texts` (held-out documents)."""
    spec = coder.cfg
    coder = coder.to(model.device)
    windows = token_windows(model, texts, window=window, max_tokens=max_tokens)
    sum_err = sum_y = sum_y2 = 0.0
    n = l0_sum = 0
    fires = torch.zeros(spec.d_sae, dtype=torch.long)
    ce = {"clean": [], "spliced": [], "zero": []}
    kl = {"spliced": [], "zero": []}
    worst: list[tuple[float, int, int]] = []  # (rel error, window, column)
    sites = list(dict.fromkeys([spec.site, spec.site_out]))
    for rows, batch, valid in windows.batches(batch_windows, model.device):
        valid = dictionary_positions(valid, windows.n_prefix)
        res = model.run(batch, capture=sites, logits="all")
        valid = ordinary(valid, res.cache[spec.site])
        x, y = res.cache[spec.site][valid].float(), res.cache[spec.site_out][valid].float()
        f = coder.encode(x)
        y_hat = coder.decode(f, x)
        err = (y - y_hat).pow(2).sum(-1)
        sum_err += float(err.sum())
        sum_y = sum_y + y.sum(0)
        sum_y2 += float(y.pow(2).sum())
        n += y.shape[0]
        active = f > 0
        l0_sum += int(active.sum())
        fires += active.sum(0).cpu()
        rel = (err / y.pow(2).sum(-1).clamp_min(1e-12)).cpu()
        where = valid.nonzero().cpu()
        top = rel.topk(min(n_worst, rel.numel()))
        off = windows.ids.shape[1] - batch.input_ids.shape[1]  # all-padding columns the batch trimmed
        worst += [(float(v), int(rows[where[i, 0]]), int(where[i, 1]) + off)
                  for v, i in zip(top.values, top.indices, strict=True)]
        # next-token CE where both the position and the next token are text
        tmask = valid[:, :-1] & valid[:, 1:]
        targets = batch.input_ids[:, 1:][tmask]
        c_ce, _, clean_lp = _ce_kl(res.logits, None, targets, tmask)
        ce["clean"].append(c_ce.cpu())
        for name, zero in (("spliced", False), ("zero", True)):
            out = model.run(batch, logits="all", edits=splice_edits(coder, valid, zero=zero))
            e_ce, e_kl, _ = _ce_kl(out.logits, clean_lp, targets, tmask)
            ce[name].append(e_ce.cpu())
            kl[name].append(e_kl.cpu())
    total_var = sum_y2 - float((sum_y.pow(2)).sum()) / max(n, 1)
    means = {k: float(torch.cat(v).mean()) for k, v in ce.items()}
    gap = means["zero"] - means["clean"]
    worst.sort(reverse=True)
    tok = model.tokenizer
    worst_rows = []
    for v, w, col in worst[:n_worst]:
        ids = windows.ids[w]
        first = int(windows.mask[w].long().argmax()) + windows.n_prefix
        worst_rows.append({"token": tok.decode([int(ids[col])]), "context": tok.decode(ids[max(first, col - 8): col + 1]),
                           "rel_error": v})
    return Card(
        model=model.name, site=spec.site, site_out=spec.site_out, kind=spec.kind, arch=spec.arch, d_sae=spec.d_sae,
        n_tokens=n, variance_explained=1 - sum_err / max(total_var, 1e-12), l0=l0_sum / max(n, 1),
        dead_fraction=float((fires == 0).float().mean()), dense_fraction=float((fires > DENSE * n).float().mean()),
        ce_clean=means["clean"], ce_spliced=means["spliced"], ce_zero=means["zero"],
        ce_loss_recovered=(means["zero"] - means["spliced"]) / gap if abs(gap) > 1e-9 else float("nan"),
        kl_spliced=float(torch.cat(kl["spliced"]).mean()), kl_zero=float(torch.cat(kl["zero"]).mean()),
        text=text_label, worst_tokens=worst_rows,
    )
