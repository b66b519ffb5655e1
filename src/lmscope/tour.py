"""The guided tour (`lmscope tour`): the main job on the embedded default model.

Each step is a function `(model, ctx) -> dict` that renders to the console and returns its
results for `--json`. Steps whose optional module is missing are skipped with a note.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .interventions import Add
from .models import Model

log = logging.getLogger(__name__)


@dataclass
class TourContext:
    """Where the tour writes figures, and how it talks."""

    out_dir: Path
    say: Callable[[str], None] = print  # the CLI passes a rich console printer
    table: Callable[[str, list[str], list[list[str]]], None] | None = None
    results: dict = field(default_factory=dict)


def step_next_token(lm: Model, ctx: TourContext) -> dict:
    prompt = "The capital of Poland is"
    top = lm.run(prompt).top_k(lm, 5)
    rows = [[str(i + 1), repr(t["token"]), f"{t['prob']:.3f}"] for i, t in enumerate(top)]
    if ctx.table:
        ctx.table(f"Next token after {prompt!r}", ["rank", "token", "prob"], rows)
    return {"prompt": prompt, "top": top}


def actadd_vector(lm: Model, layer: int, plus: str, minus: str) -> torch.Tensor:
    """ActAdd (Turner et al. 2023): the difference of two prompts' last-token residuals."""
    res = lm.run([plus, minus], capture={f"layers.{layer}.resid_post": "last"}, logits=None)
    acts = res.cache[f"layers.{layer}.resid_post"].float()
    return acts[0] - acts[1]


def step_steer(lm: Model, ctx: TourContext) -> dict:
    layer = lm.n_layers // 3
    v = actadd_vector(lm, layer, " Love", " Hate")
    prompt = "I think that my neighbour"
    edit = Add(site=f"layers.{layer}.resid_post", vector=v, scale=1.0)
    base = lm.generate(prompt, max_new_tokens=24)
    steered = lm.generate(prompt, edits=[edit], max_new_tokens=24)
    ctx.say(f"ActAdd (' Love' - ' Hate') added at layers.{layer}.resid_post, every position:")
    ctx.say(f"  baseline: {prompt}{base.texts[0]}")
    ctx.say(f"  steered:  {prompt}{steered.texts[0]}")
    return {"prompt": prompt, "layer": layer, "scale": 1.0, "baseline": base.texts[0], "steered": steered.texts[0]}


PLURAL_PROMPTS = [
    "There are three apples on the table. I will eat",
    "The farmer has two dogs. Every morning he feeds",
    "She bought some new shoes and wants to wear",
    "Look at all those birds in the sky. I love",
]


def step_neuron(lm: Model, ctx: TourContext) -> dict:
    """A neuron view: LM-head decoding, max-activating text, and an ablation next to a control."""
    from .atlas import decode_neuron
    from .neuron_causal import ablate
    from .neurons import RecordConfig, record

    # gemma-3-270m's top "these" neuron (found by attribution, `lmscope neuron agreement`);
    # on another model, the middle layer's neuron 0 (still a valid view, just not a curated one).
    layer, n = (10, 1624) if lm.name == "gemma-3-270m" else (lm.n_layers // 2, 0)
    dec = decode_neuron(lm, layer, n, k=6)
    ctx.say(f"Neuron {layer}.{n}: its output weights through the final norm and the unembedding")
    ctx.say("  promotes: " + " ".join(repr(t) for t, _ in dec["out"]))
    rec = record(lm, f"layers.{layer}.mlp.neurons[{n}]", config=RecordConfig(max_tokens=2000))
    ex = rec.examples(layer, n, lm.tokenizer, k=3)
    ctx.say(f"  fires most on ({rec.n_tokens} tokens of the shipped corpus; [[max]] marked):")
    for e in ex:
        toks = list(e.tokens)
        toks[e.max_index] = f"[[{toks[e.max_index]}]]"
        ctx.say(f"    {e.max_act:6.2f}  {''.join(toks)!r}")
    from .plots.neuron_plots import write_examples_html

    html = write_examples_html(ctx.out_dir / f"neuron_{layer}_{n}.html", f"{lm.name} layers.{layer}.mlp.neurons[{n}]",
                               [e.to_dict() for e in rec.examples(layer, n, lm.tokenizer)],
                               stats=rec.neuron_stats(layer, n), decoding=dec)
    control = (layer, (n + lm.d_mlp // 2) % lm.d_mlp)  # another neuron of the same layer
    effects = {}
    for name, neuron in (("neuron", (layer, n)), ("control", control)):
        eff = ablate(lm, [neuron], PLURAL_PROMPTS, target=" these", baseline=" this")
        effects[name] = eff.to_dict()
        ctx.say(f"  zero-ablating {neuron[0]}.{neuron[1]} ({name}): logit(' these') - logit(' this') "
                f"{eff.ld_before:+.2f} -> {eff.ld_after:+.2f}")
    return {"layer": layer, "neuron": n, "decoding": dec, "examples": [e.to_dict() for e in ex],
            "stats": rec.neuron_stats(layer, n), "html": str(html), "ablation": effects}


STEPS: list[tuple[str, str, Callable[[Model, TourContext], dict]]] = [
    ("next_token", "1. The next-token distribution", step_next_token),
    ("steer", "2. Steering one generation", step_steer),
    ("neuron", "3. One neuron: decoding, max-activating text, ablation", step_neuron),
]


def run_tour(lm: Model, ctx: TourContext, only: list[str] | None = None) -> dict:
    """Run every step (or `only` those named); returns {step: result}."""
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    for key, title, fn in STEPS:
        if only and key not in only:
            continue
        ctx.say(f"\n== {title} ==")
        t0 = time.perf_counter()
        ctx.results[key] = fn(lm, ctx)
        ctx.results[key]["seconds"] = round(time.perf_counter() - t0, 2)
    return ctx.results
