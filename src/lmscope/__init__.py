"""lmscope: a microscope for language models.

    import lmscope as ls
    lm = ls.load("gemma-3-270m")
    out = lm.run("The capital of Poland is", capture=["layers.*.resid_post"])
    out.top_k(lm)
    with lm.intervene(ls.Add(site="layers.6.resid_post", vector=v, scale=4)):
        ...
"""

import importlib

# name -> submodule. Imported lazily (PEP 562) so `import lmscope` and `lmscope --help`
# stay instant: torch and transformers load on first use.
_EXPORTS = {
    "FAMILIES": "engine.arch", "ArchSpec": "engine.arch", "register_family": "engine.arch",
    "ArtifactError": "engine.errors", "InputError": "engine.errors", "LmscopeError": "engine.errors",
    "ModelNotFound": "engine.errors", "SiteError": "engine.errors", "UnsupportedArchitecture": "engine.errors",
    "Cache": "engine.hooks", "capture": "engine.hooks", "hooked": "engine.hooks", "intervene": "engine.hooks",
    "Add": "engine.interventions", "Apply": "engine.interventions", "Clamp": "engine.interventions", "Edit": "engine.interventions",
    "MeanAblate": "engine.interventions", "Patch": "engine.interventions", "ProjectOut": "engine.interventions",
    "Resample": "engine.interventions", "Scale": "engine.interventions", "Set": "engine.interventions", "Zero": "engine.interventions",
    "DEFAULT_MODEL": "engine.loading", "EMBEDDED": "engine.loading", "Batch": "engine.model", "Model": "engine.model",
    "cache_dir": "engine.cache", "load": "engine.loading",
    "GenerateResult": "engine.runner", "RunResult": "engine.runner", "generate": "engine.runner", "run": "engine.runner",
    "Site": "engine.sites",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'lmscope' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


__version__ = "0.2.0"

__all__ = [*_EXPORTS, "__version__"]
