"""`lmscope lens ...`: logit lens, tuned-lens training and comparison, latent language."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import (
    OUT_DIR,
    OUT_FILE,
    SEED,
    Stages,
    console,
    device_option,
    dtype_option,
    emit_json,
    json_option,
    load_model,
    model_name_argument,
    progress_enabled,
)
from .config_options import Group, config_options


@click.group(cls=Group)
def lens() -> None:
    """Read the residual stream in token space at every layer (logit / tuned lens)."""


@lens.command("logit", short_help="Logit lens of a prompt: every layer x position.")
@model_name_argument
@click.argument("prompt")
@click.option("--target", "targets", multiple=True, help='Token to follow, e.g. " Warsaw" (repeatable).')
@click.option("--top-k", "top_k", default=5, show_default=True, type=click.IntRange(1, 100))
@click.option("--tuned", "tuned_file", type=click.Path(dir_okay=False), help="Use this tuned lens artifact.")
@click.option("--chat", is_flag=True, help="Apply the model's chat template.")
@click.option("--out", "out_dir", type=OUT_DIR,
              help="Write the heatmap (PNG and HTML) and the target plot here.")
@json_option
@device_option
@dtype_option
def logit(model_name, prompt, targets, top_k, tuned_file, chat, out_dir, as_json, device, dtype) -> None:
    """Logit lens of PROMPT: top tokens per layer x position, targets' probability and rank."""
    from lmscope.lens.logit import logit_lens

    model = load_model(model_name, device, dtype)
    if tuned_file:
        from lmscope.lens.tuned import TunedLens

        res = TunedLens.load(tuned_file, model).run(model, prompt, targets=list(targets), top_k=top_k, chat=chat)
    else:
        res = logit_lens(model, prompt, targets=list(targets), top_k=top_k, chat=chat)
    files = _lens_figures(res, out_dir) if out_dir else {}
    if as_json:
        emit_json({**res.to_dict(), "files": files})
        return
    _print_lens(res, files)


@lens.command("tuned-train", short_help="Train a tuned lens (model frozen).")
@model_name_argument
@click.option("--corpus", type=click.Path(exists=True), help="Text file, JSONL ({'text'}), JSON list or folder "
              "(default: the shipped corpus).")
@config_options("lmscope.lens.tuned:TunedLensConfig",
                exclude={"window", "momentum", "warmup", "weight_decay", "grad_clip", "holdout"})
@click.option("--out", "out_file", type=OUT_FILE,
              help="Artifact path (default: MODEL.tuned_lens.safetensors).")
@click.option("--resume", is_flag=True, help="Continue training the artifact at --out.")
@json_option
@device_option
@dtype_option
def tuned_train(model_name, corpus, config, out_file, resume, as_json, device, dtype) -> None:
    """Train a tuned lens for MODEL (an affine translator per layer; the model frozen)."""
    from lmscope.lens.tuned import train_tuned_lens

    stage = Stages(2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device, dtype)
    out_file = out_file or f"{model.name}.tuned_lens.safetensors"
    stage(f"training a tuned lens for {config.steps} steps of {config.batch_size} windows on "
          f"{corpus or 'the shipped corpus'}, "
          f"checkpoints in {out_file}")
    lens, tlog = train_tuned_lens(model, corpus, config=config, out=out_file, resume=resume,
                                  progress=progress_enabled() and not as_json)
    d = {"model": model.name, "out": str(Path(out_file).with_suffix(".safetensors")), "steps": lens.meta.get("step"),
         "steps_run": len(tlog.steps), "first_kl": tlog.loss[0] if tlog.loss else None,
         "last_kl": tlog.loss[-1] if tlog.loss else None, "layer_kl": tlog.layer_kl,
         "seconds": round(tlog.seconds, 2), "tokens_per_s": round(tlog.tokens_per_s, 2)}
    if as_json:
        emit_json(d)
        return
    if not tlog.steps:
        console().print(f"{out_file} already has {lens.meta.get('step')} steps; raise --steps to train more.")
        return
    console().print(f"Trained {d['steps_run']} steps (now {d['steps']}) in {d['seconds']} s "
                    f"({d['tokens_per_s']} positions/s); mean KL {d['first_kl']:.3f} -> {d['last_kl']:.3f} nats. "
                    f"Saved {d['out']}")


