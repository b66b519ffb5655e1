"""Steering with dictionary features, next to a random feature of equal norm.

Three edits of the coder's output site (a transcoder's feature writes into its output site):
    add      x + c * a_i * d_i              c in units of the feature's typical activation a_i
    clamp    x + (c * a_i - f_i(x)) * d_i   the feature held at c * a_i wherever it is read
    ablate   x - f_i(x) * d_i               = decode(f with f_i = 0) + the SAE's error term: only
                                              feature i's contribution is removed
`d_i` is the decoder row in raw units and `a_i` the feature's largest activation on reference
text (Templeton et al. clamp to multiples of the maximum). The control is a random other feature
j whose edit has the same norm: the same added vector length for add / clamp, a feature of
similar firing rate for ablate.

The report measures what vector steering measures: the probability of the feature's concept
tokens at the next position (or of the user's keywords), the share of generations with a concept keyword, the KL on
neutral prompts and the repetition of generations, for the baseline, the feature and the control.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from lmscope.datasets import corpus, shipped
from lmscope.engine.errors import InputError
from lmscope.engine.interventions import Apply
from lmscope.engine.metrics import kl_from, next_token_logprobs
from lmscope.engine.model import Model
from lmscope.engine.results import Result, Table
from lmscope.neurons.atlas import to_token_space
from lmscope.neurons.clamp import concept_hits, concept_token_ids, next_token_prob
from lmscope.saes.activations import dictionary_positions, ordinary
from lmscope.saes.coder import SparseCoder
from lmscope.vectors.steering import repetition

MODES = ("add", "clamp", "ablate")


@torch.no_grad()
def reference_activations(model: Model, coder: SparseCoder, texts: Sequence[str] | None = None, *,
                          max_tokens: int = 4096, window: int = 64) -> tuple[Tensor, Tensor]:
    """(max activation [d_sae], firing frequency [d_sae]) of every latent on reference text
    (default: the shipped corpus)."""
    windows = corpus.token_windows(model, corpus.read_texts(texts), window=window, max_tokens=max_tokens)
    coder = coder.to(model.device)
    top = torch.zeros(coder.d_sae)
    fires = torch.zeros(coder.d_sae)
    n = 0
    for _, batch, valid in windows.batches(16, model.device):
        valid = dictionary_positions(valid, windows.n_prefix)
        x = model.run(batch, capture=[coder.cfg.site], logits=None).cache[coder.cfg.site]
        x = x[ordinary(valid, x)]
        f = coder.encode(x.float()).cpu()
        top = torch.maximum(top, f.max(0).values)
        fires += (f > 0).sum(0)
        n += f.shape[0]
    return top, fires / max(n, 1)


def feature_edits(coder: SparseCoder, i: int, mode: str = "add", value: float = 4.0, *, typical: float = 1.0,
                  positions="all") -> list[Apply]:
    """Edits that add, clamp or ablate latent i (see the module docstring)."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
    if not 0 <= i < coder.d_sae:
        raise InputError(f"Feature {i} is out of range (the dictionary has {coder.d_sae}: 0..{coder.d_sae - 1}).")
    spec = coder.cfg
    d = coder.feature_direction(i).detach()
    target = value * typical
    if mode == "add":
        return [Apply(site=spec.site_out, positions=positions, name=f"add f{i}",
                      fn=lambda y: y + (target * d).to(y.device, y.dtype))]
    stash: dict[str, Tensor] = {}

    def f_i(x: Tensor) -> Tensor:  # [batch, pos, 1] activation of latent i
        return coder.encode(x.float())[..., i: i + 1]

    def write(y: Tensor) -> Tensor:
        a = f_i(stash.get("x", y))
        new = (target - a) if mode == "clamp" else -a
        return y + (new * d.to(y.device)).to(y.dtype)

    edits = []
    if spec.site != spec.site_out:
        edits.append(Apply(site=spec.site, positions=positions, name="read",
                           fn=lambda x: stash.__setitem__("x", x) or x))
    edits.append(Apply(site=spec.site_out, positions=positions, name=f"{mode} f{i}", fn=write))
    return edits


def promoted_tokens(model: Model, coder: SparseCoder, i: int, k: int = 10) -> list[tuple[int, str]]:
    """The k tokens the feature's decoder row raises most through the final norm and LM head."""
    logits = to_token_space(model, coder.feature_direction(i)) @ model.weights.W_U.float()
    ids = logits.topk(k).indices.tolist()
    return [(t, model.tokenizer.decode([t])) for t in ids]


