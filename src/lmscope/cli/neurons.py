"""`lmscope neuron ...`: record, top, correlate, ablate, agreement, dose, show."""

from __future__ import annotations

import click

from ._common import (
    HTML_FILE,
    OUT_FILE,
    PLOT_FILE,
    SEED,
    Stages,
    check_layers,
    check_neurons,
    console,
    device_option,
    emit_json,
    json_option,
    load_model,
    model_argument,
    neuron_names,
    precheck,
    progress_enabled,
    resolve_neurons,
    shard_options,
)
from .config_options import Group, config_options
from .params import LAYERS, NEURONS, UNITS, VALUES

_KINDS = click.Choice(["neurons", "gate", "up"])
kind_option = click.option("--kind", default="neurons", show_default=True, type=_KINDS,
                           help="neurons = act(gate)*up (input of down_proj); gate/up = pre-activations.")


def _require_one(neurons, hint: str = "L.N") -> None:
    """A command that takes one neuron: a usage error for more."""
    if len(neurons) != 1:
        raise click.BadParameter(f"names {len(neurons)} neurons; name one, like 5.123.", param_hint=hint)


def _render_examples(c, examples, limit_width: int = 120) -> None:
    from rich.text import Text

    scale = max((abs(a) for e in examples for a in e.acts), default=1.0) or 1.0
    for i, e in enumerate(examples, 1):
        t = Text(f"{i:2d} {e.max_act:8.3f}  ")
        for j, (tok, a) in enumerate(zip(e.tokens, e.acts, strict=True)):
            f = min(abs(a) / scale, 1.0)
            rgb = (255, int(255 - 115 * f), int(255 - 255 * f)) if a >= 0 else (int(255 - 195 * f), int(255 - 135 * f), 255)
            style = f"black on rgb({rgb[0]},{rgb[1]},{rgb[2]})" + (" bold underline" if j == e.max_index else "")
            t.append(tok.replace("\n", "\u21b5"), style=style)
        c.print(t)


def _stats_table(title: str, stats: dict):
    from rich.table import Table

    t = Table("statistic", "value", title=title)
    for k in ("count", "mean", "std", "share_positive", "max", "min"):
        v = stats[k]
        t.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    for q, v in stats["quantiles"].items():
        t.add_row(f"quantile {q}", f"{v:.4g}")
    return t


def _quick_recording(model, layer: int, neuron: int, kind: str, corpus, max_tokens: int, top_k: int):
    from lmscope.neurons.recording import RecordConfig, record

    cfg = RecordConfig(max_tokens=max_tokens, top_k=top_k)
    return record(model, f"layers.{layer}.mlp.{kind}[{neuron}]", corpus, config=cfg, progress=progress_enabled())


def _recording_for(model, layer, neuron, kind, recording, corpus, max_tokens, k, stage=None):
    from lmscope.neurons.recording import NeuronRecording

    if recording:
        if stage:
            stage(f"reading the recording {recording}")
        return NeuronRecording.load(recording, model=model)
    if stage:
        stage(f"recording layers.{layer}.mlp.{kind}[{neuron}] over up to {max_tokens:,} tokens of "
              f"{corpus or 'the shipped corpus'}")
    return _quick_recording(model, layer, neuron, kind, corpus, max_tokens, k)


def _decode(model, layer: int, neuron: int, k: int = 10):
    """The atlas decoding, or (None, reason) when lmscope.neurons.atlas is not available."""
    try:
        from lmscope.neurons.atlas import decode_neuron
    except ImportError as e:
        return None, f"LM-head decoding unavailable (lmscope.neurons.atlas could not be imported: {e})."
    return decode_neuron(model, layer, neuron, k=k), None


def _prompt_set(path: str, field: str | None):
    from lmscope.datasets.corpus import read_prompts

    return read_prompts(path, field=field)


@click.group(cls=Group)
def neuron() -> None:
    """What one neuron does: record, top examples, correlation, ablation, dose-response."""


@neuron.command()
@model_argument
@click.option("--layers", default="all", show_default=True, type=LAYERS, help="Layers recorded: 'all' or like 3,5.")
@kind_option
@click.option("--neurons", "units", type=UNITS, help="Only these neurons of each layer, like 5,17.")
@click.option("--corpus", type=click.Path(exists=True), help="Text/JSONL file or directory (default: shipped).")
@config_options("lmscope.neurons.recording:RecordConfig", exclude={"before", "after", "octave_bins"},
                types={"window": click.IntRange(8, 4096), "top_k": click.IntRange(1, 1000)},
                defaults={"max_tokens": 100_000})
