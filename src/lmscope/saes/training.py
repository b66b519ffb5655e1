"""Training sparse coders: the optimisation step, the loop, checkpoints.

Losses, all in normalised units (inputs scaled so that E||x|| = sqrt(d)):
    topk, batchtopk   FVU + aux_coef * AuxK          (Gao et al.; AuxK reconstructs the residual
                                                      error from the top k_aux *dead* latents)
    jumprelu          FVU + l0_coef * L0             (Rajamanoharan et al.; straight-through
                                                      gradients for the thresholds)
    relu              FVU + l1_coef * sum_i f_i      (Bricken et al.; decoder rows unit norm)
FVU = sum ||y - y_hat||^2 / sum ||y - mean(y)||^2 over the batch. After every Adam step the
decoder rows are put back to unit norm (and the gradient part along each row is removed first).

One pass over the activations trains every coder in `coders` on the same token rows, so several
layers (or an SAE and a transcoder) share one model run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from lmscope.engine.artifacts import atomic_write
from lmscope.engine.errors import ArtifactError, InputError
from lmscope.saes.activations import (
    Chunk,
    Cursor,
    ShuffleBuffer,
    TensorSource,
    drop_massive,
)
from lmscope.saes.coder import (
    ARCHS,
    KINDS,
    CoderSpec,
    SparseCoder,
    init_coder,
    sparse_decode,
    topk_code,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train. Defaults follow Gao et al. (TopK, AuxK 1/32, tied init, lr ~ 1/sqrt(width)).

    Attributes:
        arch: topk | batchtopk | jumprelu | relu.
        kind: sae | transcoder | skip_transcoder.
        expansion: d_sae = expansion * d_in (ignored when d_sae is given).
        d_sae: Number of latents.
        k: Latents per token (topk, batchtopk).
        aux_k: Dead latents AuxK may use (default d_in // 2).
        aux_coef: Weight of the AuxK loss.
        dead_tokens: A latent not fired for this many tokens is dead (default total_tokens // 8).
        l1_coef: L1 weight (relu).
        l0_coef: L0 weight (jumprelu).
        bandwidth: Straight-through kernel width for JumpReLU thresholds.
        lr: Adam learning rate (default 2e-4 / sqrt(d_sae / 16384)).
        warmup_steps: Linear learning-rate warm-up.
        decay_frac: Final fraction of steps over which the learning rate decays linearly to 0.
        batch_size: Token rows per step.
        total_tokens: Rows to train on (epochs repeat the data when it is shorter).
        buffer_tokens: Shuffle buffer rows (default 16 batches).
        b_dec_init: "geometric_median", "mean" or "zeros".
        normalize: Scale inputs (and outputs) to E||x|| = sqrt(d).
        seed: Every random choice (init, shard order, shuffling).
        checkpoint_every: Steps between checkpoints (0: none).
        log_every: Steps between history rows.
        progress: Show a progress bar.
    """

    arch: str = "topk"
    kind: str = "sae"
    expansion: int = 8
    d_sae: int | None = None
    k: int = 32
    aux_k: int | None = None
    aux_coef: float = 1 / 32
    dead_tokens: int | None = None
    l1_coef: float = 3e-3
    l0_coef: float = 2e-3
    bandwidth: float = 0.05
    lr: float | None = None
    warmup_steps: int = 50
    decay_frac: float = 0.2
    batch_size: int = 4096
    total_tokens: int = 2_000_000
    buffer_tokens: int | None = None
    b_dec_init: str = "geometric_median"
    normalize: bool = True
    seed: int = 0
    checkpoint_every: int = 0
    log_every: int = 10
    progress: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise InputError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}.")
        if self.kind not in KINDS:
            raise InputError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}.")
        if self.b_dec_init not in ("geometric_median", "mean", "zeros"):
            raise InputError(f"b_dec_init must be geometric_median, mean or zeros, got {self.b_dec_init!r}.")
        for name in ("batch_size", "total_tokens", "expansion", "k"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("aux_coef", "l1_coef", "l0_coef", "bandwidth", "decay_frac"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise InputError(f"{name} must be a finite number >= 0, got {v}.")
        if self.decay_frac > 1:
            raise InputError(f"decay_frac is a fraction of the steps (0..1), got {self.decay_frac}.")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"lr must be a positive number, got {self.lr}.")
        if self.aux_k is not None and self.aux_k < 1:
            raise InputError(f"aux_k must be at least 1 (or None for d_in // 2), got {self.aux_k}.")
        if self.d_sae is not None and self.d_sae < 1:
            raise InputError(f"d_sae must be at least 1, got {self.d_sae}.")
        if self.d_sae is not None and self.arch in ("topk", "batchtopk") and self.k > self.d_sae:
            raise InputError(f"k ({self.k}) cannot exceed d_sae ({self.d_sae}).")
        if self.buffer_tokens is not None and self.buffer_tokens < 2 * self.batch_size:
            raise InputError(f"buffer_tokens ({self.buffer_tokens}) must hold at least two batches "
                             f"({2 * self.batch_size}).")
        if self.warmup_steps < 0 or self.checkpoint_every < 0 or self.log_every < 1:
            raise InputError("warmup_steps and checkpoint_every must be >= 0 and log_every >= 1.")
        if self.total_tokens < self.batch_size:
            raise InputError(f"total_tokens ({self.total_tokens}) is less than one batch ({self.batch_size}).")

    def width(self, d_in: int) -> int:
        return self.d_sae or self.expansion * d_in

    def learning_rate(self, d_sae: int) -> float:
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(d_sae / 16384)

    @property
    def n_steps(self) -> int:
        return self.total_tokens // self.batch_size

    def to_dict(self) -> dict:
        return asdict(self)


# ---- initialisation ------------------------------------------------------------------------

def geometric_median(x: Tensor, *, iters: int = 100, eps: float = 1e-6) -> Tensor:
    """The point minimising the summed distance to the rows of x (Weiszfeld's iteration)."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=-1).clamp_min(eps)
        nxt = (w[:, None] * x).sum(0) / w.sum()
        if (nxt - y).norm() < eps * max(1.0, float(y.norm())):
            return nxt
        y = nxt
    return y


def norm_scale(x: Tensor) -> float:
    """The factor that makes E||x|| = sqrt(d)."""
    return math.sqrt(x.shape[-1]) / float(x.norm(dim=-1).mean().clamp_min(1e-12))


def init_from_data(spec: CoderSpec, config: TrainConfig, x: Tensor, y: Tensor) -> SparseCoder:
    """A fresh coder whose scales and decoder bias come from a data sample (x in, y out)."""
    coder = init_coder(spec, seed=config.seed)
    keep = drop_massive({"x": x, "y": y})
    x, y = keep["x"], keep["y"]
    with torch.no_grad():
        if config.normalize:
            coder.scale_in.fill_(norm_scale(x))
            coder.scale_out.fill_(float(coder.scale_in) if spec.kind == "sae" else norm_scale(y))
        yn = y * coder.scale_out
        if not isinstance(coder._b_pre(), Tensor):  # no input centring (transcoders): fold the mean into b_enc
            coder.b_enc.copy_(-(x.mean(0) * coder.scale_in) @ coder.W_enc)
        if config.b_dec_init == "geometric_median":
            coder.b_dec.copy_(geometric_median(yn))
        elif config.b_dec_init == "mean":
            coder.b_dec.copy_(yn.mean(0))
    return coder


# ---- one step ------------------------------------------------------------------------------

class _JumpReLU(torch.autograd.Function):
    """f = pre * H(pre - t); the threshold gets a rectangle-kernel straight-through gradient."""

    @staticmethod
    def forward(ctx, pre, t, bw):
        ctx.save_for_backward(pre, t)
        ctx.bw = bw
        return pre * (pre > t)

    @staticmethod
    def backward(ctx, g):
        pre, t = ctx.saved_tensors
        bw = ctx.bw
        near = ((pre - t).abs() < bw / 2).to(g.dtype)
        return g * (pre > t), (-(t / bw) * near * g).sum(0), None


class _Step(torch.autograd.Function):
    """H(pre - t), with the same straight-through gradient for t (the L0 penalty)."""

    @staticmethod
    def forward(ctx, pre, t, bw):
        ctx.save_for_backward(pre, t)
        ctx.bw = bw
        return (pre > t).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, t = ctx.saved_tensors
        near = ((pre - t).abs() < ctx.bw / 2).to(g.dtype)
        return None, (-(1.0 / ctx.bw) * near * g).sum(0), None


def _fvu(y_hat: Tensor, y: Tensor) -> Tensor:
    return (y_hat - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum().clamp_min(1e-12)


@dataclass
class StepOut:
    loss: Tensor
    fvu: float
    l0: float
    fired: Tensor  # [d_sae] bool: latents active in this batch


def step_loss(coder: SparseCoder, x: Tensor, y: Tensor, config: TrainConfig, dead: Tensor | None) -> StepOut:
    """The training loss of one batch (x in raw units, y the raw target)."""
    spec = coder.cfg
    yn = y.to(coder.W_dec.dtype) * coder.scale_out
    skip = (x.to(coder.W_dec.dtype) * coder.scale_in) @ coder.W_skip if coder.W_skip is not None else 0.0
    n_dead = int(dead.sum()) if dead is not None else 0
    k_aux = min(config.aux_k or spec.d_in // 2, n_dead)
    if spec.arch == "topk":
        vals, idx, a_vals, a_idx = topk_code(coder, x, aux_mask=dead if k_aux else None, k_aux=k_aux)
        y_hat = sparse_decode(coder.W_dec, vals, idx) + coder.b_dec + skip
        fvu = _fvu(y_hat, yn)
        loss = fvu
        if k_aux:
            err = (yn - y_hat).detach()
            aux = _fvu(sparse_decode(coder.W_dec, a_vals, a_idx), err)
            loss = loss + config.aux_coef * min(n_dead / k_aux, 1.0) * aux
        fired = torch.zeros(spec.d_sae, dtype=torch.bool, device=x.device)
        fired[idx[vals > 0]] = True
        return StepOut(loss, float(fvu.detach()), float((vals > 0).sum(-1).float().mean()), fired)
    pre = coder.pre_acts(x)
    if spec.arch == "batchtopk":
        act = pre.relu()
        flat = act.flatten()
        top = flat.topk(spec.k * act.shape[0])
        f = torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(act)
        with torch.no_grad():  # the read-out threshold: running mean of the smallest kept activation
            pos = top.values[top.values > 0]
            if pos.numel():
                t = coder.threshold_buf
                t.copy_(torch.where(t > 0, 0.99 * t + 0.01 * pos.min(), pos.min().expand_as(t)))
        penalty = 0.0
    elif spec.arch == "jumprelu":
        t = coder.log_threshold.exp()
        f = _JumpReLU.apply(pre, t, config.bandwidth)
        penalty = config.l0_coef * _Step.apply(pre, t, config.bandwidth).sum(-1).mean()
    else:
        f = pre.relu()
        penalty = config.l1_coef * (f * coder.W_dec.norm(dim=-1)).sum(-1).mean()
    y_hat = f @ coder.W_dec + coder.b_dec + skip
    fvu = _fvu(y_hat, yn)
    loss = fvu + penalty
    if spec.arch == "batchtopk" and k_aux:
        err = (yn - y_hat).detach()
        a_vals, a_idx = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1)
        a_vals = torch.where(torch.isfinite(a_vals), a_vals, torch.zeros_like(a_vals)).relu()
        aux = _fvu(sparse_decode(coder.W_dec, a_vals, a_idx), err)
        loss = loss + config.aux_coef * min(n_dead / k_aux, 1.0) * aux
    active = f > 0
    return StepOut(loss, float(fvu.detach()), float(active.sum(-1).float().mean()), active.any(0))


# ---- the trainer -----------------------------------------------------------------------------

@dataclass
class History:
    """Training curve of one coder: a row every `log_every` steps."""

    rows: list[dict] = field(default_factory=list)
    tokens_per_s: float = 0.0
    seconds: float = 0.0
    steps: int = 0

    @property
    def fvu(self) -> float:
        return self.rows[-1]["fvu"] if self.rows else float("nan")

    def to_dict(self) -> dict:
        return {"rows": self.rows, "tokens_per_s": self.tokens_per_s, "seconds": self.seconds, "steps": self.steps}


@dataclass
class Slot:
    """One coder being trained: what it reads, what it predicts, its optimiser and dead counter."""

    name: str
    coder: SparseCoder
    site_in: str
    site_out: str
    opt: torch.optim.Optimizer
    since_fired: Tensor
    history: History = field(default_factory=History)


class Trainer:
    """Trains coders in lock-step on batches of aligned token rows."""

    def __init__(self, slots: list[Slot], config: TrainConfig) -> None:
        self.slots, self.config = slots, config
        self.step = 0
        self.tokens = 0
        self.cursor = Cursor()
        self.buffer = ShuffleBuffer(config.buffer_tokens or 16 * config.batch_size, config.batch_size,
                                    seed=config.seed)

    def _lr_factor(self) -> float:
        c, s, n = self.config, self.step, self.config.n_steps
        warm = min(1.0, (s + 1) / c.warmup_steps) if c.warmup_steps else 1.0
        decay_start = int(n * (1 - c.decay_frac))
        decay = 1.0 if s < decay_start else max(0.0, (n - s) / max(1, n - decay_start))
        return warm * decay

    @property
    def dead_window(self) -> int:
        """Tokens without firing after which a latent counts as dead."""
        c = self.config
        return c.dead_tokens or max(c.total_tokens // 8, 10 * c.batch_size)

    def train_step(self, batch: Chunk) -> None:
        c = self.config
        dead_after = self.dead_window
        for slot in self.slots:
            coder = slot.coder
            dev = coder.W_dec.device
            x, y = batch[slot.site_in].to(dev), batch[slot.site_out].to(dev)
            dead = slot.since_fired >= dead_after
            out = step_loss(coder, x, y, c, dead if bool(dead.any()) else None)
            slot.opt.zero_grad(set_to_none=True)
            out.loss.backward()
            coder.remove_parallel_grad_()
            torch.nn.utils.clip_grad_norm_(coder.parameters(), 1.0)
            for group in slot.opt.param_groups:
                group["lr"] = group["base_lr"] * self._lr_factor()
            slot.opt.step()
            coder.normalize_decoder_()
            slot.since_fired += x.shape[0]
            slot.since_fired[out.fired] = 0
            if self.step % c.log_every == 0 or self.step == c.n_steps - 1:
                slot.history.rows.append({"step": self.step, "tokens": self.tokens + x.shape[0],
                                          "loss": float(out.loss.detach()), "fvu": out.fvu, "l0": out.l0,
                                          "dead": float((slot.since_fired >= dead_after).float().mean())})
        self.step += 1
        self.tokens += next(iter(batch.values())).shape[0]

    def next_batch(self, chunks: Iterator[tuple[Cursor, Chunk]]) -> Chunk:
        """The next training batch through the shuffle buffer; remembers the source cursor."""
        while (batch := self.buffer.next_batch()) is None:
            self.cursor, chunk = next(chunks)
            self.buffer.add(drop_massive(chunk))
        return batch

    # ---- checkpoints ---------------------------------------------------------------------
    def save_checkpoint(self, folder: str | Path) -> Path:
        """Everything needed to continue exactly: weights, Adam state, dead counters, the
        shuffle buffer and the source cursor (safetensors + JSON; nothing pickled)."""
        folder = Path(folder)
        tensors: dict[str, Tensor] = {}
        meta: dict = {"step": self.step, "tokens": self.tokens, "cursor": self.cursor.to_dict(),
                      "config": self.config.to_dict(), "slots": []}
        for i, slot in enumerate(self.slots):
            for k, v in slot.coder.state_dict().items():
                tensors[f"s{i}.coder.{k}"] = v.detach().cpu().contiguous()
            names = dict(slot.coder.named_parameters())
            opt_meta = {}
            for pname, p in names.items():
                st = slot.opt.state.get(p, {})
                for key, val in st.items():
                    if isinstance(val, Tensor) and val.dim() > 0:
                        tensors[f"s{i}.opt.{pname}.{key}"] = val.detach().cpu().contiguous()
                    else:
                        opt_meta[f"{pname}.{key}"] = float(val)
            tensors[f"s{i}.since_fired"] = slot.since_fired.cpu().contiguous()
            meta["slots"].append({"name": slot.name, "spec": slot.coder.cfg.to_dict(), "opt": opt_meta,
                                  "history": slot.history.to_dict()})
        buf = self.buffer.state()
        for s, x in buf["rows"].items():
            tensors[f"buffer.{s}"] = x.contiguous()
        for s, x in buf["queue"].items():
            tensors[f"queue.{s}"] = x.contiguous()
        tensors["buffer.gen"] = buf["gen"]
        atomic_write(folder / "checkpoint.safetensors", lambda tmp: save_file(tensors, str(tmp)))
        atomic_write(folder / "checkpoint.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))
        return folder

    def load_checkpoint(self, folder: str | Path) -> None:
        folder = Path(folder)
        try:
            meta = json.loads((folder / "checkpoint.json").read_text("utf-8"))
            tensors = load_file(str(folder / "checkpoint.safetensors"))
        except (OSError, ValueError) as e:
            raise ArtifactError(f"Cannot read the checkpoint in {folder} ({e}).") from None
        mine = {k: v for k, v in self.config.to_dict().items() if k not in ("progress", "checkpoint_every")}
        theirs = {k: v for k, v in meta["config"].items() if k in mine}
        if mine != theirs:
            diff = [k for k in mine if mine[k] != theirs.get(k)]
            raise ArtifactError(f"The checkpoint in {folder} was made with other settings ({', '.join(diff)}); "
                                "resume with the same settings or start a new run.")
        if [s["name"] for s in meta["slots"]] != [s.name for s in self.slots]:
            raise ArtifactError(f"The checkpoint in {folder} trains other sites: {[s['name'] for s in meta['slots']]}.")
        for i, (slot, sm) in enumerate(zip(self.slots, meta["slots"], strict=True)):
            slot.coder.load_state_dict({k[len(f"s{i}.coder."):]: v for k, v in tensors.items()
                                        if k.startswith(f"s{i}.coder.")})
            for pname, p in slot.coder.named_parameters():
                st = {}
                for key in ("exp_avg", "exp_avg_sq"):
                    t = tensors.get(f"s{i}.opt.{pname}.{key}")
                    if t is not None:
                        st[key] = t.to(p.device)
                if st:
                    st["step"] = torch.tensor(sm["opt"][f"{pname}.step"])
                    slot.opt.state[p] = st
            slot.since_fired = tensors[f"s{i}.since_fired"].to(slot.since_fired.device)
            h = sm["history"]
            slot.history = History(h["rows"], h["tokens_per_s"], h["seconds"], h["steps"])
        self.buffer.load_state({"rows": {k[len("buffer."):]: v for k, v in tensors.items()
                                         if k.startswith("buffer.") and k != "buffer.gen"},
                                "queue": {k[len("queue."):]: v for k, v in tensors.items() if k.startswith("queue.")},
                                "gen": tensors["buffer.gen"]})
        self.step, self.tokens = meta["step"], meta["tokens"]
        self.cursor = Cursor(**meta["cursor"])


def make_slot(name: str, spec: CoderSpec, config: TrainConfig, sample: Chunk, site_in: str, site_out: str,
              device=None) -> Slot:
    coder = init_from_data(spec, config, sample[site_in], sample[site_out])
    if device is not None:
        coder = coder.to(device)
    params = list(coder.parameters())
    opt = torch.optim.Adam(params, lr=config.learning_rate(spec.d_sae), betas=(0.9, 0.999), fused=True)
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    return Slot(name, coder, site_in, site_out, opt, torch.zeros(spec.d_sae, dtype=torch.long, device=device))


def run_training(trainer: Trainer, chunks: Callable[[Cursor], Iterator[tuple[Cursor, Chunk]]], *,
                 checkpoint_dir: str | Path | None = None, max_steps: int | None = None) -> Trainer:
    """Train until `total_tokens` (or `max_steps` more steps, leaving a checkpoint to resume)."""
    c = trainer.config
    from tqdm.auto import tqdm

    bar = tqdm(total=c.n_steps * c.batch_size, initial=trainer.tokens, disable=not c.progress, unit="tok",
               unit_scale=True, desc="train")
    start_step, t0 = trainer.step, time.perf_counter()
    done_now = 0
    source = chunks(trainer.cursor)
    try:
        while trainer.step < c.n_steps and (max_steps is None or done_now < max_steps):
            trainer.train_step(trainer.next_batch(source))
            done_now += 1
            bar.update(c.batch_size)
            if c.progress and trainer.step % c.log_every == 1:
                row = trainer.slots[0].history.rows[-1]
                el = time.perf_counter() - t0
                bar.set_postfix(loss=f"{row['loss']:.3f}", fvu=f"{row['fvu']:.3f}", L0=f"{row['l0']:.1f}",
                                dead=f"{row['dead']:.1%}", tok_s=f"{done_now * c.batch_size / max(el, 1e-9):,.0f}")
            if checkpoint_dir is not None and c.checkpoint_every and trainer.step % c.checkpoint_every == 0:
                trainer.save_checkpoint(checkpoint_dir)
    finally:
        bar.close()
    el = time.perf_counter() - t0
    for slot in trainer.slots:
        h = slot.history
        h.seconds += el
        h.steps = trainer.step
        if trainer.step > start_step:
            h.tokens_per_s = (trainer.step - start_step) * c.batch_size / max(el, 1e-9)
    if checkpoint_dir is not None and (max_steps is not None or c.checkpoint_every):
        trainer.save_checkpoint(checkpoint_dir)
    return trainer


def train_on_activations(acts: Tensor | Chunk, config: TrainConfig, *, site: str = "x", site_out: str | None = None,
                         checkpoint_dir: str | Path | None = None, resume: bool = False,
                         max_steps: int | None = None) -> tuple[SparseCoder, History]:
    """Train one coder on in-memory activations: a [N, d] tensor (an SAE), or `{site: [N, d]}`
    with `site` / `site_out` naming input and target (a transcoder).

    Returns:
        (the coder, its training history: rows, tokens_per_s, seconds).
    """
    data = {site: acts} if isinstance(acts, Tensor) else dict(acts)
    site_out = site_out or site
    for s in (site, site_out):
        if s not in data:
            raise InputError(f"No activations named {s!r}; have {', '.join(data)}.")
    src = TensorSource(data)
    sample = {s: x[: min(x.shape[0], 16384)].float().cpu() for s, x in data.items()}  # init on the CPU, then moved
    spec = CoderSpec(arch=config.arch, kind=config.kind, d_in=data[site].shape[1], d_out=data[site_out].shape[1],
                     d_sae=config.width(data[site].shape[1]),
                     k=config.k if config.arch in ("topk", "batchtopk") else None, site=site, site_out=site_out)
    slot = make_slot(site, spec, config, sample, site, site_out, device=data[site].device)  # trains where the data is
    trainer = Trainer([slot], config)
    if resume and checkpoint_dir is not None and (Path(checkpoint_dir) / "checkpoint.json").is_file():
        trainer.load_checkpoint(checkpoint_dir)
    run_training(trainer, lambda cur: src.chunks(cur, seed=config.seed), checkpoint_dir=checkpoint_dir,
                 max_steps=max_steps)
    return slot.coder, slot.history
