"""`lmscope circuit ...`: find the path a task takes through the model, prune to it, prove it.

    lmscope circuit tasks
    lmscope circuit find [MODEL] --task ioi --out DIR          scores, patching check, circuit, control
    lmscope circuit patch [MODEL] --task ioi --component heads activation patching (noising/denoising)
    lmscope circuit path [MODEL] --task ioi --receivers logits path patching
    lmscope circuit attribute [MODEL] --task ioi --level nodes EAP / EAP-IG scores
    lmscope circuit induction [MODEL]                          induction and previous-token heads
    lmscope circuit overlap [MODEL] --tasks ioi,induction      shared heads and MLPs of circuits
    lmscope circuit show CIRCUIT.json --out graph.html         draw a saved circuit
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from ._common import (
    HTML_FILE,
    OUT_DIR,
    PLOT_FILE,
    SEED,
    Stages,
    console,
    device_option,
    dtype_option,
    emit_json,
    json_option,
    load_model,
    model_argument,
    print_tables,
    write_json,
)
from .config_options import Group, config_options
from .params import HEADS, WORDS

task_option = click.option("--task", default="ioi", show_default=True,
                           help="ioi, induction, greater-than, a shipped task (example_capitals) or a JSONL file of "
                                "{clean, corrupt, answer, wrong}.")
n_option = click.option("--n", type=click.IntRange(1, 100_000), help="Prompt pairs (default: the task's own).")
seed_option = click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the task generator.")
ablation_option = click.option("--ablation", default="resample", show_default=True,
                               type=click.Choice(["resample", "mean", "zero"]),
                               help="What a removed component carries: the paired corrupt prompt's value, the "
                                    "mean over corrupt prompts, or zero.")


def _finish(res, plot, as_json: bool) -> None:
    """A patching result: its heatmap (--plot), then JSON with the top components, or tables."""
    if plot:
        from lmscope.plots.circuit_plots import patching_heatmap

        patching_heatmap(res.to_dict(), plot)
    if as_json:
        emit_json({**res.to_dict(), "top": res.top(10)})
        return
    print_tables(res)


def _task_run(model, task: str, n, seed: int):
    from lmscope.circuits.metric import TaskRun
    from lmscope.datasets.circuit_tasks import load_task

    return TaskRun.build(model, load_task(task, model, n=n, seed=seed))


def _check_task(task: str) -> None:
    """A task name or file, checked before the model loads."""
    from lmscope.datasets import circuit_tasks as T

    p = Path(task)
    if task.replace("_", "-") in T.TASKS or task in T.shipped_tasks():
        return
    if p.suffix == ".jsonl" and p.is_file():
        return
    raise click.BadParameter(f"{task!r} is not a built-in task ({', '.join(T.TASKS)}), a shipped task "
                             f"({', '.join(T.shipped_tasks())}) or an existing .jsonl file.", param_hint="--task")


@click.group(cls=Group)
def circuit() -> None:
    """Circuits: patching, path patching, EAP/EAP-IG, pruning with faithfulness, induction heads."""


@circuit.command("tasks")
@json_option
def tasks_cmd(as_json: bool) -> None:
    """List the built-in circuit tasks and the shipped task files."""
    from lmscope.datasets import circuit_tasks as T

    rows = [{"name": "ioi", "metric": "logit_diff", "about": "indirect object identification (Wang et al. 2022)"},
            {"name": "induction", "metric": "logprob", "about": "repeated random tokens (Olsson et al. 2022)"},
            {"name": "greater-than", "metric": "prob_diff", "about": "years after the start year (Hanna et al. 2023)"}]
    rows += [{"name": n, "metric": "logit_diff", "about": "shipped JSONL of clean/corrupt pairs"}
             for n in T.shipped_tasks()]
    if as_json:
        emit_json({"tasks": rows})
        return
    from rich.table import Table

    tb = Table("task", "metric", "about", title="circuit tasks (any JSONL of {clean, corrupt, answer, wrong} works too)")
    for r in rows:
        tb.add_row(r["name"], r["metric"], r["about"])
    console().print(tb)


@circuit.command("find")
@model_argument
@config_options("lmscope.circuits.discovery:CircuitConfig", exclude={"batch_size", "task"},
                types={"n": click.IntRange(1, 100_000), "steps": click.IntRange(1, 200),
                       "random_draws": click.IntRange(0, 100),
                       "method": click.Choice(["eap", "eap-ig"]), "prune": click.Choice(["topk", "mask", "acdc"]),
                       "ablation": click.Choice(["resample", "mean", "zero"])})
@task_option
@click.option("--out", type=OUT_DIR, help="Folder for circuit.json, report.json, circuit.png/.html and figures.")
@json_option
@device_option
@dtype_option
def find_cmd(model_name, config, task, out, as_json, device, dtype) -> None:
    """Score every edge, check the scores against activation patching, prune to a circuit, control it."""
    from lmscope.circuits.discovery import find_circuit

    _check_task(task)
    config = dataclasses.replace(config, task=task)
    stage = Stages(3 if out else 2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device, dtype)
    stage(f"finding the {task} circuit ({config.method}, {config.prune}, {config.ablation} ablation)")
    report = find_circuit(model, config)
    data = report.to_dict()
    if out:
        stage(f"writing {out}")
        _write_figures(report, Path(out))
        write_json(out, "report.json", data)
    if as_json:
        emit_json(data)
        return
    print_tables(report)
    if out:
        console().print(f"circuit, report and figures in {out}")


def _write_figures(report, out: Path) -> None:
    from lmscope.plots import circuit_plots as cp

    out.mkdir(parents=True, exist_ok=True)
    report.circuit.save(out / "circuit.json")
    cd = report.circuit.to_dict()
    cp.circuit_png(cd, out / "circuit.png")
    cp.circuit_html(cd, out / "circuit.html")
    if report.result.curve is not None:
        cp.faithfulness_curve(report.result.curve.to_dict(), out / "faithfulness.png")
    for p in report.patching:
        cp.patching_heatmap(p.to_dict(), out / f"patching_{p.kind}.png")


@circuit.command("patch")
@model_argument
@task_option
@n_option
@click.option("--component", default="heads", show_default=True,
              type=click.Choice(["resid", "heads", "mlp", "neurons"]), help="What is patched, one at a time.")
@click.option("--direction", default="noising", show_default=True, type=click.Choice(["noising", "denoising"]),
              help="noising: clean run, component set to its reference; denoising: corrupt run, restored to clean.")
@ablation_option
@click.option("--positions", type=click.Choice(["all", "each"]),
              help="Patch every position at once or one at a time (resid, mlp); default: each for resid.")
@click.option("--neurons", help="(component neurons) L.N pairs, e.g. '5.100,7.12'.")
@seed_option
@click.option("--plot", type=PLOT_FILE, help="Heatmap of the normalised effects.")
@json_option
@device_option
@dtype_option
def patch_cmd(model_name, task, n, component, direction, ablation, positions, neurons, seed, plot, as_json, device,
              dtype) -> None:
    """Activation patching over the residual stream, heads, MLPs or neurons."""
    from lmscope.circuits.patching import patch

    _check_task(task)
    pairs = None
    if component == "neurons":
        from .params import NEURONS

        if not neurons:
            raise click.BadParameter("--component neurons needs --neurons, e.g. '5.100,7.12'.", param_hint="--neurons")
        pairs = NEURONS.convert(neurons, None, None)
    model = load_model(model_name, device, dtype)
    res = patch(_task_run(model, task, n, seed), component=component, direction=direction, ablation=ablation,
                positions=positions, neurons=pairs)
    _finish(res, plot, as_json)


@circuit.command("path")
@model_argument
@task_option
@n_option
@click.option("--senders", type=HEADS, help="Sender heads 'L.H,...' (default: every head).")
@click.option("--receivers", type=WORDS, default="logits", show_default=True,
              help="'logits', 'L.H.q' (query of head H), 'L.G.k' / 'L.G.v' (key / value of KV head G).")
@ablation_option
@click.option("--freeze-mlps", is_flag=True, help="Also freeze every MLP at its clean output (direct paths only).")
@seed_option
@click.option("--plot", type=PLOT_FILE, help="Heatmap sender x receiver.")
@json_option
@device_option
@dtype_option
def path_cmd(model_name, task, n, senders, receivers, ablation, freeze_mlps, seed, plot, as_json, device,
             dtype) -> None:
    """Path patching: each sender head's effect through one route, the rest frozen clean."""
    from lmscope.circuits.path_patching import path_patch

    _check_task(task)
    model = load_model(model_name, device, dtype)
    res = path_patch(_task_run(model, task, n, seed), senders=senders, receivers=tuple(receivers),
                     ablation=ablation, freeze_mlps=freeze_mlps)
    _finish(res, plot, as_json)