@click.option("--out", "out", type=OUT_FILE, help="Save the recording (.safetensors).")
@shard_options
@json_option
@device_option
def record(model_name, layers, kind, units, corpus, config, out, shards, as_json, device):
    """Record neuron statistics and top contexts over a corpus."""
    from lmscope.neurons.recording import neuron_sites
    from lmscope.neurons.recording import record as do_record

    precheck(model_name, "--layers/--neurons", lambda shape: neuron_sites(shape, layers, kind=kind, units=units))
    stage = Stages(2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device)
    sites = neuron_sites(model, layers, kind=kind, units=units)
    stage(f"recording {len(sites)} neuron sites over up to {config.max_tokens:,} tokens of "
          f"{corpus or 'the shipped corpus'}")
    rec = do_record(model, sites, corpus, config=config, progress=progress_enabled(), shards=shards)
    summary = rec.summary()
    if out:
        summary["path"] = str(rec.save(out, model))
    if as_json:
        emit_json(summary)
        return
    c = console()
    c.print(f"[bold]{model.name}[/bold]: {summary['n_neurons']} neurons in {len(sites)} sites over "
            f"{summary['n_tokens']} tokens in {summary['seconds']:.1f} s ({summary['tokens_per_s']:.0f} tokens/s)")
    if out:
        c.print(f"saved {summary['path']}")


@neuron.command()
@model_argument
@click.argument("neuron_spec", metavar="L.N", type=NEURONS)
@kind_option
@click.option("--recording", type=click.Path(exists=True, dir_okay=False), help="A saved recording.")
@click.option("--corpus", type=click.Path(exists=True), help="Corpus to record over when no --recording.")
@click.option("--max-tokens", type=click.IntRange(1), default=20_000, show_default=True)
@click.option("-k", "k", type=click.IntRange(1, 1000), default=10, show_default=True, help="Examples shown.")
@click.option("--html", "html_path", type=HTML_FILE, help="Write a self-contained HTML page.")
@json_option
@device_option
def top(model_name, neuron_spec, kind, recording, corpus, max_tokens, k, html_path, as_json, device):
    """Max-activating contexts of one neuron, every token coloured by its activation."""
    _require_one(neuron_spec)
    check_neurons(model_name, "L.N", neuron_spec)
    stage = Stages(2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device)
    ((layer, n),) = resolve_neurons(model, neuron_spec)
    rec = _recording_for(model, layer, n, kind, recording, corpus, max_tokens, k, stage=stage)
    ex = rec.examples(layer, n, model.tokenizer, kind=kind, k=k)
    stats = rec.neuron_stats(layer, n, kind=kind)
    if html_path:
        from lmscope.plots.neuron_plots import write_examples_html

        site_rec, j = rec.find(layer, n, kind)
        write_examples_html(html_path, f"{model.name} layers.{layer}.mlp.{kind}[{n}]", [e.to_dict() for e in ex],
                            stats=stats, hist=site_rec.stats.histogram(j))
    if as_json:
        emit_json({"model": model.name, "layer": layer, "neuron": n, "kind": kind, "stats": stats,
                   "examples": [e.to_dict() for e in ex], "html": html_path})
        return
    c = console()
    c.print(f"[bold]{model.name} layers.{layer}.mlp.{kind}[{n}][/bold]: top {len(ex)} of {stats['count']} tokens")
    _render_examples(c, ex)
    if html_path:
        c.print(f"wrote {html_path}")


@neuron.command()
@model_argument
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False),
              help='JSONL {"text", "label"} (or prompt_singular/prompt_plural pairs).')
