"""Where a segmentation splits or merges ground-truth objects, voxel by voxel, for em-eval --plot.

From the contingency table of the whole compared region (:mod:`emtools.evaluate.table`), each
ground-truth object has a *main segment* (the segment holding most of its voxels) and each
segment a *main object* (the object holding most of its voxels); ties go to the smaller id.
Then a voxel labelled g in the ground truth and s in the segmentation is

- a **split** error (:data:`SPLIT`) when s is not g's main segment: it lies in one of the smaller
  pieces of a split object;
- a **merge** error (:data:`MERGE`) when g is not s's main object: it lies in a minority part of a
  segment that merges objects;
- both (``SPLIT | MERGE``) when both hold. A correct voxel is 0.

Ground-truth 0 (unlabelled) is never an error unless it is counted as an object (the table's
``skip`` is ``none``, em-eval's ``--gt-zero label``). Example::

    from emtools.evaluate import contingency_table
    overlaps = LargestOverlaps.from_table(contingency_table(gt, seg))
    classes = split_merge_classes(seg[z], gt[z], overlaps)   # uint8, 0 / SPLIT / MERGE / both
    picture = error_tile(background_rgb, seg[z], gt[z], overlaps)

:func:`error_tile` draws them: each error voxel tinted (:data:`SPLIT_RGB`, :data:`MERGE_RGB`,
:data:`BOTH_RGB` with weight :data:`ERROR_ALPHA`), then the segmentation's outlines in
:data:`OUTLINE_RGB` on top.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from emtools.errors import EmError
from emtools.evaluate.table import Contingency
from emtools.pictures.drawing import draw_outlines, tint

SPLIT = 1
MERGE = 2
# Okabe-Ito colours, told apart with the common colour-vision deficiencies.
SPLIT_RGB = (213, 94, 0)  # vermillion: the smaller pieces of a split object
MERGE_RGB = (0, 114, 178)  # blue: the minority parts of a merging segment
BOTH_RGB = (204, 121, 167)  # reddish purple: both at once
ERROR_ALPHA = 0.6  # weight of the error colour over the background
OUTLINE_RGB = (240, 228, 66)  # yellow: the segmentation's outlines, drawn last
ERROR_COLOURS = {SPLIT: SPLIT_RGB, MERGE: MERGE_RGB, SPLIT | MERGE: BOTH_RGB}


def _largest(keys: np.ndarray, partners: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``keys`` and, for each, the partner with the largest count (smaller id on ties)."""
    if keys.size == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    order = np.lexsort((partners, -counts, keys))
    keys, partners = keys[order], partners[order]
    first = np.ones(keys.size, bool)
    first[1:] = keys[1:] != keys[:-1]
    return keys[first].astype(np.uint64), partners[first].astype(np.uint64)


@dataclasses.dataclass(frozen=True)
class LargestOverlaps:
    """For each ground-truth id its main segment, for each segment id its main ground-truth object.

    ``gt_ids``/``seg_ids`` are sorted (uint64); ``main_seg[i]`` belongs to ``gt_ids[i]`` and
    ``main_gt[i]`` to ``seg_ids[i]``. ``gt_zero_counts``: ground-truth 0 is an object too.
    """

    gt_ids: np.ndarray
    main_seg: np.ndarray
    seg_ids: np.ndarray
    main_gt: np.ndarray
    gt_zero_counts: bool

    @classmethod
    def from_table(cls, table: Contingency) -> "LargestOverlaps":
        if table.skip == "both-zero":
            raise EmError("split/merge errors need every ground-truth object's voxels counted "
                          "(a table with skip 'gt-zero' or 'none')")
        gt_ids, main_seg = _largest(table.gt, table.seg, table.count)
        seg_ids, main_gt = _largest(table.seg, table.gt, table.count)
        return cls(gt_ids, main_seg, seg_ids, main_gt, table.skip == "none")


def _lookup(ids: np.ndarray, values: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values`` of ``keys`` in the sorted ``ids``, and whether each key is there at all."""
    if ids.size == 0:
        return np.zeros(keys.shape, np.uint64), np.zeros(keys.shape, bool)
    index = np.minimum(np.searchsorted(ids, keys), ids.size - 1)
    return values[index], ids[index] == keys


def split_merge_classes(seg: np.ndarray, gt: np.ndarray, overlaps: LargestOverlaps) -> np.ndarray:
    """uint8 per voxel of ``seg``/``gt`` (same shape, non-negative integer ids): 0 correct or not
    scored, :data:`SPLIT`, :data:`MERGE` or both (see the module docstring)."""
    if seg.shape != gt.shape:
        raise EmError(f"shapes differ: segmentation {seg.shape} but ground truth {gt.shape}")
    s = np.asarray(seg).astype(np.uint64)
    g = np.asarray(gt).astype(np.uint64)
    counted = np.ones(g.shape, bool) if overlaps.gt_zero_counts else g != 0
    main_seg, known_gt = _lookup(overlaps.gt_ids, overlaps.main_seg, g)
    main_gt, known_seg = _lookup(overlaps.seg_ids, overlaps.main_gt, s)
    split = counted & known_gt & (main_seg != s)
    merge = counted & known_seg & (main_gt != g)
    return (split * np.uint8(SPLIT) | merge * np.uint8(MERGE)).astype(np.uint8)


def error_tile(background: np.ndarray, seg: np.ndarray, gt: np.ndarray, overlaps: LargestOverlaps) -> np.ndarray:
    """``background`` (RGB uint8, the shape of ``seg``) with the split/merge errors tinted and the
    segmentation's outlines (:func:`emtools.pictures.drawing.outline_mask`) drawn over them."""
    classes = split_merge_classes(seg, gt, overlaps)
    out = background
    for code, colour in ERROR_COLOURS.items():
        out = tint(out, classes == code, colour, ERROR_ALPHA)
    return draw_outlines(out, seg, OUTLINE_RGB)
