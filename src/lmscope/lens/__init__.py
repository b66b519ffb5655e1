"""Lenses over the residual stream: the logit lens, the tuned lens and latent-language reads."""

from lmscope.engine.lazy import lazy_exports

_EXPORTS = {  # name -> module of this family
    "LensComparison": "tuned", "TunedLens": "tuned", "TunedLensConfig": "tuned", "compare_lenses": "tuned",
    "train_tuned_lens": "tuned",
    "LatentConfig": "latent", "LatentLanguageResult": "latent", "latent_language": "latent",
    "LensResult": "logit", "logit_lens": "logit", "run_lens": "logit",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
