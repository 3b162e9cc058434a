"""matplotlib, set up once for every figure ex2 draws: the Agg backend (no display needed), and
PNGs written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ex2.core.io import atomic_open


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: matplotlib is slow to load)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path, dpi: int = 100, **savefig: Any) -> Path:
    """Write ``fig`` as a PNG through :func:`ex2.core.io.atomic_open`, then close it."""
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi, **savefig)
    pyplot().close(fig)
    return Path(path)
