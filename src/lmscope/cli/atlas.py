"""`lmscope atlas ...`: every neuron decoded through the LM head, searchable; clamping."""

from __future__ import annotations

import dataclasses

import click

from ._common import (
    OUT_FILE,
    PLOT_FILE,
    SEED,
    Stages,
    check_layers,
    check_neurons,
    console,
    device_option,
    dtype_option,
    emit_json,
    json_option,
    load_model,
    model_argument,
    model_name_argument,
    neuron_names,
    progress_enabled,
    resolve_neurons,
    shard_options,
)
from .config_options import Group, config_options
from .params import LAYERS, NEURONS


def _fmt(tokens, n: int = 8) -> str:
    return " ".join(repr(t) for t, _ in (tokens or [])[:n]) if tokens else "-"


def _notify(message: str) -> None:
    """The atlas's status lines (building where, how long): stderr, whatever stdout carries."""
    click.echo(message, err=True)


def _open(model, out, k: int):
    from lmscope.neurons.atlas import load_atlas

    return load_atlas(model, path=out, k=k, progress=progress_enabled(), notify=_notify)


@click.group(cls=Group)
def atlas() -> None:
    """Neuron atlas: every MLP neuron's weights read as tokens through the LM head (Davies 2025)."""


@atlas.command()
@model_argument
@config_options("lmscope.neurons.atlas:AtlasConfig", exclude={"kinds", "chunk_mib", "block"},
                types={"k": click.IntRange(1, 1000)})
@click.option("--out", type=OUT_FILE, help="Atlas file (default: the lmscope cache).")
@shard_options
@json_option
@device_option
@dtype_option
def build(model_name, config, out, shards, as_json, device, dtype) -> None:
    """Decode every neuron and write the SQLite atlas.

    Every neuron of MODEL: input rows (gate, up) and output column (top and bottom tokens)
    through the final norm and the unembedding, stored with a full-text index."""
    from lmscope.neurons.atlas import build_atlas

    check_layers(model_name, "--layers", config.layers)
    stage = Stages(2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device, dtype)
    stage(f"building the atlas of {model.name}")
    with build_atlas(model, config, path=out, progress=progress_enabled(), notify=_notify, shards=shards) as a:
        m = a.meta
        info = {"model": model.name, "path": str(a.path), "k": config.k, "kinds": m["kinds"], "n_layers": len(m["layers"]),
                "d_mlp": m["d_mlp"], "n_neurons": len(m["layers"]) * m["d_mlp"],
                "decode_seconds": m["decode_seconds"], "write_seconds": m["write_seconds"],
                "gflop": m["flops"] / 1e9, "gflops_per_s": m["flops"] / 1e9 / max(m["decode_seconds"], 1e-9),
                "search": m.get("search", {"method": "exact"})}
    if as_json:
        emit_json(info)
        return
    console().print(f"[bold]{model.name}[/bold]: {info['n_neurons']} neurons x {len(info['kinds'])} kinds decoded "
                    f"in {info['decode_seconds']:.1f} s ({info['gflops_per_s']:.0f} GFLOP/s), written in "
                    f"{info['write_seconds']:.1f} s to {info['path']}")


