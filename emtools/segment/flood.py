"""The compiled core of the watershed: quantised heights and bucket-queue flooding.

Used by :mod:`emtools.segment.watershed` (which documents the algorithm); kept apart so that module
reads as the pipeline. Everything here works in place on arrays the caller allocated.
"""

from __future__ import annotations

import numpy as np

from emtools.errors import EmError
from emtools.native import helper, kernel
from emtools.segment.structures import heap_pop, heap_push, heap_reserve

FLOAT_LEVELS = 65536


# ----------------------------------------------------------------------------- input checks

def as_unit_float(array: np.ndarray, name: str) -> np.ndarray:
    """float32 view of a map in [0, 1]: uint8 is scaled by 1/255; float must be finite, in [0, 1]."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array.astype(np.float32) * np.float32(1.0 / 255.0)
    if array.dtype.kind != "f":
        raise EmError(f"{name} must be float32, float16 or uint8 (0..255), got {array.dtype}")
    array = array.astype(np.float32, copy=False)
    check_unit_range(array, name)
    return array


def check_unit_range(array: np.ndarray, name: str) -> None:
    """One-line errors for NaN, Inf or values outside [0, 1] in a float map."""
    if array.dtype.kind != "f" or array.size == 0:
        return
    lo, hi = min_max(array.reshape(-1))
    if np.isnan(lo) or np.isnan(hi):
        raise EmError(f"{name} contain NaN")
    if np.isinf(lo) or np.isinf(hi):
        raise EmError(f"{name} contain Inf")
    if lo < 0.0 or hi > 1.0:
        raise EmError(f"{name} must lie in [0, 1] for float input, found values in [{lo:g}, {hi:g}]")


@kernel("f4[::1]", "f8[::1]")
def min_max(flat):
    """(min, max), or NaN if any value is NaN (one pass, no temporaries)."""
    lo = np.inf
    hi = -np.inf
    for i in range(flat.size):
        v = flat[i]
        if v != v:
            return np.nan, np.nan
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    return lo, hi


# ----------------------------------------------------------------------------- heights

def quantize(height: np.ndarray, levels: int = FLOAT_LEVELS) -> tuple[np.ndarray, int]:
    """Heights as integer levels for the bucket queue: ``(uint16 array, number of levels)``.

    uint8 and uint16 input is used as is (256 / 65536 levels); float input in [0, 1] becomes
    ``round(h * (levels - 1))``.
    """
    height = np.asarray(height)
    if height.dtype == np.uint8:
        return height.astype(np.uint16), 256
    if height.dtype == np.uint16:
        return np.ascontiguousarray(height), 65536
    if not 2 <= levels <= 65536:
        raise EmError(f"levels must be in 2..65536, got {levels}")
    height = as_unit_float(height, "heights")
    out = np.empty(height.shape, np.uint16)
    _quantize(height.reshape(-1), np.float32(levels - 1), out.reshape(-1))
    return out, levels


@kernel("f4[::1], f4, u2[::1]")
def _quantize(flat, scale, out):
    for i in range(flat.size):
        out[i] = np.uint16(flat[i] * scale + np.float32(0.5))


# Packed voxel state for the flooding: one uint64 per voxel holds the level (bits 0-15), an
# "outside the mask" flag (bit 16) and the label (bits 17-63), so each neighbour visit reads
# one word: about 1.5x faster than separate label / level / mask arrays on large volumes.
_LEVEL_MASK = np.uint64(0xFFFF)
_STATE_SHIFT = np.uint64(16)  # state >> 16 == 0  <=>  unlabelled and inside the mask
_LABEL_SHIFT = np.uint64(17)
MAX_LABEL = 2**47 - 1


def flood_labels(levels_array, labels, mask8, use_mask, use_z, n_levels, exact=False):
    """Flood ``labels`` (C-contiguous uint64, overwritten) from its non-zero voxels."""
    if labels.size and int(labels.max()) > MAX_LABEL:
        raise EmError(f"labels must be below 2^47 for the watershed, got {int(labels.max())}")
    index_dtype = np.int32 if labels.size < 2**31 - 1 else np.int64
    queue = np.empty(labels.size, index_dtype)
    if exact:
        _pack(levels_array, labels, mask8, use_mask)
        _flood_exact(labels, use_z, n_levels, queue)
    else:
        # Room for every voxel, but np.empty pages are only mapped when written, and the FIFO
        # restarts whenever it empties: physical memory follows the largest dip, usually small.
        dips = np.empty(labels.size, index_dtype)
        _pack(levels_array, labels, mask8, use_mask)
        _flood_fast(labels, use_z, n_levels, queue, dips)
        del dips
    del queue
    _unpack(labels)


@kernel("u2[:,:,::1], u8[:,:,::1], u1[:,:,::1], b1")
def _pack(levels_array, labels, mask, use_mask):
    lev = levels_array.reshape(-1)
    lab = labels.reshape(-1)
    msk = mask.reshape(-1)
    for p in range(lab.size):
        if use_mask and msk[p] == 0:
            lab[p] = np.uint64(lev[p]) | (np.uint64(1) << _STATE_SHIFT)
        else:
            lab[p] = np.uint64(lev[p]) | (lab[p] << _LABEL_SHIFT)


@kernel("u8[:,:,::1]")
def _unpack(labels):
    lab = labels.reshape(-1)
    for p in range(lab.size):
        lab[p] = lab[p] >> _LABEL_SHIFT


@helper
def _neighbour(p, k, z, y, x, nz, ny, nx, plane, use_z):
    """Raveled index of neighbour ``k`` of voxel p (order -z, -y, -x, +x, +y, +z), or -1."""
    if k == 0:
        return p - plane if use_z and z > 0 else -1
    if k == 1:
        return p - nx if y > 0 else -1
    if k == 2:
        return p - 1 if x > 0 else -1
    if k == 3:
        return p + 1 if x < nx - 1 else -1
    if k == 4:
        return p + nx if y < ny - 1 else -1
    return p + plane if use_z and z < nz - 1 else -1


@helper
def _start_flood(st, use_z, n_levels, queue):
    """Lay out one FIFO per level in ``queue`` (a counting sort) and push the seeds.

    Every voxel is pushed at most once (when it is labelled), at its own level, so each level's
    FIFO gets a fixed, contiguous stretch of ``queue``: pushes and pops stream through memory
    instead of chasing links. Only seeds with an unlabelled neighbour are pushed (the others
    would add nothing). Returns the FIFOs' read and write positions and the lowest level.
    """
    nz, ny, nx = st.shape
    plane = ny * nx
    flat = st.reshape(-1)
    n = flat.size
    start = np.zeros(n_levels + 1, np.int64)
    for p in range(n):
        start[np.int64(flat[p] & _LEVEL_MASK) + 1] += 1
    for level in range(n_levels):
        start[level + 1] += start[level]
    read = start[:n_levels].copy()
    write = start[:n_levels].copy()
    current = n_levels
    for p in range(n):
        if (flat[p] >> _LABEL_SHIFT) == 0:
            continue
        z = p // plane
        r = p - z * plane
        y = r // nx
        x = r - y * nx
        grows = False
        for k in range(6):
            q = _neighbour(p, k, z, y, x, nz, ny, nx, plane, use_z)
            if q >= 0 and (flat[q] >> _STATE_SHIFT) == 0:
                grows = True
                break
        if not grows:
            continue
        level = np.int64(flat[p] & _LEVEL_MASK)
        queue[write[level]] = p
        write[level] += 1
        if level < current:
            current = level
    return read, write, current


@kernel("u8[:,:,::1], b1, i8, i4[::1], i4[::1]", "u8[:,:,::1], b1, i8, i8[::1], i8[::1]")
def _flood_fast(state, use_z, n_levels, queue, dips):
    """Flood the packed ``state`` in place, lowest level first (Meyer's monotone flooding).

    A voxel reached below the current level (a dip behind a ridge) goes to the FIFO ``dips``
    (one slot per voxel; restarted whenever it empties), which is served before the level goes
    on. Neighbour order: -z, -y, -x, +x, +y, +z.
    """
    nz, ny, nx = state.shape
    plane = ny * nx
    st = state.reshape(-1)
    label_bits_mask = ~_LEVEL_MASK
    read, write, current = _start_flood(state, use_z, n_levels, queue)
    dips_read = 0
    dips_size = 0
    while True:
        if dips_size > dips_read:
            p = np.int64(dips[dips_read])
            dips_read += 1
            if dips_read == dips_size:
                dips_read = 0
                dips_size = 0
        else:
            while current < n_levels and read[current] == write[current]:
                current += 1
            if current >= n_levels:
                return
            p = np.int64(queue[read[current]])
            read[current] += 1
        label_bits = st[p] & label_bits_mask
        z = p // plane
        r = p - z * plane
        y = r // nx
        x = r - y * nx
        for k in range(6):
            q = _neighbour(p, k, z, y, x, nz, ny, nx, plane, use_z)
            if q < 0:
                continue
            sq = st[q]
            if (sq >> _STATE_SHIFT) != 0:
                continue
            st[q] = sq | label_bits
            level = np.int64(sq & _LEVEL_MASK)
            if level >= current:
                queue[write[level]] = q
                write[level] += 1
            else:
                dips[dips_size] = q
                dips_size += 1


@kernel("u8[:,:,::1], b1, i8, i4[::1]", "u8[:,:,::1], b1, i8, i8[::1]")
def _flood_exact(state, use_z, n_levels, queue):
    """As :func:`_flood_fast`, but dips come from a heap keyed (level, push time): exactly the
    order of one global priority queue, as scikit-image's watershed (on the same levels)."""
    nz, ny, nx = state.shape
    plane = ny * nx
    st = state.reshape(-1)
    label_bits_mask = ~_LEVEL_MASK
    read, write, current = _start_flood(state, use_z, n_levels, queue)
    # the dips' heap: (level, push time, voxel), so equal levels come out first-in first-out
    levels = np.empty(1024, np.int64)
    ages = np.empty(1024, np.int64)
    voxels = np.empty(1024, np.int64)
    size = 0
    age = np.int64(0)
    while True:
        if size > 0:
            p = heap_pop(levels, ages, voxels, size)[2]
            size -= 1
        else:
            while current < n_levels and read[current] == write[current]:
                current += 1
            if current >= n_levels:
                return
            p = np.int64(queue[read[current]])
            read[current] += 1
        label_bits = st[p] & label_bits_mask
        z = p // plane
        r = p - z * plane
        y = r // nx
        x = r - y * nx
        for k in range(6):
            q = _neighbour(p, k, z, y, x, nz, ny, nx, plane, use_z)
            if q < 0:
                continue
            sq = st[q]
            if (sq >> _STATE_SHIFT) != 0:
                continue
            st[q] = sq | label_bits
            level = np.int64(sq & _LEVEL_MASK)
            if level >= current:
                queue[write[level]] = q
                write[level] += 1
            else:
                levels, ages, voxels = heap_reserve(levels, ages, voxels, size)
                heap_push(levels, ages, voxels, size, level, age, np.int64(q))
                size += 1
            age += 1
