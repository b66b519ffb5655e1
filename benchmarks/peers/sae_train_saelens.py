"""SAELens TopK SAE training speed on cached activations (run inside venv-sae).

    ~/.cache/lmscope-peers/venv-sae/bin/python benchmarks/peers/sae_train_saelens.py \
        --acts acts.safetensors --d-sae 4096 --k 32 --batch 4096 --steps 50 --warmup 5

Drives SAELens's own `SAETrainer.fit()` with a data provider (an iterator of [batch, d_in]
tensors), so every step is exactly SAELens's: `TopKTrainingSAE.training_forward_pass`
(MSE summed over d_in, meaned over the batch, + AuxK once latents are dead), dead-latent
bookkeeping, backward, grad-norm clip at 1.0, Adam, LR scheduler. All SAELens defaults:
lr 3e-4 (constant, no warm-up), rescale_acts_by_decoder_norm=True, decoder_init_norm=0.1,
dead_feature_window=1000 steps, aux_loss_coefficient=1.0, no activation normalisation.

Timing: the clock starts when fit() asks for batch number `warmup` (the first timed step)
and stops when fit() returns, so it covers `steps` full trainer steps.
"""

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # fit() opens a tqdm bar
os.environ.setdefault("WANDB_MODE", "disabled")

import time

import torch
from sae_train_common import Batches, emit, fvu, parse_args, setup


def main() -> None:
    args = parse_args(__doc__.splitlines()[0]).parse_args()
    acts = setup(args)

    import sae_lens
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(
        d_in=acts.shape[1], d_sae=args.d_sae, k=args.k, dtype="float32", device="cpu"))
    total_steps = args.warmup + args.steps
    lr = args.lr if args.lr is not None else SAETrainerConfig.lr  # SAELens default 3e-4
    trainer_cfg = SAETrainerConfig(
        total_training_samples=total_steps * args.batch, train_batch_size_samples=args.batch, device="cpu",
        lr=lr, lr_end=lr / 10)  # lr_end as LanguageModelSAERunnerConfig sets it (unused: constant LR)

    batches = Batches(acts, args.batch, args.seed)
    start: list[float] = []

    def data_provider():
        for i, x in enumerate(batches):
            if i == args.warmup:
                start.append(time.perf_counter())
            yield x

    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=data_provider())
    trainer.fit()
    seconds = time.perf_counter() - start[0]
    assert trainer.n_training_steps == total_steps, trainer.n_training_steps

    sae.eval()
    with torch.no_grad():
        x = batches.recent_rows()
        final_fvu = fvu(x, sae(x))
    emit(args, acts, library="sae-lens", version=sae_lens.__version__, seconds=seconds, final_fvu=final_fvu,
         lr=trainer_cfg.lr, optimizer="adam", dead_latents=int(trainer.dead_neurons.sum()),
         dead_window_steps=trainer_cfg.dead_feature_window)


if __name__ == "__main__":
    main()
