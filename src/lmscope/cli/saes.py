"""`lmscope sae ...`: train sparse autoencoders and transcoders, evaluate them, read and steer their latents.

    lmscope sae train [MODEL] --site layers.6.resid_post --out DIR   one coder per site, with its card
    lmscope sae eval SAE_DIR [MODEL]                                  the evaluation card on held-out text
    lmscope sae features SAE_DIR [MODEL]                              latent statistics + the search index
    lmscope sae show SAE_DIR FEATURE [MODEL] --html f.html            one latent's page
    lmscope sae search SAE_DIR WORD                                   latents by word (no model once indexed)
    lmscope sae steer SAE_DIR FEATURE [MODEL] --mode add --value 4    steer with a latent, vs a random one

SAE_DIR is a folder written by `sae train` (one sub-folder per site) or any format
`lmscope.saes.loading.load_sae` reads (SAELens, sparsify, Gemma Scope 2). MODEL defaults to the
model an lmscope SAE was saved for (its sidecar says), else gemma-3-270m. `sae features` writes
`features.safetensors` and `features.sqlite` beside the SAE; `show` and `search` read them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import click

from ._common import (
    HTML_FILE,
    OUT_DIR,
    PLOT_FILE,
    SEED,
    Stages,
    check_sites,
    console,
    device_option,
    dtype_option,
    emit_json,
    json_option,
    load_model,
    model_argument,
    print_tables,
    progress_enabled,
)
from .config_options import Group, config_options
from .params import WORDS

#: `lmscope.saes.loading.FORMATS`, spelled out so that `--help` imports no torch (a test keeps them equal)
FORMATS = ("lmscope", "saelens", "sparsify", "gemmascope2")
DEFAULT_MODEL = "gemma-3-270m"


class _Finite(click.FloatRange):
    """A float range that also refuses nan and inf (click's range lets nan through)."""

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return v


#: bounds the command line puts on TrainConfig's fields (the dataclass checks only a few)
TRAIN_TYPES = {
    "expansion": click.IntRange(1, 1024), "d_sae": click.IntRange(1, 2**24), "k": click.IntRange(1, 2**16),
    "aux_k": click.IntRange(1, 2**16), "aux_coef": _Finite(0), "dead_tokens": click.IntRange(1),
    "l1_coef": _Finite(0), "l0_coef": _Finite(0), "bandwidth": _Finite(0, min_open=True),
    "lr": _Finite(0, min_open=True), "warmup_steps": click.IntRange(0, 10**9), "decay_frac": _Finite(0, 1),
    "batch_size": click.IntRange(1, 2**24), "total_tokens": click.IntRange(1, 10**13),
    "buffer_tokens": click.IntRange(1, 2**28), "checkpoint_every": click.IntRange(0), "log_every": click.IntRange(1),
}
sae_dir_argument = click.argument("sae_dir", type=click.Path(exists=True))
#: MODEL after SAE_DIR: optional, the SAE's own model by default
sae_model_argument = click.argument("model_name", metavar="[MODEL]", required=False)
site_option = click.option("--site", help="Where the SAE reads, e.g. layers.6.resid_post (when its files do not say, "
                                          "or for one hookpoint of a sparsify folder).")
format_option = click.option("--format", "fmt", type=click.Choice(FORMATS), help="The SAE's file format (default: detected).")


# ---- helpers ---------------------------------------------------------------------------------------

def _folder(sae_dir: str) -> Path:
    """Where the SAE's feature statistics and index live: its folder."""
    p = Path(sae_dir).expanduser()
    return p if p.is_dir() else p.parent


def _sidecar(sae_dir: str) -> dict:
    """The JSON sidecar of an lmscope SAE ({} for other formats or one that cannot be read:
    `load_sae` then says why)."""
    from lmscope.engine.artifacts import SIDECAR_SUFFIX
    from lmscope.saes.loading import WEIGHTS

    p = Path(sae_dir).expanduser()
    side = p / (WEIGHTS + SIDECAR_SUFFIX) if p.is_dir() else (
        p if p.name.endswith(".safetensors" + SIDECAR_SUFFIX) else Path(str(p) + SIDECAR_SUFFIX))
    try:
        d = json.loads(side.read_bytes())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _model_for(sae_dir: str, model_name: str | None) -> str:
    """MODEL as given, else the model the SAE was saved for, else the default."""
    if model_name:
        return model_name
    name = _sidecar(sae_dir).get("model")
    return name if isinstance(name, str) and name else DEFAULT_MODEL


def _check_feature(sae_dir: str, feature: int) -> None:
    """FEATURE against the latent count an lmscope SAE's sidecar gives, before the model loads."""
    spec = _sidecar(sae_dir).get("spec")
    d_sae = spec.get("d_sae") if isinstance(spec, dict) else None
    if isinstance(d_sae, int) and d_sae > 0 and not -d_sae <= feature < d_sae:
        raise click.BadParameter(f"Feature {feature} is out of range: {sae_dir} has {d_sae} latents "
                                 f"(0..{d_sae - 1}, or -{d_sae}..-1 from the end).", param_hint="FEATURE")


def _feature(coder, feature: int) -> int:
    """FEATURE checked against the loaded coder; negative counts from the end."""
    from lmscope.engine.errors import InputError

    n = coder.d_sae
    if not -n <= feature < n:
        raise InputError(f"Feature {feature} is out of range: {coder!r} has {n} latents (0..{n - 1}, or -{n}..-1).")
    return feature % n


def _open(stage: Stages, sae_dir: str, model_name: str | None, site, fmt, device: str, dtype: str):
    """(model, coder): MODEL loaded, the SAE loaded and checked against it."""
    from lmscope.saes.loading import detect_format, load_sae

    fmt = fmt or detect_format(sae_dir)  # a folder of no known format fails before the model load
    name = _model_for(sae_dir, model_name)
    stage(f"loading {name}")
    model = load_model(name, device, dtype)
    return model, load_sae(sae_dir, model=model, site=site, format=fmt)


def _check_text(text: str | None, hint: str = "--text") -> None:
    if text and not text.startswith("hf:") and not Path(text).expanduser().exists():
        raise click.BadParameter(f"{text!r} is not a file or folder (nor hf:NAME[:CONFIG[:SPLIT]], a Hugging Face "
                                 "dataset).", param_hint=hint)


def _texts(model, text: str | None, *, held_out: bool):
    """(documents, label). `text` None: the shipped corpus, only its held-out part when `held_out`
    (the part `sae train` leaves out with seed 0); otherwise every document of `text`."""
    from lmscope.datasets.text_sources import training_text

    if text is None and held_out:
        src = training_text(model, None, sample_tokens=0)
        return src.held_out, f"held out from the {src.label}"
    src = training_text(model, text, sample_tokens=0, held_out=0.0)
    return src.train, src.label


def _check_writable(folder: Path, name: str, what: str) -> None:
    from lmscope.engine.artifacts import check_writable

    check_writable(folder / name, what=what)


# ---- the group -------------------------------------------------------------------------------------

@click.group(cls=Group)
def sae() -> None:
    """Sparse autoencoders and transcoders: train, evaluate, read latents, search them, steer."""


@sae.command("train")
@model_argument
@click.option("--site", "sites", multiple=True, required=True,
              help="Site to read, e.g. layers.6.resid_post (repeatable; a transcoder reads layers.L.mlp_in).")
@click.option("--site-out", help="A transcoder's output site, when not the mlp_out of its mlp_in layer (one --site).")
@click.option("--out", type=OUT_DIR, required=True, help="Folder for the coders (one sub-folder per site) and the checkpoint.")
@click.option("--text", help="Training text: a .txt/.jsonl/.json file, a folder, or hf:NAME[:CONFIG[:SPLIT]] "
                             "(default: the shipped corpus + text sampled from MODEL).")
@click.option("--sample-tokens", default=16_384, show_default=True, type=click.IntRange(0, 10**9),
              help="Without --text: tokens MODEL writes itself, added to the shipped corpus (0: the corpus only).")
@click.option("--activations", default="cache", show_default=True, type=click.Choice(["cache", "stream"]),
              help="Cache the activations on disk (reused by later runs) or stream them from the model.")
@click.option("--max-tokens", type=click.IntRange(1), help="Activation tokens collected (default: all of the text).")
@click.option("--window", default=128, show_default=True, type=click.IntRange(8, 8192), help="Tokens per text window.")
@click.option("--eval-tokens", default=16384, show_default=True, type=click.IntRange(1),
              help="Held-out tokens the card is computed on.")
@click.option("--no-card", is_flag=True, help="Skip the evaluation card.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --out (saved with --checkpoint-every).")
@config_options("lmscope.saes.training:TrainConfig", exclude={"progress"}, types=TRAIN_TYPES)
@click.option("--plot", type=PLOT_FILE, help="Training curves: FVU, L0 and dead latents against tokens.")
@json_option
@device_option
@dtype_option
def train_cmd(model_name, sites, site_out, out, text, sample_tokens, activations, max_tokens, window, eval_tokens,
              no_card, resume, config, plot, as_json, device, dtype) -> None:
    """Train an SAE or transcoder per site; print each one's evaluation card."""
    from lmscope.saes.pipeline import train_sae

    check_sites(model_name, "--site", sites)
    _check_text(text)
    if site_out and config.kind == "sae":
        raise click.BadParameter("an SAE reconstructs its own site; --site-out is for --kind transcoder or "
                                 "skip_transcoder.", param_hint="--site-out")
    config = dataclasses.replace(config, progress=progress_enabled())
    stage = Stages(3 if plot else 2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device, dtype)
    stage(f"training {config.kind} {config.arch} at {', '.join(sites)}: text, activations, {config.n_steps} steps"
          + ("" if no_card else ", card"))
    results = train_sae(model, list(sites), config, text=text, sample_tokens=sample_tokens, activations=activations,
                        max_tokens=max_tokens, window=window, site_out=site_out, out=out, resume=resume,
                        eval_tokens=eval_tokens, evaluate_card=not no_card)
    dicts = [r.to_dict() for r in results]
    figures = []
    if plot:
        from lmscope.plots.sae_plots import plot_training_curve

        stage(f"writing {plot}")
        curves = {_where(d["spec"]): r.history.rows for d, r in zip(dicts, results, strict=True)}
        figures.append(str(plot_training_curve(curves, plot)))
    if as_json:
        emit_json({"model": model.name, "out": out, "coders": dicts, "figures": figures})
        return
    c = console()
    for d, r in zip(dicts, results, strict=True):
        print_tables(r.card if r.card is not None else r)
        t = d["train"]
        fvu = t["final"]["fvu"] if t["final"] else math.nan
        c.print(f"{_where(d['spec'])}: {t['steps']} steps, {t['tokens']:,} tokens at {t['tokens_per_s']:,.0f}/s, "
                f"final training FVU {fvu:.4g}; saved in {d['path']}", highlight=False)
        if r.card is None and not no_card:
            c.print("no card: the text has no held-out document (a .txt file is one document); pass a .jsonl of "
                    f"several documents, or run `lmscope sae eval {d['path']} --text FILE`.", highlight=False)


def _where(spec: dict) -> str:
    site, out = spec.get("site", ""), spec.get("site_out", "")
    return site if not out or out == site else f"{site} -> {out}"


@sae.command("eval")
@sae_dir_argument
@sae_model_argument
@click.option("--text", help="Text file, folder or hf:NAME to evaluate on (default: the held-out part of the "
                             "shipped corpus).")
@click.option("--tokens", default=16384, show_default=True, type=click.IntRange(1), help="Text tokens evaluated.")
@click.option("--window", default=128, show_default=True, type=click.IntRange(8, 8192), help="Tokens per text window.")
@site_option
@format_option
@json_option
@device_option
@dtype_option
def eval_cmd(sae_dir, model_name, text, tokens, window, site, fmt, as_json, device, dtype) -> None:
    """Evaluate an SAE on text: variance explained, L0, dead latents, CE loss recovered."""
    from lmscope.saes.evaluation import evaluate

    _check_text(text)
    stage = Stages(2)
    model, coder = _open(stage, sae_dir, model_name, site, fmt, device, dtype)
    texts, label = _texts(model, text, held_out=True)
    stage(f"evaluating {coder!r} on {label}")
    card = evaluate(model, coder, texts, max_tokens=tokens, window=window, text_label=label)
    if as_json:
        emit_json({"path": sae_dir, **card.to_dict()})
        return
    print_tables(card)


@sae.command("features")
@sae_dir_argument
@sae_model_argument
@click.option("--text", help="Text file, folder or hf:NAME to read (default: the shipped corpus).")
@click.option("--tokens", default=100_000, show_default=True, type=click.IntRange(1), help="Text tokens read.")
@click.option("--window", default=64, show_default=True, type=click.IntRange(8, 8192), help="Tokens per text window.")
@click.option("--top-n", default=20, show_default=True, type=click.IntRange(1, 1000),
              help="Max-activating contexts kept per latent.")
@click.option("--plot", type=PLOT_FILE, help="Histogram of the latents' firing frequencies (log10).")
@site_option
@format_option
@json_option
@device_option
@dtype_option
def features_cmd(sae_dir, model_name, text, tokens, window, top_n, plot, site, fmt, as_json, device, dtype) -> None:
    """Latent statistics, top contexts and the search index, written beside the SAE."""
    from lmscope.saes.features import STATS_FILE

    _check_text(text)
    folder = _folder(sae_dir)
    _check_writable(folder, STATS_FILE, "feature statistics")
    stage = Stages(3)
    model, coder = _open(stage, sae_dir, model_name, site, fmt, device, dtype)
    stats, files = _build_features(stage, model, coder, folder, text, tokens=tokens, window=window, top_n=top_n)
    if plot:
        from lmscope.plots.sae_plots import plot_feature_density

        files["density_plot"] = str(plot_feature_density(stats, plot))
    if as_json:
        tables = stats.tables()
        emit_json({**stats.to_dict(), "most_frequent": tables[1].records(), "files": files})
        return
    print_tables(stats)
    console().print(f"statistics in {files['stats']}, search index in {files['index']}: "
                    f"`lmscope sae show {sae_dir} FEATURE`, `lmscope sae search {sae_dir} WORD`", highlight=False)


def _build_features(stage: Stages, model, coder, folder: Path, text, *, tokens: int = 100_000, window: int = 64,
                    top_n: int = 20):
    """feature_stats over the text, saved beside the SAE, and the search index built from them."""
    from lmscope.saes.feature_db import build_feature_index
    from lmscope.saes.features import feature_stats

    texts, label = _texts(model, text, held_out=False)
    stage(f"reading {tokens:,} tokens of {label} through {coder!r}")
    stats = feature_stats(model, coder, texts, max_tokens=tokens, window=window, top_n=top_n, corpus_label=label,
                          progress=progress_enabled())
    stage(f"writing the statistics and the search index into {folder}")
    files = {"stats": str(stats.save(folder, model=model)),
             "index": str(build_feature_index(folder, model, coder, stats))}
    return stats, files


@sae.command("show")
@sae_dir_argument
@click.argument("feature", type=int)
@sae_model_argument
@click.option("--k", default=10, show_default=True, type=click.IntRange(1, 100),
              help="Tokens, neurons and features listed.")
@click.option("--html", "html_out", type=HTML_FILE, help="Write the page as a self-contained HTML file.")
@click.option("--plot", type=PLOT_FILE, help="The latent's activation histogram.")
@click.option("--atlas", type=click.Path(exists=True, dir_okay=False),
              help="Neuron atlas for the nearest neurons' tokens (default: MODEL's, when built).")
@click.option("--color/--no-color", default=None, help="Colour the contexts (default: when stdout is a terminal).")
@site_option
@format_option
@json_option
@device_option
@dtype_option
def show_cmd(sae_dir, feature, model_name, k, html_out, plot, atlas, color, site, fmt, as_json, device, dtype) -> None:
    """One latent's page: coloured contexts, histogram, tokens it writes, neighbours."""
    from lmscope.engine.errors import ArtifactError
    from lmscope.saes.feature_page import feature_page
    from lmscope.saes.features import FeatureStats, stats_file

    _check_feature(sae_dir, feature)
    folder = _folder(sae_dir)
    if not stats_file(folder).is_file():
        raise ArtifactError(f"No feature statistics in {folder} ({stats_file(folder).name}); compute them first with "
                            f"`lmscope sae features {sae_dir}`.")
    stage = Stages(2)
    model, coder = _open(stage, sae_dir, model_name, site, fmt, device, dtype)
    i = _feature(coder, feature)
    stage(f"feature {i} of {coder!r}")
    stats = FeatureStats.load(folder, model=model, coder=coder)
    page = feature_page(model, coder, stats, i, atlas=atlas, k=k)
    files = []
    if html_out:
        from lmscope.plots.sae_plots import write_feature_html

        files.append(str(write_feature_html(page, html_out)))
    if plot:
        from lmscope.plots.sae_plots import plot_feature_histogram

        files.append(str(plot_feature_histogram(page, None, plot)))
    if as_json:
        emit_json({**page.to_dict(), "files": files})
        return
    c = console()
    color = c.is_terminal if color is None else color
    click.echo(page.to_text(color=color, width=max(c.width, 80)), nl=False, color=color)
    for f in files:
        c.print(f"wrote {f}", highlight=False)


@sae.command("search")
@sae_dir_argument
@click.argument("word")
@sae_model_argument
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000), help="Latents listed at most.")
@site_option
@format_option
@json_option
@device_option
@dtype_option
def search_cmd(sae_dir, word, model_name, limit, site, fmt, as_json, device, dtype) -> None:
    """Latents whose top tokens match WORD (builds the index on first use, then reads only it)."""
    from lmscope.saes.feature_db import index_file, search_features
    from lmscope.saes.features import STATS_FILE, FeatureStats, stats_file

    folder = _folder(sae_dir)
    if not index_file(folder).is_file():
        _check_writable(folder, STATS_FILE, "feature index")
        have_stats = stats_file(folder).is_file()
        stage = Stages(3 if have_stats else 4)
        model, coder = _open(stage, sae_dir, model_name, site, fmt, device, dtype)
        if have_stats:
            from lmscope.saes.feature_db import build_feature_index

            stage(f"building the search index from {stats_file(folder)}")
            build_feature_index(folder, model, coder, FeatureStats.load(folder, model=model, coder=coder))
        else:
            _build_features(stage, model, coder, folder, None)
    hits = search_features(folder, word, limit=limit)
    if as_json:
        emit_json(hits.to_dict())
        return
    print_tables(hits)


