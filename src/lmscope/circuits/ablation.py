"""What "removing" a component means: the value it takes instead of its clean activation.

    resample   its value on the paired corrupt prompt (clean/corrupt patching, as in Wang et al.
               2022 and ACDC): row i gets corrupt row i
    mean       its mean over the task's corrupt prompts at each padded column (over the rows where
               that column is a real token), the same for every row
    zero       zeros

Every result of this family states which one it used. Batches are left-padded and a clean row
and its corrupt row have the same length, so padded column c is the same distance from the end
in every row ("left-aligned to the end"): the mean at column c averages like with like as far
as the prompts share a template.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lmscope.engine.errors import InputError

if TYPE_CHECKING:
    from lmscope.circuits.metric import TaskRun

ABLATIONS = ("resample", "mean", "zero")


def check_ablation(name: str) -> str:
    """`name` if it is one of `ABLATIONS`, else an InputError naming the choices."""
    if name not in ABLATIONS:
        raise InputError(f"Unknown ablation {name!r}; expected one of {', '.join(ABLATIONS)} (resample: the paired "
                         "corrupt prompt's value; mean: the mean over the corrupt prompts; zero: zeros).")
    return name


def reference(run: TaskRun, acts: Tensor, mask: Tensor, ablation: str) -> Tensor:
    """The values an ablated component takes, from corrupt-run activations.

    Args:
        run: The task run the activations come from (its corrupt batch).
        acts: Activations of the corrupt batch `[batch, pos, *feat]` (positions "all").
        mask: Its attention mask `[batch, pos]` (1 = real token).
        ablation: One of `ABLATIONS`.

    Returns:
        `[batch, pos, *feat]` in the dtype of `acts`: `acts` itself (resample), the per-column
        mean over real tokens broadcast to every row (mean), or zeros (zero).
    """
    check_ablation(ablation)
    if acts.dim() < 2 or tuple(acts.shape[:2]) != tuple(mask.shape):
        raise InputError(f"Activations {tuple(acts.shape)} do not match the attention mask {tuple(mask.shape)}; "
                         "pass [batch, pos, ...] captured at positions 'all'.")
    if acts.shape[0] != run.n:
        raise InputError(f"Activations have {acts.shape[0]} rows but task {run.task.name!r} has {run.n}.")
    if ablation == "resample":
        return acts
    if ablation == "zero":
        return torch.zeros_like(acts)
    w = mask.to(device=acts.device, dtype=torch.float32).reshape(*mask.shape, *[1] * (acts.dim() - 2))
    total = (acts.float() * w).sum(0, keepdim=True)  # [1, pos, *feat], statistics in float32
    mean = total / w.sum(0, keepdim=True).clamp(min=1)
    return mean.to(acts.dtype).expand_as(acts).contiguous()
