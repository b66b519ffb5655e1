"""Streaming per-neuron statistics and top-k contexts, in O(neurons) memory.

`NeuronStats` keeps, for each of n neurons, the count, mean and M2 (Chan et al.'s parallel
update: float32 moments of each batch merged into float64 totals), the number of positive
activations, min, max and a fixed histogram for approximate quantiles. The histogram is a
signed log grid read straight from the float32 bits (as in HDR histograms): `octave_bins`
bins per power of two for 2**e_min <= |x| < 2**e_max on each side, and one central bin for
|x| < 2**e_min. With the defaults (16, -12, 13: 801 bins) a bin is 3.1-6.3% of its value
wide, the central bin +-2.4e-4; one grid fits activations whose range is unknown in advance,
and binning costs a shift, not a logarithm. A quantile is read by linear interpolation inside
the bin where the cumulative count crosses it, then clamped to the exact [min, max]; values
beyond 2**e_max land in the edge bins (min and max stay exact).

`TopContexts` keeps, for each neuron, the k windows with the highest activation (at most one
entry per window, so the examples are k different texts), with the token ids and the
neuron's activations on a context of `before` + 1 + `after` tokens around the maximum.

Both work on any device; `state()` returns CPU float32 tensors for `lmscope.engine.artifacts`.
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
        octave_bins: Histogram bins per octave (a power of two; 16 -> 3.1-6.3% wide bins).
        e_min: |x| < 2**e_min falls in the central bin around zero.
        e_max: |x| >= 2**e_max falls in the edge bins (min and max stay exact).
        device: Where the accumulators live (the model's device).
    """

    def __init__(self, n: int, *, octave_bins: int = 16, e_min: int = -12, e_max: int = 13, device="cpu") -> None:
        if octave_bins < 1 or octave_bins & (octave_bins - 1) or octave_bins > 2**20:
            raise ValueError(f"octave_bins must be a power of two <= 2**20, got {octave_bins}.")
        if not -126 < e_min < e_max < 128:
            raise ValueError(f"Need -126 < e_min < e_max < 128, got {e_min}, {e_max}.")
        self.n, self.octave_bins, self.e_min, self.e_max = n, octave_bins, e_min, e_max
        self._shift = 23 - int(math.log2(octave_bins))  # float32 bits below the kept mantissa bits
        self._k = (e_max - e_min) * octave_bins  # magnitude bins per sign
        self.n_bins = 2 * self._k + 1
        self.count = 0
        self.mean = torch.zeros(n, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(n, dtype=torch.float64, device=device)
        self.n_pos = torch.zeros(n, dtype=torch.int64, device=device)
        self.max = torch.full((n,), -math.inf, device=device)
        self.min = torch.full((n,), math.inf, device=device)
        self.hist = torch.zeros(n, self.n_bins, dtype=torch.int32, device=device)

    @property
    def edges(self) -> Tensor:
        """[n_bins + 1] increasing bin edges: -2**e_max .. -2**e_min, 2**e_min .. 2**e_max."""
        k = torch.arange(self._k + 1, dtype=torch.int32)
        mag = ((k + ((127 + self.e_min) << (23 - self._shift))) << self._shift).view(torch.float32).double()
        return torch.cat([-mag.flip(0), mag])

    def update(self, x: Tensor) -> None:
        """Add activations x [m, n] (m tokens)."""
        m = x.shape[0]
        if m == 0:
            return
        xf = x.float()
        var_b, mean_b = torch.var_mean(xf, 0, correction=0)  # float32 over one batch; merged in float64
        n_a, tot = self.count, self.count + m
        delta = mean_b.double() - self.mean
        self.mean += delta * (m / tot)
        self.m2 += var_b.double() * m + delta.pow(2) * (n_a * m / tot)
        self.count = tot
        self.n_pos += (xf > 0).sum(0)
        lo, hi = torch.aminmax(xf, dim=0)
        self.max = torch.maximum(self.max, hi)
        self.min = torch.minimum(self.min, lo)
        flat = self._bin(xf) + torch.arange(self.n, device=x.device) * self.n_bins  # [m, n]
        self.hist += torch.bincount(flat.flatten(), minlength=self.n * self.n_bins).view(self.n, self.n_bins).int()

    def _bin(self, x: Tensor) -> Tensor:
        """Bin index from the float32 bits: for positive floats the bit pattern grows with the
        value, so exponent + top mantissa bits is a log grid (no transcendental function)."""
        a = x.abs().clamp(2.0**self.e_min, 2.0**self.e_max * (1 - 2**-23)).contiguous()
        k = (a.view(torch.int32) >> self._shift) - ((127 + self.e_min) << (23 - self._shift))  # 0 .. _k-1
        idx = torch.where(x > 0, self._k + 1 + k, self._k - 1 - k)
        return torch.where(x.abs() < 2.0**self.e_min, self._k, idx).long()

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
        e = self.edges.to(cum.device)
        x = e[b] + frac * (e[b + 1] - e[b])
        lo, hi = self.min.double()[:, None], self.max.double()[:, None]
        return torch.minimum(torch.maximum(x, lo), hi).float()

    def histogram(self, j: int, n: int = 60) -> dict:
        """Neuron j's histogram merged into at most n bars over its occupied bins (log-spaced
        away from zero): {"edges": [bars + 1 activation values], "counts": [bars]}."""
        h = self.hist[j].cpu().long()
        occ = h.nonzero().flatten()
        if len(occ) == 0:
            return {"edges": [], "counts": []}
        lo, hi = int(occ[0]), int(occ[-1]) + 1
        step = max(1, math.ceil((hi - lo) / n))
        starts = list(range(lo, hi, step))
        counts = [int(h[s : min(s + step, hi)].sum()) for s in starts]
        e = self.edges
        edges = [float(e[b]) for b in [*starts, min(starts[-1] + step, hi)]]
        edges[0], edges[-1] = max(edges[0], float(self.min[j])), min(edges[-1], float(self.max[j]))
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
        return {"count": self.count, "octave_bins": self.octave_bins, "e_min": self.e_min, "e_max": self.e_max}

    def exact_state(self) -> dict[str, Tensor]:
        """Every accumulator at its own precision (float64 moments, integer counts), on the CPU:
        a shard of a sharded recording, merged exactly by `merge`."""
        return {"count": torch.tensor([self.count], dtype=torch.int64), "mean": self.mean.cpu(), "m2": self.m2.cpu(),
                "n_pos": self.n_pos.cpu(), "max": self.max.cpu(), "min": self.min.cpu(), "hist": self.hist.cpu()}

    @classmethod
    def from_exact_state(cls, t: dict[str, Tensor], *, octave_bins: int, e_min: int = -12, e_max: int = 13,
                         device="cpu") -> NeuronStats:
        s = cls(t["mean"].shape[0], octave_bins=octave_bins, e_min=e_min, e_max=e_max, device=device)
        s.count = int(t["count"][0])
        s.mean, s.m2 = t["mean"].to(device, torch.float64), t["m2"].to(device, torch.float64)
        s.n_pos, s.hist = t["n_pos"].to(device, torch.int64), t["hist"].to(device, torch.int32)
        s.max, s.min = t["max"].to(device, torch.float32), t["min"].to(device, torch.float32)
        return s

    def merge(self, other: NeuronStats) -> NeuronStats:
        """Add another recording of the same neurons (Chan et al.'s pairwise update of the
        moments; counts, extremes and histograms add exactly). Returns self."""
        if (other.n, other.n_bins, other.e_min) != (self.n, self.n_bins, self.e_min):
            raise ValueError("Cannot merge statistics of different neurons or histogram grids.")
        if other.count == 0:
            return self
        n_a, n_b = self.count, other.count
        tot = n_a + n_b
        delta = other.mean.to(self.mean.device) - self.mean
        self.mean = self.mean + delta * (n_b / tot)
        self.m2 = self.m2 + other.m2.to(self.m2.device) + delta.pow(2) * (n_a * n_b / tot)
        self.count = tot
        self.n_pos = self.n_pos + other.n_pos.to(self.n_pos.device)
        self.max = torch.maximum(self.max, other.max.to(self.max.device))
        self.min = torch.minimum(self.min, other.min.to(self.min.device))
        self.hist = self.hist + other.hist.to(self.hist.device)
        return self

    @classmethod
    def from_state(cls, t: dict[str, Tensor], meta: dict) -> NeuronStats:
        n = t["mean"].shape[0]
        s = cls(n, octave_bins=meta["octave_bins"], e_min=meta["e_min"], e_max=meta["e_max"])
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
        ids, window [b] global window indices. Contexts are gathered only for the neurons whose
        k-th best value the batch beats, so late batches cost little."""
        b, t, _ = x.shape
        dev = x.device
        xf = x.float()
        wmax, wpos = xf.masked_fill(~valid[..., None], -math.inf).max(1)  # [b, n]: one maximum per window
        cv, crow = wmax.topk(min(self.k, b), dim=0)  # [kk, n]
        J = (cv[0] > self.vals[-1]).nonzero().flatten()  # neurons whose top-k changes
        if len(J) == 0:
            return
        cv, crow = cv[:, J], crow[:, J]  # [kk, j]
        cpos = wpos[:, J].gather(0, crow)  # padded column of each maximum
        cols = cpos[..., None] + torch.arange(-self.before, self.after + 1, device=dev)  # [kk, j, c]
        inside = (cols >= 0) & (cols < t)
        cols = cols.clamp(0, t - 1)
        rows = crow[..., None].expand_as(cols)
        ok = inside & valid[rows, cols]
        cid = torch.where(ok, ids.to(dev)[rows, cols], -1).int()
        cact = torch.where(ok, xf[rows, cols, J[None, :, None]], 0.0)
        first = valid.long().argmax(1)  # [b] column of each window's first text token
        self._merge(J, cv, window.to(dev)[crow], cpos - first[crow], cid, cact)

    def _merge(self, J: Tensor, v: Tensor, win: Tensor, pos: Tensor, ids: Tensor, acts: Tensor) -> None:
        top, sel = torch.cat([self.vals[:, J], v]).topk(self.k, dim=0)  # [k, j]
        self.vals[:, J] = top
        self.window[:, J] = torch.cat([self.window[:, J], win]).gather(0, sel)
        self.pos[:, J] = torch.cat([self.pos[:, J], pos]).gather(0, sel)
        sel3 = sel[..., None].expand(-1, -1, ids.shape[2])
        self.ids[:, J] = torch.cat([self.ids[:, J], ids]).gather(0, sel3)
        self.acts[:, J] = torch.cat([self.acts[:, J], acts]).gather(0, sel3)

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

    def exact_state(self) -> dict[str, Tensor]:
        """The buffers as they are, on the CPU (a shard of a sharded recording; see `merge`)."""
        return {"top_vals": self.vals.cpu(), "top_window": self.window.cpu(), "top_pos": self.pos.cpu(),
                "top_ids": self.ids.cpu(), "top_acts": self.acts.cpu()}

    @classmethod
    def from_exact_state(cls, t: dict[str, Tensor], *, before: int, after: int, device="cpu") -> TopContexts:
        k, n = t["top_vals"].shape
        s = cls(n, k=k, before=before, after=after, device=device)
        s.vals, s.window, s.pos = (t[f"top_{x}"].to(device) for x in ("vals", "window", "pos"))
        s.ids, s.acts = t["top_ids"].to(device), t["top_acts"].to(device)
        return s

    def merge(self, other: TopContexts) -> TopContexts:
        """Keep the k best windows of both (window indices are global, so shards of one corpus
        merge into what one pass over it keeps). Returns self."""
        if (other.n, other.k, other.before, other.after) != (self.n, self.k, self.before, self.after):
            raise ValueError("Cannot merge top contexts of different neurons or context sizes.")
        dev = self.vals.device
        self._merge(torch.arange(self.n, device=dev), other.vals.to(dev), other.window.to(dev), other.pos.to(dev),
                    other.ids.to(dev), other.acts.to(dev))
        return self

    @classmethod
    def from_state(cls, t: dict[str, Tensor], meta: dict) -> TopContexts:
        n = t["top_vals"].shape[1]
        s = cls(n, k=meta["k"], before=meta["before"], after=meta["after"])
        filled = t["top_filled"] > 0
        s.vals = torch.where(filled, t["top_vals"], -math.inf)
        s.window, s.pos = t["top_window"].long(), t["top_pos"].long()
        s.ids, s.acts = t["top_ids"].int(), t["top_acts"].float()
        return s
