"""Scores of an LRE on facts: faithfulness (a beta sweep from two LM-head products per row),
causality (every setting of a pair in one suffix forward), and the baselines."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lmscope.engine.interventions import Add
from lmscope.engine.model import Model
from lmscope.engine.readout import unembed, unembed_line
from lmscope.engine.runner import SuffixRun
from lmscope.relations import prompts as P
from lmscope.relations.facts import Facts
from lmscope.relations.lre import LRE


def top1_matches(model: Model, z: Tensor, objects: Sequence[str], *, chunk: int = 96) -> tuple[Tensor, Tensor]:
    """For final-residual predictions z [n, d]: whether argmax unembed(z) matches each object,
    and the log-probability of each object's first token."""
    hits, lps = [], []
    firsts = [P.first_token(model, o) for o in objects]
    for a in range(0, z.shape[0], chunk):
        with torch.no_grad():
            lg = unembed(model, z[a:a + chunk]).float().cpu()
        lp = lg.log_softmax(-1)
        top = lg.argmax(-1)
        hits += [P.matches(model, int(t), o) for t, o in zip(top, objects[a:a + chunk], strict=True)]
        lps.append(lp[torch.arange(lg.shape[0]), torch.tensor(firsts[a:a + chunk])])
    return torch.tensor(hits, dtype=torch.bool), torch.cat(lps)


def beta_sweep(model: Model, lre: LRE, s: Tensor, objects: Sequence[str], betas: Sequence[float], *,
               chunk: int = 16) -> tuple[Tensor, Tensor]:
    """For every beta: whether argmax unembed(beta W s + b) matches each object [beta, n], and the
    object's first-token log-probability [beta, n]; two LM-head products per row for all betas."""
    firsts = torch.tensor([P.first_token(model, o) for o in objects])
    hits, lps = [], []
    ws = s.float().cpu() @ lre.weight.T
    for a in range(0, len(objects), chunk):
        with torch.no_grad():
            lg = unembed_line(model, ws[a:a + chunk], lre.bias[None], betas).cpu()  # [beta, rows, vocab]
        top = lg.argmax(-1)
        hits.append(torch.tensor([[P.matches(model, int(t), o) for t, o in zip(row, objects[a:a + chunk], strict=True)]
                                  for row in top], dtype=torch.bool))
        lps.append(lg.log_softmax(-1).gather(2, firsts[a:a + chunk].expand(len(betas), -1)[..., None])[..., 0])
    return torch.cat(hits, 1), torch.cat(lps, 1)


def faithfulness(model: Model, lre: LRE, facts: Facts) -> float:
    """Share of facts whose object the LRE's readout of the subject state gets right."""
    hit, _ = top1_matches(model, lre.predict(facts.states[lre.layer]), [o for _, o in facts.pairs])
    return float(hit.float().mean()) if len(hit) else float("nan")


def edit_pairs(model: Model, facts: Facts, max_edits: int) -> list[tuple[int, int]]:
    """(source, target) fact indices whose objects start with different tokens, target = the next
    such fact (cyclically); at most `max_edits`."""
    firsts = [P.first_token(model, o) for _, o in facts.pairs]
    out = []
    n = len(firsts)
    for i in range(n):
        for k in range(1, n):
            j = (i + k) % n
            if firsts[j] != firsts[i]:
                out.append((i, j))
                break
        if len(out) >= max_edits:
            break
    return out


Setting = tuple  # (LRE, rank, control: bool)


def edited_top1(model: Model, settings: Sequence[Setting], facts: Facts, pairs: Sequence[tuple[int, int]],
                *, seed: int = 0) -> Tensor:
    """The model's next token [n_pairs, n_settings] after each setting's edit of the source's
    subject state: s + W_r^+ (o' - o) (or, for a control, a random direction of the same norm).

    Per pair, the source prompt's tokens before the subject's last token run once (KV cache) and
    the few tokens after it run once for all settings together, one row each.
    """
    src = torch.tensor([i for i, _ in pairs])
    tgt = torch.tensor([j for _, j in pairs])
    d_out = facts.final[tgt] - facts.final[src]  # [n, d]
    g = torch.Generator().manual_seed(seed)
    deltas = []
    for lre, rank, control in settings:
        dl = lre.edit_delta(d_out, rank)
        if control:
            rnd = torch.randn(dl.shape, generator=g)
            dl = rnd * (dl.norm(dim=-1, keepdim=True) / rnd.norm(dim=-1, keepdim=True))
        deltas.append(dl)
    big = torch.stack(deltas, 1)  # [n, settings, d]
    layers = sorted({lre.layer for lre, _, _ in settings})
    masks = {x: torch.tensor([lre.layer == x for lre, _, _ in settings], dtype=big.dtype)[:, None, None]
             for x in layers}
    out = []
    for n, (i, _) in enumerate(pairs):
        pos = int(facts.subject_pos[i])
        run = SuffixRun(model, facts.prompts[i], pos)
        edits = [Add(site=f"layers.{x}.resid_post", positions=pos, vector=big[n][:, None] * masks[x]) for x in layers]
        out.append(run.logits(edits, rows=len(settings)).argmax(-1).cpu())
    return torch.stack(out)


def causality_many(model: Model, settings: Sequence[Setting], facts: Facts, pairs: Sequence[tuple[int, int]],
                   *, seed: int = 0) -> list[float]:
    """Per setting, the share of edits that make the model answer the target's object."""
    if not pairs:
        return [float("nan")] * len(settings)
    top = edited_top1(model, settings, facts, pairs, seed=seed)
    objs = [facts.pairs[j][1] for _, j in pairs]
    return [sum(P.matches(model, int(t), o) for t, o in zip(top[:, k], objs, strict=True)) / len(pairs)
            for k in range(len(settings))]


def causality(model: Model, lre: LRE, facts: Facts, pairs: Sequence[tuple[int, int]], rank: int, *,
              control: bool = False, seed: int = 0) -> float:
    """Share of edits s + W_r^+ (o' - o) that make the model answer the target's object
    (`control`: a random direction of the same norm instead)."""
    return causality_many(model, [(lre, rank, control)], facts, pairs, seed=seed)[0]


def baselines(model: Model, samples, layer: int, facts: Facts, ridge: float) -> dict[str, float]:
    """Faithfulness of the logit lens of s, the translation s + mean(o - s), and a ridge
    regression o ~ A s + c fitted on the training facts, at `layer`."""
    objs = [o for _, o in facts.pairs]
    s = facts.states[layer]
    xs, os_ = samples.x[layer], samples.o
    shift = (os_ - xs).mean(0)
    mx, mo = xs.mean(0), os_.mean(0)
    xc, oc = (xs - mx).double(), (os_ - mo).double()
    lam = ridge * float((xs.double() ** 2).sum(-1).mean())
    # A = oc^T xc (xc^T xc + lam I)^-1, via the n x n dual form (few training facts)
    a = oc.T @ torch.linalg.solve(xc @ xc.T + lam * torch.eye(xc.shape[0], dtype=torch.float64), xc)
    reg = ((s - mx).double() @ a.T + mo.double()).float()
    out = {}
    for name, z in (("logit_lens", s), ("translation", s + shift), ("regression", reg)):
        out[name] = float(top1_matches(model, z, objs)[0].float().mean()) if len(objs) else float("nan")
    return out
