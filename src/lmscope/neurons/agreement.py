"""The singular/plural demonstration ("this" / "these"): which neurons carry number agreement,
and how rarely one of them alone flips the model's choice (the knowledge-neuron critique).

    demo = agreement_demo(model, n_rank=20, n_eval=20)
    demo.ranking[:5]          # neurons ranked by attribution on the ranking prompts
    demo.top1                 # ablating the best one on held-out prompts (AblationEffect)
    demo.curve                # k = 1..N top neurons vs k random ones (CurveResult)

Data: `lmscope/datasets/data/singular_plural_agreement.jsonl`, rows `{"prompt_singular",
"prompt_plural", "singular", "plural"}` whose next word should be " this" / " these". The
metric is the logit difference LD = logit(" these") - logit(" this") at the last token of the
plural prompts; neurons are ranked by attribution (`neuron_causal.attribute`) on the first
`n_rank` rows and every ablation is measured on the last `n_eval` rows, which the ranking
never saw. The side effect is KL(clean || ablated) on the shipped neutral prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmscope.datasets import shipped
from lmscope.engine.errors import InputError
from lmscope.engine.model import Model
from lmscope.engine.results import Result, Table
from lmscope.neurons import causal as nc


def agreement_rows() -> list[dict]:
    """The shipped agreement pairs."""
    return shipped.rows("singular_plural_agreement.jsonl")


@dataclass
class AgreementDemo(Result):
    """Result of `agreement_demo` (see the module docstring)."""

    model: str
    target: str
    baseline: str
    n_rank: int
    n_eval: int
    ranking: list[dict]  # [{"layer", "neuron", "attribution"}], best first
    clean_singular_ld: float  # mean LD on the held-out singular prompts (should be < 0)
    top1: nc.AblationEffect
    curve: nc.CurveResult

    def to_dict(self) -> dict:
        return {"model": self.model, "target": self.target, "baseline": self.baseline, "n_rank": self.n_rank,
                "n_eval": self.n_eval, "ranking": self.ranking, "clean_singular_ld": self.clean_singular_ld,
                "top1": self.top1.to_dict(), "curve": self.curve.to_dict()}

    def table(self) -> Table:
        """The ablation curve: top-k agreement neurons vs random ones on the held-out prompts."""
        t = self.curve.table()
        top = ", ".join(f"{r['layer']}.{r['neuron']}" for r in self.ranking[:5])
        return Table(t.columns, t.rows, formats=t.formats,
                     title=f"{self.model}: {self.curve.method} ablation of the top-k neurons (ranked by attribution "
                           f"to LD({self.target!r} - {self.baseline!r}) on {self.n_rank} plural prompts) vs "
                           f"{self.curve.n_random} random draws, {self.n_eval} held-out prompts",
                     notes=[f"top neurons: {top}",
                            f"held-out singular prompts: mean LD {self.clean_singular_ld:+.3f} (should be < 0)",
                            *t.notes])

    def tables(self) -> list[Table]:
        ranking = Table(["layer", "neuron", "attribution"], [[r["layer"], r["neuron"], r["attribution"]]
                                                             for r in self.ranking],
                        title="neurons by attribution, best first", formats={"attribution": "+.4g"}, max_rows=10)
        return [self.table(), ranking]


def agreement_demo(model: Model, *, n_rank: int = 20, n_eval: int = 20, ks=(1, 2, 5, 10, 20, 50),
                   n_random: int = 3, method: str = "zero", n_neutral: int = 16, seed: int = 0,
                   progress: bool = False) -> AgreementDemo:
    """Rank neurons by attribution to LD(" these" - " this") and ablate the top k on held-out
    plural prompts, next to k random neurons.

    Args:
        model: The model.
        n_rank: Rows used to rank neurons (the first ones).
        n_eval: Held-out rows ablations are measured on (the last ones).
        ks: Numbers of top neurons ablated together.
        n_random: Random draws per k (the control).
        method: "zero", "mean" or "resample" (mean/resample read the shipped corpus).
        n_neutral: Neutral prompts for the KL side effect (0: none).
        seed: Seed of the random neurons and of resampling.
        progress: Progress bar over the curve's runs.
    """

    ks = sorted({1, *(int(k) for k in ks)})
    if ks[0] < 1:
        raise InputError(f"ks must be positive, got {ks}.")
    rows = agreement_rows()
    if n_rank < 1 or n_eval < 1 or n_rank + n_eval > len(rows):
        raise InputError(f"n_rank + n_eval must be between 2 and {len(rows)} (the shipped rows), "
                         f"got {n_rank} + {n_eval}.")
    target, baseline = rows[0]["plural"], rows[0]["singular"]
    rank_p = [r["prompt_plural"] for r in rows[:n_rank]]
    held = rows[-n_eval:]
    eval_p = [r["prompt_plural"] for r in held]
    ref = None if method == "zero" else nc.reference_activations(model)
    scores = nc.attribute(model, rank_p, target=target, baseline=baseline, reference=ref)  # [layer, d_mlp]
    ranking = nc.top_neurons(scores, max(ks))
    neutral = shipped.neutral_prompts(n_neutral) if n_neutral else None
    curve = nc.ablation_curve(model, ranking, eval_p, target=target, baseline=baseline, ks=ks, method=method,
                              reference=ref, neutral=neutral, n_random=n_random, seed=seed, progress=progress)
    sing = nc.last_token_metrics(model, [r["prompt_singular"] for r in held], target=model.token_id(target),
                                 baseline=model.token_id(baseline))
    return AgreementDemo(
        model=model.name, target=target, baseline=baseline, n_rank=n_rank, n_eval=n_eval,
        ranking=[{"layer": L, "neuron": n, "attribution": float(scores[L, n])} for L, n in ranking],
        clean_singular_ld=float(sing["ld"].mean()), top1=curve.top[0], curve=curve)
