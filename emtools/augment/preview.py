"""A before/after montage of a few sections (RGB uint8), so a person sees what augmenting does.

Rows: the original first, then one row per augmented version; columns: the same sections
(evenly spaced in z) in every row. Labels, when given, are a translucent colour overlay (a
fixed colour per id, the same in every tile, so moved objects keep their colour). Pure numpy:
writing the PNG is the caller's business.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

GAP_PX = 4
GAP_VALUE = 255  # white lines between tiles
OVERLAY_ALPHA = 0.4


def preview_sections(depth: int, count: int = 4) -> list[int]:
    """Up to ``count`` distinct sections spread evenly from the first to the last."""
    return sorted({int(round(z)) for z in np.linspace(0, depth - 1, min(count, depth))})


def id_colours(ids: np.ndarray) -> np.ndarray:
    """A bright RGB colour (uint8, shape ids.shape + (3,)) for each id, from a hash of the id."""
    x = ids.astype(np.uint64)
    with np.errstate(over="ignore"):  # splitmix64: wrap-around multiplication is the point
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    channels = [((x >> np.uint64(8 * k)) & np.uint64(0xFF)).astype(np.uint16) for k in range(3)]
    return np.stack([(64 + c * 191 // 255).astype(np.uint8) for c in channels], axis=-1)


def _tile(section: np.ndarray, labels: np.ndarray | None, step: int) -> np.ndarray:
    grey = np.clip(section[::step, ::step], 0.0, 1.0)
    rgb = np.repeat((grey * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)
    if labels is not None:
        ids = labels[::step, ::step]
        fg = ids != 0
        colours = id_colours(ids[fg]).astype(np.float32)
        rgb[fg] = ((1 - OVERLAY_ALPHA) * rgb[fg] + OVERLAY_ALPHA * colours + 0.5).astype(np.uint8)
    return rgb


def montage(rows: Sequence[tuple[np.ndarray, np.ndarray | None]], sections: Sequence[int],
            max_tile_px: int = 256) -> np.ndarray:
    """RGB uint8 montage: one row per (image float [0, 1] (z, y, x), labels or None) in ``rows``,
    one column per section; tiles are subsampled to at most ``max_tile_px`` on their long side."""
    height, width = rows[0][0].shape[1:]
    step = max(1, -(-max(height, width) // max_tile_px))
    tiles = [[_tile(image[z], None if labels is None else labels[z], step) for z in sections]
             for image, labels in rows]
    th, tw = tiles[0][0].shape[:2]
    out = np.full((len(rows) * (th + GAP_PX) - GAP_PX, len(sections) * (tw + GAP_PX) - GAP_PX, 3),
                  GAP_VALUE, np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            out[r * (th + GAP_PX): r * (th + GAP_PX) + th, c * (tw + GAP_PX): c * (tw + GAP_PX) + tw] = tile
    return out
