"""Core engine speed, side by side in one run: lmscope vs plain HF (and nnsight / TransformerLens).

    .venv/bin/python benchmarks/bench_core.py --model smollm2 [--peers nnsight,transformer-lens]

Workloads and inputs are those of ../shared/peers (common.py): a [32, 64] token batch, the
steering vector randn(d_model, seed 0) normalised x4 added at layer 15 during greedy
generation of 32 tokens for 4 prompts. Each timing: one warm-up, then the median of
`--repeats` calls, the variants interleaved so drift hits all alike. Peers run their own
scripts from ../shared/peers in their venv (see RESULTS.md there), in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PEERS = Path(os.environ.get("LMSCOPE_PEERS_DIR", HERE.parent.parent / "shared" / "peers"))
PEER_VENV = Path(os.environ.get("LMSCOPE_PEER_VENV", Path.home() / ".cache/lmscope-peers/venv"))
NAMES = {"smollm2": "smollm2-135m-instruct", "gemma3": "gemma-3-270m"}
PEER_SCRIPTS = {"nnsight": "bench_nnsight.py", "transformer-lens": "bench_transformer_lens.py"}


def timeit(fns: dict, repeats: int) -> dict:
    """Warm each up once, then `repeats` interleaved rounds; median seconds per key."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def run_peer(peer: str, model: str) -> dict:
    script = PEERS / PEER_SCRIPTS[peer]
    py = PEER_VENV / "bin" / "python"
    if not py.exists() or not script.exists():
        return {"error": f"missing {py} or {script} (see {PEERS}/RESULTS.md 'Rerun')"}
    p = subprocess.run([str(py), str(script), "--model", model], capture_output=True, text=True, cwd=PEERS,
                       timeout=3600)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": p.stderr[-400:]}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(NAMES), default="smollm2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peers", default="", help="comma list: nnsight,transformer-lens")
    ap.add_argument("--n-prompts", type=int, default=32, help="rows of the [n, 64] batch (peers always use 32)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.set_grad_enabled(False)
    sys.path.insert(0, str(PEERS))
    from common import (  # noqa: E402
        ABL_LAYER,
        ABL_NEURON,
        GEN_NEW,
        GEN_PROMPTS,
        STEER_LAYER,
        make_batch,
        ref_ablation_delta,
        ref_logit_lens,
        ref_resid,
        steering_vector,
    )

    import lmscope as ls

    lm = ls.load(NAMES[args.model])
    hf = lm.hf
    ids = make_batch(lm.tokenizer)[: args.n_prompts]
    batch = ls.Batch(ids, torch.ones_like(ids), [""] * len(ids))
    gen_ids = ids[:GEN_PROMPTS]
    gen_batch = ls.Batch(gen_ids, torch.ones_like(gen_ids), [""] * len(gen_ids))
    vec = steering_vector(lm.d_model)
    layers = [f"layers.{i}.resid_post" for i in range(lm.n_layers)]

    # correctness first: lmscope's captures equal the plain-hook reference exactly
    ref = ref_resid(hf, ids)
    got = lm.run(batch, capture=["layers.*.resid_post"], logits=None).cache
    max_diff = max(float((got[s] - r).abs().max()) for s, r in zip(layers, ref, strict=True))

    from lmscope.engine.readout import unembed

    def lens():  # W2: every layer's last-token residual through the final norm and the head
        c = lm.run(batch, capture={"layers.*.resid_post": "last"}, logits=None).cache
        return unembed(lm, torch.stack([c[s].reshape(len(ids), -1, lm.d_model)[:, -1] for s in layers]))

    ablate_edit = ls.Zero(site=f"layers.{ABL_LAYER}.mlp.neurons[{ABL_NEURON}]")

    def ablate():  # W4: clean and ablated next-token logits
        clean = lm.run(batch).logits
        return lm.run(batch, edits=[ablate_edit]).logits - clean

    lens_diff = float((lens() - ref_logit_lens(hf, ids)).abs().max())
    abl_diff = float((ablate() - ref_ablation_delta(hf, ids)).abs().max())

    def hf_gen(**kw):
        return hf.generate(gen_ids, attention_mask=torch.ones_like(gen_ids), max_new_tokens=GEN_NEW,
                           min_new_tokens=GEN_NEW, do_sample=False, pad_token_id=0, **kw)

    def hf_gen_hook():
        h = hf.model.layers[STEER_LAYER].register_forward_hook(lambda m, i, o: o + vec)
        try:
            return hf_gen()
        finally:
            h.remove()

    steer = ls.Add(site=f"layers.{STEER_LAYER}.resid_post", vector=vec)
    plain_tokens = hf_gen_hook()
    ours_tokens = lm.generate(gen_batch, edits=[steer], max_new_tokens=GEN_NEW, min_new_tokens=GEN_NEW).sequences
    same_tokens = bool(torch.equal(plain_tokens, ours_tokens))

    fwd = timeit({
        "hf_forward_all_logits": lambda: hf(ids).logits,
        "hf_forward_keep1": lambda: hf(ids, logits_to_keep=1).logits,
        "hf_hooks_resid_keep1": lambda: ref_resid(hf, ids),
        "lmscope_noop_run": lambda: lm.run(batch),
        "lmscope_noop_edit": lambda: lm.run(batch, edits=[ls.Add(site="layers.3.resid_post", vector=torch.zeros(lm.d_model))]),
        "lmscope_capture_resid_logits": lambda: lm.run(batch, capture=["layers.*.resid_post"]),
        "lmscope_capture_resid_no_logits": lambda: lm.run(batch, capture=["layers.*.resid_post"], logits=None),
        "hf_hooks_logit_lens": lambda: ref_logit_lens(hf, ids),
        "lmscope_logit_lens": lens,
        "hf_hooks_ablate_neuron": lambda: ref_ablation_delta(hf, ids),
        "lmscope_ablate_neuron": ablate,
    }, args.repeats)
    gen = timeit({
        "hf_generate_plain": hf_gen,
        "hf_generate_steer_hook": hf_gen_hook,
        "lmscope_generate_steer": lambda: lm.generate(gen_batch, edits=[steer], max_new_tokens=GEN_NEW,
                                                      min_new_tokens=GEN_NEW),
    }, args.repeats)
    t = {**fwd, **gen}
    captured_mb = sum(v.numel() * v.element_size() for _, v in got.items()) / 2**20
    rows = [
        ("capture every resid_post (no logits) / HF forward (all logits)", t["lmscope_capture_resid_no_logits"] / t["hf_forward_all_logits"]),
        ("capture every resid_post (next-token logits) / HF hooks + logits_to_keep=1", t["lmscope_capture_resid_logits"] / t["hf_hooks_resid_keep1"]),
        ("no-op run / HF forward logits_to_keep=1", t["lmscope_noop_run"] / t["hf_forward_keep1"]),
        ("no-op edit (Add 0 at one layer) / HF forward logits_to_keep=1", t["lmscope_noop_edit"] / t["hf_forward_keep1"]),
        ("W2 logit lens (every layer, last token) / HF hooks + same unembedding", t["lmscope_logit_lens"] / t["hf_hooks_logit_lens"]),
        ("W2 logit lens / HF forward (all logits)", t["lmscope_logit_lens"] / t["hf_forward_all_logits"]),
        ("W4 neuron ablation (clean + ablated) / HF hooks", t["lmscope_ablate_neuron"] / t["hf_hooks_ablate_neuron"]),
        ("steered generate / HF generate (no steering)", t["lmscope_generate_steer"] / t["hf_generate_plain"]),
        ("steered generate / HF generate + plain steering hook", t["lmscope_generate_steer"] / t["hf_generate_steer_hook"]),
    ]
    print(f"\n## lmscope core on {lm.name} ({args.model}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"correctness: max |lmscope - plain-hook reference|: resid {max_diff}, logit lens {lens_diff}, "
          f"ablation delta {abl_diff}; steered tokens equal HF hook: {same_tokens}")
    print(f"captured {captured_mb:.1f} MiB for {lm.n_layers} layers x {tuple(ids.shape)} (only what was asked)\n")
    print("| workload | median s |\n|---|---|")
    for k, v in t.items():
        print(f"| {k} | {v:.3f} |")
    print("\n| ratio | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v:.3f} |")
    peers = [p for p in args.peers.split(",") if p]
    if peers:
        print("\n| peer (same run) | workload | median s | / HF same workload | / lmscope same workload |")
        print("|---|---|---|---|---|")
    for peer in peers:
        res = run_peer(peer, args.model)
        if "error" in res:
            print(f"| {peer} | error: {res['error'][:160]} | | | |")
            continue
        for key, entry in res.items():
            if not isinstance(entry, dict) or "median_s" not in entry:
                continue
            if key.startswith("W1"):
                hf_ref, ours = t["hf_forward_all_logits"], t["lmscope_capture_resid_no_logits"]
            elif key.startswith("W2"):
                hf_ref, ours = t["hf_hooks_logit_lens"], t["lmscope_logit_lens"]
            elif key == "W3_generate_steer":
                hf_ref, ours = t["hf_generate_plain"], t["lmscope_generate_steer"]
            elif key.startswith("W4"):
                hf_ref, ours = t["hf_hooks_ablate_neuron"], t["lmscope_ablate_neuron"]
            else:
                continue
            s_ = entry["median_s"]
            print(f"| {peer} | {key} | {s_:.3f} | {s_ / hf_ref:.2f} | {s_ / ours:.2f} |")


if __name__ == "__main__":
    main()