def control_feature(coder: SparseCoder, i: int, mode: str, freq: Tensor, *, seed: int = 0) -> int:
    """A random other feature: any live one for add / clamp; one of similar firing rate for ablate."""
    g = torch.Generator().manual_seed(seed + 7919 * i)
    live = (freq > 0).nonzero().flatten()
    live = live[live != i]
    if not len(live):
        raise InputError("No other feature fires on the reference text; cannot pick a control.")
    if mode == "ablate":
        near = (freq[live] - freq[i]).abs().argsort()[: max(5, len(live) // 50)]
        live = live[near]
    return int(live[torch.randint(len(live), (1,), generator=g)])


@dataclass
class SteerArm:
    name: str
    feature: int | None
    value: float
    concept_prob: float | None = None
    concept_rate: float | None = None
    kl_neutral: float | None = None
    repetition: float | None = None
    texts: list[str] = field(default_factory=list)


@dataclass
class SteerReport(Result):
    """Baseline, feature and random-feature arms (see the module docstring)."""

    feature: int
    mode: str
    value: float
    typical: float
    site: str
    concept_tokens: list[str]
    keywords: list[str]
    prompts: list[str]
    arms: dict[str, SteerArm]

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items()}

    def table(self) -> Table:
        rows = [[a.name, "" if a.feature is None else a.feature, a.concept_prob, a.concept_rate, a.kl_neutral,
                 a.repetition] for a in self.arms.values()]
        return Table(["arm", "feature", "p(concept next)", "concept rate", "KL neutral", "repetition"], rows,
                     title=f"{self.mode} feature {self.feature} at {self.site} (x{self.value:g} of its max "
                           f"activation {self.typical:.3g}); concept tokens {self.concept_tokens[:6]}",
                     formats={"p(concept next)": ".3e", "concept rate": ".2f", "KL neutral": ".3f",
                              "repetition": ".2f"})

    def tables(self) -> list[Table]:
        gens = Table(["arm", "generation"], [[a.name, t] for a in self.arms.values() for t in a.texts],
                     title="generations", max_rows=12)
        return [self.table(), gens] if gens.rows else [self.table()]


def steer(model: Model, coder: SparseCoder, feature: int, *, mode: str = "add", value: float = 4.0,
          prompts: Sequence[str] | None = None, keywords: Sequence[str] = (), n_concept_tokens: int = 10,
          max_new_tokens: int = 24, reference: Sequence[str] | None = None, control: bool = True, seed: int = 0,
          generate: bool = True) -> SteerReport:
    """Steer with one feature and measure it next to the baseline and a random feature.

    Args:
        model: The model.
        coder: The dictionary (its output site is edited).
        feature: Latent index.
        mode: "add", "clamp" or "ablate".
        value: Multiple of the feature's max activation (add, clamp).
        prompts: Prompts to steer (default: the shipped neutral prompts).
        keywords: The concept: words counted in generations, whose single-token spellings make
            the next-token measure (default: the feature's top promoted tokens).
        n_concept_tokens: How many of the feature's promoted tokens make its concept.
        max_new_tokens: Greedy generation length.
        reference: Text for the typical activation and firing rates (default: the shipped corpus).
        control: Add the random-feature arm.
        seed: Control choice.
        generate: Generate text (False: next-token metrics only).
    """
    if not 0 <= feature < coder.d_sae:
        raise InputError(f"Feature {feature} is out of range (the dictionary has {coder.d_sae}: 0..{coder.d_sae - 1}).")
    prompts = list(prompts or shipped.neutral_prompts())
    top, freq = reference_activations(model, coder, reference)
    typical = float(top[feature])
    if typical <= 0:
        typical = float(top[top > 0].median()) if (top > 0).any() else 1.0
    if keywords:  # the user's words make the concept (single-token spellings for the next-token measure)
        token_ids = concept_token_ids(model, list(keywords))
        concept = [(t, model.tokenizer.decode([t])) for t in token_ids]
        if not concept:
            raise InputError(f"None of {list(keywords)} is a single token of {model.name}; pass other keywords.")
    else:
        concept = promoted_tokens(model, coder, feature, n_concept_tokens)
        token_ids = [t for t, _ in concept]
    words = list(keywords) or sorted({s.strip().lower() for _, s in concept if len(s.strip()) > 2 and s.strip().isalpha()})
    base_lp = next_token_logprobs(model, prompts)
    arms = {"baseline": SteerArm("baseline", None, 0.0), "feature": SteerArm("feature", feature, value)}
    if control:
        j = control_feature(coder, feature, mode, freq, seed=seed)
        d_i, d_j = coder.feature_direction(feature).detach().norm(), coder.feature_direction(j).detach().norm()
        t_j = float(top[j]) if top[j] > 0 else typical
        # the control's edit has the same norm: value_j * t_j * |d_j| = value * typical * |d_i|
        v_j = value * typical * float(d_i) / (t_j * float(d_j)) if mode != "ablate" else value
        arms["random feature"] = SteerArm("random feature", j, v_j)
    for arm in arms.values():
        edits = [] if arm.feature is None else feature_edits(
            coder, arm.feature, mode, arm.value,
            typical=typical if arm.feature == feature else (float(top[arm.feature]) or typical))
        arm.concept_prob = float(next_token_prob(model, prompts, token_ids, edits=edits).mean())
        arm.kl_neutral = 0.0 if not edits else float(kl_from(model, prompts, base_lp, edits=edits).mean())
        if generate:
            gen = model.generate(prompts, edits=edits, max_new_tokens=max_new_tokens)
            arm.texts = gen.texts
            stop = {model.tokenizer.eos_token_id, model.tokenizer.pad_token_id} - {None}
            lists = [[t for t in row if t not in stop] for row in gen.tokens.tolist()]
            arm.repetition = repetition(lists)
            if words:
                hits = concept_hits(arm.texts, words)
                arm.concept_rate = sum(hits) / len(hits)
    return SteerReport(feature, mode, value, typical, coder.cfg.site_out, [s for _, s in concept], words, prompts, arms)
