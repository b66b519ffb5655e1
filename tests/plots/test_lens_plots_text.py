"""Lens figures draw a prompt or token such as "$\\frac{$" as text (mathtext off) instead of failing."""

from __future__ import annotations

from lmscope.lens import logit_lens
from lmscope.plots.lens_plots import plot_lens_heatmap, plot_target_probs


def test_lens_plots_take_dollar_signs(tiny_llama, tmp_path):
    r = logit_lens(tiny_llama, "a $\\frac{$ b $x$", targets=[5])
    assert plot_lens_heatmap(r, tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert plot_target_probs(r, tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
