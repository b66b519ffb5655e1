"""The guided tour (`lmscope tour`): the main job on the embedded default model.

Each step is a function `(model, ctx) -> dict` that renders to the console and returns its
results for `--json`, with a `figures` list: the files it wrote into `ctx.out_dir` (empty for
the steps whose result is the console table itself). A step that raises does not stop the
tour: `run_tour` records its error, reports it through `ctx.on_error` and runs the next step;
`failed_steps` and `failure_summary` say what failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lmscope.engine.errors import InputError
from lmscope.engine.model import Model

log = logging.getLogger(__name__)


@dataclass
class TourContext:
    """Where the tour writes figures, and how it talks."""

    out_dir: Path
    say: Callable[[str], None] = print  # the CLI passes a rich console printer
    table: Callable[[str, list[str], list[list[str]]], None] | None = None
    results: dict = field(default_factory=dict)
    #: called as on_error(step, message) when a step raises (default: a logged error);
    #: the CLI prints one line on stderr
    on_error: Callable[[str, str], None] | None = None
    #: called as on_step(step, title) before each step runs (the CLI's stage lines)
    on_step: Callable[[str, str], None] | None = None


def step_next_token(model: Model, ctx: TourContext) -> dict:
    prompt = "The capital of Poland is"
    top = model.run(prompt).top_k(model, 5)
    rows = [[str(i + 1), repr(t["token"]), f"{t['prob']:.3f}"] for i, t in enumerate(top)]
    if ctx.table:
        ctx.table(f"Next token after {prompt!r}", ["rank", "token", "prob"], rows)
    return {"prompt": prompt, "top": top, "figures": []}


def step_steer(model: Model, ctx: TourContext) -> dict:
    """A contrastive steering vector (positive - negative sentences of the shipped sentiment
    set), added during generation, next to a random direction of the same norm."""
    from lmscope.datasets.contrast import load_contrast
    from lmscope.vectors.steering import make_task, random_vector, steer_edits
    from lmscope.vectors.vector import extract

    layer = round(0.78 * (model.n_layers - 1))  # gemma-3-270m: 13 of 0..17, where the sweep recommends 13-14
    coef = 0.25  # relative to the typical residual norm at that layer
    v = extract(model, load_contrast("sentiment").split(0.25, 0)[0].head(24), layers=(layer,))
    prompt = "The weather today is"
    arms = {"baseline": [], "vector": steer_edits(v, layer, coef),
            "random": steer_edits(random_vector(v, layer, seed=0), layer, coef)}
    texts = {k: model.generate(prompt, edits=e, max_new_tokens=16).texts[0] for k, e in arms.items()}
    metric = make_task("sentiment", n_eval=8).absent  # 8 neutral prompts, log p(positive)/p(negative) words
    scores = {k: metric(model, e)["score"] for k, e in arms.items()}
    ctx.say(f"Sentiment vector (mean positive - mean negative, last token) at layers.{layer}.resid_post, "
            f"coefficient {coef} of the residual norm:")
    ctx.say("  in token space: " + " ".join(repr(t["token"]) for t in v.top_tokens(model, layer, k=6)["top"]))
    for k, t in texts.items():
        ctx.say(f"  {k + ':':10s}{prompt}{t}".replace("\n", "⏎"))
    ctx.say(f"  {metric.name} on 8 neutral prompts: " + ", ".join(f"{k} {v:+.2f}" for k, v in scores.items()))
    return {"prompt": prompt, "layer": layer, "coef": coef, "generations": texts, "sentiment_score": scores,
            "figures": []}


def step_function_vector(model: Model, ctx: TourContext) -> dict:
    """A function vector: the antonym task read from 5-shot prompts, added to zero-shot ones."""
    from lmscope.function_vectors import core as F

    cfg = F.FVConfig(n_prompts=16, n_test=16)
    data = F.prepare(model, "antonym", cfg)
    fv = F.make(model, data, cfg)
    mid, last = round(0.6 * (model.n_layers - 1)), model.n_layers - 1  # gemma-3-270m: 10 and 17
    sweep = F.evaluate(model, fv, data, layers=[mid, last])
    rows = [["zero-shot", f"{sweep.zero_shot:.2f}"], ["5-shot", f"{sweep.few_shot:.2f}"]]
    rows += [[f"zero-shot + vector at layer {lay}", f"{acc:.2f}"] for lay, acc in zip(sweep.layers, sweep.accuracy, strict=True)]
    rows += [[f"zero-shot + random vector at layer {lay}", f"{acc:.2f}"] for lay, acc in zip(sweep.layers, sweep.random, strict=True)]
    if ctx.table:
        ctx.table(f"Antonyms, {len(data.test_ids)} held-out words (top-1 accuracy)", ["prompt", "accuracy"], rows)
    top = model.run("fast ->", edits=[fv.edit(mid, positions="last")]).top_k(model, 3)
    ctx.say(f"  'fast ->' with the vector at layer {mid}: " + ", ".join(f"{t['token']!r} {t['prob']:.2f}" for t in top))
    return {"task": "antonym", **sweep.summary(), "layers": sweep.layers, "accuracy": sweep.accuracy,
            "random": sweep.random, "fast": top, "figures": []}

def step_logit_lens(model: Model, ctx: TourContext) -> dict:
    """Logit lens: every layer's residual read through the final norm and the unembedding."""
    from lmscope.lens.logit import logit_lens
    from lmscope.plots.lens_plots import lens_html, plot_lens_heatmap, plot_target_probs

    prompt, targets = "The capital of Poland is", [" Warsaw", " Poland"]
    r = logit_lens(model, prompt, targets=targets, top_k=5)
    rows = []
    for i, layer in enumerate(r.layers):
        if i % max(1, len(r.layers) // 8) and i != len(r.layers) - 1:
            continue
        probs = "  ".join(f"{t!r} {float(r.target_probs[i, -1, j]):.3f} (#{int(r.target_ranks[i, -1, j])})"
                          for j, t in enumerate(r.targets))
        rows.append([str(layer), repr(r.top_tokens[i][-1][0]), f"{float(r.top_probs[i, -1, 0]):.3f}", probs])
    if ctx.table:
        ctx.table(f"Logit lens at the last position of {prompt!r}", ["layer", "top token", "prob", "targets"], rows)
    entry = r.entry_layer(" Warsaw")
    ctx.say(f"  ' Warsaw' enters the top-{r.top_k} at layer {entry} and ends top-1 "
            f"with p={float(r.target_probs[-1, -1, 0]):.3f}" if entry is not None else "  ' Warsaw' never enters the top-k")
    figs = [plot_lens_heatmap(r, ctx.out_dir / "logit_lens.png"), plot_target_probs(r, ctx.out_dir / "logit_lens_targets.png"),
            lens_html(r, ctx.out_dir / "logit_lens.html")]
    return {"prompt": prompt, "entry_layer": entry, "final_top": r.top_tokens[-1][-1][0],
            "target_probs_last_position": {t: [float(x) for x in r.target_probs[:, -1, j]] for j, t in enumerate(r.targets)},
            "figures": [str(f) for f in figs]}


def step_patchscope(model: Model, ctx: TourContext) -> dict:
    """Patchscope: a name's hidden state, patched into "x" of a few-shot description prompt."""
    from lmscope.inspect.patchscopes import patchscope

    source, layer = "Barack Obama", max(1, model.n_layers // 4)  # gemma-3-270m: layer 4
    r = patchscope(model, source, source_layer=layer, target="description", max_new_tokens=16)
    ctx.say(f"State of {r.source_token!r} ({source!r}, layers.{layer}.resid_post) patched into 'x' of:")
    ctx.say(f"  {r.target_prompt!r}")
    ctx.say(f"  patched:   {r.text!r}")
    ctx.say(f"  unpatched: {r.text_unpatched!r}   (the same prompt with a literal 'x')")
    return {**r.to_dict(), "figures": []}


PLURAL_PROMPTS = [
    "There are three apples on the table. I will eat",
    "The farmer has two dogs. Every morning he feeds",
    "She bought some new shoes and wants to wear",
    "Look at all those birds in the sky. I love",
]


def step_neuron(model: Model, ctx: TourContext) -> dict:
    """A neuron view: LM-head decoding, max-activating text, and an ablation next to a control."""
    from lmscope.neurons.atlas import decode_neuron
    from lmscope.neurons.causal import ablate
    from lmscope.neurons.recording import RecordConfig, record

    # gemma-3-270m's top "these" neuron (found by attribution, `lmscope neuron agreement`);
    # on another model, the middle layer's neuron 0 (still a valid view, just not a curated one).
    layer, n = (10, 1624) if model.name == "gemma-3-270m" else (model.n_layers // 2, 0)
    dec = decode_neuron(model, layer, n, k=6)
    ctx.say(f"Neuron {layer}.{n}: its output weights through the final norm and the unembedding")
    ctx.say("  promotes: " + " ".join(repr(t) for t, _ in dec["out"]))
    rec = record(model, f"layers.{layer}.mlp.neurons[{n}]", config=RecordConfig(max_tokens=2000))
    examples = rec.examples(layer, n, model.tokenizer)  # highest first: the HTML page shows all, the console 3
    stats = rec.neuron_stats(layer, n)
    ex = examples[:3]
    ctx.say(f"  fires most on ({rec.n_tokens} tokens of the shipped corpus; [[max]] marked):")
    for e in ex:
        toks = list(e.tokens)
        toks[e.max_index] = f"[[{toks[e.max_index]}]]"
        ctx.say(f"    {e.max_act:6.2f}  {''.join(toks)!r}")
    from lmscope.plots.neuron_plots import write_examples_html

    html = write_examples_html(ctx.out_dir / f"neuron_{layer}_{n}.html", f"{model.name} layers.{layer}.mlp.neurons[{n}]",
                               [e.to_dict() for e in examples], stats=stats, decoding=dec)
    control = (layer, (n + model.d_mlp // 2) % model.d_mlp)  # another neuron of the same layer
    effects = {}
    for name, neuron in (("neuron", (layer, n)), ("control", control)):
        eff = ablate(model, [neuron], PLURAL_PROMPTS, target=" these", baseline=" this")
        effects[name] = eff.to_dict()
        ctx.say(f"  zero-ablating {neuron[0]}.{neuron[1]} ({name}): logit(' these') - logit(' this') "
                f"{eff.ld_before:+.2f} -> {eff.ld_after:+.2f}")
    return {"layer": layer, "neuron": n, "decoding": dec, "examples": [e.to_dict() for e in ex],
            "stats": stats, "html": str(html), "ablation": effects, "figures": [str(html)]}


STEPS: list[tuple[str, str, Callable[[Model, TourContext], dict]]] = [
    ("next_token", "1. The next-token distribution", step_next_token),
    ("logit_lens", "2. The logit lens: what each layer would predict", step_logit_lens),
    ("patchscope", "3. A Patchscope: the model describes a hidden state", step_patchscope),
    ("neuron", "4. One neuron: decoding, max-activating text, ablation", step_neuron),
    ("steer", "5. A steering vector, next to a random direction", step_steer),
    ("function_vector", "6. A function vector: antonyms without examples", step_function_vector),
]


def check_steps(only: list[str] | tuple[str, ...] | None) -> None:
    """Raise InputError when `only` names a step that does not exist (before any model load)."""
    known = [k for k, _, _ in STEPS]
    unknown = [k for k in only or () if k not in known]
    if unknown:
        raise InputError(f"Unknown tour step(s) {', '.join(unknown)}; the steps are {', '.join(known)}.")


def run_tour(model: Model, ctx: TourContext, only: list[str] | None = None) -> dict:
    """Run every step (or `only` those named); returns {step: result}.

    A step that raises is reported through `ctx.on_error` and recorded as
    {"error", "error_type", "figures": [], "seconds"}; the other steps still run.
    """
    check_steps(only)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    for key, title, fn in STEPS:
        if only and key not in only:
            continue
        if ctx.on_step is not None:
            ctx.on_step(key, title)
        ctx.say(f"\n== {title} ==")
        t0 = time.perf_counter()
        try:
            res = fn(model, ctx)
        except Exception as e:  # noqa: BLE001 - one failed step must not hide the others
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.debug("Tour step %s failed", key, exc_info=True)  # --debug shows the traceback
            res = {"error": msg, "error_type": type(e).__name__, "figures": []}
            if ctx.on_error is not None:
                ctx.on_error(key, f"{type(e).__name__}: {msg}")
            else:
                log.error("Tour step %s failed: %s: %s", key, type(e).__name__, msg)
        missing = [f for f in res.setdefault("figures", []) if not Path(f).is_file()]
        if missing:
            log.warning("Tour step %s lists figures it did not write: %s", key, ", ".join(missing))
        res["seconds"] = round(time.perf_counter() - t0, 2)
        ctx.results[key] = res
    return ctx.results


def failed_steps(results: dict) -> list[str]:
    """The steps of a `run_tour` result that raised, in tour order."""
    return [k for k, r in results.items() if "error_type" in r]


def failure_summary(results: dict) -> str | None:
    """'2 of 6 steps failed: patchscope, neuron', or None when every step ran."""
    failed = failed_steps(results)
    if not failed:
        return None
    return f"{len(failed)} of {len(results)} step{'s' if len(results) != 1 else ''} failed: {', '.join(failed)}"
