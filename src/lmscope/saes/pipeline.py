"""Train dictionaries on a model, end to end: text -> activations -> coders -> evaluation card.

    train_sae(model, "layers.6.resid_post", TrainConfig(k=32))

reads the text (the offline default, a file, or a Hugging Face dataset), keeps a held-out
part, caches the activations of every requested site in one model pass (or streams them),
trains one coder per site in lock-step, evaluates each on the held-out text and saves it with
its card. With `out=` a checkpoint is kept there and `resume=True` continues an interrupted run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmscope.datasets.text_sources import TextSource, training_text
from lmscope.engine.errors import InputError
from lmscope.engine.model import Model
from lmscope.engine.results import Result, Table
from lmscope.saes.activations import StreamSource, build_cache, site_width
from lmscope.saes.coder import CoderSpec, SparseCoder
from lmscope.saes.evaluation import Card, evaluate
from lmscope.saes.training import History, TrainConfig, Trainer, make_slot, run_training

log = logging.getLogger(__name__)


@dataclass
class TrainedSAE(Result):
    """One trained coder with its card, training curve and where it was saved."""

    coder: SparseCoder
    card: Card | None
    history: History
    config: TrainConfig
    text: dict
    n_activation_tokens: int
    path: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        h = self.history
        return {"spec": self.coder.cfg.to_dict(), "card": self.card.to_dict() if self.card else None,
                "train": {"steps": h.steps, "tokens": h.steps * self.config.batch_size,
                          "tokens_per_s": h.tokens_per_s, "seconds": h.seconds,
                          "final": h.rows[-1] if h.rows else None, "config": self.config.to_dict()},
                "text": self.text, "n_activation_tokens": self.n_activation_tokens, "path": self.path, **self.extra}

    def table(self) -> Table:
        if self.card is not None:
            return self.card.table()
        row = self.history.rows[-1] if self.history.rows else {}
        return Table(["metric", "value"], [[k, v] for k, v in row.items()], title=repr(self.coder))


def site_pairs(model: Model, sites: str | Sequence[str], kind: str, site_out: str | None = None) -> list[tuple[str, str]]:
    """(input site, output site) of every coder to train. A transcoder reads `layers.L.mlp_in`
    and predicts `layers.L.mlp_out` unless `site_out` says otherwise (one site only)."""
    names = [s.name for spec in ([sites] if isinstance(sites, str) else sites) for s in model.sites(spec)]
    if not names:
        raise InputError("Name at least one site, e.g. layers.6.resid_post.")
    if kind == "sae":
        return [(s, s) for s in names]
    if site_out is not None:
        if len(names) != 1:
            raise InputError("site_out= pairs with exactly one input site.")
        return [(names[0], model.site(site_out).name)]
    bad = [s for s in names if not s.endswith(".mlp_in")]
    if bad:
        raise InputError(f"A {kind} reads layers.L.mlp_in and predicts layers.L.mlp_out; got {bad[0]}. "
                         "Pass mlp_in sites, or site_out= for another pair.")
    return [(s, s[: -len("mlp_in")] + "mlp_out") for s in names]


def train_sae(model: Model, sites: str | Sequence[str], config: TrainConfig | None = None, *,
              text: str | os.PathLike | Sequence[str] | TextSource | None = None, sample_tokens: int = 16_384,
              activations: str = "cache", cache_path: str | Path | None = None, max_tokens: int | None = None,
              window: int = 128, site_out: str | None = None, out: str | Path | None = None, resume: bool = False,
              eval_tokens: int = 16384, evaluate_card: bool = True) -> list[TrainedSAE]:
    """Train one coder per site on the model's activations (see the module docstring).

    Args:
        model: The model.
        sites: Site(s) to read, e.g. "layers.6.resid_post" or ["layers.4.resid_post", "layers.8.resid_post"].
        config: Architecture and optimisation (`TrainConfig`).
        text: Text source (None: the offline default; see `datasets.text_sources`) or a `TextSource`.
        sample_tokens: Model-written tokens added to the shipped corpus by the offline default.
        activations: "cache" (sharded safetensors, reused by later runs) or "stream" (no disk).
        cache_path: Folder of the activation cache (default under `cache_dir()/activations`).
        max_tokens: Activation tokens to collect (default: all of the training text).
        window: Tokens per window when reading text.
        site_out: A transcoder's output site, when not the mlp_out of its mlp_in layer.
        out: Folder to save the coders (one sub-folder per site) and the checkpoint.
        resume: Continue from the checkpoint in `out`.
        eval_tokens: Held-out tokens for the evaluation card.
        evaluate_card: Compute the card (off for quick experiments).
    """
    from lmscope.saes.loading import save_coder

    config = config or TrainConfig()
    if activations not in ("cache", "stream"):
        raise InputError(f"activations must be 'cache' or 'stream', got {activations!r}.")
    pairs = site_pairs(model, sites, config.kind, site_out)
    read = list(dict.fromkeys(s for p in pairs for s in p))
    widths = {s: site_width(model, s) for s in read}
    src_text = text if isinstance(text, TextSource) else training_text(
        model, text, sample_tokens=sample_tokens, seed=config.seed, progress=config.progress)
    if activations == "cache":
        cache = build_cache(model, src_text.train, read, path=cache_path, window=window, max_tokens=max_tokens,
                            text_label=src_text.label, progress=config.progress)
        n_act = cache.n_tokens
        sample = {s: cache.sample(16384, s, seed=config.seed) for s in read}

        def chunks(cur):
            return cache.chunks(cur, seed=config.seed)
    else:
        from lmscope.datasets.corpus import token_windows
        from lmscope.saes.activations import window_chunks

        windows = token_windows(model, src_text.train, window=window, max_tokens=max_tokens)
        stream = StreamSource(model, windows, read)
        n_act = stream.n_tokens
        first = [c for _, c in zip(range(8), (c for _, c in window_chunks(model, windows, read)), strict=False)]
        sample = {s: torch.cat([c[s] for c in first])[:16384].cpu() for s in read}

        def chunks(cur):
            return stream.chunks(cur)
    slots = []
    for s_in, s_out in pairs:
        spec = CoderSpec(arch=config.arch, kind=config.kind, d_in=widths[s_in], d_out=widths[s_out],
                         d_sae=config.width(widths[s_in]), k=config.k if config.arch in ("topk", "batchtopk") else None,
                         site=s_in, site_out=s_out, model=model.name)
        slots.append(make_slot(s_in if s_in == s_out else f"{s_in}->{s_out}", spec, config, sample, s_in, s_out,
                               device=model.device))
    trainer = Trainer(slots, config)
    ckpt = Path(out) / "checkpoint" if out is not None else None
    if resume:
        if ckpt is None or not (ckpt / "checkpoint.json").is_file():
            raise InputError(f"resume=True needs a checkpoint in {ckpt or 'out/checkpoint'}; none found.")
        trainer.load_checkpoint(ckpt)
    run_training(trainer, chunks, checkpoint_dir=ckpt)
    results = []
    for slot in slots:
        card = evaluate(model, slot.coder, src_text.held_out, max_tokens=eval_tokens, window=window,
                        text_label=f"held out from {src_text.label}") if evaluate_card and src_text.held_out else None
        if card is not None and slot.history.rows:
            card.dead_fraction_training = slot.history.rows[-1]["dead"]
            card.dead_window = trainer.dead_window
        res = TrainedSAE(slot.coder.cpu(), card, slot.history, config, src_text.to_dict(), n_act)
        if out is not None:
            folder = Path(out) / slot.name.replace("->", "_to_")
            res.path = str(save_coder(slot.coder, folder, model=model, card=card.to_dict() if card else None,
                                      train=res.to_dict()["train"]))
        results.append(res)
    return results
