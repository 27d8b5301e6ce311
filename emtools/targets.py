"""Learning targets from labels, and loss weights: what em-train's loader computes online.

    target, valid = build_target(kind, labels, offsets=None, voxel_size_nm=(1, 1, 1), **params)

``labels`` is an integer (z, y, x) volume: instance ids with 0 = background, class values for
``semantic``, cleft/synapse ids for ``cleft``. ``target`` and ``valid`` are float32 (C, z, y, x);
``valid`` is 1 where the target is defined: 0 where a long-range affinity's partner lies outside
the volume, and 0 where the labels equal ``ignore_label`` (when given). The kinds and their
meaning match the head kinds of :mod:`emtools.models.heads` (what em-predict writes):

==========  ==  ====================================================================================
kind        C   target
==========  ==  ====================================================================================
affinity    n   1 where ``labels[p] == labels[p + offsets[c]] != 0`` (offsets are steps back)
boundary    1   1 on background and where a voxel touches another label (4/6-neighbourhood)
foreground  1   ``labels != 0``
contour     1   instance voxels within ``thickness`` (city-block) steps of another label
distance    1   signed distance in [-1, 1]: tanh(d_in / alpha) inside, -tanh(d_out / beta) outside
cleft       1   ``labels != 0``, optionally dilated by ``dilate`` (finest) voxels
semantic    1   the class index (as float; the loader casts to long for cross-entropy)
lsd         10  local shape descriptors in [0, 1] (:mod:`emtools.shape_descriptors`); 6 with mode 2d
==========  ==  ====================================================================================

``mode`` ("2d", the default, or "3d"; ``lsd`` defaults to "3d") says whether neighbourhoods and
distances stay within a section (anisotropic ssTEM) or extend in 3D. Distances are in units of the finest voxel axis,
anisotropic by ``voxel_size_nm``. The volume border is never treated as an object border.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from emtools.errors import EmError
from emtools.models.heads import NEAREST_OFFSETS  # (no torch: heads is plain metadata)

__all__ = ["TARGET_KINDS", "build_target", "class_balanced_weights", "border_weights", "affinity_target"]

TARGET_KINDS = ("affinity", "boundary", "foreground", "contour", "cleft", "distance", "semantic", "lsd")
MODES = ("2d", "3d")

# The options each kind takes besides ``ignore_label`` (with their defaults).
_PARAMS: dict[str, dict[str, Any]] = {
    "affinity": {},
    "boundary": {"mode": "2d"},
    "foreground": {},
    "contour": {"thickness": 1, "mode": "2d"},
    "distance": {"alpha": 8.0, "beta": 50.0, "mode": "2d"},
    "cleft": {"dilate": 0.0, "mode": "2d"},
    "semantic": {"classes": None},
    # an 80 nm window: about the radius of a fine fly neurite; downsample: see shape_descriptors
    "lsd": {"sigma_nm": 80.0, "mode": "3d", "downsample": 2},
}


def build_target(kind: str, labels, *, offsets=None, voxel_size_nm=(1, 1, 1), **params) -> tuple[np.ndarray, np.ndarray]:
    """(target, valid), float32 (C, z, y, x); see the module docstring for the kinds."""
    if kind not in TARGET_KINDS:
        raise EmError(f"unknown target kind {kind!r}; choose from {', '.join(TARGET_KINDS)}")
    labels = _check_labels(labels)
    ignore = params.pop("ignore_label", None)
    allowed = _PARAMS[kind]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        valid = ", ".join(sorted(allowed) + ["ignore_label"])
        raise EmError(f"target {kind} has no parameter {unknown[0]!r}; its parameters: {valid}")
    if offsets is not None and kind != "affinity":
        raise EmError(f"offsets are for affinity targets, not {kind}")
    options = {**allowed, **params}
    if "mode" in options and options["mode"] not in MODES:
        raise EmError(f"target {kind}: mode must be 2d or 3d, got {options['mode']!r}")
    voxel = _voxel(voxel_size_nm)

    if kind == "affinity":
        offsets = NEAREST_OFFSETS if offsets is None else offsets
        target, valid = affinity_target(labels, offsets)
        if ignore is not None:
            valid *= affinity_target(labels == _ignore_value(labels, ignore), offsets, any_end=True)[0] == 0
        return target, valid
    if kind == "lsd":
        from emtools.shape_descriptors import local_shape_descriptors

        target = local_shape_descriptors(labels, _positive("lsd", "sigma_nm", options["sigma_nm"]), voxel,
                                         options["mode"], _count("lsd", "downsample", options["downsample"]))
        valid = np.ones(target.shape[1:], np.float32)
        if ignore is not None:
            valid[labels == _ignore_value(labels, ignore)] = 0
        return target, valid[None]
    if kind == "boundary":
        target = (labels == 0) | touches_other_label(labels, options["mode"])
    elif kind == "foreground":
        target = labels != 0
    elif kind == "contour":
        target = contour(labels, _count("contour", "thickness", options["thickness"]), options["mode"])
    elif kind == "distance":
        target = signed_distance(labels, _positive("distance", "alpha", options["alpha"]),
                                 _positive("distance", "beta", options["beta"]), options["mode"], voxel)
    elif kind == "cleft":
        target = labels != 0
        dilate = float(options["dilate"])
        if dilate < 0:
            raise EmError(f"target cleft: dilate must not be negative, got {dilate:g}")
        if dilate > 0:
            target = _distance_to(target, options["mode"], voxel) <= dilate
    else:
        target = semantic_classes(labels, options["classes"],
                                  None if ignore is None else _ignore_value(labels, ignore))
    target = np.ascontiguousarray(target, dtype=np.float32)[None]
    valid = np.ones_like(target)
    if ignore is not None:
        valid[0][labels == _ignore_value(labels, ignore)] = 0
    return target, valid


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise EmError(f"labels must be 3D (z, y, x), got shape {labels.shape}")
    if labels.dtype.kind not in "uib":
        raise EmError(f"labels must be integers, got {labels.dtype}")
    if labels.dtype.kind != "u":  # bool, signed: the unsigned view keeps equality (edt wants unsigned)
        labels = np.ascontiguousarray(labels).view(np.dtype(f"u{labels.dtype.itemsize}"))
    return labels


def _voxel(voxel_size_nm) -> tuple[float, float, float]:
    voxel = tuple(float(v) for v in voxel_size_nm)
    if len(voxel) != 3 or min(voxel) <= 0:
        raise EmError(f"voxel_size_nm must be three positive numbers z,y,x, got {voxel_size_nm!r}")
    return voxel  # type: ignore[return-value]


def _ignore_value(labels: np.ndarray, ignore):
    try:
        return labels.dtype.type(ignore)
    except (OverflowError, ValueError, TypeError):
        raise EmError(f"ignore_label {ignore!r} is not a value of {labels.dtype} labels") from None


def _positive(kind: str, name: str, value) -> float:
    value = float(value)
    if not value > 0:
        raise EmError(f"target {kind}: {name} must be positive, got {value:g}")
    return value


def _count(kind: str, name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise EmError(f"target {kind}: {name} must be a whole number >= 1, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- affinities

def _offset_slices(offset: Sequence[int], shape: Sequence[int]):
    """(here, there): slices of the voxels p whose partner p + offset is inside, and of the partners."""
    here, there = [], []
    for d, n in zip(offset, shape):
        d = int(d)
        if abs(d) >= n:
            return None
        here.append(slice(max(0, -d), n - max(0, d)))
        there.append(slice(max(0, d), n - max(0, -d)))
    return tuple(here), tuple(there)


def affinity_target(labels: np.ndarray, offsets, any_end: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(affinities, valid) for ``offsets`` (steps back, e.g. (-1, 0, 0)); float32 (C, z, y, x).

    ``target[c, p] = labels[p] == labels[p + offsets[c]] != 0``; ``valid[c, p] = 0`` where
    ``p + offsets[c]`` lies outside. With ``any_end`` (labels boolean), the target is instead
    1 where either end is set (used to invalidate edges touching an ignored voxel).
    """
    labels = np.asarray(labels)
    offsets = [_offset(o) for o in offsets]
    if not offsets:
        raise EmError("affinity targets need at least one offset")
    target = np.zeros((len(offsets),) + labels.shape, np.float32)
    valid = np.zeros_like(target)
    for c, offset in enumerate(offsets):
        slices = _offset_slices(offset, labels.shape)
        if slices is None:
            continue
        here, there = slices
        a, b = labels[here], labels[there]
        target[(c,) + here] = (a | b) if any_end else ((a == b) & (a != 0))
        valid[(c,) + here] = 1
    return target, valid


