"""`lmscope fv ...`: in-context task vectors / function vectors (make, eval, sweep, compose, tasks)."""

from __future__ import annotations

import dataclasses

import click

from ._common import (
    OUT_DIR,
    OUT_FILE,
    Stages,
    check_layers,
    console,
    device_option,
    dtype_option,
    emit_json,
    json_option,
    load_model,
    model_argument,
    model_name_argument,
    progress_enabled,
)
from .config_options import Group, config_options
from .params import LAYERS

#: --shots, --n (n_prompts), --n-test, --method, --seed, --template, --top-heads, --aie-layers, --heads-contrast
fv_config = config_options(
    "lmscope.function_vectors.core:FVConfig", exclude={"drop_ambiguous", "n_aie_prompts", "batch_size"},
    rename={"n_prompts": "n"},
    types={"shots": click.IntRange(1, 64), "n_prompts": click.IntRange(1, 10_000),
           "n_test": click.IntRange(1, 10_000), "top_heads": click.IntRange(1, 1000),
           "template": click.Choice(["arrow", "qa", "hendel"])})
keep_ambiguous_option = click.option("--keep-ambiguous", is_flag=True,
                                     help="Keep pairs whose first answer token equals the copied input's.")
layers_option = click.option("--layers", type=LAYERS, help="Layers scored: '3,6,9', '4:12' (4..11) or 'all' (default).")


def _with_ambiguous(config, keep_ambiguous: bool):
    return dataclasses.replace(config, drop_ambiguous=not keep_ambiguous)


def _precheck(model_name, tasks=(), layers=None, aie_layers=None) -> None:
    """Task names/files and layer ranges, checked before the model loads (a typo costs no load)."""
    from lmscope.datasets import icl as T

    for t in tasks:
        if t:
            T.load_task(t)
    check_layers(model_name, "--layers", layers)
    check_layers(model_name, "--aie-layers", aie_layers)


def _fmt(x: float) -> str:
    import math

    return "-" if x is None or math.isnan(x) else f"{x:.2f}"


def _sweep_table(sweeps, title: str):
    from rich.table import Table

    t = Table("task", "zero-shot", "few-shot", "best layer", "best FV acc", "random (best layer)",
              "last layer", "last-layer FV acc", title=title)
    for sw in sweeps:
        s = sw.summary()
        t.add_row(s["task"], _fmt(s["zero_shot"]), _fmt(s["few_shot"]), str(s["best_layer"]), _fmt(s["best"]),
                  _fmt(s["random_at_best"]), str(s["last_layer"]), _fmt(s["last_layer_accuracy"]))
    return t


def _record_of(sw) -> dict:
    """What a vector's sidecar keeps of a LayerSweep (no per-query predictions)."""
    keep = ("task", "mode", "scale", "positions", "n_test", "shots", "zero_shot", "few_shot", "layers", "accuracy",
            "random", "prob")
    return {**{k: getattr(sw, k) for k in keep}, "summary": sw.summary()}


def _layer_rows(sw):
    from rich.table import Table

    t = Table("layer", "FV acc", "random", "P(target)", title=f"{sw.task}: per layer ({sw.method}, {sw.positions})")
    for i, lay in enumerate(sw.layers):
        t.add_row(str(lay), _fmt(sw.accuracy[i]), _fmt(sw.random[i]), f"{sw.prob[i]:.3f}")
    return t


@click.group(cls=Group)
def fv() -> None:
    """In-context task vectors and function vectors (Todd et al.; Hendel et al.)."""


@fv.command("tasks")
@json_option
def tasks_cmd(as_json: bool) -> None:
    """List the shipped ICL tasks with their sizes and an example."""
    from lmscope.datasets import icl as T

    rows = []
    for name in T.list_tasks():
        t = T.load_task(name)
        rows.append({"name": name, "pairs": len(t), "example": list(t.pairs[0]), "rule": t.rule is not None})
    if as_json:
        emit_json({"tasks": rows, "template": T.TEMPLATES["arrow"].prompt([("hot", "cold")], "fast")})
        return
    from rich.table import Table

    tb = Table("task", "pairs", "example", title="ICL tasks")
    for r in rows:
        tb.add_row(r["name"], str(r["pairs"]), f"{r['example'][0]} -> {r['example'][1]}")
    console().print(tb)


