"""Latent language (Wendler et al. 2024, "Do Llamas Work in English?").

Few-shot word-translation prompts such as

    Français: "fleur" - Deutsch: "Blume"
    ...
    Français: "chien" - Deutsch: "

are read with the logit lens at the last position of every layer. For each prompt we record the
probability of the first token of the answer in the target language (P_target), of the same
word in English (P_en) and in the source language (P_source). The paper found, on Llama-2,
that middle layers put more mass on the English word than on the target word before the
target takes over in the last layers.

Tokens: the first token of each word *as it is tokenized in the answer slot* (after the opening
quote), so it is the token the model would actually emit. Items where the three first tokens
are not all distinct are skipped (the probabilities could not be told apart).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from lmscope.datasets import files, shipped
from lmscope.engine.errors import InputError
from lmscope.engine.model import Model
from lmscope.engine.readout import unembed
from lmscope.engine.results import Result, Table
from lmscope.lens.logit import ROW_BUDGET

log = logging.getLogger(__name__)

DEFAULT_DATA = "translation.jsonl"  #: shipped word rows (`shipped.rows`)
#: How each language introduces itself in the prompt (other keys are used as they are).
LANGUAGE_NAMES = {"en": "English", "fr": "Français", "de": "Deutsch", "es": "Español", "it": "Italiano",
                  "zh": "中文", "ru": "Русский", "ja": "日本語", "pt": "Português", "nl": "Nederlands"}


@dataclass(frozen=True, kw_only=True)
class LatentConfig:
    """A latent-language run.

    Attributes:
        src: Language key of the words in the question (e.g. "fr").
        tgt: Language key of the answer (not "en": English is the probe).
        shots: Demonstrations per prompt (drawn from the other words, seeded).
        limit: Use at most this many words (after skipping), None = all.
        single_token: Keep only words whose target answer is one token in the answer slot.
        seed: Seed of the demonstration draw.
        batch_size: Prompts per forward.
    """

    src: str = "fr"
    tgt: str = "de"
    shots: int = 4
    limit: int | None = None
    single_token: bool = False
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.tgt == "en":
            raise InputError("tgt='en' leaves nothing to compare: English is the probe language. Pick another target.")
        if self.src == self.tgt:
            raise InputError(f"src and tgt are both {self.src!r}; translation needs two languages.")
        if self.shots < 1 or self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise InputError("shots, batch_size and limit must be at least 1.")


@dataclass(frozen=True, kw_only=True)
class LatentLanguageResult(Result):
    """Per-prompt, per-layer lens probabilities of the answer in three languages.

    Attributes:
        model: Model name.
        src, tgt: Language keys.
        layers: Block indices [layer].
        words: The items kept: {"src", "tgt", "en"} words [item].
        p_target, p_en, p_source: Probabilities [item, layer] (first token of each word).
        correct: Whether the model's own top-1 answer is the target's first token [item].
        n_skipped: Items skipped (first-token collision or, with single_token, multi-token).
        prompts: The prompts [item].
    """

    model: str
    src: str
    tgt: str
    layers: list[int]
    words: list[dict]
    p_target: Tensor
    p_en: Tensor
    p_source: Tensor
    correct: Tensor
    n_skipped: int
    prompts: list[str] = field(default_factory=list)

    @property
    def n_items(self) -> int:
        return len(self.words)

    @property
    def accuracy(self) -> float:
        """Fraction of prompts whose top-1 next token is the target word's first token."""
        return float(self.correct.float().mean()) if self.n_items else 0.0

    def curve_labels(self) -> dict[str, str]:
        labels = {"target": f"P({self.tgt}) target", "en": "P(en)", "source": f"P({self.src}) source"}
        if self.src == "en":
            del labels["source"]  # the same curve as P(en)
        return labels

    def band(self, key: str) -> tuple[Tensor, Tensor, Tensor]:
        """(mean, low, high) over items per layer; the band is mean ± 1.96 s.e., clipped to [0, 1]."""
        p = {"target": self.p_target, "en": self.p_en, "source": self.p_source}[key]
        mean = p.mean(0)
        se = p.std(0) / p.shape[0] ** 0.5 if p.shape[0] > 1 else torch.zeros_like(mean)
        return mean, (mean - 1.96 * se).clamp(0, 1), (mean + 1.96 * se).clamp(0, 1)

    def en_over_target_layers(self, min_prob: float = 0.01) -> list[int]:
        """Layers (all but the last) where mean P(en) > mean P(target) and P(en) >= `min_prob`
        (below that both are ~0 and the comparison is noise)."""
        en, tg = self.p_en.mean(0), self.p_target.mean(0)
        return [layer for i, layer in enumerate(self.layers[:-1]) if en[i] > tg[i] and en[i] >= min_prob]

    @property
    def middle_layers(self) -> list[int]:
        """The middle half of the network: layers n/4 .. 3n/4 - 1."""
        n = len(self.layers)
        return self.layers[n // 4 : (3 * n) // 4]

    def summary(self) -> str:
        en, tg, sr = self.p_en.mean(0), self.p_target.mean(0), self.p_source.mean(0)
        over = self.en_over_target_layers()
        mid = [x for x in over if x in self.middle_layers]
        i_en, i_sr = int(en[:-1].argmax()), int(sr[:-1].argmax())
        s = (f"{self.n_items} words, accuracy {self.accuracy:.0%}; last layer P(target) {float(tg[-1]):.3f}, "
             f"P(en) {float(en[-1]):.3f}. Peak P(en) before the last layer {float(en[i_en]):.3f} at layer "
             f"{self.layers[i_en]} (P(target) there {float(tg[i_en]):.3f}). ")
        if self.src != "en":
            s += f"Peak P(source) {float(sr[i_sr]):.3f} at layer {self.layers[i_sr]}. "
        if over:
            s += f"P(en) > P(target) at layers {over}" + (f", {len(mid)} of them in the middle half." if mid else
                                                           ", none in the middle half.")
        else:
            s += "P(en) never exceeds P(target) (with P(en) >= 0.01) before the last layer."
        return s

    def table(self) -> Table:
        """Mean probability of each curve per layer, the summary under it (`lmscope lens latent`)."""
        labels = self.curve_labels()
        means = {k: self.band(k)[0] for k in labels}
        return Table(["layer", *labels.values()],
                     [[layer, *(float(means[k][i]) for k in labels)] for i, layer in enumerate(self.layers)],
                     title=f"{self.model}: {self.src}->{self.tgt}, {self.n_items} words ({self.n_skipped} skipped), "
                           f"accuracy {self.accuracy:.0%}",
                     formats=dict.fromkeys(labels.values(), ".3f"), notes=[self.summary()])

    def to_dict(self) -> dict:
        """Stable keys: model, src, tgt, layers, n_items, n_skipped, accuracy, mean and band per
        curve ({"target","en","source"} -> {"mean","low","high"}), en_over_target_layers, items."""
        curves = {}
        for key in self.curve_labels():
            m, lo, hi = self.band(key)
            curves[key] = {"mean": [round(float(x), 5) for x in m], "low": [round(float(x), 5) for x in lo],
                           "high": [round(float(x), 5) for x in hi]}
        items = [{**w, "correct": bool(c), "p_target_last": round(float(pt[-1]), 5)}
                 for w, c, pt in zip(self.words, self.correct, self.p_target, strict=True)]
        return {"model": self.model, "src": self.src, "tgt": self.tgt, "layers": self.layers,
                "n_items": self.n_items, "n_skipped": self.n_skipped, "accuracy": round(self.accuracy, 4),
                "curves": curves, "en_over_target_layers": self.en_over_target_layers(),
                "middle_layers": self.middle_layers,
                "en_over_target_in_middle": any(x in self.middle_layers for x in self.en_over_target_layers()),
                "summary": self.summary(),
                "items": items}


def read_pairs(data: str | os.PathLike | Sequence[dict] | None = None) -> list[dict]:
    """Word rows keyed by language (`{"en": "dog", "fr": "chien", ...}`) from a JSONL file, a
    list of dicts, or None for the shipped `translation.jsonl`."""
    if data is None:
        rows = shipped.rows(DEFAULT_DATA)
    elif isinstance(data, str | os.PathLike):
        path = Path(data)
        if not path.is_file():
            raise InputError(f"No translation data at {path}; pass a JSONL file of {{lang: word}} objects.")
        rows = [rec for _, rec in files.read_jsonl(path, what="translation file", objects=False)]
    else:
        rows = list(data)
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise InputError(f"Translation item {i} is a {type(r).__name__}; expected a dict like "
                             '{"en": "dog", "fr": "chien", "de": "Hund"}.')
    return rows


def _prompt(demos: list[dict], query: dict, src: str, tgt: str) -> str:
    s, t = LANGUAGE_NAMES.get(src, src), LANGUAGE_NAMES.get(tgt, tgt)
    lines = [f'{s}: "{d[src]}" - {t}: "{d[tgt]}"' for d in demos]
    return "\n".join([*lines, f'{s}: "{query[src]}" - {t}: "'])


def _slot_tokens(model: Model, prompt: str, word: str) -> list[int]:
    """Tokens of `word` as it is tokenized right after `prompt` (the answer slot)."""
    tok = model.tokenizer
    p = tok(prompt)["input_ids"]
    full = tok(prompt + word)["input_ids"]
    if full[: len(p)] == p and len(full) > len(p):
        return list(full[len(p):])
    return list(tok(word, add_special_tokens=False)["input_ids"])  # the prompt's last token merged with the word


def build_items(model: Model, rows: Sequence[dict], cfg: LatentConfig) -> tuple[list[dict], int]:
    """Prompts and first tokens of every usable row: (items, n_skipped)."""
    need = {cfg.src, cfg.tgt, "en"}
    usable = [r for r in rows if all(isinstance(r.get(k), str) and r[k].strip() for k in need)]
    if len(usable) < cfg.shots + 1:
        raise InputError(f"Only {len(usable)} items have {sorted(need)} words; {cfg.shots} shots need at least "
                         f"{cfg.shots + 1}. Check the language keys (found: {sorted(rows[0]) if rows else []}).")
    items, skipped = [], len(rows) - len(usable)
    for i, r in enumerate(usable):
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + i)
        others = [j for j in range(len(usable)) if j != i]
        demos = [usable[others[int(k)]] for k in torch.randperm(len(others), generator=g)[: cfg.shots]]
        prompt = _prompt(demos, r, cfg.src, cfg.tgt)
        tg = _slot_tokens(model, prompt, r[cfg.tgt])
        first = {"target": tg[0], "en": _slot_tokens(model, prompt, r["en"])[0],
                 "source": _slot_tokens(model, prompt, r[cfg.src])[0]}
        distinct = len(set(first.values())) == 3 or (cfg.src == "en" and first["target"] != first["en"])
        if not distinct or (cfg.single_token and len(tg) != 1):
            skipped += 1
            continue
        items.append({"prompt": prompt, "ids": first, "words": {"src": r[cfg.src], "tgt": r[cfg.tgt], "en": r["en"]}})
        if cfg.limit is not None and len(items) >= cfg.limit:
            break
    if not items:
        raise InputError("Every item was skipped (first tokens of the target, English and source words collide"
                         + (", or the targets are multi-token" if cfg.single_token else "") + ").")
    return items, skipped


