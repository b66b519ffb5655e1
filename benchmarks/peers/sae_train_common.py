"""Shared pieces of the peer SAE-training scripts (sae_train_saelens.py, sae_train_sparsify.py).

Each peer script runs in its own venv, so this module needs only torch and safetensors.
It gives every peer the same command line, the same activations, the same batch order
(a seeded permutation, reshuffled each epoch, partial batches dropped) and the same
final FVU: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the last training batches,
computed with the final weights.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys

import torch
from safetensors.torch import load_file

FVU_BATCHES = 8  # how many of the last training batches the final FVU is measured on


def parse_args(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--acts", required=True, help='safetensors file with "activations" [N, d_in] float32')
    ap.add_argument("--d-sae", type=int, required=True)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=50, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed training steps before the timed ones")
    ap.add_argument("--lr", type=float, default=None, help="default: the library's own default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch default)")
    return ap


def setup(args: argparse.Namespace) -> torch.Tensor:
    """Set threads and seed; load the activations [N, d_in] float32."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    acts = load_file(args.acts)["activations"].float().contiguous()  # [N, d_in]
    if acts.ndim != 2 or acts.shape[0] < args.batch:
        sys.exit(f"{args.acts}: need activations [N, d_in] with N >= batch {args.batch}, got {tuple(acts.shape)}")
    return acts


class Batches:
    """Endless iterator of [batch, d_in] rows; remembers the last FVU_BATCHES row indices."""

    def __init__(self, acts: torch.Tensor, batch: int, seed: int):
        self.acts, self.batch = acts, batch
        self.gen = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.pos = 0
        self.recent = collections.deque(maxlen=FVU_BATCHES)

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self.pos + self.batch > len(self.order):
            self.order = torch.randperm(len(self.acts), generator=self.gen)
            self.pos = 0
        idx = self.order[self.pos:self.pos + self.batch]
        self.pos += self.batch
        self.recent.append(idx)
        return self.acts[idx]

    def recent_rows(self) -> torch.Tensor:
        return self.acts[torch.cat(list(self.recent))]


@torch.no_grad()
def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2."""
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def emit(args: argparse.Namespace, acts: torch.Tensor, **fields) -> None:
    """Print the one JSON line the orchestrator reads."""
    seconds = fields.pop("seconds")
    row = {**{k: fields.pop(k) for k in ("library", "version")},
           "tokens_per_s": round(args.steps * args.batch / seconds, 1),
           "steps": args.steps, "warmup": args.warmup, "batch": args.batch,
           "d_in": acts.shape[1], "d_sae": args.d_sae, "k": args.k,
           "final_fvu": round(fields.pop("final_fvu"), 5), "seconds": round(seconds, 4),
           "threads": torch.get_num_threads(), **fields}
    print(json.dumps(row), flush=True)
