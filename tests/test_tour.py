"""The main-job tour (`lmscope tour`) on the embedded default model: every step runs and shows
what it claims, each next to its control."""

import json

import pytest

from lmscope.tour import STEPS, TourContext, run_tour


def test_tour_steps_are_unique_and_documented():
    keys = [k for k, _, _ in STEPS]
    assert len(keys) == len(set(keys)) >= 6
    assert all(fn.__doc__ or k == "next_token" for k, _, fn in STEPS)


def test_unknown_step_is_an_error_naming_the_steps(tmp_path):
    from lmscope.errors import InputError

    with pytest.raises(InputError, match="logit_lens"):
        run_tour(None, TourContext(tmp_path), ["logit-lens"])


@pytest.mark.slow
def test_tour_on_gemma(gemma, tmp_path):
    said = []
    res = run_tour(gemma, TourContext(tmp_path, say=said.append))
    json.dumps(res)  # what `lmscope tour --json` prints
    assert set(res) == {k for k, _, _ in STEPS}
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
