"""One grammar for what users name on a command line or in a config, beside `sites`:

    layers   "all" | "3,6,9" | "4:12" (4..11) | "0:18:3" | "-1" | mixes like "0:4,10,-1"
    neurons  "L.N[,L.N...]" (e.g. "10.1624,12.7") or a site "layers.10.mlp.neurons[1624,7]"
    heads    "L.H[,L.H...]" (e.g. "9.6,10.0") or a site "layers.9.attn.z[6]"
    values   "0.25,0.5,1" (finite numbers)

Parsing is pure text -> numbers; checking against a model's sizes is `check_*` (or the site
resolution of `Model.sites`). The CLI exposes these as click parameter types (`lmscope.cli.params`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from lmscope.engine.errors import InputError, SiteError

_SITE_UNITS = re.compile(r"layers\.(-?\d+)\.(mlp\.neurons|mlp\.gate|mlp\.up|attn\.z|attn\.head_out)\[([-\d,\s]+)\]")


def parse_layers(spec: str | int | Sequence[int] | None, n_layers: int | None = None) -> tuple[int, ...] | None:
    """Layers named by `spec` in the order given (duplicates dropped); None for None or "all".

    Negative layers count from the end when `n_layers` is known; "a:" (open end) needs it."""
    if spec is None:
        return None
    if isinstance(spec, int) and not isinstance(spec, bool):
        return (spec % n_layers if n_layers and -n_layers <= spec < 0 else spec,)
    if not isinstance(spec, str):
        return tuple(dict.fromkeys(int(x) for x in spec))
    text = spec.strip()
    if text in ("all", "*"):
        return None
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if ":" in part:
                bits = part.split(":")
                if len(bits) > 3:
                    raise ValueError
                start = int(bits[0]) if bits[0] else 0
                if bits[1] == "" and n_layers is None:
                    raise InputError(f"Layers {part!r} run to the last layer; name the model's layer count or the end.")
                stop = int(bits[1]) if bits[1] else n_layers
                step = int(bits[2]) if len(bits) == 3 and bits[2] else 1
                if step < 1:
                    raise ValueError
                if n_layers:
                    start, stop = (x + n_layers if x < 0 else x for x in (start, stop))
                out += range(start, stop, step)
            else:
                out.append(int(part))
        except ValueError:
            raise InputError(f"Layers are written 'all', '3,6,9', '4:12' (4..11), '0:18:3' or '-1'; got {spec!r}.") from None
    if not out:
        raise InputError(f"Layers {spec!r} name no layer.")
    if n_layers:
        out = [x + n_layers if -n_layers <= x < 0 else x for x in out]
    return tuple(dict.fromkeys(out))


def check_layers(layers: Sequence[int] | None, n_layers: int, name: str = "the model") -> tuple[int, ...]:
    """Every layer in range (negatives resolved); None means all."""
    if layers is None:
        return tuple(range(n_layers))
    out = []
    for x in layers:
        if not -n_layers <= x < n_layers:
            raise SiteError(f"Layer {x} is out of range for {name} ({n_layers} layers: 0..{n_layers - 1}, "
                            f"or -{n_layers}..-1).")
        out.append(x % n_layers)
    return tuple(dict.fromkeys(out))


def _pairs(spec: str, what: str, example: str, kinds: tuple[str, ...]) -> list[tuple[int, int]]:
    if not isinstance(spec, str) or not spec.strip():
        raise SiteError(f"No {what} given; write L.{what[0].upper()} like {example}.")
    out = []
    for part in (p.strip() for p in re.split(r",(?![^\[]*\])", spec)):
        if not part:
            continue
        m = re.fullmatch(r"(-?\d+)\.(-?\d+)", part)
        if m:
            out.append((int(m.group(1)), int(m.group(2))))
            continue
        s = _SITE_UNITS.fullmatch(part)
        if s and s.group(2) in kinds:
            try:
                out += [(int(s.group(1)), int(u)) for u in s.group(3).split(",") if u.strip()]
            except ValueError:
                pass
            else:
                continue
        raise SiteError(f"{part!r} does not name {what}: write L.{what[0].upper()} like {example} "
                         f"or a site like 'layers.{example.split('.')[0]}.{kinds[0]}[{example.split('.')[1].split(',')[0]}]'.")
    if not out:
        raise SiteError(f"No {what} in {spec!r}; write L.{what[0].upper()} like {example}.")
    return list(dict.fromkeys(out))


def parse_neurons(spec: str) -> list[tuple[int, int]]:
    """(layer, neuron) pairs of "L.N[,L.N...]" or "layers.L.mlp.neurons[N,M]"."""
    return _pairs(spec, "neurons", "10.1624", ("mlp.neurons", "mlp.gate", "mlp.up"))


def parse_heads(spec: str) -> list[tuple[int, int]]:
    """(layer, head) pairs of "L.H[,L.H...]" or "layers.L.attn.z[H]"."""
    return _pairs(spec, "heads", "9.6", ("attn.z", "attn.head_out"))


def check_units(pairs: Sequence[tuple[int, int]], n_layers: int, n_units: int, what: str = "neuron",
                name: str = "the model") -> list[tuple[int, int]]:
    """Every (layer, unit) in range, negatives resolved."""
    out = []
    for layer, u in pairs:
        (layer,) = check_layers([layer], n_layers, name)
        if not -n_units <= u < n_units:
            raise SiteError(f"{what.capitalize()} {u} is out of range for {name} ({n_units} per layer: "
                            f"0..{n_units - 1}).")
        out.append((layer, u % n_units))
    return out


def parse_values(spec: str | float | Sequence[float], what: str = "values") -> tuple[float, ...]:
    """Finite numbers: "0.25,0.5,1" or a number or a sequence."""
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        vals = (float(spec),)
    elif isinstance(spec, str):
        try:
            vals = tuple(float(p) for p in spec.split(",") if p.strip())
        except ValueError:
            raise InputError(f"The {what} are numbers like '0.25,0.5,1'; got {spec!r}.") from None
    else:
        vals = tuple(float(v) for v in spec)
    if not vals:
        raise InputError(f"No {what} given; write numbers like '0.25,0.5,1'.")
    bad = [v for v in vals if not math.isfinite(v)]
    if bad:
        raise InputError(f"The {what} must be finite numbers; got {bad[0]}.")
    return vals
