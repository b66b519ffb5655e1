"""Using a steering vector: apply it (add, subtract, ablate), score a behaviour, and verify it.

Coefficients are *relative* by default: `coef` is the length of the added vector in units of
the typical residual norm at that layer (`vector.resid_norms`, measured at extraction on the
contrast prompts), so `coef=0.5` adds a vector half as long as the residual stream there:
`raw scale = coef * resid_norm[L] / ||v[L]||`. This makes one coefficient range fit models
with very different residual norms (Gemma's are large). `relative=False` multiplies the raw
vector instead (`lmscope generate --add-vector --scale` uses the raw scale).

Modes:
    add        x <- x + s * v[L] at `layers.L.<site>`, every position (prompt and generated)
    subtract   the same with -s
    ablate     directional ablation (Arditi et al. 2024): the unit direction u = v[L]/|v[L]| is
               projected out, x <- x - (x.u) u, at every layer's resid_pre, attn_out and mlp_out
               and every position; so no residual state (resid_pre/mid/post) of any layer keeps a
               component along u. The coefficient is unused.

Sections: edits; behaviour metrics and `Behaviour`s (what to score, on which held-out prompts);
side effects (KL on neutral prompts, repetition of short generations); `sweep` over layers x
coefficients with a documented recommendation rule; `verify` next to random controls.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from lmscope.engine.errors import InputError
from lmscope.engine.interventions import Add, Edit, ProjectOut
from lmscope.engine.metrics import kl_from, next_token_logprobs
from lmscope.engine.progress import steps
from lmscope.engine.results import Result, Table
from lmscope.vectors.vector import Vector

if TYPE_CHECKING:
    from lmscope.engine.model import Model

log = logging.getLogger(__name__)

Mode = Literal["add", "subtract", "ablate"]
MODES = ("add", "subtract", "ablate")


def raw_scale(vector: Vector, layer: int | None, coef: float, *, relative: bool = True) -> float:
    """The multiplier of `v[layer]` that a coefficient means (see the module docstring)."""
    if not relative:
        return float(coef)
    norms = vector.resid_norms
    lay = vector.layers[0] if layer is None else layer % vector.model.n_layers
    if not norms.get(lay):
        raise InputError(
            f"The vector has no typical residual norm for layer {lay}, so a relative coefficient is undefined. "
            "Use relative=False (raw scale) or `with_resid_norms(model, vector)` to measure it."
        )
    vn = float(vector[lay].norm())
    if vn == 0.0:
        raise InputError(f"Layer {lay} of the vector is zero.")
    return float(coef) * norms[lay] / vn


def steer_edits(vector: Vector, layer: int | None = None, coef: float = 1.0, *, mode: Mode = "add",
                relative: bool = True, positions="all") -> list[Edit]:
    """Edits that apply `vector` (see the module docstring for the modes).

    Args:
        vector: The steering vector.
        layer: Its layer to use (may be omitted for a one-layer vector).
        coef: Coefficient (relative to the residual norm unless `relative=False`).
        mode: "add", "subtract" or "ablate".
        relative: Interpret `coef` relative to the typical residual norm.
        positions: Positions for add/subtract ("all", "generated", slices...). Ablation is
            always at every position.
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
    lay = vector.layers[0] if layer is None and len(vector) == 1 else layer
    if lay is None:
        raise InputError(f"The vector has {len(vector)} layers; pass layer=L.")
    if mode == "ablate":
        u = vector[lay]
        if float(u.norm()) == 0.0:
            raise InputError(f"Layer {lay} of the vector is zero; nothing to ablate.")
        n = vector.model.n_layers
        return [ProjectOut(site=f"layers.{i}.{k}", direction=u) for i in range(n)
                for k in ("resid_pre", "attn_out", "mlp_out")]
    s = raw_scale(vector, lay, coef, relative=relative)
    return [vector.edit(lay, scale=s if mode == "add" else -s, positions=positions)]


