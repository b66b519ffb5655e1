"""Core commands: tour, models, info, run, generate."""

from __future__ import annotations

import click

from ._common import (
    OUT_DIR,
    SEED,
    Stages,
    check_layers,
    check_sites,
    console,
    device_option,
    dtype_option,
    emit_json,
    json_option,
    load_model,
    model_argument,
)


def _vector_from_artifact(path: str, layer: int | None, model):
    """One layer's direction of a saved vector (`Vector.load`): the only layer it holds, or `layer`."""
    from lmscope.engine.errors import InputError
    from lmscope.vectors.vector import Vector

    vec = Vector.load(path, model=model)
    held = ", ".join(map(str, vec.layers))
    if layer is None:
        if len(vec.layers) != 1:
            raise InputError(f"{path} holds vectors for layers {held}; pass --layer with one of them.")
        layer = vec.layers[0]
    elif layer % model.n_layers not in vec.layers:
        raise InputError(f"{path} has no vector for layer {layer} (it holds layers {held}); "
                         "pass --layer with one of them.")
    layer %= model.n_layers
    return vec[layer], layer


def _parse_clamp(spec: str):
    from lmscope.engine.errors import InputError
    from lmscope.engine.interventions import Set

    site, sep, value = spec.partition("=")
    if not sep:
        raise InputError(f"--clamp takes SITE=VALUE like 'layers.5.mlp.neurons[100]=8', got {spec!r}.")
    try:
        val = float(value)
    except ValueError:
        raise InputError(f"--clamp value {value!r} is not a number.") from None
    return Set(site=site.strip(), value=val)


@click.command()
@json_option
def models(as_json: bool) -> None:
    """List the embedded models and the converted models in the cache."""
    from lmscope.engine.loading import EMBEDDED, cache_dir, cached_models

    cached = {c["name"]: c for c in cached_models()}
    rows = [{"name": n, "embedded": True, "install": EMBEDDED[n][0], "cached": n in cached,
             "path": cached.get(n, {}).get("path")} for n in EMBEDDED]
    rows += [{"name": n, "embedded": False, "install": None, "cached": True, "path": c["path"]}
             for n, c in cached.items() if n not in EMBEDDED]
    if as_json:
        emit_json({"cache_dir": str(cache_dir()), "models": rows})
        return
    from rich.table import Table

    t = Table("name", "embedded", "cached", "path", title=f"models (cache: {cache_dir()})")
    for r in rows:
        t.add_row(r["name"], "yes" if r["embedded"] else "", "yes" if r["cached"] else "no", r["path"] or "")
    console().print(t)


@click.command()
@model_argument
@json_option
@device_option
def info(model_name: str, as_json: bool, device: str) -> None:
    """Family, layers, widths, vocabulary and site names of MODEL."""
    model = load_model(model_name, device)
    d = model.info()
    if as_json:
        emit_json(d)
        return
    from rich.table import Table

    t = Table("field", "value", title=model.name)
    for k, v in d.items():
        t.add_row(k, "\n".join(v) if isinstance(v, list) else str(v))
    console().print(t)


