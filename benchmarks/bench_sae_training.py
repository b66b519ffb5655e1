"""TopK SAE training speed from cached activations: lmscope vs SAELens vs EleutherAI sparsify.

    python benchmarks/bench_sae_training.py --make-random 200000 512 --steps 50 --warmup 5
    python benchmarks/bench_sae_training.py --acts acts.safetensors [--json]

All three train a TopK SAE (d_sae = d_sae_mult * d_in, same k) on the same [N, d_in] float32
tensor, same batch size, same number of steps and threads, each with its own trainer and
defaults (init, optimizer, LR, decoder normalisation, AuxK). Speed is tokens/s over the timed
steps; the `warmup` steps before them are not timed.
  lmscope  in this process: one untimed `train_on_activations` run of `warmup` steps, then a
           timed run of `steps` steps; tokens/s is the trainer's own `log.tokens_per_s`.
  peers    benchmarks/peers/sae_train_{saelens,sparsify}.py in their own venvs (build them
           with benchmarks/peers/setup_sae_peers.sh); each prints one JSON line.
Final FVU = sum ||x - x_hat||^2 / sum ||x - mean||^2 on 8 batches of training rows, final weights.
The activations file is safetensors with one tensor "activations" [N, d_in] float32;
`--make-random N D` writes a structured random one (sparse mixtures of unit directions + noise).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PEER_ROOT = Path.home() / ".cache" / "lmscope-peers"
PEERS_DIR = Path(__file__).resolve().parent / "peers"
PEERS = {  # name -> (venv, script)
    "sae-lens": (PEER_ROOT / "venv-sae", PEERS_DIR / "sae_train_saelens.py"),
    "sparsify": (PEER_ROOT / "venv-sparsify", PEERS_DIR / "sae_train_sparsify.py"),
}
FVU_BATCHES = 8  # as in peers/sae_train_common.py


def make_random_acts(n: int, d: int, *, seed: int = 0) -> torch.Tensor:
    """[n, d] rows = offset + sparse non-negative mixture of 4*d unit directions (~8 per row) + noise."""
    gen = torch.Generator().manual_seed(seed)
    n_dirs, per_row = 4 * d, 8
    dirs = torch.nn.functional.normalize(torch.randn(n_dirs, d, generator=gen), dim=1)  # [n_dirs, d]
    offset = 0.5 * torch.randn(d, generator=gen) / d**0.5  # a mean the decoder bias has to learn
    idx = torch.randint(0, n_dirs, (n, per_row), generator=gen)  # [n, per_row]
    coef = torch.empty(n, per_row).exponential_(generator=gen)  # [n, per_row]
    x = offset + torch.einsum("np,npd->nd", coef, dirs[idx]) + 0.05 * torch.randn(n, d, generator=gen)
    return x.float().contiguous()


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def bench_lmscope(acts: torch.Tensor, args: argparse.Namespace) -> dict:
    """Time lmscope's trainer in-process: an untimed warm-up run, then the timed run."""
    from lmscope.saes.training import TrainConfig, train_on_activations

    def config(n_steps: int) -> TrainConfig:
        return TrainConfig(arch="topk", expansion=args.d_sae_mult, k=args.k, batch_size=args.batch, lr=args.lr,
                           seed=args.seed, total_tokens=n_steps * args.batch, progress=False)

    if args.warmup:
        train_on_activations(acts, config(args.warmup))
    t = time.perf_counter()
    coder, log = train_on_activations(acts, config(args.steps))
    wall = time.perf_counter() - t
    log_fvu = log.fvu[-1] if isinstance(log.fvu, (list, tuple)) else log.fvu
    rows = acts[torch.randperm(len(acts), generator=torch.Generator().manual_seed(args.seed))[:FVU_BATCHES * args.batch]]
    with torch.no_grad():
        final_fvu = fvu(rows, coder(rows))
    import lmscope
    return {"library": "lmscope", "version": getattr(lmscope, "__version__", "?"),
            "tokens_per_s": round(log.tokens_per_s, 1), "steps": log.steps, "warmup": args.warmup,
            "batch": args.batch, "d_in": acts.shape[1], "d_sae": args.d_sae_mult * acts.shape[1], "k": args.k,
            "final_fvu": round(final_fvu, 5), "log_fvu": round(float(log_fvu), 5), "seconds": round(wall, 4),
            "threads": torch.get_num_threads()}


