"""Tuned lens (Belrose et al. 2023): one learned affine translator per layer before the head.

    lens_l(h) = unembed(h + A_l h + b_l)      unembed = the model's final norm + LM head

Each translator starts at the identity (A = 0, b = 0: exactly the logit lens) and is trained,
the model frozen, to minimise KL(final || lens) at the same position, where "final" is the
model's own output distribution. The final norm is applied exactly as in the logit lens
(`lmscope.engine.readout.unembed`, Gemma's `1 + w` gain included), *after* the translator; training
without it (tuned-lens issue #56) would fit a different readout. The last block needs no
translator: its lens is the model's output, so it stays the identity.

Training cost is the full-vocabulary softmax of every (layer, position) cell, forward and
backward, so each step unembeds only `positions` random text positions of its batch (seeded),
computes the final distribution once for them, and backpropagates layer group by layer group.

    lens, log = train_tuned_lens(model, steps=200, out="gemma.tuned.safetensors", progress=True)
    lens.run(model, "The capital of Poland is", targets=[" Warsaw"])
    compare_lenses(model, lens)          # per-layer KL, logit vs tuned, on held-out text
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from lmscope.engine.artifacts import load_artifact, save_artifact
from lmscope.engine.errors import ArtifactError, InputError
from lmscope.engine.model import Model
from lmscope.engine.readout import unembed
from lmscope.engine.results import Result, Table
from lmscope.lens.logit import (
    LayerKL,
    LensResult,
    kl_of_states,
    pick_windows,
    run_lens,
    sample_states,
)

log = logging.getLogger(__name__)

KIND = "tuned_lens"
ROW_BUDGET = 2**24  # logits per backward chunk (with their gradient: ~4 x 64 MiB)


@dataclass(frozen=True, kw_only=True)
class TunedLensConfig:
    """How a tuned lens is trained.

    Attributes:
        steps: Optimizer steps.
        batch_size: Corpus windows run through the model per step.
        window: Tokens per window (BOS included).
        positions: Random text positions per step whose every layer is trained (the cost).
        optimizer: "sgd" (Nesterov momentum, the reference implementation's default) or
            "adam" (AdamW).
        lr: Peak PyTorch learning rate. None: 0.1 for SGD (the reference's `lr_scale` 1.0
            times 1 - momentum) and 1e-3 for Adam.
        momentum: SGD momentum, or Adam's beta1.
        warmup: Fraction of the steps with a linear warm-up, then linear decay to 0. None:
            0 for SGD and 0.2 for Adam (as the reference implementation).
        weight_decay: Weight decay (the reference uses 1e-3).
        grad_clip: Global gradient-norm clip (the reference clips at 1.0); 0 disables it.
        holdout: Fraction of the windows held out for evaluation (every k-th window).
        checkpoint_every: Save the artifact every this many steps (0: only at the end).
        seed: Seeds the window and position draws (each step's draws depend only on
            seed and step, so a resumed run draws what the uninterrupted one would).
    """

    steps: int = 200
    batch_size: int = 8
    window: int = 64
    positions: int = 64
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    warmup: float | None = None
    weight_decay: float = 1e-3
    grad_clip: float = 1.0
    holdout: float = 0.1
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "window", "positions"):
            if getattr(self, name) < 1:
                raise InputError(f"TunedLensConfig.{name} must be at least 1, got {getattr(self, name)}.")
        if self.optimizer not in ("adam", "sgd"):
            raise InputError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}.")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"lr must be a positive number, got {self.lr}.")
        if self.warmup is not None and not 0 <= self.warmup < 1:
            raise InputError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}.")
        if not 0 <= self.momentum < 1:
            raise InputError(f"momentum must be in [0, 1), got {self.momentum}.")
        if not 0 < self.holdout < 1:
            raise InputError(f"holdout is a fraction in (0, 1), got {self.holdout}.")
        if self.checkpoint_every < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise InputError("checkpoint_every, grad_clip and weight_decay must be >= 0.")

    @property
    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.1 if self.optimizer == "sgd" else 1e-3

    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) `step`: linear warm-up, then linear decay to 0."""
        frac = self.warmup if self.warmup is not None else (0.0 if self.optimizer == "sgd" else 0.2)
        warm = int(frac * self.steps)
        if step < warm:
            return self.peak_lr * (step + 1) / warm
        return self.peak_lr * max(0.0, (self.steps - step) / max(1, self.steps - warm))


class TunedLens:
    """Affine translators for blocks 0..n_layers-2 (the last block's lens is the identity).

    Attributes:
        weight: A [n_layers - 1, d_model, d_model], applied as `h @ A[l].T` (nn.Linear layout).
        bias: b [n_layers - 1, d_model].
        model: Name of the model the lens belongs to.
        meta: Training metadata (config, step, corpus, final losses).
    """

    def __init__(self, weight: Tensor, bias: Tensor, *, model: str, meta: dict | None = None) -> None:
        if weight.dim() != 3 or weight.shape[1] != weight.shape[2] or bias.shape != weight.shape[:2]:
            raise InputError(f"weight must be [layer, d, d] and bias [layer, d]; got {tuple(weight.shape)}, "
                             f"{tuple(bias.shape)}.")
        self.weight = weight  # [layer-1, d, d] float32
        self.bias = bias  # [layer-1, d] float32
        self.model = model
        self.meta = dict(meta or {})
        self._optimizer_state: dict[str, Tensor] = {}  # "optim.*" tensors of a loaded checkpoint

    @property
    def n_layers(self) -> int:
        return self.weight.shape[0] + 1

    @classmethod
    def identity(cls, model: Model) -> TunedLens:
        """The untrained lens: every translator is the identity, so it equals the logit lens."""
        n, d = model.n_layers - 1, model.d_model
        return cls(torch.zeros(n, d, d, device=model.device), torch.zeros(n, d, device=model.device), model=model.name)

    def __repr__(self) -> str:
        return (f"TunedLens({self.model!r}, layers={self.n_layers}, d_model={self.weight.shape[-1]}, "
                f"step={self.meta.get('step')})")

    def _check(self, model: Model) -> None:
        if model.name != self.model or model.n_layers != self.n_layers or model.d_model != self.weight.shape[-1]:
            raise InputError(f"This tuned lens was made for {self.model} ({self.n_layers} layers, d_model "
                             f"{self.weight.shape[-1]}), not {model.name}; train one for {model.name}.")

    def translate(self, layer: int, h: Tensor) -> Tensor:
        """h + A_l h + b_l for block `layer` (identity for the last block); h [..., d_model].
        The result is in float32; `unembed` applies the final norm and the head to it."""
        x = h.float()
        if layer == self.n_layers - 1:
            return x
        w, b = self.weight[layer].to(h.device), self.bias[layer].to(h.device)
        return x + x @ w.T + b

    __call__ = translate

    def run(self, model: Model, prompt: str, *, targets: Sequence[str | int] = (), top_k: int = 5,
            layers: Sequence[int] | None = None, chat: bool = False) -> LensResult:
        """The tuned lens at every layer x position of `prompt` (as `lmscope.lens.logit.logit_lens`)."""
        self._check(model)
        return run_lens(model, prompt, targets=targets, top_k=top_k, layers=layers, chat=chat,
                        translator=self.translate, lens_name="tuned")

    # ---- artifact ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, model: Model, *, optimizer: dict[str, Tensor] | None = None) -> Path:
        """Save as a `tuned_lens` artifact bound to `model` (optimizer state kept for resuming)."""
        self._check(model)
        tensors = {"weight": self.weight, "bias": self.bias, **(optimizer or {})}
        meta = {**self.meta, "site": "layers.*.resid_post", "method": "tuned lens (Belrose et al. 2023)",
                "final_norm": "the model's own final norm, applied after the translator",
                "translators": f"blocks 0..{self.n_layers - 2}; block {self.n_layers - 1} is the identity"}
        return save_artifact(path, tensors, kind=KIND, model=model, meta=meta)

    @classmethod
    def load(cls, path: str | os.PathLike, model: Model) -> TunedLens:
        """Load a lens saved for `model`; one made for another model is an ArtifactError."""
        tensors, side = load_artifact(path, kind=KIND, model=model)
        if "weight" not in tensors or "bias" not in tensors:
            raise ArtifactError(f"{path} lacks the 'weight' or 'bias' tensor of a tuned lens.")
        if side.get("n_layers") != model.n_layers:
            raise ArtifactError(f"{path} has translators for {side.get('n_layers')} layers; {model.name} has "
                                f"{model.n_layers}. Train a lens for this model.")
        lens = cls(tensors["weight"].to(model.device), tensors["bias"].to(model.device), model=model.name, meta=side)
        lens._optimizer_state = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        return lens


# ---- training ----------------------------------------------------------------------------


class _SoftCrossEntropy(torch.autograd.Function):
    """sum over rows of (logsumexp(z) - pf . z), the part of KL(pf || softmax z) that depends
    on z; the gradient (softmax(z) - pf) is formed in the forward, in one buffer."""

    @staticmethod
    def forward(ctx, z: Tensor, pf: Tensor) -> Tensor:  # z [layer, n, vocab], pf [n, vocab]
        cross = torch.einsum("lnv,nv->ln", z, pf)  # [layer, n]
        m = z.amax(-1, keepdim=True)
        p = (z - m).exp_()  # one vocabulary-sized buffer: exp, then softmax, then the gradient
        s = p.sum(-1, keepdim=True)
        lse = (m + s.log()).squeeze(-1)  # [layer, n]
        ctx.save_for_backward(p.div_(s).sub_(pf))
        return lse - cross

    @staticmethod
    def backward(ctx, g: Tensor):
        (grad,) = ctx.saved_tensors
        return grad.mul_(g[..., None]), None  # the buffer is not needed after this


def split_windows(n: int, holdout: float) -> tuple[Tensor, Tensor]:
    """(train, held-out) window indices: every k-th window (k = round(1/holdout)) is held out."""
    k = max(2, round(1 / holdout))
    idx = torch.arange(n)
    held = idx % k == k - 1
    if not held.any() or held.all():
        raise InputError(f"The corpus makes {n} windows: too few to hold out 1 in {k}; pass more text.")
    return idx[~held], idx[held]


@dataclass
class TrainLog(Result):
    """What training did: per-step mean KL over layers, and the last step's KL per layer."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)  # mean KL over trained layers, nats
    layer_kl: list[float] = field(default_factory=list)  # [layer-1] at the last step
    tokens_per_s: float = 0.0  # trained positions per second (each trains every layer)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"steps": self.steps, "loss": self.loss, "layer_kl": self.layer_kl,
                "tokens_per_s": round(self.tokens_per_s, 2), "seconds": round(self.seconds, 2)}

    def table(self) -> Table:
        notes = [f"mean KL {self.loss[0]:.3f} -> {self.loss[-1]:.3f} nats."] if self.loss else []
        return Table(["step", "mean KL"], [[s, x] for s, x in zip(self.steps, self.loss, strict=True)],
                     title=f"Trained {len(self.steps)} steps in {self.seconds:.1f} s ({self.tokens_per_s:.0f} "
                           "positions/s)", formats={"mean KL": ".3f"}, notes=notes)

    def tables(self) -> list[Table]:
        per_layer = Table(["layer", "KL"], [[i, x] for i, x in enumerate(self.layer_kl)],
                          title="KL per layer at the last step", formats={"KL": ".3f"})
        return [self.table(), per_layer]


def _optimizer(cfg: TunedLensConfig, params: list[Tensor]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(params, lr=cfg.peak_lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.peak_lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)


def _opt_tensors(opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"optim.{i}.{k}"] = v if isinstance(v, Tensor) else torch.tensor(float(v))
    return out


def _load_opt(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], device) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, i, k = key.split(".", 2)
        state.setdefault(int(i), {})[k] = v if k == "step" else v.to(device)
    sd = opt.state_dict()
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def lens_step_loss(model: Model, weight: Tensor, bias: Tensor, states: Tensor, *, backward: bool = True) -> Tensor:
    """KL(final || tuned lens) per layer [n_layers-1], averaged over the n positions of
    `states` [layer (all blocks), n, d_model]; with `backward`, gradients accumulate into
    `weight.grad` / `bias.grad` (and into nothing else: the model stays frozen).

    The final distribution is computed once; layers are processed in groups of at most
    `ROW_BUDGET` logits so the vocabulary-sized tensors stay small.
    """
    n_tr, n = weight.shape[0], states.shape[1]
    with torch.no_grad():
        zf = unembed(model, states[-1]).float()  # [n, vocab]
        logpf = torch.log_softmax(zf, -1)
        pf = logpf.exp()
        neg_h = (pf * logpf).sum(-1)  # [n] sum pf log pf
        del zf, logpf
    per_group = max(1, ROW_BUDGET // (model.d_vocab * n))
    kls = []
    for lo in range(0, n_tr, per_group):
        hi = min(n_tr, lo + per_group)
        h = states[lo:hi].float().clone()  # [g, n, d] (a normal tensor, not an inference one)
        w, b = weight[lo:hi], bias[lo:hi]
        x = h + torch.baddbmm(b[:, None, :], h, w.transpose(1, 2))  # h + h A^T + b
        z = unembed(model, x).float()  # [g, n, vocab]
        part = _SoftCrossEntropy.apply(z, pf)  # [g, n]
        kl = part + neg_h[None]
        loss = kl.mean(1).sum()
        if backward:
            gw, gb = torch.autograd.grad(loss, [weight, bias])
            weight.grad = gw if weight.grad is None else weight.grad.add_(gw)
            bias.grad = gb if bias.grad is None else bias.grad.add_(gb)
        kls.append(kl.detach().mean(1))
        del z, part, kl, loss
    return torch.cat(kls)


def train_tuned_lens(
    model: Model,
    corpus=None,
    *,
    config: TunedLensConfig | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = False,
) -> tuple[TunedLens, TrainLog]:
    """Train a tuned lens for `model` on a corpus (the model frozen).

    Args:
        model: The wrapped model.
        corpus: Texts, a .txt/.jsonl/.json file or folder, or None for the shipped corpus.
        config: A `TunedLensConfig` (steps, batch, positions per step, optimizer, seed...).
        out: Artifact path; written every `checkpoint_every` steps and at the end (atomic).
        resume: Continue from the artifact at `out` (translators, optimizer state, step).
        progress: Show a tqdm progress bar.

    Returns:
        The lens and a `TrainLog` (loss per step, per-layer KL of the last step, throughput).
    """
    import time

    from tqdm.auto import tqdm

    from lmscope.datasets.corpus import read_texts, token_windows

    cfg = config or TunedLensConfig()
    if model.n_layers < 2:
        raise InputError(f"{model.name} has one block; a tuned lens needs at least two.")
    texts = read_texts(corpus)
    wins = token_windows(model, texts, window=cfg.window)
    train_rows, _ = split_windows(len(wins), cfg.holdout)
    lens = TunedLens.identity(model)
    weight = lens.weight.requires_grad_(True)
    bias = lens.bias.requires_grad_(True)
    opt = _optimizer(cfg, [weight, bias])
    start = _resume(model, cfg, out, weight, bias, opt) if resume else 0
    lens.meta = {"config": asdict(cfg), "corpus": _describe(corpus, len(texts), len(wins)), "step": start}
    tlog = TrainLog()
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, desc=f"tuned lens {model.name}", unit="step")
    t0, trained = time.perf_counter(), 0
    for step in range(start, cfg.steps):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        rows = train_rows[torch.randperm(len(train_rows), generator=g)[: cfg.batch_size]]
        states, _ = sample_states(model, wins, rows, cfg.positions, g, batch_size=cfg.batch_size)
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        opt.zero_grad(set_to_none=True)
        kl = lens_step_loss(model, weight, bias, states)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([weight, bias], cfg.grad_clip)
        opt.step()
        trained += states.shape[1]
        tlog.steps.append(step + 1)
        tlog.loss.append(float(kl.mean()))
        tlog.layer_kl = [float(x) for x in kl]
        bar.update(1)
        bar.set_postfix(kl=f"{tlog.loss[-1]:.3f}")
        lens.meta.update(step=step + 1, last_kl=round(tlog.loss[-1], 5))
        done = step + 1 == cfg.steps
        if out is not None and (done or (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0)):
            _save(lens, weight, bias, opt, out, model)
    bar.close()
    tlog.seconds = time.perf_counter() - t0
    tlog.tokens_per_s = trained / tlog.seconds if tlog.seconds > 0 else 0.0
    final = TunedLens(weight.detach().clone(), bias.detach().clone(), model=model.name, meta=lens.meta)
    return final, tlog


def _resume(model: Model, cfg: TunedLensConfig, out, weight: Tensor, bias: Tensor, opt) -> int:
    """Load translators and optimizer state from the artifact at `out`; return its step."""
    if out is None or not Path(out).is_file():
        raise InputError(f"resume needs an existing artifact at out= (got {out!s}); drop resume to start afresh.")
    old = TunedLens.load(out, model)
    if old.meta.get("config", {}).get("optimizer", cfg.optimizer) != cfg.optimizer:
        raise InputError(f"{out} was trained with {old.meta['config']['optimizer']}; resume with the same optimizer.")
    with torch.no_grad():
        weight.copy_(old.weight)
        bias.copy_(old.bias)
    if old._optimizer_state:
        _load_opt(opt, old._optimizer_state, model.device)
    start = int(old.meta.get("step", 0))
    log.info("Resuming %s at step %d of %d", out, start, cfg.steps)
    return start


def _describe(corpus, n_texts: int, n_windows: int) -> dict:
    src = "shipped corpus.jsonl" if corpus is None else (str(corpus) if isinstance(corpus, str | os.PathLike)
                                                          else f"{n_texts} texts given in Python")
    return {"source": src, "texts": n_texts, "windows": n_windows}


def _save(lens: TunedLens, weight: Tensor, bias: Tensor, opt, out, model: Model) -> None:
    snap = TunedLens(weight.detach(), bias.detach(), model=model.name, meta=lens.meta)
    path = snap.save(out, model, optimizer=_opt_tensors(opt))
    log.info("Saved tuned lens at step %d to %s", lens.meta["step"], path)


# ---- evaluation ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LensComparison(Result):
    """Per-layer KL to the model's output of the logit lens and a tuned lens, same positions."""

    logit: LayerKL
    tuned: LayerKL
    text: str  # "held-out windows of the shipped corpus" or "the given corpus"

    @property
    def tuned_wins(self) -> list[bool]:
        """Per layer except the last: tuned KL < logit-lens KL."""
        return [bool(t < lg) for t, lg in zip(self.tuned.kl[:-1], self.logit.kl[:-1], strict=True)]

    def to_dict(self) -> dict:
        return {"model": self.logit.model, "layers": self.logit.layers, "n_positions": self.logit.n_positions,
                "text": self.text, "logit_kl": self.logit.to_dict()["kl"], "tuned_kl": self.tuned.to_dict()["kl"],
                "logit_top1_agreement": self.logit.to_dict()["top1_agreement"],
                "tuned_top1_agreement": self.tuned.to_dict()["top1_agreement"],
                "tuned_wins": self.tuned_wins, "tuned_wins_all_but_last": all(self.tuned_wins)}

    def table(self) -> Table:
        """Per layer: both lenses' KL, their ratio and top-1 agreement (`lmscope lens compare`)."""
        rows = []
        for i, layer in enumerate(self.logit.layers):
            lg, tu = float(self.logit.kl[i]), float(self.tuned.kl[i])
            rows.append([layer, lg, tu, lg / tu if tu > 1e-6 else None, float(self.logit.top1_agreement[i]),
                         float(self.tuned.top1_agreement[i])])
        wins = self.tuned_wins
        return Table(["layer", "logit KL", "tuned KL", "ratio", "logit top-1", "tuned top-1"], rows,
                     title=f"{self.logit.model}: KL(output || lens), {self.logit.n_positions} positions of {self.text}",
                     formats={"logit KL": ".3f", "tuned KL": ".3f", "ratio": ".1f", "logit top-1": ".2f",
                              "tuned top-1": ".2f"},
                     notes=[f"tuned < logit on {sum(wins)}/{len(wins)} layers (all but the last)."])


def compare_lenses(
    model: Model,
    lens: TunedLens,
    corpus=None,
    *,
    n_positions: int = 256,
    window: int | None = None,
    holdout: float | None = None,
    seed: int = 1,
) -> LensComparison:
    """KL(final || lens) per layer for the logit lens and `lens`, at the same random positions.

    With `corpus=None` (the shipped corpus, which the lens is usually trained on) only the
    windows held out of training are used (the same split as `train_tuned_lens`); a corpus you
    pass is used whole, as held-out text.
    """
    from lmscope.datasets.corpus import read_texts, token_windows

    lens._check(model)
    cfg = lens.meta.get("config", {})
    window = window or cfg.get("window", 64)
    wins = token_windows(model, read_texts(corpus), window=window)
    if corpus is None:
        _, rows = split_windows(len(wins), holdout or cfg.get("holdout", 0.1))
    else:
        rows = torch.arange(len(wins))
    g = torch.Generator().manual_seed(seed)
    states, _ = sample_states(model, wins, pick_windows(rows, n_positions, g), n_positions, g)
    logit = kl_of_states(model, states)
    tuned = kl_of_states(model, states, translator=lens.translate, lens_name="tuned")
    text = "held-out windows of the shipped corpus" if corpus is None else "the given corpus"
    return LensComparison(logit=logit, tuned=tuned, text=text)