@lens.command("compare", short_help="Per-layer KL: logit vs tuned lens.")
@model_name_argument
@click.option("--tuned", "tuned_file", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--corpus", type=click.Path(exists=True), help="Held-out text (default: the held-out windows "
              "of the shipped corpus).")
@click.option("--positions", default=256, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=1, show_default=True, type=SEED)
@click.option("--out", "out_dir", type=OUT_DIR, help="Write kl_comparison.png here.")
@json_option
@device_option
@dtype_option
def compare(model_name, tuned_file, corpus, positions, seed, out_dir, as_json, device, dtype) -> None:
    """Logit vs tuned lens: per-layer KL to the model's output on held-out text."""
    from lmscope.lens.tuned import TunedLens, compare_lenses

    stage = Stages(2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device, dtype)
    lens = TunedLens.load(tuned_file, model)
    stage(f"per-layer KL of both lenses on {positions} held-out positions")
    cmp = compare_lenses(model, lens, corpus, n_positions=positions, seed=seed)
    files = {}
    if out_dir:
        from lmscope.plots.lens_plots import plot_kl_comparison

        files["kl_png"] = str(plot_kl_comparison(cmp, Path(out_dir) / "kl_comparison.png"))
    if as_json:
        emit_json({**cmp.to_dict(), "files": files})
        return
    from rich.table import Table

    t = Table("layer", "logit KL", "tuned KL", "ratio", "logit top-1", "tuned top-1",
              title=f"{model.name}: KL(output || lens), {cmp.logit.n_positions} positions of {cmp.text}")
    for i, layer in enumerate(cmp.logit.layers):
        lg, tu = float(cmp.logit.kl[i]), float(cmp.tuned.kl[i])
        t.add_row(str(layer), f"{lg:.3f}", f"{tu:.3f}", f"{lg / tu:.1f}x" if tu > 1e-6 else "-",
                  f"{float(cmp.logit.top1_agreement[i]):.2f}", f"{float(cmp.tuned.top1_agreement[i]):.2f}")
    c = console()
    c.print(t)
    wins = cmp.tuned_wins
    c.print(f"tuned < logit on {sum(wins)}/{len(wins)} layers (all but the last)." +
            (f" Figure: {files['kl_png']}" if files else ""))


@lens.command("latent", short_help="Latent language: target vs English per layer.")
@model_name_argument
@config_options("lmscope.lens.latent:LatentConfig", exclude={"single_token", "batch_size"},
                types={"shots": click.IntRange(1, 20)})
@click.option("--data", "data_file", type=click.Path(exists=True, dir_okay=False),
              help="JSONL of word translations, one object per line keyed by language (default: shipped).")
@click.option("--out", "out_dir", type=OUT_DIR, help="Write latent_language.png here.")
@json_option
@device_option
@dtype_option
def latent(model_name, config, data_file, out_dir, as_json, device, dtype) -> None:
    """Latent language: P(answer) per layer in the target language, English and the source.

    Few-shot word-translation prompts (Wendler et al. 2024) read with the logit lens at the
    last position; does the English word surface before the target word?"""
    from lmscope.lens.latent import latent_language

    src, tgt = config.src, config.tgt
    stage = Stages(2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device, dtype)
    stage(f"logit lens over {config.shots}-shot {src}->{tgt} word-translation prompts")
    res = latent_language(model, data_file, config=config, progress=progress_enabled() and not as_json)
    files = {}
    if out_dir:
        from lmscope.plots.lens_plots import plot_latent_language

        files["png"] = str(plot_latent_language(res, Path(out_dir) / f"latent_{src}_{tgt}.png"))
    if as_json:
        emit_json({**res.to_dict(), "files": files})
        return
    from rich.table import Table

    labels = res.curve_labels()
    t = Table("layer", *labels.values(), title=f"{model.name}: {src}->{tgt}, {res.n_items} words "
              f"({res.n_skipped} skipped), accuracy {res.accuracy:.0%}")
    means = {k: res.band(k)[0] for k in labels}
    for i, layer in enumerate(res.layers):
        t.add_row(str(layer), *(f"{float(means[k][i]):.3f}" for k in labels))
    c = console()
    c.print(t)
    c.print(res.summary() + (f" Figure: {files['png']}" if files else ""))


def _lens_figures(res, out_dir) -> dict:
    from lmscope.plots.lens_plots import lens_html, plot_lens_heatmap, plot_target_probs

    out = Path(out_dir)
    files = {"heatmap_png": str(plot_lens_heatmap(res, out / f"{res.lens}_lens.png")),
             "heatmap_html": str(lens_html(res, out / f"{res.lens}_lens.html"))}
    if res.targets:
        files["targets_png"] = str(plot_target_probs(res, out / f"{res.lens}_lens_targets.png"))
    return files


def _print_lens(res, files: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    c = console()
    t = Table("layer", "top 5 at the last position", "KL", *[repr(x) for x in res.targets],
              title=f"{res.model}: {res.lens} lens of {res.prompt!r}")
    for li, layer in enumerate(res.layers):
        pairs = zip(res.top_tokens[li][-1][:5], res.top_probs[li, -1, :5], strict=True)
        tops = "  ".join(f"{tok!r} {float(q):.2f}" for tok, q in pairs)
        tcols = [f"{float(res.target_probs[li, -1, j]):.3f} (#{int(res.target_ranks[li, -1, j])})"
                 for j in range(len(res.targets))]
        t.add_row(str(layer), escape(tops), f"{float(res.kl[li, -1]):.2f}", *tcols)
    c.print(t)
    for x in res.targets:
        c.print(f"{x!r}: enters the top-{res.top_k} at layer {res.entry_layer(x)}, "
                f"stays from layer {res.settle_layer(x)}.")
    for k, v in files.items():
        c.print(f"{k}: {v}")
