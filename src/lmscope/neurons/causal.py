"""What one neuron does, part 2: causal tests. Ablate neurons (zero, mean, resample), rank
them by attribution, sweep the number ablated against a random control, and set a neuron to a
range of values (dose-response).

    eff = ablate(model, [(5, 123)], prompts, target=" these", baseline=" this", method="mean")
    scores = attribute(model, prompts, target=" these", baseline=" this")   # [layer, d_mlp]
    curve = ablation_curve(model, top_neurons(scores, 100), prompts, target=" these", baseline=" this")
    dose = dose_response(model, [(5, 123)], prompts, target=" these", values=[-4, 0, 4, 8])

Metrics are read at the last prompt token (the next-token prediction): the target token's
probability, the logit difference target - baseline ("LD"), the top-1 token; "judgement flip"
is a change in the sign of LD (the categorical choice between the two tokens, as in BLiMP),
"top-1 flip" a change of the argmax over the whole vocabulary. The side effect is the KL
divergence KL(clean || ablated) of the next-token distribution on neutral prompts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from lmscope.datasets.corpus import _prefix_ids, read_texts, token_windows
from lmscope.engine.errors import InputError
from lmscope.engine.interventions import Edit, MeanAblate, Resample, Set, Zero
from lmscope.engine.metrics import kl_from, next_token_logprobs
from lmscope.engine.model import Model
from lmscope.engine.progress import steps
from lmscope.engine.results import Result, Table

log = logging.getLogger(__name__)

Neuron = tuple[int, int]  # (layer, neuron)
METHODS = ("zero", "mean", "resample")


def group_by_layer(model: Model, neurons: Sequence[Neuron]) -> dict[int, list[int]]:
    """{layer: sorted unique neurons}, validated against the model."""
    if not neurons:
        raise InputError("No neuron given; pass [(layer, neuron), ...].")
    out: dict[int, set[int]] = {}
    for layer, n in neurons:
        s = model.site(f"layers.{layer}.mlp.neurons[{n}]")
        out.setdefault(s.layer, set()).add(s.units[0])
    return {L: sorted(v) for L, v in sorted(out.items())}


def _site(layer: int, units: Sequence[int]) -> str:
    return f"layers.{layer}.mlp.neurons[{','.join(map(str, units))}]"


@dataclass
class Reference:
    """Neuron activations on a reference corpus: [tokens, n_layers, d_mlp] (CPU float32),
    used for mean ablation (the mean over tokens) and resampling (random token rows)."""

    acts: Tensor

    @property
    def mean(self) -> Tensor:  # [n_layers, d_mlp]
        return self.acts.mean(0)


def reference_activations(model: Model, texts: Sequence[str] | None = None, *, max_tokens: int = 2048,
                          window: int = 64, batch_size: int = 16) -> Reference:
    """Activations of every neuron over reference texts (None: the shipped corpus), text
    tokens only (BOS excluded), at most `max_tokens` of them."""
    windows = token_windows(model, read_texts(texts), window=window, max_tokens=max_tokens)
    sites = [f"layers.{L}.mlp.neurons" for L in range(model.n_layers)]
    rows = []
    for _, batch, valid in windows.batches(batch_size, model.device):
        res = model.run(batch, capture=sites, logits=None)
        rows.append(torch.stack([res.cache[s][valid].float() for s in sites], 1).cpu())  # [m, L, d]
    return Reference(torch.cat(rows))


def ablation_edits(model: Model, neurons: Sequence[Neuron], method: str = "zero", *, reference: Reference | None = None,
                   positions="all", seed: int = 0) -> list[Edit]:
    """One edit per layer on `layers.L.mlp.neurons[...]`: `Zero`, `MeanAblate` (reference
    mean) or `Resample` (rows of reference activations; seeded, independently per layer)."""
    if method not in METHODS:
        raise InputError(f"Unknown ablation method {method!r}; expected one of {', '.join(METHODS)}.")
    if method != "zero" and reference is None:
        raise InputError(f"{method} ablation needs reference activations (reference_activations(model, texts)).")
    edits: list[Edit] = []
    for L, units in group_by_layer(model, neurons).items():
        site = _site(L, units)
        if method == "zero":
            edits.append(Zero(site=site, positions=positions))
        elif method == "mean":
            edits.append(MeanAblate(site=site, mean=reference.mean[L, units], positions=positions))
        else:
            edits.append(Resample(site=site, pool=reference.acts[:, L, units], seed=seed + L, positions=positions))
    return edits


# ---- metrics at the last token ---------------------------------------------------------------

def _token(model: Model, token: str | int | None) -> int | None:
    return None if token is None else (token if isinstance(token, int) else model.token_id(token))


def last_token_metrics(model: Model, prompts: Sequence[str], *, target: int, baseline: int | None,
                       edits: Sequence[Edit] = (), batch_size: int = 16) -> dict[str, Tensor]:
    """Per prompt [n]: p_target, logit_target, p_baseline / ld (None without a baseline), top1."""
    out: dict[str, list] = {"p_target": [], "logit_target": [], "p_baseline": [], "ld": [], "top1": []}
    for lo in range(0, len(prompts), batch_size):
        logits = model.run(list(prompts[lo:lo + batch_size]), edits=edits).logits.float()  # [b, vocab]
        lp = logits.log_softmax(-1)
        out["p_target"].append(lp[:, target].exp().cpu())
        out["logit_target"].append(logits[:, target].cpu())
        out["top1"].append(logits.argmax(-1).cpu())
        if baseline is not None:
            out["p_baseline"].append(lp[:, baseline].exp().cpu())
            out["ld"].append((logits[:, target] - logits[:, baseline]).cpu())
    return {k: (torch.cat(v) if v else None) for k, v in out.items()}


@dataclass
class AblationEffect(Result):
    """Effect of one ablation, averaged over prompts (per-prompt values in `per_prompt`)."""

    neurons: list[Neuron]
    method: str
    n_prompts: int
    p_target_before: float
    p_target_after: float
    rel_change_p_target: float  # mean of (after - before) / before
    top1_flip_rate: float
    ld_before: float | None = None
    ld_after: float | None = None
    delta_ld: float | None = None
    judgement_flip_rate: float | None = None  # sign of LD changed
    acc_before: float | None = None  # share of prompts with LD > 0 (target preferred)
    acc_after: float | None = None
    kl_neutral: float | None = None
    per_prompt: dict = field(default_factory=dict)

    def to_dict(self, per_prompt: bool = False) -> dict:
        d = asdict(self)
        d["neurons"] = [list(n) for n in self.neurons]
        if not per_prompt:
            d.pop("per_prompt")
        return d

    def table(self) -> Table:
        """Before / after means (what `lmscope neuron ablate` prints; LD = logit(target) - logit(baseline))."""
        rows = [["mean p(target)", self.p_target_before, self.p_target_after]]
        if self.ld_before is not None:
            rows += [["mean logit difference (LD)", self.ld_before, self.ld_after],
                     ["share preferring the target", self.acc_before, self.acc_after],
                     ["judgement flips (LD sign)", None, self.judgement_flip_rate]]
        rows.append(["top-1 token flips", None, self.top1_flip_rate])
        if self.kl_neutral is not None:
            rows.append(["KL on neutral prompts", None, self.kl_neutral])
        return Table(["metric", "before", "after"], rows,
                     title=f"{self.method} ablation of {len(self.neurons)} neurons on {self.n_prompts} prompts",
                     formats={"before": ".4g", "after": ".4g"})


def effect_of(neurons: Sequence[Neuron], method: str, before: dict, after: dict, kl: Tensor | None) -> AblationEffect:
    """Summarise per-prompt metrics before/after an edit."""
    pb, pa = before["p_target"], after["p_target"]
    eff = AblationEffect(
        neurons=[tuple(n) for n in neurons], method=method, n_prompts=len(pb),
        p_target_before=float(pb.mean()), p_target_after=float(pa.mean()),
        rel_change_p_target=float(((pa - pb) / pb.clamp(min=1e-12)).mean()),
        top1_flip_rate=float((before["top1"] != after["top1"]).float().mean()),
        kl_neutral=None if kl is None else float(kl.mean()),
        per_prompt={"p_target_before": pb.tolist(), "p_target_after": pa.tolist()},
    )
    if before["ld"] is not None:
        lb, la = before["ld"], after["ld"]
        eff.ld_before, eff.ld_after, eff.delta_ld = float(lb.mean()), float(la.mean()), float((la - lb).mean())
        eff.judgement_flip_rate = float(((lb > 0) != (la > 0)).float().mean())
        eff.acc_before, eff.acc_after = float((lb > 0).float().mean()), float((la > 0).float().mean())
        eff.per_prompt.update(ld_before=lb.tolist(), ld_after=la.tolist())
    return eff


def ablate(model: Model, neurons: Sequence[Neuron], prompts: Sequence[str], *, target: str | int,
           baseline: str | int | None = None, method: str = "zero", reference: Reference | Sequence[str] | None = None,
           neutral: Sequence[str] | None = None, positions="all", seed: int = 0, batch_size: int = 16) -> AblationEffect:
    """Ablate neurons at every position (or `positions`) and measure the change at the last token.

    Args:
        model: The wrapped model.
        neurons: [(layer, neuron)].
        prompts: Prompts whose next token is measured.
        target: Token (text like " these", or id) whose probability is measured.
        baseline: Contrast token (" this") for the logit difference and judgement flips.
        method: "zero", "mean" (mean over the reference) or "resample" (reference rows).
        reference: `Reference` activations or texts (None: the shipped corpus) for mean/resample.
        neutral: Prompts for the side-effect KL (None: no KL).
        positions: Positions where neurons are ablated.
        seed: Seed of resampling.
        batch_size: Prompts per forward.
    """
    tid, bid = _token(model, target), _token(model, baseline)
    ref = _as_reference(model, reference, method)
    edits = ablation_edits(model, neurons, method, reference=ref, positions=positions, seed=seed)
    before = last_token_metrics(model, prompts, target=tid, baseline=bid, batch_size=batch_size)
    after = last_token_metrics(model, prompts, target=tid, baseline=bid, edits=edits, batch_size=batch_size)
    kl = None
    if neutral:
        clean = next_token_logprobs(model, neutral, batch_size=batch_size)
        kl = kl_from(model, neutral, clean, edits=edits, batch_size=batch_size)
    return effect_of(neurons, method, before, after, kl)


def _as_reference(model: Model, reference, method: str) -> Reference | None:
    if method == "zero" or isinstance(reference, Reference):
        return reference if isinstance(reference, Reference) else None
    return reference_activations(model, reference)


# ---- attribution -----------------------------------------------------------------------------

def attribute(model: Model, prompts: Sequence[str], *, target: str | int, baseline: str | int | None = None,
              layers: Sequence[int] | None = None, reference: Reference | None = None,
              batch_size: int = 8) -> Tensor:
    """Attribution of every neuron to the metric (LD = logit target - baseline, or log p(target)
    without a baseline): sum over positions of (activation - reference mean) x d metric / d
    activation, averaged over prompts -> [len(layers), d_mlp]. It is the first-order estimate
    of how much the metric *falls* when the neuron is zero- (no reference) or mean-ablated at
    every position; rank by the largest values to find neurons that support the target.
    """
    tid, bid = _token(model, target), _token(model, baseline)
    layers = list(range(model.n_layers)) if layers is None else [model.site(f"layers.{L}.mlp.neurons").layer
                                                                 for L in layers]
    sites = [f"layers.{L}.mlp.neurons" for L in layers]
    total = torch.zeros(len(layers), model.d_mlp)
    for lo in range(0, len(prompts), batch_size):
        res = model.run(list(prompts[lo:lo + batch_size]), capture=sites, grad=True)
        logits = res.logits.float()
        metric = logits[:, tid] - logits[:, bid] if bid is not None else logits.log_softmax(-1)[:, tid]
        acts = [res.cache[s] for s in sites]  # each [b, t, d_mlp]
        if not all(a.requires_grad for a in acts):
            raise InputError("Attribution needs gradients through the MLP: the model's parameters are frozen "
                             "(requires_grad=False) before these layers.")
        grads = torch.autograd.grad(metric.sum(), acts)
        mask = res.batch.attention_mask[..., None].float()
        for i, (a, g) in enumerate(zip(acts, grads, strict=True)):
            delta = a.detach().float()
            if reference is not None:
                delta = delta - reference.mean[layers[i]].to(delta.device)
            total[i] += (delta * g.float() * mask).sum((0, 1)).cpu()
    return total / len(prompts)


def top_neurons(scores: Tensor, n: int, layers: Sequence[int] | None = None, *, largest: bool = True) -> list[Neuron]:
    """The n (layer, neuron) with the highest (or lowest) score in a [layer, d_mlp] table."""
    layers = list(range(scores.shape[0])) if layers is None else list(layers)
    idx = scores.flatten().topk(min(n, scores.numel()), largest=largest).indices.tolist()
    return [(layers[i // scores.shape[1]], i % scores.shape[1]) for i in idx]


# ---- ablation curve with a random control ------------------------------------------------------

@dataclass
class CurveResult(Result):
    """Effects of ablating the top-k ranked neurons, k = ks, next to k random neurons."""

    ks: list[int]
    top: list[AblationEffect]
    random: list[dict]  # per k: mean and std over repeats of each metric
    method: str
    n_random: int

    def to_dict(self) -> dict:
        return {"ks": self.ks, "method": self.method, "n_random": self.n_random,
                "top": [e.to_dict() for e in self.top], "random": self.random}

    def table(self) -> Table:
        """Per k: the top-k ablation next to the mean of the random draws (`lmscope neuron ablate --curve`)."""
        keys = {"delta_ld": ("dLD", "+.3f"), "judgement_flip_rate": ("judgement flips", ".2f"),
                "top1_flip_rate": ("top-1 flips", ".2f"), "kl_neutral": ("KL", ".3g")}
        cols, formats = ["k"], {}
        for name, spec in keys.values():
            cols += [f"{name} top", f"{name} random"]
            formats.update({f"{name} top": spec, f"{name} random": spec})
        rows = []
        for k, e, r in zip(self.ks, self.top, self.random, strict=True):
            row = [k]
            for key in keys:
                row += [getattr(e, key), r[key]["mean"] if key in r else None]
            rows.append(row)
        return Table(cols, rows, title=f"{self.method} ablation of the top-k neurons vs {self.n_random} random draws",
                     formats=formats, notes=["random: the mean over the draws (to_dict() has the std)."])


_CURVE_KEYS = ("delta_ld", "judgement_flip_rate", "top1_flip_rate", "rel_change_p_target", "acc_after", "kl_neutral")


def ablation_curve(model: Model, ranking: Sequence[Neuron], prompts: Sequence[str], *, target: str | int,
                   baseline: str | int | None = None, ks: Sequence[int] = (1, 2, 5, 10, 20, 50, 100),
                   method: str = "zero", reference: Reference | Sequence[str] | None = None,
                   neutral: Sequence[str] | None = None, n_random: int = 3, pool_layers: Sequence[int] | None = None,
                   seed: int = 0, batch_size: int = 16, progress: bool = False) -> CurveResult:
    """Ablate the top-k of `ranking` for each k, and k random neurons (drawn uniformly from
    `pool_layers`, default every layer) `n_random` times as a control, measuring each as
    `ablate` does. Resampling draws a fresh seed per run."""
    ks = sorted({k for k in ks if 1 <= k <= len(ranking)})
    if not ks:
        raise InputError(f"No k in range 1..{len(ranking)} (the ranking's length).")
    tid, bid = _token(model, target), _token(model, baseline)
    ref = _as_reference(model, reference, method)
    pool = list(range(model.n_layers)) if pool_layers is None else list(pool_layers)
    before = last_token_metrics(model, prompts, target=tid, baseline=bid, batch_size=batch_size)
    clean = next_token_logprobs(model, neutral, batch_size=batch_size) if neutral else None
    gen = torch.Generator().manual_seed(seed)

    def measure(neurons: list[Neuron], s: int) -> AblationEffect:
        edits = ablation_edits(model, neurons, method, reference=ref, seed=s)
        after = last_token_metrics(model, prompts, target=tid, baseline=bid, edits=edits, batch_size=batch_size)
        kl = kl_from(model, neutral, clean, edits=edits, batch_size=batch_size) if neutral else None
        return effect_of(neurons, method, before, after, kl)

    runs = [(k, r) for k in ks for r in range(-1, n_random)]
    top, rnd_runs = [], {k: [] for k in ks}
    for k, r in steps(runs, desc="ablation curve", unit="run", show=progress):
        if r < 0:
            top.append(measure(list(ranking[:k]), seed))
            continue
        picks = torch.randperm(len(pool) * model.d_mlp, generator=gen)[:k].tolist()
        rnd_runs[k].append(measure([(pool[i // model.d_mlp], i % model.d_mlp) for i in picks], seed + 1 + r))
    random = []
    for k in ks:
        row = {"k": k}
        for key in _CURVE_KEYS:
            vals = [getattr(e, key) for e in rnd_runs[k] if getattr(e, key) is not None]
            if vals:
                t = torch.tensor(vals)
                row[key] = {"mean": float(t.mean()), "std": float(t.std()) if len(vals) > 1 else 0.0}
        random.append(row)
    return CurveResult(ks, top, random, method, n_random)


# ---- dose-response ----------------------------------------------------------------------------

@dataclass
class DoseResponse(Result):
    """Target probability (and LD) with the neurons set to each value, next to the clean run
    and the neurons' natural activation range on the same prompts and positions."""

    neurons: list[Neuron]
    values: list[float]
    p_target: list[float]
    p_baseline: list[float] | None
    ld: list[float] | None
    clean_p_target: float
    clean_p_baseline: float | None
    clean_ld: float | None
    natural: dict  # min, q01, q50, q99, max, mean of the activations where the edit applies
    positions: str
    target: str
    baseline: str | None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["neurons"] = [list(n) for n in self.neurons]
        return d

    def table(self) -> Table:
        """p(target) (and p(baseline), LD) per value set (`lmscope neuron dose`)."""
        pt = f"p({self.target!r})"
        cols, formats = ["value", pt], {pt: ".4f"}
        if self.p_baseline is not None:
            pb = f"p({self.baseline!r})"
            cols += [pb, "LD"]
            formats.update({pb: ".4f", "LD": "+.3f"})
        rows = [[v, self.p_target[i], *([self.p_baseline[i], self.ld[i]] if self.p_baseline is not None else [])]
                for i, v in enumerate(self.values)]
        nat = self.natural
        return Table(cols, rows, formats={"value": "g", **formats},
                     title=f"dose-response; clean p={self.clean_p_target:.4f}; natural range q01 {nat['q01']:.3g} "
                           f".. q99 {nat['q99']:.3g} (median {nat['q50']:.3g})")


