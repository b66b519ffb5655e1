"""Steering vectors: the `Vector` object and contrastive extraction (difference of means, RepE PCA).

A `Vector` holds one direction per layer, `[d_model]` float32 on the CPU, for one residual
site kind (`resid_post` by default) of one model, with how it was made (method, dataset hash,
position, typical residual norms) in `meta`. It is immutable: algebra returns new vectors.

    data = load_contrast("sentiment")
    train, test = data.split(held_out=0.25, seed=0)
    v = extract(model, train)                   # every layer in one pass
    v[6]                                        # the [d_model] tensor of layer 6
    (v.at(6) - 0.5 * w.at(6)).normalize()       # algebra; mismatched models/widths raise
    model.generate("I feel", edits=[v.edit(6, scale=4.0)])
    v.save("sentiment.safetensors"); Vector.load("sentiment.safetensors", model=model)

Extraction reads the site at the chosen position of every item: "last" (last token; for
completions the last completion token) or "mean" (mean over the completion tokens of a
completions set, or over the non-special tokens of a prompt). Methods:

- `mean-diff`: mean(positive) - mean(negative) (Arditi et al. 2024, CAA), accumulated in float64.
- `pca`: first right singular vector of the paired differences `D = pos - neg` [n, d_model],
  *uncentred* (RepE: PCA of randomly sign-flipped differences has the same axis, without the
  randomness), exact float32 SVD on the CPU, sign fixed so that positives project higher,
  scaled to the mean projected difference `mean(D @ u)` so its length is comparable to mean-diff.

Completions sets are balanced by default (`ExtractConfig.balance`): every distinct answer pair
weighs the same, so the letter identity of CAA A/B answers cancels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from lmscope.datasets.contrast import ContrastSet
from lmscope.engine.errors import ArtifactError, InputError, SiteError
from lmscope.engine.progress import steps
from lmscope.engine.sites import RESID_KINDS

if TYPE_CHECKING:
    from lmscope.engine.interventions import Add
    from lmscope.engine.model import Batch, Model

log = logging.getLogger(__name__)

ARTIFACT_KIND = "vector"


@dataclass(frozen=True)
class ModelStamp:
    """Which model a vector belongs to (enough to save it and to refuse a mismatch)."""

    name: str
    d_model: int
    n_layers: int
    family: str = ""
    source: str = ""
    revision: str | None = None

    @classmethod
    def of(cls, model: Model | ModelStamp) -> ModelStamp:
        if isinstance(model, ModelStamp):
            return model
        return cls(model.name, model.d_model, model.n_layers, model.family, model.source, model.revision)


def _as_scalar(x) -> float | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, int | float):
        return float(x)
    if isinstance(x, Tensor) and x.dim() == 0:
        return float(x)
    return None


class Vector:
    """One direction per layer at a residual site of one model.

    Args:
        layers: `{layer: Tensor[d_model]}`, a `[d_model]` tensor (with `layer=`), or a
            `[n_layers, d_model]` tensor (every layer).
        model: The `Model` (or a `ModelStamp`) the vector belongs to.
        site: Residual site kind: resid_pre, resid_mid, resid_post, attn_out or mlp_out.
        method: How it was made ("mean-diff", "pca", "function-vector", "algebra", ...).
        layer: The layer of a single `[d_model]` tensor.
        meta: Free metadata saved in the sidecar (dataset, evaluation, `resid_norms`, ...).
    """

    def __init__(self, layers: Mapping[int, Tensor] | Tensor, *, model: Model | ModelStamp,
                 site: str = "resid_post", method: str = "custom", layer: int | None = None,
                 meta: dict | None = None) -> None:
        self.model = ModelStamp.of(model)
        if site not in RESID_KINDS:
            raise SiteError(f"A vector lives at a residual site ({', '.join(RESID_KINDS)}), got {site!r}.")
        self.site, self.method, self.meta = site, method, dict(meta or {})
        if isinstance(layers, Tensor):
            if layers.dim() == 1:
                if layer is None:
                    raise InputError("A single [d_model] tensor needs layer=L.")
                layers = {layer: layers}
            elif layers.dim() == 2 and layer is None:
                layers = dict(enumerate(layers))
            else:
                raise InputError(f"Expected [d_model] (with layer=) or [n_layers, d_model], got {tuple(layers.shape)}.")
        if not layers:
            raise InputError("A vector needs at least one layer.")
        self._t: dict[int, Tensor] = {}
        for lay, t in layers.items():
            lay = self._norm_layer(int(lay))
            t = torch.as_tensor(t).detach().to("cpu", torch.float32)
            if t.shape != (self.model.d_model,):
                raise InputError(f"Layer {lay} of the vector has shape {tuple(t.shape)}; {self.model.name} needs "
                                 f"({self.model.d_model},).")
            if not torch.isfinite(t).all():
                raise InputError(f"Layer {lay} of the vector has NaN or infinite values.")
            self._t[lay] = t
        self._t = dict(sorted(self._t.items()))

    # ---- access ------------------------------------------------------------------------
    def _norm_layer(self, layer: int) -> int:
        n = self.model.n_layers
        if not -n <= layer < n:
            raise SiteError(f"Layer {layer} is out of range for {self.model.name} ({n} layers: 0..{n - 1}, or -{n}..-1).")
        return layer % n

    @property
    def layers(self) -> list[int]:
        return list(self._t)

    @property
    def d_model(self) -> int:
        return self.model.d_model

    def __len__(self) -> int:
        return len(self._t)

    def _pick(self, layer: int | None) -> int:
        if layer is None:
            if len(self._t) != 1:
                raise InputError(f"This vector has {len(self._t)} layers ({_span(self.layers)}); pass layer=L.")
            return self.layers[0]
        lay = self._norm_layer(layer)
        if lay not in self._t:
            raise InputError(f"The vector has no layer {layer}; it holds {_span(self.layers)}.")
        return lay

    def __getitem__(self, layer: int) -> Tensor:
        """The `[d_model]` float32 tensor of one layer."""
        return self._t[self._pick(layer)]

    def stack(self) -> Tensor:
        """`[len(layers), d_model]` in layer order."""
        return torch.stack(list(self._t.values()))

    def site_name(self, layer: int | None = None) -> str:
        return f"layers.{self._pick(layer)}.{self.site}"

    def _new(self, tensors: dict[int, Tensor], method: str | None = None, meta: dict | None = None) -> Vector:
        return Vector(tensors, model=self.model, site=self.site, method=method or self.method,
                      meta=self.meta if meta is None else meta)

    def at(self, layer: int) -> Vector:
        """A one-layer Vector (same model, site and metadata)."""
        lay = self._pick(layer)
        return self._new({lay: self._t[lay]})

    def select(self, layers: Sequence[int]) -> Vector:
        return self._new({self._pick(lay): self._t[self._pick(lay)] for lay in layers})

    @property
    def resid_norms(self) -> dict[int, float]:
        """Typical residual norm per layer at extraction (for relative coefficients); may be empty."""
        return {int(k): float(v) for k, v in self.meta.get("resid_norms", {}).items()}

    # ---- algebra -----------------------------------------------------------------------
    def _check(self, other: Vector, op: str) -> None:
        if not isinstance(other, Vector):
            raise InputError(f"Cannot {op} a Vector and a {type(other).__name__}.")
        a, b = self.model, other.model
        if a.d_model != b.d_model:
            raise InputError(f"Cannot {op} vectors of different widths: {a.name} d_model {a.d_model} vs "
                             f"{b.name} d_model {b.d_model}.")
        if a.name != b.name:
            raise InputError(f"Cannot {op} vectors of different models: {a.name!r} vs {b.name!r}.")
        if self.site != other.site:
            raise InputError(f"Cannot {op} a {self.site} vector and a {other.site} vector.")
        if self.layers != other.layers:
            raise InputError(f"Cannot {op} vectors with different layers ({_span(self.layers)} vs "
                             f"{_span(other.layers)}); pick common ones with .at(L) or .select([...]).")

    def _combine(self, other: Vector, sign: float, op: str) -> Vector:
        self._check(other, op)
        expr = f"({self.meta.get('expression', self.method)}) {'+' if sign > 0 else '-'} " \
               f"({other.meta.get('expression', other.method)})"
        meta = {"expression": expr}
        if self.resid_norms:
            meta["resid_norms"] = self.meta["resid_norms"]
        return self._new({k: self._t[k] + sign * other._t[k] for k in self._t}, "algebra", meta)

    def __add__(self, other):
        if _as_scalar(other) == 0.0 and not isinstance(other, Vector):
            return self  # so that sum([...]) works
        return self._combine(other, 1.0, "add")

    __radd__ = __add__

    def __sub__(self, other):
        return self._combine(other, -1.0, "subtract")

    def __mul__(self, c):
        s = _as_scalar(c)
        if s is None:
            return NotImplemented
        meta = {**{k: v for k, v in self.meta.items() if k in ("resid_norms",)},
                "expression": f"{s:g} * ({self.meta.get('expression', self.method)})"}
        return self._new({k: t * s for k, t in self._t.items()}, "algebra", meta)

    __rmul__ = __mul__

    def __truediv__(self, c):
        s = _as_scalar(c)
        if s is None or s == 0.0:
            raise InputError(f"Divide a vector by a non-zero number, got {c!r}.")
        return self * (1.0 / s)

    def __neg__(self):
        return self * -1.0

    def norm(self) -> dict[int, float]:
        """L2 norm per layer."""
        return {k: float(t.norm()) for k, t in self._t.items()}

    def normalize(self) -> Vector:
        """Unit norm at every layer (a zero layer is an error)."""
        for k, t in self._t.items():
            if float(t.norm()) == 0.0:
                raise InputError(f"Layer {k} of the vector is zero; it has no direction.")
        return self._new({k: t / t.norm() for k, t in self._t.items()})

    def cosine(self, other: Vector) -> dict[int, float]:
        """Cosine similarity per layer."""
        self._check(other, "compare")
        return {k: float(torch.nn.functional.cosine_similarity(t, other._t[k], dim=0)) for k, t in self._t.items()}

    # ---- use ---------------------------------------------------------------------------
    def edit(self, layer: int | None = None, scale: float = 1.0, positions="all") -> Add:
        """An `Add` edit: `scale * v[layer]` added at `layers.{layer}.{site}`."""
        from lmscope.engine.interventions import Add

        lay = self._pick(layer)
        return Add(site=f"layers.{lay}.{self.site}", vector=self._t[lay], scale=scale, positions=positions)

    def top_tokens(self, model: Model, layer: int | None = None, k: int = 10) -> dict[str, list[dict]]:
        """What the direction means in token space: the final norm + unembedding of `v[layer]`
        (`readout.unembed`), its k highest and k lowest logits."""
        from lmscope.engine.readout import unembed

        self.check_model(model)
        with torch.inference_mode():
            logits = unembed(model, self[layer]).float().cpu()  # [d_vocab]
        dec = model.tokenizer.decode

        def rows(vals, ids):
            return [{"token": dec([int(i)]), "id": int(i), "logit": float(v)} for v, i in zip(vals, ids, strict=True)]

        hi, lo = logits.topk(k), (-logits).topk(k)
        return {"top": rows(hi.values, hi.indices), "bottom": rows(-lo.values, lo.indices)}

    def check_model(self, model: Model) -> None:
        """Raise unless `model` is the model (name and width) this vector was made for."""
        if model.d_model != self.model.d_model:
            raise InputError(f"This vector was made for {self.model.name} (d_model {self.model.d_model}); "
                             f"{model.name} has d_model {model.d_model}.")
        if model.name != self.model.name:
            raise InputError(f"This vector was made for {self.model.name!r}, not {model.name!r}.")

    # ---- artifacts ---------------------------------------------------------------------
    def save(self, path) -> str:
        """Write `path` (safetensors, keys `layers.L`) and its JSON sidecar; returns the path."""
        from lmscope.engine.artifacts import save_artifact

        meta = {"site": self.site, "method": self.method, "layers": self.layers, **self.meta}
        if len(self._t) == 1:
            meta["layer"] = self.layers[0]  # `lmscope generate --add-vector` reads it
        tensors = {f"layers.{k}": t for k, t in self._t.items()}
        return str(save_artifact(path, tensors, kind=ARTIFACT_KIND, model=self.model, meta=meta))

    @classmethod
    def load(cls, path, *, model: Model | None = None) -> Vector:
        """Read a saved vector. Given `model`, one made for another model or width is an ArtifactError."""
        from lmscope.engine.artifacts import load_artifact

        tensors, side = load_artifact(path, kind=ARTIFACT_KIND, model=model)
        layers: dict[int, Tensor] = {}
        for key, t in tensors.items():
            if key.startswith("layers.") and key[7:].lstrip("-").isdigit():
                layers[int(key[7:])] = t
            elif key == "vector" and side.get("layer") is not None:
                layers[int(side["layer"])] = t
        if not layers:
            raise ArtifactError(f"{path} holds no `layers.L` tensors (keys: {', '.join(tensors) or 'none'}).")
        n_layers = side.get("n_layers") or (model.n_layers if model is not None else max(layers) + 1)
        if model is not None and n_layers != model.n_layers:
            raise ArtifactError(f"{path} was made for a {n_layers}-layer {side['model']}; {model.name} has "
                                f"{model.n_layers} layers.")
        for k, t in layers.items():
            if t.shape != (side["d_model"],):
                raise ArtifactError(f"{path}: layers.{k} has shape {tuple(t.shape)}, the sidecar says d_model "
                                    f"{side['d_model']}.")
        stamp = ModelStamp.of(model) if model is not None else ModelStamp(
            side["model"], int(side["d_model"]), int(n_layers), side.get("family", ""),
            side.get("model_source", ""), side.get("revision"))
        skip = {"kind", "model", "model_source", "revision", "family", "d_model", "n_layers", "created",
                "lmscope_version", "site", "method", "layers", "layer"}
        meta = {k: v for k, v in side.items() if k not in skip}
        meta["created"] = side.get("created")
        return cls(layers, model=stamp, site=side.get("site", "resid_post"), method=side.get("method", "custom"),
                   meta=meta)

    def info(self) -> dict:
        """A JSON-able summary: model, site, method, layers, norms, metadata."""
        norms = self.norm()
        rn = self.resid_norms
        return {"model": self.model.name, "d_model": self.d_model, "n_layers": self.model.n_layers,
                "site": self.site, "method": self.method, "layers": self.layers,
                "norm": norms, "relative_norm": {k: norms[k] / rn[k] for k in norms if rn.get(k)},
                "meta": {k: v for k, v in self.meta.items() if k != "resid_norms"}}

    def __repr__(self) -> str:
        return (f"Vector({self.model.name}, {self.site}, method={self.method}, layers={_span(self.layers)}, "
                f"d_model={self.d_model})")


def _span(layers: Sequence[int]) -> str:
    layers = list(layers)
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}..{layers[-1]}"
    return ",".join(map(str, layers))


# ---- extraction ------------------------------------------------------------------------------
Method = Literal["mean-diff", "pca"]
Position = Literal["last", "mean"]


@dataclass(frozen=True, kw_only=True)
class ExtractConfig:
    """How to read a contrast set.

    Attributes:
        method: "mean-diff" (difference of means) or "pca" (first PC of paired differences).
        position: "last" token, or "mean" over the completion tokens (completions) / the
            non-special tokens (prompts).
        site: Residual site kind read at every layer.
        chat: Wrap prompts in the model's chat template (completions follow the template).
        layers: Layers to keep (None: every layer); all are read in one forward pass.
        batch_size: Prompts per forward.
        balance: Weight the items of a completions set so that every distinct (positive,
            negative) completion pair counts equally. On CAA A/B data ("(A" vs "(B" and
            "(B" vs "(A") this cancels the answer-letter identity, which otherwise dominates
            the difference when the letters are not exactly balanced; where every item has
            its own completions it changes nothing. None (default): on for completions sets.
    """

    method: Method = "mean-diff"
    position: Position = "last"
    site: str = "resid_post"
    chat: bool = False
    layers: tuple[int, ...] | None = None
    batch_size: int = 16
    balance: bool | None = None

    def __post_init__(self) -> None:
        if self.method not in ("mean-diff", "pca"):
            raise InputError(f"method must be 'mean-diff' or 'pca', got {self.method!r}.")
        if self.position not in ("last", "mean"):
            raise InputError(f"position must be 'last' or 'mean', got {self.position!r}.")
        if self.site not in RESID_KINDS:
            raise SiteError(f"site must be one of {', '.join(RESID_KINDS)}, got {self.site!r}.")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {self.batch_size}.")


def join_completion(model: Model, prompt: str, completion: str, chat: bool) -> tuple[str, str]:
    """(prefix, full text) of a prompt + completion: the chat template's assistant turn is
    opened and the completion follows it; without chat the completion goes on a new line."""
    prefix = model.format_chat(prompt) if chat else prompt + "\n"
    return prefix, prefix + completion


def encode(model: Model, texts: Sequence[str], *, special: bool) -> Batch:
    """Left-padded batch of already formatted texts (`special`: let the tokenizer add BOS)."""
    from lmscope.engine.model import Batch

    enc = model.tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=special)
    n = enc["input_ids"].shape[1]
    if model.n_ctx and n > model.n_ctx:
        raise InputError(f"A text has {n} tokens but {model.name} takes at most {model.n_ctx}; shorten it.")
    return Batch(enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device), list(texts))


def n_tokens(model: Model, text: str, *, special: bool) -> int:
    return len(model.tokenizer(text, add_special_tokens=special)["input_ids"])


def activations(model: Model, texts: Sequence[str], cfg: ExtractConfig, *, prompts: Sequence[str] | None = None,
                progress: bool = False) -> tuple[Tensor, Tensor]:
    """Site activations of every kept layer at the configured position.

    Args:
        texts: Prompts, or completions when `prompts` is given.
        prompts: Shared prompts of completions (aligned with `texts`).

    Returns:
        (acts, norms): acts `[n, n_kept_layers, d_model]` float32 on CPU, and norms
        `[n, n_kept_layers]` (mean per-token L2 norm over the positions read).
    """
    layers = list(cfg.layers) if cfg.layers is not None else list(range(model.n_layers))
    names = [f"layers.{lay}.{cfg.site}" for lay in layers]
    special = not cfg.chat
    specials = set(getattr(model.tokenizer, "all_special_ids", None) or [])
    acts, norms = [], []
    starts = range(0, len(texts), cfg.batch_size)
    for s in steps(starts, desc="activations", show=progress, leave=False):
        chunk = list(texts[s:s + cfg.batch_size])
        if prompts is not None:
            pairs = [join_completion(model, p, c, cfg.chat)
                     for p, c in zip(prompts[s:s + cfg.batch_size], chunk, strict=True)]
            full = [f for _, f in pairs]
            n_ans = [n_tokens(model, f, special=special) - n_tokens(model, p, special=special) for p, f in pairs]
            if min(n_ans) < 1:
                raise InputError(f"A completion adds no tokens after its prompt ({chunk[n_ans.index(min(n_ans))]!r}).")
        else:
            full = [model.format_chat(t) for t in chunk] if cfg.chat else chunk
            n_ans = None
        batch = encode(model, full, special=special)
        pos = "last" if cfg.position == "last" else "all"
        res = model.run(batch, capture=names, positions=pos, logits=None)
        x = torch.stack([res.cache[n] for n in names], 1).float()  # [b, L, d] or [b, L, p, d]
        if cfg.position == "last":
            acts.append(x.cpu())
            norms.append(x.norm(dim=-1).cpu())
            continue
        mask = batch.attention_mask.bool()  # [b, p]
        if n_ans is not None:
            cols = torch.arange(mask.shape[1], device=mask.device)
            mask = mask & (cols[None] >= mask.shape[1] - torch.tensor(n_ans, device=mask.device)[:, None])
        elif specials:
            mask = mask & ~torch.isin(batch.input_ids, torch.tensor(sorted(specials), device=mask.device))
        w = mask.float()[:, None, :, None]  # [b, 1, p, 1]
        cnt = w.sum(2).clamp(min=1)  # [b, 1, 1]
        acts.append(((x * w).sum(2) / cnt).cpu())
        norms.append(((x.norm(dim=-1, keepdim=True) * w).sum(2) / cnt).squeeze(-1).cpu())
    return torch.cat(acts), torch.cat(norms)


def _pca_direction(diff: Tensor, weights: Tensor) -> Tensor:
    """First right singular vector of the weighted differences `sqrt(w) * diff` [n, d]
    (uncentred, float32 exact SVD), sign so that the weighted mean projection is positive,
    scaled to that mean projection."""
    _, _, vh = torch.linalg.svd((weights.sqrt()[:, None] * diff).float().cpu(), full_matrices=False)
    u = vh[0]
    proj = float(weights @ (diff @ u))
    if proj < 0 or (proj == 0 and float(u[u.abs().argmax()]) < 0):
        u, proj = -u, -proj
    return u * proj


def item_weights(data: ContrastSet, balance: bool) -> Tensor:
    """Weights [n] summing to 1: uniform, or equal per distinct (positive, negative) completion."""
    n = len(data.positive)
    if not balance:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    if data.format != "completions":
        raise InputError("balance applies to completions sets (equal weight per distinct answer pair).")
    groups: dict[tuple[str, str], int] = {}
    for key in zip(data.positive, data.negative, strict=True):
        groups[key] = groups.get(key, 0) + 1
    w = torch.tensor([1.0 / groups[k] for k in zip(data.positive, data.negative, strict=True)], dtype=torch.float64)
    return w / w.sum()


def extract(model: Model, data: ContrastSet, config: ExtractConfig | None = None, *, progress: bool = False,
            **overrides) -> Vector:
    """A contrastive vector at every (kept) layer from one pass over the data.

    Args:
        model: The model.
        data: A ContrastSet (pairs, completions, or unpaired sets; pca needs pairs).
        config: ExtractConfig; keyword overrides (`method="pca"`, `chat=True`...) build one.
        progress: Show a progress bar.
    """
    cfg = config if config is not None else ExtractConfig()
    if overrides:
        cfg = replace(cfg, **overrides)
    if cfg.balance and data.format != "completions":
        raise InputError("balance applies to completions sets (equal weight per distinct answer pair).")
    if cfg.balance is None:
        cfg = replace(cfg, balance=data.format == "completions")
    if cfg.method == "pca" and not data.paired:
        raise InputError("pca needs paired data (pairs or completions); these are unpaired sets. Use mean-diff.")
    if cfg.layers is not None:
        cfg = replace(cfg, layers=tuple(sorted({model.site(f"layers.{lay}.{cfg.site}").layer for lay in cfg.layers})))
    layers = list(cfg.layers) if cfg.layers is not None else list(range(model.n_layers))
    pos, pos_norm = activations(model, data.positive, cfg, prompts=data.prompts, progress=progress)
    neg, neg_norm = activations(model, data.negative, cfg, prompts=data.prompts, progress=progress)
    if cfg.method == "mean-diff" and not data.paired:
        vec = (pos.double().mean(0) - neg.double().mean(0)).float()  # [L, d]
    elif cfg.method == "mean-diff":
        w = item_weights(data, cfg.balance)  # [n]
        vec = torch.einsum("n,nld->ld", w, pos.double() - neg.double()).float()
    else:
        w = item_weights(data, cfg.balance).float()
        vec = torch.stack([_pca_direction(pos[:, i] - neg[:, i], w) for i in range(len(layers))])
    resid = torch.cat([pos_norm, neg_norm]).double().mean(0)  # [L]
    meta = {
        "dataset": data.name, "dataset_source": data.source, "format": data.format,
        "dataset_sha256": data.sha256(), "n_items": len(data), "position": cfg.position, "chat": cfg.chat,
        "balance": cfg.balance,
        "resid_norms": {int(lay): float(r) for lay, r in zip(layers, resid, strict=True)},
    }
    return Vector({lay: vec[i] for i, lay in enumerate(layers)}, model=model, site=cfg.site, method=cfg.method,
                  meta=meta)


def separation(model: Model, vector: Vector, data: ContrastSet, config: ExtractConfig | None = None) -> dict[int, dict]:
    """How well each layer's direction separates (held-out) data: projections of the
    positives vs the negatives onto the unit direction.

    Returns:
        `{layer: {"auc": P(pos > neg) over all pos x neg, "pair_acc": share of pairs with
        pos > neg (paired data; None otherwise), "gap": mean projection gap / typical norm}}`.
    """
    cfg = config or ExtractConfig(position=vector.meta.get("position", "last"), chat=vector.meta.get("chat", False))
    cfg = replace(cfg, layers=tuple(vector.layers), site=vector.site)
    pos, _ = activations(model, data.positive, cfg, prompts=data.prompts)
    neg, _ = activations(model, data.negative, cfg, prompts=data.prompts)
    unit = vector.normalize().stack()  # [L, d]
    pp, pn = torch.einsum("nld,ld->nl", pos, unit), torch.einsum("nld,ld->nl", neg, unit)  # [n, L]
    norms = vector.resid_norms
    out = {}
    for i, lay in enumerate(vector.layers):
        a, b = pp[:, i], pn[:, i]
        auc = float(((a[:, None] > b[None]).float() + 0.5 * (a[:, None] == b[None]).float()).mean())
        pair = float((a > b).float().mean()) if data.paired else None
        gap = float(a.mean() - b.mean())
        out[lay] = {"auc": auc, "pair_acc": pair, "gap": gap / norms[lay] if norms.get(lay) else gap}
    return out


def make_vector(model: Model, data: ContrastSet, config: ExtractConfig | None = None, *, held_out: float = 0.25,
                seed: int = 0, progress: bool = False) -> tuple[Vector, ContrastSet]:
    """Split (seeded), extract on the train part, measure layer separation on the held-out part.

    Returns:
        (vector, test set). The split and the separation are recorded in `vector.meta`.
    """
    train, test = data.split(held_out, seed)
    v = extract(model, train, config, progress=progress)
    sep = separation(model, v, test, config)
    v.meta["split"] = {"held_out": held_out, "seed": seed, "n_train": len(train), "n_test": len(test),
                       "full_sha256": data.sha256()}
    v.meta["evaluation"] = {"separation": {str(k): s for k, s in sep.items()}}
    return v, test


def best_separating_layer(sep: Mapping, lo: float = 0.0, hi: float = 1.0, n_layers: int | None = None) -> int:
    """Layer with the highest held-out AUC (then the largest gap) within [lo, hi) of the depth."""
    items = [(int(k), s) for k, s in sep.items()]
    n = n_layers or (max(k for k, _ in items) + 1)
    keep = [(k, s) for k, s in items if lo * n <= k < math.ceil(hi * n)] or items
    return max(keep, key=lambda kv: (kv[1]["auc"], kv[1]["gap"]))[0]


def parse_expression(tokens: Sequence[str]) -> list[tuple[float, float, str]]:
    """Parse `A + 0.5*B - C` (tokens split on spaces) into (sign, coef, path) terms.

    Each operand is `PATH` or `COEF*PATH`; operators are standalone `+` and `-`.
    """
    terms, sign, expect_operand = [], 1.0, True
    for tok in tokens:
        if tok in ("+", "-"):
            if expect_operand:
                if tok == "-" and not terms:
                    sign = -1.0
                    continue
                raise InputError(f"Two operators in a row near {tok!r}; write A + B - C.")
            sign, expect_operand = (1.0 if tok == "+" else -1.0), True
            continue
        if not expect_operand:
            raise InputError(f"Missing + or - before {tok!r}; write A + B - C with spaces around operators.")
        coef, path = 1.0, tok
        head, star, rest = tok.partition("*")
        if star:
            try:
                coef, path = float(head), rest
            except ValueError:
                raise InputError(f"{tok!r}: a weighted operand is COEF*PATH like 0.5*b.safetensors.") from None
        terms.append((sign, coef, path))
        sign, expect_operand = 1.0, False
    if not terms or expect_operand:
        raise InputError("The expression must end with a vector file: A + B - C.")
    return terms
