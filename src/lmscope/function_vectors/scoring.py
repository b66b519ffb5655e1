"""Scoring in-context prompts by their answer's first token, with edits applied.

The answer is right when the top-1 next token equals the first token of the expected answer
(`lmscope.datasets.icl.answer_ids`), as Todd et al. 2023 and Hendel et al. 2023 score it; the
per-batch rule is `lmscope.engine.metrics.first_token_score`.

    ids = icl.answer_ids(model, test.inputs, test.outputs)
    acc = score(model, prompts, ids).accuracy
    scorer = LastTokenScorer(model, prompts, ids)     # many last-token edits of the same prompts
    scorer.score([Add(site=..., vector=v, positions="last")]).accuracy
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import Tensor

from lmscope.engine.errors import InputError
from lmscope.engine.metrics import Score, first_token_score
from lmscope.engine.runner import PrefixRun

if TYPE_CHECKING:
    from lmscope.engine.interventions import Edit
    from lmscope.engine.model import Model

__all__ = ["LastTokenScorer", "Score", "score"]


def score(model: Model, prompts: Sequence[str], targets: Tensor, *, edits: Sequence[Edit] = (),
          batch_size: int = 32) -> Score:
    """Top-1 first-token accuracy of `prompts` against `targets` [n], with `edits` applied
    (edits must broadcast over the batch: Add, Set, Apply...). Only the last position is
    unembedded; batches of `batch_size` keep the [batch, d_vocab] logits small."""
    if len(prompts) != len(targets):
        raise InputError(f"{len(prompts)} prompts but {len(targets)} targets.")
    parts = []
    for i in range(0, len(prompts), batch_size):
        res = model.run(list(prompts[i:i + batch_size]), edits=list(edits), logits="last")
        parts.append(first_token_score(res.logits.float(), targets[i:i + batch_size]))  # logits [b, d_vocab]
    return Score.cat(parts)


class LastTokenScorer:
    """Score many edited variants of the same prompts when every edit touches only the last
    token (the engine's prefix-cached run, `runner.PrefixRun`): the prefix runs once with the KV
    cache, each variant runs one token per prompt. Equal to full forwards up to float rounding
    (tested), several times cheaper for few-shot prompts. Edits use positions="last".
    """

    def __init__(self, model: Model, prompts: Sequence[str], targets: Tensor, *, batch_size: int = 32) -> None:
        if len(prompts) != len(targets):
            raise InputError(f"{len(prompts)} prompts but {len(targets)} targets.")
        self.model = model
        self.targets = targets
        self.prefix = PrefixRun(model, list(prompts), batch_size=batch_size)

    def score(self, edits: Sequence[Edit] = (), *, rep: int = 1) -> Score:
        """Score with `edits`; `rep > 1` repeats every prompt `rep` times (rows prompt-major:
        row = i * rep + j), e.g. one row per head for a per-row `Apply` edit."""
        logits = self.prefix.logits(edits, rep=rep)  # [rows, d_vocab]
        return first_token_score(logits, self.targets.to(logits.device).repeat_interleave(rep, 0))