def _offset(value) -> tuple[int, int, int]:
    try:
        offset = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise EmError(f"affinity offset {value!r} is not three integers z,y,x") from None
    if len(offset) != 3 or offset == (0, 0, 0):
        raise EmError(f"affinity offset {value!r} must be three integers z,y,x, not all 0")
    return offset  # type: ignore[return-value]


# ----------------------------------------------------------------------------- neighbourhoods

def _axes(mode: str) -> tuple[int, ...]:
    return (1, 2) if mode == "2d" else (0, 1, 2)


def touches_other_label(labels: np.ndarray, mode: str = "2d") -> np.ndarray:
    """True where a voxel's 4- (``2d``, in-plane) or 6-neighbourhood (``3d``) holds another label."""
    out = np.zeros(labels.shape, bool)
    for axis in _axes(mode):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        differ = labels[tuple(lo)] != labels[tuple(hi)]
        out[tuple(lo)] |= differ
        out[tuple(hi)] |= differ
    return out


def contour(labels: np.ndarray, thickness: int = 1, mode: str = "2d") -> np.ndarray:
    """Instance voxels within ``thickness`` city-block steps of a voxel of another label
    (background included): an inner contour of that many voxels."""
    from scipy import ndimage

    edge = touches_other_label(labels, mode) & (labels != 0)
    if thickness > 1:
        structure = ndimage.generate_binary_structure(3, 1)
        if mode == "2d":
            structure[0] = structure[2] = False
        edge = ndimage.binary_dilation(edge, structure, iterations=thickness - 1)
    return edge & (labels != 0)