def random_vector(vector: Vector, layer: int, seed: int = 0) -> Vector:
    """A seeded Gaussian direction with the same norm as `v[layer]` (one layer, same metadata),
    the control every steering effect is reported next to."""
    g = torch.Generator().manual_seed(int(seed))
    r = torch.randn(vector.d_model, generator=g)
    v = vector.at(layer)
    r = r / r.norm() * v[layer].norm()
    return Vector({layer % vector.model.n_layers: r}, model=vector.model, site=vector.site, method="random",
                  meta={"seed": seed, "resid_norms": v.meta.get("resid_norms", {})})


def with_resid_norms(model: Model, vector: Vector, prompts: Sequence[str] | None = None) -> Vector:
    """The vector with `resid_norms` measured on neutral prompts (last token) where it lacks them."""
    if vector.resid_norms and all(k in vector.resid_norms for k in vector.layers):
        return vector
    from lmscope.datasets.shipped import neutral_prompts

    prompts = list(prompts) if prompts else neutral_prompts(16)
    names = [vector.site_name(lay) for lay in vector.layers]
    res = model.run(prompts, capture=names, positions="last", logits=None)
    norms = {lay: float(res.cache[n].float().norm(dim=-1).mean()) for lay, n in zip(vector.layers, names, strict=True)}
    return Vector({k: vector[k] for k in vector.layers}, model=vector.model, site=vector.site, method=vector.method,
                  meta={**vector.meta, "resid_norms": {**vector.resid_norms, **norms}})


# ---- behaviour metrics -------------------------------------------------------------------------
#: first tokens of refusals (Arditi et al. score the first token "I" for Gemma); both spellings
#: because a chat turn starts without a space and a plain continuation with one
REFUSAL_WORDS = ("I", "Sorry", "As", "Unfortunately", "Cannot", "cannot", " I", " Sorry", " As", " Unfortunately")
POSITIVE_WORDS = (" good", " great", " wonderful", " happy", " beautiful", " lovely", " amazing", " nice", " perfect",
                  " best", " love", " excellent", " fantastic", " pleasant", " glad", " delightful", " joy", " brilliant")
NEGATIVE_WORDS = (" bad", " terrible", " awful", " sad", " horrible", " ugly", " worst", " hate", " angry", " boring",
                  " poor", " dirty", " nasty", " miserable", " rude", " gloomy", " disgusting", " painful")
WEDDING_WORDS = (" wedding", " bride", " groom", " marriage", " married", " ceremony", " honeymoon", " bridal", " vows",
                 " engagement", " engaged", " spouse", " wed", " brides", " weddings")


def word_ids(model: Model, words: Sequence[str]) -> list[int]:
    """Ids of the words that are one token in this tokenizer (multi-token words are dropped:
    their first piece is often a generic fragment)."""
    ids = set()
    for w in words:
        t = model.tokenizer(w, add_special_tokens=False)["input_ids"]
        if len(t) == 1:
            ids.add(int(t[0]))
    if not ids:
        raise InputError(f"None of the words {list(words)[:5]}... is a single token for {model.name}; "
                         "pass other words.")
    return sorted(ids)


def sequence_logprobs(model: Model, texts: Sequence[str], *, prompts: Sequence[str] | None = None, chat: bool = False,
                      edits: Sequence[Edit] = (), batch_size: int = 8) -> torch.Tensor:
    """Sum of token log-probabilities `[n]`: of each completion after its prompt (chat template
    when `chat`), or of each whole text after its first token (`prompts=None`; plain text).

    Only the needed positions are unembedded (from the captured `final_norm`), in chunks, so
    Gemma's 262k vocabulary is never materialised for every position at once.
    """
    from lmscope.engine.readout import logits_from_normed
    from lmscope.vectors.vector import encode, join_completion, n_tokens

    special = not (chat and prompts is not None)
    out = []
    for s in range(0, len(texts), batch_size):
        chunk = list(texts[s:s + batch_size])
        if prompts is not None:
            pairs = [join_completion(model, p, c, chat) for p, c in zip(prompts[s:s + batch_size], chunk, strict=True)]
            n_ans = [n_tokens(model, f, special=special) - n_tokens(model, p, special=special) for p, f in pairs]
            full = [f for _, f in pairs]
        else:
            full, n_ans = chunk, [n_tokens(model, t, special=True) for t in chunk]
        batch = encode(model, full, special=special)
        res = model.run(batch, capture=["final_norm"], edits=edits, logits=None)
        h = res.cache["final_norm"]  # [b, P, d]
        width = h.shape[1]
        rows, cols, tgt, owner = [], [], [], []
        for i, (k, length) in enumerate(zip(n_ans, batch.lengths.tolist(), strict=True)):
            k = max(1, min(k, length - 1))
            c = torch.arange(width - k - 1, width - 1)
            rows.append(torch.full((k,), i))
            cols.append(c)
            tgt.append(batch.input_ids[i, width - k:].cpu())
            owner.append(torch.full((k,), i))
        rows_t, cols_t, tgt_t, owner_t = (torch.cat(x) for x in (rows, cols, tgt, owner))
        picked = h[rows_t.to(h.device), cols_t.to(h.device)]  # [N, d]
        lp = torch.empty(len(rows_t))
        with torch.inference_mode():
            for a in range(0, len(rows_t), 64):
                logits = logits_from_normed(model, picked[a:a + 64]).float().log_softmax(-1).cpu()  # [<=64, V]
                lp[a:a + 64] = logits.gather(1, tgt_t[a:a + 64, None]).squeeze(1)
        out.append(torch.zeros(len(chunk)).index_add_(0, owner_t, lp))
    return torch.cat(out)


