"""Circuits: activation and path patching, attribution patching over nodes and edges (EAP,
EAP-IG), pruning to a circuit with its faithfulness curve and a random control, induction
heads, circuit overlap."""

from lmscope.engine.lazy import lazy_exports

_EXPORTS = {  # name -> module of this family
    "ABLATIONS": "ablation",
    "AttributionConfig": "attribution", "EdgeScores": "attribution", "NodeScores": "attribution",
    "attribute": "attribution", "attribute_nodes": "attribution",
    "CircuitConfig": "discovery", "CircuitReport": "discovery", "find_circuit": "discovery",
    "Circuit": "graph", "Overlap": "graph", "overlap": "graph",
    "InductionResult": "induction", "find_induction_heads": "induction",
    "KeyPath": "key_paths", "key_path_patching": "key_paths", "key_path_task": "key_paths",
    "TaskRun": "metric", "faithfulness": "metric", "rank_correlation": "metric",
    "PatchingResult": "patching", "patch": "patching",
    "PathPatchResult": "path_patching", "path_patch": "path_patching",
    "Curve": "pruning", "PruneConfig": "pruning", "PruneResult": "pruning", "prune": "pruning",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = tuple(sorted(_EXPORTS))  # a call ruff reads as a sequence (PLE0605); sorted() alone is not