@click.option("--layer", type=int, help="One layer (default: every layer).")
@click.option("--all", "all_layers", is_flag=True, help="Every layer (the default).")
@kind_option
@click.option("--reduce", default="last", show_default=True, type=click.Choice(["last", "mean"]))
@click.option("--by", default="auroc", show_default=True, type=click.Choice(["auroc", "diff"]))
@click.option("--sign", default="both", show_default=True, type=click.Choice(["both", "pos", "neg"]))
@click.option("--top", "n_top", type=click.IntRange(1), default=20, show_default=True)
@json_option
@device_option
def correlate(model_name, data, layer, all_layers, kind, reduce, by, sign, n_top, as_json, device):
    """Rank neurons by association with a labelled behaviour (AUROC, difference of means)."""
    from lmscope.neurons.correlation import correlate as do_correlate
    from lmscope.neurons.correlation import load_labelled

    if layer is not None and all_layers:
        raise click.UsageError("Pass --layer L or --all, not both.")
    check_layers(model_name, "--layer", layer)
    stage = Stages(2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device)
    texts, labels = load_labelled(data)
    stage(f"recording {kind} at {'layer ' + str(layer) if layer is not None else 'every layer'} over "
          f"{len(texts)} labelled texts")
    res = do_correlate(model, texts, labels, layers=None if layer is None else [layer], kind=kind, reduce=reduce,
                       progress=progress_enabled())
    rows = res.ranked(n_top, by=by, sign=sign)
    if as_json:
        emit_json({"model": model.name, "kind": res.kind, "reduce": reduce, "layers": res.layers,
                   "n_present": res.n_present, "n_absent": res.n_absent,
                   "null_auroc_dev": res.null_auroc_dev, "top": rows})
        return
    from rich.table import Table

    t = Table("layer", "neuron", "AUROC", "mean present", "mean absent", "diff", "d",
              title=f"{model.name}: {res.n_present} present / {res.n_absent} absent ({reduce} token); "
                    f"shuffled-label null: |AUROC-0.5| up to {res.null_auroc_dev:.3f}")
    for r in rows:
        t.add_row(str(r["layer"]), str(r["neuron"]), f"{r['auroc']:.3f}", f"{r['mean_present']:.3f}",
                  f"{r['mean_absent']:.3f}", f"{r['diff']:+.3f}", f"{r['d']:+.2f}")
    console().print(t)