@click.command()
@model_argument
@click.argument("prompt")
@click.option("--top-k", "top_k", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--chat", is_flag=True, help="Apply the model's chat template.")
@json_option
@device_option
@dtype_option
def run(model_name: str, prompt: str, top_k: int, chat: bool, as_json: bool, device: str, dtype: str) -> None:
    """The next-token distribution of PROMPT."""
    model = load_model(model_name, device, dtype)
    res = model.run(prompt, chat=chat)
    top = res.top_k(model, top_k)
    if as_json:
        emit_json({"model": model.name, "prompt": prompt, "n_tokens": int(res.batch.input_ids.shape[1]), "top": top})
        return
    from rich.table import Table

    t = Table("rank", "token", "prob", "logit", title=f"{model.name}: next token after {prompt!r}")
    for i, r in enumerate(top, 1):
        t.add_row(str(i), repr(r["token"]), f"{r['prob']:.4f}", f"{r['logit']:.2f}")
    console().print(t)


@click.command()
@model_argument
@click.argument("prompt")
@click.option("--chat", is_flag=True, help="Apply the model's chat template.")
@click.option("--max-new-tokens", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--add-vector", "vector_file", type=click.Path(dir_okay=False), help="Vector artifact to add.")
@click.option("--layer", type=int, help="Layer whose resid_post gets the vector.")
@click.option("--scale", default=1.0, show_default=True, type=float, help="Coefficient of the vector.")
@click.option("--clamp", "clamps", multiple=True, help="SITE=VALUE, e.g. 'layers.5.mlp.neurons[100]=8'.")
@click.option("--sample", is_flag=True, help="Sample instead of greedy decoding.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--compare", is_flag=True, help="Also generate without the edits.")
@json_option
@device_option
@dtype_option
def generate(model_name, prompt, chat, max_new_tokens, vector_file, layer, scale, clamps, sample, seed, compare,
             as_json, device, dtype) -> None:
    """Generate from PROMPT, optionally steered (--add-vector) or with clamped units (--clamp)."""
    from lmscope.engine.interventions import Add

    if layer is not None and not vector_file:
        raise click.UsageError("--layer goes with --add-vector FILE.")
    edits = [_parse_clamp(c) for c in clamps]
    check_sites(model_name, "--clamp", [e.site for e in edits])
    check_layers(model_name, "--layer", layer)
    model = load_model(model_name, device, dtype)
    if vector_file:
        vec, layer = _vector_from_artifact(vector_file, layer, model)
        edits.append(Add(site=f"layers.{layer}.resid_post", vector=vec, scale=scale))
    kw = {"chat": chat, "max_new_tokens": max_new_tokens, "do_sample": sample, "seed": seed}
    out = model.generate(prompt, edits=edits, **kw)
    base = model.generate(prompt, **kw) if compare and edits else None
    if as_json:
        emit_json({"model": model.name, "prompt": prompt, "text": out.texts[0],
                   "edits": [str(e) for e in edits], "baseline": base.texts[0] if base else None})
        return
    from rich.markup import escape

    c = console()
    if base:
        c.print("[bold]baseline:[/bold]", escape(base.texts[0]))
    c.print("[bold]edited:[/bold]" if edits else "[bold]text:[/bold]", escape(out.texts[0]))


@click.command()
@model_argument
@click.option("--out", "out_dir", default="lmscope-tour", show_default=True, type=OUT_DIR,
              help="Folder for the figures and files the tour writes.")
@click.option("--only", multiple=True, help="Run only these steps (repeatable).")
@json_option
@device_option
def tour(model_name: str, out_dir: str, only: tuple[str, ...], as_json: bool, device: str) -> None:
    """A guided tour of lmscope on MODEL (default gemma-3-270m): the main job.

    A step that fails is reported on stderr and the others still run; the command then
    exits 1 with a summary of the failed steps."""
    import sys
    import time
    from pathlib import Path

    from rich.markup import escape
    from rich.table import Table

    from lmscope.engine.errors import InputError
    from lmscope.tour import (
        STEPS,
        TourContext,
        check_steps,
        failure_summary,
        run_tour,
    )

    try:
        check_steps(only)  # before the model load: a typo must not cost one
    except InputError as e:
        raise click.BadParameter(str(e), param_hint="--only") from None
    c = console()
    say = (lambda s: None) if as_json else (lambda s: c.print(escape(s)))

    def table(title, cols, rows):
        if as_json:
            return
        t = Table(*cols, title=title)
        for r in rows:
            t.add_row(*r)
        c.print(t)

    # the console shows the step headers; with --json (or stdout redirected) stderr does
    n_steps = len([k for k, _, _ in STEPS if not only or k in only])
    stage = Stages(1 + n_steps) if as_json or not sys.stdout.isatty() else None
    on_step = (lambda key, title: stage(f"{key}: {title.split('. ', 1)[-1]}")) if stage else None

    def on_error(step: str, message: str) -> None:
        click.echo(f"step {step} failed: {message}", err=True)

    t0 = time.perf_counter()
    if stage:
        stage(f"loading {model_name}")
    else:
        say(f"Loading {model_name} ...")
    model = load_model(model_name, device)
    say(f"Loaded {model!r} in {time.perf_counter() - t0:.1f} s")
    ctx = TourContext(Path(out_dir), say=say, table=table, on_error=on_error, on_step=on_step)
    res = run_tour(model, ctx, list(only) or None)
    if as_json:
        emit_json({"model": model.name, "out_dir": out_dir, "steps": res})
    else:
        say(f"\nFigures and files in {out_dir}/:")
        for key, r in res.items():
            if r["figures"]:
                say(f"  {key}: " + ", ".join(Path(f).name for f in r["figures"]))
        plain = [k for k, r in res.items() if not r["figures"] and "error_type" not in r]
        if plain:
            say("  no figure (the console output above is the result): " + ", ".join(plain))
    summary = failure_summary(res)
    if summary:
        debug = click.get_current_context().find_root().obj.get("debug")
        raise click.ClickException(summary + ("" if debug else " (rerun with --debug for the tracebacks)"))