def natural_range(model: Model, neurons: Sequence[Neuron], prompts: Sequence[str], *, positions="all",
                  batch_size: int = 16) -> dict:
    """Quantiles of the neurons' activations on the prompts at the edited positions ("all":
    every text token, BOS excluded; "last": the last token)."""
    groups = group_by_layer(model, neurons)
    sites = {L: _site(L, u) for L, u in groups.items()}
    n_prefix = len(_prefix_ids(model.tokenizer))
    vals = []
    for lo in range(0, len(prompts), batch_size):
        pos = "last" if positions == "last" else "all"
        res = model.run(list(prompts[lo:lo + batch_size]), capture=list(sites.values()), positions=pos, logits=None)
        m = res.batch.attention_mask.bool()
        valid = m & (m.long().cumsum(1) > n_prefix)
        for s in sites.values():
            x = res.cache[s].float()
            vals.append((x if pos == "last" else x[valid]).flatten().cpu())
    v = torch.cat(vals)
    q = torch.quantile(v, torch.tensor([0.01, 0.5, 0.99]))
    return {"min": float(v.min()), "q01": float(q[0]), "q50": float(q[1]), "q99": float(q[2]),
            "max": float(v.max()), "mean": float(v.mean()), "n": len(v)}


def dose_response(model: Model, neurons: Sequence[Neuron], prompts: Sequence[str], *, target: str | int,
                  values: Sequence[float], baseline: str | int | None = None, positions="all",
                  batch_size: int = 16, progress: bool = False) -> DoseResponse:
    """Set the neurons to each value (`Set` edit at `positions`) and measure the last token."""
    if not values:
        raise InputError("No values for the dose-response; pass e.g. values=[-4, 0, 4, 8].")
    if any(not math.isfinite(v) for v in values):
        raise InputError("Dose values must be finite numbers.")
    tid, bid = _token(model, target), _token(model, baseline)
    groups = group_by_layer(model, neurons)
    clean = last_token_metrics(model, prompts, target=tid, baseline=bid, batch_size=batch_size)
    rows = []
    for v in steps(list(values), desc="dose", unit="value", show=progress):
        edits = [Set(site=_site(L, u), value=float(v), positions=positions) for L, u in groups.items()]
        rows.append(last_token_metrics(model, prompts, target=tid, baseline=bid, edits=edits, batch_size=batch_size))
    dec = model.tokenizer.decode
    return DoseResponse(
        neurons=[tuple(n) for n in neurons], values=[float(v) for v in values],
        p_target=[float(r["p_target"].mean()) for r in rows],
        p_baseline=None if bid is None else [float(r["p_baseline"].mean()) for r in rows],
        ld=None if bid is None else [float(r["ld"].mean()) for r in rows],
        clean_p_target=float(clean["p_target"].mean()),
        clean_p_baseline=None if bid is None else float(clean["p_baseline"].mean()),
        clean_ld=None if bid is None else float(clean["ld"].mean()),
        natural=natural_range(model, neurons, prompts, positions=positions, batch_size=batch_size),
        positions=str(positions), target=dec([tid]), baseline=None if bid is None else dec([bid]),
    )
