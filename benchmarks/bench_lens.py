"""Logit lens vs one forward, and tuned-lens training throughput.

    python benchmarks/bench_lens.py [--models gemma-3-270m,smollm2-135m-instruct] [--train-steps 3]

`lens`: a full logit lens of the prompt (every layer x every position: top-10, one target's
probability and rank, KL to the output) against one plain forward `lm.run(prompt)` (next-token
logits). Both are timed interleaved (the CPU may be shared: both sides see the same load),
median of 3 after a warm-up. Also printed: the lens against a forward with logits at every
position, and the bare matmul floor of the lens (n_layers x n_pos rows through W_U).

`train`: tuned-lens training throughput in trained positions per second (each position
trains every layer's translator; the model forward of the step's windows is included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import lmscope as ls
from lmscope.lens.logit import logit_lens
from lmscope.lens.tuned import TunedLensConfig, train_tuned_lens


def _timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def bench_lens(lm, prompt: str, reps: int = 3) -> dict:
    n_pos = lm.tokenize(prompt).input_ids.shape[1]
    w_u = lm.weights.W_U  # [d_model, vocab]
    rows = torch.randn(lm.n_layers * n_pos, lm.d_model, device=lm.device, dtype=lm.dtype)
    fns = {
        "forward": lambda: lm.run(prompt),
        "forward_all_logits": lambda: lm.run(prompt, logits="all"),
        "logit_lens": lambda: logit_lens(lm, prompt, targets=[" Warsaw"], top_k=10),
        "matmul_floor": lambda: torch.mm(rows, w_u),
    }
    with torch.inference_mode():
        for f in fns.values():  # warm-up
            f()
        times = {k: [] for k in fns}
        for _ in range(reps):
            for k, f in fns.items():
                times[k].append(_timed(f, lm.device))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": lm.name, "positions": n_pos, "layers": lm.n_layers,
            **{f"{k}_s": round(v, 4) for k, v in med.items()},
            "lens_over_forward": round(med["logit_lens"] / med["forward"], 2),
            "lens_over_forward_all_logits": round(med["logit_lens"] / med["forward_all_logits"], 2),
            "matmul_floor_over_forward": round(med["matmul_floor"] / med["forward"], 2)}


def bench_train(lm, steps: int, positions: int, batch_size: int) -> dict:
    cfg = TunedLensConfig(steps=1, positions=positions, batch_size=batch_size)
    train_tuned_lens(lm, config=cfg)  # warm-up
    cfg = TunedLensConfig(steps=steps, positions=positions, batch_size=batch_size)
    _, log = train_tuned_lens(lm, config=cfg)
    return {"model": lm.name, "steps": steps, "positions_per_step": positions, "windows_per_step": batch_size,
            "seconds": round(log.seconds, 2), "positions_per_s": round(log.tokens_per_s, 2),
            "s_per_step": round(log.seconds / steps, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gemma-3-270m,smollm2-135m-instruct")
    ap.add_argument("--prompt", default="The capital of Poland is")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--positions", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = []
    for name in args.models.split(","):
        lm = ls.load(name, device=args.device)
        row = {"lens": bench_lens(lm, args.prompt)}
        if not args.skip_train:
            row["train"] = bench_train(lm, args.train_steps, args.positions, args.batch_size)
        out.append(row)
        if not args.json:
            b = row["lens"]
            print(f"{name}: {b['positions']} positions x {b['layers']} layers | forward {b['forward_s']:.3f} s | "
                  f"forward (all logits) {b['forward_all_logits_s']:.3f} s | logit lens {b['logit_lens_s']:.3f} s | "
                  f"lens/forward {b['lens_over_forward']:.2f}x (vs all-logits forward "
                  f"{b['lens_over_forward_all_logits']:.2f}x; bare lens matmul alone "
                  f"{b['matmul_floor_over_forward']:.2f}x)")
            if "train" in row:
                t = row["train"]
                print(f"{name}: tuned-lens training {t['positions_per_s']:.2f} positions/s "
                      f"({t['s_per_step']:.2f} s/step, {t['positions_per_step']} positions x every layer, "
                      f"{t['windows_per_step']} windows forwarded per step)")
    if args.json:
        print(json.dumps({"threads": args.threads, "device": args.device, "results": out}, indent=1))


if __name__ == "__main__":
    main()