def latent_language(
    model: Model,
    data: str | os.PathLike | Sequence[dict] | None = None,
    *,
    config: LatentConfig | None = None,
    progress: bool = False,
) -> LatentLanguageResult:
    """Per-layer logit-lens probability of the answer in the target language, English and the
    source language, on few-shot translation prompts.

    Args:
        model: The wrapped model (a multilingual one: Gemma-3 is; SmolLM2 is mostly English).
        data: Word rows keyed by language (file or list), None for the shipped 123 words.
        config: Languages, shots, limit, seed (`LatentConfig`).
        progress: Show a tqdm progress bar over batches.

    Example:
        >>> r = latent_language(model, config=LatentConfig(src="fr", tgt="de"))
        >>> r.accuracy, r.en_over_target_layers()
    """
    from tqdm.auto import tqdm

    cfg = config or LatentConfig()
    items, skipped = build_items(model, read_pairs(data), cfg)
    sites = [f"layers.{x}.resid_post" for x in range(model.n_layers)]
    n_layer = model.n_layers
    probs, correct = [], []
    per_chunk = max(1, ROW_BUDGET // (model.d_vocab * n_layer))
    bs = cfg.batch_size
    with torch.inference_mode():
        for lo in tqdm(range(0, len(items), bs), disable=not progress, desc="latent language"):
            chunk = items[lo : lo + bs]
            res = model.run([it["prompt"] for it in chunk], capture=sites, positions="last", logits=None)
            h = torch.stack([res.cache[s] for s in sites])  # [layer, b, d]
            ids = torch.tensor([[it["ids"][k] for k in ("target", "en", "source")] for it in chunk],
                               device=model.device)  # [b, 3]
            for c0 in range(0, len(chunk), per_chunk):
                z = unembed(model, h[:, c0 : c0 + per_chunk]).float()  # [layer, c, vocab]
                lse = torch.logsumexp(z, -1, keepdim=True)
                idx = ids[c0 : c0 + per_chunk][None].expand(n_layer, -1, -1)  # [layer, c, 3]
                probs.append((z.gather(-1, idx) - lse).exp().permute(1, 0, 2).cpu())  # [c, layer, 3]
                correct.append((z[-1].argmax(-1) == idx[-1, :, 0]).cpu())
                del z
    p = torch.cat(probs)  # [item, layer, 3]
    return LatentLanguageResult(
        model=model.name, src=cfg.src, tgt=cfg.tgt, layers=list(range(n_layer)), words=[it["words"] for it in items],
        p_target=p[..., 0], p_en=p[..., 1], p_source=p[..., 2], correct=torch.cat(correct), n_skipped=skipped,
        prompts=[it["prompt"] for it in items],
    )
