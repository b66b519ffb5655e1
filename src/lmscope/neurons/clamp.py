"""Clamping neurons during generation, measured against a random-neuron control (Davies 2025).

A clamp is a core `Set` edit on `layers.L.mlp.neurons[n]` with positions "all": the neuron's
activation is replaced by a fixed value at every prompt token and every generated token.
`clamp_experiment` measures what it does to

- the next-token probability of the concept's tokens (summed over their single-token
  spellings: " dog", "dog", " Dog", ...), at the last prompt position, and
- how often the concept's keywords appear in the generations,

for the clamped neurons, for random neurons of the same layers clamped to the same values
(the control), and without any edit (the baseline).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from lmscope.datasets import shipped
from lmscope.engine.errors import InputError
from lmscope.engine.interventions import Set
from lmscope.engine.model import Model
from lmscope.engine.results import Result, Table

Neuron = tuple[int, int]  # (layer, neuron)


@dataclass(frozen=True, kw_only=True)
class ClampConfig:
    """How generations are made.

    Attributes:
        max_new_tokens: Tokens generated per prompt.
        chat: Apply the model's chat template to the prompts.
        do_sample: Sample (seeded) instead of greedy decoding.
        temperature: Sampling temperature.
        n_samples: Generations per prompt (more than 1 only makes sense with `do_sample`).
        seed: Seed of the sampling and of the choice of control neurons.
    """

    max_new_tokens: int = 24
    chat: bool = True
    do_sample: bool = False
    temperature: float = 1.0
    n_samples: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.n_samples < 1:
            raise InputError("max_new_tokens and n_samples must be at least 1.")
        if self.n_samples > 1 and not self.do_sample:
            raise InputError("n_samples > 1 with greedy decoding repeats one generation; set do_sample=True.")


def _check(model: Model, neurons: Sequence[Neuron]) -> list[Neuron]:
    """Validate and normalise (negative layers) through the site grammar."""
    out = []
    for layer, n in neurons:
        site = model.site(f"layers.{layer}.mlp.neurons[{n}]")
        out.append((site.layer, site.units[0]))
    if not out:
        raise InputError("No neurons given; pass at least one LAYER.NEURON.")
    return out


def clamp_edits(model: Model, neurons: Sequence[Neuron], value: float | Sequence[float]) -> list[Set]:
    """One `Set` edit per layer fixing the given neurons to `value` (one value, or one per
    neuron) at every position, prompt and generated."""
    neurons = _check(model, neurons)
    values = [float(value)] * len(neurons) if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != len(neurons):
        raise InputError(f"{len(values)} values for {len(neurons)} neurons; pass one value or one per neuron.")
    by_layer: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for (layer, n), v in zip(neurons, values, strict=True):
        by_layer[layer].append((n, v))
    return [Set(site=f"layers.{L}.mlp.neurons[{','.join(str(n) for n, _ in nv)}]",
                value=torch.tensor([v for _, v in nv]), positions="all") for L, nv in sorted(by_layer.items())]


def natural_activation(model: Model, neurons: Sequence[Neuron], prompts: Sequence[str], *,
                       chat: bool = False) -> list[dict]:
    """Activation range of each neuron over every real token of `prompts`:
    [{"layer", "neuron", "max", "min", "mean", "abs_max"}]."""
    neurons = _check(model, neurons)
    by_layer: dict[int, list[int]] = defaultdict(list)
    for layer, n in neurons:
        by_layer[layer].append(n)
    sites = {L: f"layers.{L}.mlp.neurons[{','.join(map(str, ns))}]" for L, ns in by_layer.items()}
    res = model.run(list(prompts), capture=list(sites.values()), logits=None, chat=chat)
    mask = res.batch.attention_mask.bool()  # [batch, pos]
    stats = {}
    for L, site in sites.items():
        acts = res.cache[site].float()[mask]  # [tokens, n_units]
        for j, n in enumerate(by_layer[L]):
            a = acts[:, j]
            stats[(L, n)] = {"layer": L, "neuron": n, "max": float(a.max()), "min": float(a.min()),
                             "mean": float(a.mean()), "abs_max": float(a.abs().max())}
    return [stats[x] for x in neurons]


def random_controls(model: Model, neurons: Sequence[Neuron], *, seed: int = 0) -> list[Neuron]:
    """For each neuron, a random other neuron of the same layer (seeded; no neuron twice)."""
    neurons = _check(model, neurons)
    gen = torch.Generator().manual_seed(seed)
    taken = set(neurons)
    out = []
    for layer, _ in neurons:
        while True:
            n = int(torch.randint(model.d_mlp, (1,), generator=gen))
            if (layer, n) not in taken:
                break
        taken.add((layer, n))
        out.append((layer, n))
    return out


def concept_token_ids(model: Model, words: Sequence[str]) -> list[int]:
    """Ids of the single-token spellings of `words` (" dog", "dog", " Dog", "Dog")."""
    ids = []
    for w in words:
        for form in (f" {w}", w, f" {w.capitalize()}", w.capitalize()):
            enc = model.tokenizer(form, add_special_tokens=False)["input_ids"]
            if len(enc) == 1:
                ids.append(enc[0])
    return sorted(set(ids))


def concept_hits(texts: Sequence[str], keywords: Sequence[str]) -> list[bool]:
    """Whether each text contains any keyword as a whole word (case-insensitive)."""
    if not keywords:
        raise InputError("No concept keywords given.")
    pat = re.compile(r"\b(" + "|".join(re.escape(k) for k in keywords) + r")\b", re.IGNORECASE)
    return [bool(pat.search(t)) for t in texts]


def next_token_prob(model: Model, prompts: Sequence[str], token_ids: Sequence[int], *, edits=(),
                    chat: bool = False) -> Tensor:
    """Probability mass on `token_ids` at the next position of each prompt, float32 [batch]."""
    if not token_ids:
        raise InputError("No concept tokens: none of the words is a single token of this tokenizer.")
    res = model.run(list(prompts), edits=list(edits), chat=chat)  # logits [batch, vocab]
    probs = res.logits.float().softmax(-1)
    return probs[:, torch.as_tensor(list(token_ids), device=probs.device)].sum(-1).cpu()


def load_concept(name: str) -> dict:
    """A concept from `lmscope/datasets/data/concepts.jsonl`: {"concept", "prompt", "keywords"}."""
    rows = shipped.rows("concepts.jsonl")
    for r in rows:
        if r["concept"] == name:
            return r
    raise InputError(f"Unknown concept {name!r}; known: {', '.join(r['concept'] for r in rows)}.")


@dataclass
class ClampArm:
    """One condition of the experiment."""

    name: str  # "baseline", "clamped" or "control"
    neurons: list[Neuron]
    values: list[float]
    texts: list[str] = field(default_factory=list)
    concept_rate: float | None = None  # share of generations with a keyword
    concept_prob: float | None = None  # mean next-token probability of the concept tokens


@dataclass
class ClampReport(Result):
    prompts: list[str]
    keywords: list[str]
    token_ids: list[int]
    arms: dict[str, ClampArm]
    config: ClampConfig

    def ratio(self, arm: str) -> float | None:
        """Concept next-token probability of an arm over the baseline's."""
        a, b = self.arms[arm].concept_prob, self.arms["baseline"].concept_prob
        return None if a is None or b is None else a / max(b, 1e-30)

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "keywords": self.keywords, "token_ids": self.token_ids,
                "config": asdict(self.config),
                "arms": {k: {**asdict(a), "prob_ratio": self.ratio(k)} for k, a in self.arms.items()}}

    def table(self) -> Table:
        """Per arm: the neurons set, the share of generations with a keyword, and the concept
        tokens' next-token probability with its ratio to the baseline's."""
        rows = [[name, ", ".join(f"{a}.{b}" for a, b in arm.neurons) or "none",
                 ", ".join(f"{v:.3g}" for v in arm.values), arm.concept_rate, arm.concept_prob, self.ratio(name)]
                for name, arm in self.arms.items()]
        return Table(["arm", "neurons", "values", "concept rate", "p(concept next)", "x baseline"], rows,
                     title=f"clamping on {len(self.prompts)} prompts; keywords {self.keywords}",
                     formats={"concept rate": ".2f", "p(concept next)": ".2e", "x baseline": ".1f"})

    def tables(self) -> list[Table]:
        texts = Table(["arm", "generation"], [[name, t] for name, arm in self.arms.items() for t in arm.texts],
                      title="generations", max_rows=12)
        return [self.table(), texts] if texts.rows else [self.table()]


