"""Fit and score a relation end to end: known facts, LRE sweeps, faithfulness, causality, baselines.

The protocol (Hernandez et al. 2023, with a held-out choice of the settings):

1. A seeded sample of the relation's facts; `n_train` of those the model answers correctly become
   the training facts and the few-shot demonstrations of every prompt.
2. The remaining facts the model answers correctly with that prompt (first token a non-trivial
   prefix of the object) are split into a dev half, which picks the settings, and a test half,
   which reports them.
3. One Jacobian pass per training fact gives W and b at every swept layer.
4. Faithfulness: argmax unembed(beta W s + b) is a non-trivial prefix of the object. The layer
   and beta with the best dev faithfulness are recommended.
5. Causality: s + W_r^+ (o' - o) at the subject's last token, where o and o' are the last-token
   final residuals of this subject's prompt and another subject's prompt; success when the model
   then answers the other subject's object. The rank with the best dev causality is recommended;
   a random direction of the same norm is the control.
6. Baselines at the recommended layer: the logit lens of s, the translation s + mean(o - s)
   (W = I), and a ridge regression o ~ A s + c fitted on the same training facts.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from lmscope.datasets.relations import Relation
from lmscope.engine.errors import InputError
from lmscope.engine.model import Model
from lmscope.engine.results import Result, Table
from lmscope.relations.facts import read_facts
from lmscope.relations.lre import LRE, lre_from_samples, sample_jacobians
from lmscope.relations.scoring import (
    baselines,
    beta_sweep,
    causality_many,
    edit_pairs,
    faithfulness,
)


@dataclass(frozen=True, kw_only=True)
class RelationConfig:
    """How a relation is fitted and scored.

    Attributes:
        n_train: Training facts (also the few-shot demonstrations); the paper uses 5 to 8.
        layers: Layers whose subject state is swept; default every layer up to 3/4 depth.
        betas: Scales of W s tried for faithfulness.
        ranks: Ranks of the pseudo-inverse tried for causality.
        rank: Rank used when causality is swept over layers.
        max_facts: At most this many facts (a seeded sample) are examined.
        max_edits: At most this many causality edits per setting.
        dev_fraction: Share of the known held-out facts that picks the settings.
        ridge: Regularisation of the regression baseline, relative to the mean squared norm of s.
        seed: Seed of the fact sample, the splits and the random control.
        batch_size: Prompts per forward.
    """

    n_train: int = 5
    layers: tuple[int, ...] | None = None
    betas: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
    ranks: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    rank: int = 64
    max_facts: int = 100
    max_edits: int = 24
    dev_fraction: float = 0.5
    ridge: float = 0.1
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.n_train < 1:
            raise InputError(f"n_train must be at least 1, got {self.n_train}.")
        if not self.betas or any(not (math.isfinite(b) and 0 < b <= 100) for b in self.betas):
            raise InputError(f"betas must be numbers in (0, 100], got {self.betas} (the paper's are 0..5).")
        if not self.ranks or any(r < 1 for r in self.ranks) or self.rank < 1:
            raise InputError(f"ranks must be positive integers, got {self.ranks} (rank {self.rank}).")
        if self.max_facts < self.n_train + 2:
            raise InputError(f"max_facts ({self.max_facts}) must exceed n_train ({self.n_train}) by at least 2.")
        if not 0 < self.dev_fraction < 1:
            raise InputError(f"dev_fraction must be between 0 and 1, got {self.dev_fraction}.")
        if self.max_edits < 1 or self.batch_size < 1:
            raise InputError(f"max_edits and batch_size must be at least 1, got {self.max_edits} and {self.batch_size}.")
        if not (math.isfinite(self.ridge) and self.ridge >= 0):
            raise InputError(f"ridge must be a finite number >= 0, got {self.ridge}.")

    def sweep_layers(self, model: Model) -> list[int]:
        if self.layers is None:
            return list(range(max(1, math.ceil(0.75 * model.n_layers))))
        out = sorted({x + model.n_layers if x < 0 else x for x in self.layers})
        bad = [x for x in out if not 0 <= x < model.n_layers - 1]
        if bad:
            raise InputError(f"Layer {bad[0]} cannot be swept on {model.name}: use 0..{model.n_layers - 2} (the last "
                             "block's output is what the LRE predicts).")
        return out


@dataclass
class RelationReport(Result):
    """A relation fitted and scored on one model (see the module docstring for the protocol)."""

    relation: str
    type: str
    model: str
    template: str
    n_facts: int
    n_known: int
    train: list[tuple[str, str]]
    n_dev: int
    n_test: int
    n_objects: int  # distinct objects among the test facts (1: any constant answer is "faithful")
    layer: int
    beta: float
    rank: int
    faithfulness: float
    causality: float
    causality_control: float
    faithfulness_beta1: float
    baselines: dict[str, float]
    layers: list[int]
    betas: list[float]
    ranks: list[int]
    faithfulness_grid: list[list[float]]  # [layer][beta], dev
    causality_by_layer: list[float]  # dev, at config.rank
    causality_by_rank: list[float]  # dev, at the recommended layer
    sweep_rank: int
    seconds_jacobians: float
    seconds_total: float
    seconds: dict[str, float]  # per phase: facts, jacobians, faithfulness, causality, baselines
    selected_on_test: bool = False
    lre: LRE | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "lre"}
        d["train"] = [list(p) for p in self.train]
        return d

    def table(self) -> Table:
        rows = [["LRE (recommended)", self.faithfulness, self.causality],
                ["LRE, beta = 1", self.faithfulness_beta1, None],
                ["random edit (control)", None, self.causality_control]]
        rows += [[f"baseline: {k.replace('_', ' ')}", v, None] for k, v in self.baselines.items()]
        notes = [(f"{self.n_known} of {self.n_facts} facts known; {len(self.train)} train, {self.n_dev} dev, "
                  f"{self.n_test} test"),
                 f"{self.n_objects} distinct objects among the test facts",
                 f"recommended: layer {self.layer}, beta {self.beta:g}, rank {self.rank}"
                 + (" (too few facts for a dev split: chosen on the test facts)" if self.selected_on_test else ""),
                 f"Jacobians {self.seconds_jacobians:.1f} s, all {self.seconds_total:.1f} s"]
        return Table(["method", "faithfulness", "causality"], rows,
                     title=f"{self.relation} ({self.type}) on {self.model}",
                     formats={"faithfulness": ".2f", "causality": ".2f"}, notes=notes)

    def tables(self) -> list[Table]:
        caus = f"causality (rank {self.sweep_rank})"
        sweep = Table(["layer", *[f"beta {b:g}" for b in self.betas], caus],
                      [[x, *row, c] for x, row, c in zip(self.layers, self.faithfulness_grid,
                                                         self.causality_by_layer, strict=True)],
                      title="dev faithfulness by layer and beta; dev causality by layer",
                      formats={f"beta {b:g}": ".2f" for b in self.betas} | {caus: ".2f"})
        ranks = Table(["rank", "causality"], [[r, c] for r, c in zip(self.ranks, self.causality_by_rank, strict=True)],
                      title=f"dev causality by rank at layer {self.layer}", formats={"causality": ".2f"})
        return [self.table(), sweep, ranks]


def pick_train(known: Sequence[tuple[str, str]], n: int) -> list[tuple[str, str]]:
    """The first `n` known facts, preferring distinct objects: demonstrations that all share one
    object (five names, all "woman") teach the prompt a constant answer, and the held-out facts
    with other objects then fail."""
    chosen: list[tuple[str, str]] = []
    for p in known:
        if len(chosen) < n and all(p[1] != c[1] for c in chosen):
            chosen.append(p)
    for p in known:
        if len(chosen) >= n:
            break
        if p not in chosen:
            chosen.append(p)
    return chosen


def _split(n: int, frac: float, seed: int) -> tuple[list[int], list[int], bool]:
    idx = list(range(n))
    random.Random(seed + 1).shuffle(idx)
    if n < 6:
        return idx, idx, True
    k = max(2, round(frac * n))
    return idx[:k], idx[k:], False


def study(model: Model, rel: Relation, config: RelationConfig | None = None) -> RelationReport:
    """Fit the relation's LRE with sweeps of layer, beta and rank, and score it (module docstring)."""
    cfg = config or RelationConfig()
    t0 = time.perf_counter()
    layers = cfg.sweep_layers(model)
    facts = list(rel.pairs)
    random.Random(cfg.seed).shuffle(facts)
    facts = facts[:cfg.max_facts]
    clock = {"facts": 0.0, "jacobians": 0.0, "faithfulness": 0.0, "causality": 0.0, "baselines": 0.0}
    mark = [time.perf_counter()]

    def lap(phase: str) -> None:
        now = time.perf_counter()
        clock[phase] += now - mark[0]
        mark[0] = now

    first = read_facts(model, rel, facts, pick_train(facts, cfg.n_train), batch_size=cfg.batch_size)
    known = [p for p, k in zip(facts, first.known.tolist(), strict=True) if k]
    if len(known) < cfg.n_train + 2:
        raise InputError(f"{model.name} answers only {len(known)} of {len(facts)} sampled {rel.name} facts with a "
                         f"{cfg.n_train}-shot prompt; an LRE needs {cfg.n_train} training facts and 2 to test. "
                         "Try another template (--template), more facts (--max-facts) or a larger model.")
    train = pick_train(known, cfg.n_train)
    held = read_facts(model, rel, [p for p in known if p not in train], train, layers, batch_size=cfg.batch_size)
    held = held.take([i for i, k in enumerate(held.known.tolist()) if k])
    if len(held.pairs) < 2:
        raise InputError(f"Only {len(held.pairs)} held-out {rel.name} facts are known with the final demonstrations; "
                         "need 2. Raise --max-facts.")
    dev_i, test_i, on_test = _split(len(held.pairs), cfg.dev_fraction, cfg.seed)
    dev, test = held.take(dev_i), held.take(test_i)
    lap("facts")
    samples = sample_jacobians(model, rel, train, layers)
    lap("jacobians")
    lres = {x: lre_from_samples(samples, x, rel=rel, demos=train, model_name=model.name) for x in layers}
    objs = [o for _, o in dev.pairs]
    grid, best, best_key = [], None, None
    for x in layers:
        hit, lp = beta_sweep(model, lres[x], dev.states[x], objs, cfg.betas)  # [beta, n]
        grid.append(hit.float().mean(1).tolist())
        for k, b in enumerate(cfg.betas):
            key = (grid[-1][k], float(lp[k].mean()))
            if best_key is None or key > best_key:
                best, best_key = (x, b), key
    layer, beta = best
    lap("faithfulness")
    dev_pairs = edit_pairs(model, dev, cfg.max_edits)
    dev_scores = causality_many(model, [(lres[x], cfg.rank, False) for x in layers]
                                + [(lres[layer], r, False) for r in cfg.ranks], dev, dev_pairs, seed=cfg.seed)
    by_layer, by_rank = dev_scores[:len(layers)], dev_scores[len(layers):]
    rank = cfg.ranks[max(range(len(cfg.ranks)), key=lambda i: (by_rank[i], -i))] if dev_pairs else cfg.rank
    lap("causality")
    lre = lres[layer].with_(beta=beta)
    test_pairs = edit_pairs(model, test, cfg.max_edits)
    scores = {"faithfulness": faithfulness(model, lre, test), "faithfulness_beta1": faithfulness(model, lres[layer], test)}
    lap("faithfulness")
    scores["causality"], scores["causality_control"] = causality_many(
        model, [(lre, rank, False), (lre, rank, True)], test, test_pairs, seed=cfg.seed)
    lap("causality")
    base = baselines(model, samples, layer, test, cfg.ridge)
    seen = Counter(o for _, o in [*train, *dev.pairs])
    top_obj = seen.most_common(1)[0][0]
    base["majority"] = sum(o == top_obj for _, o in test.pairs) / len(test.pairs)
    lap("baselines")
    return RelationReport(
        relation=rel.name, type=rel.type, model=model.name, template=rel.template, n_facts=len(facts),
        n_known=len(known), train=train, n_dev=len(dev.pairs), n_test=len(test.pairs),
        n_objects=len({o for _, o in test.pairs}), layer=layer, beta=beta,
        rank=rank, **scores, baselines=base, layers=layers, betas=list(cfg.betas),
        ranks=list(cfg.ranks), faithfulness_grid=grid, causality_by_layer=by_layer, causality_by_rank=by_rank, sweep_rank=cfg.rank,
        seconds_jacobians=samples.seconds, seconds_total=time.perf_counter() - t0,
        seconds={k: round(v, 2) for k, v in clock.items()}, selected_on_test=on_test, lre=lre)


