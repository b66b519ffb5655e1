"""The linear relational embedding (Hernandez et al. 2023): o ~ beta * W s + b.

W is the mean over a few training prompts of the Jacobian d o / d s, where s is the subject's
last-token residual after block `layer` and o the last block's residual (before the final norm)
at the prompt's last token; b is the mean of o - J s. Read out through the model's own final norm
and unembedding, the map predicts the object's first token from the subject state alone.

    lre = fit_lre(model, rel, layer=4, demos=train_pairs)
    lre.logits(model, s)                     # [n, d_vocab] unembed(beta W s + b)
    lre.edit_delta(o_target - o_source, rank=64)   # W_r^+ (o' - o): the causality edit
    lre.save("capital.safetensors"); LRE.load("capital.safetensors", model=model)
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from lmscope.datasets.relations import Relation
from lmscope.engine.artifacts import load_artifact, save_artifact
from lmscope.engine.errors import ArtifactError, InputError
from lmscope.engine.jacobian import jacobians
from lmscope.engine.model import Model
from lmscope.engine.progress import steps
from lmscope.engine.readout import unembed
from lmscope.relations.prompts import icl_prompt, subject_token

KIND = "lre"


@dataclass
class Samples:
    """Per-training-sample Jacobians of every fitted layer: J [layer][n, d, d], x [layer][n, d], o [n, d]."""

    jac: dict[int, Tensor]
    x: dict[int, Tensor]
    o: Tensor
    seconds: float


@dataclass
class LRE:
    """A fitted linear relational embedding.

    Attributes:
        weight: W [d_model, d_model] (mean Jacobian), float32 on the CPU.
        bias: b [d_model] (mean of o - J s).
        layer: Block whose resid_post at the subject's last token is s.
        beta: Scale of W s (the Jacobian underestimates the slope; beta > 1 compensates).
        relation: Relation name; template: its prompt template.
        demos: The (subject, object) pairs it was fitted on, also the few-shot demonstrations.
        rank: Low-rank W for prediction (None = full rank).
        meta: Model name and anything else kept in the sidecar.
    """

    weight: Tensor
    bias: Tensor
    layer: int
    beta: float = 1.0
    relation: str = ""
    template: str = ""
    demos: tuple[tuple[str, str], ...] = ()
    rank: int | None = None
    meta: dict = field(default_factory=dict)
    _factors: tuple | None = field(default=None, repr=False, compare=False)

    def factors(self) -> tuple[Tensor, Tensor, Tensor]:
        """The SVD of W, computed once."""
        if self._factors is None:
            self._factors = svd(self.weight)
        return self._factors

    def predict(self, s: Tensor) -> Tensor:
        """beta * W s + b for subject states s [..., d] -> [..., d] (float32)."""
        w = self.weight if self.rank is None else low_rank(self.weight, self.rank, self.factors())
        return self.beta * (s.float().cpu() @ w.T) + self.bias

    def logits(self, model: Model, s: Tensor) -> Tensor:
        """unembed(final_norm(beta W s + b)) [..., d_vocab], float32."""
        with torch.no_grad():
            return unembed(model, self.predict(s)).float().cpu()

    def edit_delta(self, d_out: Tensor, rank: int) -> Tensor:
        """W_r^+ d_out: the subject-state change whose image under W is d_out (rank-r pseudo-inverse)."""
        return d_out.float().cpu() @ low_rank_pinv(self.weight, rank, self.factors()).T

    def as_relation(self) -> Relation:
        """The relation it was fitted on: its template, with the training facts as its facts."""
        from lmscope.datasets.relations import check_template

        return Relation(self.relation or "lre", check_template(self.template), tuple(self.demos))

    def with_(self, **kw) -> LRE:
        """A copy with other settings (beta, rank); W's SVD is shared."""
        return replace(self, **kw, _factors=self.factors())

    def to_dict(self) -> dict:
        return {"relation": self.relation, "template": self.template, "layer": self.layer, "beta": self.beta,
                "rank": self.rank, "demos": [list(p) for p in self.demos], "d_model": int(self.weight.shape[0]),
                "model": self.meta.get("model", "")}

    def save(self, path: str | os.PathLike, model: Model) -> Path:
        """Write W and b as a safetensors artifact bound to `model` (atomic, JSON sidecar)."""
        meta = {k: v for k, v in self.to_dict().items() if k not in ("d_model", "model")}
        return save_artifact(path, {"weight": self.weight, "bias": self.bias}, kind=KIND, model=model,
                             meta={**meta, "site": f"layers.{self.layer}.resid_post"})

    @classmethod
    def load(cls, path: str | os.PathLike, *, model: Model | None = None) -> LRE:
        """Read an LRE artifact (validated; refused when made for another model)."""
        tensors, side = load_artifact(path, kind=KIND, model=model)
        w, b = tensors.get("weight"), tensors.get("bias")
        d = side.get("d_model")
        if w is None or b is None or w.shape != (d, d) or b.shape != (d,):
            raise ArtifactError(f"{path} does not hold an LRE: expected weight [{d}, {d}] and bias [{d}].")
        try:
            demos = tuple((str(s), str(o)) for s, o in side.get("demos", []))
            return cls(w, b, int(side["layer"]), float(side["beta"]), str(side.get("relation", "")),
                       str(side.get("template", "")), demos, side.get("rank"), {"model": side["model"]})
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"The sidecar of {path} lacks a valid layer/beta/demos ({e}).") from None


