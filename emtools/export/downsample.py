"""Resolution pyramids: which scales to build, and one 2x step of each downsampling method.

All arrays are z,y,x (or c,z,y,x, channels untouched); coordinates are *global voxel
coordinates* of the array's own scale (voxel 0 at 0 nm, as in :mod:`emtools.tiling.geometry`).
A step with factor ``f`` (per axis) maps voxel ``i`` of the coarser scale onto the block
``[i*f, (i+1)*f)`` of the finer one: blocks sit on the world grid, not on the array's corner,
so every scale lines up in nm even when the volume's offset is no multiple of ``f``::

    finer   |  .  .  |  o  o  |  o  o  |  o  .  |      (o: the array, . outside it)
    coarser |    -   |   *    |   *    |   *    |      begin = floor(begin/f), end = ceil(end/f)

A block that the array covers only partly takes its value from the voxels it does cover.

Methods (one registry: :data:`METHODS`, what ``em-export --seg-downsample`` offers):

- ``mean``: the average of the block (images, probability maps); integers are rounded half to
  even, floats stay float32.
- ``mode``: the most frequent value of the block, ties to the smallest (segmentations: keeps
  ids, never invents one; 0 is a value like any other).
- ``stride``: the block's first voxel (segmentations, fastest; thin objects may vanish).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from emtools.errors import EmError

__all__ = ["METHODS", "downsample", "plan_scales", "scale_box"]

# One step's output voxels per slab: bounds the temporaries of the mode (k*k comparisons each).
_SLAB_VOXELS = 1 << 20


def plan_scales(
    shape_zyx: Sequence[int],
    voxel_size_nm: Sequence[float],
    chunk_zyx: Sequence[int],
    max_scales: int | None = None,
) -> list[tuple[int, int, int]]:
    """The step factors (z,y,x) from each scale to the next; scale 0 is the input itself.

    Each step halves the axes whose voxels are at most half the coarsest voxel side (so an
    anisotropic 30,6,6 nm volume goes 30,12,12 -> 30,24,24 -> 60,48,48) or, once the voxels are
    near-isotropic, all axes; an axis one voxel thick is never halved. Steps stop when the
    whole volume fits one chunk, when nothing can be halved, or after ``max_scales`` scales.
    """
    if max_scales is not None and max_scales < 1:
        raise EmError(f"the number of scales must be at least 1, got {max_scales}")
    shape = [int(s) for s in shape_zyx]
    voxel = [float(v) for v in voxel_size_nm]
    steps: list[tuple[int, int, int]] = []
    while max_scales is None or len(steps) + 1 < max_scales:
        if all(s <= c for s, c in zip(shape, chunk_zyx)):
            break
        coarsest = max(voxel)
        factor = [2 if v * 2 <= coarsest * (1 + 1e-6) and s > 1 else 1 for v, s in zip(voxel, shape)]
        if factor == [1, 1, 1]:
            factor = [2 if s > 1 else 1 for s in shape]
        if factor == [1, 1, 1]:
            break
        steps.append(tuple(factor))  # type: ignore[arg-type]
        shape = [-(-s // f) for s, f in zip(shape, factor)]
        voxel = [v * f for v, f in zip(voxel, factor)]
    return steps


def scale_box(begin_zyx: Sequence[int], shape_zyx: Sequence[int], factor_zyx: Sequence[int]):
    """(begin, shape) at the coarser scale of an array at ``begin_zyx`` of ``shape_zyx``."""
    begin = tuple(int(b) // int(f) for b, f in zip(begin_zyx, factor_zyx))
    end = tuple(-(-(int(b) + int(s)) // int(f)) for b, s, f in zip(begin_zyx, shape_zyx, factor_zyx))
    return begin, tuple(e - b for b, e in zip(begin, end))


def _blocks(array: np.ndarray, begin_zyx, factor_zyx, fill) -> tuple[np.ndarray, np.ndarray]:
    """(values, valid) of shape (..., Z, Y, X, k): each coarse voxel's block, padded to whole blocks."""
    lead = array.shape[:-3]
    pre = [int(b) % int(f) for b, f in zip(begin_zyx, factor_zyx)]
    post = [(-(p + s)) % int(f) for p, s, f in zip(pre, array.shape[-3:], factor_zyx)]
    pad = [(0, 0)] * len(lead) + list(zip(pre, post))
    values = np.pad(array, pad, mode="constant", constant_values=fill)
    valid = np.pad(np.ones(array.shape[-3:], dtype=bool), list(zip(pre, post)), mode="constant")
    fz, fy, fx = (int(f) for f in factor_zyx)

    def split(a: np.ndarray) -> np.ndarray:
        z, y, x = a.shape[-3:]
        head = a.shape[:-3]
        a = a.reshape(head + (z // fz, fz, y // fy, fy, x // fx, fx))
        n = len(head)
        a = a.transpose(tuple(range(n)) + (n, n + 2, n + 4, n + 1, n + 3, n + 5))
        return a.reshape(head + (z // fz, y // fy, x // fx, fz * fy * fx))

    return split(values), split(valid)


def _mean(array: np.ndarray, begin_zyx, factor_zyx) -> np.ndarray:
    values, valid = _blocks(array, begin_zyx, factor_zyx, 0)
    total = values.sum(axis=-1, dtype=np.float64)
    mean = total / valid.sum(axis=-1)
    if np.issubdtype(array.dtype, np.integer):
        return np.rint(mean).astype(array.dtype)
    return mean.astype(array.dtype)


def _mode(array: np.ndarray, begin_zyx, factor_zyx) -> np.ndarray:
    if array.ndim != 3:
        raise EmError("the mode downsamples single-channel (z,y,x) labels only")
    values, valid = _blocks(array, begin_zyx, factor_zyx, 0)
    flat_values = values.reshape(-1, values.shape[-1])
    flat_valid = valid.reshape(-1, valid.shape[-1])
    out = np.empty(flat_values.shape[0], dtype=array.dtype)
    k = flat_values.shape[1]
    big = np.array(np.iinfo(array.dtype).max if np.issubdtype(array.dtype, np.integer) else np.inf, dtype=array.dtype)
    step = max(1, _SLAB_VOXELS // max(k, 1))
    for start in range(0, flat_values.shape[0], step):
        v = flat_values[start : start + step]
        ok = flat_valid[start : start + step]
        # counts[n, i]: how many valid voxels of block n equal voxel i (invalid voxels count -1)
        counts = ((v[:, :, None] == v[:, None, :]) & ok[:, None, :]).sum(axis=2, dtype=np.int32)
        counts[~ok] = -1
        best = counts.max(axis=1, keepdims=True)
        out[start : start + step] = np.where(counts == best, v, big).min(axis=1)
    return out.reshape(values.shape[:-1])


def _stride(array: np.ndarray, begin_zyx, factor_zyx) -> np.ndarray:
    # a block the array covers only partly starts at the array's first voxel: pad by repeating it
    pre = [int(b) % int(f) for b, f in zip(begin_zyx, factor_zyx)]
    lead = array.ndim - 3
    padded = np.pad(array, [(0, 0)] * lead + [(p, 0) for p in pre], mode="edge")
    return np.ascontiguousarray(padded[(Ellipsis,) + tuple(slice(None, None, int(f)) for f in factor_zyx)])


METHODS: dict[str, Callable[[np.ndarray, Sequence[int], Sequence[int]], np.ndarray]] = {
    "mean": _mean,
    "mode": _mode,
    "stride": _stride,
}


def downsample(array: np.ndarray, begin_zyx: Sequence[int], factor_zyx: Sequence[int], method: str):
    """One step: (coarser array, its begin) for ``array`` at global voxel ``begin_zyx``."""
    if method not in METHODS:
        raise EmError(f"unknown downsampling method {method!r}; choose {', '.join(METHODS)}")
    if any(int(f) < 1 for f in factor_zyx):
        raise EmError(f"downsampling factors must be >= 1, got {','.join(str(f) for f in factor_zyx)}")
    out = METHODS[method](array, begin_zyx, factor_zyx)
    begin, shape = scale_box(begin_zyx, array.shape[-3:], factor_zyx)
    assert out.shape[-3:] == shape, (out.shape, shape)
    return out, begin
