"""A toy clean/corrupt task on a tiny random model (token ids; the tiny tokenizer has no words)."""

from __future__ import annotations

import torch

from lmscope.circuits.metric import TaskRun
from lmscope.datasets.circuit_tasks import TaskSet


def toy_run(model, n: int = 6, length: int = 8, seed: int = 0, metric: str = "logit_diff") -> TaskRun:
    """Random rows whose corrupt twin keeps the first 3 tokens and resamples the rest."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, 120, (length,), generator=g).tolist() for _ in range(n)]
    corrupt = [r[:3] + torch.randint(3, 120, (length - 3,), generator=g).tolist() for r in rows]
    if metric == "logprob":
        pos = [list(range(3, length - 1)) for _ in rows]
        task = TaskSet("toy", "logprob", rows, corrupt, pos, [r[4:] for r in rows], [[] for _ in rows])
    else:
        task = TaskSet("toy", metric, rows, corrupt, [[length - 1]] * n, [[7]] * n, [[5, 9]] * n)
    return TaskRun.build(model, task)
