"""Affinities from labels (training targets, test and benchmark inputs), and noisy synthetic ones.

Convention: nearest-neighbour affinities are float32 ``(3, z, y, x)``; channel ``c`` holds the
affinity between a voxel and its neighbour one step back along axis ``c`` (z, y, x), as waterz
and gunpowder store them. The first section / row / column of a channel (whose neighbour lies
outside the volume) is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emtools.errors import EmError

__all__ = ["affinities_from_labels", "noisy_affinities"]


def affinities_from_labels(labels: np.ndarray) -> np.ndarray:
    """1 where a voxel and its back neighbour carry the same non-zero label, else 0 (float32)."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise EmError(f"labels must be 3D (z, y, x), got shape {labels.shape}")
    affs = np.zeros((3,) + labels.shape, np.float32)
    for axis in range(3):
        here = [slice(None)] * 3
        back = [slice(None)] * 3
        here[axis] = slice(1, None)
        back[axis] = slice(None, -1)
        a = labels[tuple(here)]
        b = labels[tuple(back)]
        affs[(axis,) + tuple(here)] = (a == b) & (a != 0)
    return affs


def noisy_affinities(
    labels: np.ndarray,
    seed: int = 0,
    blur_vx: Sequence[float] = (0.5, 1.5, 1.5),
    noise: float = 0.2,
    noise_blur_vx: Sequence[float] = (0.0, 2.0, 2.0),
    pixel_noise: float = 0.05,
    dropout: float = 0.0,
) -> np.ndarray:
    """Affinities that look like a network's: blurred targets plus smooth and pixel noise.

    ``blur_vx``: Gaussian blur (z, y, x voxels) of the exact affinities, so membranes get soft
    edges; ``noise``: amplitude of Gaussian noise smoothed by ``noise_blur_vx`` (blotchy
    errors that make weak spots in membranes and dark spots inside cells); ``pixel_noise``:
    white noise; ``dropout``: fraction of z sections whose z affinities are halved (section
    misalignment). Values are clipped to [0, 1]; float32; same seed, same values.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    affs = affinities_from_labels(labels)
    for c in range(3):
        ch = affs[c]
        if any(b > 0 for b in blur_vx):
            ch = ndimage.gaussian_filter(ch, blur_vx, mode="nearest")
        if noise > 0:
            smooth = rng.standard_normal(ch.shape, dtype=np.float32)
            smooth = ndimage.gaussian_filter(smooth, noise_blur_vx, mode="nearest")
            std = float(smooth.std()) or 1.0
            ch += smooth * np.float32(noise / std)
        if pixel_noise > 0:
            ch += rng.standard_normal(ch.shape, dtype=np.float32) * np.float32(pixel_noise)
        np.clip(ch, 0.0, 1.0, out=ch)
        affs[c] = ch
    if dropout > 0:
        bad = rng.random(labels.shape[0]) < dropout
        affs[0, bad] *= np.float32(0.5)
    return affs