@fv.command("make")
@model_argument
@click.option("--task", required=True, help="Shipped task name or a JSONL file of {input, output}.")
@fv_config
@keep_ambiguous_option
@click.option("--out", "out", required=True, type=OUT_FILE, help="Vector file (.safetensors).")
@json_option
@device_option
@dtype_option
def make_cmd(model_name, task, config, keep_ambiguous, out, as_json, device, dtype) -> None:
    """Extract a task vector for every layer from few-shot prompts and save it."""
    import time

    from lmscope.function_vectors import core as F

    cfg = _with_ambiguous(config, keep_ambiguous)
    _precheck(model_name, [task], aie_layers=cfg.aie_layers)
    stage = Stages(2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device, dtype)
    t0 = time.perf_counter()
    stage(f"making the {cfg.method} vector of {task} from {cfg.n_prompts} {cfg.shots}-shot prompts")
    v = F.make(model, task, cfg, progress=progress_enabled())
    path = v.save(out)
    res = {"model": model.name, "task": v.meta["task"], "method": cfg.method, "path": path, "layers": v.layers,
           "norm": v.norm(), "seconds": round(time.perf_counter() - t0, 2)}
    if cfg.method == "heads":
        res["heads"] = v.meta["heads"]
    if as_json:
        emit_json(res)
        return
    c = console()
    c.print(f"Saved {cfg.method} vector for {res['task']} ({len(v.layers)} layers) to {path} in {res['seconds']} s")
    if cfg.method == "heads":
        c.print("top heads (layer, head, AIE):", ", ".join(f"L{a}H{b} {e:+.3f}" for a, b, e in v.meta["heads"]))


