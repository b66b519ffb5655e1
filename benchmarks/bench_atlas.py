"""Neuron atlas: decode time vs the bare matmul it needs; model comparison under noise; clamping.

    python benchmarks/bench_atlas.py decode [--models gemma-3-270m,smollm2-135m-instruct] [--layers 4]
    python benchmarks/bench_atlas.py chunk [--models ...] [--reps 5]
    python benchmarks/bench_atlas.py compare [--model smollm2-135m-instruct] [--every 5]
    python benchmarks/bench_atlas.py clamp [--model smollm2-135m-instruct] [--times 10]
    python benchmarks/bench_atlas.py approx [--models ...] [--layers 6] [--settings 64:256,half:64] [--device cuda]

`approx` decodes the same layers exactly and with the approximate searches (rank:candidates
settings for the low-rank one, half:candidates for the bfloat16 one), layer by layer and interleaved, and prints the speed ratio and recall@10 (share of
the exact top-10 tokens of each neuron and kind that the approximate top-10 holds).

`decode` times (CPU time of the process on CPU, see `_timed`), layer by layer and interleaved (the CPU may be shared: both sides see the same
load), the atlas's decoding of a layer (all kinds, top-k included) and a bare `torch.mm` of the
same shapes into a preallocated buffer; it prints both side by side with their ratio and
GFLOP/s, and extrapolates to the whole model (every layer has the same shapes). FLOPs of the
whole model = 2 * n_layers * d_mlp * d_model * d_vocab * (number of decoded weight matrices).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

import lmscope as ls
from lmscope.neurons.atlas import (
    _SOURCE,
    AtlasConfig,
    NeuronTopK,
    _kinds_for,
    chunk_rows,
    compare_atlases,
    decode_layer,
    is_gated,
    perturb_mlp,
)
from lmscope.neurons.atlas_db import write_atlas


def reference_gflops(device, n: int = 2048, reps: int = 3) -> float:
    """GFLOP/s of a plain square float32 matmul on this machine."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    torch.mm(a, b, out=c)
    best = min(_timed(lambda: torch.mm(a, b, out=c), device) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn, device) -> float:
    """Seconds of `fn`: on CPU the CPU time of this process (`time.process_time`: on a shared
    machine wall time mostly measures the other jobs; with every thread busy in the matmul the
    two agree on a quiet machine), on CUDA synchronised wall time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return time.perf_counter() - t
    t = time.process_time()
    fn()
    return time.process_time() - t


def bench_decode(name: str, layers: int | None, k: int) -> dict:
    lm = ls.load(name)
    cfg = AtlasConfig(k=k)
    kinds = _kinds_for(lm, cfg.kinds)
    n_mats = len({_SOURCE[x] for x in kinds})
    w_u = lm.weights.W_U.detach().float()
    chunk = chunk_rows(lm, cfg)
    buf = torch.empty(chunk, lm.d_vocab, device=lm.device)
    rows = torch.randn(lm.d_mlp, lm.d_model, device=lm.device)
    sel = list(range(lm.n_layers)) if layers is None else list(range(0, lm.n_layers, max(1, lm.n_layers // layers)))[:layers]

    def bare():
        for _ in range(n_mats):
            for s in range(0, lm.d_mlp, chunk):
                part = rows[s : s + chunk]
                torch.mm(part, w_u, out=buf[: len(part)])

    table = NeuronTopK(layers=tuple(sel))
    t_atlas, t_bare = [], []
    per: dict = {x: ([], []) for x in kinds}
    decode_layer(lm, sel[0], AtlasConfig(k=k, kinds=("out",)), _w_u=w_u, _buf=buf)  # warm-up
    for layer in sel:
        t_bare.append(_timed(bare, lm.device))
        box = {}
        t_atlas.append(_timed(lambda: box.update(res=decode_layer(lm, layer, cfg, _w_u=w_u, _buf=buf)), lm.device))
        res = box["res"]
        for x, (i, v) in res.items():
            per[x][0].append(i.cpu())
            per[x][1].append(v.cpu())
    for x, (i, v) in per.items():
        table.ids[x], table.scores[x] = torch.stack(i), torch.stack(v)
    flops_layer = 2.0 * n_mats * lm.d_mlp * lm.d_model * lm.d_vocab
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        write_atlas(os.path.join(d, "a.sqlite"), lm, table)
        t_write = (time.perf_counter() - t0) * lm.n_layers / len(sel)
    atlas_s, bare_s = sum(t_atlas) * lm.n_layers / len(sel), sum(t_bare) * lm.n_layers / len(sel)
    return {"model": lm.name, "device": str(lm.device), "threads": torch.get_num_threads(),
            "layers_timed": len(sel), "n_layers": lm.n_layers, "kinds": list(kinds), "n_matrices": n_mats,
            "shape": f"[{lm.d_mlp}, {lm.d_model}] x [{lm.d_model}, {lm.d_vocab}]", "chunk_rows": chunk,
            "tflop_model": flops_layer * lm.n_layers / 1e12, "atlas_s_model": atlas_s, "bare_mm_s_model": bare_s,
            "ratio": atlas_s / bare_s, "atlas_gflops": flops_layer * len(sel) / sum(t_atlas) / 1e9,
            "bare_gflops": flops_layer * len(sel) / sum(t_bare) / 1e9, "sqlite_write_s_model": t_write,
            "ratio_per_layer_median": statistics.median(a / b for a, b in zip(t_atlas, t_bare, strict=True)),
            "reference_square_mm_gflops": reference_gflops(lm.device)}


def bench_chunk(name: str, k: int, reps: int) -> dict:
    """One score block, the unit of work the atlas repeats (d_mlp / chunk x matrices x layers
    times): the bare `torch.mm` into the buffer vs the same mm followed by the atlas's top-k
    (twice for the down matrix: `out` and `out_bottom`). Interleaved; the minimum over `reps`
    of each side, the estimate least disturbed by other jobs on a shared machine."""
    from lmscope.neurons.atlas import to_token_space, topk_rows

    lm = ls.load(name)
    cfg = AtlasConfig(k=k)
    w_u = lm.weights.W_U.detach().float()
    chunk = chunk_rows(lm, cfg)
    buf = torch.empty(chunk, lm.d_vocab, device=lm.device)
    part = to_token_space(lm, lm.weights.W_out(lm.n_layers // 2)[:chunk])

    def bare():
        torch.mm(part, w_u, out=buf)

    def atlas_in():  # a gate or up row block: one top-k
        torch.mm(part, w_u, out=buf)
        topk_rows(buf, k)

    def atlas_out():  # the down block: top-k and bottom-k
        torch.mm(part, w_u, out=buf)
        topk_rows(buf, k)
        topk_rows(buf, k, largest=False)

    def torch_topk():  # the same block with torch.topk instead of the two-stage top-k
        torch.mm(part, w_u, out=buf)
        buf.topk(k, dim=1)

    fns = {"bare": bare, "in": atlas_in, "out": atlas_out, "torch_topk": torch_topk}
    times: dict = {x: [] for x in fns}
    bare()
    for _ in range(reps):
        for x, fn in fns.items():
            times[x].append(_timed(fn, lm.device))
    best = {x: min(v) for x, v in times.items()}
    n_in = 2 if is_gated(lm) else 1
    per_layer_chunks = -(-lm.d_mlp // chunk)
    atlas_block = (n_in * best["in"] + best["out"]) / (n_in + 1)  # mean block of the atlas
    flops_block = 2.0 * chunk * lm.d_model * lm.d_vocab
    n_blocks = per_layer_chunks * (n_in + 1) * lm.n_layers
    flops_model = 2.0 * (n_in + 1) * lm.n_layers * lm.d_mlp * lm.d_model * lm.d_vocab
    return {"model": lm.name, "threads": torch.get_num_threads(), "reps": reps, "chunk_rows": chunk,
            "block": f"[{chunk}, {lm.d_model}] x [{lm.d_model}, {lm.d_vocab}]", "gflop_block": flops_block / 1e9,
            "bare_s": best["bare"], "atlas_in_s": best["in"], "atlas_out_s": best["out"],
            "torch_topk_s": best["torch_topk"], "ratio": atlas_block / best["bare"],
            "bare_gflops": flops_block / best["bare"] / 1e9, "atlas_gflops": flops_block / atlas_block / 1e9,
            "n_blocks_model": n_blocks, "tflop_model": flops_model / 1e12,
            "model_s_estimate": atlas_block / flops_block * flops_model,
            "bare_model_s_estimate": best["bare"] / flops_block * flops_model, "all_times": times}


def bench_compare(name: str, every: int, noises: list[float]) -> list[dict]:
    lm = ls.load(name)
    layers = list(range(0, lm.n_layers, every))
    kinds = ("in_gate", "in_up", "out")
    out = []
    with tempfile.TemporaryDirectory() as d:
        from lmscope.neurons.atlas import build_atlas

        base = os.path.join(d, "base.sqlite")
        build_atlas(lm, AtlasConfig(k=1, kinds=kinds, layers=tuple(layers)), path=base).close()
        for noise in noises:
            p = os.path.join(d, f"n{noise}.sqlite")
            build_atlas(perturb_mlp(lm, noise=noise, seed=0), AtlasConfig(k=1, kinds=kinds, layers=tuple(layers)),
                        path=p).close()
            r = compare_atlases(base, p)
            out.append({"noise": noise, "layers": layers, **{x: r["kinds"][x]["overall"] for x in r["kinds"]},
                        "per_layer_out": [round(v, 3) for v in r["kinds"]["out"]["per_layer"]]})
            os.remove(p)
    return out


def bench_clamp(name: str, times: list[float], n_neutral: int, max_new_tokens: int) -> list[dict]:
    """Clamp the top 'dog' and 'animal' output neurons found in the atlas to multiples of their
    natural max (over 16 neutral chat prompts); greedy generations on the concept prompts plus
    neutral prompts; keywords of the concept and of 'animal' counted in the same texts."""
    from lmscope.neurons.atlas import load_atlas
    from lmscope.neurons.clamp import (
        ClampConfig,
        clamp_experiment,
        concept_hits,
        load_concept,
        natural_activation,
        neutral_prompts,
    )

    lm = ls.load(name)
    atlas = load_atlas(lm)
    animal = load_concept("animal")
    rows = []
    for concept, query in (("dog", "dog"), ("animal", "animal")):
        con = load_concept(concept)
        hit = atlas.search(query, kind="out", limit=1)[0]
        neuron = (hit["layer"], hit["neuron"])
        prompts = list(dict.fromkeys([con["prompt"], animal["prompt"], *neutral_prompts(n_neutral)]))
        nat = natural_activation(lm, [neuron], neutral_prompts(16), chat=True)[0]
        for c in times:
            rep = clamp_experiment(lm, [neuron], value=c * nat["max"], prompts=prompts, keywords=con["keywords"],
                                   concept_words=[query], config=ClampConfig(max_new_tokens=max_new_tokens, chat=True))
            row = {"concept": concept, "neuron": f"{neuron[0]}.{neuron[1]}", "top": hit["top"][:6], "times": c,
                   "natural_max": nat["max"], "value": c * nat["max"], "n_prompts": len(prompts),
                   "control": "{}.{}".format(*rep.arms["control"].neurons[0]),
                   "ratio_clamped": rep.ratio("clamped"), "ratio_control": rep.ratio("control"),
                   "examples": {a: rep.arms[a].texts[:2] for a in rep.arms}}
            for arm in rep.arms.values():
                row[f"rate_{arm.name}"] = arm.concept_rate
                hits = concept_hits(arm.texts, animal["keywords"])
                row[f"animal_rate_{arm.name}"] = sum(hits) / len(hits)
                row[f"p_{arm.name}"] = arm.concept_prob
            rows.append(row)
    return rows


def approx_config(setting: str, k: int) -> tuple[str, AtlasConfig]:
    """"rank:candidates" (the low-rank search) or "half:candidates" (the bfloat16 one)."""
    first, cands = setting.split(":")
    if first == "half":
        return f"half K={cands}", AtlasConfig(k=k, search="half", candidates=int(cands))
    return f"approx r={first} K={cands}", AtlasConfig(k=k, search="approx", rank=int(first), candidates=int(cands))


def bench_approx(name: str, layers: int | None, settings: list[str], k: int = 10, device: str = "cpu") -> dict:
    model = ls.load(name, quiet=True, device=device)
    device = model.device
    pick = list(range(model.n_layers))
    if layers is not None and layers < model.n_layers:
        pick = sorted({round(i * (model.n_layers - 1) / max(layers - 1, 1)) for i in range(layers)})
    configs = {"exact": AtlasConfig(k=k)} | dict(approx_config(x, k) for x in settings)
    secs = {name_: 0.0 for name_ in configs}
    hits = {name_: {} for name_ in configs}
    for layer in pick:
        out = {}
        for label, cfg in configs.items():  # interleaved: every setting sees the same machine load
            t = time.perf_counter()
            out[label] = decode_layer(model, layer, cfg)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            secs[label] += time.perf_counter() - t
        for label in configs:
            for kind, (ids, _) in out[label].items():
                exact = out["exact"][kind][0]
                got = (exact[:, :, None] == ids[:, None, :]).any(-1).sum().item()
                h = hits[label].setdefault(kind, [0, 0])
                h[0] += got
                h[1] += exact.numel()
    rows = []
    for label in configs:
        rec = {kind: h[0] / h[1] for kind, h in hits[label].items()}
        rows.append({"setting": label, "seconds": secs[label], "speedup": secs["exact"] / secs[label],
                     "recall_at_10": rec, "recall_min": min(rec.values()),
                     "recall_mean": sum(rec.values()) / len(rec)})
    return {"model": name, "layers": pick, "n_layers": model.n_layers, "d_vocab": model.d_vocab,
            "device": str(device), "threads": torch.get_num_threads(), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["decode", "chunk", "compare", "clamp", "approx"])
    ap.add_argument("--settings", default="32:128,64:256,96:256,128:512",
                    help="approx: rank:candidates pairs (the low-rank search), half:candidates (bfloat16)")
    ap.add_argument("--device", default="cpu", help="approx: where to load the models (cpu, cuda)")
    ap.add_argument("--reps", type=int, default=5, help="chunk: repetitions (the minimum is kept)")
    ap.add_argument("--models", default="gemma-3-270m,smollm2-135m-instruct")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--layers", type=int, default=None, help="decode: time this many layers (spread) and extrapolate")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--every", type=int, default=5, help="compare: every n-th layer")
    ap.add_argument("--noises", default="0.01,0.03,0.1,0.3,1.0")
    ap.add_argument("--times", default="10,20", help="clamp: multiples of the natural max")
    ap.add_argument("--neutral", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.what == "decode":
        res = [bench_decode(m, a.layers, a.k) for m in a.models.split(",")]
        if not a.json:
            print(f"{'model':24} {'TFLOP':>6} {'atlas s':>8} {'bare mm s':>9} {'ratio':>6} {'atlas GF/s':>10} "
                  f"{'bare GF/s':>9} {'ref GF/s':>8} {'sqlite s':>8}  (layers timed)")
            for r in res:
                print(f"{r['model']:24} {r['tflop_model']:6.2f} {r['atlas_s_model']:8.1f} {r['bare_mm_s_model']:9.1f} "
                      f"{r['ratio']:6.2f} {r['atlas_gflops']:10.1f} {r['bare_gflops']:9.1f} "
                      f"{r['reference_square_mm_gflops']:8.1f} {r['sqlite_write_s_model']:8.1f}  "
                      f"({r['layers_timed']}/{r['n_layers']})")
    elif a.what == "chunk":
        res = [bench_chunk(m, a.k, a.reps) for m in a.models.split(",")]
        if not a.json:
            print(f"{'model':24} {'block':32} {'bare mm s':>9} {'in s':>6} {'out s':>6} {'torch.topk s':>12} "
                  f"{'ratio':>6} {'GF/s':>6} {'model s (est.)':>14}")
            for r in res:
                print(f"{r['model']:24} {r['block']:32} {r['bare_s']:9.3f} {r['atlas_in_s']:6.3f} "
                      f"{r['atlas_out_s']:6.3f} {r['torch_topk_s']:12.3f} {r['ratio']:6.2f} {r['bare_gflops']:6.1f} "
                      f"{r['model_s_estimate']:14.0f}")
    elif a.what == "approx":
        res = [bench_approx(m, a.layers, a.settings.split(","), device=a.device) for m in a.models.split(",")]
        if not a.json:
            for r in res:
                print(f"{r['model']} ({r['d_vocab']} tokens; layers {r['layers']}; {r['device']}, {r['threads']} threads)")
                print(f"  {'setting':24} {'seconds':>8} {'speedup':>8} {'recall@10 min':>13} {'mean':>6}  per kind")
                for x in r["rows"]:
                    per = " ".join(f"{kd}={v:.3f}" for kd, v in x["recall_at_10"].items())
                    print(f"  {x['setting']:24} {x['seconds']:8.2f} {x['speedup']:7.1f}x {x['recall_min']:13.3f} "
                          f"{x['recall_mean']:6.3f}  {per}")
    elif a.what == "compare":
        res = bench_compare(a.model, a.every, [float(x) for x in a.noises.split(",")])
        if not a.json:
            print(f"{a.model}: share of neurons with the same top token, original vs MLP weights + noise x std")
            print(f"{'noise':>6} {'in_gate':>8} {'in_up':>8} {'out':>8}  out per layer {res[0]['layers']}")
            for r in res:
                print(f"{r['noise']:6g} {r.get('in_gate', float('nan')):8.3f} {r['in_up']:8.3f} {r['out']:8.3f}  "
                      f"{r['per_layer_out']}")
    else:
        res = bench_clamp(a.model, [float(x) for x in a.times.split(",")], a.neutral, a.max_new_tokens)
        if not a.json:
            for r in res:
                print(f"{r['concept']}: neuron {r['neuron']} (top {r['top']}), natural max {r['natural_max']:.2f} "
                      f"x{r['times']:g} -> {r['value']:.2f}; {r['n_prompts']} prompts, greedy {a.max_new_tokens} tokens")
                print(f"   concept in generations: baseline {r['rate_baseline']:.2f}  clamped {r['rate_clamped']:.2f}  "
                      f"control ({r['control']}) {r['rate_control']:.2f}")
                print(f"   any animal word:        baseline {r['animal_rate_baseline']:.2f}  clamped "
                      f"{r['animal_rate_clamped']:.2f}  control {r['animal_rate_control']:.2f}")
                print(f"   p(concept token next): baseline {r['p_baseline']:.2e}  clamped {r['p_clamped']:.2e} "
                      f"(x{r['ratio_clamped']:.1f})  control {r['p_control']:.2e} (x{r['ratio_control']:.2f})")
    if a.json:
        print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
