"""Contingency tables of two label volumes: the one compiled core that every em-eval metric uses.

A contingency table counts, for every pair (ground-truth label g, predicted label s), the voxels
labelled g in the ground truth and s in the prediction. VOI, Rand, adapted Rand, instance IoUs
and voxel confusion matrices all follow from it, so the volume is read exactly once.

How the table is counted (``_count_pairs``, compiled, one pass, no copy of the labels)::

    voxels in memory order --> runs of equal (g, s) --> pair-count hash table
                               (labels change rarely       keyed by (g, s), linear probing,
                                along a row, so most        grown x2 when half full
                                voxels cost one compare)

The hash tables and the label check (:func:`check_labels`, re-exported here) are the shared
ones of :mod:`emtools.segment.structures`.

The table is additive: :class:`ContingencyAccumulator` adds slab after slab, so a volume larger
than memory is counted with the memory of one slab plus the table (which grows with the number
of overlapping pairs, not with the voxels).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from emtools.errors import EmError
from emtools.native import kernel
from emtools.segment.structures import (
    add_pair_count,
    check_labels,
    empty_pair_counts,
    find_or_add,
    grow_pair_counts,
    rehash,
    unsigned_view,
)

__all__ = [
    "SKIP_CHOICES",
    "Contingency",
    "ContingencyAccumulator",
    "check_labels",
    "contingency_table",
    "group_sum",
]

# Which voxels are left out of the table: none, those with ground truth 0, or those where both
# volumes are 0 (instance metrics only need foreground voxels; background runs cost nothing).
SKIP_CHOICES = ("none", "gt-zero", "both-zero")
_SKIP_CODE = {"none": 0, "gt-zero": 1, "both-zero": 2}
_INITIAL_ROWS = 1 << 12

_LABEL_TYPES = ("u1", "u2", "u4", "u8")  # ``unsigned_view`` maps every label type onto these


@kernel(*[f"{a}[::1], {b}[::1], i8, u8[:,::1], i8" for a in _LABEL_TYPES for b in _LABEL_TYPES])
def _count_pairs(gt, seg, skip, table, used):
    """Add the (gt, seg) pairs of two equally ordered 1D label arrays to the pair-count table.

    ``skip``: 0 counts every voxel, 1 leaves out gt == 0, 2 leaves out gt == 0 and seg == 0.
    Returns the (possibly regrown) table and the number of used rows.
    """
    run = np.uint64(0)
    one = np.uint64(1)
    px = np.uint64(0)
    py = np.uint64(0)
    for i in range(gt.size):
        x = np.uint64(gt[i])
        y = np.uint64(seg[i])
        if run > 0 and x == px and y == py:
            run += one
            continue
        if skip == 1 and x == 0:
            continue
        if skip == 2 and x == 0 and y == 0:
            continue
        if run > 0:
            if 2 * (used + 1) > table.shape[0]:
                table = grow_pair_counts(table)
            used += add_pair_count(table, px, py, run)
        px = x
        py = y
        run = one
    if run > 0:
        if 2 * (used + 1) > table.shape[0]:
            table = grow_pair_counts(table)
        used += add_pair_count(table, px, py, run)
    return table, used


@kernel("u8[::1], i8[::1]")
def _group_sum(keys, weights):
    """Unique keys and the sum of ``weights`` per key, in O(n): key 0 first (if present), the
    others in first-seen order."""
    bits = 10
    table_keys = np.zeros(1 << bits, np.uint64)
    table_index = np.empty(1 << bits, np.int64)
    shift = np.uint64(64 - bits)
    # row 0 sums key 0, which the key table cannot hold (0 marks its empty slots)
    out_keys = np.zeros(keys.size + 1, np.uint64)
    out_sums = np.zeros(keys.size + 1, np.int64)
    zero_seen = False
    n = 1
    i = 0
    while i < keys.size:
        if 2 * n > table_keys.size:
            bits += 1
            table_keys, table_index = rehash(table_keys, table_index, bits)
            shift = np.uint64(64 - bits)
        # regrown only out here, so the scan below sees fixed arrays (about 2x faster)
        limit = table_keys.size // 2
        while i < keys.size and n <= limit:
            x = keys[i]
            if x == 0:
                zero_seen = True
                out_sums[0] += weights[i]
            else:
                index, added = find_or_add(table_keys, table_index, shift, x, n)
                if added:
                    out_keys[n] = x
                    n += 1
                out_sums[index] += weights[i]
            i += 1
    first = 0 if zero_seen else 1
    return out_keys[first:n], out_sums[first:n]


def group_sum(keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``keys`` (uint64) and the int64 sum of ``weights`` for each."""
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    weights = np.ascontiguousarray(weights, dtype=np.int64)
    uniq, sums = _group_sum(keys, weights)
    order = np.argsort(uniq, kind="stable")
    return uniq[order], sums[order]


