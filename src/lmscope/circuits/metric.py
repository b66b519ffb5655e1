"""A task bound to a model: padded clean/corrupt batches and the task's metric, computed from
the final-norm output at the metric positions only (the unembedding of a 262k vocabulary at
every position would cost more than the rest of the forward).

Metrics (per row; the task metric is the mean over rows):

    logit_diff   mean logit of the answer tokens - mean logit of the wrong tokens
    prob_diff    total probability of the answer tokens - total probability of the wrong ones
    logprob      mean log-probability of the target token at each metric position

`faithfulness(m, clean, base) = (m - base) / (clean - base)`: 1 when a circuit recovers the
clean metric, 0 when it does no better than the ablated model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lmscope.datasets.circuit_tasks import TaskSet
from lmscope.engine import readout
from lmscope.engine.errors import InputError
from lmscope.engine.interventions import Edit
from lmscope.engine.model import Batch, Model
from lmscope.engine.runner import run

METRICS = ("logit_diff", "prob_diff", "logprob")


def _padded(lists: list[list[int]]) -> tuple[Tensor, Tensor]:
    """Ragged id lists -> [n, k] ids and a [n, k] mask."""
    k = max(1, max(map(len, lists)))
    out = torch.zeros(len(lists), k, dtype=torch.long)
    mask = torch.zeros(len(lists), k, dtype=torch.bool)
    for i, row in enumerate(lists):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return out, mask


@dataclass
class TaskRun:
    """`task` on `model`: left-padded batches and the index tensors of the metric.

    Attributes:
        clean, corrupt: Left-padded batches; row i of both has the same length, so padded
            columns line up and activations patch position by position.
        rows, cols: The K metric positions in padded coordinates [K].
    """

    model: Model
    task: TaskSet
    clean: Batch
    corrupt: Batch
    rows: Tensor
    cols: Tensor
    answers: Tensor  # [K, a] (logprob: [K, 1] targets)
    answer_mask: Tensor
    wrong: Tensor  # [K, w]
    wrong_mask: Tensor

    @classmethod
    def build(cls, model: Model, task: TaskSet) -> TaskRun:
        if task.metric not in METRICS:
            raise InputError(f"Task {task.name!r} has metric {task.metric!r}; expected one of {', '.join(METRICS)}.")
        if len(task) == 0:
            raise InputError(f"Task {task.name!r} has no rows.")
        for i, (c, k) in enumerate(zip(task.clean, task.corrupt, strict=True)):
            if len(c) != len(k):
                raise InputError(f"Task {task.name!r} row {i}: clean has {len(c)} tokens, corrupt {len(k)}; "
                                 "they must be equal so that positions line up.")
        clean = model.batch_of_ids(task.clean)
        corrupt = model.batch_of_ids(task.corrupt)
        width = clean.input_ids.shape[1]
        rows, cols, ans, wrong = [], [], [], []
        for i, (row, pos) in enumerate(zip(task.clean, task.positions, strict=True)):
            pad = width - len(row)
            for j, p in enumerate(pos):
                if not 0 <= p < len(row):
                    raise InputError(f"Task {task.name!r} row {i}: metric position {p} is outside the row "
                                     f"({len(row)} tokens).")
                rows.append(i)
                cols.append(pad + p)
                if task.metric == "logprob":
                    ans.append([task.answers[i][j]])
                    wrong.append([])
                else:
                    ans.append(task.answers[i])
                    wrong.append(task.wrong[i])
        a, am = _padded(ans)
        w, wm = _padded(wrong)
        dev = model.device
        return cls(model, task, clean, corrupt, torch.tensor(rows, device=dev), torch.tensor(cols, device=dev),
                   a.to(dev), am.to(dev), w.to(dev), wm.to(dev))

    @property
    def n(self) -> int:
        return len(self.task)

    def batch(self, which: str) -> Batch:
        if which not in ("clean", "corrupt"):
            raise InputError(f"which must be 'clean' or 'corrupt', got {which!r}.")
        return self.clean if which == "clean" else self.corrupt

    # ---- the metric --------------------------------------------------------------------
    def from_normed(self, normed: Tensor) -> Tensor:
        """Per-row metric [batch] from the final-norm output [batch, pos, d_model]."""
        logits = readout.logits_from_normed(self.model, normed[self.rows, self.cols]).float()  # [K, vocab]
        return self.from_logits(logits)

    def from_logits(self, logits: Tensor) -> Tensor:
        """Per-row metric [batch] from the logits at the K metric positions [K, d_vocab]."""
        metric = self.task.metric
        if metric == "logprob":
            per_pos = logits.log_softmax(-1).gather(1, self.answers[:, :1])[:, 0]
        else:
            vals = logits if metric == "logit_diff" else logits.softmax(-1)
            a = (vals.gather(1, self.answers) * self.answer_mask)
            w = (vals.gather(1, self.wrong) * self.wrong_mask)
            if metric == "logit_diff":
                per_pos = a.sum(1) / self.answer_mask.sum(1) - w.sum(1) / self.wrong_mask.sum(1).clamp(min=1)
            else:
                per_pos = a.sum(1) - w.sum(1)
        out = torch.zeros(self.n, dtype=per_pos.dtype, device=per_pos.device)
        count = torch.zeros(self.n, dtype=per_pos.dtype, device=per_pos.device)
        out = out.index_add(0, self.rows, per_pos)
        count = count.index_add(0, self.rows, torch.ones_like(per_pos))
        return out / count

    def score(self, which: str = "clean", edits: Sequence[Edit] = (), *, grad: bool = False) -> Tensor:
        """Per-row metric [batch] of one forward on the clean or corrupt batch with `edits`."""
        res = run(self.model, self.batch(which), capture=["final_norm"], edits=edits, logits=None, grad=grad)
        with torch.set_grad_enabled(grad):
            return self.from_normed(res.cache["final_norm"])


def faithfulness(metric: float, clean: float, base: float) -> float:
    """(metric - base) / (clean - base); NaN when clean == base (the task shows no effect)."""
    gap = clean - base
    return float("nan") if gap == 0 else (metric - base) / gap


def rank_correlation(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two score vectors (ties broken by order)."""
    a, b = a.flatten().double(), b.flatten().double()
    if a.numel() != b.numel() or a.numel() < 2:
        raise InputError("rank_correlation needs two score vectors of the same length (at least 2).")
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = (ra.norm() * rb.norm()).item()
    return float("nan") if den == 0 else float((ra @ rb).item() / den)
