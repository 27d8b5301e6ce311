"""Local shape descriptors (LSDs): an auxiliary learning target for neuron segmentation.

After Sheridan et al. 2022 ("Local shape descriptors for neuron segmentation", Nature Methods):
every voxel ``v`` of object ``k`` is described by the statistics of the part of ``k`` that a
Gaussian window ``G`` (standard deviation ``sigma_nm``) centred on ``v`` sees::

    mass     M0(v)     = sum_u G(u - v) [u in k]
    mean     mu(v)     = sum_u G(u - v) [u in k] (u - v)          / M0(v)      (nm, per axis)
    spread   S_ab(v)   = sum_u G(u - v) [u in k] (u - v)_a (u - v)_b / M0(v) - mu_a mu_b

A network that must predict these learns where the object's bulk lies, how it is oriented and
how thick it is, beyond "is there a membrane here": the paper found affinities trained beside
them split and merge less. All sums are separable (``G`` and its first/second moments are
products of 1D kernels), so each object costs 19 one-dimensional correlations over its bounding
box grown by the window's reach, computed on a grid ``downsample`` times coarser where the window
is wide enough for it (the descriptors are smooth on the scale of ``sigma``).

Channels (3D; ``mode="2d"`` drops z and computes per section: 2 + 3 + 1 = 6), float32 in [0, 1]:

=====  =====================  =================================================
index  name                   value
=====  =====================  =================================================
0-2    mean offset z, y, x    0.5 + mu_a / (2 sigma), clipped
3-5    variance zz, yy, xx    S_aa / sigma^2 (1 for an object filling the window)
6-8    covariance zy, zx, yx  0.5 + S_ab / (2 sigma^2)
9      size                   M0 / sum G: the share of the window the object fills
=====  =====================  =================================================

Background (label 0) is all zeros, which no object voxel has (its size is > 0). Pure numpy and
scipy: em-train's loader computes it per sample, without torch.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
from scipy import ndimage

from emtools.errors import EmError

__all__ = ["channel_names", "lsd_channels", "local_shape_descriptors"]

TRUNCATE = 3.0  # the window reaches 3 sigma (99.7% of a 1D Gaussian's mass)


def _axes(mode: str) -> tuple[int, ...]:
    return (0, 1, 2) if mode == "3d" else (1, 2)


def _channels(n: int) -> int:
    """n mean offsets, n variances, n(n-1)/2 covariances and the size, for n axes."""
    return n + n + n * (n - 1) // 2 + 1


def lsd_channels(mode: str = "3d") -> int:
    """10 in 3D, 6 per section (2d)."""
    return _channels(len(_axes(mode)))


def channel_names(mode: str = "3d") -> list[str]:
    letters = ["zyx"[a] for a in _axes(mode)]
    pairs = [a + b for a, b in combinations(letters, 2)]
    return ([f"offset_{a}" for a in letters] + [f"var_{a}{a}" for a in letters]
            + [f"cov_{p}" for p in pairs] + ["size"])


def _factors(voxel_size_nm, sigma_nm: float, downsample: int, axes) -> tuple[int, ...]:
    """Per axis, the coarsening used: at most ``downsample``, and only while the window spans at
    least 2 coarse voxels per sigma (an anisotropic z axis is usually left alone)."""
    out = [1, 1, 1]
    for a in axes:
        out[a] = max(1, min(int(downsample), int(sigma_nm / (2.0 * voxel_size_nm[a]))))
    return tuple(out)


def _kernels(step_nm: float, sigma_nm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The window's 1D factor and its first and second moments, sampled every ``step_nm``."""
    reach = max(1, int(math.ceil(TRUNCATE * sigma_nm / step_nm)))
    d_nm = np.arange(-reach, reach + 1, dtype=np.float64) * step_nm
    g = np.exp(-0.5 * (d_nm / sigma_nm) ** 2)
    return tuple(k.astype(np.float32) for k in (g, d_nm * g, d_nm * d_nm * g))  # type: ignore[return-value]