def _generate(model: Model, prompts: list[str], edits, cfg: ClampConfig) -> list[str]:
    many = [p for p in prompts for _ in range(cfg.n_samples)]
    gen = model.generate(many, edits=edits, max_new_tokens=cfg.max_new_tokens, chat=cfg.chat,
                      do_sample=cfg.do_sample, temperature=cfg.temperature, seed=cfg.seed)
    return gen.texts


def clamp_experiment(model: Model, neurons: Sequence[Neuron], *, value: float | Sequence[float],
                     prompts: Sequence[str], keywords: Sequence[str] = (), concept_words: Sequence[str] = (),
                     control: bool = True, generate: bool = True,
                     config: ClampConfig = ClampConfig()) -> ClampReport:
    """Clamp `neurons` to `value` and compare with the baseline and a random-neuron control.

    Args:
        model: The model.
        neurons: [(layer, neuron)] to clamp.
        value: One value for all, or one per neuron.
        prompts: Prompts to generate from.
        keywords: Words whose presence in a generation counts as the concept appearing.
        concept_words: Words whose single-token spellings make the next-token probability
            (default: `keywords`).
        control: Also clamp random neurons of the same layers to the same values.
        generate: Generate (False: next-token probabilities only, much faster).
        config: Generation settings.
    """
    neurons = _check(model, neurons)
    prompts = list(prompts)
    values = [float(value)] * len(neurons) if isinstance(value, (int, float)) else [float(v) for v in value]
    token_ids = concept_token_ids(model, list(concept_words or keywords))
    arms = {"baseline": ClampArm("baseline", [], []), "clamped": ClampArm("clamped", neurons, values)}
    if control:
        arms["control"] = ClampArm("control", random_controls(model, neurons, seed=config.seed), values)
    for arm in arms.values():
        edits = clamp_edits(model, arm.neurons, arm.values) if arm.neurons else []
        if token_ids:
            arm.concept_prob = float(next_token_prob(model, prompts, token_ids, edits=edits, chat=config.chat).mean())
        if generate:
            arm.texts = _generate(model, prompts, edits, config)
            if keywords:
                hits = concept_hits(arm.texts, keywords)
                arm.concept_rate = sum(hits) / len(hits)
    return ClampReport(prompts, list(keywords), token_ids, arms, config)