def svd(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Exact SVD (float64, then float32) with each singular pair's sign fixed: the largest-magnitude
    entry of every left singular vector is positive."""
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    sign = torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True)))
    sign[sign == 0] = 1
    return (u * sign).float(), s.float(), (vh * sign.T).float()


def low_rank(w: Tensor, rank: int, factors: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """The best rank-r approximation of w (truncated SVD)."""
    u, s, vh = factors or svd(w)
    r = _check_rank(rank, s.shape[0])
    return (u[:, :r] * s[:r]) @ vh[:r]


def low_rank_pinv(w: Tensor, rank: int, factors: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """The rank-r pseudo-inverse V_r S_r^-1 U_r^T of w."""
    u, s, vh = factors or svd(w)
    r = _check_rank(rank, s.shape[0])
    return (vh[:r].T / s[:r]) @ u[:, :r].T


def _check_rank(rank: int, n: int) -> int:
    if not isinstance(rank, int) or rank < 1:
        raise InputError(f"rank must be a positive integer, got {rank!r}.")
    return min(rank, n)


def sample_jacobians(model: Model, rel: Relation, train: Sequence[tuple[str, str]], layers: Sequence[int],
                     *, chunk: int = 128) -> Samples:
    """Jacobians of every layer in `layers` on each training sample's few-shot prompt (its
    demonstrations are the other training samples), one forward + backward per sample."""
    if len(train) < 1:
        raise InputError("Fitting an LRE needs at least one training fact.")
    bad = [x for x in layers if not 0 <= x < model.n_layers]
    if bad:
        raise InputError(f"Layer {bad[0]} is out of range for {model.name} ({model.n_layers} layers: "
                         f"0..{model.n_layers - 1}).")
    t0 = time.perf_counter()
    jac = {x: [] for x in layers}
    xs = {x: [] for x in layers}
    os_ = []
    for i, (s, _) in enumerate(steps(train, desc="Jacobians", unit="fact")):
        demos = [p for j, p in enumerate(train) if j != i]
        prompt, end = icl_prompt(rel, s, demos)
        pos = subject_token(model, prompt, end)
        js = jacobians(model, prompt, input_sites=[f"layers.{x}.resid_post" for x in layers], position=pos,
                       chunk=chunk)
        for x in layers:
            j = js[f"layers.{x}.resid_post"]
            jac[x].append(j.jacobian)
            xs[x].append(j.input)
        os_.append(j.output)
    return Samples({x: torch.stack(v) for x, v in jac.items()}, {x: torch.stack(v) for x, v in xs.items()},
                   torch.stack(os_), time.perf_counter() - t0)


def lre_from_samples(samples: Samples, layer: int, *, beta: float = 1.0, rel: Relation | None = None,
                     demos: Sequence[tuple[str, str]] = (), model_name: str = "") -> LRE:
    """W = mean J, b = mean(o - J s) at `layer`."""
    j, x, o = samples.jac[layer], samples.x[layer], samples.o
    b = (o - torch.einsum("nij,nj->ni", j, x)).mean(0)
    return LRE(j.mean(0), b, layer, float(beta), rel.name if rel else "", rel.template if rel else "",
               tuple(demos), None, {"model": model_name} if model_name else {})


def fit_lre(model: Model, rel: Relation, *, layer: int, demos: Sequence[tuple[str, str]], beta: float = 1.0,
            chunk: int = 128) -> LRE:
    """Fit an LRE at `layer` on the training facts `demos` (also the few-shot demonstrations)."""
    layer = layer + model.n_layers if layer < 0 else layer
    if not 0 <= layer < model.n_layers - 1:
        raise InputError(f"An LRE maps a subject state to the last block's output: fit it at a layer in "
                         f"0..{model.n_layers - 2} of {model.name} (got {layer}; at the last layer it is the identity).")
    samples = sample_jacobians(model, rel, demos, [layer], chunk=chunk)
    return lre_from_samples(samples, layer, beta=beta, rel=rel, demos=demos, model_name=model.name)
