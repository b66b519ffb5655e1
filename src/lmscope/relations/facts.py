"""Facts under a set of demonstrations: each fact's few-shot prompt, the model's answer, whether it
knows the fact (the paper's check), and the states an LRE reads (subject) and predicts (final)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lmscope.datasets.relations import Relation
from lmscope.engine.model import Model
from lmscope.relations import prompts as P


@dataclass
class Facts:
    """Prompts of facts under one set of demonstrations, with the model's answers and states."""

    pairs: list[tuple[str, str]]
    prompts: list[str]
    subject_pos: Tensor  # [n] token index of the subject's last token
    top1: Tensor  # [n] the model's next token
    known: Tensor  # [n] bool: top1 is a non-trivial prefix of the object
    states: dict[int, Tensor]  # layer -> [n, d] subject state
    final: Tensor  # [n, d] last block's residual at the last token
    top_k: tuple[Tensor, Tensor] | None = None  # ([n, k] probabilities, [n, k] ids) when asked for

    def take(self, idx: Sequence[int]) -> Facts:
        ix = torch.as_tensor(list(idx), dtype=torch.long)
        top = (self.top_k[0][ix], self.top_k[1][ix]) if self.top_k is not None else None
        return Facts([self.pairs[i] for i in idx], [self.prompts[i] for i in idx], self.subject_pos[ix],
                     self.top1[ix], self.known[ix], {k: v[ix] for k, v in self.states.items()}, self.final[ix], top)


def read_facts(model: Model, rel: Relation, pairs: Sequence[tuple[str, str]], demos: Sequence[tuple[str, str]],
               layers: Sequence[int] = (), *, batch_size: int = 32, keep_top: int = 0) -> Facts:
    """Run each fact's few-shot prompt (its own pair left out of the demonstrations), keeping the
    subject states at `layers` and, with `keep_top`, the model's top next tokens."""
    prompts, pos = [], []
    for s, o in pairs:
        p, end = P.icl_prompt(rel, s, [d for d in demos if d != (s, o)])
        prompts.append(p)
        pos.append(P.subject_token(model, p, end))
    final = f"layers.{model.n_layers - 1}.resid_post"
    top1, states, finals, tops = [], {x: [] for x in layers}, [], []
    for a in range(0, len(prompts), batch_size):
        sub = torch.tensor(pos[a:a + batch_size], device=model.device)
        cap = {f"layers.{x}.resid_post": sub for x in layers} | {final: "last"}
        r = model.run(prompts[a:a + batch_size], capture=cap, logits="last")
        top1.append(r.logits.argmax(-1).cpu())
        if keep_top:
            tops.append(r.logits.float().softmax(-1).topk(keep_top))
        finals.append(r.cache[final].float().cpu())
        for x in layers:
            states[x].append(r.cache[f"layers.{x}.resid_post"].float().cpu())
    top = torch.cat(top1)
    known = torch.tensor([P.matches(model, int(t), o) for t, (_, o) in zip(top, pairs, strict=True)], dtype=torch.bool)
    return Facts(list(pairs), prompts, torch.tensor(pos), top, known,
                 {x: torch.cat(v) for x, v in states.items()}, torch.cat(finals),
                 (torch.cat([t.values for t in tops]).cpu(), torch.cat([t.indices for t in tops]).cpu()) if tops else None)
