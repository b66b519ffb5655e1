"""Relation figures: each writes the file it returns, from result objects built by hand (no model),
and survives NaN scores (no causality edit possible), one-cell sweeps, and tokens or prompts that
look like mathtext or markup."""

from __future__ import annotations

import math

import pytest

from lmscope.plots.relations_plots import attribute_lens_plot, sweep_plot
from lmscope.relations.attribute_lens import AttributeLens
from lmscope.relations.study import RelationReport

PNG = b"\x89PNG\r\n\x1a\n"
NASTY = ["$x$", "$\\frac{$", "[/]", "<b>", " ", "\n", "", "ꙮ" * 20]


def _report(layers=(0, 2, 4, 6), betas=(0.5, 1.0, 2.0), ranks=(8, 16, 64), *, nan: bool = False, **kw):
    grid = [[(i + j) / (len(layers) + len(betas)) for j in range(len(betas))] for i in range(len(layers))]
    by_layer = [math.nan if nan else 0.1 * i for i in range(len(layers))]
    by_rank = [math.nan if nan else 0.2 * i for i in range(len(ranks))]
    fields = {"relation": "country_capital_city", "type": "factual", "model": "tiny",
              "template": "The capital city of {} is", "n_facts": 40, "n_known": 30, "train": [("France", "Paris")],
              "n_dev": 12, "n_test": 13, "n_objects": 9, "layer": layers[-1], "beta": betas[-1], "rank": ranks[-1],
              "faithfulness": 0.7, "causality": math.nan if nan else 0.5,
              "causality_control": math.nan if nan else 0.0, "faithfulness_beta1": 0.4,
              "baselines": {"logit_lens": 0.1, "translation": 0.2, "regression": 0.3}, "layers": list(layers),
              "betas": list(betas), "ranks": list(ranks), "faithfulness_grid": grid, "causality_by_layer": by_layer,
              "causality_by_rank": by_rank, "sweep_rank": ranks[0], "seconds_jacobians": 1.0, "seconds_total": 2.0,
              "seconds": {"facts": 0.5, "jacobians": 1.0}}
    return RelationReport(**{**fields, **kw})


def _lens(n_layers: int = 4, tokens=("<bos>", "Paris", " is", " in"), target: str = "France"):
    n = len(tokens)
    top = [[NASTY[(i + j) % len(NASTY)] for j in range(n)] for i in range(n_layers)]
    prob = [[(i + 1) / (n_layers + 1) for _ in range(n)] for i in range(n_layers)]
    return AttributeLens("Paris $costs$ \\frac{ [bold]", list(tokens), list(range(n_layers)), top, prob, target,
                         [[p / 2 for p in row] for row in prob] if target else [], "country_capital_city", 2)


@pytest.mark.parametrize("report", [
    _report(),
    _report(nan=True),  # no edit pairs: causality is NaN everywhere
    _report(layers=(3,), betas=(1.0,), ranks=(64,)),  # one cell
    _report(layers=tuple(range(30)), ranks=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), relation="$x$ [/]"),
    _report(layer=99, beta=7.0),  # a recommendation outside the grid is not boxed, not an error
])
def test_sweep_plot_writes_the_png_it_returns(report, tmp_path):
    out = sweep_plot(report, tmp_path / "sub" / "sweep.png")
    assert out == tmp_path / "sub" / "sweep.png"
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 5000


def test_sweep_plot_takes_the_format_from_the_suffix(tmp_path):
    assert sweep_plot(_report(), tmp_path / "s.svg").read_text().lstrip().startswith("<?xml")
    assert sweep_plot(_report(), tmp_path / "s.pdf").read_bytes()[:4] == b"%PDF"


@pytest.mark.parametrize("lens", [
    _lens(),
    _lens(target=""),  # colour by the top token's probability
    _lens(n_layers=1, tokens=("x",)),
    _lens(n_layers=30, tokens=tuple(f"t{i}" for i in range(40))),
    _lens(tokens=tuple(NASTY[:4])),
])
def test_attribute_lens_plot_writes_the_png_it_returns(lens, tmp_path):
    out = attribute_lens_plot(lens, tmp_path / "lens.png")
    assert out == tmp_path / "lens.png" and out.read_bytes()[:8] == PNG and out.stat().st_size > 2000


def test_attribute_lens_plot_colours_by_the_target_when_there_is_one(tmp_path, monkeypatch):
    import matplotlib.axes

    shown = []
    real = matplotlib.axes.Axes.imshow
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", lambda self, x, **kw: shown.append(x) or real(self, x, **kw))
    lens = _lens()
    attribute_lens_plot(lens, tmp_path / "a.png")
    attribute_lens_plot(_lens(target=""), tmp_path / "b.png")
    assert shown[0].tolist() == lens.target_prob and shown[1].tolist() == lens.top_prob
