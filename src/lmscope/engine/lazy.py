"""Lazy re-exports for package `__init__` files (PEP 562): `import lmscope.neurons` stays
instant and torch-free until a name is used (the CLI's atlas search reads SQLite only)."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable, Callable]:
    """(`__getattr__`, `__dir__`) for `package` that import `names[name]` (a submodule of
    `package`) on first use of `name`."""

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(names)

    return __getattr__, __dir__