@sae.command("steer")
@sae_dir_argument
@click.argument("feature", type=int)
@sae_model_argument
@click.option("--mode", default="add", show_default=True, type=click.Choice(["add", "clamp", "ablate"]),
              help="Add the latent's direction, hold the latent at a value, or remove its contribution.")
@click.option("--value", default=4.0, show_default=True, type=_Finite(-1e6, 1e6),
              help="Multiple of the latent's max activation on the reference text (add, clamp).")
@click.option("--prompt", "prompts", multiple=True, help="Prompt to steer (repeatable; default: the neutral prompts).")
@click.option("--keywords", type=WORDS, help="Words counted in the generations (default: the latent's concept tokens).")
@click.option("--max-new-tokens", default=24, show_default=True, type=click.IntRange(1, 1024))
@click.option("--reference", type=click.Path(exists=True),
              help="Text file or folder for the latent's max activation and firing rates (default: the shipped corpus).")
@click.option("--generate/--no-generate", default=True, show_default=True,
              help="Generate text, or measure next-token probabilities and KL only.")
@click.option("--control/--no-control", default=True, show_default=True,
              help="Compare with a random other latent whose edit has the same norm.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the control's choice.")
@site_option
@format_option
@json_option
@device_option
@dtype_option
def steer_cmd(sae_dir, feature, model_name, mode, value, prompts, keywords, max_new_tokens, reference, generate,
              control, seed, site, fmt, as_json, device, dtype) -> None:
    """Steer with one latent (add, clamp, ablate) vs the baseline and a random latent."""
    from lmscope.saes.steering import steer

    if any(not p.strip() for p in prompts):
        raise click.BadParameter("a prompt is empty.", param_hint="--prompt")
    _check_feature(sae_dir, feature)
    stage = Stages(2)
    model, coder = _open(stage, sae_dir, model_name, site, fmt, device, dtype)
    i = _feature(coder, feature)
    stage(f"{mode} feature {i} of {coder!r}" + (f" x{value:g}" if mode != "ablate" else "")
          + (", generating" if generate else ""))
    report = steer(model, coder, i, mode=mode, value=value, prompts=list(prompts) or None, keywords=keywords or (),
                   max_new_tokens=max_new_tokens, reference=reference, control=control, seed=seed, generate=generate)
    if as_json:
        emit_json({"model": model.name, **report.to_dict()})
        return
    print_tables(report)
