"""Lenses over the residual stream: the logit lens, the tuned lens and latent-language reads."""

from lmscope.lens.latent import LatentConfig, LatentLanguageResult, latent_language
from lmscope.lens.logit import LensResult, logit_lens, run_lens
from lmscope.lens.tuned import (
           LensComparison,
           TunedLens,
           TunedLensConfig,
           compare_lenses,
           train_tuned_lens,
)

__all__ = ["LatentConfig", "LatentLanguageResult", "LensComparison", "LensResult", "TunedLens", "TunedLensConfig",
           "compare_lenses", "latent_language", "logit_lens", "run_lens", "train_tuned_lens"]