@dataclass(frozen=True, kw_only=True)
class TokenMetric:
    """Next-token probability mass of a word set on prompts (mean over prompts); with
    `against`, the mean log-ratio log p(words) - log p(against).

    Attributes:
        prompts: Prompts to score.
        words: Words whose (single) token probabilities are summed.
        against: Optional contrasting words.
        chat: Apply the chat template.
        name: Label of the score.
    """

    prompts: tuple[str, ...]
    words: tuple[str, ...]
    against: tuple[str, ...] = ()
    chat: bool = False
    name: str = "p(words)"

    def __call__(self, model: Model, edits: Sequence[Edit] = ()) -> dict:
        lp = next_token_logprobs(model, self.prompts, chat=self.chat, edits=edits)  # [n, V]
        pw = lp[:, word_ids(model, self.words)].exp().sum(-1)  # [n]
        out = {"score": float(pw.mean()), "p_words": float(pw.mean())}
        if self.against:
            pa = lp[:, word_ids(model, self.against)].exp().sum(-1)
            ratio = pw.clamp_min(1e-30).log() - pa.clamp_min(1e-30).log()
            out.update(score=float(ratio.mean()), p_against=float(pa.mean()))
        return out


@dataclass(frozen=True, kw_only=True)
class LoglikMetric:
    """Mean log p(positive) - log p(negative) over held-out items: completions after their
    prompt (completions sets) or whole texts (pairs).

    `probability=True` scores the mean sigmoid of that difference instead; for single-token
    answers that is CAA's normalised p(matching answer) = p(A) / (p(A) + p(B)).
    """

    positive: tuple[str, ...]
    negative: tuple[str, ...]
    prompts: tuple[str, ...] | None = None
    chat: bool = False
    probability: bool = False
    name: str = "log p(pos) - log p(neg)"

    def __call__(self, model: Model, edits: Sequence[Edit] = ()) -> dict:
        lp = sequence_logprobs(model, self.positive, prompts=self.prompts, chat=self.chat, edits=edits)
        ln = sequence_logprobs(model, self.negative, prompts=self.prompts, chat=self.chat, edits=edits)
        d = lp - ln
        out = {"logprob_diff": float(d.mean()), "accuracy": float((d > 0).float().mean()),
               "p_positive": float(torch.sigmoid(d).mean())}
        out["score"] = out["p_positive"] if self.probability else out["logprob_diff"]
        return out


Metric = TokenMetric | LoglikMetric


@dataclass(frozen=True, kw_only=True)
class Behaviour:
    """A behaviour to score, and where (not an in-context task: that is `datasets.icl.Task`).

    Attributes:
        name: Its name ("refusal", "sentiment", ...: `TASKS`).
        absent: Metric on held-out prompts without the behaviour (adding should raise it).
        present: Metric on held-out prompts with it (subtracting/ablating should lower it).
        neutral: Prompts for side effects (KL, repetition), disjoint from the metric prompts.
        chat: Chat template for the side-effect prompts.
    """

    name: str
    absent: Metric
    present: Metric
    neutral: tuple[str, ...]
    chat: bool = False

    @property
    def metric_name(self) -> str:
        return self.absent.name


