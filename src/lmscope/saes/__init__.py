"""Sparse autoencoders and transcoders: train them on a model's activations (TopK + AuxK,
BatchTopK, JumpReLU, ReLU + L1), judge them with an evaluation card, read their features (pages,
search), load published dictionaries (SAELens, sparsify, Gemma Scope 2) and steer with features."""

from lmscope.engine.lazy import lazy_exports

_EXPORTS = {  # name -> module of this family
    "ActivationCache": "activations", "build_cache": "activations",
    "CoderSpec": "coder", "SparseCoder": "coder",
    "Card": "evaluation", "evaluate": "evaluation",
    "FeatureSearch": "feature_db", "build_feature_index": "feature_db", "search_features": "feature_db",
    "FeaturePage": "feature_page", "feature_page": "feature_page",
    "FeatureStats": "features", "feature_stats": "features",
    "load_coder": "loading", "load_sae": "loading", "save_coder": "loading",
    "TrainedSAE": "pipeline", "train_sae": "pipeline",
    "SteerReport": "steering", "feature_edits": "steering", "steer": "steering",
    "TrainConfig": "training", "train_on_activations": "training",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = tuple(sorted(_EXPORTS))  # a call ruff reads as a sequence (PLE0605); sorted() alone is not