@neuron.command()
@model_argument
@click.argument("neuron_spec", metavar="[L.N,...]", required=False, type=NEURONS)
@click.option("--prompts", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--field", help="JSONL key of the prompt (default: text, else prompt).")
@click.option("--target", required=True, help='Token whose probability is measured, e.g. " these".')
@click.option("--baseline", help='Contrast token for the logit difference, e.g. " this".')
@click.option("--method", default="zero", show_default=True, type=click.Choice(["zero", "mean", "resample"]))
@click.option("--reference", type=click.Path(exists=True), help="Reference texts for mean/resample (default: shipped corpus).")
@click.option("--neutral", type=click.Path(exists=True, dir_okay=False), help="Neutral prompts for the KL (default: shipped).")
@click.option("--n-neutral", type=click.IntRange(0), default=16, show_default=True)
@click.option("--curve", is_flag=True, help="Ablate the top k = 1, 2, 5, ... k-max neurons next to random ones.")
@click.option("--k-max", type=click.IntRange(1), default=50, show_default=True)
@click.option("--rank", "rank_by", default="attribution", show_default=True,
              type=click.Choice(["attribution", "correlation"]), help="How to rank neurons when none are given.")
@click.option("--rank-prompts", type=click.Path(exists=True, dir_okay=False),
              help="Prompts to rank on (attribution; default: --prompts) - hold some out.")
@click.option("--rank-data", type=click.Path(exists=True, dir_okay=False), help="Labelled JSONL (correlation).")
@click.option("--n-random", type=click.IntRange(1), default=3, show_default=True)
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--plot", "plot_path", type=PLOT_FILE, help="PNG of the curve.")
@json_option
@device_option
def ablate(model_name, neuron_spec, prompts, field, target, baseline, method, reference, neutral, n_neutral, curve, k_max,
           rank_by, rank_prompts, rank_data, n_random, seed, plot_path, as_json, device):
    """Ablate neurons and measure target-token probabilities, flips and neutral KL."""
    from lmscope.datasets import shipped
    from lmscope.datasets.corpus import read_prompts, read_texts
    from lmscope.neurons import causal as nc
    from lmscope.neurons.correlation import correlate as do_correlate
    from lmscope.neurons.correlation import load_labelled

    if not curve and not neuron_spec:
        raise click.UsageError("Name the neurons (L.N,...) or pass --curve to rank them.")
    check_neurons(model_name, "L.N,...", neuron_spec)
    stage = Stages(2 + (method != "zero") + (curve and not neuron_spec))
    ps = _prompt_set(prompts, field)  # files are read before the model load: a bad one costs nothing
    neutral_path = neutral or str(shipped.path("neutral_prompts.jsonl"))
    neu = read_prompts(neutral_path)[:n_neutral] if n_neutral else None
    stage(f"loading {model_name}")
    model = load_model(model_name, device)
    ref = None
    if method != "zero":
        stage(f"reference activations for {method} ablation")
        ref = nc.reference_activations(model, read_texts(reference) if reference else None)
    if not curve:
        stage(f"{method}-ablating {neuron_names(neuron_spec)} on {len(ps)} prompts")
        eff = nc.ablate(model, resolve_neurons(model, neuron_spec), ps, target=target, baseline=baseline, method=method,
                        reference=ref, neutral=neu, seed=seed)
        if as_json:
            emit_json({"model": model.name, "target": target, "baseline": baseline, **eff.to_dict()})
            return
        _print_effect(model, eff, target, baseline)
        return
    if neuron_spec:
        ranking, ranked_by = resolve_neurons(model, neuron_spec), "given"
    elif rank_by == "attribution":
        rp = _prompt_set(rank_prompts, field) if rank_prompts else ps
        stage(f"ranking neurons by attribution on {len(rp)} prompts")
        scores = nc.attribute(model, rp, target=target, baseline=baseline, reference=ref)
        ranking, ranked_by = nc.top_neurons(scores, k_max), "attribution"
    else:
        if not rank_data:
            raise click.UsageError("--rank correlation needs --rank-data FILE (labelled JSONL).")
        texts, labels = load_labelled(rank_data)
        stage(f"ranking neurons by correlation over {len(texts)} labelled texts")
        res = do_correlate(model, texts, labels)
        ranking, ranked_by = [(r["layer"], r["neuron"]) for r in res.ranked(k_max, sign="pos")], "correlation"
    ks = [k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if k < min(k_max, len(ranking))]
    ks.append(min(k_max, len(ranking)))
    stage(f"ablation curve: top k = {', '.join(map(str, ks))} neurons vs {n_random} random draws on {len(ps)} prompts")
    cr = nc.ablation_curve(model, ranking, ps, target=target, baseline=baseline, ks=ks, method=method, reference=ref,
                           neutral=neu, n_random=n_random, seed=seed, progress=progress_enabled())
    d = cr.to_dict()
    if plot_path:
        from lmscope.plots.neuron_plots import plot_ablation_curve

        plot_ablation_curve(d, plot_path, title=f"{model.name}: {method} ablation, target {target!r}")
    if as_json:
        emit_json({"model": model.name, "target": target, "baseline": baseline, "ranked_by": ranked_by,
                   "ranking": [list(n) for n in ranking], "plot": plot_path, **d})
        return
    _print_curve(model, cr, ranked_by, target, baseline)
    if plot_path:
        console().print(f"wrote {plot_path}")


@neuron.command()
@model_argument
@click.option("--n-rank", type=click.IntRange(1), default=20, show_default=True, help="Rows used to rank neurons.")
@click.option("--n-eval", type=click.IntRange(1), default=20, show_default=True, help="Held-out rows measured.")
@click.option("--k-max", type=click.IntRange(1), default=50, show_default=True)
@click.option("--n-random", type=click.IntRange(1), default=3, show_default=True)
@click.option("--method", default="zero", show_default=True, type=click.Choice(["zero", "mean", "resample"]))
@click.option("--n-neutral", type=click.IntRange(0), default=16, show_default=True)
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--plot", "plot_path", type=PLOT_FILE, help="PNG of the curve.")
@json_option
@device_option
def agreement(model_name, n_rank, n_eval, k_max, n_random, method, n_neutral, seed, plot_path, as_json, device):
    """Singular/plural demo: ablate the top "these"-vs-"this" neurons vs random ones."""
    from lmscope.neurons.agreement import agreement_demo

    stage = Stages(2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device)
    ks = sorted({k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500) if k < k_max} | {k_max})
    stage(f"ranking neurons on {n_rank} prompts, then ablating the top k = {', '.join(map(str, ks))} vs random "
          f"on {n_eval} held-out prompts")
    demo = agreement_demo(model, n_rank=n_rank, n_eval=n_eval, ks=ks, n_random=n_random, method=method,
                          n_neutral=n_neutral, seed=seed, progress=progress_enabled())
    d = demo.to_dict()
    if plot_path:
        from lmscope.plots.neuron_plots import plot_ablation_curve

        plot_ablation_curve(d["curve"], plot_path, title=f"{model.name}: {method} ablation of the top-k agreement "
                                                          f"neurons vs random ({n_eval} held-out prompts)")
    if as_json:
        emit_json({**d, "plot": plot_path})
        return
    c = console()
    top = ", ".join(f"{r['layer']}.{r['neuron']}" for r in d["ranking"][:5])
    c.print(f"[bold]{model.name}[/bold]: top neurons by attribution to LD({demo.target!r} - {demo.baseline!r}) "
            f"on {n_rank} plural prompts: {top}")
    c.print(f"held-out singular prompts: mean LD {demo.clean_singular_ld:+.3f} (should be < 0)")
    _print_curve(model, demo.curve, "attribution", demo.target, demo.baseline)
    if plot_path:
        c.print(f"wrote {plot_path}")