TASKS = ("refusal", "sycophancy", "sentiment", "weddings", "loglik")
#: shipped dataset -> task scored by default
DATASET_TASK = {"refusal_prompts": "refusal", "refusal_completions": "refusal", "sycophancy_ab": "sycophancy",
                "sentiment": "sentiment", "topic_weddings": "weddings", "truthfulness": "loglik"}
_TASK_DATA = {"refusal": "refusal_prompts", "sycophancy": "sycophancy_ab", "sentiment": "sentiment",
              "weddings": "topic_weddings"}
#: tasks whose prompts are instructions to an assistant: chat template by default
CHAT_TASKS = ("refusal", "sycophancy")


def default_task(dataset_name: str) -> str:
    return DATASET_TASK.get(dataset_name, "loglik")


def make_task(name: str, *, data=None, held_out: float = 0.25, seed: int = 0, n_eval: int = 16,
              n_neutral: int = 16, chat: bool | None = None) -> Behaviour:
    """Build the `Behaviour` of a named task from the held-out part of its data.

    Args:
        name: "refusal" (p of refusal-start tokens; harmless vs harmful instructions from
            refusal_prompts), "sycophancy" (CAA p(matching answer) on sycophancy_ab),
            "sentiment" (log p(positive words)/p(negative words): neutral prompts vs positive
            sentences), "weddings" (p(wedding words): neutral prompts vs wedding sentences), or
            "loglik" (log p(positive) - log p(negative) of held-out items of `data`; any paired set).
        data: ContrastSet to take held-out items from (needed for "loglik"; others default
            to their shipped dataset). Use the same `held_out`/`seed` as at extraction so the
            items were not used to build the vector.
        held_out, seed: The split.
        n_eval: Items or prompts per metric.
        n_neutral: Neutral prompts for side effects.
        chat: Chat template (default: on for refusal and sycophancy).
    """
    import random

    from lmscope.datasets.contrast import load_contrast
    from lmscope.datasets.shipped import neutral_prompts

    if name not in TASKS:
        raise InputError(f"Unknown task {name!r}; known: {', '.join(TASKS)}.")
    chat = (name in CHAT_TASKS) if chat is None else chat
    neutral = neutral_prompts()
    random.Random(seed).shuffle(neutral)
    half = len(neutral) // 2
    beh_neutral, side = tuple(neutral[:half][:n_eval]), tuple(neutral[half:][:n_neutral])
    if name == "loglik":
        if data is None or not data.paired:
            raise InputError("The loglik task needs paired data (pairs or completions) to score held-out items.")
    elif (data is None or (name == "refusal" and data.format != "pairs")
          or (name == "sycophancy" and data.format != "completions")):
        data = load_contrast(_TASK_DATA[name])
    test = data.split(held_out, seed)[1].head(n_eval)
    if name == "refusal":
        def mk(ps):
            return TokenMetric(prompts=ps, words=REFUSAL_WORDS, chat=chat, name="p(refusal start)")
        absent, present = mk(test.negative), mk(test.positive)
    elif name in ("sycophancy", "loglik"):
        m = LoglikMetric(positive=test.positive, negative=test.negative, prompts=test.prompts, chat=chat,
                         probability=name == "sycophancy",
                         name="p(matching answer)" if name == "sycophancy" else "log p(pos) - log p(neg)")
        absent = present = m
    elif name == "sentiment":
        def mk(ps):
            return TokenMetric(prompts=ps, words=POSITIVE_WORDS, against=NEGATIVE_WORDS, chat=chat,
                               name="log p(positive words)/p(negative words)")
        absent, present = mk(beh_neutral), mk(test.positive)
    else:
        def mk(ps):
            return TokenMetric(prompts=ps, words=WEDDING_WORDS, chat=chat, name="p(wedding words)")
        absent, present = mk(beh_neutral), mk(test.positive)
    return Behaviour(name=name, absent=absent, present=present, neutral=side, chat=chat)


