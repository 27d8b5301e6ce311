"""Contingency tables of two label volumes: the one compiled core that every em-eval metric uses.

A contingency table counts, for every pair (ground-truth label g, predicted label s), the voxels
labelled g in the ground truth and s in the prediction. VOI, Rand, adapted Rand, instance IoUs
and voxel confusion matrices all follow from it, so the volume is read exactly once.

How the table is counted (``_count_pairs``, compiled, one pass, no copy of the labels)::

    voxels in memory order --> runs of equal (g, s) --> open-addressing hash table
                               (labels change rarely       keyed by (g, s), linear probing,
                                along a row, so most        grown x2 when half full
                                voxels cost one compare)

The table is additive: :class:`ContingencyAccumulator` adds slab after slab, so a volume larger
than memory is counted with the memory of one slab plus the table (which grows with the number
of overlapping pairs, not with the voxels).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from emtools.errors import EmError
from emtools.native import helper, kernel

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

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_S29 = np.uint64(29)
_S32 = np.uint64(32)
_INITIAL_CAPACITY = 1 << 12


@helper
def _slot(x, y, mask):
    h = (x * _M1) ^ ((y ^ (y >> _S32)) * _M2)
    h ^= h >> _S29
    return np.int64(h & mask)


@helper
def _insert(table, x, y, c):
    """Add ``c`` to the entry (x, y); returns 1 when the entry is new.

    ``table`` rows are (gt, seg, count) side by side, so a probe touches one cache line; a row
    with count 0 is free.
    """
    mask = np.uint64(table.shape[0] - 1)
    i = _slot(x, y, mask)
    while True:
        if table[i, 2] == 0:
            table[i, 0] = x
            table[i, 1] = y
            table[i, 2] = c
            return 1
        if table[i, 0] == x and table[i, 1] == y:
            table[i, 2] += c
            return 0
        i = (i + 1) & np.int64(mask)


@helper
def _grow(table):
    new = np.zeros((table.shape[0] * 2, 3), np.uint64)
    for i in range(table.shape[0]):
        if table[i, 2] != 0:
            _insert(new, table[i, 0], table[i, 1], table[i, 2])
    return new


_LABEL_TYPES = ("u1", "u2", "u4", "u8")  # ``_unsigned`` maps every label type onto these


@kernel(*[f"{a}[::1], {b}[::1], i8, u8[:,::1], i8" for a in _LABEL_TYPES for b in _LABEL_TYPES])
def _count_pairs(gt, seg, skip, table, used):
    """Add the (gt, seg) pairs of two equally ordered 1D label arrays to the hash table.

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
                table = _grow(table)
            used += _insert(table, px, py, run)
        px = x
        py = y
        run = one
    if run > 0:
        if 2 * (used + 1) > table.shape[0]:
            table = _grow(table)
        used += _insert(table, px, py, run)
    return table, used


@kernel("u8[::1], i8[::1]")
def _group_sum(keys, weights):
    """Unique keys (in first-seen order) and the sum of ``weights`` per key, in O(n)."""
    capacity = _INITIAL_CAPACITY
    while capacity < 2 * keys.size + 2:
        capacity *= 2
    table_keys = np.zeros(capacity, np.uint64)
    table_index = np.full(capacity, -1, np.int64)
    out_keys = np.empty(keys.size, np.uint64)
    out_sums = np.zeros(keys.size, np.int64)
    n = 0
    mask = np.uint64(capacity - 1)
    zero = np.uint64(0)
    for i in range(keys.size):
        x = keys[i]
        j = _slot(x, zero, mask)
        while True:
            if table_index[j] < 0:
                table_keys[j] = x
                table_index[j] = n
                out_keys[n] = x
                out_sums[n] = weights[i]
                n += 1
                break
            if table_keys[j] == x:
                out_sums[table_index[j]] += weights[i]
                break
            j = (j + 1) & np.int64(mask)
    return out_keys[:n], out_sums[:n]


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
        self._table = np.zeros((_INITIAL_CAPACITY, 3), np.uint64)
        self._used = 0
        self._voxels = 0

    def add(self, gt: np.ndarray, seg: np.ndarray) -> None:
        """Count the voxels of ``gt`` and ``seg`` (same shape, integer labels, any memory order)."""
        if gt.shape != seg.shape:
            raise EmError(f"shapes differ: ground truth {_fmt(gt.shape)} but segmentation {_fmt(seg.shape)}")
        gt_flat, seg_flat = _same_order_flat(_unsigned(gt), _unsigned(seg))
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


def _unsigned(array: np.ndarray) -> np.ndarray:
    """The same bytes as unsigned integers (no copy), so the kernel compiles for 4 types, not 9.

    Signed labels must have been checked for negative values (:func:`check_labels`). Labels in
    non-native byte order (big-endian HDF5 or TIFF) are converted, which copies them.
    """
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    kind = array.dtype.kind
    if kind == "b":
        return array.view(np.uint8)
    if kind == "i":
        return array.view(np.dtype(f"u{array.dtype.itemsize}"))
    if kind != "u":
        raise EmError(f"labels must be integers, got {array.dtype}")
    return array


def _fmt(shape) -> str:
    return "x".join(str(s) for s in shape)


def check_labels(array: np.ndarray, name: str) -> np.ndarray:
    """Refuse, in one line, what is not a label volume: floats, negative ids, complex, objects.

    Returns the array unchanged (bool is accepted as labels 0/1). Signed integers are scanned
    for negative values (one pass), unsigned ones cost nothing.
    """
    kind = array.dtype.kind
    if kind == "b" or kind == "u":
        return array
    if kind == "i":
        if array.size and int(array.min()) < 0:
            raise EmError(f"{name} has negative labels (min {int(array.min())}); labels must be >= 0")
        return array
    if kind == "f":
        raise EmError(
            f"{name} is {array.dtype} (floating point); labels must be integers "
            "(uint64 or uint32; threshold probabilities first)"
        )
    raise EmError(f"{name} has dtype {array.dtype}; labels must be integers (uint64 or uint32)")
