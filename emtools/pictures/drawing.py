"""Pure numpy drawing: grey levels, tiles shrunk to a bounded size, id colours, outlines, tints, grids.

Everything here takes and returns numpy arrays (RGB pictures are ``(y, x, 3)`` uint8); nothing
reads or writes files, so the same inputs always give the same pixels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from emtools.errors import EmError

# Every tile's long side is at most this many pixels (sections are shrunk by a whole step).
MAX_TILE_PX = 256
# ... and the whole picture's sides at most this many (many rows shrink every tile further).
MAX_PICTURE_PX = 4096
GAP_PX = 4
GAP_VALUE = 255  # white lines between tiles
LABEL_ALPHA = 0.4  # weight of an id's colour over the background
# Grey levels of integer images other than uint8, and of floats outside [0, 1], are stretched so
# that these percentiles (of all the sections shown) span black to white.
STRETCH_PERCENTILES = (0.5, 99.5)


def spread_sections(depth: int, count: int = 4) -> list[int]:
    """Up to ``count`` distinct sections (0-based) spread evenly from the first to the last."""
    if depth < 1 or count < 1:
        raise EmError(f"need at least one section to show, got depth {depth} and count {count}")
    return sorted({int(round(z)) for z in np.linspace(0, depth - 1, min(count, depth))})


def shrink_step(shape_yx: Sequence[int], rows: int = 1, columns: int = 1, max_tile_px: int = MAX_TILE_PX,
                max_picture_px: int = MAX_PICTURE_PX) -> int:
    """The smallest whole step that keeps a tile within ``max_tile_px`` and a grid of ``rows`` x
    ``columns`` such tiles (with :data:`GAP_PX` gaps) within ``max_picture_px`` on each side."""
    height, width = (int(s) for s in shape_yx)
    if min(height, width, rows, columns, max_tile_px) < 1:
        raise EmError(f"cannot lay out {rows}x{columns} tiles of {height}x{width} pixels")
    limit_y = min(max_tile_px, (max_picture_px - (rows - 1) * GAP_PX) // rows)
    limit_x = min(max_tile_px, (max_picture_px - (columns - 1) * GAP_PX) // columns)
    if min(limit_y, limit_x) < 1:
        raise EmError(f"{rows}x{columns} tiles do not fit in a {max_picture_px}-pixel picture")
    return max(1, -(-height // limit_y), -(-width // limit_x))


def shrink_mean(section: np.ndarray, step: int) -> np.ndarray:
    """Float32 mean of each ``step`` x ``step`` block of the last two axes (the blocks at the far
    edges may be smaller); the output has ceil(y / step) x ceil(x / step) pixels."""
    values = np.asarray(section, dtype=np.float64)
    if step == 1:
        return values.astype(np.float32)
    height, width = values.shape[-2:]
    starts_y, starts_x = np.arange(0, height, step), np.arange(0, width, step)
    sums = np.add.reduceat(np.add.reduceat(values, starts_y, axis=-2), starts_x, axis=-1)
    counts = np.outer(np.diff(np.append(starts_y, height)), np.diff(np.append(starts_x, width)))
    return (sums / counts).astype(np.float32)


def shrink_labels(labels: np.ndarray, step: int) -> np.ndarray:
    """Every ``step``-th id along the last two axes (ids are never averaged): the same pixel grid
    as :func:`shrink_mean`."""
    return labels[..., ::step, ::step]


def unit_grey(stack: np.ndarray, value_range: Sequence[float] | None = None, dtype=None) -> np.ndarray:
    """Values in [0, 1] (float32) for display.

    ``dtype``: the type of the values as stored, when ``stack`` is already shrunk to floats
    (default: ``stack.dtype``). ``value_range`` (lo, hi) maps lo to 0 and hi to 1 (em-predict
    records it with its float maps); otherwise uint8 is value / 255, booleans 0/1, floats in
    [0, 1] stay, and anything else is stretched between the :data:`STRETCH_PERCENTILES` of
    ``stack`` (give all the sections shown together, so that they share one scale).
    """
    stack = np.asarray(stack)
    dtype = np.dtype(dtype) if dtype is not None else stack.dtype
    if value_range is not None:
        lo, hi = float(value_range[0]), float(value_range[1])
        if not hi > lo:
            raise EmError(f"a value range needs lo < hi, got {lo:g}, {hi:g}")
        out = (stack.astype(np.float64) - lo) / (hi - lo)
    elif dtype == np.uint8:
        out = stack / 255.0
    elif dtype == np.bool_:
        out = stack.astype(np.float64)
    else:
        values = stack.astype(np.float64)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return np.zeros(stack.shape, np.float32)
        if dtype.kind == "f" and finite.min() >= 0.0 and finite.max() <= 1.0:
            out = values
        else:
            lo, hi = np.percentile(finite, STRETCH_PERCENTILES)
            out = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0).astype(np.float32)


def grey_rgb(unit: np.ndarray) -> np.ndarray:
    """A (y, x) image in [0, 1] as RGB uint8 grey."""
    grey = (np.clip(unit, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def channels_rgb(unit: np.ndarray) -> np.ndarray:
    """The first three channels of a (c, y, x) map in [0, 1] as red, green, blue (missing ones
    black); one channel is grey."""
    if unit.shape[0] == 1:
        return grey_rgb(unit[0])
    rgb = np.zeros(unit.shape[1:] + (3,), np.uint8)
    for c in range(min(3, unit.shape[0])):
        rgb[..., c] = (np.clip(unit[c], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return rgb


def flat_rgb(shape_yx: Sequence[int], value: int) -> np.ndarray:
    """A neutral grey tile."""
    return np.full(tuple(shape_yx) + (3,), value, np.uint8)


def id_colours(ids: np.ndarray) -> np.ndarray:
    """A bright RGB colour (uint8, shape ids.shape + (3,)) for each id, from a hash of the id: the
    same id gets the same colour in every picture, neighbouring ids unrelated ones."""
    x = np.asarray(ids).astype(np.uint64)
    with np.errstate(over="ignore"):  # splitmix64: wrap-around multiplication is the point
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    channels = [((x >> np.uint64(8 * k)) & np.uint64(0xFF)).astype(np.uint16) for k in range(3)]
    return np.stack([(64 + c * 191 // 255).astype(np.uint8) for c in channels], axis=-1)


def tint(rgb: np.ndarray, mask: np.ndarray, colour, alpha: float) -> np.ndarray:
    """``rgb`` with the pixels of ``mask`` blended towards ``colour`` (one RGB triple, or one per
    masked pixel) with weight ``alpha``: round((1 - alpha) * pixel + alpha * colour)."""
    out = rgb.copy()
    colour = np.asarray(colour, np.float64)
    out[mask] = ((1.0 - alpha) * rgb[mask] + alpha * colour + 0.5).astype(np.uint8)
    return out


def overlay_labels(rgb: np.ndarray, labels: np.ndarray, alpha: float = LABEL_ALPHA) -> np.ndarray:
    """Each labelled pixel (id != 0) tinted with its id's colour (:func:`id_colours`); 0 stays."""
    labelled = labels != 0
    return tint(rgb, labelled, id_colours(labels[labelled]), alpha)


