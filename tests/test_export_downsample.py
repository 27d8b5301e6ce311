"""Pyramid planning and the mean/mode/stride steps, against naive per-block loops."""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest

from emtools.errors import EmError
from emtools.export.downsample import downsample, plan_scales, scale_box


def test_plan_isotropic_halves_every_axis_until_one_chunk_holds_it():
    assert plan_scales((256, 256, 256), (8, 8, 8), (64, 64, 64)) == [(2, 2, 2), (2, 2, 2)]
    assert plan_scales((64, 64, 64), (8, 8, 8), (64, 64, 64)) == []
    assert plan_scales((65, 10, 10), (8, 8, 8), (64, 64, 64)) == [(2, 2, 2)]


def test_plan_anisotropic_halves_the_fine_axes_first():
    steps = plan_scales((100, 4000, 4000), (30, 6, 6), (64, 64, 64))
    assert steps[:3] == [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    voxel = np.array([30.0, 6, 6])
    for step in steps:
        voxel *= step
    assert voxel[0] >= voxel[1] / 2  # never far coarser in-plane than in z


def test_plan_never_halves_a_single_section_and_obeys_max_scales():
    assert plan_scales((1, 512, 512), (40, 4, 4), (64, 64, 64))[0] == (1, 2, 2)
    assert all(s[0] == 1 for s in plan_scales((1, 512, 512), (4, 4, 4), (64, 64, 64)))
    assert plan_scales((256, 256, 256), (8, 8, 8), (64, 64, 64), max_scales=2) == [(2, 2, 2)]
    assert plan_scales((256, 256, 256), (8, 8, 8), (64, 64, 64), max_scales=1) == []
    with pytest.raises(EmError, match="at least 1"):
        plan_scales((8, 8, 8), (1, 1, 1), (4, 4, 4), max_scales=0)


def test_scale_box_sits_on_the_world_grid():
    assert scale_box((3, 0, 1), (4, 5, 6), (2, 2, 2)) == ((1, 0, 0), (3, 3, 4))
    assert scale_box((0, 0, 0), (1, 1, 1), (1, 2, 2)) == ((0, 0, 0), (1, 1, 1))


def _naive(array, begin, factor, reduce):
    """Each coarse voxel from the fine voxels of its world-aligned block that the array holds."""
    out_begin, out_shape = scale_box(begin, array.shape[-3:], factor)
    out = np.zeros(array.shape[:-3] + out_shape, dtype=array.dtype)
    for index in itertools.product(*(range(s) for s in out_shape)):
        lo = [(ob + i) * f - b for ob, i, f, b in zip(out_begin, index, factor, begin)]
        sl = tuple(slice(max(low, 0), min(low + f, s)) for low, f, s in zip(lo, factor, array.shape[-3:]))
        out[(Ellipsis,) + index] = reduce(array[(Ellipsis,) + sl])
    return out, out_begin


def _mean(block):
    values = block.reshape(block.shape[:-3] + (-1,)).astype(np.float64).mean(axis=-1)
    return np.rint(values) if np.issubdtype(block.dtype, np.integer) else values


def _mode(block):
    counts = collections.Counter(block.ravel().tolist())
    best = max(counts.values())
    return min(v for v, c in counts.items() if c == best)


def _first(block):
    return block[(Ellipsis, 0, 0, 0)]


CASES = [((6, 7, 9), (0, 0, 0), (2, 2, 2)), ((5, 8, 7), (1, 3, 2), (2, 2, 2)), ((3, 9, 10), (1, 1, 5), (1, 2, 2)),
         ((4, 4, 4), (0, 0, 0), (1, 1, 1)), ((1, 1, 1), (7, 7, 7), (2, 2, 2))]


@pytest.mark.parametrize("shape,begin,factor", CASES)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_mean_matches_the_naive_block_mean(shape, begin, factor, dtype):
    rng = np.random.default_rng(0)
    array = (rng.random(shape) * 250).astype(dtype)
    out, out_begin = downsample(array, begin, factor, "mean")
    expect, expect_begin = _naive(array, begin, factor, _mean)
    assert out.dtype == array.dtype and out_begin == expect_begin
    np.testing.assert_allclose(out.astype(np.float64), expect.astype(np.float64), rtol=1e-6)


def test_mean_keeps_channels_apart():
    array = np.stack([np.zeros((4, 4, 4), np.float32), np.ones((4, 4, 4), np.float32)])
    out, _ = downsample(array, (0, 0, 0), (2, 2, 2), "mean")
    assert out.shape == (2, 2, 2, 2) and out[0].max() == 0 and out[1].min() == 1


@pytest.mark.parametrize("shape,begin,factor", CASES)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint32, np.uint64])
def test_mode_matches_the_naive_most_frequent_value(shape, begin, factor, dtype):
    rng = np.random.default_rng(1)
    values = np.array([0, 3, 2**31 + 5, 7], dtype=np.uint64).astype(dtype)
    array = values[rng.integers(0, 4, size=shape)]
    out, out_begin = downsample(array, begin, factor, "mode")
    expect, expect_begin = _naive(array, begin, factor, _mode)
    assert out.dtype == array.dtype and out_begin == expect_begin
    np.testing.assert_array_equal(out, expect)


def test_mode_by_hand_ties_go_to_the_smaller_id_and_0_counts():
    block = np.array([[[9, 9], [4, 4]], [[0, 0], [0, 1]]], dtype=np.uint64)
    assert downsample(block, (0, 0, 0), (2, 2, 2), "mode")[0].item() == 0  # three 0s win
    block[1] = [[9, 4], [9, 4]]
    assert downsample(block, (0, 0, 0), (2, 2, 2), "mode")[0].item() == 4  # 4 and 9 four each: the smaller


def test_mode_refuses_channels():
    with pytest.raises(EmError, match="single-channel"):
        downsample(np.zeros((2, 4, 4, 4), np.uint32), (0, 0, 0), (2, 2, 2), "mode")


@pytest.mark.parametrize("shape,begin,factor", CASES)
def test_stride_takes_each_blocks_first_voxel_it_holds(shape, begin, factor):
    array = np.arange(np.prod(shape), dtype=np.uint64).reshape(shape)
    out, out_begin = downsample(array, begin, factor, "stride")
    expect, expect_begin = _naive(array, begin, factor, _first)
    assert out_begin == expect_begin
    np.testing.assert_array_equal(out, expect)


def test_unknown_method_and_bad_factor():
    with pytest.raises(EmError, match="unknown downsampling method 'max'"):
        downsample(np.zeros((2, 2, 2)), (0, 0, 0), (2, 2, 2), "max")
    with pytest.raises(EmError, match=">= 1"):
        downsample(np.zeros((2, 2, 2)), (0, 0, 0), (0, 2, 2), "mean")
