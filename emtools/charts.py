"""What every PNG chart needs: matplotlib (imported only when a chart is asked for) and an atomic save.

Used by em-profile's layer and summary charts and em-train's curves.
"""

from __future__ import annotations

from emtools import io
from emtools.errors import EmError


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display), or a one-line error when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EmError("plots need matplotlib (pip install matplotlib, or make install's plot extra)") from None
    return plt


def save_figure(fig, path: str, dpi: int = 110) -> str:
    """Write ``fig`` as PNG to ``path`` atomically (the old file or none if it fails); returns ``path``."""
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path