@dataclass
class Predictions(Result):
    """What an LRE and the model itself answer for each subject (top-k first tokens)."""

    relation: str
    layer: int
    beta: float
    subjects: list[str]
    lre_top: list[list[tuple[str, float]]]
    model_top: list[list[tuple[str, float]]]

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def table(self) -> Table:
        fmt = lambda top: ", ".join(f"{t.strip() or repr(t)} {p:.2f}" for t, p in top)
        rows = [[s, fmt(a), fmt(b), a[0][0].strip() == b[0][0].strip()]
                for s, a, b in zip(self.subjects, self.lre_top, self.model_top, strict=True)]
        return Table(["subject", "LRE", "model", "agree"], rows,
                     title=f"{self.relation}: LRE (layer {self.layer}, beta {self.beta:g}) vs the model")


def predict_objects(model: Model, lre: LRE, subjects: Sequence[str], *, rel: Relation | None = None,
                    k: int = 5) -> Predictions:
    """For each subject, the LRE's top-k tokens read from its state in the few-shot prompt built
    from the LRE's demonstrations (and `rel`'s template; default the LRE's own), next to the
    model's own top-k next tokens from the same forward."""
    if not subjects or any(not (isinstance(s, str) and s.strip()) for s in subjects):
        raise InputError("Give at least one non-empty subject.")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}.")
    rel = rel or lre.as_relation()
    facts = read_facts(model, rel, [(s, "") for s in subjects], list(lre.demos), [lre.layer], keep_top=k)
    tok = model.tokenizer
    v, i = lre.logits(model, facts.states[lre.layer]).softmax(-1).topk(k)

    def named(vals, ids):
        return [[(tok.decode([int(t)]), float(q)) for q, t in zip(qs, ts, strict=True)] for qs, ts in zip(vals, ids, strict=True)]

    return Predictions(rel.name, lre.layer, lre.beta, list(subjects), named(v, i), named(*facts.top_k))