@neuron.command()
@model_argument
@click.argument("neuron_spec", metavar="L.N[,L.N...]", type=NEURONS)
@click.option("--prompts", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--field", help="JSONL key of the prompt (default: text, else prompt).")
@click.option("--target", required=True, help='Token whose probability is measured, e.g. " these".')
@click.option("--baseline", help="Contrast token.")
@click.option("--values", default="-4:8:13", show_default=True, type=VALUES,
              help="START:STOP:COUNT (inclusive) or a list 0,2,4.")
@click.option("--positions", default="all", show_default=True, help="all, last, or token indices.")
@click.option("--plot", "plot_path", type=PLOT_FILE, help="PNG of the curve.")
@json_option
@device_option
def dose(model_name, neuron_spec, prompts, field, target, baseline, values, positions, plot_path, as_json, device):
    """Set neurons to a range of values and measure the target probability."""
    from lmscope.engine.positions import normalize
    from lmscope.neurons.causal import dose_response

    check_neurons(model_name, "L.N[,L.N...]", neuron_spec)
    ps = _prompt_set(prompts, field)  # read before the model load
    stage = Stages(2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device)
    stage(f"setting {neuron_names(neuron_spec)} to {len(values)} values on the prompts of {prompts}")
    res = dose_response(model, resolve_neurons(model, neuron_spec), ps, target=target,
                        baseline=baseline, values=list(values), positions=normalize(positions),
                        progress=progress_enabled())
    d = res.to_dict()
    if plot_path:
        from lmscope.plots.neuron_plots import plot_dose

        plot_dose(d, plot_path)
    if as_json:
        emit_json({"model": model.name, **d, "plot": plot_path})
        return
    from rich.table import Table

    nat = res.natural
    t = Table("value", f"p({res.target!r})", *( [f"p({res.baseline!r})", "LD"] if baseline else []),
              title=f"{model.name} dose-response; clean p={res.clean_p_target:.4f}; natural range "
                    f"q01 {nat['q01']:.3g} .. q99 {nat['q99']:.3g} (median {nat['q50']:.3g})")
    for i, v in enumerate(res.values):
        extra = [f"{res.p_baseline[i]:.4f}", f"{res.ld[i]:+.3f}"] if baseline else []
        t.add_row(f"{v:g}", f"{res.p_target[i]:.4f}", *extra)
    console().print(t)
    if plot_path:
        console().print(f"wrote {plot_path}")


@neuron.command()
@model_argument
@click.argument("neuron_spec", metavar="L.N", type=NEURONS)
@click.option("--recording", type=click.Path(exists=True, dir_okay=False), help="A saved recording.")
@click.option("--corpus", type=click.Path(exists=True), help="Corpus to record over when no --recording.")
@click.option("--max-tokens", type=click.IntRange(1), default=8192, show_default=True)
@click.option("-k", "k", type=click.IntRange(1, 1000), default=8, show_default=True)
@click.option("--html", "html_path", type=HTML_FILE, help="Write a self-contained HTML page.")
@json_option
@device_option
def show(model_name, neuron_spec, recording, corpus, max_tokens, k, html_path, as_json, device):
    """One neuron: LM-head decoding, statistics and top examples."""
    _require_one(neuron_spec)
    check_neurons(model_name, "L.N", neuron_spec)
    stage = Stages(3)
    stage(f"loading {model_name}")
    model = load_model(model_name, device)
    ((layer, n),) = resolve_neurons(model, neuron_spec)
    stage(f"decoding neuron {layer}.{n} through the LM head")
    decoding, why = _decode(model, layer, n)
    rec = _recording_for(model, layer, n, "neurons", recording, corpus, max_tokens, k, stage=stage)
    ex = rec.examples(layer, n, model.tokenizer, k=k)
    stats = rec.neuron_stats(layer, n)
    if html_path:
        from lmscope.plots.neuron_plots import write_examples_html

        site_rec, j = rec.find(layer, n)
        write_examples_html(html_path, f"{model.name} layers.{layer}.mlp.neurons[{n}]", [e.to_dict() for e in ex],
                            stats=stats, decoding=decoding, hist=site_rec.stats.histogram(j))
    if as_json:
        emit_json({"model": model.name, "layer": layer, "neuron": n, "decoding": decoding, "decoding_error": why,
                   "stats": stats, "examples": [e.to_dict() for e in ex], "recorded_tokens": rec.n_tokens,
                   "html": html_path})
        return
    c = console()
    c.print(f"[bold]{model.name} layers.{layer}.mlp.neurons[{n}][/bold]")
    if decoding is None:
        c.print(f"[yellow]{why}[/yellow]")
    else:
        from rich.markup import escape

        for kind, toks in decoding.items():
            if toks:
                c.print(f"[bold]{kind}[/bold]: " + " ".join(escape(repr(t)) for t, _ in toks))
    c.print(_stats_table(f"statistics over {rec.n_tokens} tokens", stats))
    _render_examples(c, ex)
    if html_path:
        c.print(f"wrote {html_path}")


def _print_effect(model, eff, target, baseline) -> None:
    from rich.table import Table

    t = Table("metric", "before", "after", title=f"{model.name}: {eff.method} ablation of {len(eff.neurons)} neurons "
                                                   f"on {eff.n_prompts} prompts")
    t.add_row(f"mean p({target!r})", f"{eff.p_target_before:.4f}", f"{eff.p_target_after:.4f}")
    if eff.ld_before is not None:
        t.add_row(f"mean logit diff {target!r} - {baseline!r}", f"{eff.ld_before:+.3f}", f"{eff.ld_after:+.3f}")
        t.add_row(f"share preferring {target!r}", f"{eff.acc_before:.2f}", f"{eff.acc_after:.2f}")
        t.add_row("judgement flips (LD sign)", "", f"{eff.judgement_flip_rate:.2f}")
    t.add_row("top-1 token flips", "", f"{eff.top1_flip_rate:.2f}")
    if eff.kl_neutral is not None:
        t.add_row("KL on neutral prompts", "", f"{eff.kl_neutral:.4g}")
    console().print(t)


def _print_curve(model, cr, ranked_by, target, baseline) -> None:
    from rich.table import Table

    t = Table("k", "dLD top", "dLD random", "judgement flips top", "random", "top-1 flips top", "random",
              "KL top", "KL random",
              title=f"{model.name}: {cr.method} ablation of the top-k neurons (ranked by {ranked_by}) vs "
                    f"{cr.n_random} random draws; target {target!r}" + (f" vs {baseline!r}" if baseline else ""))

    def fmt(v, spec):
        return "" if v is None else format(v, spec)

    for k, e, r in zip(cr.ks, cr.top, cr.random, strict=True):
        def rnd(key, spec, r=r):
            return "" if key not in r else f"{format(r[key]['mean'], spec)}±{format(r[key]['std'], '.2g')}"
        t.add_row(str(k), fmt(e.delta_ld, "+.3f"), rnd("delta_ld", "+.3f"), fmt(e.judgement_flip_rate, ".2f"),
                  rnd("judgement_flip_rate", ".2f"), fmt(e.top1_flip_rate, ".2f"), rnd("top1_flip_rate", ".2f"),
                  fmt(e.kl_neutral, ".3g"), rnd("kl_neutral", ".3g"))
    console().print(t)
