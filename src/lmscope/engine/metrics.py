"""Next-token metrics that several techniques share: log-probabilities, KL and first-token scores.

Every metric reads the last position only (`run(..., logits="last")`), in batches, so a
262k-token vocabulary is never unembedded at every position:

    base = next_token_logprobs(model, prompts)                         # [n, d_vocab], CPU float32
    kl = kl_from(model, prompts, base, edits=edits)                    # [n] KL(base || edited)
    s = first_token_score(logits, targets)                             # top-1 == target, p(target)

KL is in nats, KL(base || other) = sum_v p_base(v) (log p_base(v) - log p_other(v)): the side
effect of an edit on prompts it should leave alone (steering, neuron ablation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from lmscope.engine.interventions import Edit
    from lmscope.engine.model import Model


def next_token_logprobs(model: Model, prompts: Sequence[str], *, edits: Sequence[Edit] = (), chat: bool = False,
                        batch_size: int = 16) -> Tensor:
    """Log-probabilities of the next token after each prompt, `[n, d_vocab]` float32 on the CPU,
    with `edits` applied (chat template when `chat`)."""
    prompts = list(prompts)
    return torch.cat([model.run(prompts[lo:lo + batch_size], edits=edits, chat=chat, logits="last")
                      .logits.float().log_softmax(-1).cpu() for lo in range(0, len(prompts), batch_size)])


def kl_div(base_lp: Tensor, lp: Tensor) -> Tensor:
    """KL(base || other) in nats per row `[n]` of two log-probability tables `[n, d_vocab]`."""
    return (base_lp.exp() * (base_lp - lp)).sum(-1)


def kl_from(model: Model, prompts: Sequence[str], base_lp: Tensor, *, edits: Sequence[Edit], chat: bool = False,
            batch_size: int = 16) -> Tensor:
    """KL(base || edited) per prompt `[n]` (nats): `base_lp` is `next_token_logprobs` of the same
    prompts without the edits; the edited distribution is computed one batch at a time."""
    prompts = list(prompts)
    kls = []
    for lo in range(0, len(prompts), batch_size):
        lq = next_token_logprobs(model, prompts[lo:lo + batch_size], edits=edits, chat=chat, batch_size=batch_size)
        kls.append(kl_div(base_lp[lo:lo + batch_size], lq))
    return torch.cat(kls)


@dataclass
class Score:
    """First-token scores of a prompt set: `correct` [n] bool, `prob` [n] probability of the
    target token, `top` [n] the argmax token ids (all on the CPU)."""

    correct: Tensor
    prob: Tensor
    top: Tensor

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean()) if len(self.correct) else float("nan")

    def matches(self, ids: Tensor) -> float:
        """Fraction of prompts whose top token equals `ids` (another answer key)."""
        return float((self.top == ids.to(self.top.device)).float().mean())

    @staticmethod
    def cat(parts: Sequence[Score]) -> Score:
        """One score of several batches, in order."""
        return Score(torch.cat([p.correct for p in parts]), torch.cat([p.prob for p in parts]),
                     torch.cat([p.top for p in parts]))


def first_token_score(logits: Tensor, targets: Tensor) -> Score:
    """Is the top-1 next token the target, and the target's probability: `logits` [n, d_vocab]
    (float32), `targets` [n] token ids. The answer's first token is what is scored (Todd et al.
    2023, Hendel et al. 2023)."""
    t = targets.to(logits.device)
    am = logits.argmax(-1)
    prob = logits.softmax(-1).gather(1, t[:, None])[:, 0]
    return Score((am == t).cpu(), prob.cpu(), am.cpu())