@circuit.command("attribute")
@model_argument
@task_option
@n_option
@click.option("--method", default="eap-ig", show_default=True, type=click.Choice(["eap", "eap-ig"]))
@click.option("--steps", default=5, show_default=True, type=click.IntRange(1, 200), help="EAP-IG steps.")
@click.option("--level", default="nodes", show_default=True, type=click.Choice(["nodes", "edges"]),
              help="Heads and MLPs, or every edge of the model graph.")
@ablation_option
@seed_option
@json_option
@device_option
@dtype_option
def attribute_cmd(model_name, task, n, method, steps, level, ablation, seed, as_json, device, dtype) -> None:
    """Attribution patching (EAP / EAP-IG) of every head and MLP, or of every edge."""
    from lmscope.circuits.attribution import (
        AttributionConfig,
        attribute,
        attribute_nodes,
    )

    _check_task(task)
    model = load_model(model_name, device, dtype)
    run = _task_run(model, task, n, seed)
    cfg = AttributionConfig(method=method, steps=steps, ablation=ablation)
    res = attribute_nodes(run, cfg) if level == "nodes" else attribute(run, cfg)
    if as_json:
        emit_json(res.to_dict())
        return
    print_tables(res)


@circuit.command("induction")
@model_argument
@click.option("--n", default=16, show_default=True, type=click.IntRange(1, 10_000), help="Sequences.")
@click.option("--seq-len", default=20, show_default=True, type=click.IntRange(2, 2048), help="Tokens per copy.")
@click.option("--k", type=click.IntRange(1, 10_000), help="Induction heads kept (default: the score rule).")
@click.option("--ablation", default="mean", show_default=True, type=click.Choice(["mean", "zero"]))
@click.option("--random-draws", default=10, show_default=True, type=click.IntRange(1, 1000),
              help="Random head sets the ablation is compared with.")
