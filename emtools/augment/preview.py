"""A before/after montage of a few sections (RGB uint8), so a person sees what augmenting does.

Rows: the original first, then one row per augmented version; columns: the same sections
(evenly spaced in z) in every row. Labels, when given, are a translucent colour overlay (a
fixed colour per id, the same in every tile, so moved objects keep their colour). Built from
the shared drawing pieces of :mod:`emtools.pictures`; writing the PNG is the caller's business.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from emtools.pictures.drawing import (
    MAX_TILE_PX,
    grey_rgb,
    grid,
    overlay_labels,
    shrink_labels,
    shrink_mean,
    shrink_step,
    spread_sections,
)

__all__ = ["montage", "preview_sections"]

preview_sections = spread_sections  # the name em-augment has always used


def _tile(section: np.ndarray, labels: np.ndarray | None, step: int) -> np.ndarray:
    rgb = grey_rgb(shrink_mean(section, step))
    return rgb if labels is None else overlay_labels(rgb, shrink_labels(labels, step))


def montage(rows: Sequence[tuple[np.ndarray, np.ndarray | None]], sections: Sequence[int],
            max_tile_px: int = MAX_TILE_PX) -> np.ndarray:
    """RGB uint8 montage: one row per (image float [0, 1] (z, y, x), labels or None) in ``rows``,
    one column per section; tiles are shrunk (block means; labels: every step-th id) to at most
    ``max_tile_px`` on their long side."""
    step = shrink_step(rows[0][0].shape[1:], max_tile_px=max_tile_px, max_picture_px=1 << 30)
    return grid([[_tile(image[z], None if labels is None else labels[z], step) for z in sections]
                 for image, labels in rows])