def outline_mask(labels: np.ndarray) -> np.ndarray:
    """The pixels on an outline: those whose right or lower neighbour holds another id (lines one
    pixel wide, on the upper/left side of each boundary)."""
    mask = np.zeros(labels.shape, bool)
    mask[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    mask[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return mask


def draw_outlines(rgb: np.ndarray, labels: np.ndarray, colour) -> np.ndarray:
    """``rgb`` with the outlines of ``labels`` (:func:`outline_mask`) painted in ``colour``."""
    out = rgb.copy()
    out[outline_mask(labels)] = colour
    return out


def grid(tiles: Sequence[Sequence[np.ndarray]], gap_px: int = GAP_PX, gap_value: int = GAP_VALUE) -> np.ndarray:
    """Equal-sized RGB tiles laid out in rows (outer sequence) and columns, ``gap_px`` apart."""
    if not tiles or not tiles[0]:
        raise EmError("a grid needs at least one tile")
    height, width = tiles[0][0].shape[:2]
    columns = max(len(row) for row in tiles)
    out = np.full((len(tiles) * (height + gap_px) - gap_px, columns * (width + gap_px) - gap_px, 3),
                  gap_value, np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            if tile.shape != (height, width, 3) or tile.dtype != np.uint8:
                raise EmError(f"grid tiles must all be {height}x{width}x3 uint8, got {tile.dtype} {tile.shape}")
            y, x = r * (height + gap_px), c * (width + gap_px)
            out[y: y + height, x: x + width] = tile
    return out