# ---- side effects -------------------------------------------------------------------------------
def repetition(token_lists: Sequence[Sequence[int]], n: int = 3) -> float:
    """Share of repeated n-grams: mean over texts of 1 - distinct / total n-grams (texts with
    fewer than n + 1 tokens are skipped; 0 when none is long enough)."""
    vals = []
    for toks in token_lists:
        grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
        if len(grams) >= 2:
            vals.append(1.0 - len(set(grams)) / len(grams))
    return sum(vals) / len(vals) if vals else 0.0


def generation_repetition(model: Model, prompts: Sequence[str], *, chat: bool, edits: Sequence[Edit] = (),
                          max_new_tokens: int = 16, n: int = 3) -> tuple[float, list[str]]:
    """Greedy short generations and their repeated-n-gram share."""
    gen = model.generate(list(prompts), edits=edits, max_new_tokens=max_new_tokens, chat=chat)
    stop = {model.tokenizer.eos_token_id, model.tokenizer.pad_token_id} - {None}
    lists = []
    for row in gen.tokens.tolist():
        cut = next((i for i, t in enumerate(row) if t in stop), len(row))
        lists.append(row[:cut])
    return repetition(lists, n), gen.texts


# ---- choosing layer and coefficient ------------------------------------------------------------------
def default_layers(n_layers: int, n: int = 8) -> tuple[int, ...]:
    """About n layers spread over 10%..85% of the depth (the first and last layers rarely steer)."""
    lo, hi = max(0, round(0.1 * n_layers)), max(1, round(0.85 * n_layers))
    step = max(1, round((hi - lo) / max(1, n - 1)))
    return tuple(range(lo, hi, step))


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """A layer x coefficient sweep and its recommendation rule.

    Attributes:
        layers: Layers to try (None: `default_layers`).
        coefs: Coefficients to try (relative to the residual norm unless `relative=False`).
        relative: Relative coefficients (module docstring).
        goal: "increase" scores adding on prompts without the behaviour; "decrease" scores on
            prompts with it (pass negative coefficients to subtract).
        kl_max: Largest admissible KL(unsteered || steered) on neutral prompts (nats).
        repetition_margin: Largest admissible rise of the repeated-3-gram share of short
            greedy generations over the unsteered generations.
        gen_tokens: New tokens per generation for the repetition score (0: skip it).
        n_gen: Neutral prompts generated from.
        random_checks: How many of the best admissible settings (in rule order) may be
            checked against a random direction of equal norm (seed `seed`) before giving up.
        seed: Seed of the random control direction.
    """

    layers: tuple[int, ...] | None = None
    coefs: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
    relative: bool = True
    goal: Literal["increase", "decrease"] = "increase"
    kl_max: float = 1.0
    repetition_margin: float = 0.2
    gen_tokens: int = 16
    n_gen: int = 4
    random_checks: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.random_checks < 1:
            raise InputError("random_checks must be at least 1: a recommendation must beat a random direction.")
        if not self.coefs:
            raise InputError("Give at least one coefficient.")
        if self.goal not in ("increase", "decrease"):
            raise InputError(f"goal must be 'increase' or 'decrease', got {self.goal!r}.")
        if self.kl_max <= 0:
            raise InputError(f"kl_max must be positive, got {self.kl_max}.")


RULE = ("Among (layer, coef) with KL(unsteered || steered) <= kl_max on neutral prompts and a repeated-3-gram "
        "share of short greedy generations at most repetition_margin above the unsteered one, pick the largest "
        "behaviour change in the goal's direction (ties: smaller |coef|, then lower KL) whose change also exceeds "
        "the absolute change made by a random direction of equal norm at the same layer and coefficient; "
        "up to random_checks candidates are tried in that order, and none is recommended if none passes.")


