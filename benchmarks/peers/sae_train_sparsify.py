"""EleutherAI sparsify TopK SparseCoder training speed on cached activations (run inside venv-sparsify).

    ~/.cache/lmscope-peers/venv-sparsify/bin/python benchmarks/peers/sae_train_sparsify.py \
        --acts acts.safetensors --d-sae 4096 --k 32 --batch 4096 --steps 50 --warmup 5

sparsify's `Trainer` only trains through forward hooks on a HF model, so this script runs
the body of its hook and of its step loop (sparsify/trainer.py, 1.3.3) on cached rows:
  - step 0: b_dec = batch mean (its "centred pre-activations" init);
  - every step: set_decoder_norm_to_unit_norm(); forward with total_variance of the batch
    (loss = fvu + auxk_alpha * auxk_loss); did_fire bookkeeping; backward;
    remove_gradient_parallel_to_decoder_directions(); optimizer step; dead-latent counts.
Its defaults: optimizer "signum" (SignSGD in schedulefree's ScheduleFreeWrapper,
momentum 0.95, lr 5e-3 / sqrt(d_sae / 2**14)), auxk_alpha 0.0 (AuxK off), a latent is dead
after 10M tokens without firing. `--optimizer adam` gives its Adam branch (lr
2e-4 / sqrt(d_sae / 2**14), linear warm-up of 1000 steps). The sparse decoder is its eager
embedding_bag path (Triton is not installed on CPU).
"""

import contextlib
import sys
import time
from importlib.metadata import version

import torch
from sae_train_common import Batches, emit, fvu, parse_args, setup

DEAD_FEATURE_THRESHOLD = 10_000_000  # sparsify TrainConfig default, in tokens
LR_WARMUP_STEPS = 1000  # sparsify TrainConfig default, Adam only


def make_optimizer(name: str, sae, lr: float | None, total_steps: int):
    """The optimizer and LR schedulers as sparsify's Trainer.__init__ builds them."""
    if name == "signum":
        from schedulefree import ScheduleFreeWrapper
        from sparsify.sign_sgd import SignSGD

        lr = lr or 5e-3 / (sae.num_latents / 2**14) ** 0.5
        opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": lr}]), momentum=0.95)
        opt.train()
        return opt, [], lr
    from torch.optim import (
        Adam,  # sparsify prefers bitsandbytes' Adam8bit when installed (it is not here)
    )
    from transformers import get_linear_schedule_with_warmup

    lr = lr or 2e-4 / (sae.num_latents / 2**14) ** 0.5
    opt = Adam([{"params": sae.parameters(), "lr": lr}])
    return opt, [get_linear_schedule_with_warmup(opt, LR_WARMUP_STEPS, total_steps)], lr


def main() -> None:
    ap = parse_args(__doc__.splitlines()[0])
    ap.add_argument("--optimizer", choices=["signum", "adam"], default="signum", help="sparsify default: signum")
    ap.add_argument("--auxk-alpha", type=float, default=0.0, help="sparsify default: 0.0 (AuxK off)")
    args = ap.parse_args()
    acts = setup(args)

    with contextlib.redirect_stdout(sys.stderr):  # sparsify prints "Triton not installed ..." on import
        from sparsify import SparseCoder, SparseCoderConfig
    torch.set_float32_matmul_precision("high")  # as Trainer.fit() does

    d_in = acts.shape[1]
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=args.d_sae, k=args.k), "cpu", dtype=torch.float32)
    total_steps = args.warmup + args.steps
    opt, schedulers, lr = make_optimizer(args.optimizer, sae, args.lr, total_steps)
    tokens_since_fired = torch.zeros(sae.num_latents, dtype=torch.long)
    did_fire = torch.zeros(sae.num_latents, dtype=torch.bool)
    auxk_steps = 0

    batches = Batches(acts, args.batch, args.seed)
    for step in range(total_steps):
        if step == args.warmup:
            start = time.perf_counter()
        x = next(batches)
        if step == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        dead_mask = tokens_since_fired > DEAD_FEATURE_THRESHOLD if args.auxk_alpha > 0 else None
        auxk_steps += int(dead_mask is not None and bool(dead_mask.any()))
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = sae(x=x, y=x, dead_mask=dead_mask, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        float(out.fvu.detach())  # the Trainer reads the FVU every step for logging
        (out.fvu + args.auxk_alpha * out.auxk_loss).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        for scheduler in schedulers:
            scheduler.step()
        with torch.no_grad():
            tokens_since_fired += len(x)
            tokens_since_fired[did_fire] = 0
            did_fire.zero_()
    seconds = time.perf_counter() - start

    if args.optimizer == "signum":
        opt.eval()  # schedule-free: evaluate at the averaged weights, as sparsify does before saving
    with torch.no_grad():
        x = batches.recent_rows()
        top_acts, top_indices, _ = sae.encode(x)
        final_fvu = fvu(x, sae.decode(top_acts, top_indices))
    emit(args, acts, library="sparsify", version=version("eai-sparsify"), seconds=seconds, final_fvu=final_fvu,
         lr=lr, optimizer=args.optimizer, auxk_alpha=args.auxk_alpha,
         dead_latents=int((tokens_since_fired > DEAD_FEATURE_THRESHOLD).sum()), auxk_steps=auxk_steps)


if __name__ == "__main__":
    main()
