"""Train a TopK SAE on a real embedded model and print its evaluation card (the docs' numbers).

    python benchmarks/sae_real.py --model gemma-3-270m --site layers.6.resid_post \
        --text /tmp/sae_text.jsonl --tokens 400000 --train-tokens 3000000 --out runs/gemma-l6

`--text` is any text or JSONL file (benchmarks/sae_text.py writes an offline one); without it the
offline default (shipped corpus + text sampled from the model) is used.
"""

from __future__ import annotations

import argparse
import json
import time

import lmscope
from lmscope.saes.pipeline import train_sae
from lmscope.saes.training import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--site", default="layers.6.resid_post")
    ap.add_argument("--text")
    ap.add_argument("--tokens", type=int, default=400_000, help="activation tokens cached")
    ap.add_argument("--train-tokens", type=int, default=3_000_000, help="tokens trained on (epochs over the cache)")
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    model = lmscope.load(a.model)
    cfg = TrainConfig(arch="topk", expansion=a.expansion, k=a.k, batch_size=a.batch, total_tokens=a.train_tokens,
                      lr=a.lr, progress=True, log_every=25)
    t0 = time.perf_counter()
    (res,) = train_sae(model, a.site, cfg, text=a.text, max_tokens=a.tokens, out=a.out, eval_tokens=a.eval_tokens)
    out = res.to_dict()
    out["wall_seconds"] = time.perf_counter() - t0
    out["train"].pop("config")
    print(json.dumps({"model": a.model, "site": a.site, "card": out["card"], "train": out["train"],
                      "n_activation_tokens": out["n_activation_tokens"], "text": out["text"],
                      "wall_seconds": out["wall_seconds"]}, indent=1, default=str))


if __name__ == "__main__":
    main()