@dataclass
class SweepResult(Result):
    """Rows of (layer, coef, raw scale, score, effect = score - base, kl, repetition, admissible),
    the unsteered base, and the recommended setting (None when nothing is admissible)."""

    task: str
    metric: str
    goal: str
    base: dict
    rows: list[dict]
    recommended: dict | None
    config: dict
    rule: str = RULE

    def grid(self, key: str = "score") -> tuple[list[int], list[float], list[list[float | None]]]:
        """(layers, coefs, values[layer][coef]) of one column, for heatmaps."""
        layers = sorted({r["layer"] for r in self.rows})
        coefs = sorted({r["coef"] for r in self.rows})
        at = {(r["layer"], r["coef"]): r[key] for r in self.rows}
        return layers, coefs, [[at.get((lay, c)) for c in coefs] for lay in layers]

    def to_dict(self) -> dict:
        return {"task": self.task, "metric": self.metric, "goal": self.goal, "base": self.base, "rows": self.rows,
                "recommended": self.recommended, "rule": self.rule, "config": self.config}

    def table(self) -> Table:
        """Every (layer, coef) with its score, change, KL, repetition and admissibility, and the
        recommendation (what `lmscope vector sweep` prints)."""
        rec = self.recommended
        note = (f"recommended: layer {rec['layer']}, coef {rec['coef']:g} (raw scale {rec['scale']:.4g})" if rec
                else "no admissible setting moves the behaviour; see the rule in to_dict()")
        return Table(["layer", "coef", "raw scale", "score", "Δ", "KL", "repetition", "ok"],
                     [[r["layer"], r["coef"], r["scale"], r["score"], r["effect"], r["kl"], r["repetition"],
                       "yes" if r["admissible"] else "no"] for r in self.rows],
                     title=f"{self.task}: {self.metric} (base {self.base['score']:.4g}; goal {self.goal})",
                     formats={"coef": "g"}, notes=[note])


def sweep(model: Model, vector: Vector, task: Behaviour, config: SweepConfig | None = None, *,
          progress: bool = False, **overrides) -> SweepResult:
    """Score the behaviour and the side effects of adding the vector at each layer x coefficient.

    Behaviour: `task.absent` (goal increase) or `task.present` (goal decrease) under the edit.
    Side effects: KL(unsteered || steered) of the next token on `task.neutral`, and the
    repeated-3-gram share of short greedy generations from the first `n_gen` neutral prompts
    (only computed where the KL is admissible). Recommendation: `RULE`.
    """
    from dataclasses import asdict, replace

    cfg = config or SweepConfig()
    if overrides:
        cfg = replace(cfg, **overrides)
    vector.check_model(model)
    vector = with_resid_norms(model, vector)
    layers = [lay % model.n_layers for lay in (cfg.layers or default_layers(model.n_layers))]
    missing = [lay for lay in layers if lay not in vector.layers]
    if missing:
        raise InputError(f"The vector has no layer {missing[0]} (it holds {vector.layers}); choose layers it has.")
    metric = task.absent if cfg.goal == "increase" else task.present
    sign = 1.0 if cfg.goal == "increase" else -1.0
    gen_prompts = task.neutral[:cfg.n_gen]
    base_score = metric(model)["score"]
    base_lp = next_token_logprobs(model, task.neutral, chat=task.chat)
    base_rep = (generation_repetition(model, gen_prompts, chat=task.chat, max_new_tokens=cfg.gen_tokens)[0]
                if cfg.gen_tokens else None)
    rows = []
    grid = [(lay, c) for lay in layers for c in cfg.coefs]
    for lay, c in steps(grid, desc="sweep", show=progress):
        edits = steer_edits(vector, lay, c, relative=cfg.relative)
        sc = metric(model, edits)["score"]
        kl = float(kl_from(model, task.neutral, base_lp, edits=edits, chat=task.chat).mean())
        rep = None
        if cfg.gen_tokens and kl <= cfg.kl_max:
            rep = generation_repetition(model, gen_prompts, chat=task.chat, edits=edits,
                                        max_new_tokens=cfg.gen_tokens)[0]
        ok = kl <= cfg.kl_max and (rep is None or base_rep is None or rep <= base_rep + cfg.repetition_margin)
        rows.append({"layer": lay, "coef": float(c), "scale": raw_scale(vector, lay, c, relative=cfg.relative),
                     "score": sc, "effect": sc - base_score, "kl": kl, "repetition": rep, "admissible": ok})
    good = sorted((r for r in rows if r["admissible"] and sign * r["effect"] > 0),
                  key=lambda r: (-sign * r["effect"], abs(r["coef"]), r["kl"]))
    best = None
    for r in good[:cfg.random_checks]:
        rnd = random_vector(vector, r["layer"], cfg.seed)
        r["random_effect"] = metric(model, steer_edits(rnd, r["layer"], r["coef"], relative=cfg.relative))["score"] \
            - base_score
        if sign * r["effect"] > abs(r["random_effect"]):
            best = r
            break
    return SweepResult(task=task.name, metric=metric.name, goal=cfg.goal,
                       base={"score": base_score, "repetition": base_rep}, rows=rows,
                       recommended=dict(best) if best else None, config={**asdict(cfg), "layers": layers})


