"""Augmentations that mix in other content: copy_paste (instances) and mixup (whole images)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from emtools.augment.core import Option, augmentation, check_arrays, copy_labels, draw, draw_int
from emtools.errors import EmError


@augmentation(
    "copy_paste",
    "copy instances (image and labels) to other places, new ids",
    count=Option((1, 3), "int_range", "how many instances to paste", lo=0),
    key=Option("labels", "text", "the labels entry that holds the instance ids"),
    min_size_vx=Option(20, "int", "smallest instance that may be copied, voxels", lo=1),
    flip=Option(True, "bool", "flip each copy in y and x at random"),
    avoid_overlap=Option(True, "bool", "paste only where the copy covers no other instance"),
    attempts=Option(10, "int", "places tried for each copy before giving up on it", lo=1),
    source=Option(None, "object", "(image, labels) to copy from; default: the volume itself"),
)
def copy_paste(image, labels, rng, *, count, key, min_size_vx, flip, avoid_overlap, attempts, source):
    """Copy instances (image voxels and every labels entry under the instance) to other places.

    Each pasted instance gets a new id above every id in use, so ids never clash. Other labels
    entries take the copied voxels' values (a missing entry in ``source`` counts as 1 for
    ``mask`` and 0 otherwise). Where a copy would not fit or (``avoid_overlap``) would cover
    another instance after ``attempts`` random places, it is skipped.
    """
    if key not in labels:
        raise EmError(f"copy_paste.key {key!r} is not among the labels ({', '.join(labels) or 'none'})")
    src_image, src_labels = image, labels
    if source is not None:
        src_image, src_labels = _source(source, key)
    src_ids = src_labels[key]
    ids, sizes = np.unique(src_ids, return_counts=True)
    candidates = ids[(ids != 0) & (sizes >= min_size_vx)]
    out_image, out_labels = image.copy(), copy_labels(labels)
    target = out_labels[key]
    next_id = int(max(int(target.max(initial=0)), int(src_ids.max(initial=0)))) + 1
    for _ in range(draw_int(rng, count)):
        if not candidates.size:
            break
        chosen = candidates[int(rng.integers(candidates.size))]
        crop = _crop_instance(src_image, src_labels, key, chosen, rng, flip)
        corner = _place(rng, crop[0], target, avoid_overlap, attempts)
        if corner is None:
            continue
        if next_id > np.iinfo(target.dtype).max:
            raise EmError(f"copy_paste: no free id left in {target.dtype} labels")
        object_mask, pieces = crop
        region = tuple(slice(c, c + n) for c, n in zip(corner, object_mask.shape))
        out_image[region][object_mask] = pieces["__image__"][object_mask]
        for name, values in out_labels.items():
            if name == key:
                values[region][object_mask] = next_id
            else:
                fallback = 1 if name == "mask" else 0
                piece = pieces.get(name)
                values[region][object_mask] = fallback if piece is None else piece[object_mask]
        next_id += 1
    return out_image, out_labels


def _source(source, key: str):
    try:
        src_image, src_labels = source
    except (TypeError, ValueError):
        raise EmError("copy_paste.source must be a pair (image, labels)") from None
    if not isinstance(src_labels, Mapping):
        src_labels = {key: src_labels}
    src_image, src_labels = check_arrays("copy_paste.source", src_image, src_labels)
    if key not in src_labels:
        raise EmError(f"copy_paste.source has no labels entry {key!r}")
    return src_image, src_labels


def _crop_instance(image, labels, key, instance_id, rng, flip):
    """(object mask, {"__image__": image crop, name: labels crops}) of one instance's bounding box."""
    where = labels[key] == instance_id
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(where))
    flips = tuple(axis for axis in (1, 2) if flip and rng.random() < 0.5)

    def cut(array):
        piece = array[box]
        return np.flip(piece, flips) if flips else piece

    pieces = {name: cut(values) for name, values in labels.items()}
    pieces["__image__"] = cut(image)
    return cut(where), pieces


def _place(rng, object_mask, target, avoid_overlap, attempts):
    """A random corner where the object's box fits (and, if asked, the object covers no instance)."""
    shape = object_mask.shape
    room = [t - s for t, s in zip(target.shape, shape)]
    if min(room) < 0:
        return None
    for _ in range(attempts):
        corner = tuple(int(rng.integers(r + 1)) for r in room)
        if not avoid_overlap:
            return corner
        region = tuple(slice(c, c + n) for c, n in zip(corner, shape))
        if not target[region][object_mask].any():
            return corner
    return None


@augmentation(
    "mixup",
    "blend with another image or a flipped copy (labels kept)",
    weight=Option((0.05, 0.2), "range", "weight of the other image in the blend", lo=0.0, hi=1.0),
    other=Option(None, "object", "an image (same shape, float in [0, 1]) to blend in; default: a flipped copy"),
)
def mixup(image, labels, rng, *, weight, other):
    """``(1 - w) * image + w * other``; labels unchanged. Without ``other``, the image is blended
    with a copy of itself flipped in y, x or both (a different, realistic-looking EM texture)."""
    w = np.float32(draw(rng, weight))
    if other is None:
        axes = ((1,), (2,), (1, 2))[int(rng.integers(3))]
        other = np.flip(image, axes)
    else:
        other = np.asarray(other)
        if other.shape != image.shape or other.dtype.kind != "f":
            raise EmError(f"mixup.other must be a float image of shape {image.shape}, got {other.dtype} {other.shape}")
    out = image * (np.float32(1.0) - w) + other.astype(np.float32, copy=False) * w
    return out.astype(np.float32, copy=False), labels
