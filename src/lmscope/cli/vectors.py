"""`lmscope vector ...`: make, sweep, verify, apply, info, tokens, algebra (steering vectors)."""

from __future__ import annotations

import dataclasses

import click

from ._common import (
    OUT_DIR,
    OUT_FILE,
    PLOT_FILE,
    SEED,
    Stages,
    check_layers,
    console,
    device_option,
    dtype_option,
    emit_json,
    json_option,
    load_model,
    model_argument,
    progress_enabled,
    write_json,
)
from .config_options import Group, config_options

chat_option = click.option("--chat/--no-chat", default=None,
                           help="Chat template (default: on for refusal/sycophancy data and tasks, else off).")
task_option = click.option("--task", type=click.Choice(["refusal", "sycophancy", "sentiment", "weddings", "loglik"]),
                           help="Behaviour to score (default: the dataset's own; loglik for your files).")
data_option = click.option("--data", "data", help="Dataset name (refusal, sentiment, ...) or JSONL file "
                                                  "(default: the vector's own dataset).")


def _dataset_default_chat(name: str, model) -> bool:
    from lmscope.vectors.steering import CHAT_TASKS, default_task

    return default_task(name) in CHAT_TASKS and bool(getattr(model.tokenizer, "chat_template", None))


def _task_for(model, vector, data: str | None, task: str | None, chat: bool | None, n_eval: int):
    """The task to score, on the held-out split recorded in the vector (so the items scored
    were not used to build it)."""
    from lmscope.datasets.contrast import load_contrast, resolve_name
    from lmscope.vectors.steering import default_task, make_task

    src = data or resolve_name(str(vector.meta.get("dataset", ""))) or vector.meta.get("dataset_source") or None
    contrast = load_contrast(src) if src else None
    name = task or default_task(contrast.name if contrast else "")
    split = vector.meta.get("split", {})
    if chat is None and name == "loglik":
        chat = bool(vector.meta.get("chat", False))
    if chat is None and name in ("refusal", "sycophancy") and not getattr(model.tokenizer, "chat_template", None):
        chat = False
    return make_task(name, data=contrast, held_out=split.get("held_out", 0.25), seed=split.get("seed", 0),
                     n_eval=n_eval, chat=chat)


def _record(vector, path: str, key: str, result: dict) -> None:
    ev = dict(vector.meta.get("evaluation", {}))
    ev[key] = result
    vector.meta["evaluation"] = ev
    vector.save(path)


def _table(title: str, cols: list[str], rows: list[list]) -> None:
    from rich.table import Table

    t = Table(*cols, title=title)
    for r in rows:
        t.add_row(*[f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v)) for v in r])
    console().print(t)


@click.group(cls=Group)
def vector() -> None:
    """Steering vectors: make, sweep, verify, apply, info, tokens, algebra."""


@vector.command()
@model_argument
@click.option("--data", "data", required=True, help="Dataset name (refusal, refusal_completions, sycophancy, "
                                                    "sentiment, truthfulness, weddings) or a JSONL file.")