# ----------------------------------------------------------------------------- distances

def finest_units(voxel_size_nm: Sequence[float]) -> tuple[float, float, float]:
    """Voxel size relative to the finest axis (distances in units of the finest voxel)."""
    finest = min(voxel_size_nm)
    return tuple(v / finest for v in voxel_size_nm)  # type: ignore[return-value]


def _edt_sections(values: np.ndarray, mode: str, voxel_size_nm) -> np.ndarray:
    """edt.edt of ``values`` (multi-label: distance to the nearest voxel of another value, 0
    included), per section (``2d``) or in 3D; the volume border is not a boundary."""
    import edt

    aniso = finest_units(voxel_size_nm)
    if mode == "3d":
        return edt.edt(np.ascontiguousarray(values), anisotropy=aniso, black_border=False).astype(np.float32, copy=False)
    out = np.empty(values.shape, np.float32)
    for z in range(values.shape[0]):
        out[z] = edt.edt(np.ascontiguousarray(values[z]), anisotropy=aniso[1:], black_border=False)
    return out


def _distance_to(mask: np.ndarray, mode: str, voxel_size_nm) -> np.ndarray:
    """Distance of every voxel to the nearest voxel of ``mask`` (0 on it, inf if ``mask`` is empty
    in that section / volume)."""
    return _edt_sections((~mask).view(np.uint8), mode, voxel_size_nm)


def signed_distance(labels: np.ndarray, alpha: float = 8.0, beta: float = 50.0, mode: str = "2d",
                    voxel_size_nm=(1, 1, 1)) -> np.ndarray:
    """The BCD distance target, float32 in [-1, 1].

    Inside an instance: ``tanh(d_in / alpha)``, d_in = distance to the nearest voxel that is not
    in the same instance (another instance or background), so touching instances are separated
    by a valley. Outside: ``-tanh(d_out / beta)``, d_out = distance to the nearest instance voxel
    (-1 in a section / volume without instances). Distances centre to centre, in finest-axis
    voxels, anisotropic; per section with ``mode="2d"``. em-watershed ``--instance bcd`` reads
    this map (seeds where it is high, growth where it is > ``--mask-distance``).

    PyTorch Connectomics (the feature peer) defines two related maps: ``edt_instance``
    normalises each instance's distance by that instance's own maximum (so every instance peaks
    at 1, whatever its size) and sets background to a constant -1; ``edt_semantic`` is
    ``tanh(d_fg / alpha_fore - d_bg / alpha_back)`` on the binary foreground, which does not
    separate touching instances. This target has ``edt_semantic``'s form (tanh, a graded
    background with beta = 50 as its ``alpha_back``) with ``edt_instance``'s per-instance inside
    distance; no per-instance normalisation, so the value says how far a voxel is from the
    border in voxels (tanh(1/8) = 0.12 on the outermost voxel of an instance, 0.76 at 8 voxels).
    """
    fg = labels != 0
    inside = _edt_sections(labels, mode, voxel_size_nm)
    outside = _distance_to(fg, mode, voxel_size_nm)
    # tanh is odd: one pass over the signed, scaled distance (inf -> +-1)
    scaled = np.where(fg, inside * np.float32(1.0 / alpha), outside * np.float32(-1.0 / beta))
    return np.tanh(scaled, out=scaled).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- semantic

def semantic_classes(labels: np.ndarray, classes: Mapping | None, ignore=None) -> np.ndarray:
    """Class index per voxel: ``classes[raw value]`` (every value present but ``ignore`` must be
    listed; ``ignore`` voxels get 0), or the values as they are when ``classes`` is None."""
    if classes is None:
        return labels
    if not isinstance(classes, Mapping) or not classes:
        raise EmError("target semantic: classes must be a mapping raw value -> class index")
    try:
        table = {int(k): int(v) for k, v in classes.items()}
    except (TypeError, ValueError):
        raise EmError("target semantic: classes must map integers to integers") from None
    if min(table.values()) < 0:
        raise EmError("target semantic: class indices must not be negative")
    if ignore is not None:
        table.setdefault(int(ignore), 0)
    if labels.dtype.itemsize <= 2:  # small types: a look-up table indexed by the raw value
        values = np.flatnonzero(np.bincount(labels.ravel(), minlength=1))
        inverse, lookup_index = labels, values
    else:
        values, inverse = np.unique(labels, return_inverse=True)
        inverse = inverse.reshape(labels.shape)
        lookup_index = np.arange(values.size)
    missing = [int(v) for v in values if int(v) not in table]
    if missing:
        raise EmError(f"target semantic: label values {missing[:5]} are not in classes "
                      f"(listed: {sorted(table)[:10]})")
    lookup = np.zeros(int(lookup_index.max()) + 1, np.float32)
    lookup[lookup_index] = [table[int(v)] for v in values]
    return lookup[inverse]


