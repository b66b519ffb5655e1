"""`unembed_line`: unembed(c u + v) for many c from two LM-head products equals `unembed` per c."""

from __future__ import annotations

import torch


def test_unembed_line_equals_unembed(tiny):
    from lmscope.engine.readout import unembed, unembed_line

    g = torch.Generator().manual_seed(2)
    u = torch.randn(5, tiny.d_model, generator=g)
    v = torch.randn(1, tiny.d_model, generator=g) * 3
    coeffs = [0.5, 1.0, 2.5]
    got = unembed_line(tiny, u, v, coeffs)
    want = torch.stack([unembed(tiny, c * u + v).float() for c in coeffs])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