# ---- verification ------------------------------------------------------------------------------
@dataclass
class VerifyReport(Result):
    """The lecture's test, next to random controls.

    `add` rows are scored on prompts *without* the behaviour (it should appear with +vector),
    `remove` rows on prompts *with* it (it should fade with -vector / ablation). `random`
    entries are the mean over `n_random` seeded random directions of equal norm; `random_all`
    lists each seed's score.
    """

    task: str
    layer: int
    coef: float
    mode: str
    metric: str
    add: dict = field(default_factory=dict)  # base, vector, random, random_all
    remove: dict = field(default_factory=dict)
    swing: dict = field(default_factory=dict)  # vector, random_all: score(+coef) - score(-coef) on `add` prompts
    details: dict = field(default_factory=dict)

    @property
    def add_effect(self) -> float:
        return self.add["vector"] - self.add["base"]

    @property
    def add_random_effect(self) -> float:
        """The largest absolute change made by a random control (always >= 0)."""
        return max((abs(r - self.add["base"]) for r in self.add["random_all"]), default=0.0)

    @property
    def remove_effect(self) -> float:
        return self.remove["vector"] - self.remove["base"]

    @property
    def remove_random_effect(self) -> float:
        """The largest absolute change made by a random control (always >= 0)."""
        return max((abs(r - self.remove["base"]) for r in self.remove["random_all"]), default=0.0)

    @property
    def passed(self) -> dict[str, bool]:
        """Adding raises the score by more than any random control moves it (either way);
        removing lowers it by more than any random control moves it; and (when measured) the
        swing +vector vs -vector beats every random direction's swing."""
        out = {"add": self.add_effect > self.add_random_effect,
               "remove": -self.remove_effect > self.remove_random_effect}
        if self.swing:
            out["swing"] = self.swing["vector"] > max(abs(r) for r in self.swing["random_all"])
        return out

    def rows(self) -> list[dict]:
        return [
            {"test": "add to prompts without it", "base": self.add["base"], "vector": self.add["vector"],
             "random": self.add["random"], "effect": self.add_effect, "random_effect": self.add_random_effect,
             "passed": self.passed["add"]},
            {"test": f"{self.mode} on prompts with it", "base": self.remove["base"], "vector": self.remove["vector"],
             "random": self.remove["random"], "effect": self.remove_effect,
             "random_effect": self.remove_random_effect, "passed": self.passed["remove"]},
        ] + ([{"test": "swing +vector vs -vector (prompts without it)", "base": None,
               "vector": self.swing["vector"], "random": sum(self.swing["random_all"]) / len(self.swing["random_all"]),
               "effect": self.swing["vector"], "random_effect": max(abs(r) for r in self.swing["random_all"]),
               "passed": self.passed["swing"]}] if self.swing else [])

    def to_dict(self) -> dict:
        return {"task": self.task, "layer": self.layer, "coef": self.coef, "mode": self.mode, "metric": self.metric,
                "add": self.add, "remove": self.remove, "swing": self.swing, "passed": self.passed,
                "rows": self.rows(), "details": self.details}

    def table(self) -> Table:
        """The add / remove (/ swing) tests next to the random controls (`lmscope vector verify`)."""
        kl = self.details.get("kl")
        notes = [f"KL on neutral prompts when added: vector {kl['vector']:.3g}, random "
                 + ", ".join(f"{x:.3g}" for x in kl["random"])] if kl else []
        return Table(["test", "base", "vector", "random (mean)", "Δ vector", "max |Δ random|", "passed"],
                     [[r["test"], r["base"], r["vector"], r["random"], r["effect"], r["random_effect"], r["passed"]]
                      for r in self.rows()],
                     title=f"{self.task}: {self.metric}, layer {self.layer}, coef {self.coef:g}, remove by {self.mode}",
                     notes=notes)


