"""The lmscope studio: a local web page over a JSON API (`lmscope studio MODEL`).

`create_app(model_name, model=...)` builds the FastAPI app; every tab of the page is backed by
one of the JSON endpoints documented in `docs/studio.md`.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
