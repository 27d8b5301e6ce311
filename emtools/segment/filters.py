"""Compiled image filters for the watershed's seeds, so em-watershed never imports scipy.

``maximum_filter``: the maximum over a box, separably along z, y, x, with the van Herk /
Gil-Werman algorithm (3 comparisons per voxel and axis, whatever the box size). Voxels outside
the volume do not count, which for a maximum is exactly scipy's ``mode="nearest"``; the result
equals ``scipy.ndimage.maximum_filter(volume, size, mode="nearest")`` for odd sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emtools.errors import EmError
from emtools.native import helper, kernel


def maximum_filter(volume: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Box maximum of a 3D float32 volume over odd ``size`` (z, y, x) voxels; a new array."""
    sizes = [int(s) for s in size]
    if len(sizes) != 3 or any(s < 1 or s % 2 == 0 for s in sizes):
        raise EmError(f"maximum filter sizes must be 3 odd positive numbers, got {list(size)}")
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise EmError(f"maximum filter needs a 3D volume, got shape {volume.shape}")
    out = np.array(volume, dtype=np.float32, order="C", copy=True)
    if out.size:
        _box_maximum(out, sizes[0] // 2, sizes[1] // 2, sizes[2] // 2)
    return out


@helper
def _line_maximum(flat, start, stride, n, radius, padded, prefix, suffix):
    """The line ``flat[start::stride][:n]`` <- its max over the window i-radius..i+radius, in place.

    van Herk / Gil-Werman: the line padded with -inf by ``radius`` on both sides is cut into
    blocks of the window's width; a window then spans at most two blocks, so its maximum is
    the max of the suffix maximum in one and the prefix maximum in the next.
    """
    width = 2 * radius + 1
    total = ((n + 2 * radius + width - 1) // width) * width  # whole blocks only
    for j in range(total):
        padded[j] = -np.inf
    for i in range(n):
        padded[i + radius] = flat[start + i * stride]
    for first in range(0, total, width):
        last = first + width - 1
        prefix[first] = padded[first]
        for j in range(first + 1, last + 1):
            prefix[j] = max(prefix[j - 1], padded[j])
        suffix[last] = padded[last]
        for j in range(last - 1, first - 1, -1):
            suffix[j] = max(suffix[j + 1], padded[j])
    for i in range(n):
        flat[start + i * stride] = max(suffix[i], prefix[i + width - 1])


@kernel("f4[:,:,::1], i8, i8, i8")
def _box_maximum(out, rz, ry, rx):
    nz, ny, nx = out.shape
    plane = ny * nx
    flat = out.reshape(-1)
    longest = max(nz, max(ny, nx))
    widest = 2 * max(rz, max(ry, rx)) + 1
    room = longest + 2 * widest
    padded = np.empty(room, np.float32)
    prefix = np.empty(room, np.float32)
    suffix = np.empty(room, np.float32)
    if rx > 0:  # lines along x start at every (z, y)
        for start in range(0, flat.size, nx):
            _line_maximum(flat, start, 1, nx, rx, padded, prefix, suffix)
    if ry > 0:  # along y at every (z, x): neighbouring x share cache lines
        for z in range(nz):
            for x in range(nx):
                _line_maximum(flat, z * plane + x, nx, ny, ry, padded, prefix, suffix)
    if rz > 0:  # along z at every (y, x)
        for start in range(plane):
            _line_maximum(flat, start, plane, nz, rz, padded, prefix, suffix)