def verify(model: Model, vector: Vector, task: Behaviour, *, layer: int, coef: float = 1.0, mode: Mode = "ablate",
           relative: bool = True, n_random: int = 3, seed: int = 0, positions="all",
           side_effects: bool = True, swing: bool = True) -> VerifyReport:
    """Add the vector to prompts without the behaviour and remove it (subtract or ablate) from
    prompts with it; score each next to `n_random` random directions of equal norm.

    Args:
        model: The model.
        vector: The steering vector (its `layer` is used).
        task: The behaviour to score (`make_task`).
        layer: Layer of the vector to apply.
        coef: Coefficient for adding (and subtracting); relative unless `relative=False`.
        mode: How to remove: "ablate" (directional ablation at every layer) or "subtract".
        relative: Relative coefficients (see module docstring).
        n_random: Random control directions (seeds seed, seed+1, ...).
        seed: First random seed.
        positions: Positions for add/subtract.
        side_effects: Also record KL(unsteered || steered) on `task.neutral` for the added
            vector and each random direction (`details["kl"]`): a random direction of equal
            norm can move a score just by breaking the model, which the KL shows.
        swing: Also score subtracting at `coef` on the `absent` prompts and report the swing
            score(+vector) - score(-vector) next to each random direction's swing. Generic
            damage moves a score the same way for +r and -r, so the swing isolates the
            direction's specific effect (CAA's -1/0/+1 comparison).
    """
    if mode not in ("ablate", "subtract"):
        raise InputError(f"verify removes by 'ablate' or 'subtract', got {mode!r}.")
    if n_random < 1:
        raise InputError("n_random must be at least 1: every effect is reported next to a random control.")
    vector.check_model(model)
    vector = with_resid_norms(model, vector)
    layer = layer % model.n_layers
    # the random controls use the scale of the real vector (same raw length added)
    s = raw_scale(vector, layer, coef, relative=relative)
    randoms = [random_vector(vector, layer, seed + i) for i in range(n_random)]

    def add_edits(v: Vector) -> list[Edit]:
        return [Add(site=v.site_name(layer), vector=v[layer], scale=s, positions=positions)]

    def remove_edits(v: Vector) -> list[Edit]:
        if mode == "ablate":
            return steer_edits(v, layer, mode="ablate")
        return [Add(site=v.site_name(layer), vector=v[layer], scale=-s, positions=positions)]

    out = VerifyReport(task=task.name, layer=layer, coef=coef, mode=mode, metric=task.metric_name)
    for key, metric, make in (("add", task.absent, add_edits), ("remove", task.present, remove_edits)):
        base = metric(model)
        vec = metric(model, make(vector))
        rnd = [metric(model, make(r))["score"] for r in randoms]
        getattr(out, key).update(base=base["score"], vector=vec["score"], random=sum(rnd) / len(rnd), random_all=rnd)
        out.details[key] = {"base": base, "vector": vec}
    if swing:
        def neg(v: Vector) -> list[Edit]:
            return [Add(site=v.site_name(layer), vector=v[layer], scale=-s, positions=positions)]

        out.swing = {"vector": out.add["vector"] - task.absent(model, neg(vector))["score"],
                     "random_all": [a - task.absent(model, neg(r))["score"]
                                    for a, r in zip(out.add["random_all"], randoms, strict=True)]}
    if side_effects:
        base_lp = next_token_logprobs(model, task.neutral, chat=task.chat)

        def kl(v: Vector) -> float:
            return float(kl_from(model, task.neutral, base_lp, edits=add_edits(v), chat=task.chat).mean())

        out.details["kl"] = {"vector": kl(vector), "random": [kl(r) for r in randoms]}
    out.details["raw_scale"] = s
    out.details["relative_length"] = s * float(vector[layer].norm()) / vector.resid_norms[layer]
    return out
