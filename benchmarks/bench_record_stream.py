"""Recording every neuron: statistics streamed out of the forward, block by block, against
keeping every block's activations until the forward ends (how `record` worked before).

    python benchmarks/bench_record_stream.py [--model gemma-3-270m] [--tokens 16384] [--window 256]
        [--batch 32] [--reps 2]

Each mode runs in its own process (so peak memory is its own), alternating, `--reps` times:
  stream  `record(...)` as shipped: `run(..., on_capture=...)` hands each block's activations to
          the statistics as the forward reaches them, so one block's `[batch, window, d_mlp]`
          is alive at a time;
  kept    the same reductions fed from a cache that holds every block's activations until the
          forward ends (`on_capture` replayed after the run).
Printed per mode: the median seconds, the peak resident memory above the loaded model, and a
checksum of the recorded statistics (the two modes must agree exactly).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import time


def worker(args: argparse.Namespace) -> None:
    import torch

    import lmscope as ls
    from lmscope.neurons.recording import RecordConfig, record

    torch.set_num_threads(args.threads)
    lm = ls.load(args.model, quiet=True)
    if args.mode == "kept":
        run = lm.run

        def run_then_replay(batch, *, on_capture=None, **kw):
            res = run(batch, **kw)
            for name in res.cache.keys():  # noqa: SIM118 (a Cache, not a dict); forward order
                on_capture(name, res.cache[name])
            return res

        lm.run = run_then_replay
    cfg = RecordConfig(window=args.window, batch_size=args.batch, max_tokens=args.tokens)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record(lm, "layers.*.mlp.neurons", config=RecordConfig(window=args.window, batch_size=2, max_tokens=args.window))
    t = time.perf_counter()
    rec = record(lm, "layers.*.mlp.neurons", config=cfg)
    sec = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    digest = hashlib.sha256()
    for r in rec.sites.values():
        for t in (r.stats.mean, r.stats.m2, r.stats.max, r.stats.min, r.stats.hist, r.top.vals, r.top.window,
                  r.top.pos, r.top.ids, r.top.acts):
            digest.update(t.cpu().contiguous().numpy().tobytes())
    check = digest.hexdigest()[:16]
    print(json.dumps({"mode": args.mode, "seconds": sec, "peak_mib_above_model": peak - base,
                      "tokens": rec.n_tokens, "checksum": check}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", choices=["stream", "kept"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.mode:
        return worker(a)
    runs: dict[str, list[dict]] = {"stream": [], "kept": []}
    for _ in range(a.reps):
        for mode, rows in runs.items():
            cmd = [sys.executable, __file__, "--mode", mode, *sys.argv[1:]]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{a.model}: every layer's neurons over {runs['stream'][0]['tokens']} tokens, {a.batch} windows x "
          f"{a.window} tokens per forward, {a.threads} threads, median of {a.reps}")
    for mode, rows in runs.items():
        print(f"  {mode:6} {statistics.median(r['seconds'] for r in rows):8.2f} s   peak "
              f"{max(r['peak_mib_above_model'] for r in rows):7.0f} MiB above the model   checksum {rows[0]['checksum']!r}")
    same = len({r["checksum"] for rows in runs.values() for r in rows}) == 1
    print(f"  statistics equal in both modes: {same}")


if __name__ == "__main__":
    main()
