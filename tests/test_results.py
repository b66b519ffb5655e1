"""Result objects in a notebook: `to_dict()` is JSON-ready, `_repr_html_()` shows the table the
CLI prints (with its numbers), `to_pandas()` converts it or names the extra to install."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import math
import sys

import pytest
import torch
from conftest import make_tiny

from lmscope.engine.errors import InputError, LmscopeError
from lmscope.engine.results import Result, Table, format_value, jsonable

FAMILIES = {
    "lens": ["logit", "tuned", "latent"],
    "inspect": ["decomposition", "patchscopes", "backpatching"],
    "neurons": ["recording", "correlation", "causal", "clamp", "agreement"],
    "vectors": ["steering"],
    "function_vectors": ["core"],
}
EXPECTED = {
    "LensResult", "LayerKL", "LensComparison", "TrainLog", "LatentLanguageResult",
    "Decomposition", "Attribution", "TokenEditResult", "PatchscopeResult", "IdentitySweep", "EntitySweep",
    "BackpatchResult",
    "NeuronRecording", "CorrelationResult", "AblationEffect", "CurveResult", "DoseResponse", "ClampReport",
    "AgreementDemo",
    "SweepResult", "VerifyReport",
    "LayerSweep", "Composition",
}


def _result_classes() -> dict[str, type]:
    out = {}
    for family, modules in FAMILIES.items():
        for m in modules:
            mod = importlib.import_module(f"lmscope.{family}.{m}")
            out.update({n: c for n, c in vars(mod).items()
                        if inspect.isclass(c) and issubclass(c, Result) and c.__module__ == mod.__name__})
    return out


def _check(result: Result, *numbers: str) -> dict:
    """to_dict through json; the HTML holds the title and `numbers`; to_pandas matches table()."""
    d = result.to_dict()
    back = json.loads(json.dumps(d))
    assert isinstance(back, dict) and back
    page = result._repr_html_()
    assert page.startswith('<div class="lmscope-result">') and "<table" in page
    t = result.table()
    assert isinstance(t, Table) and t.rows
    for n in (t.title, *numbers):
        assert _escaped(n) in page, n
    if importlib.util.find_spec("pandas") is not None:  # the optional extra
        df = result.to_pandas()
        assert list(df.columns) == list(t.columns) and len(df) == len(t.rows)
    return d


def _escaped(text: str) -> str:
    import html

    return html.escape(text)


# ---- the contract, for every class ------------------------------------------------------------------
def test_every_family_result_class_has_to_dict_and_a_table():
    classes = _result_classes()
    assert EXPECTED <= set(classes), f"missing: {sorted(EXPECTED - set(classes))}"
    for name, cls in classes.items():
        assert cls.to_dict is not Result.to_dict, f"{name} has no to_dict()"
        assert cls.table is not Result.table, f"{name} has no table()"
        assert not hasattr(cls, "to_json"), f"{name}.to_json: results serialise with to_dict only"


# ---- one representative result per family, on tiny random models ------------------------------------
def test_lens_result_and_layer_kl(tiny_llama):
    from lmscope.lens.logit import kl_of_states, logit_lens

    r = logit_lens(tiny_llama, "hello <b>world</b>", targets=[5, 9], top_k=3)
    d = _check(r, f"{float(r.kl[0, -1]):.2f}", f"{float(r.target_probs[1, -1, 0]):.3f}",
               f"{r.targets[0]!r}: enters the top-3 at layer {r.entry_layer(5)}")
    assert d["layers"] == r.layers and "&lt;b&gt;world&lt;/b&gt;" in r._repr_html_()
    t = r.table()
    assert t.columns[:3] == ["layer", "top 3 at the last position", "KL"] and len(t.rows) == len(r.layers)
    assert t.rows[-1][2] == pytest.approx(float(r.kl[-1, -1])) and t.rows[0][4] == int(r.target_ranks[0, -1, 0])
    states = torch.randn(tiny_llama.n_layers, 6, tiny_llama.d_model)
    k = kl_of_states(tiny_llama, states)
    _check(k, f"{float(k.kl[0]):.3f}", f"{float(k.top1_agreement[0]):.2f}")


def test_inspect_attribution_decomposition_and_patchscope(tiny_llama):
    from lmscope.inspect.decomposition import decompose, logit_attribution
    from lmscope.inspect.patchscopes import patchscope

    dec = decompose(tiny_llama, ["hello world, this is", "hi"])
    a = logit_attribution(tiny_llama, dec, 5, baseline=7)
    top = a.top_parts(1)[0]
    d = _check(a, top["part"], f"{top['dla']:+.3f}", f"{float(a.logit[0]):.3f}")
    assert d["top_parts"][0] == top
    assert [x.title for x in a.tables()] == [a.table().title, "DLA per layer"]
    assert "more rows not shown" in a._repr_html_()  # 12 of the parts, as the CLI's default --top
    assert len(a.table().rows) == len(dec.labels)
    assert len(dec.to_dict()["part_norms"][0]) == len(dec.labels)
    _check(dec, dec.labels[0], f"{float(dec.parts[0, 0].norm()):.3g}")
    ps = patchscope(tiny_llama, "abc def", source_layer=1, target="identity", k=3, max_new_tokens=2)
    _check(ps, repr(ps.top[0]["token"]), f"{ps.top[0]['prob']:.2f}", f"generated: {ps.text!r}")


def test_neuron_ablation_and_dose_response():
    from lmscope.neurons import causal as nc

    lm = make_tiny("gemma3_text")
    prompts = ["the cat sat on the mat", "a dog ran"]
    eff = nc.ablate(lm, [(1, 7), (2, 3)], prompts, target=5, baseline=6)
    d = _check(eff, f"{eff.p_target_before:.4g}", f"{eff.ld_after:.4g}", f"{eff.top1_flip_rate:.4g}")
    assert d["neurons"] == [[1, 7], [2, 3]]
    rows = {r[0]: r[1:] for r in eff.table().rows}
    assert rows["mean logit difference (LD)"] == [eff.ld_before, eff.ld_after]
    dose = nc.dose_response(lm, [(1, 7)], prompts, target=5, baseline=6, values=[-1.0, 0.5, 2.0])
    _check(dose, f"{dose.p_target[1]:.4f}", f"{dose.ld[2]:+.3f}", f"clean p={dose.clean_p_target:.4f}")
    assert [r[0] for r in dose.table().rows] == [-1.0, 0.5, 2.0]


def test_steering_verify_report(tiny_llama):
    from lmscope.datasets.contrast import from_pairs
    from lmscope.vectors import steering as st
    from lmscope.vectors.vector import extract

    v = extract(tiny_llama, from_pairs([("good day", "bad day"), ("I love it", "I hate it"), ("joy", "grief")]))
    m = st.TokenMetric(prompts=("hello", "abc d"), words=("a", "b"), name="p(a,b)")
    task = st.Behaviour(name="tiny", absent=m, present=m, neutral=("x y", "zz"))
    rep = st.verify(tiny_llama, v, task, layer=1, coef=0.5, n_random=2, swing=False)
    d = _check(rep, f"{rep.add['vector']:.4g}", f"{rep.add_random_effect:.4g}", str(rep.passed["add"]))
    assert [r["test"] for r in d["rows"]] == [r[0] for r in rep.table().rows]
    assert any(n.startswith("KL on neutral prompts when added") for n in rep.table().notes)


def test_function_vector_layer_sweep():
    from lmscope.function_vectors import core as F

    lm = make_tiny("llama")
    cfg = F.FVConfig(shots=2, n_prompts=4, n_test=4, drop_ambiguous=False, batch_size=4)
    sw = F.evaluate(lm, F.make(lm, "antonym", cfg), layers=[0, 2])
    d = _check(sw, f"{sw.prob[1]:.3f}", f"zero-shot {sw.zero_shot:.2f}", f"best layer {sw.best_layer}")
    assert d["summary"]["best_layer"] == sw.best_layer
    assert [r[0] for r in sw.table().rows] == [0, 2]


# ---- results built directly (the CLI's other tables) ---------------------------------------------------
def test_sweep_result_table_marks_admissible_rows_and_the_recommendation():
    from lmscope.vectors.steering import SweepResult

    rows = [{"layer": 3, "coef": 0.5, "scale": 12.5, "score": 0.75, "effect": 0.25, "kl": 0.125, "repetition": None,
             "admissible": True},
            {"layer": 3, "coef": 2.0, "scale": 50.0, "score": 0.95, "effect": 0.45, "kl": 3.5, "repetition": None,
             "admissible": False}]
    res = SweepResult(task="tiny", metric="p(a)", goal="increase", base={"score": 0.5, "repetition": None},
                      rows=rows, recommended=rows[0], config={"kl_max": 1.0})
    _check(res, "0.125", "12.5", "yes", "no", "recommended: layer 3, coef 0.5 (raw scale 12.5)")
    assert [r[-1] for r in res.table().rows] == ["yes", "no"]


def test_curve_and_composition_tables_show_nan_and_none_as_the_cli_does():
    from lmscope.function_vectors.core import Composition
    from lmscope.neurons.causal import AblationEffect, CurveResult

    e = AblationEffect(neurons=[(0, 1)], method="zero", n_prompts=2, p_target_before=0.5, p_target_after=0.25,
                       rel_change_p_target=-0.5, top1_flip_rate=0.5)
    cr = CurveResult(ks=[1], top=[e], random=[{"top1_flip_rate": {"mean": 0.125, "std": 0.0}}], method="zero",
                     n_random=2)
    t = cr.table()
    assert t.rows[0][:3] == [1, None, None] and t.text_rows()[0][:3] == ["1", "", ""]
    _check(cr, "0.50", "0.12")
    c = Composition(target="a_then_b", expression="a + b", n_test=4, zero_shot=float("nan"), few_shot=0.5,
                    layers=[0, 1], composed=[0.25, 0.75], singles={"a": [0.0, 0.5]}, direct=[0.5, 0.5],
                    random=[0.0, 0.0], keys={})
    page = c._repr_html_()
    assert "<td style=\"text-align:right\">-</td>" in page  # NaN zero-shot, as `lmscope fv compose` prints it
    assert [x.title for x in c.tables()][1] == "accuracy per layer" and "0.75" in page
    assert json.dumps(c.to_dict(), allow_nan=True)


# ---- the helpers -------------------------------------------------------------------------------------
def test_table_formats_escapes_and_limits_rows():
    t = Table(["token", "p", "rank"], [["<s>", 0.123456, 3], ["a&b", float("nan"), None]], title="x < y",
              formats={"p": ".3f"}, notes=["note <i>"], max_rows=1)
    assert t.text_rows() == [["<s>", "0.123", "3"], ["a&b", "-", ""]]
    page = t.to_html()
    assert "&lt;s&gt;" in page and "x &lt; y" in page and "note &lt;i&gt;" in page and "<s>" not in page
    assert "a&amp;b" not in page and "1 more rows not shown" in page
    assert t.records() == [{"token": "<s>", "p": 0.123456, "rank": 3}, {"token": "a&b", "p": t.rows[1][1],
                                                                         "rank": None}]
    with pytest.raises(InputError, match="distinct"):
        Table(["a", "a"], [])
    with pytest.raises(InputError, match="row 0 has 1 values for 2 columns"):
        Table(["a", "b"], [[1]])
    with pytest.raises(InputError, match="formats name no column"):
        Table(["a"], [[1]], formats={"b": ".2f"})
    assert format_value(0.5) == "0.5" and format_value(True) == "True" and format_value(7, "+d") == "+7"


def test_jsonable_converts_tensors_tuples_paths_and_keys(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class P:
        t: torch.Tensor
        pair: tuple

    got = jsonable({1: P(torch.tensor([[1.5, 2.0]]), (3, "x")), "p": tmp_path, "s": {4}})
    assert got == {"1": {"t": [[1.5, 2.0]], "pair": [3, "x"]}, "p": str(tmp_path), "s": [4]}
    assert json.loads(json.dumps(got)) == got


def test_to_pandas_without_pandas_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
    t = Table(["a"], [[1]])
    with pytest.raises(LmscopeError, match=r"pip install lmscope\[notebook\]"):
        t.to_pandas()
    from lmscope.neurons.causal import DoseResponse

    dose = DoseResponse(neurons=[(0, 1)], values=[0.0], p_target=[0.5], p_baseline=None, ld=None, clean_p_target=0.5,
                        clean_p_baseline=None, clean_ld=None, natural={"q01": 0.0, "q50": 0.0, "q99": 1.0},
                        positions="all", target="a", baseline=None)
    with pytest.raises(LmscopeError, match="lmscope\\[notebook\\]"):
        dose.to_pandas()


def test_to_pandas_keeps_raw_values():
    pd = pytest.importorskip("pandas")
    t = Table(["layer", "p"], [[0, 0.123456], [1, float("nan")]], title="t", formats={"p": ".2f"})
    df = t.to_pandas()
    assert isinstance(df, pd.DataFrame) and df.attrs["title"] == "t"
    assert df["p"].iloc[0] == 0.123456 and math.isnan(df["p"].iloc[1]) and list(df["layer"]) == [0, 1]
