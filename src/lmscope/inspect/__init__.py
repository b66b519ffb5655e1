"""Reading one forward in token space: residual decomposition and direct logit attribution,
token-space edits, Patchscopes and back-patching."""

from lmscope.engine.lazy import lazy_exports

_EXPORTS = {  # name -> module of this family
    "Attribution": "decomposition", "Decomposition": "decomposition", "decompose": "decomposition",
    "logit_attribution": "decomposition", "token_edit": "decomposition",
    "PatchscopeResult": "patchscopes", "entity_sweep": "patchscopes", "identity_sweep": "patchscopes",
    "patchscope": "patchscopes",
    "BackpatchConfig": "backpatching", "BackpatchResult": "backpatching", "backpatch": "backpatching",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