@config_options("lmscope.vectors.vector:ExtractConfig", exclude={"chat"},
                types={"site": click.Choice(["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]),
                       "batch_size": click.IntRange(1, 1024)})
@chat_option
@click.option("--held-out", default=0.25, show_default=True, type=click.FloatRange(0.01, 0.99, min_open=False))
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the train/held-out split.")
@click.option("--limit", type=click.IntRange(2, None), help="Use only the first N items (quick runs).")
@click.option("--out", "out", required=True, type=OUT_FILE, help="Vector file (.safetensors).")
@click.option("--plot", type=PLOT_FILE, help="PNG of the per-layer norm and separation.")
@json_option
@device_option
@dtype_option
def make(model_name, data, config, chat, held_out, seed, limit, out, plot, as_json, device, dtype) -> None:
    """Extract a contrastive vector at every layer (one pass) and save it with a sidecar."""
    from lmscope.datasets.contrast import load_contrast
    from lmscope.vectors.vector import best_separating_layer, make_vector

    contrast = load_contrast(data)  # a bad name or file fails before the model loads
    if limit:
        contrast = contrast.head(limit)
    check_layers(model_name, "--layers", config.layers)
    stage = Stages(2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device, dtype)
    chat = _dataset_default_chat(contrast.name, model) if chat is None else chat
    cfg = dataclasses.replace(config, chat=chat)
    method, position, site = cfg.method, cfg.position, cfg.site
    stage(f"recording {site} over the {len(contrast)} pairs of {contrast.name}: the {method} vector from "
          f"{1 - held_out:.0%} of them, its per-layer separation on the rest")
    vec, _ = make_vector(model, contrast, cfg, held_out=held_out, seed=seed, progress=progress_enabled())
    path = vec.save(out)
    fig = None
    if plot:
        from lmscope.plots.vector_plots import plot_layers

        fig = plot_layers(vec, plot)
    sep = vec.meta["evaluation"]["separation"]
    best = best_separating_layer(sep, 0.1, 0.85, model.n_layers)
    info = vec.info()
    if as_json:
        emit_json({"path": path, "model": model.name, "dataset": contrast.name, "method": method, "position": position,
                   "chat": chat, "balance": vec.meta["balance"], "site": site, "layers": vec.layers,
                   "n_train": vec.meta["split"]["n_train"],
                   "n_test": vec.meta["split"]["n_test"], "dataset_sha256": vec.meta["dataset_sha256"],
                   "norm": info["norm"], "relative_norm": info["relative_norm"], "separation": sep,
                   "best_separating_layer": best, "plot": fig})
        return
    _table(f"{contrast.name} -> {path} ({method}, {position}, chat={chat})",
           ["layer", "|v|", "|v|/resid", "held-out AUC", "pair acc"],
           [[k, info["norm"][k], info["relative_norm"].get(k), sep[str(k)]["auc"], sep[str(k)]["pair_acc"]]
            for k in vec.layers])
    console().print(f"best separating layer (10%..85% depth): {best}. Next: lmscope vector sweep {model_name} {path}")


@vector.command()
@model_argument
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@data_option
@task_option
@chat_option
@config_options("lmscope.vectors.steering:SweepConfig", exclude={"relative", "n_gen", "random_checks", "seed"},
                types={"gen_tokens": click.IntRange(0, 256)})
@click.option("--raw", is_flag=True, help="Coefficients multiply the raw vector instead of the typical residual "
                                          "norm at the layer.")
@click.option("--n-eval", default=16, show_default=True, type=click.IntRange(1, 1000))
@click.option("--out", "out", type=OUT_DIR, help="Folder for sweep.json and sweep.png.")
@click.option("--record", is_flag=True, help="Store the result in the vector's sidecar.")
@json_option
@device_option
@dtype_option
def sweep(model_name, file, data, task, chat, config, raw, n_eval, out, record, as_json, device, dtype) -> None:
    """Layer x coefficient sweep of behaviour and side effects; recommends a (layer, coef)."""
    from lmscope.vectors.steering import sweep as run_sweep
    from lmscope.vectors.vector import Vector

    check_layers(model_name, "--layers", config.layers)
    cfg = dataclasses.replace(config, relative=not raw)
    stage = Stages(2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device, dtype)
    vec = Vector.load(file, model=model)
    t = _task_for(model, vec, data, task, chat, n_eval)
    n_lay = len(cfg.layers) if cfg.layers else "~8"
    stage(f"sweeping {n_lay} layers x {len(cfg.coefs)} coefficients: {t.name} on {n_eval} prompts, "
          f"KL and repetition on the side")
    res = run_sweep(model, vec, t, cfg, progress=progress_enabled())
    d = res.to_dict()
    if out:
        from pathlib import Path

        from lmscope.plots.vector_plots import plot_sweep

        write_json(out, "sweep.json", d)
        d["plot"] = plot_sweep(res, Path(out) / "sweep.png", title=f"{t.name} on {model.name}")
    if record:
        _record(vec, file, "sweep", {k: d[k] for k in ("task", "metric", "goal", "base", "recommended", "rule")})
    if as_json:
        emit_json(d)
        return
    _table(f"{t.name}: {res.metric} (base {res.base['score']:.4g}; goal {cfg.goal})",
           ["layer", "coef", "raw scale", "score", "Δ", "KL", "repetition", "ok"],
           [[r["layer"], r["coef"], r["scale"], r["score"], r["effect"], r["kl"], r["repetition"],
             "yes" if r["admissible"] else "no"] for r in res.rows])
    rec = res.recommended
    console().print(f"recommended: layer {rec['layer']}, coef {rec['coef']:g} (raw scale {rec['scale']:.4g})"
                    if rec else "no admissible setting moves the behaviour; see the rule in --json")


@vector.command()
@model_argument
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--layer", required=True, type=int)
@click.option("--coef", default=0.5, show_default=True, type=float)
@click.option("--mode", default="ablate", show_default=True, type=click.Choice(["ablate", "subtract"]),
              help="How to remove the behaviour from prompts that have it.")
@click.option("--raw", is_flag=True, help="--coef multiplies the raw vector.")
@data_option
@task_option
@chat_option
@click.option("--n-random", default=3, show_default=True, type=click.IntRange(1, 100))
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the first random control.")
@click.option("--n-eval", default=16, show_default=True, type=click.IntRange(1, 1000))
@click.option("--out", "out", type=OUT_DIR, help="Folder for verify.json and verify.png.")
@click.option("--record", is_flag=True, help="Store the result in the vector's sidecar.")
@json_option
@device_option
@dtype_option
def verify(model_name, file, layer, coef, mode, raw, data, task, chat, n_random, seed, n_eval, out, record, as_json,
           device, dtype) -> None:
    """Add to prompts without the behaviour, remove from prompts with it; next to random directions."""
    from lmscope.vectors.steering import verify as run_verify
    from lmscope.vectors.vector import Vector

    check_layers(model_name, "--layer", layer)
    stage = Stages(2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device, dtype)
    vec = Vector.load(file, model=model)
    t = _task_for(model, vec, data, task, chat, n_eval)
    stage(f"verifying at layer {layer}: {t.name} on {n_eval} prompts, vector vs {n_random} random directions")
    rep = run_verify(model, vec, t, layer=layer, coef=coef, mode=mode, relative=not raw, n_random=n_random, seed=seed)
    d = rep.to_dict()
    if out:
        from pathlib import Path

        from lmscope.plots.vector_plots import plot_verify

        write_json(out, "verify.json", d)
        d["plot"] = plot_verify(rep, Path(out) / "verify.png", title=f"{t.name} on {model.name}: layer {rep.layer}")
    if record:
        _record(vec, file, "verify", {k: d[k] for k in ("task", "layer", "coef", "mode", "metric", "add", "remove",
                                                         "swing", "passed")})
    if as_json:
        emit_json(d)
        return
    _table(f"{t.name}: {rep.metric}, layer {rep.layer}, coef {coef:g}, remove by {mode}",
           ["test", "base", "vector", "random (mean)", "Δ vector", "max |Δ random|", "passed"],
           [[r["test"], r["base"], r["vector"], r["random"], r["effect"], r["random_effect"], str(r["passed"])]
            for r in rep.rows()])
    kl = rep.details.get("kl")
    if kl:
        console().print(f"KL on neutral prompts when added: vector {kl['vector']:.3g}, random "
                        + ", ".join(f"{x:.3g}" for x in kl["random"]))


@vector.command()
@model_argument
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--layer", type=int, help="Layer of the vector (default: the vector's only layer).")
@click.option("--coef", default=0.5, show_default=True, type=float)
@click.option("--prompt", "prompts", multiple=True, required=True, help="Prompt (repeatable).")
@click.option("--mode", default="add", show_default=True, type=click.Choice(["add", "subtract", "ablate"]))
@click.option("--raw", is_flag=True, help="--coef multiplies the raw vector.")
@click.option("--chat", is_flag=True, help="Apply the model's chat template.")
@click.option("--max-new-tokens", default=40, show_default=True, type=click.IntRange(1, 4096))
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(1, 100))
@json_option
@device_option
@dtype_option
def apply(model_name, file, layer, coef, prompts, mode, raw, chat, max_new_tokens, top_k, as_json, device,
          dtype) -> None:
    """Generate with the vector added, subtracted or ablated, next to the unsteered text."""
    from lmscope.vectors.steering import raw_scale, steer_edits, with_resid_norms
    from lmscope.vectors.vector import Vector

    check_layers(model_name, "--layer", layer)
    stage = Stages(2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device, dtype)
    vec = Vector.load(file, model=model)
    stage(f"generating {len(prompts)} x {max_new_tokens} tokens with and without the vector")
    if not raw and mode != "ablate":
        vec = with_resid_norms(model, vec)
    layer = vec.layers[0] if layer is None and len(vec) == 1 else layer
    if layer is None:
        raise click.UsageError(f"The vector has {len(vec)} layers; pass --layer.")
    edits = steer_edits(vec, layer, coef, mode=mode, relative=not raw)
    kw = {"chat": chat, "max_new_tokens": max_new_tokens}
    base, steered = model.generate(list(prompts), **kw), model.generate(list(prompts), edits=edits, **kw)
    r0, r1 = model.run(list(prompts), chat=chat), model.run(list(prompts), chat=chat, edits=edits)
    rows = [{"prompt": p, "baseline": base.texts[i], "steered": steered.texts[i],
             "top_baseline": r0.top_k(model, top_k, i), "top_steered": r1.top_k(model, top_k, i)}
            for i, p in enumerate(prompts)]
    scale = None if mode == "ablate" else raw_scale(vec, layer, coef, relative=not raw)
    if as_json:
        emit_json({"model": model.name, "layer": layer % model.n_layers, "coef": coef, "mode": mode, "raw_scale": scale,
                   "results": rows})
        return
    from rich.markup import escape

    c = console()
    c.print(f"[bold]{mode}[/bold] layer {layer}, coef {coef:g}" + (f" (raw scale {scale:.4g})" if scale else ""))
    for r in rows:
        c.print(f"\n[bold]prompt:[/bold] {escape(r['prompt'])}")
        c.print("[bold]baseline:[/bold]", escape(r["baseline"]))
        c.print("[bold]steered:[/bold] ", escape(r["steered"]))
        fmt = ", ".join
        c.print("next token:", escape(fmt(f"{t['token']!r} {t['prob']:.2f}" for t in r["top_baseline"])), "->",
                escape(fmt(f"{t['token']!r} {t['prob']:.2f}" for t in r["top_steered"])))


@vector.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@json_option
def info(file, as_json) -> None:
    """Model, site, method, layers, norms, dataset and recorded evaluations of a vector file."""
    from lmscope.vectors.vector import Vector

    vec = Vector.load(file)
    d = vec.info()
    d["path"] = file
    if as_json:
        emit_json(d)
        return
    meta = d.pop("meta")
    rows = [[k, str(v)] for k, v in d.items() if k not in ("norm", "relative_norm")]
    rows += [[k, str(v)] for k, v in meta.items() if k not in ("evaluation",)]
    ev = meta.get("evaluation", {})
    rec = ev.get("sweep", {}).get("recommended")
    if rec:
        rows.append(["sweep recommends", f"layer {rec['layer']}, coef {rec['coef']:g} (raw {rec['scale']:.4g})"])
    if "verify" in ev:
        rows.append(["verify passed", str(ev["verify"].get("passed"))])
    _table(file, ["field", "value"], rows)
    _table("per layer", ["layer", "|v|", "|v|/resid"],
           [[k, d["norm"][k], d["relative_norm"].get(k)] for k in vec.layers])


@vector.command()
@model_argument
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--layer", type=int, help="Layer (default: the vector's only layer).")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, 200))
@json_option
@device_option
def tokens(model_name, file, layer, k, as_json, device) -> None:
    """What the direction means in token space: final norm + unembedding of v[layer]."""
    from lmscope.vectors.vector import Vector

    check_layers(model_name, "--layer", layer)
    model = load_model(model_name, device)
    vec = Vector.load(file, model=model)
    top = vec.top_tokens(model, layer, k)
    if as_json:
        emit_json({"model": model.name, "layer": layer, **top})
        return
    _table(f"{file} layer {layer}: top / bottom tokens", ["top", "logit", "bottom", "logit"],
           [[repr(a["token"]), a["logit"], repr(b["token"]), b["logit"]] for a, b in zip(top["top"], top["bottom"],
                                                                                        strict=True)])


@vector.command(context_settings={"ignore_unknown_options": True})
@click.argument("expression", nargs=-1, required=True)
@click.option("--layer", type=int, help="Use only this layer of every operand.")
@click.option("--normalize", is_flag=True, help="Scale the result to unit norm per layer.")
@click.option("--out", "out", required=True, type=OUT_FILE)
@json_option
def algebra(expression, layer, normalize, out, as_json) -> None:
    """Combine vector files: A.safetensors + 0.5*B.safetensors - C.safetensors (spaces around + and -)."""
    from lmscope.vectors.vector import Vector, parse_expression

    terms = parse_expression(list(expression))
    total = None
    for sign, coef, path in terms:
        v = Vector.load(path)
        if layer is not None:
            v = v.at(layer)
        v = (sign * coef) * v
        total = v if total is None else total + v
    if normalize:
        total = total.normalize()
    total.meta["expression"] = " ".join(expression)
    path = total.save(out)
    if as_json:
        emit_json({"path": path, **total.info()})
        return
    console().print(f"{' '.join(expression)} -> {path} ({total})")
