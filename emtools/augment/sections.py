"""Section artefacts of serial-section EM: missing_section, missing_parts, misalign.

``missing_section`` and ``missing_parts`` change the image only: the labels stay as they were,
so a network learns to carry the segmentation through lost data (as in Lee et al. 2017).
``misalign`` shifts one section (slip: the image only, the true objects did not move) or every
section from some z on (translation: image and labels, the whole stack is offset).
"""

from __future__ import annotations

import math

import numpy as np

from emtools.augment.core import (
    SECTIONS,
    Option,
    affine_plane_coords,
    augmentation,
    copy_labels,
    draw,
    draw_int,
    pick_sections,
    plane_grid,
    resample,
    rotation_matrix,
)

FILL = Option("zero", "choice", "what fills the lost data: zero (black) or the image mean", choices=("zero", "mean"))


def _fill_value(image: np.ndarray, fill: str) -> np.float32:
    return np.float32(0.0) if fill == "zero" else np.float32(image.mean(dtype=np.float64))


@augmentation("missing_section", "blank whole sections (image only)", sections=SECTIONS, fill=FILL)
def missing_section(image, labels, rng, *, sections, fill):
    """Blank whole sections (lost or unusable sections)."""
    out = image.copy()
    out[pick_sections(rng, image.shape[0], sections)] = _fill_value(image, fill)
    return out, labels


@augmentation(
    "missing_parts",
    "holes and bands blanked in some sections (image only)",
    sections=SECTIONS,
    holes=Option((1, 2), "int_range", "holes per affected section", lo=0),
    size=Option((0.05, 0.2), "range", "ellipse semi-axis or band width, as a fraction of the shorter side",
                lo=0.0, hi=1.0),
    shape=Option("random", "choice", "ellipse (holes, dirt), band (cracks, folds) or random for each hole",
                 choices=("ellipse", "band", "random")),
    fill=FILL,
)
def missing_parts(image, labels, rng, *, sections, holes, size, shape, fill):
    """Holes in some sections: filled ellipses or bands across the section."""
    out = image.copy()
    value = _fill_value(image, fill)
    side = min(image.shape[1:])
    y, x = plane_grid(image.shape[1:])
    for z in pick_sections(rng, image.shape[0], sections):
        hole = np.zeros(image.shape[1:], bool)
        for _ in range(draw_int(rng, holes)):
            kind = shape if shape != "random" else ("ellipse", "band")[int(rng.integers(2))]
            cy, cx = rng.uniform(0, image.shape[1]), rng.uniform(0, image.shape[2])
            angle = rng.uniform(0.0, math.pi)
            # coordinates along and across the hole's direction
            along = (y - cy) * math.sin(angle) + (x - cx) * math.cos(angle)
            across = (y - cy) * math.cos(angle) - (x - cx) * math.sin(angle)
            if kind == "ellipse":
                a = max(draw(rng, size) * side, 0.5)
                b = max(draw(rng, size) * side, 0.5)
                hole |= (along / a) ** 2 + (across / b) ** 2 <= 1.0
            else:
                hole |= np.abs(across) <= max(draw(rng, size) * side, 1.0) / 2.0
        out[z][hole] = value
    return out, labels


@augmentation(
    "misalign",
    "slip of one section or translation of the stack from a z on",
    mode=Option("random", "choice", "slip (one section, image only), translation (every section from a z on, "
                "image and labels) or random (either, 1/2 each)", choices=("slip", "translation", "random")),
    shift_vx=Option((2.0, 8.0), "range", "in-plane shift length range, voxels (random direction)", lo=0.0),
    rotate_deg=Option(0.0, "float", "largest extra in-plane rotation, degrees (drawn in +-rotate_deg)", lo=0.0, hi=45.0),
)
def misalign(image, labels, rng, *, mode, shift_vx, rotate_deg):
    """Section misalignment: a slip of one section, or a translation of the stack from a z on."""
    if mode == "random":
        mode = ("slip", "translation")[int(rng.integers(2))]
    depth = image.shape[0]
    length, direction = float(draw(rng, shift_vx)), float(rng.uniform(0.0, 2.0 * math.pi))
    shift = (length * math.sin(direction), length * math.cos(direction))
    angle = float(rng.uniform(-rotate_deg, rotate_deg))
    coords = affine_plane_coords(image.shape[1:], rotation_matrix(angle), shift)
    out_image, out_labels = image.copy(), labels
    if mode == "slip":
        z = int(rng.integers(depth))
        moved, _ = resample(image[z : z + 1], {}, coords)
        out_image[z] = moved[0]
        return out_image, out_labels
    if depth < 2:  # nothing to be misaligned against
        return out_image, copy_labels(labels)
    start = int(rng.integers(1, depth))
    moved, moved_labels = resample(image[start:], {k: v[start:] for k, v in labels.items()}, coords)
    out_image[start:] = moved
    out_labels = copy_labels(labels)
    for key, value in moved_labels.items():
        out_labels[key][start:] = value
    return out_image, out_labels