@fv.command("eval")
@model_name_argument
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--task", default=None, help="Task to score on (default: the vector's own).")
@layers_option
@click.option("--scale", type=float, default=1.0, show_default=True, help="Coefficient (add mode).")
@click.option("--positions", type=click.Choice(["last", "all"]), default="last", show_default=True)
@click.option("--out", "out_dir", type=OUT_DIR, help="Directory for the figure.")
@click.option("--record", is_flag=True, help="Store the per-layer result in the vector's sidecar.")
@json_option
@device_option
@dtype_option
def eval_cmd(model_name, file, task, layers, scale, positions, out_dir, record, as_json, device, dtype) -> None:
    """Held-out accuracy per layer with the vector in FILE, next to zero-/few-shot and a random control."""
    from pathlib import Path

    from lmscope.function_vectors import core as F
    from lmscope.vectors.vector import Vector

    _precheck(model_name, [task], layers=layers)
    stage = Stages(2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device, dtype)
    v = Vector.load(file, model=model)
    stage(f"scoring {task or v.meta.get('task', 'the task')} on held-out queries: zero-shot, few-shot, and the "
          f"vector and a random one at {len(layers) if layers else model.n_layers} layers")
    sw = F.evaluate(model, v, task, layers=layers, scale=scale, positions=positions, progress=progress_enabled())
    fig = None
    if out_dir:
        from lmscope.plots.fv_plots import plot_layer_sweep

        fig = plot_layer_sweep(sw, Path(out_dir) / f"fv_eval_{sw.task}.png")
    if record:
        ev = dict(v.meta.get("evaluation", {}))
        ev["layer_sweep"] = _record_of(sw)
        v.meta["evaluation"] = ev
        v.save(file)
    if as_json:
        emit_json({**sw.to_dict(), "vector": file, "figure": fig})
        return
    c = console()
    c.print(_layer_rows(sw))
    c.print(_sweep_table([sw], f"{model.name}: {Path(file).name}"))
    if fig:
        c.print(f"figure: {fig}")


@fv.command("sweep")
@model_argument
@click.option("--task", "tasks", multiple=True, required=True, help="Task (repeatable).")
@fv_config
@keep_ambiguous_option
@layers_option
@click.option("--scale", type=float, default=1.0, show_default=True)
@click.option("--positions", type=click.Choice(["last", "all"]), default="last", show_default=True)
@click.option("--out", "out_dir", type=OUT_DIR, help="Directory for vectors and figures.")
@json_option
@device_option
@dtype_option
def sweep_cmd(model_name, tasks, config, keep_ambiguous, layers, scale, positions, out_dir, as_json, device,
              dtype) -> None:
    """Make the vector of each task, evaluate it at every layer, plot accuracy vs layer."""
    import time
    from pathlib import Path

    from lmscope.function_vectors import core as F

    cfg = _with_ambiguous(config, keep_ambiguous)
    method = cfg.method
    _precheck(model_name, tasks, layers=layers, aie_layers=cfg.aie_layers)
    stage = Stages(1 + 2 * len(tasks))
    stage(f"loading {model_name}")
    model = load_model(model_name, device, dtype)
    sweeps, figs, vecs, timing = [], [], [], {}
    for task in tasks:
        t0 = time.perf_counter()
        stage(f"{task}: making the {method} vector from {cfg.n_prompts} {cfg.shots}-shot prompts")
        data = F.prepare(model, task, cfg)
        v = F.make(model, data, cfg, progress=progress_enabled())
        t1 = time.perf_counter()
        stage(f"{task}: scoring it at {len(layers) if layers else model.n_layers} layers on {cfg.n_test} held-out "
              "queries")
        sw = F.evaluate(model, v, data, layers=layers, scale=scale, positions=positions, shots=cfg.shots,
                        progress=progress_enabled())
        timing[data.task.name] = {"make_s": round(t1 - t0, 2), "eval_s": round(time.perf_counter() - t1, 2)}
        sweeps.append(sw)
        if out_dir:
            from lmscope.plots.fv_plots import plot_head_aie, plot_layer_sweep

            v.meta["evaluation"] = {"layer_sweep": _record_of(sw)}
            vecs.append(v.save(Path(out_dir) / f"fv_{data.task.name}_{method}.safetensors"))
            figs.append(plot_layer_sweep(sw, Path(out_dir) / f"fv_sweep_{data.task.name}_{method}.png"))
            if method == "heads":
                figs.append(plot_head_aie(v.meta["aie"], v.meta["heads"],
                                          Path(out_dir) / f"fv_aie_{data.task.name}.png"))
    if out_dir and len(sweeps) > 1:
        from lmscope.plots.fv_plots import plot_tasks

        figs.append(plot_tasks(sweeps, Path(out_dir) / f"fv_sweep_tasks_{method}.png"))
    if as_json:
        emit_json({"model": model.name, "method": method, "positions": positions, "scale": scale,
                   "table": [s.summary() for s in sweeps], "sweeps": [s.to_dict() for s in sweeps],
                   "timing": timing, "figures": figs, "vectors": vecs})
        return
    c = console()
    c.print(_sweep_table(sweeps, f"{model.name}: {method} vectors ({positions}, ×{scale:g}), n_test={cfg.n_test}"))
    for f in figs:
        c.print(f"figure: {f}")


@fv.command("compose")
@model_argument
@click.option("--plus", "plus", multiple=True, required=True, help="Task whose vector is added (repeatable).")
@click.option("--minus", "minus", multiple=True, help="Task whose vector is subtracted (repeatable).")
@click.option("--target", default=None, help="Task to score on (default: the plus tasks chained).")
@fv_config
@keep_ambiguous_option
@layers_option
@click.option("--scale", type=float, default=1.0, show_default=True)
@click.option("--out", "out_dir", type=OUT_DIR, help="Directory for the figure.")
@json_option
@device_option
@dtype_option
def compose_cmd(model_name, plus, minus, target, config, keep_ambiguous, layers, scale, out_dir, as_json, device,
                dtype) -> None:
    """Vector algebra: FV(plus...) - FV(minus...) on the composed task, with controls."""
    import time
    from pathlib import Path

    from lmscope.function_vectors import core as F

    cfg = _with_ambiguous(config, keep_ambiguous)
    _precheck(model_name, [*plus, *minus, target], layers=layers, aie_layers=cfg.aie_layers)
    stage = Stages(2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device, dtype)
    t0 = time.perf_counter()
    stage(f"making the vectors of {', '.join([*plus, *minus])} and scoring their composition")
    comp = F.compose(model, list(plus), list(minus), target=target, config=cfg, layers=layers, scale=scale,
                     progress=progress_enabled())
    secs = round(time.perf_counter() - t0, 2)
    fig = None
    if out_dir:
        from lmscope.plots.fv_plots import plot_composition

        fig = plot_composition(comp, Path(out_dir) / f"fv_compose_{comp.target}.png")
    if as_json:
        emit_json({**comp.to_dict(), "method": cfg.method, "seconds": secs, "figure": fig})
        return
    from rich.table import Table

    s = comp.summary()
    t = Table("vector", "accuracy at best layer", title=f"{model.name}: {comp.expression} on {comp.target} "
              f"(n={comp.n_test}, best layer {s['best_layer']})")
    t.add_row("zero-shot", _fmt(comp.zero_shot))
    t.add_row("few-shot ICL", _fmt(comp.few_shot))
    t.add_row(comp.expression, _fmt(s["composed"]))
    for k, a in s["singles"].items():
        t.add_row(f"{k} alone", _fmt(a))
    t.add_row(f"extracted from {comp.target} ICL", _fmt(s["direct"]))
    if comp.plus_only:
        t.add_row(f"{comp.expression.split(' - ')[0]} (no subtraction)", _fmt(s["plus_only"]))
    t.add_row("random (equal norm)", _fmt(s["random"]))
    c = console()
    c.print(t)
    if fig:
        c.print(f"figure: {fig}")
