"""The circuits family on the two embedded models: directions of change against controls,
never exact numbers (prompts are generated from seeds, so other seeds are other cases)."""

from __future__ import annotations

import pytest

from lmscope.circuits.attribution import AttributionConfig, attribute_nodes
from lmscope.circuits.discovery import CircuitConfig, agreement, find_circuit
from lmscope.circuits.metric import TaskRun
from lmscope.circuits.patching import patch
from lmscope.datasets.circuit_tasks import load_task

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("fixture", "task"), [("gemma", "greater-than"), ("smollm", "ioi")])
def test_node_attribution_agrees_with_activation_patching(request, fixture, task):
    model = request.getfixturevalue(fixture)
    run = TaskRun.build(model, load_task(task, model, n=6, seed=3))
    nodes = attribute_nodes(run, AttributionConfig(method="eap-ig", steps=3, batch_size=8))
    patched = [patch(run, component="heads"), patch(run, component="mlp")]
    rho = agreement({"eap-ig": nodes}, patched)["eap-ig"]
    assert rho > 0.4, rho
    # the component activation patching ranks first has the same sign in the attribution
    effects = {n: float(p.effect[i, j]) for p in patched for i, row in enumerate(p.names) for j, n in enumerate(row)}
    top = max(effects, key=lambda n: abs(effects[n]))
    assert (nodes.node_scores()[top] > 0) == (effects[top] > 0)


def test_ioi_circuit_on_smollm_is_small_faithful_and_beats_random(smollm):
    report = find_circuit(smollm, CircuitConfig(task="ioi", n=6, seed=1, steps=2, random_draws=2, compare=False,
                                                batch_size=6))
    c = report.circuit
    assert report.clean > report.corrupt + 1.0  # the model does IOI
    assert c.faithfulness >= 0.8
    assert len(c.edges) < 0.5 * c.n_edges_total
    assert c.faithfulness > report.result.random_control["mean"] + 0.3
    assert any(n.startswith("a") for n in c.nodes) and c.decoded


def test_induction_circuit_on_gemma_uses_its_induction_heads(gemma):
    from lmscope.circuits.induction import find_induction_heads

    heads = find_induction_heads(gemma, n=6, seq_len=12, seed=2, random_draws=2, key_path_heads=0)
    report = find_circuit(gemma, CircuitConfig(task="induction", n=6, seed=2, steps=3, random_draws=2,
                                               compare=False, batch_size=6))
    assert report.circuit.faithfulness >= 0.8
    found = set(heads.to_dict()["induction_heads"])
    assert found & report.circuit.components, (found, sorted(report.circuit.components))
