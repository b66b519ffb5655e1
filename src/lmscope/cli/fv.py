"""`lmscope fv ...`: in-context task vectors / function vectors (make, eval, sweep, compose, tasks)."""

from __future__ import annotations

import click

from ._common import (
    OUT_DIR,
    OUT_FILE,
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
)

_METHODS = click.Choice(["mean-diff", "replace", "heads"])


def _parse_layers(spec: str | None, n_layers: int) -> list[int] | None:
    """'3,6,9' | '4:12' (4..11) | 'all' | None -> layer list (negative layers allowed)."""
    from lmscope.engine.errors import InputError

    if spec is None or spec == "all":
        return None
    out: list[int] = []
    try:
        for part in spec.split(","):
            part = part.strip()
            if ":" in part:
                a, _, b = part.partition(":")
                out += list(range(int(a) if a else 0, int(b) if b else n_layers))
            elif part:
                out.append(int(part))
    except ValueError:
        raise InputError(f"--layers takes '3,6,9', '4:12' or 'all', got {spec!r}.") from None
    if not out:
        raise InputError(f"--layers {spec!r} names no layer.")
    return out


def _precheck(model, tasks=(), layers=None, aie_layers=None) -> None:
    """Task names/files and layer ranges, checked before the model loads (a typo costs no load)."""
    from lmscope.datasets import icl as T

    for t in tasks:
        if t:
            T.load_task(t)
    check_layers(model, "--layers", layers, parse=_parse_layers)
    check_layers(model, "--aie-layers", aie_layers, parse=_parse_layers)


def _config(**kw):
    from lmscope.function_vectors.core import FVConfig

    return FVConfig(**{k: v for k, v in kw.items() if v is not None})


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


