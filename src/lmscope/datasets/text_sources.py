"""Text to train dictionaries on, with a held-out part that training never sees.

Sources:
    None                  the offline default: the shipped corpus (544 encyclopedia-style
                          paragraphs, about 60k tokens) plus text the model samples itself
                          (temperature 1, from the opening words of corpus paragraphs
                          and the neutral prompts), cached under `cache_dir()/texts/`.
    a path                a .txt / .jsonl / .json file or a folder of them (see `corpus`); when
                          that gives fewer than 10 documents, their paragraphs are the documents.
    "hf:NAME[:CONFIG[:SPLIT]]"  a Hugging Face dataset's "text" column (needs `pip install
                          datasets` and a network).

Limits of the offline default, stated where it is used: the corpus is small and of one register,
and sampled text is the model's own distribution (its favourite topics, its repetitions), not the
web text published dictionaries are trained on. Features of everyday English come out; features
of code, other languages or rare domains mostly do not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lmscope.datasets import corpus, shipped
from lmscope.engine.errors import InputError


@dataclass
class TextSource:
    """Training documents, held-out documents and a description of where they come from."""

    train: list[str]
    held_out: list[str]
    label: str

    def to_dict(self) -> dict:
        return {"label": self.label, "n_train_documents": len(self.train), "n_held_out_documents": len(self.held_out)}


def split(texts: Sequence[str], held_out: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded document-level split; at least one held-out document when held_out > 0."""
    if not 0 <= held_out < 1:
        raise InputError(f"held_out must be in [0, 1), got {held_out}.")
    perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    n_out = max(1, round(held_out * len(texts))) if held_out > 0 and len(texts) > 1 else 0
    out = sorted(perm[:n_out])
    keep = sorted(perm[n_out:])
    return [texts[i] for i in keep], [texts[i] for i in out]


def _sample_prompts() -> list[str]:
    docs = corpus.read_texts(None)
    openings = [" ".join(d.split()[:4]) for d in docs]
    return openings + shipped.neutral_prompts()


def sampled_texts(model, n_tokens: int, *, seed: int = 0, new_tokens: int = 128, batch: int = 32,
                  progress: bool = False) -> list[str]:
    """Text the model writes itself (about `n_tokens` tokens), cached per model, seed and size."""
    from lmscope.engine.artifacts import atomic_write
    from lmscope.engine.cache import cache_dir
    from lmscope.engine.runner import generate

    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in model.name)
    path = cache_dir() / "texts" / f"{safe}-seed{seed}-{n_tokens}.jsonl"
    if path.is_file():
        return [json.loads(line)["text"] for line in path.read_text("utf-8").splitlines() if line.strip()]
    prompts = _sample_prompts()
    g = torch.Generator().manual_seed(seed)
    n_samples = max(1, -(-n_tokens // new_tokens))
    order = torch.randint(len(prompts), (n_samples,), generator=g).tolist()
    from tqdm.auto import tqdm

    out: list[str] = []
    for i in tqdm(range(0, n_samples, batch), disable=not progress, desc="sampling text", unit="batch"):
        ps = [prompts[j] for j in order[i: i + batch]]
        res = generate(model, ps, max_new_tokens=new_tokens, do_sample=True, temperature=1.0,
                       seed=seed * 100_003 + i)
        out += [p + t for p, t in zip(ps, res.texts, strict=True)]
    lines = "".join(json.dumps({"text": t}) + "\n" for t in out)
    atomic_write(path, lambda tmp: Path(tmp).write_text(lines, "utf-8"))
    return out


def _hf_texts(spec: str, max_docs: int) -> list[str]:
    parts = spec[3:].split(":")
    name, config, split_name = parts[0], (parts[1] or None) if len(parts) > 1 else None, \
        parts[2] if len(parts) > 2 else "train"
    try:
        import datasets
    except ImportError:
        raise InputError(f"{spec} needs the Hugging Face datasets package: pip install datasets.") from None
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise InputError(f"{spec} needs the network, and HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set; "
                         "pass a local text or JSONL file instead.")
    try:
        ds = datasets.load_dataset(name, config, split=split_name, streaming=True)
        out = []
        for row in ds:
            if isinstance(row.get("text"), str) and row["text"].strip():
                out.append(row["text"])
            if len(out) >= max_docs:
                break
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; say which source failed
        raise InputError(f"Cannot read the Hugging Face dataset {spec} ({type(e).__name__}: {e}). "
                         "Offline, pass a local text or JSONL file.") from None
    if not out:
        raise InputError(f"{spec} yielded no 'text' rows.")
    return out


def training_text(model, source: str | os.PathLike | Sequence[str] | None = None, *, sample_tokens: int = 16_384,
                  held_out: float = 0.1, seed: int = 0, hf_docs: int = 20_000, progress: bool = False) -> TextSource:
    """Documents for dictionary training (see the module docstring), split into train and held-out.

    Args:
        model: The model (samples text for the offline default).
        source: None, a path, texts, or "hf:NAME[:CONFIG[:SPLIT]]".
        sample_tokens: Tokens of model-written text added to the shipped corpus (offline default).
        held_out: Fraction of documents kept out of training (the evaluation card reads them).
        seed: Split and sampling seed.
        hf_docs: Documents taken from a Hugging Face dataset.
        progress: Show a progress bar while sampling.
    """
    if source is None:
        real = corpus.read_texts(None)
        r_train, r_out = split(real, held_out, seed)
        label = f"shipped corpus ({len(real)} paragraphs)"
        if sample_tokens > 0:
            fake = sampled_texts(model, sample_tokens, seed=seed, progress=progress)
            f_train, f_out = split(fake, held_out, seed + 1)
            label += f" + {len(fake)} texts sampled from {model.name} (~{sample_tokens:,} tokens, T=1)"
            return TextSource(r_train + f_train, r_out + f_out, label)
        return TextSource(r_train, r_out, label)
    if isinstance(source, str) and source.startswith("hf:"):
        texts = _hf_texts(source, hf_docs)
        label = source
    else:
        texts = corpus.read_texts(source)
        label = str(source) if isinstance(source, str | os.PathLike) else f"{len(texts)} given texts"
    if len(texts) < 10:  # one long .txt file: its paragraphs are the documents, so some can be held out
        paras = [p.strip() for t in texts for p in t.split("\n\n") if p.strip()]
        texts = paras if len(paras) > len(texts) else texts
    tr, out = split(texts, held_out, seed)
    if not tr:
        raise InputError(f"{label}: no documents left for training after holding out {held_out:.0%}; "
                         "pass more documents or lower held_out.")
    return TextSource(tr, out, label)
