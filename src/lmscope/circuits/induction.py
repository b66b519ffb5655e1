"""Induction heads (Olsson et al. 2022) on repeated random tokens: score every head, pick the
induction heads, check them causally, and find the previous-token heads that feed their keys.

    res = find_induction_heads(model, n=16, seq_len=20)
    res.heads                       # [(layer, head), ...] ranked by prefix matching
    res.table()                     # top heads with their three scores
    head_scores_dict(res)           # the [layer, head] grid for a heatmap

Rows are `datasets.circuit_tasks.induction`: BOS (when the tokenizer adds one) + s + s, s being
`seq_len` distinct random ordinary tokens. With b = number of BOS tokens and T = seq_len:

    prefix_matching[L, H]  mean attention from each second-copy position q (b+T .. b+2T-1) to
                           q - T + 1, the token after the earlier occurrence of q's token
    previous_token[L, H]   mean attention from q to q - 1 for q = b+1 .. end (query and key
                           both sequence tokens: the step from the first token to BOS, the
                           attention sink, is left out)
    copying[L, H]          the head's direct logit effect on the correct next token at the
                           second-copy positions b+T .. b+2T-2: its write (attn.head_out)
                           through the final norm with its scale frozen at the final residual,
                           then W_U (no bias, no softcap); the target's logit minus the mean
                           logit over the vocabulary, averaged over positions

The attention scores come from one forward per batch that captures every layer's pattern
(eager attention, switched on for that forward only); they are in [0, 1]. Losses are mean
negative log-probabilities (nats) of the tokens of each copy but its first (nothing predicts
a copy's first token), read under the model's default attention implementation.

The causal check mean- (or zero-) ablates the induction heads' attn.z at every sequence
position and compares the loss with k random other heads (seeded draws). The key paths
(K-composition) path-patch every earlier head into each induction head's key input, on rows
whose corrupt version replaces the first copy (`key_path_task`), and compare the strongest
senders with the previous-token scores; that step lives in `key_paths`, whose names this module
re-exports.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmscope.circuits.ablation import check_ablation
from lmscope.circuits.key_paths import (  # noqa: F401  (TOP_SENDERS, key_path_task: re-exported from before the split)
    TOP_SENDERS,
    Head,
    KeyPath,
    head_name,
    key_path_patching,
    key_path_task,
)
from lmscope.datasets.circuit_tasks import TaskSet, induction
from lmscope.engine import readout
from lmscope.engine.errors import InputError
from lmscope.engine.interventions import Edit, Set
from lmscope.engine.model import Model
from lmscope.engine.results import Result, Table
from lmscope.engine.runner import run

log = logging.getLogger(__name__)

ABLATIONS = ("mean", "zero")
SCORES = ("prefix_matching", "previous_token", "copying")
THRESHOLD = 0.3  # default rule: prefix matching above this ...
MAX_SHARE = 0.10  # ... for at most this share of all heads (and at least one head)
K_RULE = (f"top k by prefix matching; default k = the number of heads whose prefix-matching score exceeds "
          f"{THRESHOLD}, at least 1 and at most {MAX_SHARE:.0%} of all heads (rounded down, minimum 1)")


@dataclass
class InductionAblation:
    """Copy losses (mean NLL in nats) clean, with the induction heads ablated, and with k random
    heads ablated (`random_draws` seeded draws; mean and sample std over draws)."""

    method: str
    clean_second: float
    clean_first: float
    induction_second: float
    induction_first: float
    random_second: list[float]
    random_first: list[float]
    random_heads: list[list[Head]]

    @property
    def random_second_mean(self) -> float:
        return statistics.fmean(self.random_second)

    @property
    def random_second_std(self) -> float:
        return statistics.stdev(self.random_second) if len(self.random_second) > 1 else 0.0

    @property
    def random_first_mean(self) -> float:
        return statistics.fmean(self.random_first)

    @property
    def random_first_std(self) -> float:
        return statistics.stdev(self.random_first) if len(self.random_first) > 1 else 0.0

    def to_dict(self) -> dict:
        r = lambda x: round(float(x), 6)
        return {
            "method": self.method,
            "second_copy": {"clean": r(self.clean_second), "induction": r(self.induction_second),
                            "random_mean": r(self.random_second_mean), "random_std": r(self.random_second_std),
                            "random": [r(x) for x in self.random_second]},
            "first_copy": {"clean": r(self.clean_first), "induction": r(self.induction_first),
                           "random_mean": r(self.random_first_mean), "random_std": r(self.random_first_std),
                           "random": [r(x) for x in self.random_first]},
            "random_heads": [[head_name(h) for h in draw] for draw in self.random_heads],
        }


@dataclass
class InductionResult(Result):
    """Induction-head scores, the heads picked, their ablation and the paths into their keys.

    Attributes:
        model: Model name.
        seed, n, seq_len: The task (`circuit_tasks.induction(model, n, seq_len, seed)`).
        prefix_matching, previous_token, copying: Scores [layer, head] (float32, CPU).
        heads: The induction heads, best first.
        k_rule: How `heads` was chosen.
        ablation: The causal check.
        key_paths: One `KeyPath` per induction head patched (None when skipped).
        key_path_note: How the key paths were patched, or why they were skipped.
        timings: Seconds per step ("scores", "ablation", "key_paths").
    """

    model: str
    seed: int
    n: int
    seq_len: int
    prefix_matching: Tensor
    previous_token: Tensor
    copying: Tensor
    heads: list[Head]
    k_rule: str
    ablation: InductionAblation
    key_paths: list[KeyPath] | None = None
    key_path_note: str = ""
    timings: dict = field(default_factory=dict)

    def scores(self, which: str) -> Tensor:
        if which not in SCORES:
            raise InputError(f"Unknown score {which!r}; expected one of {', '.join(SCORES)}.")
        return getattr(self, which)

    def to_dict(self) -> dict:
        """JSON-ready: model, seed, n, seq_len, the three score matrices [layer][head], the
        induction heads ("a5.h1"), the ablation losses, the key-path senders and timings."""
        grid = lambda t: [[round(float(x), 6) for x in row] for row in t]
        return {
            "model": self.model, "seed": self.seed, "n": self.n, "seq_len": self.seq_len,
            "scores": {s: grid(self.scores(s)) for s in SCORES},
            "induction_heads": [head_name(h) for h in self.heads], "k_rule": self.k_rule,
            "ablation": self.ablation.to_dict(),
            "key_paths": None if self.key_paths is None else [kp.to_dict() for kp in self.key_paths],
            "key_path_note": self.key_path_note,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }

    def table(self, top: int = 15) -> Table:
        """The `top` heads by prefix matching with their three scores (induction heads marked)."""
        flat = self.prefix_matching.flatten()
        order = flat.argsort(descending=True)[:top].tolist()
        n_heads = self.prefix_matching.shape[1]
        rows = []
        for i in order:
            h = (i // n_heads, i % n_heads)
            rows.append([head_name(h), float(self.prefix_matching[h]), float(self.previous_token[h]),
                         float(self.copying[h]), "yes" if h in self.heads else ""])
        a = self.ablation
        notes = [f"heads: {self.k_rule}",
                 (f"second-copy loss: clean {a.clean_second:.3f}, induction heads {a.method}-ablated "
                  f"{a.induction_second:.3f}, {len(self.heads)} random heads {a.random_second_mean:.3f} "
                  f"± {a.random_second_std:.3f} ({len(a.random_second)} draws)"),
                 (f"first-copy loss: clean {a.clean_first:.3f}, induction heads {a.induction_first:.3f}, "
                  f"random {a.random_first_mean:.3f} ± {a.random_first_std:.3f}")]
        for kp in self.key_paths or []:
            senders = ", ".join(f"{head_name(h)} {e:+.2f} (prev {p:.2f})" for h, e, p in kp.senders)
            notes.append(f"{head_name(kp.head)} keys ({kp.receiver}) <- {senders}; K-composition: "
                         f"{'yes' if kp.k_composition else 'no'}")
        return Table(["head", "prefix matching", "previous token", "copying", "induction"], rows,
                     title=f"{self.model}: induction heads on {self.n} x 2 x {self.seq_len} repeated random tokens",
                     formats={"prefix matching": ".3f", "previous token": ".3f", "copying": "+.2f"}, notes=notes)


def head_scores_dict(result: InductionResult, which: str = "prefix_matching") -> dict:
    """One score grid for a heatmap: {"model", "title", "values" [n_layers][n_heads],
    "highlight": [[layer, head], ...] (the induction heads)}."""
    titles = {"prefix_matching": "prefix-matching score", "previous_token": "previous-token score",
              "copying": "copying score (direct logit of the next token - mean logit)"}
    vals = result.scores(which)
    return {"model": result.model, "title": f"{result.model}: {titles[which]}",
            "values": [[round(float(x), 6) for x in row] for row in vals],
            "highlight": [[int(L), int(h)] for L, h in result.heads]}


# ---- scores -------------------------------------------------------------------------------------

@torch.no_grad()
def head_scores(model: Model, task: TaskSet, *, batch_size: int = 16) -> dict[str, Tensor]:
    """The three scores [layer, head] (float32, CPU) on an induction task (see the module doc)."""
    T = task.meta["seq_len"]
    width = len(task.clean[0])
    b = width - 2 * T  # BOS tokens
    q2 = torch.arange(b + T, b + 2 * T)  # second-copy queries
    qp = torch.arange(b + 1, width)  # previous-token queries
    metric_pos = list(range(b + T, b + 2 * T - 1))  # second-copy positions with a next token
    last = model.n_layers - 1
    pats = [f"layers.{L}.attn.pattern" for L in range(model.n_layers)]
    outs = [f"layers.{L}.attn.head_out" for L in range(model.n_layers)]
    capture = {**{p: "all" for p in pats}, **{o: metric_pos for o in outs}, f"layers.{last}.resid_post": metric_pos}
    w_u = model.weights.W_U  # [d_model, d_vocab]
    w_mean = w_u.float().mean(1)  # [d_model]: the mean logit is linear in the normed write
    sums = {s: torch.zeros(model.n_layers, model.n_heads) for s in SCORES}
    count = 0
    for lo in range(0, len(task), batch_size):
        ids = torch.tensor(task.clean[lo:lo + batch_size])
        res = run(model, model.batch_of_ids(ids.tolist()), capture=capture, logits=None)
        targets = ids[:, [p + 1 for p in metric_pos]].to(model.device)  # [b, k]
        w_t = w_u.t()[targets].float()  # [b, k, d_model]
        resid = res.cache[f"layers.{last}.resid_post"]
        scale = readout.final_norm_scale(model, resid).float()[:, :, None]  # [b, k, 1, d_model]
        for L in range(model.n_layers):
            pat = res.cache[pats[L]].float()  # [b, head, q, k]
            sums["prefix_matching"][L] += pat[:, :, q2, q2 - T + 1].mean(-1).sum(0).cpu()
            sums["previous_token"][L] += pat[:, :, qp, qp - 1].mean(-1).sum(0).cpu()
            normed = readout.final_norm_centre(model, res.cache[outs[L]].float()) * scale  # [b, k, head, d_model]
            direct = torch.einsum("bkhd,bkd->bkh", normed, w_t) - normed @ w_mean
            sums["copying"][L] += direct.mean(1).sum(0).cpu()
        count += len(ids)
    return {s: v / count for s, v in sums.items()}


def pick_heads(prefix_matching: Tensor, k: int | None = None) -> list[Head]:
    """The induction heads: the top k by prefix matching (default rule: `K_RULE`)."""
    n_heads = prefix_matching.shape[1]
    flat = prefix_matching.flatten()
    if k is None:
        cap = max(1, int(MAX_SHARE * flat.numel()))
        k = min(cap, max(1, int((flat > THRESHOLD).sum())))
    order = flat.argsort(descending=True, stable=True)[:k].tolist()
    return [(i // n_heads, i % n_heads) for i in order]


# ---- ablation -----------------------------------------------------------------------------------

def _copy_positions(task: TaskSet) -> tuple[list[int], list[int], int]:
    """(first-copy positions, second-copy positions, b): each position predicts its next token,
    a token of the copy other than its first."""
    T = task.meta["seq_len"]
    b = len(task.clean[0]) - 2 * T
    return list(range(b, b + T - 1)), list(range(b + T, b + 2 * T - 1)), b


@torch.no_grad()
def _nll(model: Model, normed: Tensor, ids: Tensor, pos: list[int], chunk: int = 256) -> Tensor:
    """Summed NLL of the tokens after `pos` ([b, pos, d_model] final-norm output; the vocabulary
    is unembedded a few hundred positions at a time)."""
    x = normed[:, pos].flatten(0, 1)
    tgt = ids[:, [p + 1 for p in pos]].flatten().to(x.device)
    total = torch.zeros((), dtype=torch.float64)
    for lo in range(0, len(x), chunk):
        lp = readout.logits_from_normed(model, x[lo:lo + chunk]).float().log_softmax(-1)
        total += -lp.gather(1, tgt[lo:lo + chunk, None]).sum().double().cpu()
    return total


@torch.no_grad()
def _losses(model: Model, task: TaskSet, edits: Sequence[Edit] = (), *, batch_size: int = 16,
            z_from: int | None = None) -> tuple[float, float, Tensor | None]:
    """(second-copy loss, first-copy loss, mean attn.z [layer, head, d_head] over token positions
    `z_from` onwards, or None when `z_from` is None), from one forward per batch."""
    first, second, _ = _copy_positions(task)
    z_sites = [] if z_from is None else [f"layers.{L}.attn.z" for L in range(model.n_layers)]
    z_sum = torch.zeros(model.n_layers, model.n_heads, model.d_head)
    s1 = s2 = 0.0
    for lo in range(0, len(task), batch_size):
        ids = torch.tensor(task.clean[lo:lo + batch_size])
        res = run(model, model.batch_of_ids(ids.tolist()), capture=["final_norm", *z_sites], edits=edits, logits=None)
        normed = res.cache["final_norm"]
        s1 += float(_nll(model, normed, ids, first))
        s2 += float(_nll(model, normed, ids, second))
        if z_sites:
            z_sum += torch.stack([res.cache[s][:, z_from:].float().sum((0, 1)).cpu() for s in z_sites])
    z = None if z_from is None else z_sum / (len(task) * (len(task.clean[0]) - z_from))
    return s2 / (len(task) * len(second)), s1 / (len(task) * len(first)), z


def copy_losses(model: Model, task: TaskSet, edits: Sequence[Edit] = (), *, batch_size: int = 16) -> tuple[float, float]:
    """(second-copy loss, first-copy loss): mean NLL in nats of each copy's tokens but its first."""
    return _losses(model, task, edits, batch_size=batch_size)[:2]