@click.option("--key-paths", default=1, show_default=True, type=click.IntRange(0, 1000),
              help="Induction heads whose key inputs are path-patched from every earlier head (0: skip).")
@seed_option
@click.option("--out", type=OUT_DIR, help="Folder for induction.json and the score heatmaps.")
@json_option
@device_option
@dtype_option
def induction_cmd(model_name, n, seq_len, k, ablation, random_draws, key_paths, seed, out, as_json, device,
                  dtype) -> None:
    """Induction, previous-token and copying scores of every head; ablation vs random heads."""
    from lmscope.circuits.induction import find_induction_heads, head_scores_dict

    model = load_model(model_name, device, dtype)
    res = find_induction_heads(model, n=n, seq_len=seq_len, seed=seed, k=k, random_draws=random_draws,
                               ablation=ablation, key_path_heads=key_paths)
    if out:
        from lmscope.plots.circuit_plots import head_scores

        for which in ("prefix_matching", "previous_token", "copying"):
            head_scores(head_scores_dict(res, which), Path(out) / f"{which}.png")
        write_json(out, "induction.json", res.to_dict())
    if as_json:
        emit_json(res.to_dict())
        return
    print_tables(res)


@circuit.command("overlap")
@model_argument
@click.option("--tasks", type=WORDS, default="ioi,induction,greater-than", show_default=True,
              help="Tasks whose circuits are compared (names or JSONL files).")
@click.option("--circuits", type=WORDS, help="Saved circuit files to compare instead of finding new ones.")
@n_option
@click.option("--target", default=0.8, show_default=True, type=float, help="Faithfulness each circuit must reach.")
@seed_option
@click.option("--plot", type=PLOT_FILE, help="Heatmap of the Jaccard overlaps.")
@json_option
@device_option
@dtype_option
def overlap_cmd(model_name, tasks, circuits, n, target, seed, plot, as_json, device, dtype) -> None:
    """Which heads and MLPs the circuits of different tasks share (Jaccard)."""
    from lmscope.circuits.discovery import CircuitConfig, find_circuit
    from lmscope.circuits.graph import Circuit, overlap

    if circuits:
        found = {}
        for f in circuits:
            c = Circuit.load(f)
            found[c.task if c.task not in found else f] = c
    else:
        for t in tasks:
            _check_task(t)
        model = load_model(model_name, device, dtype)
        stage = Stages(len(tasks))
        found = {}
        for t in tasks:
            stage(f"finding the {t} circuit")
            found[t] = find_circuit(model, CircuitConfig(task=t, n=n, seed=seed, target=target, compare=False)).circuit
    res = overlap(found)
    if plot:
        from lmscope.plots.circuit_plots import overlap_matrix

        overlap_matrix(res.to_dict(), plot)
    if as_json:
        emit_json(res.to_dict())
        return
    print_tables(res)


@circuit.command("show")
@click.argument("circuit_file", type=click.Path(dir_okay=False))
@click.option("--out", "out_html", type=HTML_FILE, help="Interactive graph (.html).")
@click.option("--png", type=PLOT_FILE, help="Static graph (.png).")
@json_option
def show_cmd(circuit_file, out_html, png, as_json) -> None:
    """Print or draw a saved circuit (written by `circuit find --out`)."""
    from lmscope.circuits.graph import Circuit

    c = Circuit.load(circuit_file)
    if out_html or png:
        from lmscope.plots import circuit_plots as cp

        if out_html:
            cp.circuit_html(c.to_dict(), out_html)
        if png:
            cp.circuit_png(c.to_dict(), png)
    if as_json:
        emit_json(c.to_dict())
        return
    print_tables(c)
