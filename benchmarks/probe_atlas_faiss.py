"""How fast can a CPU find a neuron's top tokens without scoring the whole vocabulary exactly?

A measurement, not a feature: it times FAISS (`pip install faiss-cpu`, the fastest CPU
inner-product search we know of) on the atlas's own workload, to show where the approximate
atlas's floor lies on this machine.

    pip install faiss-cpu
    python benchmarks/probe_atlas_faiss.py [--models gemma-3-270m,smollm2-135m-instruct] [--layers 3]
        [--settings 64:64:256,96:96:256,64:32:256,64:flat:256]

For each layer and weight matrix (`out`, `in_gate`), the rows in token space (final-norm gain
applied, as the atlas decodes them) are searched four stages at a time:

1. project: the rows' top `rank` principal directions, and the unembedding projected on them;
2. build: a FAISS index of the projected unembedding, either 4-bit product quantisation with
   fast-scan SIMD kernels (`PQ{M}x4fs`, M sub-quantisers) or exact inner products (`flat`,
   BLAS with a fused top-k);
3. search: each row's best `candidates` tokens from the index;
4. rerank: the candidates scored exactly (float32, all of d_model) and the top 10 kept.

It prints each stage's seconds next to the exact decode (`torch.mm` + the atlas's top-k) of the
same matrix, and recall@10 against it. Two threads for torch and FAISS alike.
"""

from __future__ import annotations

import argparse
import time

import torch

import lmscope as ls
from lmscope.neurons.atlas import (
    _unembed_matrix,
    principal_basis,
    to_token_space,
    topk_rows,
)


def rerank(rows: torch.Tensor, tokens: torch.Tensor, cand: torch.Tensor, k: int, chunk: int = 256) -> torch.Tensor:
    """Exact top-k among each row's candidates (ids [n, k])."""
    out = []
    for s in range(0, len(rows), chunk):
        c = cand[s : s + chunk]
        cols = tokens.index_select(0, c.flatten()).view(*c.shape, -1)
        scores = torch.bmm(cols, rows[s : s + chunk, :, None]).squeeze(2)
        out.append(c.gather(1, scores.topk(k, dim=1).indices))
    return torch.cat(out)


def probe(name: str, n_layers: int, settings: list[tuple[int, str, int]], k: int = 10) -> list[dict]:
    import faiss

    model = ls.load(name, quiet=True)
    w_u = _unembed_matrix(model)
    tokens = w_u.T.contiguous()
    layers = sorted({round(i * (model.n_layers - 1) / max(n_layers - 1, 1)) for i in range(n_layers)})
    totals: dict[str, dict] = {}
    for layer in layers:
        for src in ("out", "gate"):
            w = model.weights.W_out(layer) if src == "out" else model.weights.W_in(layer, src)
            rows = to_token_space(model, w)
            t = time.perf_counter()
            _, exact = topk_rows(rows @ w_u, k)
            row = totals.setdefault("exact", {"exact": 0.0})
            row["exact"] += time.perf_counter() - t
            for rank, m, cands in settings:
                label = f"rank {rank}, {'flat' if m == 'flat' else f'PQ{m}x4fs'}, {cands} candidates"
                row = totals.setdefault(label, {"project": 0.0, "build": 0.0, "search": 0.0, "rerank": 0.0,
                                                "hits": 0, "n": 0})
                t0 = time.perf_counter()
                basis = principal_basis(rows, rank)
                base = (tokens @ basis.T).contiguous().numpy()
                query = (rows @ basis.T).contiguous().numpy()
                t1 = time.perf_counter()
                spec = "Flat" if m == "flat" else f"PQ{m}x4fs"
                index = faiss.index_factory(rank, spec, faiss.METRIC_INNER_PRODUCT)
                index.train(base)
                index.add(base)
                t2 = time.perf_counter()
                _, found = index.search(query, cands)
                t3 = time.perf_counter()
                ids = rerank(rows, tokens, torch.from_numpy(found).clamp_min(0), k)
                t4 = time.perf_counter()
                for key, sec in zip(("project", "build", "search", "rerank"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    row[key] += sec
                row["hits"] += (exact[:, :, None] == ids[:, None, :]).any(-1).sum().item()
                row["n"] += exact.numel()
    exact_s = totals.pop("exact")["exact"]
    out = [{"model": name, "setting": "exact", "seconds": exact_s, "speedup": 1.0, "recall_at_10": 1.0}]
    for label, row in totals.items():
        total = row["project"] + row["build"] + row["search"] + row["rerank"]
        out.append({"model": name, "setting": label, "seconds": total, "speedup": exact_s / total,
                    "search_only_speedup": exact_s / row["search"], "recall_at_10": row["hits"] / row["n"],
                    **{key: row[key] for key in ("project", "build", "search", "rerank")}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gemma-3-270m,smollm2-135m-instruct")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--settings", default="64:64:256,96:96:256,64:32:256,64:flat:256",
                    help="rank:M:candidates (M sub-quantisers, or 'flat' for exact inner products)")
    a = ap.parse_args()
    import faiss

    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    settings = [(int(r), m, int(c)) for r, m, c in (s.split(":") for s in a.settings.split(","))]
    print(f"{'model':24} {'setting':38} {'total':>7} {'speed-up':>8} {'search-only':>11} {'recall@10':>9}"
          f" {'project':>7} {'build':>6} {'search':>6} {'rerank':>6}")
    for name in a.models.split(","):
        for r in probe(name, a.layers, settings):
            stages = "".join(f" {r[key]:6.2f}s" for key in ("project", "build", "search", "rerank")) if "build" in r else ""
            only = f"{r['search_only_speedup']:10.1f}x" if "build" in r else " " * 11
            print(f"{r['model']:24} {r['setting']:38} {r['seconds']:6.1f}s {r['speedup']:7.1f}x {only}"
                  f" {r['recall_at_10']:9.3f}{stages}", flush=True)


if __name__ == "__main__":
    main()