def mean_z(model: Model, task: TaskSet, *, batch_size: int = 16) -> Tensor:
    """Mean attn.z [layer, head, d_head] (float32) over the sequence positions (BOS excluded)."""
    return _losses(model, task, batch_size=batch_size, z_from=_copy_positions(task)[2])[2]


def ablation_edits(heads: Sequence[Head], method: str, *, means: Tensor | None = None, start: int = 0) -> list[Edit]:
    """One `Set` per layer on `layers.L.attn.z[h, ...]` at token positions `start` onwards:
    0 (zero) or each head's mean z (mean, from `mean_z`)."""
    if method not in ABLATIONS:
        raise InputError(f"Unknown ablation {method!r}; expected one of {', '.join(ABLATIONS)}.")
    by_layer: dict[int, list[int]] = {}
    for L, h in heads:
        by_layer.setdefault(L, []).append(h)
    edits: list[Edit] = []
    for L, hs in sorted(by_layer.items()):
        hs = sorted(set(hs))
        value = 0.0 if method == "zero" else means[L, hs]
        edits.append(Set(site=f"layers.{L}.attn.z[{','.join(map(str, hs))}]", value=value, positions=slice(start, None)))
    return edits


def _ablation(model: Model, task: TaskSet, heads: list[Head], method: str, *, random_draws: int, seed: int,
              batch_size: int) -> InductionAblation:
    _, _, b = _copy_positions(task)
    clean2, clean1, means = _losses(model, task, batch_size=batch_size, z_from=b if method == "mean" else None)
    loss = lambda hs: copy_losses(model, task, ablation_edits(hs, method, means=means, start=b),
                                  batch_size=batch_size)
    ind2, ind1 = loss(heads)
    others = [(L, h) for L in range(model.n_layers) for h in range(model.n_heads) if (L, h) not in set(heads)]
    rng = random.Random(seed)
    draws = [sorted(rng.sample(others, len(heads))) for _ in range(random_draws)]
    rand = [loss(d) for d in draws]
    return InductionAblation(method, clean2, clean1, ind2, ind1, [r[0] for r in rand], [r[1] for r in rand], draws)


