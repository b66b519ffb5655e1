"""Which token positions a capture or an edit touches, resolved per forward chunk.

Batches are left-padded, so one padded column means different token indices in different
rows. User positions are *token indices within each prompt* (0 = first real token, -1 = last
prompt token); `resolve` turns them into column indices of the chunk being computed, which
during cached generation is one new token at a time.

Accepted specs:
    "all"         every real (non-padding) position, prompt and generated tokens
    "last"        the last prompt token only
    "generated"   only tokens produced by `generate`
    int / [ints]  prompt token indices (negative: from the end of the prompt)
    slice(a, b)   prompt token indices a..b-1; slice(a, None) runs on through generated tokens
    "a:b", "a:"   the same as a string (for the CLI)
    Tensor [batch] or [batch, k]   per-row prompt token indices (e.g. each prompt's subject)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lmscope.engine.errors import EngineError, InputError, SiteError

PositionSpec = str | int | list | slice | Tensor


@dataclass
class ChunkState:
    """What the engine knows about the forward chunk in flight.

    Attributes:
        offset: Absolute column of the chunk's first position (tokens already in the KV cache).
        length: Number of positions in this chunk.
        prompt_len: Padded prompt length P (columns >= P are generated tokens); None when the
            context never saw the prompt of this cached forward.
        pad: Leading padding per row, LongTensor [batch].
        valid: Non-padding mask of this chunk, BoolTensor [batch, length].
    """

    offset: int
    length: int
    prompt_len: int | None
    pad: Tensor
    valid: Tensor


def normalize(spec: PositionSpec) -> PositionSpec:
    """Validate a position spec early and turn CLI strings into slices."""
    if isinstance(spec, str):
        if spec in ("all", "last", "generated"):
            return spec
        if ":" in spec:
            a, _, b = spec.partition(":")
            try:
                return slice(int(a) if a else None, int(b) if b else None)
            except ValueError:
                pass
        try:
            return int(spec)
        except ValueError:
            raise InputError(
                f"Unknown position {spec!r}: expected 'all', 'last', 'generated', an integer, "
                "'a:b' or 'a:' (from token a on, generated tokens included)."
            ) from None
    if isinstance(spec, bool):
        raise InputError("Positions must be ints, slices or 'all'/'last'/'generated', not a bool.")
    if isinstance(spec, int):
        _check_int(spec)
        return spec
    if isinstance(spec, slice):
        for x in (spec.start, spec.stop):
            if x is not None:
                _check_int(x)
        return spec
    if isinstance(spec, list | tuple):
        if not spec or not all(isinstance(p, int) and not isinstance(p, bool) for p in spec):
            raise InputError(f"A position list must be a non-empty list of ints, got {spec!r}.")
        for p in spec:
            _check_int(p)
        if len(set(spec)) != len(spec):
            raise InputError(f"Position list {spec!r} repeats a position.")
        return list(spec)
    if isinstance(spec, Tensor):
        if spec.dtype not in (torch.int64, torch.int32) or spec.dim() not in (1, 2):
            raise InputError("Per-row positions must be an integer tensor of shape [batch] or [batch, k].")
        return spec.long()
    raise InputError(f"Unsupported position spec {spec!r}.")


_MAX_POSITION = 2**31 - 1


def _check_int(p: int) -> None:
    if not -_MAX_POSITION <= p <= _MAX_POSITION:
        raise SiteError(f"Position {p} is out of range for any prompt; positions are token indices "
                        "(0 = first, -1 = last).")


def is_single(spec: PositionSpec) -> bool:
    """Specs that select exactly one position per row (captured as [batch, ...])."""
    return spec == "last" or isinstance(spec, int) or (isinstance(spec, Tensor) and spec.dim() == 1)


def is_dense(spec: PositionSpec) -> bool:
    """Specs resolved as a mask over every column of the chunk."""
    return spec in ("all", "generated") or isinstance(spec, slice)


def resolve(spec: PositionSpec, st: ChunkState) -> tuple[Tensor, Tensor, Tensor] | None:
    """Columns of the chunk to touch.

    Returns:
        (idx, ok, cols): idx [batch, k] chunk-relative columns, ok [batch, k] which of them
        are really selected in this chunk, cols [batch, k] absolute columns (for sources
        indexed by position). None when nothing in this chunk is selected.
    """
    b = st.valid.shape[0]
    dev = st.valid.device
    if st.prompt_len is None and spec != "all":
        raise EngineError(
            f"Positions {spec!r} are counted from the prompt, but this forward continues a KV cache whose prompt "
            "this lmscope context never saw. Open the context before the prompt's forward (or use positions='all')."
        )
    cols_1d = torch.arange(st.offset, st.offset + st.length, device=dev)
    pad = st.pad.to(dev)
    if is_dense(spec):
        cols = cols_1d.expand(b, -1)
        ok = st.valid.clone()
        if spec == "generated":
            ok &= cols >= st.prompt_len
        elif isinstance(spec, slice):
            if spec.step not in (None, 1):
                raise InputError("Position slices cannot have a step.")
            tok = cols - pad[:, None]  # token index within each row
            if spec.start is not None:
                start = spec.start if spec.start >= 0 else None
                ok &= (tok >= start) if start is not None else (cols >= st.prompt_len + spec.start)
            if spec.stop is not None:
                ok &= (tok < spec.stop) if spec.stop >= 0 else (cols < st.prompt_len + spec.stop)
        if not ok.any():
            return None
        return cols - st.offset, ok, cols
    # sparse: explicit prompt token indices per row
    if spec == "last":
        tok_abs = torch.full((b, 1), st.prompt_len - 1, device=dev)
    else:
        if isinstance(spec, Tensor):
            rows = spec.to(dev).reshape(spec.shape[0], -1)
            if rows.shape[0] != b:
                raise InputError(f"Per-row positions have {rows.shape[0]} rows but the batch has {b}.")
        else:
            rows = torch.tensor([spec] if isinstance(spec, int) else spec, device=dev).expand(b, -1)
        n_real = st.prompt_len - pad  # prompt length of each row
        bad = (rows >= n_real[:, None]) | (rows < -n_real[:, None])
        if bad.any():
            i = int(bad.any(1).nonzero()[0])
            raise SiteError(
                f"Position {rows[i][bad[i]][0].item()} is out of range for prompt {i} "
                f"({int(n_real[i])} tokens: 0..{int(n_real[i]) - 1}, or -{int(n_real[i])}..-1)."
            )
        tok_abs = torch.where(rows >= 0, rows + pad[:, None], st.prompt_len + rows)
    ok = (tok_abs >= st.offset) & (tok_abs < st.offset + st.length)
    if not ok.any():
        return None
    idx = (tok_abs - st.offset).clamp(0, st.length - 1)
    return idx, ok, tok_abs
