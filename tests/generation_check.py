"""Shared check: cached generation with an edit equals recomputation without the cache, and
differs from unedited generation (so it cannot pass by the edit doing nothing)."""

from __future__ import annotations

import torch

import lmscope as ls
from lmscope.engine.hooks import hooked

#: every position form an edit accepts ("rows": a per-row tensor, built per batch)
POSITION_FORMS = ["all", "last", "generated", -3, "4:", "rows"]


def positions_of(form, n_rows: int):
    return torch.tensor([-2, 5, -4][:n_rows]) if form == "rows" else form


def check_cached_generation(model, prompts, edit, *, new: int = 6, tokens_must_change: bool = False) -> None:
    """Greedy cached generation with `edit`, against the whole sequence recomputed at once
    without a KV cache (same edit, same prompt): the last block's residual at every fed
    position must agree, greedy tokens must equal the recomputation's argmax, and the residual
    (and with `tokens_must_change`, the tokens) must differ from unedited generation."""
    site = f"layers.{model.n_layers - 1}.resid_post"
    gen = model.generate(prompts, edits=[edit], capture=[site], max_new_tokens=new, min_new_tokens=new)
    plain = model.generate(prompts, capture=[site], max_new_tokens=new, min_new_tokens=new)
    P = gen.batch.input_ids.shape[1]
    mask = torch.cat([gen.batch.attention_mask, torch.ones_like(gen.tokens)], 1)
    pad = (gen.batch.attention_mask.long().cumsum(1) == 0).sum(1)
    # the prompt is declared so that "generated" and "a:" mean the same columns as during generation
    with torch.no_grad(), hooked(model, capture=[site], edits=[edit], prompt=(P, pad)) as cache:
        logits = model.hf(input_ids=gen.sequences, attention_mask=mask,
                          position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False).logits
    fed = mask[:, :-1].bool()  # every position fed to the model during generation
    got, want, base = gen.cache[site], cache[site][:, :-1], plain.cache[site]
    assert got.shape == want.shape
    scale = want[fed].abs().max()
    torch.testing.assert_close(got[fed], want[fed], atol=1e-4 * float(scale), rtol=1e-3,
                               msg=f"cached generation differs from recomputation at {edit.positions!r}")
    logits[..., model.tokenizer.eos_token_id] = -torch.inf  # min_new_tokens forbade EOS
    assert torch.equal(logits[:, P - 1 : -1].argmax(-1), gen.tokens)
    assert (got[fed] - base[fed]).abs().max() > 1e-2 * float(scale), f"edit at {edit.positions!r} changed nothing"
    if tokens_must_change:
        assert not torch.equal(gen.tokens, plain.tokens), f"edit at {edit.positions!r} changed no token"


def add_edit(model, form, n_rows: int, *, layer: int, scale: float, seed: int = 0) -> ls.Add:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(model.d_model, generator=g)
    return ls.Add(site=f"layers.{layer}.resid_post", vector=v / v.norm() * scale,
                  positions=positions_of(form, n_rows))
