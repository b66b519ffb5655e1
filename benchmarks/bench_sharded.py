"""Sharded jobs: neuron recording and atlas building in one process, as a local sharded job, and
on 1 and 2 local Ray workers, measured side by side in one run.

    python benchmarks/bench_sharded.py [--model smollm2-135m-instruct] [--tokens 32768] [--shard-tokens 8192]
                                       [--threads 2] [--what recording,atlas]

Rows:
    plain        the family function without a job (`record(...)`, `decode_model(...)`)
    job local    the same work as a sharded job in this process (shards written, then merged):
                 its time over `plain` is the job layer's overhead
    ray xN       N Ray actors, each with `--threads / N` torch threads (at least 1), loading the
                 model themselves; the time includes starting Ray and the actors and loading the
                 model ("in shards s" is the time spent inside shards, summed over workers)

Each sharded run gets a fresh folder; every result is checked against `plain` (recording:
counts, histograms and extremes equal, moments to 1e-9; atlas: ids equal).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

import lmscope as ls
from lmscope.datasets.corpus import read_texts, token_windows
from lmscope.engine.sharded import ShardOptions, run_sharded
from lmscope.neurons.atlas import AtlasConfig, AtlasTask, decode_model
from lmscope.neurons.recording import RecordConfig, RecordTask, record


def _check_recording(a, b) -> None:
    for name in a.sites:
        x, y = a.sites[name].stats, b.sites[name].stats
        assert x.count == y.count and torch.equal(x.hist, y.hist) and torch.equal(x.max, y.max), name
        torch.testing.assert_close(x.mean, y.mean, rtol=1e-6, atol=1e-6)


def bench(model_name: str, tokens: int, threads: int, workers: list[int], shard_tokens: int,
          what: tuple[str, ...]) -> dict:
    torch.set_num_threads(threads)
    model = ls.load(model_name, quiet=True)
    texts = read_texts(None)
    cfg = RecordConfig(max_tokens=tokens, shard_tokens=shard_tokens)
    windows = token_windows(model, texts, window=cfg.window, max_tokens=tokens)
    sites = [s.name for s in model.sites("layers.*.mlp.neurons")]
    acfg = AtlasConfig(k=20)
    out = {"model": model_name, "tokens": windows.n_tokens, "threads": threads, "recording": [], "atlas": []}
    tmp = Path(tempfile.mkdtemp(prefix="lmscope-bench-sharded-"))

    if "recording" in what:
        t = time.perf_counter()
        plain = record(model, sites, windows, config=cfg)
        out["recording"].append({"run": "plain", "seconds": time.perf_counter() - t})
    if "atlas" in what:
        t = time.perf_counter()
        table = decode_model(model, acfg)
        out["atlas"].append({"run": "plain", "seconds": time.perf_counter() - t})

    rtask = RecordTask(sites, windows, cfg)
    atask = AtlasTask(acfg, tuple(range(model.n_layers)))
    runs = [("job local", ShardOptions(folder=tmp / "rl")), *[
        (f"ray x{n}", ShardOptions(folder=tmp / f"r{n}", backend="ray", workers=n,
                                   cpus_per_worker=max(1, threads // n))) for n in workers]]
    for label, opts in runs:
        if opts.backend == "ray":
            import ray

            if ray.is_initialized():
                ray.shutdown()
        for name, task, check in (("recording", rtask, "rec"), ("atlas", atask, "atlas")):
            if name not in what:
                continue
            o = dataclasses.replace(opts, folder=Path(opts.folder) / name)
            t = time.perf_counter()
            done = run_sharded(model, task, o)
            merged = task.merge(model, done)
            sec = time.perf_counter() - t
            if check == "rec":
                _check_recording(plain, merged)
            else:
                for kind in table.kinds:
                    assert torch.equal(merged.ids[kind], table.ids[kind]), kind
            out[name].append({"run": label, "seconds": sec, "shards": len(done),
                              "busy_seconds": sum(done.shard_seconds)})
    for name in what:
        base = out[name][0]["seconds"]
        for r in out[name]:
            r["vs_plain"] = r["seconds"] / base
            if name == "recording":
                r["tokens_per_s"] = windows.n_tokens / r["seconds"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--shard-tokens", type=int, default=8192, help="RecordConfig.shard_tokens")
    ap.add_argument("--what", default="recording,atlas")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    what = tuple(a.what.split(","))
    res = bench(a.model, a.tokens, a.threads, [int(x) for x in a.workers.split(",") if x], a.shard_tokens, what)
    if a.json:
        print(json.dumps(res, indent=1))
        return
    print(f"{res['model']}: {res['tokens']} tokens, {a.threads} threads on this machine, "
          f"shard_tokens {a.shard_tokens}")
    for name in what:
        print(f"  {name}")
        print(f"    {'run':10} {'seconds':>8} {'vs plain':>8} {'shards':>6} {'in shards s':>11}"
              + (f" {'tokens/s':>9}" if name == "recording" else ""))
        for r in res[name]:
            print(f"    {r['run']:10} {r['seconds']:8.1f} {r['vs_plain']:7.3f}x {r.get('shards', ''):>6} "
                  f"{r.get('busy_seconds', float('nan')):11.1f}"
                  + (f" {r['tokens_per_s']:9.0f}" if name == "recording" else ""))


if __name__ == "__main__":
    main()
