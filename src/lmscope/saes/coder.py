"""The dictionary: one sparse coder (SAE, transcoder or skip-transcoder) and its four activations.

    pre = (s_in * x - b_pre) @ W_enc + b_enc         b_pre = b_dec for an SAE, 0 for transcoders
                                                     (spec.extra["subtract_b_dec"] overrides)
    f   = act(pre)                                   topk | batchtopk | jumprelu | relu   [.., d_sae]
    y   = (f @ W_dec + b_dec [+ s_in * x @ W_skip]) / s_out

`W_enc` is [d_in, d_sae], `W_dec` [d_sae, d_out] (a row per latent, unit norm while training),
as SAELens lays them out. `s_in` / `s_out` are the scalars that made the training inputs have
E||x|| = sqrt(d) (Templeton et al.); an SAE loaded from elsewhere has 1.0. BatchTopK and
JumpReLU coders read out with a per-latent `threshold` (BatchTopK learns one global value).

TopK training never builds the dense [batch, d_sae] code: `topk_code` keeps (values, indices)
and its backward touches only the k chosen latents per row (a sparse matmul for the encoder
gradient, `embedding_bag` for the decoder), which is what makes CPU training affordable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmscope.engine.errors import InputError

Arch = Literal["topk", "batchtopk", "jumprelu", "relu"]
Kind = Literal["sae", "transcoder", "skip_transcoder"]
ARCHS: tuple[str, ...] = ("topk", "batchtopk", "jumprelu", "relu")
KINDS: tuple[str, ...] = ("sae", "transcoder", "skip_transcoder")


@dataclass(frozen=True, kw_only=True)
class CoderSpec:
    """What a sparse coder is; saved beside its weights.

    Attributes:
        arch: Activation: "topk" (k per token), "batchtopk" (k per token on average over a
            batch, a threshold at inference), "jumprelu" (per-latent threshold), "relu" (+ L1).
        d_in: Width of what the encoder reads.
        d_sae: Number of latents.
        d_out: Width of what the decoder writes (d_in for an SAE).
        k: Latents per token for topk / batchtopk (None otherwise).
        kind: "sae" (reconstruct the input), "transcoder" (predict another site from the input)
            or "skip_transcoder" (a transcoder plus a linear skip path).
        site: Where the input is read, e.g. "layers.6.resid_post" or "layers.6.mlp_in".
        site_out: Where the output belongs (a transcoder's "layers.6.mlp_out"; the site itself
            for an SAE).
        model: Name of the model it was trained on ("" when unknown).
        source: Where it came from ("lmscope", "saelens", "sparsify", "gemmascope2").
    """

    arch: str
    d_in: int
    d_sae: int
    d_out: int | None = None
    k: int | None = None
    kind: str = "sae"
    site: str = ""
    site_out: str = ""
    model: str = ""
    source: str = "lmscope"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise InputError(f"Unknown SAE architecture {self.arch!r}; expected one of {', '.join(ARCHS)}.")
        if self.kind not in KINDS:
            raise InputError(f"Unknown coder kind {self.kind!r}; expected one of {', '.join(KINDS)}.")
        if self.d_out is None:
            object.__setattr__(self, "d_out", self.d_in)
        if not self.site_out and self.kind == "sae":
            object.__setattr__(self, "site_out", self.site)
        for name in ("d_in", "d_sae", "d_out"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}.")
        if self.arch in ("topk", "batchtopk") and (not isinstance(self.k, int) or not 1 <= self.k <= self.d_sae):
            raise InputError(f"A {self.arch} coder needs 1 <= k <= d_sae ({self.d_sae}), got k={self.k!r}.")
        if self.kind == "sae" and self.d_out != self.d_in:
            raise InputError(f"An SAE reconstructs its input: d_out ({self.d_out}) must equal d_in ({self.d_in}).")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CoderSpec:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


class SparseCoder(nn.Module):
    """An SAE or transcoder. Parameters are float32; `encode`/`decode` take raw activations."""

    def __init__(self, spec: CoderSpec) -> None:
        super().__init__()
        self.cfg = spec
        d_in, d_sae, d_out = spec.d_in, spec.d_sae, spec.d_out
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_out))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        self.W_skip = nn.Parameter(torch.zeros(d_in, d_out)) if spec.kind == "skip_transcoder" else None
        # per-latent read-out threshold (jumprelu, batchtopk); log-space while training jumprelu
        self.log_threshold = nn.Parameter(torch.zeros(d_sae)) if spec.arch == "jumprelu" else None
        self.register_buffer("threshold_buf", torch.zeros(d_sae) if spec.arch == "batchtopk" else torch.zeros(0))
        self.register_buffer("scale_in", torch.ones(()))
        self.register_buffer("scale_out", torch.ones(()))

    # ---- shape -------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def d_out(self) -> int:
        return self.cfg.d_out

    @property
    def threshold(self) -> Tensor | None:
        """Per-latent read-out threshold (jumprelu, batchtopk) or None."""
        if self.log_threshold is not None:
            return self.log_threshold.exp()
        if self.cfg.arch == "batchtopk":
            return self.threshold_buf
        return None

    def __repr__(self) -> str:
        s = self.cfg
        k = f", k={s.k}" if s.k else ""
        return f"SparseCoder({s.kind} {s.arch}{k}, {s.d_in}->{s.d_sae}->{s.d_out}, site={s.site or '?'})"

    # ---- the map -----------------------------------------------------------------------
    def _b_pre(self) -> Tensor | float:
        # spec.extra["subtract_b_dec"] overrides the default: SAEs trained without the
        # subtraction (Gemma Scope, SAELens apply_b_dec_to_input=False) or sparsify's skip SAEs
        if self.cfg.extra.get("subtract_b_dec", self.cfg.kind == "sae"):
            return self.b_dec
        return 0.0

    def pre_acts(self, x: Tensor) -> Tensor:
        """[.., d_in] raw activations -> [.., d_sae] encoder pre-activations."""
        xs = x.to(self.W_enc.dtype) * self.scale_in - self._b_pre()
        return xs @ self.W_enc + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        """[.., d_in] -> [.., d_sae] latent activations (dense, mostly zeros)."""
        pre = self.pre_acts(x)
        arch = self.cfg.arch
        if arch == "topk":
            vals, idx = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        if arch == "relu":
            return pre.relu()
        thr = self.threshold
        return pre * (pre > thr)  # jumprelu; batchtopk reads out with its learned threshold

    def decode(self, f: Tensor, x: Tensor | None = None) -> Tensor:
        """[.., d_sae] latents (+ the input, for a skip-transcoder) -> [.., d_out] raw output."""
        y = f @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise InputError("A skip-transcoder's decode needs the input x for its skip path.")
            y = y + (x.to(self.W_skip.dtype) * self.scale_in) @ self.W_skip
        return y / self.scale_out

    def forward(self, x: Tensor) -> Tensor:
        """[.., d_in] -> [.., d_out] reconstruction (SAE) or prediction (transcoder)."""
        return self.decode(self.encode(x), x)

    def feature_direction(self, i: int) -> Tensor:
        """Latent i's decoder row in raw output units (what one unit of f_i adds): [d_out]."""
        return (self.W_dec[i] / self.scale_out).detach()

    # ---- training helpers --------------------------------------------------------------
    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Give every decoder row unit norm (in normalised units)."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop the part of W_dec's gradient along each (unit) row, so the step keeps the norm."""
        g = self.W_dec.grad
        if g is not None:
            g.sub_((g * self.W_dec).sum(-1, keepdim=True) * self.W_dec)

    def with_spec(self, **changes) -> SparseCoder:
        """A copy with a changed spec (same weights)."""
        new = SparseCoder(replace(self.cfg, **changes))
        new.load_state_dict(self.state_dict())
        return new

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor by name, float32 on the CPU (what is saved)."""
        out = {k: v.detach().float().cpu() for k, v in self.state_dict().items() if v.numel() or k == "threshold_buf"}
        return out


def init_coder(spec: CoderSpec, *, seed: int = 0) -> SparseCoder:
    """Random unit-norm decoder rows; an SAE's encoder is their transpose (Gao et al.'s tied init)."""
    g = torch.Generator().manual_seed(seed)
    coder = SparseCoder(spec)
    with torch.no_grad():
        w = torch.randn(spec.d_sae, spec.d_out, generator=g)
        w /= w.norm(dim=-1, keepdim=True)
        coder.W_dec.copy_(w)
        if spec.kind == "sae":
            coder.W_enc.copy_(w.t())
        else:  # a transcoder's input and output differ: random small encoder columns, outputs start near b_dec
            e = torch.randn(spec.d_in, spec.d_sae, generator=g)
            coder.W_enc.copy_(0.1 * e / e.norm(dim=0, keepdim=True))
        if coder.log_threshold is not None:
            coder.log_threshold.fill_(float(torch.tensor(spec.extra.get("init_threshold", 0.1)).log()))
    return coder


class _TopKCode(torch.autograd.Function):
    """TopK of the pre-activations with a sparse backward.

    forward(xs [B, d_in], W_enc [d_in, S], b_enc [S], k, aux_mask [S] or None, k_aux) ->
        values [B, k], indices [B, k], aux values [B, k_aux], aux indices [B, k_aux]
    The aux pair is the top k_aux among latents in `aux_mask` (the dead ones, for AuxK).
    Backward adds, for each chosen (row, latent), grad * x_row into that latent's encoder column.
    """

    @staticmethod
    def forward(ctx, xs, w_enc, b_enc, k, aux_mask, k_aux):
        pre = torch.addmm(b_enc, xs, w_enc)
        vals, idx = pre.topk(k, dim=-1)
        if aux_mask is not None and k_aux > 0:
            masked = pre.masked_fill(~aux_mask, float("-inf"))
            a_vals, a_idx = masked.topk(k_aux, dim=-1)
            a_vals = torch.where(torch.isfinite(a_vals), a_vals, torch.zeros_like(a_vals))
        else:
            a_vals = pre.new_zeros(pre.shape[0], 0)
            a_idx = idx.new_zeros(pre.shape[0], 0)
        ctx.save_for_backward(xs, w_enc, idx, a_idx)
        ctx.mark_non_differentiable(idx, a_idx)
        return vals, idx, a_vals, a_idx

    @staticmethod
    def backward(ctx, g_vals, _g_idx, g_aux, _g_aux_idx):
        xs, w_enc, idx, a_idx = ctx.saved_tensors
        if g_aux is not None and a_idx.shape[1]:
            idx, g = torch.cat([idx, a_idx], 1), torch.cat([g_vals, g_aux], 1)
        else:
            g = g_vals
        b, kk = idx.shape
        n_lat = w_enc.shape[1]
        flat_i, flat_g = idx.reshape(-1), g.reshape(-1).to(xs.dtype)
        rows = torch.arange(b, device=xs.device).repeat_interleave(kk)
        grad_w = grad_b = grad_x = None
        if ctx.needs_input_grad[1]:
            sp = torch.sparse_coo_tensor(torch.stack([flat_i, rows]), flat_g, (n_lat, b), check_invariants=False)
            grad_w = torch.sparse.mm(sp, xs).t()  # [d_in, S]
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(n_lat, dtype=xs.dtype, device=xs.device).index_add_(0, flat_i, flat_g)
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(idx, w_enc.t().contiguous(), per_sample_weights=g.to(xs.dtype), mode="sum")
        return grad_x, grad_w, grad_b, None, None, None


def topk_code(coder: SparseCoder, x: Tensor, *, aux_mask: Tensor | None = None, k_aux: int = 0
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(values [B, k] after ReLU, indices, aux values, aux indices) of a TopK coder on raw x [B, d_in]."""
    xs = x.to(coder.W_enc.dtype) * coder.scale_in - coder._b_pre()
    vals, idx, a_vals, a_idx = _TopKCode.apply(xs, coder.W_enc, coder.b_enc, coder.cfg.k, aux_mask, k_aux)
    return vals.relu(), idx, a_vals.relu(), a_idx


def sparse_decode(w_dec: Tensor, vals: Tensor, idx: Tensor) -> Tensor:
    """sum_j vals[:, j] * w_dec[idx[:, j]] -> [B, d_out], without a dense code."""
    return F.embedding_bag(idx, w_dec, per_sample_weights=vals.to(w_dec.dtype), mode="sum")
