"""matplotlib, headless, and one way to write a figure (shared by every plot module)."""

from __future__ import annotations

import warnings
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed; imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path, *, bbox_tight: bool = False, dpi: int = 120) -> Path:
    """Write `fig` to `path` (parents created), close it, return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # tokens in scripts the default font lacks (CJK...) still plot as boxes
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        if bbox_tight:
            fig.savefig(path, dpi=dpi, bbox_inches="tight")
        else:
            fig.tight_layout()
            fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path
