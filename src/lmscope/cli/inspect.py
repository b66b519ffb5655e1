"""`lmscope inspect ...`: residual decomposition / DLA, token-space edits, Patchscopes, back-patching.

    lmscope inspect decompose MODEL PROMPT --target " Warsaw" [--baseline " Paris"]
    lmscope inspect token-edit MODEL PROMPT --layer 12 --subtract " Warsaw" --add " Paris"
    lmscope inspect patchscope [MODEL] --source PROMPT --source-layer 6 --target identity
    lmscope inspect patchscope [MODEL] --sweep identity|entities|both --out DIR
    lmscope inspect backpatch [MODEL] [--data FILE] --out DIR
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from ._common import (
    OUT_DIR,
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
    model_name_argument,
    progress_enabled,
    write_json,
)
from .config_options import Group, config_options
from .params import LAYERS


def _tok(text) -> str:
    return repr(text)


@click.group(cls=Group)
def inspect() -> None:
    """Let the model speak its mind: decomposition/DLA, token edits, Patchscopes, back-patching."""


@inspect.command()
@model_name_argument
@click.argument("prompt")
@click.option("--target", required=True, help="Token whose logit is attributed, e.g. ' Warsaw'.")
@click.option("--baseline", help="Subtract this token's logit (logit difference).")
@click.option("--layer", default=-1, show_default=True, type=int,
              help="Decompose this block's resid_post (-1: the final norm's input).")
@click.option("--position", default=-1, show_default=True, type=int, help="Prompt token index.")
@click.option("--top", default=12, show_default=True, type=click.IntRange(1, 1000), help="Parts listed.")
@click.option("--layer-tokens", default=0, show_default=True, type=click.IntRange(0, 100),
              help="Also list the top K tokens each block's attention and MLP add.")
@click.option("--unembed-mode", default="frozen", show_default=True,
              type=click.Choice(["frozen", "own_norm", "raw"]), help="How --layer-tokens unembeds a part.")
@click.option("--chat", is_flag=True, help="Apply the model's chat template.")
@click.option("--out", type=OUT_DIR, help="Directory for figures and result.json.")
@json_option
@device_option
@dtype_option
def decompose(model_name, prompt, target, baseline, layer, position, top, layer_tokens, unembed_mode, chat, out,
              as_json, device, dtype) -> None:
    """Residual decomposition of PROMPT and direct logit attribution to --target."""
    from lmscope.inspect.decomposition import decompose as run_decompose
    from lmscope.inspect.decomposition import layer_adds, logit_attribution

    check_layers(model_name, "--layer", layer)
    model = load_model(model_name, device, dtype)
    d = run_decompose(model, prompt, layer=layer, position=position, chat=chat)
    a = logit_attribution(model, d, target, baseline=baseline)
    res = a.to_dict(k=top)
    if layer_tokens:
        res["layer_tokens"] = layer_adds(model, d, k=layer_tokens, mode=unembed_mode)
    figs = []
    if out:
        from lmscope.plots.inspect_plots import plot_dla_layers, plot_head_heatmap

        figs = [str(plot_dla_layers(a, Path(out) / "dla_layers.png")),
                str(plot_head_heatmap(a, Path(out) / "dla_heads.png"))]
    res["figures"] = figs
    write_json(out, "decompose.json", res)
    if as_json:
        emit_json(res)
        return
    from rich.table import Table

    what = _tok(res["target"]) + (f" - {_tok(res['baseline'])}" if res["baseline"] is not None else "")
    c = console()
    c.print(f"[bold]{model.name}[/bold] layers.{d.layer}.resid_post at position {position}: "
            f"{len(d.labels)} parts, max |sum - resid| = {d.max_abs_error:.2e} (relative {d.rel_error:.1e})")
    c.print(f"logit {what} = {res['logit']:.3f}; parts sum to {res['dla_sum']:.3f} + constant "
            f"{res['constant']:.3f} (error {res['dla_sum_error']:.1e})")
    c.print(f"[dim]{res['approximation']}[/dim]")
    t = Table("part", "DLA", title=f"top {top} parts by |DLA|")
    for r in res["top_parts"]:
        t.add_row(r["part"], f"{r['dla']:+.3f}")
    c.print(t)
    t = Table("layer", "attention", "MLP", title="DLA per layer")
    for i, (x, y) in enumerate(zip(res["per_layer"]["attn"], res["per_layer"]["mlp"], strict=True)):
        t.add_row(str(i), f"{x:+.3f}", f"{y:+.3f}")
    c.print(t)
    for r in res.get("layer_tokens", []):
        c.print(f"L{r['layer']} attn: {[x[0] for x in r['attn']['top']]}  mlp: {[x[0] for x in r['mlp']['top']]}")
    for f in figs:
        c.print(f"wrote {f}")


@inspect.command("token-edit")
@model_name_argument
@click.argument("prompt")
@click.option("--layer", required=True, type=int, help="Edit this block's resid_post.")
@click.option("--position", default=-1, show_default=True, type=int, help="Prompt token index.")
@click.option("--subtract", help="Token whose unembedding direction is subtracted.")
@click.option("--add", "add_", help="Token whose unembedding direction is added.")
@click.option("--scale", default=0.25, show_default=True, type=float,
              help="Size of each unit direction, as a fraction of the residual norm there.")
@click.option("--absolute", is_flag=True, help="--scale is an absolute norm, not relative to the residual.")
@click.option("--divide-by-gain", is_flag=True, help="Divide W_U columns by the final-norm gain first.")
@click.option("--top-k", "top_k", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--max-new-tokens", default=0, show_default=True, type=click.IntRange(0, 1024),
              help="Also generate before/after.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the random control vector.")
@click.option("--out", type=OUT_DIR, help="Directory for the figure and result.json.")
@json_option
@device_option
@dtype_option
def token_edit(model_name, prompt, layer, position, subtract, add_, scale, absolute, divide_by_gain, top_k,
               max_new_tokens, seed, out, as_json, device, dtype) -> None:
    """Subtract one token's unembedding direction and add another's; show the output change."""
    from lmscope.inspect.decomposition import token_edit as run_edit

    if subtract is None and add_ is None:
        raise click.UsageError("Give --subtract TOKEN, --add TOKEN or both.")
    check_layers(model_name, "--layer", layer)
    model = load_model(model_name, device, dtype)
    r = run_edit(model, prompt, layer=layer, position=position, subtract=subtract, add=add_, scale=scale,
                 relative=not absolute, divide_by_gain=divide_by_gain, k=top_k, max_new_tokens=max_new_tokens,
                 seed=seed)
    res = r.to_dict()
    res["figures"] = []
    if out:
        from lmscope.plots.inspect_plots import plot_token_edit

        res["figures"] = [str(plot_token_edit(r, Path(out) / "token_edit.png"))]
    write_json(out, "token_edit.json", res)
    if as_json:
        emit_json(res)
        return
    from rich.table import Table

    c = console()
    c.print(f"[bold]{model.name}[/bold] layers.{r.layer}.resid_post position {position}: vector norm "
            f"{r.vector_norm:.1f} (residual norm {r.resid_norm:.1f})")
    t = Table("token", "before", "after", "random control", title="probabilities")
    for tok in r.probs["before"]:
        t.add_row(_tok(tok), *(f"{r.probs[k][tok]:.4f}" for k in ("before", "after", "control")))
    c.print(t)
    t = Table("rank", "before", "after")
    for i, (b, a) in enumerate(zip(r.before, r.after, strict=True), 1):
        t.add_row(str(i), f"{b['token']!r} {b['prob']:.3f}", f"{a['token']!r} {a['prob']:.3f}")
    c.print(t)
    if r.text_after is not None:
        c.print(f"before: {r.text_before!r}\nafter:  {r.text_after!r}")
    for f in res["figures"]:
        c.print(f"wrote {f}")


@inspect.command()
@model_argument
@click.option("--source", help="Source prompt.")
@click.option("--source-pos", default=-1, show_default=True, type=int, help="Source token index.")
@click.option("--source-layer", type=int, help="Layer whose resid_post is read.")
@click.option("--target-layer", type=int, help="Layer written in the target (default: --source-layer).")
@click.option("--target", default="identity", show_default=True,
              help="'identity', 'description', or your prompt with a placeholder word (see --placeholder).")
@click.option("--placeholder", default="x", show_default=True, help="Placeholder word of a custom target.")
@click.option("--max-new-tokens", default=20, show_default=True, type=click.IntRange(0, 1024))
@click.option("--top-k", "top_k", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--sweep", type=click.Choice(["identity", "entities", "both"]),
              help="Layer sweep instead of one readout.")
@click.option("--n-sources", default=40, show_default=True, type=click.IntRange(2, 10000),
              help="Sweep: number of source texts (one random position each).")
@click.option("--sources", "sources_file", type=click.Path(dir_okay=False),
              help="Sweep: JSONL of {'text'} or {'prompt'} rows (default: corpus.jsonl or facts.jsonl).")
@click.option("--entities", "entities_file", type=click.Path(exists=True, dir_okay=False),
              help="Entity sweep: JSONL of {'entity', 'keywords'} rows (default: patchscope_entities.jsonl).")
@click.option("--layers", type=LAYERS, help="Sweep: layers like '0,4,8' or '0:18:2' (default: all).")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--out", type=OUT_DIR, help="Directory for figures and result JSON.")
@json_option
@device_option
@dtype_option
def patchscope(model_name, source, source_pos, source_layer, target_layer, target, placeholder, max_new_tokens, top_k,
               sweep, n_sources, sources_file, entities_file, layers, seed, out, as_json, device, dtype) -> None:
    """Patch a hidden state into a target prompt and read it out (Patchscopes), or sweep layers."""
    from lmscope.inspect import patchscopes as ps

    if sweep is None and (source is None or source_layer is None):
        raise click.UsageError("Give --source and --source-layer, or --sweep.")
    for hint, value in (("--source-layer", source_layer), ("--target-layer", target_layer), ("--layers", layers)):
        check_layers(model_name, hint, value)
    stage = Stages(1 + (sweep is not None) + (sweep == "both"))
    stage(f"loading {model_name}")
    model = load_model(model_name, device, dtype)
    c = console()
    if sweep is None:
        r = ps.patchscope(model, source, source_layer=source_layer, source_position=source_pos, target=target,
                          target_layer=target_layer, placeholder=placeholder, k=top_k,
                          max_new_tokens=max_new_tokens)
        res = r.to_dict()
        write_json(out, "patchscope.json", res)
        if as_json:
            emit_json(res)
            return
        c.print(f"[bold]{model.name}[/bold] source {r.source!r} token {r.source_token!r} layer {r.source_layer} -> "
                f"target '{r.target}' position {r.target_position} layer {r.target_layer}")
        for name, rows in (("patched", r.top), ("unpatched target", r.top_unpatched),
                           ("source's own next token", r.source_next), ("logit lens of the state", r.logit_lens)):
            c.print(f"{name:>24}: " + ", ".join(f"{x['token']!r} {x['prob']:.2f}" for x in rows[:5]))
        if r.text is not None:
            c.print(f"generated: {r.text!r}\nunpatched: {r.text_unpatched!r}")
        return
    res, figs = {"model": model.name}, []
    n_lay = len(layers) if layers else model.n_layers
    from lmscope.plots import inspect_plots as P

    if sweep in ("identity", "both"):
        if sources_file:
            texts = [r.get("text") or r["prompt"] for r in ps.read_jsonl(sources_file)][:n_sources]
        else:
            texts = ps.default_sources(n_sources, seed)
        stage(f"token-identity sweep: {len(texts)} source positions x {n_lay} layers")
        sw = ps.identity_sweep(model, texts, layers=layers, seed=seed, progress=progress_enabled())
        res["identity"] = sw.to_dict()
        if out:
            figs.append(str(P.plot_identity_sweep(sw, Path(out) / "patchscope_identity.png")))
    if sweep in ("entities", "both"):
        ents = ps.read_jsonl(entities_file) if entities_file else None
        stage(f"entity-description sweep: {len(ents) if ents else 'the shipped'} entities x {n_lay} layers")
        es = ps.entity_sweep(model, ents, layers=layers, progress=progress_enabled())
        res["entities"] = es.to_dict()
        if out:
            figs.append(str(P.plot_entity_sweep(es, Path(out) / "patchscope_entities.png")))
    res["figures"] = figs
    write_json(out, "patchscope_sweep.json", res)
    if as_json:
        emit_json(res)
        return
    from rich.table import Table

    if "identity" in res:
        s = res["identity"]
        t = Table("layer", "Patchscope p@1", "logit lens p@1", "shuffled control",
                  title=f"{model.name}: token identity, {s['n']} positions (unpatched target: {s['unpatched']:.2f})")
        for row in zip(s["layers"], s["patchscope"], s["logit_lens"], s["shuffled"], strict=True):
            t.add_row(str(row[0]), *(f"{v:.2f}" for v in row[1:]))
        c.print(t)
    if "entities" in res:
        s = res["entities"]
        t = Table("layer", "keyword hit rate", "shuffled control",
                  title=f"{model.name}: entity description, {s['n']} entities (unpatched: {s['unpatched']:.2f})")
        for row in zip(s["layers"], s["hit_rate"], s["shuffled"], strict=True):
            t.add_row(str(row[0]), *(f"{v:.2f}" for v in row[1:]))
        c.print(t)
    for f in figs:
        c.print(f"wrote {f}")


@inspect.command()
@model_argument
@click.option("--data", "data_file", type=click.Path(dir_okay=False),
              help="Two-hop JSONL (default: lmscope/datasets/data/two_hop.jsonl).")
@config_options("lmscope.inspect.backpatching:BackpatchConfig", exclude={"require_hops"},
                types={"k": click.IntRange(1, 1000), "max_cases": click.IntRange(1, 100_000),
                       "gen_tokens": click.IntRange(0, 256), "batch_size": click.IntRange(1, 4096)})
@click.option("--relaxed", is_flag=True, help="Keep every two-hop failure, even when a single hop fails.")
@click.option("--out", type=OUT_DIR, help="Directory for the heatmap and result JSON.")
@json_option
@device_option
@dtype_option
def backpatch(model_name, data_file, config, relaxed, out, as_json, device, dtype) -> None:
    """Back-patching on two-hop questions the model gets wrong (Biran et al. 2024)."""
    from lmscope.inspect.backpatching import backpatch as run_backpatch
    from lmscope.inspect.patchscopes import read_jsonl

    cfg = dataclasses.replace(config, require_hops=not relaxed)
    criterion, k, gen_tokens = cfg.criterion, cfg.k, cfg.gen_tokens
    rows = read_jsonl(data_file) if data_file else None
    stage = Stages(2)
    stage(f"loading {model_name}")
    model = load_model(model_name, device, dtype)
    stage(f"back-patching the two-hop questions of {data_file or 'the shipped set'} the model gets wrong")
    r = run_backpatch(model, rows, cfg, progress=progress_enabled())
    res = r.to_dict()
    res["figures"] = []
    if out and r.counts["cases"]:
        from lmscope.plots.inspect_plots import plot_backpatch

        res["figures"] = [str(plot_backpatch(r, Path(out) / "backpatch.png"))]
    write_json(out, "backpatch.json", res)
    if as_json:
        emit_json(res)
        return
    c = console()
    n = r.counts
    gen = f" or answer in {gen_tokens} generated tokens" if gen_tokens else ""
    c.print(f"[bold]{model.name}[/bold] criterion {criterion}{f' (k={k})' if criterion == 'topk' else ''}{gen}: "
            f"{n['total']} two-hop queries, {n['two_hop_correct']} correct; hop 1 {n['hop1_correct']}, "
            f"hop 2 {n['hop2_correct']}, both {n['both_hops_correct']}; wrong with both hops right "
            f"{n['wrong_with_both_hops']}; back-patched cases: {n['cases']}"
            f"{' (relaxed: all failures)' if relaxed else ''}")
    if not n["cases"]:
        c.print("No case to back-patch; try --relaxed or --criterion topk.")
        return
    ctrl = ", ".join(f"{k_} {v:.2f}" for k_, v in r.control_oracles.items())
    c.print(f"oracle (fixed by some l_s > l_t): {r.oracle:.2f}   controls: {ctrl or 'none'}")
    cmean = ", ".join(f"{k_} {v:.4f}" for k_, v in r.control_grid_means.items())
    c.print(f"share of (case, pair) cells fixed: {r.grid_mean:.4f}   controls: {cmean or 'none'}")
    if r.best_pair:
        ls_, lt_, share = r.best_pair
        keeps = f"; keeps {r.best_pair_keeps:.2f} of correct queries correct" if r.best_pair_keeps is not None else ""
        c.print(f"best single pair l_s={ls_} -> l_t={lt_}: fixes {share:.2f}{keeps}")
    for f in res["figures"]:
        c.print(f"wrote {f}")
