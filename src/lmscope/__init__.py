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
    "FAMILIES": "arch", "ArchSpec": "arch", "register_family": "arch",
    "ArtifactError": "errors", "InputError": "errors", "LmscopeError": "errors",
    "ModelNotFound": "errors", "SiteError": "errors", "UnsupportedArchitecture": "errors",
    "Cache": "hooks", "capture": "hooks", "hooked": "hooks", "intervene": "hooks",
    "Add": "interventions", "Apply": "interventions", "Clamp": "interventions", "Edit": "interventions",
    "MeanAblate": "interventions", "Patch": "interventions", "ProjectOut": "interventions",
    "Resample": "interventions", "Scale": "interventions", "Set": "interventions", "Zero": "interventions",
    "DEFAULT_MODEL": "models", "EMBEDDED": "models", "Batch": "models", "Model": "models",
    "cache_dir": "models", "load": "models",
    "GenerateResult": "runner", "RunResult": "runner", "generate": "runner", "run": "runner",
    "Site": "sites",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'lmscope' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


__version__ = "0.1.0"

__all__ = [*_EXPORTS, "__version__"]
