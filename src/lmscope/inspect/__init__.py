"""Reading one forward in token space: residual decomposition and direct logit attribution,
token-space edits, Patchscopes and back-patching."""

from lmscope.inspect.backpatching import BackpatchConfig, BackpatchResult, backpatch
from lmscope.inspect.decomposition import (
           Attribution,
           Decomposition,
           decompose,
           logit_attribution,
           token_edit,
)
from lmscope.inspect.patchscopes import (
           PatchscopeResult,
           entity_sweep,
           identity_sweep,
           patchscope,
)

__all__ = ["Attribution", "BackpatchConfig", "BackpatchResult", "Decomposition", "PatchscopeResult", "backpatch",
           "decompose", "entity_sweep", "identity_sweep", "logit_attribution", "patchscope", "token_edit"]
