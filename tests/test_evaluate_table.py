"""The contingency-table core of em-eval: hand cases, a numpy reference, dtypes, memory orders."""

import numpy as np
import pytest

from emtools.errors import EmError
from emtools.evaluate.table import (
    ContingencyAccumulator,
    check_labels,
    contingency_table,
    group_sum,
)


def reference_table(gt, seg, skip):
    """The slow, obvious table: np.unique over stacked (gt, seg) pairs."""
    g = np.asarray(gt).ravel().astype(np.uint64)
    s = np.asarray(seg).ravel().astype(np.uint64)
    if skip == "gt-zero":
        keep = g != 0
    elif skip == "both-zero":
        keep = (g != 0) | (s != 0)
    else:
        keep = np.ones(g.size, bool)
    if not keep.any():
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64)
    pairs, counts = np.unique(np.stack([g[keep], s[keep]]), axis=1, return_counts=True)
    return pairs[0], pairs[1], counts


def assert_table(table, gt, seg, skip):
    g, s, c = reference_table(gt, seg, skip)
    np.testing.assert_array_equal(table.gt, g)
    np.testing.assert_array_equal(table.seg, s)
    np.testing.assert_array_equal(table.count, c)
    assert table.voxels == np.asarray(gt).size
    assert table.gt.dtype == np.uint64 and table.count.dtype == np.int64


def test_hand_made_table():
    gt = np.array([[[1, 1, 2, 0]]], np.uint64)
    seg = np.array([[[5, 5, 5, 5]]], np.uint32)
    table = contingency_table(gt, seg)
    assert table.gt.tolist() == [1, 2] and table.seg.tolist() == [5, 5] and table.count.tolist() == [2, 1]
    assert table.counted == 3 and table.voxels == 4
    full = contingency_table(gt, seg, skip="none")
    assert full.gt.tolist() == [0, 1, 2] and full.count.tolist() == [1, 2, 1]
    ids, sizes = full.seg_sizes()
    assert ids.tolist() == [5] and sizes.tolist() == [4]


def test_both_zero_skips_only_common_background():
    gt = np.array([[[0, 0, 3, 3, 0]]], np.uint64)
    seg = np.array([[[0, 7, 7, 0, 0]]], np.uint64)
    table = contingency_table(gt, seg, skip="both-zero")
    assert list(zip(table.gt.tolist(), table.seg.tolist(), table.count.tolist())) == [(0, 7, 1), (3, 0, 1), (3, 7, 1)]


@pytest.mark.parametrize("gt_dtype,seg_dtype", [
    (np.uint64, np.uint64), (np.uint32, np.uint32), (np.uint64, np.uint32), (np.int32, np.int32),
    (np.uint8, np.uint16), (np.int64, np.uint64), (bool, bool),
])
@pytest.mark.parametrize("order", ["C", "F", "strided", "mixed"])
@pytest.mark.parametrize("skip", ["none", "gt-zero", "both-zero"])
def test_random_volumes_match_the_reference(gt_dtype, seg_dtype, order, skip):
    rng = np.random.default_rng(7)
    high = 2 if gt_dtype is bool else 6
    gt = rng.integers(0, high, (6, 9, 11)).astype(gt_dtype)
    seg = rng.integers(0, 2 if seg_dtype is bool else 9, (6, 9, 11)).astype(seg_dtype)
    gt[:, :3] = gt[0, 0, 0]  # runs of equal pairs, as real data has
    if order == "F":
        gt, seg = np.asfortranarray(gt), np.asfortranarray(seg)
    elif order == "strided":
        gt, seg = gt[:, ::2, 1:], seg[:, ::2, 1:]
    elif order == "mixed":
        seg = np.asfortranarray(seg)
    assert_table(contingency_table(gt, seg, skip=skip), gt, seg, skip)


def test_big_endian_labels_are_counted():
    gt = np.arange(24).reshape(2, 3, 4).astype(">u4") % 5
    seg = np.arange(24).reshape(2, 3, 4).astype(">i8") % 3
    assert_table(contingency_table(gt, seg, skip="none"), gt, seg, "none")


