"""One layer's directions: contrastive steering vectors (extract, save, algebra), steering
edits, and the layer x strength sweep and verification with their side-effect metrics."""

from lmscope.engine.lazy import lazy_exports

_EXPORTS = {  # name -> module of this family
    "ExtractConfig": "vector", "Vector": "vector", "extract": "vector",
    "SweepConfig": "steering", "steer_edits": "steering", "sweep": "steering", "verify": "steering",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
