"""The lmscope studio: a local web page over a JSON API (`lmscope studio MODEL`).

`create_app(model_name, model=...)` builds the FastAPI app; every tab of the page is backed by
one of the JSON endpoints documented in `docs/studio.md`. FastAPI is imported on first use of
`create_app`, so the CLI can read `lmscope.web.guard` without it.
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