def register(cli: click.Group) -> None:
    @cli.group()
    def fv() -> None:
        """In-context task vectors and function vectors (Todd et al.; Hendel et al.)."""

    common = [
        click.option("--shots", type=click.IntRange(1, 64), default=5, show_default=True, help="Demonstrations."),
        click.option("--n", "n_prompts", type=click.IntRange(1, 10_000), default=32, show_default=True,
                     help="Few-shot prompts averaged."),
        click.option("--n-test", type=click.IntRange(1, 10_000), default=32, show_default=True,
                     help="Held-out queries."),
        click.option("--method", type=_METHODS, default="mean-diff", show_default=True,
                     help="mean-diff (add), replace (Hendel), heads (Todd)."),
        click.option("--seed", type=SEED, default=0, show_default=True),
        click.option("--template", type=click.Choice(["arrow", "qa", "hendel"]), default="arrow", show_default=True),
        click.option("--top-heads", type=click.IntRange(1, 1000), default=5, show_default=True,
                     help="Heads summed (--method heads)."),
        click.option("--aie-layers", default=None, help="Layers whose heads are scanned (--method heads), e.g. 0:9."),
        click.option("--heads-contrast", is_flag=True,
                     help="--method heads: sum the heads' few-shot minus zero-shot mean outputs."),
        click.option("--keep-ambiguous", is_flag=True,
                     help="Keep pairs whose first answer token equals the copied input's."),
    ]

    def with_common(f):
        for opt in reversed(common):
            f = opt(f)
        return f

    def build_cfg(lm, shots, n_prompts, n_test, method, seed, template, top_heads, aie_layers, heads_contrast,
                  keep_ambiguous):
        aie = _parse_layers(aie_layers, lm.n_layers)
        return _config(method=method, shots=shots, n_prompts=n_prompts, n_test=n_test, seed=seed, template=template,
                       top_heads=top_heads, aie_layers=tuple(aie) if aie else None, heads_contrast=heads_contrast,
                       drop_ambiguous=not keep_ambiguous)

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
    @with_common
    @click.option("--out", "out", required=True, type=OUT_FILE, help="Vector file (.safetensors).")
    @json_option
    @device_option
    @dtype_option
    def make_cmd(model, task, shots, n_prompts, n_test, method, seed, template, top_heads, aie_layers,
                 heads_contrast, keep_ambiguous, out, as_json, device, dtype) -> None:
        """Extract a task vector for every layer from few-shot prompts and save it."""
        import time

        from lmscope.function_vectors import core as F

        from ._common import progress_enabled

        _precheck(model, [task], aie_layers=aie_layers)
        stage = Stages(2)
        stage(f"loading {model}")
        lm = load_model(model, device, dtype)
        cfg = build_cfg(lm, shots, n_prompts, n_test, method, seed, template, top_heads, aie_layers, heads_contrast,
                        keep_ambiguous)
        t0 = time.perf_counter()
        stage(f"making the {method} vector of {task} from {n_prompts} {shots}-shot prompts")
        v = F.make(lm, task, cfg, progress=progress_enabled())
        path = v.save(out)
        res = {"model": lm.name, "task": v.meta["task"], "method": method, "path": path, "layers": v.layers,
               "norm": v.norm(), "seconds": round(time.perf_counter() - t0, 2)}
        if method == "heads":
            res["heads"] = v.meta["heads"]
        if as_json:
            emit_json(res)
            return
        c = console()
        c.print(f"Saved {method} vector for {res['task']} ({len(v.layers)} layers) to {path} in {res['seconds']} s")
        if method == "heads":
            c.print("top heads (layer, head, AIE):", ", ".join(f"L{a}H{b} {e:+.3f}" for a, b, e in v.meta["heads"]))

    @fv.command("eval")
    @click.argument("model")
    @click.argument("file", type=click.Path(dir_okay=False))
    @click.option("--task", default=None, help="Task to score on (default: the vector's own).")
    @click.option("--layers", default=None, help="'3,6,9', '4:12' or 'all' (default).")
    @click.option("--scale", type=float, default=1.0, show_default=True, help="Coefficient (add mode).")
    @click.option("--positions", type=click.Choice(["last", "all"]), default="last", show_default=True)
    @click.option("--out", "out_dir", type=OUT_DIR, help="Directory for the figure.")
    @click.option("--record", is_flag=True, help="Store the per-layer result in the vector's sidecar.")
    @json_option
    @device_option
    @dtype_option
    def eval_cmd(model, file, task, layers, scale, positions, out_dir, record, as_json, device, dtype) -> None:
        """Held-out accuracy per layer with the vector in FILE, next to zero-/few-shot and a random control."""
        from pathlib import Path

        from lmscope.function_vectors import core as F
        from lmscope.vectors.vector import Vector

        from ._common import progress_enabled

        _precheck(model, [task], layers=layers)
        stage = Stages(2)
        stage(f"loading {model}")
        lm = load_model(model, device, dtype)
        v = Vector.load(file, model=lm)
        lay = _parse_layers(layers, lm.n_layers)
        stage(f"scoring {task or v.meta.get('task', 'the task')} on held-out queries: zero-shot, few-shot, and the "
              f"vector and a random one at {len(lay) if lay else lm.n_layers} layers")
        sw = F.evaluate(lm, v, task, layers=lay, scale=scale, positions=positions,
                        progress=progress_enabled())
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
        c.print(_sweep_table([sw], f"{lm.name}: {Path(file).name}"))
        if fig:
            c.print(f"figure: {fig}")

    @fv.command("sweep")
    @model_argument
    @click.option("--task", "tasks", multiple=True, required=True, help="Task (repeatable).")
    @with_common
    @click.option("--layers", default=None, help="'3,6,9', '4:12' or 'all' (default).")
    @click.option("--scale", type=float, default=1.0, show_default=True)
    @click.option("--positions", type=click.Choice(["last", "all"]), default="last", show_default=True)
    @click.option("--out", "out_dir", type=OUT_DIR, help="Directory for vectors and figures.")
    @json_option
    @device_option
    @dtype_option
    def sweep_cmd(model, tasks, shots, n_prompts, n_test, method, seed, template, top_heads, aie_layers,
                  heads_contrast, keep_ambiguous, layers, scale, positions, out_dir, as_json, device, dtype) -> None:
        """Make the vector of each task, evaluate it at every layer, plot accuracy vs layer."""
        import time
        from pathlib import Path

        from lmscope.function_vectors import core as F

        from ._common import progress_enabled

        _precheck(model, tasks, layers=layers, aie_layers=aie_layers)
        stage = Stages(1 + 2 * len(tasks))
        stage(f"loading {model}")
        lm = load_model(model, device, dtype)
        cfg = build_cfg(lm, shots, n_prompts, n_test, method, seed, template, top_heads, aie_layers, heads_contrast,
                        keep_ambiguous)
        lay = _parse_layers(layers, lm.n_layers)
        sweeps, figs, vecs, timing = [], [], [], {}
        for task in tasks:
            t0 = time.perf_counter()
            stage(f"{task}: making the {method} vector from {n_prompts} {shots}-shot prompts")
            data = F.prepare(lm, task, cfg)
            v = F.make(lm, data, cfg, progress=progress_enabled())
            t1 = time.perf_counter()
            stage(f"{task}: scoring it at {len(lay) if lay else lm.n_layers} layers on {n_test} held-out queries")
            sw = F.evaluate(lm, v, data, layers=lay, scale=scale, positions=positions, shots=cfg.shots,
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
            emit_json({"model": lm.name, "method": method, "positions": positions, "scale": scale,
                       "table": [s.summary() for s in sweeps], "sweeps": [s.to_dict() for s in sweeps],
                       "timing": timing, "figures": figs, "vectors": vecs})
            return
        c = console()
        c.print(_sweep_table(sweeps, f"{lm.name}: {method} vectors ({positions}, ×{scale:g}), n_test={cfg.n_test}"))
        for f in figs:
            c.print(f"figure: {f}")

    @fv.command("compose")
    @model_argument
    @click.option("--plus", "plus", multiple=True, required=True, help="Task whose vector is added (repeatable).")
    @click.option("--minus", "minus", multiple=True, help="Task whose vector is subtracted (repeatable).")
    @click.option("--target", default=None, help="Task to score on (default: the plus tasks chained).")
    @with_common
    @click.option("--layers", default=None, help="'3,6,9', '4:12' or 'all' (default).")
    @click.option("--scale", type=float, default=1.0, show_default=True)
    @click.option("--out", "out_dir", type=OUT_DIR, help="Directory for the figure.")
    @json_option
    @device_option
    @dtype_option
    def compose_cmd(model, plus, minus, target, shots, n_prompts, n_test, method, seed, template, top_heads,
                    aie_layers, heads_contrast, keep_ambiguous, layers, scale, out_dir, as_json, device, dtype) -> None:
        """Vector algebra: FV(plus...) - FV(minus...) on the composed task, with controls."""
        import time
        from pathlib import Path

        from lmscope.function_vectors import core as F

        from ._common import progress_enabled

        _precheck(model, [*plus, *minus, target], layers=layers, aie_layers=aie_layers)
        stage = Stages(2)
        stage(f"loading {model}")
        lm = load_model(model, device, dtype)
        cfg = build_cfg(lm, shots, n_prompts, n_test, method, seed, template, top_heads, aie_layers, heads_contrast,
                        keep_ambiguous)
        t0 = time.perf_counter()
        stage(f"making the vectors of {', '.join([*plus, *minus])} and scoring their composition")
        comp = F.compose(lm, list(plus), list(minus), target=target, config=cfg,
                         layers=_parse_layers(layers, lm.n_layers), scale=scale, progress=progress_enabled())
        secs = round(time.perf_counter() - t0, 2)
        fig = None
        if out_dir:
            from lmscope.plots.fv_plots import plot_composition

            fig = plot_composition(comp, Path(out_dir) / f"fv_compose_{comp.target}.png")
        if as_json:
            emit_json({**comp.to_dict(), "method": method, "seconds": secs, "figure": fig})
            return
        from rich.table import Table

        s = comp.summary()
        t = Table("vector", "accuracy at best layer", title=f"{lm.name}: {comp.expression} on {comp.target} "
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
