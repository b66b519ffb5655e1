"""The attribute lens (Hernandez et al. 2023, section 6): a relation's LRE applied to the residual
at every layer and position, read out as tokens: which attribute the model has "in mind" there.

    lens = attribute_lens(model, lre, "Miles Davis played the trumpet in New York", target="United States")
    lens.top[layer][pos]     # the LRE's top token read from that state
    lens.target_prob         # [layer][pos] probability of the target's first token (when given)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lmscope.engine.errors import InputError
from lmscope.engine.model import Model
from lmscope.engine.results import Result, Table
from lmscope.relations.lre import LRE
from lmscope.relations.prompts import first_token


@dataclass
class AttributeLens(Result):
    """The LRE's readout of every (layer, position) residual of one prompt.

    Attributes:
        prompt: The text read.
        tokens: Its tokens (special tokens included).
        layers: Layers read (rows of the grids).
        top: [layer][pos] top token of unembed(beta W h + b).
        top_prob: [layer][pos] its probability.
        target: The attribute whose probability is tracked ("" when none).
        target_prob: [layer][pos] probability of the target's first token (empty when none).
        relation: The LRE's relation; lre_layer: the layer it was fitted at.
    """

    prompt: str
    tokens: list[str]
    layers: list[int]
    top: list[list[str]]
    top_prob: list[list[float]]
    target: str
    target_prob: list[list[float]]
    relation: str
    lre_layer: int

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def table(self) -> Table:
        cols = ["layer", *[f"{i}:{t.strip() or repr(t)}" for i, t in enumerate(self.tokens)]]
        rows = [[x, *[f"{tok.strip() or repr(tok)} {p:.2f}" for tok, p in zip(tops, probs, strict=True)]]
                for x, tops, probs in zip(self.layers, self.top, self.top_prob, strict=True)]
        notes = [f"LRE of {self.relation or 'the relation'} fitted at layer {self.lre_layer}, applied to every layer"]
        if self.target:
            best = max(((p, x, i) for x, row in zip(self.layers, self.target_prob, strict=True)
                        for i, p in enumerate(row)), default=(0.0, 0, 0))
            notes.append(f"p({self.target!r}) peaks at {best[0]:.3f} (layer {best[1]}, token {best[2]})")
        return Table(cols, rows, title=f"attribute lens: {self.prompt[:60]!r}", notes=notes)


def attribute_lens(model: Model, lre: LRE, prompt: str, *, target: str = "", layers: Sequence[int] | None = None
                   ) -> AttributeLens:
    """Apply `lre` to the resid_post of every layer (or `layers`, negative counting from the end) at
    every position of `prompt`. `target` is the attribute as text ("Paris"; surrounding spaces are
    ignored): its first token after a space is tracked, as the object follows the template."""
    if lre.weight.shape[0] != model.d_model:
        raise InputError(f"The LRE is {lre.weight.shape[0]}-wide but {model.name} has d_model {model.d_model}; "
                         "fit it on this model.")
    ls = list(range(model.n_layers)) if layers is None else [x + model.n_layers if x < 0 else x for x in layers]
    bad = [x for x in ls if not 0 <= x < model.n_layers]
    if bad or not ls:
        raise InputError(f"Layer {bad[0] if bad else '(none)'} is out of range for {model.name} "
                         f"({model.n_layers} layers: 0..{model.n_layers - 1}, or -{model.n_layers}..-1).")
    target = target.strip()
    r = model.run(prompt, capture=[f"layers.{x}.resid_post" for x in ls], logits=None)
    tok = model.tokenizer
    t_id = first_token(model, target) if target else None
    top, top_p, tp = [], [], []
    for x in ls:  # one layer at a time: [pos, d_vocab] probabilities, never [layer, pos, d_vocab]
        probs = lre.logits(model, r.cache[f"layers.{x}.resid_post"][0].float().cpu()).softmax(-1)
        p, ids = probs.max(-1)
        top.append([tok.decode([int(i)]) for i in ids])
        top_p.append(p.tolist())
        if t_id is not None:
            tp.append(probs[:, t_id].tolist())
    ids_row = r.batch.input_ids[0][r.batch.attention_mask[0].bool()].tolist()
    return AttributeLens(prompt, [tok.decode([i]) for i in ids_row], ls, top, top_p, target, tp, lre.relation,
                         lre.layer)
