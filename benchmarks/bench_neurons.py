"""What one neuron does, measured on a real model: recording throughput and memory, correlation
against a shuffled-label null, the singular/plural ablation (top-1 and the k-curve vs random
neurons, KL on neutral prompts) and a dose-response next to a control neuron.

    python benchmarks/bench_neurons.py [--model gemma-3-270m] [--tokens 20000] [--layer 6] [--figures docs/figures]

Prints one JSON object; every number comes with the setting and control it is read against.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

import lmscope as ls
from lmscope.datasets.corpus import read_texts, token_windows
from lmscope.neurons.agreement import agreement_demo, agreement_rows
from lmscope.neurons.correlation import correlate, load_labelled
from lmscope.neurons.recording import RecordConfig, record
from lmscope.neurons.recording import causal as nc


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_record(lm, layer: int, tokens: int) -> dict:
    """One whole layer over `tokens` corpus tokens, next to bare forwards of the same windows."""
    cfg = RecordConfig(max_tokens=tokens)
    windows = token_windows(lm, read_texts(None), window=cfg.window, max_tokens=tokens)
    site = f"layers.{layer}.mlp.neurons"
    t0 = time.perf_counter()
    for _, batch, _ in windows.batches(cfg.batch_size, lm.device):  # control: the same forwards, no capture
        lm.run(batch, capture=[site], logits=None)
    bare = time.perf_counter() - t0
    rss0 = _rss_mib()
    rec = record(lm, site, windows, config=cfg)
    state_bytes = sum(t.numel() * t.element_size() for r in rec.sites.values()
                      for t in {**r.stats.state(), **r.top.state()}.values())
    return {"site": site, "n_neurons": lm.d_mlp, "n_tokens": rec.n_tokens, "seconds": rec.seconds,
            "tokens_per_s": rec.tokens_per_s, "bare_forward_tokens_per_s": rec.n_tokens / bare,
            "overhead": rec.seconds / bare, "state_mib": state_bytes / 2**20,
            "peak_rss_growth_mib": _rss_mib() - rss0, "hours_per_million_tokens": 1e6 / rec.tokens_per_s / 3600}


def bench_correlate(lm) -> dict:
    texts, labels = load_labelled(agreement_rows())  # plural = present
    t0 = time.perf_counter()
    res = correlate(lm, texts, labels, seed=0)
    top = res.ranked(5)
    return {"n_present": res.n_present, "n_absent": res.n_absent, "layers": "all", "reduce": "last",
            "top": top, "null_auroc_dev": res.null_auroc_dev, "seconds": time.perf_counter() - t0}


def bench_dose(lm, demo, figures: str | None) -> dict:
    rows = agreement_rows()
    prompts = [r["prompt_plural"] for r in rows[-demo.n_eval:]]
    best = demo.ranking[0]
    layer, neuron = best["layer"], best["neuron"]
    values = [-4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0]
    top = nc.dose_response(lm, [(layer, neuron)], prompts, target=" these", baseline=" this", values=values)
    g = torch.Generator().manual_seed(1)
    ctrl = (layer, int(torch.randint(lm.d_mlp, (1,), generator=g)))
    rnd = nc.dose_response(lm, [ctrl], prompts, target=" these", baseline=" this", values=values)
    if figures:
        from lmscope.plots.neuron_plots import plot_dose

        plot_dose(top.to_dict(), f"{figures}/neurons_dose_{lm.name.split('-')[0]}.png")
    return {"neuron": [layer, neuron], "control": list(ctrl), "values": values, "ld": top.ld,
            "p_these": top.p_target, "clean_ld": top.clean_ld, "natural": top.natural,
            "control_ld": rnd.ld, "control_natural": rnd.natural}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--n-random", type=int, default=3)
    ap.add_argument("--figures", default=None, help="Directory for the PNGs.")
    ap.add_argument("--skip", default="", help="Comma-separated parts to skip: record,correlate,agreement,dose")
    a = ap.parse_args()
    skip = set(a.skip.split(","))
    lm = ls.load(a.model)
    out: dict = {"model": lm.name, "threads": torch.get_num_threads()}
    if "record" not in skip:
        out["record"] = bench_record(lm, a.layer, a.tokens)
    if "correlate" not in skip:
        out["correlate"] = bench_correlate(lm)
    if "agreement" not in skip:
        t0 = time.perf_counter()
        demo = agreement_demo(lm, n_rank=20, n_eval=20, ks=(1, 2, 5, 10, 20, 50), n_random=a.n_random)
        d = demo.to_dict()
        ref = nc.reference_activations(lm, max_tokens=2048)
        held = [r["prompt_plural"] for r in agreement_rows()[-20:]]
        top1 = [(demo.ranking[0]["layer"], demo.ranking[0]["neuron"])]
        d["top1_by_method"] = {m: nc.ablate(lm, top1, held, target=" these", baseline=" this", method=m,
                                            reference=ref).to_dict() for m in ("zero", "mean", "resample")}
        d["seconds"] = time.perf_counter() - t0
        for e in d["curve"]["top"]:
            e.pop("neurons")
        out["agreement"] = d
        if a.figures:
            from lmscope.plots.neuron_plots import plot_ablation_curve

            plot_ablation_curve(d["curve"], f"{a.figures}/neurons_ablation_curve_{lm.name.split('-')[0]}.png",
                                title=f"{lm.name}: zero-ablating the top-k agreement neurons vs k random "
                                      f"({demo.n_eval} held-out plural prompts)")
        if "dose" not in skip:
            out["dose"] = bench_dose(lm, demo, a.figures)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
