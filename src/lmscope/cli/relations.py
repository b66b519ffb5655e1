"""`lmscope relation ...`: linear relational embeddings (Hernandez et al. 2023) and the attribute lens.

    lmscope relation list [--type factual]                          the shipped relations
    lmscope relation fit RELATION [MODEL] --out capital.safetensors  sweeps, faithfulness, causality, baselines
    lmscope relation predict capital.safetensors France Japan        the LRE's answers next to the model's
    lmscope relation lens capital.safetensors "Paris is lovely"      the LRE read at every layer and token

RELATION is a shipped name or a JSONL file of {"subject", "object"} lines (then --template is
required). `predict` and `lens` load the model the LRE was fitted on (its sidecar says; --model
loads it from elsewhere, e.g. a local copy, which must carry the same name).
"""

from __future__ import annotations

import click

from ._common import (
    OUT_DIR,
    OUT_FILE,
    PLOT_FILE,
    Stages,
    check_layers,
    console,
    device_option,
    dtype_option,
    emit_json,
    json_option,
    load_model,
    model_argument,
    precheck,
    print_tables,
)
from .config_options import Group, config_options
from .params import LAYERS

#: `lmscope.datasets.relations.TYPES`, spelled out so that `--help` imports nothing heavy (a test keeps them equal)
TYPES = ("factual", "commonsense", "linguistic", "bias")


class _Ranks(click.ParamType):
    """Ranks written '8,16,64' -> (8, 16, 64): positive integers (no ranges, no 'all', unlike layers)."""

    name = "ranks"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            out = tuple(int(x) for x in value.split(","))
        except ValueError:
            out = ()
        if not out or min(out) < 1:
            self.fail(f"Ranks are positive integers like '8,16,64'; got {value!r}.", param, ctx)
        return out


#: bounds the command line puts on RelationConfig's fields (the dataclass checks the rest)
CONFIG_TYPES = {"n_train": click.IntRange(1, 64), "max_facts": click.IntRange(3, 100_000),
                "max_edits": click.IntRange(1, 10_000), "rank": click.IntRange(1),
                "batch_size": click.IntRange(1, 1024), "ranks": _Ranks()}
template_option = click.option("--template", help="Prompt template with one '{}' for the subject, e.g. 'The capital "
                                                  "city of {} is' (required for a JSONL relation).")
lre_argument = click.argument("lre_file", metavar="LRE_FILE", type=click.Path(dir_okay=False))
model_option = click.option("--model", "model_name", help="Model to load (default: the one the LRE was fitted on).")


def _open_lre(lre_file: str, model_name: str | None, device: str, dtype: str, stage: Stages, layers=None):
    """(model, lre): the LRE's artifact read and checked first (a bad file costs no model load),
    then its model loaded and the LRE read again, bound to it."""
    from lmscope.relations.lre import LRE

    name = model_name or LRE.load(lre_file).meta["model"]
    check_layers(name, "--layers", layers)
    stage(f"loading {name}")
    model = load_model(name, device, dtype)
    return model, LRE.load(lre_file, model=model)


@click.group(cls=Group)
def relation() -> None:
    """Linear relational embeddings (Hernandez et al. 2023): fit, predict, attribute lens."""


@relation.command("list")
@click.option("--type", "kind", type=click.Choice(TYPES), help="Only relations of this type.")
@json_option
def list_cmd(kind, as_json) -> None:
    """List the shipped relations: type, number of facts, template."""
    from lmscope.datasets.relations import shipped_relations

    rows = shipped_relations(kind)
    if as_json:
        emit_json({"relations": rows})
        return
    from rich.markup import escape
    from rich.table import Table

    t = Table("relation", "type", "facts", "template", title="shipped relations (facts from Hernandez et al. 2023; "
              "any JSONL of {subject, object} works too)")
    for r in rows:
        t.add_row(r["relation"], r["type"], str(r["n"]), escape(r["template"]))
    console().print(t)


@relation.command("fit")
@click.argument("relation_name", metavar="RELATION")
@model_argument
@template_option
@config_options("lmscope.relations.study:RelationConfig", types=CONFIG_TYPES)
@click.option("--out", type=OUT_FILE, help="Save the recommended LRE here (.safetensors, with a JSON sidecar).")
@click.option("--plot", type=OUT_DIR, help="Folder for the figure of the sweeps, RELATION_sweep.png: faithfulness by "
                                           "layer and beta, causality by layer and by rank.")
