"""One layer's directions: contrastive steering vectors (extract, save, algebra), steering
edits, and the layer x strength sweep and verification with their side-effect metrics."""

from lmscope.vectors.steering import SweepConfig, steer_edits, sweep, verify
from lmscope.vectors.vector import ExtractConfig, Vector, extract

__all__ = ["ExtractConfig", "SweepConfig", "Vector", "extract", "steer_edits", "sweep", "verify"]
