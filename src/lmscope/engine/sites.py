"""Named locations inside a model, one grammar for every family.

    embed                        token embeddings (Gemma: already scaled by sqrt(d_model))
    layers.L.resid_pre           residual stream entering block L       [batch pos d_model]
    layers.L.resid_mid           residual between attention and MLP     [batch pos d_model]
    layers.L.resid_post          residual leaving block L (= resid_pre of L+1)
    layers.L.attn_out            what attention writes into the residual
    layers.L.mlp_out             what the MLP writes into the residual
    layers.L.mlp_in              what the MLP reads: its input, after the pre-MLP norm (transcoders)
    layers.L.attn.q              per-head queries, output of the query projection [batch pos head d_head]
    layers.L.attn.k              per-KV-head keys (grouped-query attention: fewer heads) [batch pos kv_head d_head]
    layers.L.attn.v              per-KV-head values                     [batch pos kv_head d_head]
    layers.L.attn.z              per-head attention result, input of o_proj  [batch pos head d_head]
    layers.L.attn.head_out       each head's write into the residual (capture only) [batch pos head d_model]
    layers.L.attn.pattern        attention probabilities (capture only)  [batch head q_pos k_pos]
    layers.L.mlp.neurons         input of the down projection: act(gate)*up  [batch pos d_mlp]
    layers.L.mlp.gate            gate pre-activation (gated MLPs only)
    layers.L.mlp.up              up pre-activation
    final_norm                   output of the final norm
    logits                       LM-head output                          [batch pos d_vocab]

Layers are 0-based; negative layers count from the end and are normalised once, in `resolve`.
A unit selection picks neurons (mlp.*) or heads (attn.*): `layers.3.mlp.neurons[5,17]`.
`layers.*.resid_post` expands to every layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lmscope.engine.errors import SiteError

RESID_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
BLOCK_KINDS = RESID_KINDS + (
    "mlp_in",
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.z",
    "attn.head_out",
    "attn.pattern",
    "mlp.neurons",
    "mlp.gate",
    "mlp.up",
)
GLOBAL_KINDS = ("embed", "final_norm", "logits")
UNIT_KINDS = ("attn.q", "attn.k", "attn.v", "attn.z", "attn.head_out", "attn.pattern", "mlp.neurons", "mlp.gate", "mlp.up")
CAPTURE_ONLY = ("attn.head_out", "attn.pattern")

_PATTERN = re.compile(r"^layers\.(-?\d+|\*)\.([a-z_.]+?)(?:\[([-\d,\s]*)\])?$")
_GLOBAL = re.compile(r"^(embed|final_norm|logits)$")


@dataclass(frozen=True)
class Site:
    """One location. `layer` is None for global sites; `units` selects neurons or heads."""

    kind: str
    layer: int | None = None
    units: tuple[int, ...] | None = None

    @property
    def name(self) -> str:
        base = self.kind if self.layer is None else f"layers.{self.layer}.{self.kind}"
        if self.units is not None:
            base += "[" + ",".join(map(str, self.units)) + "]"
        return base

    def __str__(self) -> str:
        return self.name

    @property
    def unit_dim_name(self) -> str:
        return "head" if self.kind.startswith("attn.") else "neuron"


def parse(spec: str | Site) -> list[Site]:
    """Parse a site string (possibly with `*` for every layer) into unresolved Sites."""
    if isinstance(spec, Site):
        return [spec]
    if not isinstance(spec, str):
        raise SiteError(f"A site must be a string like 'layers.3.resid_post', got {type(spec).__name__}.")
    text = spec.strip()
    if _GLOBAL.match(text):
        return [Site(text)]
    m = _PATTERN.match(text)
    if not m or m.group(2) not in BLOCK_KINDS:
        raise SiteError(
            f"Unknown site {spec!r}. Expected 'embed', 'final_norm', 'logits' or "
            f"'layers.L.<kind>' with kind in {', '.join(BLOCK_KINDS)}; "
            "units as 'layers.3.mlp.neurons[5,17]'."
        )
    layer_s, kind, units_s = m.groups()
    units = None
    if units_s is not None:
        if kind not in UNIT_KINDS:
            raise SiteError(f"Site {spec!r}: only {', '.join(UNIT_KINDS)} take a [unit] selection.")
        try:
            units = tuple(int(u) for u in units_s.split(",") if u.strip())
        except ValueError as e:
            raise SiteError(f"Site {spec!r}: units must be integers like [5,17].") from e
        if not units:
            raise SiteError(f"Site {spec!r}: empty unit selection; drop the brackets to take all.")
    layer = None if layer_s == "*" else int(layer_s)
    return [Site(kind, layer, units)]


def resolve(spec: str | Site, n_layers: int, n_units: dict[str, int], model_name: str = "model") -> list[Site]:
    """Parse, expand `*`, normalise negative layers and range-check layers and units.

    Args:
        spec: Site string or Site.
        n_layers: Number of blocks.
        n_units: Size of the unit axis per kind (`{"mlp.neurons": d_mlp, "attn.z": n_heads, ...}`).
        model_name: Used in error messages.
    """
    out = []
    for site in parse(spec):
        if site.kind in GLOBAL_KINDS:
            out.append(site)
            continue
        layers = range(n_layers) if site.layer is None else [site.layer]
        for layer in layers:
            if not -n_layers <= layer < n_layers:
                raise SiteError(
                    f"Layer {layer} is out of range for {model_name} "
                    f"({n_layers} layers: 0..{n_layers - 1}, or -{n_layers}..-1)."
                )
            layer = layer % n_layers
            units = site.units
            if units is not None:
                size = n_units[site.kind]
                bad = [u for u in units if not -size <= u < size]
                if bad:
                    raise SiteError(
                        f"{site.unit_dim_name.capitalize()} {bad[0]} is out of range for "
                        f"{site.kind} of {model_name} ({size} {site.unit_dim_name}s: 0..{size - 1})."
                    )
                units = tuple(u % size for u in units)
            out.append(Site(site.kind, layer, units))
    return out