@json_option
@device_option
@dtype_option
def fit_cmd(relation_name, model_name, template, config, out, plot, as_json, device, dtype) -> None:
    """Fit a relation's LRE with sweeps of layer, beta and rank; score it against baselines."""
    from lmscope.datasets.relations import load_relation
    from lmscope.relations.study import study

    rel = load_relation(relation_name, template=template)  # a bad name, file or template costs no model load
    if len(rel.pairs) < config.n_train + 2:
        raise click.BadParameter(f"{rel.name} has {len(rel.pairs)} facts; --n-train {config.n_train} needs at least "
                                 f"{config.n_train + 2} (training facts and 2 to test).", param_hint="--n-train")
    precheck(model_name, "--layers", config.sweep_layers)
    stage = Stages(3 if out or plot else 2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device, dtype)
    layers = config.sweep_layers(model)
    stage(f"{rel.name}: the model's answers to {min(len(rel.pairs), config.max_facts)} facts, Jacobians of "
          f"{config.n_train} training facts at {len(layers)} layers, {len(config.betas)} betas, "
          f"{len(config.ranks)} ranks, baselines")
    report = study(model, rel, config)
    path, figures = None, []
    if out or plot:
        stage("writing " + " and ".join(str(p) for p in (out, plot) if p))
    if out:
        path = str(report.lre.save(out, model))
    if plot:
        from pathlib import Path

        from lmscope.plots.relations_plots import sweep_plot

        figures.append(str(sweep_plot(report, Path(plot) / f"{rel.name}_sweep.png")))
    if as_json:
        emit_json({**report.to_dict(), "path": path, "figures": figures})
        return
    print_tables(report)
    c = console()
    if path:
        c.print(f"saved the LRE (layer {report.layer}, beta {report.beta:g}) to {path}: "
                f"`lmscope relation predict {path} SUBJECT...`, `lmscope relation lens {path} PROMPT`",
                highlight=False, markup=False)
    else:
        c.print("pass --out FILE.safetensors to keep the LRE for `relation predict` and `relation lens`.")
    for f in figures:
        c.print(f"figure: {f}", highlight=False, markup=False)


@relation.command("predict")
@lre_argument
@click.argument("subjects", metavar="SUBJECT...", nargs=-1, required=True)
@click.option("--k", default=5, show_default=True, type=click.IntRange(1, 100), help="Top tokens listed.")
@click.option("--template", help="Prompt template with one '{}' for the subject (default: the one the LRE was "
                                  "fitted with).")
@model_option
@json_option
@device_option
@dtype_option
def predict_cmd(lre_file, subjects, k, template, model_name, as_json, device, dtype) -> None:
    """The LRE's top objects for each SUBJECT, next to the model's own next tokens."""
    from lmscope.datasets.relations import check_template
    from lmscope.relations.study import predict_objects

    if any(not s.strip() for s in subjects):
        raise click.BadParameter("a subject is empty.", param_hint="SUBJECT")
    if template:
        check_template(template)  # before the model loads
    stage = Stages(2)
    model, lre = _open_lre(lre_file, model_name, device, dtype, stage)
    rel = _relation_of(lre, lre_file, template)
    stage(f"reading {len(subjects)} subject(s) through the LRE at layer {lre.layer} and through the model")
    pred = predict_objects(model, lre, list(subjects), rel=rel, k=k)
    if as_json:
        emit_json({"model": model.name, "lre": lre_file, "template": rel.template, **pred.to_dict()})
        return
    print_tables(pred)


def _relation_of(lre, lre_file: str, template: str | None):
    """The relation whose prompts `predict` builds: the LRE's demonstrations under --template, else
    under the template the LRE was fitted with (else its shipped relation's)."""
    from lmscope.datasets.relations import Relation, check_template, shipped_relations
    from lmscope.engine.errors import InputError

    shipped = {r["relation"]: r for r in shipped_relations()}.get(lre.relation)
    tpl = template or lre.template or (shipped["template"] if shipped else "")
    if not tpl:
        raise InputError(f"{lre_file} records no prompt template; pass one, e.g. --template 'The capital city of {{}} "
                         "is'.")
    return Relation(lre.relation or "relation", check_template(tpl), tuple(lre.demos),
                    shipped["type"] if shipped else "user", lre_file)


@relation.command("lens")
@lre_argument
@click.argument("prompt")
@click.option("--target", default="", help="Object whose probability is followed, e.g. 'Paris' (its first token).")
@click.option("--layers", type=LAYERS, help="Layers read: '3,6,9', '4:12' (4..11) or 'all' (default).")
@click.option("--plot", type=PLOT_FILE, help="Heatmap of layer x token: p(target), else the top token's probability.")
@model_option
@json_option
@device_option
@dtype_option
def lens_cmd(lre_file, prompt, target, layers, plot, model_name, as_json, device, dtype) -> None:
    """Attribute lens: the LRE applied to every layer and token of PROMPT, read as tokens."""
    from lmscope.relations.attribute_lens import attribute_lens

    stage = Stages(3 if plot else 2)
    model, lre = _open_lre(lre_file, model_name, device, dtype, stage, layers)
    stage(f"applying the {lre.relation or 'relation'} LRE to {len(layers) if layers else model.n_layers} layers of "
          "the prompt" + (f", following {target!r}" if target else ""))
    lens = attribute_lens(model, lre, prompt, target=target, layers=layers)
    figures = []
    if plot:
        from lmscope.plots.relations_plots import attribute_lens_plot

        stage(f"writing {plot}")
        figures.append(str(attribute_lens_plot(lens, plot)))
    if as_json:
        emit_json({"model": model.name, "lre": lre_file, **lens.to_dict(), "figures": figures})
        return
    print_tables(lens)
    for f in figures:
        console().print(f"figure: {f}", highlight=False, markup=False)
