"""Where each part of a model lives, per Hugging Face family: an explicit table, no guessing.

Every path is a dotted attribute path, relative to the HF causal-LM module (`model.*`) or to
one decoder block (`self_attn.o_proj`). A family that is not in `FAMILIES` fails with
`UnsupportedArchitecture`; pass `arch=ArchSpec(...)` (or `register_family`) to add one.

Conventions (TransformerLens vocabulary):

- `attn_out` / `mlp_out` are what the sub-block *writes into the residual stream*. For families
  with post-norms (Gemma 2/3, OLMo 2) that is the output of the post-norm, not of `o_proj`.
- `mlp.neurons` is the input of the down projection: `act(gate) * up` for gated MLPs,
  `act(up)` otherwise. `mlp.gate` / `mlp.up` are the pre-activations.
- `attn.z` is the input of the attention output projection, split into heads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal

from torch import nn

from lmscope.engine.errors import UnsupportedArchitecture

NormKind = Literal["rms", "rms_one_plus", "layer"]


@dataclass(frozen=True, kw_only=True)
class ArchSpec:
    """Locations of the parts of one HF family.

    Attributes:
        family: Human-readable family name.
        layers: Path of the `nn.ModuleList` of decoder blocks.
        embed: Path of the token-embedding module.
        final_norm: Path of the final norm (applied before the unembedding).
        unembed: Path of the LM head (a Linear whose weight is `[d_vocab, d_model]`).
        attn: Attention module in a block (its forward returns `(out, weights)`).
        o_proj: Attention output projection in a block; its input is `z`.
        attn_out: `(path, which)` of what attention writes into the residual; `which` is
            `"output0"` (first element of a tuple output) or `"output"`.
        mlp_out: Same for the MLP.
        resid_mid: Module in a block whose input is the residual between attention and MLP
            (the pre-MLP norm), or None for parallel-residual blocks where it does not exist.
        down: MLP down projection (input = neurons).
        gate: MLP gate projection, or None for ungated MLPs.
        up: MLP up projection (or the fused gate+up projection when `fused_gate_up`).
        fused_gate_up: The up projection computes `[gate, up]` concatenated (Phi-3).
        conv1d: Weights are stored `[in, out]` (GPT-2 `Conv1D`) instead of `[out, in]`.
        attn_post_norm: Post-attention norm (Gemma 2/3, OLMo 2) or None.
        mlp_post_norm: Post-MLP norm or None.
        norm_kind: How the norms compute (`rms`: x/rms*w, `rms_one_plus`: x/rms*(1+w),
            `layer`: LayerNorm).
        attn_norm: The pre-attention norm in a block (what q, k and v read through), or None
            when attention reads the residual directly (OLMo 2).
        q_proj, k_proj, v_proj: The query, key and value projections in a block.
        qkv: One fused projection computing q, k and v (Phi-3, GPT-2, GPT-NeoX), or None.
        qkv_layout: How the fused output is laid out: `concat` ([q | k | v] along the last
            axis) or `neox` (per head, [q | k | v] of that head).
    """

    family: str
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    unembed: str = "lm_head"
    attn: str = "self_attn"
    o_proj: str = "self_attn.o_proj"
    attn_out: tuple[str, str] = ("self_attn", "output0")
    mlp_out: tuple[str, str] = ("mlp", "output")
    resid_mid: str | None = "post_attention_layernorm"
    down: str = "mlp.down_proj"
    gate: str | None = "mlp.gate_proj"
    up: str = "mlp.up_proj"
    fused_gate_up: bool = False
    conv1d: bool = False
    attn_post_norm: str | None = None
    mlp_post_norm: str | None = None
    norm_kind: NormKind = "rms"
    attn_norm: str | None = "input_layernorm"
    q_proj: str = "self_attn.q_proj"
    k_proj: str = "self_attn.k_proj"
    v_proj: str = "self_attn.v_proj"
    qkv: str | None = None
    qkv_layout: Literal["concat", "neox"] = "concat"
    extra: dict = field(default_factory=dict)


_LLAMA = ArchSpec(family="llama")
_GEMMA_POST = ArchSpec(
    family="gemma3",
    attn_out=("post_attention_layernorm", "output"),
    mlp_out=("post_feedforward_layernorm", "output"),
    resid_mid="pre_feedforward_layernorm",
    attn_post_norm="post_attention_layernorm",
    mlp_post_norm="post_feedforward_layernorm",
    norm_kind="rms_one_plus",
)

#: model_type -> ArchSpec. Every entry is exercised by a tiny random model in the tests.
FAMILIES: dict[str, ArchSpec] = {
    "llama": _LLAMA,
    "mistral": replace(_LLAMA, family="mistral"),
    "qwen2": replace(_LLAMA, family="qwen2"),
    "qwen3": replace(_LLAMA, family="qwen3"),
    "phi3": replace(_LLAMA, family="phi3", gate=None, up="mlp.gate_up_proj", fused_gate_up=True,
                    qkv="self_attn.qkv_proj"),
    "gemma3_text": _GEMMA_POST,
    "gemma2": replace(_GEMMA_POST, family="gemma2"),
    # OLMo 2 has post-norms and no pre-norms: the MLP itself is the first reader of resid_mid.
    "olmo2": replace(_GEMMA_POST, family="olmo2", resid_mid="mlp", norm_kind="rms", attn_norm=None),
    "gpt2": ArchSpec(
        family="gpt2",
        layers="transformer.h",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        attn="attn",
        o_proj="attn.c_proj",
        attn_out=("attn", "output0"),
        resid_mid="ln_2",
        down="mlp.c_proj",
        gate=None,
        up="mlp.c_fc",
        conv1d=True,
        norm_kind="layer",
        attn_norm="ln_1",
        qkv="attn.c_attn",
    ),
    "gpt_neox": ArchSpec(
        family="gpt_neox",
        layers="gpt_neox.layers",
        embed="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
        attn="attention",
        o_proj="attention.dense",
        attn_out=("attention", "output0"),
        resid_mid=None,  # parallel residual: attention and MLP read the same resid_pre
        down="mlp.dense_4h_to_h",
        gate=None,
        up="mlp.dense_h_to_4h",
        norm_kind="layer",
        qkv="attention.query_key_value",
        qkv_layout="neox",
    ),
}


def register_family(model_type: str, spec: ArchSpec) -> None:
    """Add or replace the spec used for a HF `config.model_type`."""
    FAMILIES[model_type] = spec


def spec_for(model: nn.Module) -> ArchSpec:
    """The ArchSpec of a HF causal LM, by `config.model_type`; fails loudly when unknown."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FAMILIES:
        known = ", ".join(sorted(FAMILIES))
        raise UnsupportedArchitecture(
            f"Model family {model_type!r} is not in lmscope's architecture table (known: {known}). "
            "Pass arch=lmscope.ArchSpec(family=..., layers=..., ...) to lmscope.load/wrap, "
            "or call lmscope.engine.arch.register_family(model_type, spec)."
        )
    spec = FAMILIES[model_type]
    if model_type == "gpt_neox" and not getattr(model.config, "use_parallel_residual", True):
        spec = replace(spec, resid_mid="post_attention_layernorm")
    validate(model, spec)
    return spec