def _pool(mask: np.ndarray, factors) -> np.ndarray:
    """Block means of a 0/1 mask (the fraction of each coarse voxel the object fills)."""
    if factors == (1, 1, 1):
        return mask.astype(np.float32)
    shape = mask.shape
    padded = [-(-n // f) * f for n, f in zip(shape, factors)]
    grid = np.zeros(padded, np.float32)
    grid[: shape[0], : shape[1], : shape[2]] = mask
    grid = grid.reshape(padded[0] // factors[0], factors[0], padded[1] // factors[1], factors[1],
                        padded[2] // factors[2], factors[2])
    return grid.mean(axis=(1, 3, 5))


def _moments(mass: np.ndarray, kernels, axes) -> dict[tuple[int, ...], np.ndarray]:
    """Every sum of the module docstring, keyed by the moment order per listed axis (e.g. (1, 0, 1)).

    Filtering axis by axis shares the passes: orders are built up one axis at a time and a total
    order above 2 is never formed (19 correlations in 3D, 9 in 2D)."""
    partial = {(): mass}
    for a in axes:
        grown = {}
        for orders, values in partial.items():
            for order in range(3 - sum(orders)):
                grown[orders + (order,)] = ndimage.correlate1d(values, kernels[a][order], axis=a, mode="reflect")
        partial = grown
    return partial


def _describe(moments, axes, sigma_nm: float, window_mass: float) -> np.ndarray:
    n = len(axes)
    zero = (0,) * n

    def unit(*which):
        orders = [0] * n
        for i in which:
            orders[i] += 1
        return tuple(orders)

    m0 = np.maximum(moments[zero], 1e-12)
    mean = [moments[unit(i)] / m0 for i in range(n)]
    out = [0.5 + m / (2.0 * sigma_nm) for m in mean]
    out += [moments[unit(i, i)] / m0 - mean[i] ** 2 for i in range(n)]
    out[n:] = [v / sigma_nm ** 2 for v in out[n:]]
    out += [0.5 + (moments[unit(i, j)] / m0 - mean[i] * mean[j]) / (2.0 * sigma_nm ** 2)
            for i, j in combinations(range(n), 2)]
    out.append(moments[zero] / window_mass)
    return np.clip(np.stack(out), 0.0, 1.0)


def local_shape_descriptors(labels: np.ndarray, sigma_nm: float, voxel_size_nm=(1.0, 1.0, 1.0),
                            mode: str = "3d", downsample: int = 2) -> np.ndarray:
    """The descriptors of every object of ``labels`` (z, y, x), float32 (C, z, y, x); see above.

    ``mode`` "3d" or "2d" (per section, for anisotropic stacks); ``downsample`` the largest
    coarsening per axis (1 = exact on the voxel grid)."""
    labels = np.asarray(labels)
    if mode not in ("2d", "3d") or not sigma_nm > 0 or int(downsample) < 1 or labels.ndim != 3:
        raise EmError(f"local shape descriptors need 3D labels, mode 2d or 3d, sigma_nm > 0 and downsample >= 1 "
                      f"(got {labels.ndim}D, {mode!r}, {sigma_nm!r}, {downsample!r})")
    axes = _axes(mode)
    voxel = tuple(float(v) for v in voxel_size_nm)
    factors = _factors(voxel, sigma_nm, downsample, axes)
    step = [voxel[a] * factors[a] for a in range(3)]
    kernels = {a: _kernels(step[a], sigma_nm) for a in axes}
    reach = [len(kernels[a][0]) // 2 if a in axes else 0 for a in range(3)]
    window_mass = float(np.prod([kernels[a][0].sum() for a in axes]))
    out = np.zeros((lsd_channels(mode),) + labels.shape, np.float32)
    if mode == "2d":  # per section: each object's part in each section is its own object
        for z in range(labels.shape[0]):
            out[:, z: z + 1] = _objects(labels[z: z + 1], axes, factors, reach, kernels, sigma_nm, window_mass)
        return out
    return _objects(labels, axes, factors, reach, kernels, sigma_nm, window_mass)


def _objects(labels, axes, factors, reach, kernels, sigma_nm, window_mass) -> np.ndarray:
    import fastremap

    out = np.zeros((_channels(len(axes)),) + labels.shape, np.float32)
    dense, _ = fastremap.renumber(np.ascontiguousarray(labels), in_place=False, preserve_zero=True)
    for index, box in enumerate(ndimage.find_objects(dense), start=1):
        if box is None:
            continue
        # the object's box grown by the window's reach, in whole coarse voxels from the box start
        grown = []
        for a, s in enumerate(box):
            margin = reach[a] * factors[a]
            grown.append(slice(max(0, s.start - margin), min(labels.shape[a], s.stop + margin)))
        grown = tuple(grown)
        inside = dense[grown] == index
        coarse = _pool(inside, factors)
        described = _describe(_moments(coarse, kernels, axes), axes, sigma_nm, window_mass)
        # back to the voxel grid: each of the object's voxels takes its coarse voxel's descriptors
        at = np.nonzero(inside)
        view = out[(slice(None),) + grown]
        view[(slice(None),) + at] = described[(slice(None),) + tuple(i // f for i, f in zip(at, factors))]
    return out
