"""Edits: pure tensor -> tensor functions bound to a site and positions.

The engine (`lmscope.engine.hooks`) gathers the selected positions (and units) of the activation at a
site into `x` of shape `[batch, k, *feat]`, calls `edit.apply(x, ctx)`, and writes the result
back only where a position is really selected (padding is never edited). `feat` is
`(d_model,)` for residual sites, `(d_mlp,)` or `(n_units,)` for neurons, `(n_heads, d_head)`
for `attn.z`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmscope.engine import positions as P
from lmscope.engine.errors import InputError
from lmscope.engine.sites import Site


@dataclass
class EditContext:
    """Where the gathered entries come from: `cols` [batch, k] absolute columns, `slots`
    [k] index into the user's position list, `ok` [batch, k] which entries are selected."""

    cols: Tensor
    ok: Tensor
    dense: bool


def _as_tensor(value, what: str) -> Tensor:
    t = value if isinstance(value, Tensor) else torch.as_tensor(value, dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise InputError(f"{what} contains NaN or infinite values; pass finite numbers.")
    return t.detach()


@dataclass(kw_only=True)
class Edit:
    """Base class. `site` is a site string or Site; `positions` a position spec."""

    site: str | Site
    positions: P.PositionSpec = "all"

    def __post_init__(self) -> None:
        self.positions = P.normalize(self.positions)

    def bind(self, feat: tuple[int, ...], site: Site, device, dtype) -> None:
        """Check value shapes against the site's feature shape and move them to the model."""

    def apply(self, x: Tensor, ctx: EditContext) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _check_width(t: Tensor, feat: tuple[int, ...], site: Site, what: str) -> None:
        if t.dim() == 0:
            return
        if tuple(t.shape[-len(feat):]) != feat and not (t.dim() == 1 and t.shape[0] == feat[-1]):
            raise InputError(
                f"{what} has shape {tuple(t.shape)} but {site} has features of shape {feat}; "
                f"pass a tensor whose last dimension is {feat[-1]}."
            )


@dataclass(kw_only=True)
class Add(Edit):
    """x + scale * vector (steering). `vector` broadcasts over the feature shape."""

    vector: Tensor
    scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.vector = _as_tensor(self.vector, "The vector")
        if not torch.isfinite(torch.tensor(float(self.scale))):
            raise InputError(f"Scale must be finite, got {self.scale}.")

    def bind(self, feat, site, device, dtype):
        self._check_width(self.vector, feat, site, "The vector")
        self._v = (self.vector.to(device=device, dtype=torch.float32) * self.scale).to(dtype)

    def apply(self, x, ctx):
        return x + self._v


@dataclass(kw_only=True)
class Set(Edit):
    """Replace by a value (scalar, or a tensor broadcast over the feature shape)."""

    value: float | Tensor

    def __post_init__(self) -> None:
        super().__post_init__()
        self.value = _as_tensor(self.value, "The value")

    def bind(self, feat, site, device, dtype):
        self._check_width(self.value, feat, site, "The value")
        self._val = self.value.to(device=device, dtype=dtype)

    def apply(self, x, ctx):
        return self._val.expand_as(x).clone() if self._val.dim() else torch.full_like(x, float(self._val))


def Zero(*, site, positions="all") -> Set:  # noqa: N802 - reads as a constructor
    """Zero ablation."""
    return Set(site=site, positions=positions, value=0.0)


def MeanAblate(*, site, mean: Tensor, positions="all") -> Set:  # noqa: N802
    """Replace by a mean activation (from `lmscope.stats.mean_activation` or a saved statistic)."""
    return Set(site=site, positions=positions, value=mean)


@dataclass(kw_only=True)
class Clamp(Edit):
    """Clamp into [min, max] (either may be None)."""

    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min is None and self.max is None:
            raise InputError("Clamp needs min, max or both.")

    def apply(self, x, ctx):
        return x.clamp(min=self.min, max=self.max)


@dataclass(kw_only=True)
class Scale(Edit):
    """x * factor."""

    factor: float

    def apply(self, x, ctx):
        return x * self.factor


@dataclass(kw_only=True)
class ProjectOut(Edit):
    """Remove the component along `direction` (directional ablation): x - (x.d) d, d unit."""

    direction: Tensor

    def __post_init__(self) -> None:
        super().__post_init__()
        self.direction = _as_tensor(self.direction, "The direction")
        if float(self.direction.norm()) == 0.0:
            raise InputError("Cannot project out a zero direction.")

    def bind(self, feat, site, device, dtype):
        self._check_width(self.direction, feat, site, "The direction")
        d = self.direction.to(device=device, dtype=torch.float32)
        self._d = (d / d.norm()).to(dtype)

    def apply(self, x, ctx):
        return x - (x @ self._d)[..., None] * self._d


@dataclass(kw_only=True)
class Resample(Edit):
    """Resampling ablation: each selected entry is replaced by a random row of `pool`
    ([n, *feat], e.g. activations on other prompts); seeded."""

    pool: Tensor
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.pool = _as_tensor(self.pool, "The resample pool")

    def bind(self, feat, site, device, dtype):
        if tuple(self.pool.shape[1:]) != feat:
            raise InputError(
                f"The resample pool has rows of shape {tuple(self.pool.shape[1:])}, {site} needs {feat}."
            )
        self._pool = self.pool.to(device=device, dtype=dtype)
        self._gen = torch.Generator().manual_seed(self.seed)

    def apply(self, x, ctx):
        pick = torch.randint(len(self._pool), x.shape[:2], generator=self._gen)
        return self._pool[pick.to(self._pool.device)]


@dataclass(kw_only=True)
class Patch(Edit):
    """Activation patching: write values captured on another prompt.

    `source` is `[batch or 1, k, *feat]` aligned with the k positions of a sparse position
    spec (`[-1]`, `[3, 5]`, per-row tensor), or `[batch or 1, P, *feat]` indexed by padded
    column for "all"/slices (same padded layout as the target). Use `patch_from` to align
    a captured cache to target positions.
    """

    source: Tensor

    def __post_init__(self) -> None:
        super().__post_init__()
        self.source = _as_tensor(self.source, "The patch source")
        if self.source.dim() < 2:
            raise InputError("A patch source needs shape [batch, positions, *features].")

    def bind(self, feat, site, device, dtype):
        if tuple(self.source.shape[2:]) != feat:
            raise InputError(f"Patch source features {tuple(self.source.shape[2:])} do not match {site}: {feat}.")
        self._src = self.source.to(device=device, dtype=dtype)

    def apply(self, x, ctx):
        src = self._src
        if src.shape[0] == 1:
            src = src.expand(x.shape[0], *src.shape[1:])
        elif src.shape[0] != x.shape[0]:
            raise InputError(f"Patch source has batch {src.shape[0]}, the run has {x.shape[0]}.")
        if ctx.dense:
            cols = ctx.cols.clamp(max=src.shape[1] - 1)
            out = torch.gather(src, 1, cols.reshape(*cols.shape, *[1] * (src.dim() - 2)).expand(-1, -1, *src.shape[2:]))
            beyond = (ctx.cols >= src.shape[1]).reshape(*cols.shape, *[1] * (src.dim() - 2))
            return torch.where(beyond, x, out)
        if src.shape[1] != x.shape[1]:
            raise InputError(
                f"Patch source has {src.shape[1]} positions but {x.shape[1]} target positions were selected."
            )
        return src


@dataclass(kw_only=True)
class Apply(Edit):
    """Any function `fn(x) -> x` of the gathered activation `[batch, k, *feat]`."""

    fn: Callable[[Tensor], Tensor]
    name: str = field(default="custom")

    def apply(self, x, ctx):
        out = self.fn(x)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            raise InputError(f"Apply({self.name}) must return a tensor of shape {tuple(x.shape)}.")
        return out