# ----------------------------------------------------------------------------- weights

def class_balanced_weights(target, valid) -> np.ndarray:
    """Per channel (axis 0), positives (target > 0.5) and negatives each get total weight half
    of the valid voxels' (sum of ``valid``); 0 where ``valid`` is 0. Where a channel has only one
    class, that class keeps weight 1 (nothing to rebalance). float32, the target's shape."""
    target = np.asarray(target, dtype=np.float32)
    valid = np.asarray(valid, dtype=np.float32)
    if target.shape != valid.shape or target.ndim < 1:
        raise EmError(f"target {target.shape} and valid {valid.shape} must have one shape (C, ...)")
    weights = np.zeros_like(target)
    for c in range(target.shape[0]):
        positive = target[c] > 0.5
        mass_pos = float(valid[c][positive].sum(dtype=np.float64))
        mass_neg = float(valid[c].sum(dtype=np.float64)) - mass_pos
        total = mass_pos + mass_neg
        if mass_pos > 0 and mass_neg > 0:
            w_pos, w_neg = 0.5 * total / mass_pos, 0.5 * total / mass_neg
        else:
            w_pos = w_neg = 1.0
        weights[c] = np.where(positive, np.float32(w_pos), np.float32(w_neg)) * valid[c]
    return weights


def border_weights(labels, w0: float = 10.0, sigma_vx: float = 5.0, mode: str = "2d",
                   voxel_size_nm=(1, 1, 1)) -> np.ndarray:
    """The U-Net border weight (Ronneberger et al. 2015), float32 (z, y, x).

    ``1 + w0 * exp(-(d1 + d2)^2 / (2 sigma_vx^2))`` on background voxels, where d1 and d2 are the
    distances to the nearest and the second-nearest instance (by id), so thin gaps between two
    cells weigh most; 1 on instance voxels and where fewer than two instances are near. Distances
    per section (``2d``) or in 3D, in finest-axis voxels. Each instance's distance is computed in
    its bounding box grown by the radius beyond which the term is below 1e-6 * w0, so the cost
    grows with the instances' size, not their number times the volume.
    """
    import edt

    labels = _check_labels(labels)
    if mode not in MODES:
        raise EmError(f"border weights: mode must be 2d or 3d, got {mode!r}")
    if not sigma_vx > 0 or w0 < 0:
        raise EmError(f"border weights: need sigma_vx > 0 and w0 >= 0, got {sigma_vx:g}, {w0:g}")
    aniso = finest_units(_voxel(voxel_size_nm))
    reach = sigma_vx * np.sqrt(2.0 * np.log(1e6))  # d1 + d2 beyond this: term < 1e-6 * w0
    weights = np.ones(labels.shape, np.float32)
    # (block of labels, its voxel spacing, where it goes): sections in 2d, the volume in 3d
    blocks = [(labels[z], aniso[1:], z) for z in range(labels.shape[0])] if mode == "2d" else [(labels, aniso, ...)]
    for block, spacing, where in blocks:
        d1, d2 = _two_nearest(block, spacing, reach, edt)
        term = np.float32(w0) * np.exp(-((d1 + d2) ** 2) / np.float32(2.0 * sigma_vx**2))
        weights[where] += np.where(block == 0, term, np.float32(0))
    return weights


def _two_nearest(labels: np.ndarray, spacing, reach: float, edt) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest instance (inf where there is none in reach)."""
    import fastremap
    from scipy import ndimage

    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    if not labels.any():
        return d1, d2
    renumbered, _ = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True, in_place=False)
    grow = [int(np.ceil(reach / s)) for s in spacing]
    for index, box in enumerate(ndimage.find_objects(renumbered), start=1):
        if box is None:
            continue
        region = tuple(slice(max(0, b.start - g), min(n, b.stop + g)) for b, g, n in zip(box, grow, labels.shape))
        distance = edt.edt((renumbered[region] != index).view(np.uint8), anisotropy=spacing, black_border=False)
        near1, near2 = d1[region], d2[region]
        closer = distance < near1
        near2[...] = np.where(closer, near1, np.minimum(near2, distance))
        near1[...] = np.where(closer, distance, near1)
    return d1, d2
