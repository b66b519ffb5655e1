"""`SuffixRun`: edits from one token on, many rows against one cached prefix, equal full forwards."""

from __future__ import annotations

import pytest
import torch

from lmscope.engine.errors import InputError
from lmscope.engine.runner import run

PROMPT = "abc defg hij"


def test_suffix_run_equals_full_runs(tiny):
    """Edits from token `start` on, k rows at once against the cached prefix == full forwards."""
    from lmscope.engine.interventions import Add
    from lmscope.engine.runner import SuffixRun

    start = 6
    sr = SuffixRun(tiny, PROMPT, start)
    base = run(tiny, PROMPT).logits.float()
    torch.testing.assert_close(sr.logits(), base, rtol=1e-4, atol=1e-4)
    vec = torch.randn(3, 1, tiny.d_model, generator=torch.Generator().manual_seed(1))
    edits = [Add(site="layers.0.resid_post", positions=start, vector=vec),
             Add(site="layers.1.resid_post", positions=-1, vector=vec * 0.5)]
    got = sr.logits(edits, rows=3)
    want = run(tiny, [PROMPT] * 3, edits=edits).logits.float()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got[0], base[0])
    with pytest.raises(InputError, match="suffix run"):
        sr.logits([Add(site="layers.0.resid_post", positions=start - 1, vector=vec[0, 0])])

