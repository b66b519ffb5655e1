"""matplotlib, headless, and one way to write a figure or a page (shared by every plot module).

`save` and `save_text` write atomically, as the artifacts do (`lmscope.engine.artifacts`): into
a temporary file beside the target, then `os.replace`, so a reader never sees half a PNG and a
killed run leaves the previous file in place.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path

from lmscope.engine.artifacts import atomic_write


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed; imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def plain_text():
    """Mathtext off while a figure is built and saved (text objects read the setting when made, tick
    labels at draw time): a token or prompt such as "$x$" or "$\\frac{$" is drawn as typed instead
    of parsed (or failing to parse)."""
    with pyplot().rc_context({"text.parse_math": False}):
        yield


def literal_text(fn):
    """Decorator of a plot function: the whole function runs inside `plain_text()`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plain_text():
            return fn(*args, **kwargs)

    return wrapper


def save(fig, path, *, bbox_tight: bool = False, dpi: int = 120) -> Path:
    """Write `fig` to `path` atomically (parents created; the format from the suffix, PNG
    when there is none), close it, return the path.

    The layout is tightened unless the figure has a layout engine of its own
    (`constrained_layout=True`) or `bbox_tight` crops it at save time instead.
    """
    fmt = Path(path).suffix.lstrip(".").lower() or "png"

    def write(tmp: Path) -> None:
        fig.savefig(tmp, format=fmt, dpi=dpi, **({"bbox_inches": "tight"} if bbox_tight else {}))

    try:
        with warnings.catch_warnings():  # tokens in scripts the default font lacks (CJK...) still plot as boxes
            warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
            if not bbox_tight and fig.get_layout_engine() is None:
                fig.tight_layout()
            return atomic_write(path, write)
    finally:
        pyplot().close(fig)


def save_text(text: str, path) -> Path:
    """Write a page (UTF-8) to `path` atomically (parents created); return the path."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
