"""Blending weights for overlapping patch outputs (pure numpy).

Each patch contributes ``weights * values`` over its kept (cropped) output, and a voxel's value
is the weighted mean of every patch that covers it: ``sum(w * v) / sum(w)``. Any positive
weights reconstruct a constant prediction exactly; the shape of the weights decides how patch
borders, where the network saw the least context, fade out.

One axis of a kept output of n voxels, and the three profiles::

    gaussian   exp(-(i - (n-1)/2)^2 / (2 (n/8)^2))          (nnU-Net, PyTorch Connectomics)
    bump       exp(4 - 1 / (t (1 - t))), t = (i+1)/(n+1)     (DeepEM: smooth, 0 at the border)
    constant   1

The bump function is 0 at the patch border (t = 0 and t = 1, half a voxel outside the first
and last voxel centre) and infinitely smooth; sampled at voxel centres it is positive. The 3D
weights are the outer product of the three profiles, floored at ``floor`` so that the far
corners of a patch (where the product underflows float32) still have a defined weight.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from emtools.errors import EmError

BLENDS = ("gaussian", "bump", "constant")
FLOOR = 1e-6


def bump(t: np.ndarray) -> np.ndarray:
    """The bump ``exp(4 - 1/(t(1-t)))``: 1 at t = 0.5, exactly 0 at and outside t = 0 and t = 1."""
    t = np.asarray(t, dtype=np.float64)
    out = np.zeros_like(t)
    inside = (t > 0) & (t < 1)
    u = t[inside]
    out[inside] = np.exp(4.0 - 1.0 / (u * (1.0 - u)))
    return out


def profile(n: int, mode: str) -> np.ndarray:
    """The 1D weights (float64, peak 1) of one axis of a kept patch output of ``n`` voxels."""
    if mode not in BLENDS:
        raise EmError(f"unknown blending {mode!r}; choose one of {', '.join(BLENDS)}")
    if n < 1:
        raise EmError(f"a patch output needs at least one voxel per axis, got {n}")
    index = np.arange(n, dtype=np.float64)
    if mode == "gaussian":
        sigma = n / 8.0
        return np.exp(-0.5 * ((index - (n - 1) / 2.0) / sigma) ** 2)
    if mode == "bump":
        return bump((index + 1.0) / (n + 1.0))
    return np.ones(n)


def patch_weights(kept_zyx: Sequence[int], mode: str, floor: float = FLOOR) -> np.ndarray:
    """The (z, y, x) float32 weights of one kept patch output: outer product of the profiles."""
    pz, py, px = (profile(int(n), mode) for n in kept_zyx)
    weights = pz[:, None, None] * py[None, :, None] * px[None, None, :]
    return np.maximum(weights, floor).astype(np.float32)
