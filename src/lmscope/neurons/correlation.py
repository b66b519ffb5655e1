"""What one neuron does, part 2: which neurons correlate with a labelled behaviour.

    texts, labels = load_labelled("data.jsonl")     # {"text", "label"} rows, or agreement pairs
    corr = correlate(model, texts, labels)           # every layer, last token
    corr.ranked(n=20)                                # by |AUROC - 0.5|, with the means
    corr.null_auroc_dev                              # the same statistic with shuffled labels

AUROC is the Mann-Whitney statistic (ties count one half): the probability that a random
prompt with the behaviour activates the neuron more than a random prompt without it. With
few prompts and tens of thousands of neurons some reach high AUROC by chance: compare the top
of the ranking with `null_auroc_dev`, the largest |AUROC - 0.5| over all neurons after one
seeded shuffle of the labels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lmscope.datasets import files
from lmscope.datasets.corpus import _prefix_ids
from lmscope.engine.errors import InputError
from lmscope.engine.model import Model
from lmscope.engine.progress import steps
from lmscope.engine.results import Result, Table
from lmscope.neurons.recording import neuron_kind

_TRUE = {"1", "true", "yes", "present", "positive"}
_FALSE = {"0", "false", "no", "absent", "negative"}


def _label(v, where: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise InputError(f"{where}: label {v!r} is not 0/1, true/false or present/absent.")


def load_labelled(source: str | os.PathLike | Sequence[dict]) -> tuple[list[str], list[bool]]:
    """Texts and labels from JSONL rows `{"text", "label"}`, or from agreement pairs
    `{"prompt_singular", "prompt_plural"}` (plural = present)."""
    rows = source
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"No labelled data at {path}; expected JSONL with {{'text', 'label'}} rows.")
        rows = [rec for _, rec in files.read_jsonl(path, what="labelled data")]
    texts, labels = [], []
    for i, r in enumerate(rows):
        if "text" in r and "label" in r:
            texts.append(r["text"])
            labels.append(_label(r["label"], f"row {i}"))
        elif "prompt_singular" in r and "prompt_plural" in r:
            texts += [r["prompt_singular"], r["prompt_plural"]]
            labels += [False, True]
        else:
            raise InputError(f"Row {i} has keys {', '.join(r)}; expected 'text' and 'label' "
                             "(or 'prompt_singular' and 'prompt_plural').")
    if len(set(labels)) < 2:
        raise InputError("The labels are all the same; correlation needs prompts with and without the behaviour.")
    return texts, labels


def auroc(x: Tensor, labels: Tensor) -> Tensor:
    """Area under the ROC curve of each column of x [n, m] for boolean labels [n] (ties
    count one half; Mann-Whitney U / (n_pos n_neg)) -> [m]."""
    xt = x.float().t().contiguous()  # [m, n]
    srt = xt.sort(1).values
    lo = torch.searchsorted(srt, xt, side="left")
    hi = torch.searchsorted(srt, xt, side="right")
    ranks = (lo + hi + 1).double() / 2  # average 1-based ranks
    pos = labels.bool().to(x.device)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    u = ranks[:, pos].sum(1) - n_pos * (n_pos + 1) / 2
    return (u / (n_pos * n_neg)).float()


@dataclass
class CorrelationResult(Result):
    """Per-neuron association with a binary label. Tensors are [n_layers_scored, d_mlp]."""

    layers: list[int]
    auroc: Tensor
    mean_present: Tensor
    mean_absent: Tensor
    std_pooled: Tensor
    null_auroc_dev: float  # largest |AUROC - 0.5| over all neurons with shuffled labels
    reduce: str
    kind: str
    n_present: int
    n_absent: int

    @property
    def diff(self) -> Tensor:
        return self.mean_present - self.mean_absent

    def ranked(self, n: int = 20, by: str = "auroc", sign: str = "both") -> list[dict]:
        """Top neurons by |AUROC - 0.5| ("auroc") or |standardised difference| ("diff");
        sign "pos" keeps neurons more active with the behaviour, "neg" less active."""
        if by not in ("auroc", "diff"):
            raise InputError(f"by must be 'auroc' or 'diff', got {by!r}.")
        signed = self.auroc - 0.5 if by == "auroc" else self.diff / self.std_pooled.clamp(min=1e-6)
        score = {"both": signed.abs(), "pos": signed, "neg": -signed}.get(sign)
        if score is None:
            raise InputError(f"sign must be both, pos or neg, got {sign!r}.")
        top = score.flatten().topk(min(n, score.numel())).indices
        out = []
        for f in top.tolist():
            li, u = divmod(f, score.shape[1])
            out.append({"layer": self.layers[li], "neuron": u, "auroc": float(self.auroc[li, u]),
                        "mean_present": float(self.mean_present[li, u]), "mean_absent": float(self.mean_absent[li, u]),
                        "diff": float(self.diff[li, u]), "d": float(self.diff[li, u] / max(float(self.std_pooled[li, u]), 1e-6))})
        return out

    def to_dict(self, n: int = 20, by: str = "auroc", sign: str = "both") -> dict:
        """The counts, the shuffled-label null and the top `n` neurons (`ranked`); not the full
        [layer, d_mlp] tensors."""
        return {"kind": self.kind, "reduce": self.reduce, "layers": self.layers, "n_present": self.n_present,
                "n_absent": self.n_absent, "null_auroc_dev": self.null_auroc_dev, "by": by, "sign": sign,
                "top": self.ranked(n, by=by, sign=sign)}

    def table(self, n: int = 20, by: str = "auroc", sign: str = "both") -> Table:
        """The top `n` neurons (`ranked`), as `lmscope neuron correlate` prints them."""
        cols = ["layer", "neuron", "auroc", "mean_present", "mean_absent", "diff", "d"]
        return Table(["layer", "neuron", "AUROC", "mean present", "mean absent", "diff", "d"],
                     [[r[c] for c in cols] for r in self.ranked(n, by=by, sign=sign)],
                     title=f"{self.n_present} present / {self.n_absent} absent ({self.reduce} token, {self.kind}); "
                           f"shuffled-label null: |AUROC-0.5| up to {self.null_auroc_dev:.3f}",
                     formats={"AUROC": ".3f", "mean present": ".3f", "mean absent": ".3f", "diff": "+.3f",
                              "d": "+.2f"})


def neuron_activations(model: Model, texts: Sequence[str], layers: Sequence[int], *, kind: str = "neurons",
                       reduce: str = "last", batch_size: int = 16, progress: bool = False) -> Tensor:
    """Activations [n_texts, len(layers), d_mlp] at the last token ("last") or averaged over
    the text tokens, BOS excluded ("mean")."""
    kind = neuron_kind(kind)
    if reduce not in ("last", "mean"):
        raise InputError(f"reduce must be 'last' or 'mean', got {reduce!r}.")
    sites = [f"layers.{L}.{kind}" for L in layers]
    n_prefix = len(_prefix_ids(model.tokenizer))
    chunks = []
    for lo in steps(range(0, len(texts), batch_size), desc="activations", unit="batch", show=progress):
        res = model.run(list(texts[lo:lo + batch_size]), capture=sites, logits=None,
                        positions="last" if reduce == "last" else "all")
        if reduce == "last":
            chunks.append(torch.stack([res.cache[s].float() for s in sites], 1).cpu())  # [b, L, n]
        else:
            m = res.batch.attention_mask.bool()
            valid = (m & (m.long().cumsum(1) > n_prefix)).float()[..., None]  # [b, t, 1]
            denom = valid.sum(1).clamp(min=1)
            chunks.append(torch.stack([(res.cache[s].float() * valid).sum(1) / denom for s in sites], 1).cpu())
    return torch.cat(chunks)


def correlate(model: Model, texts: Sequence[str], labels: Sequence[bool], *, layers: Sequence[int] | None = None,
              kind: str = "neurons", reduce: str = "last", batch_size: int = 16, seed: int = 0,
              progress: bool = False) -> CorrelationResult:
    """Rank neurons by association with a binary label.

    Args:
        model: The wrapped model.
        texts: Prompts.
        labels: True where the behaviour is present.
        layers: Layers to score (None: every layer).
        kind: Neuron kind: neurons, gate or up.
        reduce: "last" (the last token, where the next token is predicted) or "mean".
        batch_size: Prompts per forward.
        seed: Seed of the shuffled-label control.
        progress: Progress bar.

    Returns:
        A `CorrelationResult` with AUROC, means and a shuffled-label null (the largest
        |AUROC - 0.5| any neuron reaches by chance with this many prompts).
    """
    if len(texts) != len(labels):
        raise InputError(f"{len(texts)} texts but {len(labels)} labels.")
    lab = torch.tensor([bool(v) for v in labels])
    if lab.all() or not lab.any():
        raise InputError("Correlation needs prompts with and without the behaviour (both labels).")
    layers = list(range(model.n_layers)) if layers is None else [model.site(f"layers.{L}.mlp.neurons").layer
                                                                 for L in layers]
    acts = neuron_activations(model, texts, layers, kind=kind, reduce=reduce, batch_size=batch_size,
                              progress=progress)  # [n, L, d]
    flat = acts.flatten(1)
    au = auroc(flat, lab).view(len(layers), -1)
    perm = lab[torch.randperm(len(lab), generator=torch.Generator().manual_seed(seed))]
    null = float((auroc(flat, perm) - 0.5).abs().max())
    pos, neg = acts[lab], acts[~lab]
    pooled = ((pos.var(0, unbiased=True) * (len(pos) - 1) + neg.var(0, unbiased=True) * (len(neg) - 1))
              / max(len(lab) - 2, 1)).sqrt()
    return CorrelationResult(layers, au, pos.mean(0), neg.mean(0), pooled, null, reduce, neuron_kind(kind),
                             int(lab.sum()), int((~lab).sum()))