def bench_peer(name: str, acts_path: Path, d_in: int, args: argparse.Namespace) -> dict | str:
    """Run one peer script in its venv; its JSON row, or a line saying why not."""
    venv, script = PEERS[name]
    python = venv / "bin" / "python"
    if not python.exists():
        return f"{name}: not installed: run benchmarks/peers/setup_sae_peers.sh ({venv} missing)"
    cmd = [str(python), str(script), "--acts", str(acts_path), "--d-sae", str(args.d_sae_mult * d_in),
           "--k", str(args.k), "--batch", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--seed", str(args.seed), "--threads", str(torch.get_num_threads())]
    if args.lr is not None:
        cmd += ["--lr", str(args.lr)]
    if name == "sparsify":
        cmd += ["--optimizer", args.sparsify_optimizer]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}  # keep /work/main's packages out of the venv
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not rows:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return f"{name}: failed (exit {proc.returncode}): " + " | ".join(tail)
    return json.loads(rows[-1])


def print_table(rows: list[dict]) -> None:
    lm = next((r for r in rows if r["library"] == "lmscope"), None)
    print(f"{'library':<10} {'version':<9} {'tokens/s':>10} {'lmscope/peer':>12} {'final FVU':>9} "
          f"{'timed s':>8} {'steps':>5}  notes")
    for r in rows:
        ratio = f"{lm['tokens_per_s'] / r['tokens_per_s']:.2f}x" if lm and r is not lm else ""
        notes = ", ".join(f"{k}={r[k]}" for k in ("optimizer", "lr", "dead_latents", "log_fvu") if k in r)
        print(f"{r['library']:<10} {r['version']:<9} {r['tokens_per_s']:>10.0f} {ratio:>12} {r['final_fvu']:>9.4f} "
              f"{r['seconds']:>8.2f} {r['steps']:>5}  {notes}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--acts", type=Path, help='safetensors with "activations" [N, d_in] float32')
    ap.add_argument("--make-random", nargs=2, type=int, metavar=("N", "D"),
                    help="write a structured random [N, D] file to --acts (default: a temp file) and use it")
    ap.add_argument("--d-sae-mult", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=50, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    ap.add_argument("--lr", type=float, default=None, help="default: each library's own")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for all three (default: torch's)")
    ap.add_argument("--libraries", default="lmscope,sae-lens,sparsify")
    ap.add_argument("--sparsify-optimizer", choices=["signum", "adam"], default="signum",
                    help="sparsify's default is signum; adam matches the others' optimizer")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.make_random:
        n, d = args.make_random
        args.acts = args.acts or Path(tempfile.gettempdir()) / f"lmscope_sae_acts_{n}x{d}.safetensors"
        save_file({"activations": make_random_acts(n, d, seed=args.seed)}, str(args.acts))
    elif args.acts is None:
        ap.error("give --acts PATH or --make-random N D")
    acts = load_file(str(args.acts))["activations"].float().contiguous()  # [N, d_in]
    libraries = args.libraries.split(",")

    rows, skipped = [], []
    if "lmscope" in libraries:
        try:
            rows.append(bench_lmscope(acts, args))
        except ImportError as e:
            skipped.append(f"lmscope: lmscope.saes.training not importable ({e})")
    for name in PEERS:
        if name in libraries:
            out = bench_peer(name, args.acts, acts.shape[1], args)
            (rows if isinstance(out, dict) else skipped).append(out)

    if args.json:
        print(json.dumps({"acts": str(args.acts), "n_tokens": acts.shape[0], "d_in": acts.shape[1],
                          "results": rows, "skipped": skipped}, indent=1))
        return
    print(f"acts {args.acts}: {acts.shape[0]} x {acts.shape[1]} | d_sae {args.d_sae_mult * acts.shape[1]}, "
          f"k {args.k}, batch {args.batch}, {args.steps} timed steps after {args.warmup} warm-up, "
          f"{torch.get_num_threads()} threads")
    print_table(rows)
    for line in skipped:
        print(line, file=sys.stderr)


if __name__ == "__main__":
    main()
