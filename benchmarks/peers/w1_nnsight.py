"""W1 head to head: capture every decoder layer's output and stop after the last layer, with
nnsight and with lmscope, on one HF model object, in one process, interleaved.

    PYTHONPATH=src python benchmarks/peers/w1_nnsight.py [--model gemma-3-270m] [--reps 15]

Run it with a Python that has nnsight (the peers' venv from ../shared/peers/setup_venvs.sh,
e.g. ~/.cache/lmscope-peers/venv/bin/python) and lmscope's dependencies. The batch is the
peers' W1 batch shape, [32, 64] random token ids without padding. Rows:

    hf hooks + stop   plain forward hooks on every layer, an exception after the last one
    nnsight stop      `with lm.trace(ids) as tr: save(every layer's output); tr.stop()`
    lmscope           `model.run(batch, capture=["layers.*.resid_post"], logits=None)`

Every run's tensors are checked equal to the plain hooks' (max |diff| printed). Medians and
minima over `--reps` interleaved rounds (each round runs every row once, in a rotating order,
so the machine's load hits every row alike).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import lmscope as ls
from lmscope.engine.model import Batch


class _Stop(Exception):
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import nnsight
    from nnsight import LanguageModel

    lm = ls.load(a.model, quiet=True)
    nn_model = LanguageModel(lm.hf, tokenizer=lm.tokenizer)
    torch.manual_seed(0)
    ids = torch.randint(1000, 20000, (32, 64))
    batch = Batch(ids, torch.ones_like(ids), ["w1"] * len(ids))
    layers = lm.hf.model.layers
    nn_layers = nn_model.model.layers

    def hf_hooks():
        saved = []
        hs = [m.register_forward_hook(lambda m, i, o: saved.append(o[0] if isinstance(o, tuple) else o))
              for m in layers]

        def stop(m, i, o):
            raise _Stop

        hs.append(layers[-1].register_forward_hook(stop))
        try:
            with torch.inference_mode():
                lm.hf(input_ids=ids, use_cache=False)
        except _Stop:
            pass
        finally:
            for h in hs:
                h.remove()
        return saved

    def nnsight_stop():
        with nn_model.trace(ids) as tracer:
            saved = nnsight.save([x.output[0] if isinstance(x.output, tuple) else x.output for x in nn_layers])
            tracer.stop()
        return list(saved)

    def lmscope_run():
        cache = lm.run(batch, capture=["layers.*.resid_post"], logits=None).cache
        return [cache[f"layers.{i}.resid_post"] for i in range(lm.n_layers)]

    rows = {"hf hooks + stop": hf_hooks, "nnsight stop": nnsight_stop, "lmscope": lmscope_run}
    ref = hf_hooks()
    for name, fn in rows.items():
        got = fn()
        diff = max(float((x - r).abs().max()) for x, r in zip(got, ref, strict=True))
        print(f"{name:16} max |diff| vs plain hooks: {diff}")
    times = {k: [] for k in rows}
    names = list(rows)
    for r in range(a.reps):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            rows[name]()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["nnsight stop"])
    print(f"\n{a.model}, [32, 64], {a.threads} threads, {a.reps} rounds, torch {torch.__version__}, "
          f"nnsight {nnsight.__version__}")
    print("| row | median s | min s | / nnsight (median) |\n|---|---|---|---|")
    for name, v in times.items():
        print(f"| {name} | {statistics.median(v):.3f} | {min(v):.3f} | {statistics.median(v) / base:.3f} |")


if __name__ == "__main__":
    main()
