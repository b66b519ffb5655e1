"""Models of the model: linear relational embeddings (Hernandez et al. 2023) and the attribute lens.

    rel = load_relation("country_capital_city")          # lmscope.datasets.relations
    report = study(model, rel)                           # sweeps, faithfulness, causality, baselines
    report.lre.save("capital.safetensors", model)
    attribute_lens(model, report.lre, "Paris is the capital of")
"""

from lmscope.engine.lazy import lazy_exports

_EXPORTS = {  # name -> module of this family
    "LRE": "lre", "fit_lre": "lre",
    "RelationConfig": "study", "RelationReport": "study", "study": "study", "Predictions": "study",
    "predict_objects": "study", "read_facts": "facts", "faithfulness": "scoring", "causality": "scoring",
    "AttributeLens": "attribute_lens", "attribute_lens": "attribute_lens",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