@atlas.command()
@model_name_argument
@click.argument("query")
@click.option("--kind", default="any", show_default=True,
              type=click.Choice(["any", "in", "out", "out_bottom", "in_gate", "in_up"]),
              help="Which decoded weights to search (any = in_gate, in_up, out).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10000))
@click.option("--atlas", "path", type=click.Path(exists=True, dir_okay=False),
              help="An atlas file built by `atlas build --out` (default: the cache, built on first use).")
@json_option
@device_option
def search(model_name, query, kind, limit, path, as_json, device) -> None:
    """Neurons whose top tokens match QUERY.

    Matches normalised token text (case, leading space markers) and simple plurals;
    several words match any of them. Builds the atlas on first use; once built, a search reads
    only the atlas file (tokens are stored as text), without loading the model."""
    from pathlib import Path

    from lmscope.neurons.atlas_db import Atlas, default_path

    file = Path(path) if path else default_path(model_name)
    a = Atlas.open(file) if file.is_file() else None
    if a is not None and a.meta["model"] != model_name:  # another name for it, or another model:
        a.close()  # the model decides (and refuses an atlas made for another one)
        a = None
    if a is None:
        model = load_model(model_name, device)
        a = _open(model, path, 20)
    with a:
        hits = a.search(query, kind=kind, limit=limit)
        where, name = str(a.path), a.meta["model"]
    if as_json:
        emit_json({"model": name, "query": query, "kind": kind, "atlas": where, "results": hits})
        return
    from rich.table import Table

    t = Table("neuron", "kind", "rank", "token", "score", "matches", "top tokens",
              title=f"{name}: neurons for {query!r}")
    for h in hits:
        t.add_row(f"{h['layer']}.{h['neuron']}", h["kind"], str(h["rank"]), repr(h["token"]),
                  f"{h['score']:.2f}", str(h["n_match"]), " ".join(repr(x) for x in h["top"][:8]))
    console().print(t)


@atlas.command()
@model_name_argument
@click.argument("neuron", type=NEURONS)
@click.option("--k", default=10, show_default=True, type=click.IntRange(1, 1000))
@json_option
@device_option
def neuron(model_name, neuron, k, as_json, device) -> None:
    """Decode one neuron L.N through the LM head."""
    from lmscope.neurons.atlas import decode_neuron

    if len(neuron) != 1:
        raise click.BadParameter(f"names {len(neuron)} neurons; name one, like 5.123.", param_hint="NEURON")
    check_neurons(model_name, "NEURON", neuron)
    model = load_model(model_name, device)
    ((layer, n),) = resolve_neurons(model, neuron)
    d = decode_neuron(model, layer, n, k=k)
    if as_json:
        emit_json({"model": model.name, "layer": layer, "neuron": n,
                   **{kind: [{"token": t, "score": s} for t, s in v] if v else None for kind, v in d.items()}})
        return
    from rich.table import Table

    t = Table("kind", "tokens (best first)", title=f"{model.name}: neuron {layer}.{n}")
    for kind, v in d.items():
        t.add_row(kind, _fmt(v, k))
    console().print(t)


@atlas.command()
@click.argument("model_a")
@click.argument("model_b", required=False)
@click.option("--layers", type=LAYERS, help="Layers compared (default: all).")
@click.option("--perturb", type=click.FloatRange(0), help="Without MODEL_B: compare MODEL_A with a copy whose "
              "MLP weights get Gaussian noise of this many standard deviations (seeded by --seed).")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--plot", type=PLOT_FILE, help="Write a PNG of the per-layer shares.")
@json_option
@device_option
def compare(model_a, model_b, layers, perturb, seed, plot, as_json, device) -> None:
    """Share of neurons with the same top token.

    MODEL_A and MODEL_B are models of one architecture and tokenizer, or .sqlite atlases;
    or one model and --perturb NOISE."""
    from lmscope.neurons.atlas import compare_atlases, perturb_mlp

    def side(spec):
        return spec if spec.endswith(".sqlite") else load_model(spec, device)

    if (model_b is None) == (perturb is None):
        raise click.UsageError("Pass MODEL_B, or --perturb NOISE to compare MODEL_A with a perturbed copy.")
    for spec in (model_a, model_b):
        check_layers(spec, "--layers", layers)
    a = side(model_a)
    if model_b is None:
        if isinstance(a, str):
            raise click.UsageError("--perturb needs a model, not an atlas file.")
        b = perturb_mlp(a, noise=perturb, seed=seed)
    else:
        b = side(model_b)
    res = compare_atlases(a, b, layers=layers, progress=progress_enabled())
    if plot:
        from lmscope.plots.neuron_plots import plot_atlas_comparison

        plot_atlas_comparison(res, plot)
    if as_json:
        emit_json(res)
        return
    from rich.table import Table

    t = Table("kind", "overall", "per layer", title=f"same top token: {res['a']} vs {res['b']}")
    for kind, r in res["kinds"].items():
        t.add_row(kind, f"{r['overall']:.3f}", " ".join(f"{x:.2f}" for x in r["per_layer"]))
    console().print(t)


@atlas.command()
@model_name_argument
@click.argument("neurons", type=NEURONS)
@click.option("--value", type=float, help="Clamp value (default: --times x the natural max).")
@click.option("--times", default=10.0, show_default=True, help="Without --value: multiple of the natural max.")
@click.option("--prompt", "prompts", multiple=True, help="Prompt (repeatable; default: the concept's prompt).")
@click.option("--concept", help="Concept of lmscope/datasets/data/concepts.jsonl whose keywords are counted.")
@click.option("--n", "n", default=1, show_default=True, type=click.IntRange(1, 100),
              help="Generations per prompt (n > 1 samples with --seed).")
@config_options("lmscope.neurons.clamp:ClampConfig", exclude={"do_sample", "temperature", "n_samples"},
                types={"max_new_tokens": click.IntRange(1, 1024)}, defaults={"max_new_tokens": 32, "chat": False})
@click.option("--plot", type=PLOT_FILE, help="Write a PNG of rates and probability ratios.")
@json_option
@device_option
def clamp(model_name, neurons, value, times, prompts, concept, n, config, plot, as_json, device) -> None:
    """Generate with neurons clamped, vs a control.

    NEURONS is L.N[,L.N2...]. Each is set to --value (or --times x its natural max on
    neutral prompts) at every position; a random neuron of the same layer gets the same
    value as the control."""
    from lmscope.datasets.shipped import neutral_prompts
    from lmscope.neurons.clamp import clamp_experiment, load_concept, natural_activation

    cons = load_concept(concept) if concept else None
    prompts = list(prompts) or ([cons["prompt"]] if cons else [])
    if not prompts:
        raise click.UsageError("Pass --prompt TEXT or --concept NAME.")
    check_neurons(model_name, "NEURONS", neurons)
    cfg = dataclasses.replace(config, do_sample=n > 1, n_samples=n)
    stage = Stages(3)
    stage(f"loading {model_name}")
    model = load_model(model_name, device)
    sel = resolve_neurons(model, neurons)
    stage(f"measuring the natural activation of {neuron_names(sel)} on {16 + len(prompts)} prompts")
    nat = natural_activation(model, sel, neutral_prompts(16) + prompts, chat=cfg.chat)
    values = [value] * len(sel) if value is not None else [times * max(s["max"], 1e-3) for s in nat]
    stage(f"generating {n} x {len(prompts)} texts with the neurons clamped, unclamped and with a control neuron")
    rep = clamp_experiment(model, sel, value=values, prompts=prompts, keywords=cons["keywords"] if cons else (),
                           config=cfg)
    if plot:
        from lmscope.plots.neuron_plots import plot_clamp

        plot_clamp(rep, plot)
    if as_json:
        emit_json({"model": model.name, "natural": nat, **rep.to_dict()})
        return
    from rich.markup import escape

    c = console()
    for s, v in zip(nat, values, strict=True):
        c.print(f"neuron {s['layer']}.{s['neuron']}: natural max {s['max']:.3f} -> clamped to {v:.3f}")
    for name, arm in rep.arms.items():
        who = ", ".join(f"{L}.{x}" for L, x in arm.neurons) or "no edit"
        rate = f", concept in {arm.concept_rate:.0%} of generations" if arm.concept_rate is not None else ""
        prob = f", p(concept next) {arm.concept_prob:.2e} (x{rep.ratio(name):.1f})" if arm.concept_prob else ""
        c.print(f"[bold]{name}[/bold] ({who}){rate}{prob}")
        for text in arm.texts:
            c.print("   ", escape(text.replace("\n", " ")))
