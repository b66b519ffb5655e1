"""Click parameter types over the engine's grammar (`lmscope.engine.grammar`): every command
parses layers, neurons, heads and value lists the same way, with the same messages (exit 2)."""

from __future__ import annotations

import click


class _Grammar(click.ParamType):
    def __init__(self, name: str, parse) -> None:
        self.name, self._parse = name, parse

    def convert(self, value, param, ctx):
        from lmscope.engine.errors import LmscopeError

        if value is None or not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except LmscopeError as e:
            self.fail(str(e), param, ctx)


def _layers(text: str):
    from lmscope.engine.grammar import parse_layers

    return parse_layers(text)


def _neurons(text: str):
    from lmscope.engine.grammar import parse_neurons

    return parse_neurons(text)


def _heads(text: str):
    from lmscope.engine.grammar import parse_heads

    return parse_heads(text)


def _values(text: str):
    from lmscope.engine.grammar import parse_values

    return parse_values(text)


#: "all" -> None, "3,6,9", "4:12", "0:18:3", "-1" -> a tuple of ints (negatives kept: the model resolves them)
LAYERS = _Grammar("layers", _layers)
#: "10.1624,12.7" or "layers.10.mlp.neurons[1624]" -> [(layer, neuron), ...]
NEURONS = _Grammar("neurons", _neurons)
#: "9.6,10.0" or "layers.9.attn.z[6]" -> [(layer, head), ...]
HEADS = _Grammar("heads", _heads)
#: "0.25,0.5,1" -> a tuple of finite floats
VALUES = _Grammar("values", _values)