@dataclasses.dataclass(frozen=True)
class Contingency:
    """The overlap counts of a ground truth and a segmentation.

    ``gt``, ``seg``, ``count``: one entry per overlapping pair (int64 counts > 0), sorted by
    (gt, seg). ``skip`` tells which voxels were left out; ``voxels`` is how many voxels were
    looked at in total (counted or not: the CREMI adapted Rand normalises by it).
    """

    gt: np.ndarray
    seg: np.ndarray
    count: np.ndarray
    skip: str
    voxels: int

    @property
    def counted(self) -> int:
        """Voxels in the table."""
        return int(self.count.sum())

    def gt_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted ground-truth labels in the table and their voxel counts."""
        return group_sum(self.gt, self.count)

    def seg_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted segmentation labels in the table and their voxel counts."""
        return group_sum(self.seg, self.count)


class ContingencyAccumulator:
    """Count a contingency table piece by piece (slabs of a large volume): ``add`` then ``result``."""

    def __init__(self, skip: str = "gt-zero"):
        if skip not in SKIP_CHOICES:
            raise EmError(f"skip must be one of {', '.join(SKIP_CHOICES)}, got {skip!r}")
        self.skip = skip
        self._table = empty_pair_counts(_INITIAL_ROWS)
        self._used = 0
        self._voxels = 0

    def add(self, gt: np.ndarray, seg: np.ndarray) -> None:
        """Count the voxels of ``gt`` and ``seg`` (same shape, integer labels, any memory order)."""
        if gt.shape != seg.shape:
            raise EmError(f"shapes differ: ground truth {_fmt(gt.shape)} but segmentation {_fmt(seg.shape)}")
        gt_flat, seg_flat = _same_order_flat(unsigned_view(gt), unsigned_view(seg))
        self._table, self._used = _count_pairs(gt_flat, seg_flat, _SKIP_CODE[self.skip], self._table, self._used)
        self._voxels += int(gt.size)

    def result(self) -> Contingency:
        rows = self._table[self._table[:, 2] != 0]
        gt, seg, count = rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].astype(np.int64)
        order = np.lexsort((seg, gt))
        return Contingency(gt[order], seg[order], count[order], self.skip, self._voxels)


def contingency_table(gt: np.ndarray, seg: np.ndarray, skip: str = "gt-zero") -> Contingency:
    """The contingency table of ``gt`` and ``seg`` in one pass (see :class:`Contingency`)."""
    acc = ContingencyAccumulator(skip)
    acc.add(gt, seg)
    return acc.result()


def _same_order_flat(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1D views of ``a`` and ``b`` that walk the voxels in the same order, copying only if needed.

    Both C-ordered or both Fortran-ordered arrays are walked in their memory order without a
    copy (the table does not depend on the order); anything else is copied to C order.
    """
    if a.flags.c_contiguous and b.flags.c_contiguous:
        return a.reshape(-1), b.reshape(-1)
    if a.flags.f_contiguous and b.flags.f_contiguous:
        return a.reshape(-1, order="F"), b.reshape(-1, order="F")
    return np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1)


def _fmt(shape) -> str:
    return "x".join(str(s) for s in shape)