def get_module(root: nn.Module, path: str) -> nn.Module:
    """Resolve a dotted path; an unknown path is an UnsupportedArchitecture error."""
    mod = root
    for part in path.split("."):
        if part.isdigit():
            mod = mod[int(part)]  # type: ignore[index]
        elif hasattr(mod, part):
            mod = getattr(mod, part)
        else:
            raise UnsupportedArchitecture(
                f"{type(root).__name__} has no submodule {path!r} (stopped at {part!r}). "
                "The architecture table entry does not match this model; pass a corrected ArchSpec."
            )
    return mod


def validate(model: nn.Module, spec: ArchSpec) -> None:
    """Check that every path of `spec` exists in `model` (in block 0 for block paths)."""
    for path in (spec.layers, spec.embed, spec.final_norm, spec.unembed):
        get_module(model, path)
    block = get_module(model, spec.layers)[0]  # type: ignore[index]
    for path in (spec.attn, spec.o_proj, spec.attn_out[0], spec.mlp_out[0], spec.down, spec.up):
        get_module(block, path)
    for path in (spec.resid_mid, spec.gate, spec.attn_post_norm, spec.mlp_post_norm, spec.attn_norm, spec.qkv):
        if path is not None:
            get_module(block, path)
    if spec.qkv is None:
        for path in (spec.q_proj, spec.k_proj, spec.v_proj):
            get_module(block, path)


_BLOCK_PATH = re.compile(r"^(?:.*\.)?(?:layers|h|blocks)\.(\d+)(?:\.(.+))?$")


def module_site(module: str, io: str, arch: ArchSpec) -> str:
    """The site of a HF module's input or output ("layers.6.mlp", "input" -> "layers.6.mlp_in")
    per `arch`, or "" when the module is not one a site reads (dictionaries published with HF
    hook names are mapped onto the site grammar with this)."""
    m = _BLOCK_PATH.match(module)
    if not m:
        embed = arch.embed.rsplit(".", 1)[-1]
        return "embed" if io == "output" and (module == embed or module.endswith("." + embed)) else ""
    layer, rest = m.group(1), m.group(2) or ""
    mlp = arch.down.rsplit(".", 1)[0]
    table = {("", "output"): "resid_post", ("", "input"): "resid_pre", (arch.attn_out[0], "output"): "attn_out",
             (arch.mlp_out[0], "output"): "mlp_out", (mlp, "input"): "mlp_in"}
    if arch.resid_mid is not None and arch.resid_mid != mlp:  # the pre-MLP norm: reads resid_mid, feeds the MLP
        table.setdefault((arch.resid_mid, "input"), "resid_mid")
        table.setdefault((arch.resid_mid, "output"), "mlp_in")
    kind = table.get((rest, io), "")
    return f"layers.{layer}.{kind}" if kind else ""
