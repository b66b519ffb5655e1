"""Click parameter types over the engine's grammar (`lmscope.engine.grammar`): every command
parses layers, neurons, heads and value lists the same way, with the same messages (exit 2).

Parsing is text -> numbers only; ranges are checked against the model's sizes by
`lmscope.cli._common` (`check_layers`, `check_neurons`: before the load for an embedded model)
or by the library after the load."""

from __future__ import annotations

import click


class _Grammar(click.ParamType):
    def __init__(self, name: str, parse, hint: str = "") -> None:
        self.name, self._parse, self.hint = name, parse, hint  # hint: how to write it, for --help

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


def _units(text: str):
    from lmscope.engine.errors import InputError
    from lmscope.engine.grammar import parse_layers

    try:  # unit indices are written like layers: "5,17", "0:64", "all"
        return parse_layers(text)
    except InputError:
        raise InputError(f"Takes neuron indices like 5,17 or 0:64, or 'all'; got {text!r}.") from None


def _neurons(text: str):
    from lmscope.engine.grammar import parse_neurons

    return parse_neurons(text)


def _heads(text: str):
    from lmscope.engine.grammar import parse_heads

    return parse_heads(text)


def _values(text: str):
    """"0.25,0.5,1", or START:STOP:COUNT: COUNT evenly spaced numbers from START to STOP inclusive."""
    from lmscope.engine.errors import InputError
    from lmscope.engine.grammar import parse_values

    if ":" not in text:
        return parse_values(text)
    bits = text.split(":")
    try:
        start, stop = parse_values(",".join(bits[:2])) if len(bits) == 3 else (None, None)
        n = int(bits[2]) if start is not None else 0
    except (InputError, ValueError):
        n = 0
    if not 1 <= n <= 10_000:
        raise InputError(f"Values are numbers like '0.25,0.5,1' or START:STOP:COUNT like '-4:8:13' "
                         f"(COUNT from 1 to 10000); got {text!r}.")
    return (start,) if n == 1 else tuple(start + (stop - start) * i / (n - 1) for i in range(n))


def _words(text: str):
    return tuple(w.strip() for w in text.split(",") if w.strip())


#: "all" -> None, "3,6,9", "4:12", "0:18:3", "-1" -> a tuple of ints (negatives kept: the model resolves them)
LAYERS = _Grammar("layers", _layers, "Written 'all', '3,6,9', '4:12' (4..11), '0:18:3' or '-1'.")
#: unit indices within a layer, written like layers: "5,17", "0:64"; "all" -> None
UNITS = _Grammar("units", _units)
#: "10.1624,12.7" or "layers.10.mlp.neurons[1624]" -> [(layer, neuron), ...]
NEURONS = _Grammar("neurons", _neurons)
#: "9.6,10.0" or "layers.9.attn.z[6]" -> [(layer, head), ...]
HEADS = _Grammar("heads", _heads)
#: "0.25,0.5,1" or "-4:8:13" (START:STOP:COUNT, inclusive) -> a tuple of finite floats
VALUES = _Grammar("values", _values, "Written '0.25,0.5,1' or START:STOP:COUNT like '-4:8:13'.")
#: "random,other" -> ("random", "other"); "" -> ()
WORDS = _Grammar("words", _words, "Comma-separated.")
#: what torch.manual_seed and random.Random accept
SEED = click.IntRange(0, 2**32 - 1)
