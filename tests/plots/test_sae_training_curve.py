"""`plot_training_curve`: one coder's history rows or several coders' by label, written atomically."""

from __future__ import annotations

import math

import pytest

from lmscope.engine.errors import InputError
from lmscope.plots.sae_plots import plot_training_curve

ROWS = [{"step": s, "tokens": 64 * (s + 1), "loss": 1 / (s + 1), "fvu": 1 / (s + 1), "l0": 4.0, "dead": s / 20}
        for s in range(0, 20, 5)]


def test_one_coder_and_several(tmp_path):
    assert plot_training_curve(ROWS, tmp_path / "one.png") == tmp_path / "one.png"
    several = {"layers.1.resid_post": ROWS, "layers.2.mlp_in -> layers.2.mlp_out": [{**r, "fvu": math.nan} for r in ROWS]}
    out = plot_training_curve(several, tmp_path / "two.svg")  # a NaN row is left out, not plotted as a gap
    assert out.read_text().startswith("<?xml") and (tmp_path / "one.png").stat().st_size > 1000


def test_no_rows_is_an_error(tmp_path):
    with pytest.raises(InputError, match="No training history"):
        plot_training_curve([], tmp_path / "x.png")
    with pytest.raises(InputError, match="No training history"):
        plot_training_curve({"a": []}, tmp_path / "x.png")
