"""Streaming per-neuron statistics and top-k contexts, in O(neurons) memory.

`NeuronStats` keeps, for each of n neurons, the count, mean and M2 (Chan et al.'s parallel
update, float64), the number of positive activations, min, max and a fixed histogram for
approximate quantiles. The histogram has `n_bins` equal bins on u = asinh(x / scale) over
|x| <= limit: about linear (absolute resolution `scale * du`) near zero and logarithmic
(relative resolution ~du, 5.7% with the defaults) for large values, so one grid fits
activations whose range is unknown in advance. A quantile is read by linear interpolation in
u inside the bin where the cumulative count crosses it, then clamped to the exact [min, max];
values beyond `limit` land in the edge bins (min and max stay exact).

`TopContexts` keeps, for each neuron, the k windows with the highest activation (at most one
entry per window, so the examples are k different texts), with the token ids and the
neuron's activations on a context of `before` + 1 + `after` tokens around the maximum.

Both work on any device; `state()` returns CPU float32 tensors for `lmscope.artifacts`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _split64(name: str, x: Tensor) -> dict[str, Tensor]:
    """A float64 tensor as two float32 parts (hi + lo), so that a saved statistic reloads to
    ~1e-14 relative precision although artifacts hold float32."""
    hi = x.float()
    return {name: hi.cpu(), f"{name}_lo": (x - hi.double()).float().cpu()}


class NeuronStats:
    """Streaming statistics of activations `[tokens, n]` of n neurons.

    Args:
        n: Number of neurons.
        n_bins: Histogram bins (memory: n x n_bins int32).
        scale: Width of the linear region of the asinh grid.
        limit: Largest |x| the grid resolves.
        device: Where the accumulators live (the model's device).
    """

    def __init__(self, n: int, *, n_bins: int = 512, scale: float = 1e-2, limit: float = 1e4, device="cpu") -> None:
        self.n, self.n_bins, self.scale, self.limit = n, n_bins, scale, limit
        self.u_lim = math.asinh(limit / scale)
        self.count = 0
        self.mean = torch.zeros(n, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(n, dtype=torch.float64, device=device)
        self.n_pos = torch.zeros(n, dtype=torch.int64, device=device)
        self.max = torch.full((n,), -math.inf, device=device)
        self.min = torch.full((n,), math.inf, device=device)
        self.hist = torch.zeros(n, n_bins, dtype=torch.int32, device=device)

    def update(self, x: Tensor) -> None:
        """Add activations x [m, n] (m tokens)."""
        m = x.shape[0]
        if m == 0:
            return
        xd = x.double()
        mean_b = xd.mean(0)
        m2_b = (xd - mean_b).pow(2).sum(0)
        n_a, tot = self.count, self.count + m
        delta = mean_b - self.mean
        self.mean += delta * (m / tot)
        self.m2 += m2_b + delta.pow(2) * (n_a * m / tot)
        self.count = tot
        xf = x.float()
        self.n_pos += (xf > 0).sum(0)
        self.max = torch.maximum(self.max, xf.max(0).values)
        self.min = torch.minimum(self.min, xf.min(0).values)
        flat = self._bin(xf) + torch.arange(self.n, device=x.device) * self.n_bins  # [m, n]
        self.hist += torch.bincount(flat.flatten(), minlength=self.n * self.n_bins).view(self.n, self.n_bins).int()

    def _bin(self, x: Tensor) -> Tensor:
        u = torch.asinh(x / self.scale)
        return ((u + self.u_lim) * (self.n_bins / (2 * self.u_lim))).floor().clamp(0, self.n_bins - 1).long()

    @property
    def std(self) -> Tensor:
        """Sample standard deviation (n - 1 in the denominator, like `torch.std`) [n]."""
        return (self.m2 / max(self.count - 1, 1)).sqrt().float()

    @property
    def share_positive(self) -> Tensor:
        """Fraction of tokens where the activation is > 0 [n]."""
        return (self.n_pos.double() / max(self.count, 1)).float()

    def quantiles(self, qs: list[float] | Tensor) -> Tensor:
        """Approximate quantiles [n, len(qs)] from the histogram (see the module docstring)."""
        q = torch.as_tensor(qs, dtype=torch.float64, device=self.hist.device).flatten()
        if self.count == 0:
            return torch.full((self.n, len(q)), math.nan)
        cum = self.hist.double().cumsum(1)  # [n, bins]
        target = (q * self.count).expand(self.n, -1).contiguous()  # [n, nq]
        b = torch.searchsorted(cum, target).clamp(max=self.n_bins - 1)  # first bin reaching the target
        before = torch.where(b > 0, cum.gather(1, (b - 1).clamp(min=0)), torch.zeros_like(target))
        in_bin = self.hist.double().gather(1, b).clamp(min=1)
        frac = ((target - before) / in_bin).clamp(0, 1)
        du = 2 * self.u_lim / self.n_bins
        x = self.scale * torch.sinh(-self.u_lim + (b + frac) * du)
        lo, hi = self.min.double()[:, None], self.max.double()[:, None]
        return torch.minimum(torch.maximum(x, lo), hi).float()

    def histogram(self, j: int, n: int = 60) -> dict:
        """Neuron j's histogram merged into at most n bars over its occupied bins (equal
        widths in asinh space): {"edges": [n + 1 activation values], "counts": [n]}."""
        h = self.hist[j].cpu().long()
        occ = h.nonzero().flatten()
        if len(occ) == 0:
            return {"edges": [], "counts": []}
        lo, hi = int(occ[0]), int(occ[-1]) + 1
        step = max(1, math.ceil((hi - lo) / n))
        du = 2 * self.u_lim / self.n_bins
        starts = list(range(lo, hi, step))
        counts = [int(h[s : min(s + step, hi)].sum()) for s in starts]
        edges = [self.scale * math.sinh(-self.u_lim + b * du) for b in [*starts, min(starts[-1] + step, hi)]]
        return {"edges": edges, "counts": counts}

    def state(self) -> dict[str, Tensor]:
        """CPU float32 tensors (counts are exact below 2**24 per histogram bin)."""
        empty = self.count == 0
        return {
            **_split64("mean", self.mean), **_split64("m2", self.m2), "n_pos": self.n_pos.float().cpu(),
            "max": (torch.zeros_like(self.max) if empty else self.max).cpu(),
            "min": (torch.zeros_like(self.min) if empty else self.min).cpu(),
            "hist": self.hist.float().cpu(),
        }

    def meta(self) -> dict:
        return {"count": self.count, "n_bins": self.n_bins, "scale": self.scale, "limit": self.limit}

    @classmethod
    def from_state(cls, t: dict[str, Tensor], meta: dict) -> NeuronStats:
        n = t["mean"].shape[0]
        s = cls(n, n_bins=meta["n_bins"], scale=meta["scale"], limit=meta["limit"])
        s.count = int(meta["count"])
        s.mean = t["mean"].double() + t["mean_lo"].double()
        s.m2 = t["m2"].double() + t["m2_lo"].double()
        s.n_pos = t["n_pos"].long()
        s.max, s.min = t["max"].float(), t["min"].float()
        s.hist = t["hist"].int()
        return s


class TopContexts:
    """The k highest-activating windows per neuron, with a token context around each maximum.

    Args:
        n: Number of neurons.
        k: Windows kept per neuron.
        before: Context tokens kept before the maximum.
        after: Context tokens kept after it.
        device: Where the buffers live.
    """

    def __init__(self, n: int, *, k: int = 20, before: int = 12, after: int = 4, device="cpu") -> None:
        self.n, self.k, self.before, self.after = n, k, before, after
        c = before + 1 + after
        self.vals = torch.full((k, n), -math.inf, device=device)  # [k, n] descending
        self.window = torch.full((k, n), -1, dtype=torch.long, device=device)  # window index
        self.pos = torch.full((k, n), -1, dtype=torch.long, device=device)  # index among the window's text tokens
        self.ids = torch.full((k, n, c), -1, dtype=torch.int32, device=device)  # -1: outside the text
        self.acts = torch.zeros((k, n, c), device=device)

    def update(self, x: Tensor, valid: Tensor, ids: Tensor, window: Tensor) -> None:
        """Merge a batch: x [b, t, n] activations, valid [b, t] text tokens, ids [b, t] token
        ids, window [b] global window indices."""
        b, t, n = x.shape
        dev = x.device
        xf = x.float()
        wmax, wpos = xf.masked_fill(~valid[..., None], -math.inf).max(1)  # [b, n]: one maximum per window
        kk = min(self.k, b)
        cv, crow = wmax.topk(kk, dim=0)  # [kk, n]
        cpos = wpos.gather(0, crow)  # [kk, n] padded column of the maximum
        cols = cpos[..., None] + torch.arange(-self.before, self.after + 1, device=dev)  # [kk, n, c]
        inside = (cols >= 0) & (cols < t)
        cols = cols.clamp(0, t - 1)
        rows = crow[..., None].expand_as(cols)
        ok = inside & valid[rows, cols]
        cid = torch.where(ok, ids.to(dev)[rows, cols], -1).int()
        neuron = torch.arange(n, device=dev)[None, :, None].expand_as(cols)
        cact = torch.where(ok, xf[rows, cols, neuron], 0.0)
        first = valid.long().argmax(1)  # [b] column of each window's first text token
        self._merge(cv, window.to(dev)[crow], cpos - first[crow], cid, cact)

    def _merge(self, v: Tensor, win: Tensor, pos: Tensor, ids: Tensor, acts: Tensor) -> None:
        allv = torch.cat([self.vals, v])
        top, sel = allv.topk(self.k, dim=0)  # [k, n]
        self.vals = top
        self.window = torch.cat([self.window, win]).gather(0, sel)
        self.pos = torch.cat([self.pos, pos]).gather(0, sel)
        c = self.ids.shape[2]
        sel3 = sel[..., None].expand(-1, -1, c)
        self.ids = torch.cat([self.ids, ids]).gather(0, sel3)
        self.acts = torch.cat([self.acts, acts]).gather(0, sel3)

    def state(self) -> dict[str, Tensor]:
        """CPU float32 tensors; unfilled slots have `filled` 0 (ids must stay < 2**24)."""
        filled = torch.isfinite(self.vals)
        return {
            "top_vals": torch.where(filled, self.vals, 0.0).cpu(), "top_filled": filled.float().cpu(),
            "top_window": self.window.float().cpu(), "top_pos": self.pos.float().cpu(),
            "top_ids": self.ids.float().cpu(), "top_acts": self.acts.cpu(),
        }

    def meta(self) -> dict:
        return {"k": self.k, "before": self.before, "after": self.after}

    @classmethod
    def from_state(cls, t: dict[str, Tensor], meta: dict) -> TopContexts:
        n = t["top_vals"].shape[1]
        s = cls(n, k=meta["k"], before=meta["before"], after=meta["after"])
        filled = t["top_filled"] > 0
        s.vals = torch.where(filled, t["top_vals"], -math.inf)
        s.window, s.pos = t["top_window"].long(), t["top_pos"].long()
        s.ids, s.acts = t["top_ids"].int(), t["top_acts"].float()
        return s
