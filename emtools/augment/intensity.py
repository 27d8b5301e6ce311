"""Intensity augmentations: grayscale, motion_blur, defocus, cut_blur, cut_noise.

They change the image only; labels come back unchanged (the same arrays). Values stay in
[0, 1]. Blurs are in-plane per section (``cut_blur`` with ``mode=3d`` also along z).
"""

from __future__ import annotations

import math

import numpy as np

from emtools.augment.core import SECTIONS, Option, augmentation, draw, pick_sections, random_box

BOX = Option((0.2, 0.5), "range", "side of the box along each axis, as a fraction of that axis", lo=0.0, hi=1.0)


@augmentation(
    "grayscale",
    "contrast, brightness, gamma, inversion; per section or volume",
    contrast=Option((0.75, 1.25), "range", "contrast factor range (about the mean)", lo=0.0),
    brightness=Option((-0.1, 0.1), "range", "brightness offset range (added)", lo=-1.0, hi=1.0),
    gamma=Option((0.75, 1.33), "range", "gamma range (drawn log-uniformly; <1 brightens)", lo=0.05, hi=20.0),
    invert_p=Option(0.0, "float", "probability of inverting (1 - value)", lo=0.0, hi=1.0),
    mode=Option("2d", "choice", "2d: new values for each section; 3d: one draw for the volume", choices=("2d", "3d")),
)
def grayscale(image, labels, rng, *, contrast, brightness, gamma, invert_p, mode):
    """``x -> clip((x - mean) * contrast + mean + brightness) ** gamma``, then maybe ``1 - x``."""
    n = image.shape[0] if mode == "2d" else 1
    shape = (n, 1, 1)
    factor = draw(rng, contrast, n).reshape(shape).astype(np.float32)
    offset = draw(rng, brightness, n).reshape(shape).astype(np.float32)
    power = np.exp(rng.uniform(math.log(gamma[0]), math.log(gamma[1]), n)).reshape(shape).astype(np.float32)
    invert = (rng.random(n) < invert_p).reshape(shape)
    if mode == "2d":
        mean = image.mean(axis=(1, 2), keepdims=True, dtype=np.float64).astype(np.float32)
    else:
        mean = np.float32(image.mean(dtype=np.float64))
    out = (image - mean) * factor + (mean + offset)
    np.clip(out, 0.0, 1.0, out=out)
    if not np.all(power == 1):
        np.power(out, power, out=out)
    if invert.any():
        out = np.where(invert, np.float32(1.0) - out, out)
    return out, labels


@augmentation(
    "motion_blur",
    "directional (streak) blur of some sections",
    sections=SECTIONS,
    length_vx=Option((3.0, 9.0), "range", "length of the blur streak, voxels", lo=1.0, hi=101.0),
)
def motion_blur(image, labels, rng, *, sections, length_vx):
    """Blur some sections along a random in-plane direction (a line kernel), as when the stage
    or the beam moved during the exposure."""
    from scipy import ndimage  # here, not at import: em-augment --help stays fast

    def blur(section):
        kernel = line_kernel(float(draw(rng, length_vx)), float(rng.uniform(0.0, math.pi)))
        return ndimage.convolve(section, kernel, mode="reflect")

    return per_section(image, rng, sections, blur), labels


def per_section(image, rng, sections, change):
    """A copy of ``image`` with ``change(section)`` applied to randomly picked sections."""
    out = image.copy()
    for z in pick_sections(rng, image.shape[0], sections):
        out[z] = change(image[z])
    return out


def line_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised 2D kernel (odd side) holding a line of ``length`` voxels at ``angle`` (radians,
    from the x axis), drawn by bilinear splatting of closely spaced points."""
    radius = int(math.ceil((length - 1) / 2.0))
    side = 2 * radius + 1
    kernel = np.zeros((side + 1, side + 1), np.float64)  # one spare row/column for the splats
    t = np.linspace(-(length - 1) / 2.0, (length - 1) / 2.0, max(2, int(4 * math.ceil(length))))
    y = radius + t * math.sin(angle)
    x = radius + t * math.cos(angle)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = y - y0, x - x0
    for dy, dx, weight in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        np.add.at(kernel, (y0 + dy, x0 + dx), weight)
    kernel = kernel[:side, :side]
    return (kernel / kernel.sum()).astype(np.float32)


@augmentation(
    "defocus",
    "out-of-focus (Gaussian) blur of some sections",
    sections=SECTIONS,
    sigma_vx=Option((1.0, 3.0), "range", "Gaussian blur of an out-of-focus section, voxels", lo=0.0, hi=50.0),
)
def defocus(image, labels, rng, *, sections, sigma_vx):
    """Out-of-focus sections: an in-plane Gaussian blur of some sections."""
    from scipy import ndimage

    def blur(section):
        return ndimage.gaussian_filter(section, float(draw(rng, sigma_vx)), mode="reflect")

    return per_section(image, rng, sections, blur), labels


@augmentation(
    "cut_blur",
    "a box downsampled and upsampled back (low resolution)",
    size=BOX,
    ratio=Option((2.0, 8.0), "range", "downsampling factor of the box", lo=1.0, hi=64.0),
    mode=Option("2d", "choice", "2d: downsample in-plane only; 3d: along z too", choices=("2d", "3d")),
)
def cut_blur(image, labels, rng, *, size, ratio, mode):
    """A random box is downsampled by ``ratio`` and upsampled back (linear): a low-resolution
    patch in a sharp image."""
    from scipy import ndimage

    box = random_box(rng, image.shape, size)
    factor = float(draw(rng, ratio))
    region = image[box]
    small_shape = [n if (axis == 0 and mode == "2d") else max(1, int(round(n / factor)))
                   for axis, n in enumerate(region.shape)]
    small = ndimage.zoom(region, [s / n for s, n in zip(small_shape, region.shape)], order=1,
                         mode="nearest", grid_mode=True)
    back = ndimage.zoom(small, [n / s for n, s in zip(region.shape, small.shape)], order=1,
                        mode="nearest", grid_mode=True)
    out = image.copy()
    out[box] = np.clip(back, 0.0, 1.0)
    return out, labels


@augmentation(
    "cut_noise",
    "Gaussian noise added in a box",
    size=BOX,
    scale=Option((0.05, 0.2), "range", "standard deviation of the Gaussian noise", lo=0.0, hi=1.0),
)
def cut_noise(image, labels, rng, *, size, scale):
    """Gaussian noise added inside a random box (clipped to [0, 1])."""
    box = random_box(rng, image.shape, size)
    std = np.float32(draw(rng, scale))
    out = image.copy()
    region = out[box]
    region += rng.standard_normal(region.shape, dtype=np.float32) * std
    np.clip(region, 0.0, 1.0, out=region)
    return out, labels
