"""The main-job tour (`lmscope tour`) on the embedded default model: every step runs and shows
what it claims, each next to its control."""

import json

import pytest
from click.testing import CliRunner
from conftest import make_tiny

import lmscope.engine.loading
import lmscope.tour
from lmscope.tour import STEPS, TourContext, failure_summary, run_tour


def test_tour_steps_are_unique_and_documented():
    keys = [k for k, _, _ in STEPS]
    assert len(keys) == len(set(keys)) >= 6
    assert all(fn.__doc__ or k == "next_token" for k, _, fn in STEPS)


def test_unknown_step_is_an_error_naming_the_steps(tmp_path):
    from lmscope.engine.errors import InputError

    with pytest.raises(InputError, match="logit_lens"):
        run_tour(None, TourContext(tmp_path), ["logit-lens"])


def _steps_with(**replace):
    """STEPS with some step functions replaced (by key)."""
    return [(k, title, replace.get(k, fn)) for k, title, fn in STEPS]


def _boom(lm, ctx):
    raise RuntimeError("boom: the step broke\nsecond line of the message")


def _cheap(lm, ctx):
    """A stand-in step that writes one figure."""
    f = ctx.out_dir / "cheap.txt"
    f.write_text("figure")
    return {"figures": [str(f)]}


def test_a_failed_step_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    errors, stepped = [], []
    cheap = {k: _cheap for k, _, _ in STEPS if k != "next_token"}  # next_token runs for real on the tiny model
    monkeypatch.setattr(lmscope.tour, "STEPS", _steps_with(**{**cheap, "patchscope": _boom, "neuron": _boom}))
    ctx = TourContext(tmp_path, say=lambda s: None, on_error=lambda k, m: errors.append((k, m)),
                      on_step=lambda k, t: stepped.append(k))
    res = run_tour(make_tiny("llama"), ctx)
    assert stepped == [k for k, _, _ in STEPS] and list(res) == stepped  # every step ran, in order
    assert errors == [(k, "RuntimeError: boom: the step broke") for k in ("patchscope", "neuron")]
    assert res["patchscope"]["error"] == "boom: the step broke" and res["patchscope"]["figures"] == []
    assert res["steer"]["figures"] == [str(tmp_path / "cheap.txt")] and res["next_token"]["top"]
    assert failure_summary(res) == "2 of 6 steps failed: patchscope, neuron"
    assert failure_summary({k: r for k, r in res.items() if "error_type" not in r}) is None


def test_cli_tour_reports_failed_steps_and_exits_non_zero(tmp_path, monkeypatch):
    lm = make_tiny("llama")
    monkeypatch.setattr(lmscope.engine.loading, "load", lambda *a, **k: lm)
    monkeypatch.setattr(lmscope.tour, "STEPS", _steps_with(logit_lens=_cheap, patchscope=_boom))
    out = tmp_path / "tour"
    r = CliRunner().invoke(cli_main(), ["tour", "tiny", "--out", str(out), "--only", "next_token", "--only",
                                        "logit_lens", "--only", "patchscope", "--json"])
    assert r.exit_code == 1, r.output
    d = json.loads(r.stdout)  # stdout stays pure JSON
    assert list(d["steps"]) == ["next_token", "logit_lens", "patchscope"]
    assert d["steps"]["patchscope"]["error_type"] == "RuntimeError" and d["steps"]["logit_lens"]["figures"]
    err = r.stderr.splitlines()
    assert err[0] == "[1/4] loading tiny" and err[1] == "[2/4] next_token: The next-token distribution"
    assert "step patchscope failed: RuntimeError: boom: the step broke" in err  # one line, where it happened
    assert err[-1].startswith("Error: 1 of 3 steps failed: patchscope")
    # without --json: the console lists each step's figures, or says it has none
    r = CliRunner().invoke(cli_main(), ["tour", "tiny", "--out", str(out), "--only", "next_token", "--only",
                                        "logit_lens"])
    assert r.exit_code == 0, r.output
    assert "logit_lens: cheap.txt" in r.stdout and "no figure" in r.stdout and "next_token" in r.stdout


def test_cli_tour_checks_steps_before_loading(monkeypatch):
    def load(*a, **k):
        raise AssertionError("loaded a model")

    monkeypatch.setattr(lmscope.engine.loading, "load", load)
    r = CliRunner().invoke(cli_main(), ["tour", "--only", "neurons"])
    assert r.exit_code == 2 and "Unknown tour step(s) neurons; the steps are next_token" in r.output, r.output


def cli_main():
    from lmscope.cli.main import cli

    return cli


@pytest.mark.slow
def test_tour_on_gemma(gemma, tmp_path):
    said = []
    res = run_tour(gemma, TourContext(tmp_path, say=said.append))
    json.dumps(res)  # what `lmscope tour --json` prints
    assert set(res) == {k for k, _, _ in STEPS}
    assert failure_summary(res) is None, res
    figures = {k: r["figures"] for k, r in res.items()}  # the README's figures, the others say they have none
    assert figures["logit_lens"] == [str(tmp_path / f) for f in ("logit_lens.png", "logit_lens_targets.png",
                                                                  "logit_lens.html")]
    assert figures["neuron"] == [str(tmp_path / "neuron_10_1624.html")]
    assert all(figures[k] == [] for k in ("next_token", "patchscope", "steer", "function_vector"))
    assert all((tmp_path / f).is_file() for fs in figures.values() for f in fs)
    assert res["next_token"]["top"][0]["token"] == " Warsaw"
    lens = res["logit_lens"]
    assert lens["final_top"] == " Warsaw" and 0 < lens["entry_layer"] < gemma.n_layers - 1
    assert all((tmp_path / f).exists() for f in ("logit_lens.png", "logit_lens_targets.png", "logit_lens.html"))
    ps = res["patchscope"]
    assert ps["text"] != ps["text_unpatched"]  # the patched state changes what the model says
    ab = res["neuron"]["ablation"]
    moved = ab["neuron"]["ld_before"] - ab["neuron"]["ld_after"]
    assert moved > 0.3 and moved > 5 * abs(ab["control"]["ld_before"] - ab["control"]["ld_after"])
    assert len(res["neuron"]["examples"]) == 3 and (tmp_path / "neuron_10_1624.html").exists()
    sc = res["steer"]["sentiment_score"]
    assert sc["vector"] - sc["baseline"] > 2 * abs(sc["random"] - sc["baseline"]) + 1
    fv = res["function_vector"]
    mid_acc, last_acc = fv["accuracy"]
    assert mid_acc > fv["zero_shot"] + 0.2 and mid_acc > fv["random"][0] + 0.2 and last_acc < mid_acc
