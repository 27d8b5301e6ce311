"""Whole-number changes of voxel size: averaging down, label modes, and linear interpolation back up.

A model may work at a coarser voxel size than the data: mitochondria, nuclei or a first pass over
a large volume need context more than 5 nm detail. em-train averages its volumes down to
``data.model_voxel_size_nm``; em-predict averages each finer input down the same way, predicts
at the model's voxel size and interpolates the maps back onto the input's voxels.

Only whole-number factors (per axis, within :data:`TOLERANCE`): coarse voxel ``k`` covers the
fine voxels ``[k*f, (k+1)*f)`` of the *global* voxel grid, so the blocks and chunks of one volume
all cut the same coarse grid and agree with a whole-volume run. Coarse voxel centres sit at fine
coordinate ``(k + 0.5) * f - 0.5``; interpolation clamps at the edge of the coarse box it is given.

Pure numpy, no torch.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from emtools.tiling.geometry import Box

TOLERANCE = 0.05  # relative, as em-train --init's voxel-size check: 10.4 nm over 5 nm counts as 2
ONE = (1, 1, 1)

__all__ = ["ONE", "TOLERANCE", "coarse_box", "downsample_mean", "downsample_mode", "factors", "fine_box",
           "upsample_linear"]


def factors(fine_nm: Sequence[float], coarse_nm: Sequence[float]) -> tuple[int, int, int] | None:
    """``coarse / fine`` per axis when each is a whole number >= 1 (within :data:`TOLERANCE`), else None.

    Voxel sizes within the tolerance of each other give 1 (the same grid)."""
    out = []
    for fine, coarse in zip(fine_nm, coarse_nm):
        if fine <= 0 or coarse <= 0:
            return None
        ratio = float(coarse) / float(fine)
        whole = round(ratio)
        if whole < 1 or abs(ratio - whole) > TOLERANCE * whole:
            return None
        out.append(int(whole))
    return tuple(out)  # type: ignore[return-value]


def coarse_box(box: Box, f: Sequence[int]) -> Box:
    """The coarse voxels that touch any fine voxel of ``box`` (global grids)."""
    return Box(tuple(b // s for b, s in zip(box.begin, f)), tuple(-(-e // s) for e, s in zip(box.end, f)))


def fine_box(box: Box, f: Sequence[int]) -> Box:
    """The fine voxels that the coarse voxels of ``box`` cover."""
    return Box(tuple(b * s for b, s in zip(box.begin, f)), tuple(e * s for e, s in zip(box.end, f)))


def _blocks(array: np.ndarray, f: Sequence[int]) -> np.ndarray:
    """``(..., Z, fz, Y, fy, X, fx)`` view; the last three axes must be whole multiples of ``f``."""
    lead, zyx = array.shape[:-3], array.shape[-3:]
    if any(n % s for n, s in zip(zyx, f)):
        raise ValueError(f"shape {zyx} is not a multiple of {tuple(f)}")
    shape = list(lead)
    for n, s in zip(zyx, f):
        shape += [n // s, s]
    return array.reshape(shape)


def downsample_mean(array: np.ndarray, f: Sequence[int]) -> np.ndarray:
    """The mean of each ``f`` block of the last three axes, float32 (integer images: round it yourself)."""
    if tuple(f) == ONE:
        return np.asarray(array, dtype=np.float32)
    n = array.ndim
    view = _blocks(np.asarray(array, dtype=np.float32), f)
    return view.mean(axis=(n - 2, n, n + 2), dtype=np.float32)


def downsample_mode(labels: np.ndarray, f: Sequence[int]) -> np.ndarray:
    """The most frequent label of each ``f`` block of a (z, y, x) array; ties go to the smallest label.

    Labels are ids (neurons, instances, classes, masks): averaging them means nothing, the
    majority keeps thin objects where they hold most of a block and never invents an id."""
    if tuple(f) == ONE:
        return labels
    z, y, x = (n // s for n, s in zip(labels.shape, f))
    view = _blocks(labels, f).transpose(0, 2, 4, 1, 3, 5).reshape(z * y * x, math.prod(f))
    ordered = np.sort(view, axis=1)
    # run lengths in each sorted row: counts[i, j] = how often ordered[i, j] occurs in row i
    counts = np.zeros(ordered.shape, np.int32)
    for j in range(ordered.shape[1]):
        counts += ordered == ordered[:, j: j + 1]
    best = np.argmax(counts, axis=1)  # first maximum = the smallest of the most frequent labels
    return ordered[np.arange(ordered.shape[0]), best].reshape(z, y, x)


def upsample_linear(values: np.ndarray, values_box: Box, f: Sequence[int], out_box: Box,
                    clamp_box: Box | None = None) -> np.ndarray:
    """Linear interpolation of coarse ``values`` ((..., z, y, x) over the global coarse ``values_box``)
    at the fine voxels of ``out_box`` (global fine grid), float32.

    Coordinates beyond ``clamp_box`` (coarse; default ``values_box``) take its edge values, so a
    block of a volume and the whole volume agree when both clamp at the volume's coarse box. Each
    fine voxel needs the coarse voxels on either side of it: ``values_box`` must hold them (the
    coarse box of ``out_box`` grown by one, within ``clamp_box``)."""
    clamp = clamp_box or values_box
    out = np.asarray(values, dtype=np.float32)
    lead = out.ndim - 3
    for axis in range(3):
        s = int(f[axis])
        fine = np.arange(out_box.begin[axis], out_box.end[axis], dtype=np.float64)
        position = (fine + 0.5) / s - 0.5
        low = np.floor(position)
        weight = (position - low).astype(np.float32)
        low = low.astype(np.int64)
        lo_clamped = np.clip(low, clamp.begin[axis], clamp.end[axis] - 1) - values_box.begin[axis]
        hi_clamped = np.clip(low + 1, clamp.begin[axis], clamp.end[axis] - 1) - values_box.begin[axis]
        if lo_clamped.size and (lo_clamped.min() < 0 or hi_clamped.max() >= out.shape[lead + axis]):
            raise ValueError(f"values over {values_box} do not cover the fine box {out_box} along {'zyx'[axis]}")
        shape = [1] * out.ndim
        shape[lead + axis] = -1
        w = weight.reshape(shape)
        out = np.take(out, lo_clamped, axis=lead + axis) * (1 - w) + np.take(out, hi_clamped, axis=lead + axis) * w
    return out.astype(np.float32, copy=False)
