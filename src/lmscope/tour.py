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
XX at layers.{layer}.resid_post, every position:")
    ctx.say(f"  baseline: {prompt}{base.texts[0]}")
    ctx.say(f"  steered:  {prompt}{steered.texts[0]}")
    return {"prompt": prompt, "layer": layer, "scale": 1.0, "baseline": base.texts[0], "steered": steered.texts[0]}


STEPS: list[tuple[str, str, Callable[[Model, TourContext], dict]]] = [
    ("next_token", "1. The next-token distribution", step_next_token),
    ("steer", "2. Steering one generation", step_steer),
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