def test_large_and_extreme_label_values():
    top = np.iinfo(np.uint64).max
    gt = np.array([[[top, top, 1, 2**63, 0]]], np.uint64)
    seg = np.array([[[top - 1, top - 1, top, 0, 2**40]]], np.uint64)
    assert_table(contingency_table(gt, seg, skip="none"), gt, seg, "none")


def test_table_grows_past_many_distinct_pairs():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 400, (4, 50, 60), dtype=np.uint64)
    seg = rng.integers(0, 300, (4, 50, 60), dtype=np.uint64) * np.uint64(2**33)
    table = contingency_table(gt, seg, skip="none")
    assert table.count.size > 10_000
    assert_table(table, gt, seg, "none")


def test_slabs_add_up_to_the_whole_volume():
    rng = np.random.default_rng(2)
    gt = rng.integers(0, 5, (12, 10, 10), dtype=np.uint64)
    seg = rng.integers(0, 5, (12, 10, 10), dtype=np.uint32)
    acc = ContingencyAccumulator("gt-zero")
    for z0 in range(0, 12, 5):
        acc.add(gt[z0 : z0 + 5], seg[z0 : z0 + 5])
    whole = contingency_table(gt, seg)
    parts = acc.result()
    for name in ("gt", "seg", "count"):
        np.testing.assert_array_equal(getattr(parts, name), getattr(whole, name))
    assert parts.voxels == whole.voxels == gt.size


def test_empty_and_single_voxel_volumes():
    empty = contingency_table(np.zeros((0, 3, 3), np.uint64), np.zeros((0, 3, 3), np.uint64))
    assert empty.count.size == 0 and empty.voxels == 0 and empty.counted == 0
    one = contingency_table(np.ones((1, 1, 1), np.uint64), np.full((1, 1, 1), 9, np.uint64))
    assert one.gt.tolist() == [1] and one.seg.tolist() == [9] and one.count.tolist() == [1]
    background = contingency_table(np.zeros((2, 2, 2), np.uint64), np.ones((2, 2, 2), np.uint64))
    assert background.count.size == 0 and background.voxels == 8


def test_shape_mismatch_is_an_error():
    with pytest.raises(EmError, match="shapes differ"):
        contingency_table(np.zeros((2, 3, 4), np.uint64), np.zeros((2, 4, 3), np.uint64))


def test_group_sum_matches_bincount():
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 50, 1000).astype(np.uint64) * np.uint64(10**12)
    weights = rng.integers(1, 9, 1000)
    uniq, sums = group_sum(keys, weights)
    ref_keys, inverse = np.unique(keys, return_inverse=True)
    np.testing.assert_array_equal(uniq, ref_keys)
    np.testing.assert_array_equal(sums, np.bincount(inverse, weights=weights).astype(np.int64))


def test_group_sum_keeps_key_zero_apart_and_grows_its_table():
    # key 0 marks an empty slot of the shared key table, so group_sum keeps it aside; 5000
    # distinct keys regrow the table several times
    rng = np.random.default_rng(4)
    keys = np.concatenate([np.array([0, 2**64 - 1, 0], np.uint64), (rng.integers(0, 5000, 20000) * 7919).astype(np.uint64)])
    weights = rng.integers(-3, 9, keys.size)
    uniq, sums = group_sum(keys, weights)
    ref_keys, inverse = np.unique(keys, return_inverse=True)
    np.testing.assert_array_equal(uniq, ref_keys)
    np.testing.assert_array_equal(sums, np.bincount(inverse, weights=weights).astype(np.int64))
    empty = group_sum(np.zeros(0, np.uint64), np.zeros(0, np.int64))
    assert empty[0].size == 0 and empty[1].size == 0


@pytest.mark.parametrize("array,fragment", [
    (np.zeros((2, 2, 2), np.float32), "floating point"),
    (np.full((2, 2, 2), -1, np.int32), "negative labels"),
    (np.zeros((2, 2, 2), np.complex64), "dtype complex64"),
    (np.zeros((2, 2, 2), object), "dtype object"),
])
def test_check_labels_refuses_what_is_not_labels(array, fragment):
    with pytest.raises(EmError, match=fragment):
        check_labels(array, "segmentation")


def test_check_labels_accepts_integers_and_bool():
    for dtype in (np.uint64, np.uint32, np.int32, np.uint8, bool):
        check_labels(np.ones((2, 2, 2), dtype), "x")
