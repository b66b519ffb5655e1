"""In-context task vectors and function vectors (Hendel et al.; Todd et al.): made from
few-shot prompts, evaluated per layer against zero-shot, few-shot and random, composed."""

from lmscope.function_vectors.core import FVConfig, LayerSweep, compose, evaluate, make

__all__ = ["FVConfig", "LayerSweep", "compose", "evaluate", "make"]
