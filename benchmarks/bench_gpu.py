"""The GPU timings in one run: the atlas of both embedded models (exact, bfloat16 candidates,
low-rank candidates), the logit lens, and a TopK SAE training step.

    python benchmarks/bench_gpu.py [--device cuda] [--models gemma-3-270m,smollm2-135m-instruct]
        [--weights auto|real|random] [--model-dir DIR] [--out results.json]

Weights: "real" loads the embedded models (`lmscope.load`); "random" builds the same
architectures from their `config.json` and tokenizer files in `--model-dir` (default: lmscope's
model cache) with random weights; "auto" tries real, then random. The speed of these workloads
depends on the shapes alone, so random weights give the same timings; the recall of the
approximate atlas searches is printed for whatever weights ran, and its real-weight value is
measured on the CPU (`bench_atlas.py approx`).

A device machine cannot download the models, and their weights are larger than what travels
to it; config and tokenizer files are small (37 MB for both), so copy them into an ignored
folder of the checkout and carry that folder:

    mkdir -p .devcarry && echo /.devcarry/ >> .git/info/exclude
    for m in gemma-3-270m smollm2-135m-instruct; do mkdir -p .devcarry/$m;
      cp ~/.cache/lmscope/models/$m/{config.json,tokenizer.json,tokenizer_config.json} .devcarry/$m/; done
    # on the device (carry .devcarry):
    PYTHONPATH=src python3 benchmarks/bench_gpu.py --device cuda --weights random --model-dir .devcarry \\
        --out $OUT/gpu.json

Every timing synchronises the device, takes the median of `--reps` runs after a warm-up, and
is printed next to the same workload's float32 reference where one exists (the exact atlas
for the approximate searches, one plain forward for the logit lens).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import lmscope as ls
from lmscope.lens.logit import logit_lens
from lmscope.neurons.atlas import AtlasConfig, decode_model
from lmscope.saes.training import TrainConfig, train_on_activations

PROMPT = "The Eiffel Tower is in the city of Paris, and the Colosseum is in the city of"


def build(name: str, weights: str, model_dir: Path, device: str) -> tuple[ls.Model, str]:
    """The model and which weights it has ("real" or "random")."""
    if weights in ("real", "auto"):
        try:
            return ls.load(name, device=device, quiet=True), "real"
        except Exception as e:  # auto falls back to random weights, and says why
            if weights == "real":
                raise
            print(f"{name}: real weights unavailable ({type(e).__name__}: {str(e)[:120]}); random weights")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = model_dir / name
    cfg = AutoConfig.from_pretrained(folder)
    torch.manual_seed(0)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    return ls.Model(hf, tok, name=name), "random"


def timed(fn, device: torch.device, reps: int) -> tuple[float, object]:
    """Median seconds of `reps` runs after one warm-up, and the last result."""
    out = fn()
    secs = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        secs.append(time.perf_counter() - t)
    return statistics.median(secs), out


def recall_at(exact, approx, k: int = 10) -> float:
    hits = total = 0
    for kind, ids in exact.ids.items():
        e, a = ids[..., :k], approx.ids[kind][..., :k]
        hits += (e[..., :, None] == a[..., None, :]).any(-1).sum().item()
        total += e.numel()
    return hits / total


def bench_atlas(lm: ls.Model, reps: int, layers: tuple[int, ...] | None) -> list[dict]:
    configs = {"exact": AtlasConfig(k=10, layers=layers),
               "half K=64": AtlasConfig(k=10, layers=layers, search="half", candidates=64),
               "approx r=64 K=256": AtlasConfig(k=10, layers=layers, search="approx", rank=64, candidates=256)}
    rows, exact = [], None
    for label, cfg in configs.items():
        sec, res = timed(lambda cfg=cfg: decode_model(lm, cfg), lm.device, reps)
        exact = res if label == "exact" else exact
        rows.append({"workload": f"atlas {label}", "seconds": sec, "tflops": res.flops / sec / 1e12,
                     "speedup": None if label == "exact" else rows[0]["seconds"] / sec,
                     "recall_at_10": 1.0 if label == "exact" else recall_at(exact, res),
                     "layers": len(res.layers)})
    return rows


def bench_lens(lm: ls.Model, reps: int) -> list[dict]:
    with torch.inference_mode():
        fwd, _ = timed(lambda: lm.run(PROMPT), lm.device, reps)
        lens, _ = timed(lambda: logit_lens(lm, PROMPT, top_k=10), lm.device, reps)
    n = lm.tokenize(PROMPT).input_ids.shape[1]
    return [{"workload": "forward (next-token logits)", "seconds": fwd, "positions": n},
            {"workload": "logit lens (every layer x position)", "seconds": lens, "x_forward": lens / fwd,
             "positions": n}]


def bench_sae(lm: ls.Model, reps: int, batch: int, expansion: int, k: int) -> list[dict]:
    """Steps of lmscope's TopK trainer on random activations of the model's width, on its device."""
    d = lm.d_model
    steps = 20
    acts = torch.randn(batch * steps, d, device=lm.device)
    cfg = TrainConfig(arch="topk", expansion=expansion, k=k, batch_size=batch, total_tokens=batch * steps,
                      progress=False)
    sec, (_, hist) = timed(lambda: train_on_activations(acts, cfg), lm.device, reps)
    return [{"workload": f"SAE training step (TopK, d_sae {expansion * d}, k {k}, batch {batch})",
             "seconds": sec / steps, "tokens_per_s": hist.tokens_per_s}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="gemma-3-270m,smollm2-135m-instruct")
    ap.add_argument("--weights", choices=["auto", "real", "random"], default="auto")
    ap.add_argument("--model-dir", type=Path, default=Path.home() / ".cache" / "lmscope" / "models")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--atlas-layers", type=int, default=None, help="decode only the first N layers (default all)")
    ap.add_argument("--sae-batch", type=int, default=4096)
    ap.add_argument("--sae-expansion", type=int, default=16)
    ap.add_argument("--sae-k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    about = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
             "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(json.dumps(about))
    rows = []
    for name in a.models.split(","):
        lm, weights = build(name, a.weights, a.model_dir, a.device)
        layers = None if a.atlas_layers is None else tuple(range(min(a.atlas_layers, lm.n_layers)))
        for bench, args in ((bench_atlas, (a.reps, layers)), (bench_lens, (a.reps,)),
                            (bench_sae, (a.reps, a.sae_batch, a.sae_expansion, a.sae_k))):
            for r in bench(lm, *args):
                r = {"model": name, "weights": weights, **r}
                rows.append(r)
                extra = "".join(f"  {key} {r[key]:.3g}" for key in ("speedup", "x_forward", "tflops",
                                                                   "recall_at_10", "tokens_per_s") if r.get(key) is not None)
                print(f"{name:24} {r['workload']:58} {r['seconds']:9.4f} s{extra}", flush=True)
        del lm
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if a.out is not None:
        a.out.write_text(json.dumps({**about, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
