"""`Model`: a Hugging Face causal LM with its tokenizer and architecture map, and `Batch`,
tokenized left-padded prompts. Loading lives in `lmscope.engine.loading`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lmscope.engine import sites as S
from lmscope.engine.arch import ArchSpec, get_module, spec_for
from lmscope.engine.errors import InputError, SiteError
from lmscope.engine.weights import Weights

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """Tokenized, left-padded prompts."""

    input_ids: Tensor  # [batch pos]
    attention_mask: Tensor  # [batch pos]
    prompts: list[str]

    @property
    def position_ids(self) -> Tensor:
        return (self.attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    @property
    def lengths(self) -> Tensor:
        return self.attention_mask.sum(-1)


class Model:
    """A HF causal LM with its tokenizer and architecture map. It never edits the HF model:
    hooks live only inside `with` blocks (`lmscope.engine.hooks`)."""

    def __init__(self, hf: nn.Module, tokenizer, *, name: str = "model", source: str = "",
                 revision: str | None = None, arch: ArchSpec | None = None) -> None:
        self.hf = hf
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        self.revision = revision
        self.spec = arch if arch is not None else spec_for(hf)
        self.load_args: dict | None = None  # set by engine.loading.load: how a worker loads it again
        self.weights = Weights(self)
        self._layers = get_module(hf, self.spec.layers)
        cfg = hf.config
        self.n_layers = len(self._layers)
        self.d_model = cfg.hidden_size
        self.n_heads = cfg.num_attention_heads
        self.d_head = getattr(cfg, "head_dim", None) or self.d_model // self.n_heads
        self.d_mlp = self.weights.W_out(0).shape[0]
        self.n_kv_heads = self.weights.n_kv_heads()
        self.d_vocab = self.weights.W_U.shape[1]
        self.n_ctx = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token

    def __repr__(self) -> str:
        return (f"Model({self.name!r}, family={self.family}, layers={self.n_layers}, d_model={self.d_model}, "
                f"heads={self.n_heads}x{self.d_head}, d_mlp={self.d_mlp}, vocab={self.d_vocab})")

    # ---- what families may ask about the architecture (they never read `spec` or `hf`) ----
    @property
    def family(self) -> str:
        """Family name of the architecture table entry ("llama", "gemma3", "gpt2", ...)."""
        return self.spec.family

    @property
    def is_gated(self) -> bool:
        """The MLP has a gate (`act(gate) * up`), separate or fused with the up projection."""
        return self.spec.gate is not None or self.spec.fused_gate_up

    @property
    def has_attn_post_norm(self) -> bool:
        """Attention's write goes through a post-norm (Gemma 2/3, OLMo 2) before the residual."""
        return self.spec.attn_post_norm is not None

    @property
    def norm_kind(self) -> str:
        """How the norms compute: "rms", "rms_one_plus" (Gemma: x/rms*(1+w)) or "layer"."""
        return self.spec.norm_kind

    @property
    def device(self) -> torch.device:
        """Where the logits come out (the LM head runs): where captures are gathered and edits
        of non-layer sites live. With accelerate's offload, the device the head executes on."""
        return _exec_device(self.hf.get_output_embeddings(), self.weights.W_U.device)

    def device_of(self, layer: int | None) -> torch.device:
        """The device block `layer` computes on (`None`: the LM head's). Differs from `device`
        when a `device_map` spreads the model over devices (CPU / disk offload, several GPUs)."""
        if layer is None:
            return self.device
        return _exec_device(self.block(layer), self.device)

    @property
    def spans_devices(self) -> bool:
        """Whether blocks compute on more than one device (a `device_map` split)."""
        return len({self.device_of(i) for i in range(self.n_layers)} | {self.device}) > 1

    @property
    def dtype(self) -> torch.dtype:
        return self.weights.W_U.dtype

    def block(self, layer: int) -> nn.Module:
        return self._layers[layer]

    def info(self) -> dict:
        """Family, dimensions and site names (what `lmscope info --json` prints)."""
        return {
            "name": self.name, "source": self.source, "family": self.family,
            "model_type": self.hf.config.model_type, "n_layers": self.n_layers, "d_model": self.d_model,
            "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
            "d_head": self.d_head, "d_mlp": self.d_mlp, "d_vocab": self.d_vocab, "n_ctx": self.n_ctx,
            "dtype": str(self.dtype).removeprefix("torch."), "device": str(self.device),
            "chat_template": bool(getattr(self.tokenizer, "chat_template", None)),
            "sites": ["embed"] + [f"layers.{{0..{self.n_layers - 1}}}.{k}" for k in S.BLOCK_KINDS
                                  if not (k == "resid_mid" and self.spec.resid_mid is None)
                                  and not (k == "mlp.gate" and not self.is_gated)]
            + ["final_norm", "logits"],
        }

    # ---- sites -----------------------------------------------------------------------
    def sites(self, spec: str | S.Site) -> list[S.Site]:
        """Resolve a site string (with `*`, negative layers, units) against this model."""
        n_units = {"mlp.neurons": self.d_mlp, "mlp.gate": self.d_mlp, "mlp.up": self.d_mlp,
                   "attn.q": self.n_heads, "attn.k": self.n_kv_heads, "attn.v": self.n_kv_heads,
                   "attn.z": self.n_heads, "attn.head_out": self.n_heads, "attn.pattern": self.n_heads}
        return S.resolve(spec, self.n_layers, n_units, self.name)

    def site(self, spec: str | S.Site) -> S.Site:
        found = self.sites(spec)
        if len(found) != 1:
            raise SiteError(f"{spec!r} names {len(found)} sites; name one layer.")
        return found[0]

    def module_site(self, module: str, io: str) -> str:
        """The site a HF module's "input" or "output" is ("model.layers.6.mlp", "input" ->
        "layers.6.mlp_in"), or "" (for dictionaries published with HF module names)."""
        from lmscope.engine.arch import module_site

        return module_site(module, io, self.spec)

    def feature_shape(self, site: S.Site) -> tuple[int, ...]:
        """Shape of one position's activation at `site` (after unit selection)."""
        k = site.kind
        if k.startswith("mlp."):
            n = self.d_mlp
        elif k in ("attn.z", "attn.q"):
            n = self.n_heads
        elif k in ("attn.k", "attn.v"):
            n = self.n_kv_heads
        elif k == "logits":
            return (self.d_vocab,)
        else:
            return (self.d_model,)
        n = len(site.units) if site.units is not None else n
        return (n, self.d_head) if k.startswith("attn.") else (n,)

    # ---- tokens ------------------------------------------------------------------------
    def format_chat(self, prompt: str, system: str | None = None) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise InputError(f"{self.name} has no chat template; drop --chat / chat=True.")
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def tokenize(self, prompts: str | Sequence[str], *, chat: bool = False, system: str | None = None) -> Batch:
        """Left-padded batch. `chat=True` applies the model's chat template to each prompt."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise InputError("No prompts given; pass at least one non-empty string.")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise InputError(f"Prompt {i} is empty; pass non-empty text.")
        texts = [self.format_chat(p, system) for p in prompts] if chat else prompts
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat)
        n = enc["input_ids"].shape[1]
        if self.n_ctx and n > self.n_ctx:
            raise InputError(f"A prompt has {n} tokens but {self.name} takes at most {self.n_ctx}; shorten it.")
        return Batch(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device), prompts)

    def batch_of_ids(self, rows: Sequence[Sequence[int]], prompts: Sequence[str] | None = None) -> Batch:
        """A left-padded batch of token-id rows (prompts built as ids: random-token sequences,
        circuit tasks). `prompts` are display texts; decoded from the ids when omitted."""
        rows = [list(map(int, r)) for r in rows]
        if not rows or any(not r for r in rows):
            raise InputError("batch_of_ids needs at least one row and no empty row.")
        n = max(map(len, rows))
        if self.n_ctx and n > self.n_ctx:
            raise InputError(f"A row has {n} tokens but {self.name} takes at most {self.n_ctx}; shorten it.")
        bad = [t for r in rows for t in r if not 0 <= t < self.d_vocab]
        if bad:
            raise InputError(f"Token id {bad[0]} is outside the vocabulary of {self.name} (0..{self.d_vocab - 1}).")
        pad = self.tokenizer.pad_token_id if self.tokenizer is not None else 0
        ids = torch.tensor([[pad] * (n - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows])
        texts = list(prompts) if prompts is not None else [self.tokenizer.decode(r) for r in rows]
        return Batch(ids.to(self.device), mask.to(self.device), texts)

    def to_str_tokens(self, text: str) -> list[str]:
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        return [self.tokenizer.decode([i]) for i in ids]

    def token_id(self, token: str) -> int:
        """Id of a single token given as text (e.g. " Warsaw"); multi-token text -> first token
        with a logged warning."""
        ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
        if not ids:
            raise InputError(f"{token!r} encodes to no tokens.")
        if len(ids) > 1:
            log.warning("%r is %d tokens; using the first, %r", token[:60], len(ids), self.tokenizer.decode(ids[:1]))
        return ids[0]

    # ---- convenience (thin wrappers over the modules that do the work) -------------------
    def run(self, prompts, **kw):
        from lmscope.engine.runner import run

        return run(self, prompts, **kw)

    def generate(self, prompts, **kw):
        from lmscope.engine.runner import generate

        return generate(self, prompts, **kw)

    def capture(self, sites, **kw):
        from lmscope.engine.hooks import capture

        return capture(self, sites, **kw)

    def intervene(self, edits, **kw):
        from lmscope.engine.hooks import intervene

        return intervene(self, edits, **kw)


def _exec_device(module: nn.Module | None, default: torch.device) -> torch.device:
    """The device `module` computes on: accelerate's execution device when a `device_map`
    dispatched it (its weights may sit on another device, or on "meta" when offloaded to disk),
    else its first parameter's."""
    hook = getattr(module, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return dev if isinstance(dev, torch.device) else torch.device(dev)
    p = next(module.parameters(), None) if module is not None else None
    return p.device if p is not None and p.device.type != "meta" else default
