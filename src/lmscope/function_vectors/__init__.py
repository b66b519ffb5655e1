"""In-context task vectors and function vectors (Hendel et al.; Todd et al.): made from
few-shot prompts, evaluated per layer against zero-shot, few-shot and random, composed."""

from lmscope.engine.lazy import lazy_exports

_EXPORTS = {  # name -> module of this family
    "FVConfig": "core", "LayerSweep": "core", "compose": "core", "evaluate": "core", "make": "core",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