# ---- the technique ------------------------------------------------------------------------------

def _check_int(value, what: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{what} must be a whole number >= {low}, got {value!r}.")


def find_induction_heads(model: Model, *, n: int = 16, seq_len: int = 20, seed: int = 0, k: int | None = None,
                         random_draws: int = 10, batch_size: int = 16, ablation: str = "mean",
                         key_path_heads: int | None = 1, key_path_ablation: str = "resample") -> InductionResult:
    """Score every head on repeated random tokens, pick the induction heads, ablate them against
    random heads, and patch the paths into their keys.

    Args:
        model: The wrapped model.
        n: Rows of `circuit_tasks.induction` (>= 1).
        seq_len: Length of each copy (>= 2).
        seed: Seed of the rows and of the random-head draws.
        k: Number of induction heads; None applies the default rule: the heads whose
            prefix-matching score exceeds 0.3, at least 1 and at most 10% of all heads
            (rounded down, minimum 1), best first.
        random_draws: Draws of k random heads (not induction heads) for the control (>= 1).
        batch_size: Rows per forward.
        ablation: "mean" (each head's mean z over the clean rows' sequence positions) or
            "zero"; applied at every sequence position (BOS, the attention sink, untouched).
        key_path_heads: Path-patch the keys of this many induction heads (the best ones in a
            layer > 0; see `key_path_patching`); None: all of them; 0: skip this step. One
            head by default: each costs a path-patching run over every earlier head.
        key_path_ablation: The `ablation` passed to `path_patch`.

    Returns:
        An `InductionResult`.
    """
    _check_int(n, "n", 1)
    _check_int(seq_len, "seq_len", 2)
    _check_int(random_draws, "random_draws", 1)
    _check_int(batch_size, "batch_size", 1)
    if ablation not in ABLATIONS:
        raise InputError(f"Unknown ablation {ablation!r}; expected one of {', '.join(ABLATIONS)}.")
    if key_path_heads is not None:
        _check_int(key_path_heads, "key_path_heads", 0)
    check_ablation(key_path_ablation)
    total = model.n_layers * model.n_heads
    if k is not None:
        _check_int(k, "k", 1)
        if 2 * k > total:
            raise InputError(f"k={k} leaves too few other heads for the random control: {model.name} has {total} "
                             f"heads, so k can be at most {total // 2}.")
    task = induction(model, n=n, seq_len=seq_len, seed=seed)
    timings = {}
    t0 = time.perf_counter()
    scores = head_scores(model, task, batch_size=batch_size)
    heads = pick_heads(scores["prefix_matching"], k)
    rule = K_RULE if k is None else f"top k={k} by prefix matching (given)"
    timings["scores"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    abl = _ablation(model, task, heads, ablation, random_draws=random_draws, seed=seed, batch_size=batch_size)
    timings["ablation"] = time.perf_counter() - t0
    paths, note = None, "not requested (key_path_heads=0)"
    if key_path_heads != 0:
        t0 = time.perf_counter()
        chosen = [h for h in heads if h[0] > 0][:key_path_heads]
        paths, note = key_path_patching(model, task, chosen, scores["previous_token"], ablation=key_path_ablation)
        timings["key_paths"] = time.perf_counter() - t0
    log.info("induction heads of %s: %s", model.name, ", ".join(head_name(h) for h in heads))
    return InductionResult(model.name, seed, n, seq_len, scores["prefix_matching"], scores["previous_token"],
                           scores["copying"], heads, rule, abl, paths, note, timings)
