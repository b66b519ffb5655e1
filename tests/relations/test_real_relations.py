"""Linear relational embeddings on the real embedded models (slow).

- The first-order identity through the real model: a beta = 1 LRE fitted on one prompt predicts
  that prompt's own final residual, so its top token is the model's.
- `study` on a linguistic relation (on both models): the recommended LRE is faithful on held-out facts far above
  the translation, regression and majority baselines, and its edits change the answer to the
  target object far more often than random edits of the same norm.
- The attribute lens of a country-capital LRE finds the capital at the country's token of a
  sentence the LRE never saw, and not at the other tokens.
"""

from __future__ import annotations

import pytest
import torch

from lmscope.datasets.relations import load_relation
from lmscope.engine.readout import unembed
from lmscope.relations.attribute_lens import attribute_lens
from lmscope.relations.lre import fit_lre, lre_from_samples, sample_jacobians
from lmscope.relations.study import RelationConfig, study

pytestmark = pytest.mark.slow

FAST = {"betas": (1.0, 2.0, 3.0), "ranks": (32, 128), "max_facts": 48, "max_edits": 16}


def test_first_order_identity_on_gemma(gemma):
    rel = load_relation("country_capital_city")
    train = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome")]
    samples = sample_jacobians(gemma, rel, train[:1], [4])
    lre = lre_from_samples(samples, 4)
    z = lre.predict(samples.x[4])
    torch.testing.assert_close(z, samples.o, rtol=1e-3, atol=1e-3)
    assert int(unembed(gemma, z).argmax()) == int(unembed(gemma, samples.o).argmax())


@pytest.mark.parametrize("name,model_fixture", [("adj_comparative", "gemma"), ("adj_comparative", "smollm")])
def test_study_is_faithful_and_causal_against_controls(name, model_fixture, request):
    model = request.getfixturevalue(model_fixture)
    n = model.n_layers
    rep = study(model, load_relation(name), RelationConfig(layers=tuple(range(0, n // 2 + 1, 2)), **FAST))
    assert rep.n_test >= 5 and not rep.selected_on_test
    assert rep.faithfulness >= 0.5
    trivial = max(v for k, v in rep.baselines.items() if k != "logit_lens")  # translation, regression, majority
    assert rep.faithfulness > trivial + 0.25
    # (the logit lens of s is not asserted: at a middle layer a small model may already write the
    # answer into the subject's own state; the report shows it next to the LRE)
    assert rep.causality > rep.causality_control + 0.2
    assert rep.lre is not None and rep.lre.layer == rep.layer


def test_attribute_lens_finds_the_capital_at_the_country_token(gemma):
    rel = load_relation("country_capital_city")
    lre = fit_lre(gemma, rel, layer=4, demos=[("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"),
                                               ("Canada", "Ottawa"), ("Egypt", "Cairo")], beta=2.0)
    for prompt, country, capital in [("Last summer we drove all over Germany in a tiny car", " Germany", "Berlin"),
                                     ("My grandmother grew up in Russia before the war", " Russia", "Moscow")]:
        lens = attribute_lens(gemma, lre, prompt, target=capital)
        at = lens.tokens.index(country)
        row = lens.target_prob[lens.layers.index(4)]
        others = [p for i, p in enumerate(row) if i != at]
        assert row[at] > 0.1 and row[at] > 10 * max(others), (prompt, row)
