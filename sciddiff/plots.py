"""Figures that commands write beside their results: matplotlib on its non-interactive Agg backend (no display
needed), each PNG written atomically (a temporary sibling renamed into place, never a half-written file)."""
from __future__ import annotations

import os
from pathlib import Path


def pyplot():
    """`matplotlib.pyplot`, on the Agg backend; imported on first use (0.45-0.53 s on the
    2-core dev machine, 2026-12-05), so commands that draw nothing never pay for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Lay `fig` out (`tight_layout`), write it to `path` as a PNG atomically and close it; returns the path."""
    from sciddiff.train.checkpoint import atomic_file

    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi)
    pyplot().close(fig)
    return Path(path)
