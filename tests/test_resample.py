"""emtools.resample: whole-number factors, block means, label modes, and interpolation back up
that gives the same values whether a volume is done whole or in blocks."""

import numpy as np
import pytest

from emtools import resample
from emtools.tiling.geometry import Box


def test_factors_are_whole_numbers_or_none():
    assert resample.factors((5, 5, 5), (10, 10, 10)) == (2, 2, 2)
    assert resample.factors((40, 4, 4), (40, 8, 8)) == (1, 2, 2)
    assert resample.factors((5, 5, 5), (9.6, 10.4, 5)) == (2, 2, 1)  # within 5%
    assert resample.factors((5, 5, 5), (9.4, 10, 5)) is None
    assert resample.factors((5, 4, 4), (10, 10, 10)) is None  # 2.5
    assert resample.factors((10, 10, 10), (5, 5, 5)) is None  # coarser input: nothing to average
    assert resample.factors((0, 5, 5), (10, 10, 10)) is None


def test_boxes_between_grids():
    box = Box((3, 5, 0), (7, 10, 4))
    assert resample.coarse_box(box, (2, 2, 1)) == Box((1, 2, 0), (4, 5, 4))
    assert resample.fine_box(Box((1, 2, 0), (4, 5, 4)), (2, 2, 1)) == Box((2, 4, 0), (8, 10, 4))


def test_downsample_mean_of_blocks():
    array = np.arange(2 * 4 * 6, dtype=np.uint8).reshape(2, 4, 6)
    out = resample.downsample_mean(array, (2, 2, 3))
    assert out.shape == (1, 2, 2) and out.dtype == np.float32
    assert out[0, 0, 0] == array[:, :2, :3].mean() and out[0, 1, 1] == array[:, 2:, 3:].mean()
    channels = np.stack([array, 2 * array.astype(np.float32)])
    np.testing.assert_array_equal(resample.downsample_mean(channels, (2, 2, 3)), np.stack([out, 2 * out]))
    with pytest.raises(ValueError):
        resample.downsample_mean(array, (2, 3, 3))


def test_downsample_mode_keeps_the_majority_and_breaks_ties_low():
    labels = np.zeros((2, 2, 4), np.uint64)
    labels[:, :, :2] = [[[7, 7], [7, 3]], [[7, 3], [3, 3]]]  # 4 of 7, 4 of 3: tie, the smaller wins
    labels[:, :, 2:] = [[[9, 9], [9, 9]], [[9, 9], [0, 5]]]  # 6 of 9
    out = resample.downsample_mode(labels, (2, 2, 2))
    assert out.dtype == np.uint64 and out.tolist() == [[[3, 9]]]
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 4, (4, 6, 6)).astype(np.uint32)
    got = resample.downsample_mode(ids, (2, 3, 3))
    for z, y, x in np.ndindex(got.shape):
        block = ids[2 * z: 2 * z + 2, 3 * y: 3 * y + 3, 3 * x: 3 * x + 3].ravel()
        counts = np.bincount(block)
        assert got[z, y, x] == np.flatnonzero(counts == counts.max())[0]
    assert resample.downsample_mode(ids, (1, 1, 1)) is ids


def test_upsample_linear_is_exact_at_factor_one_and_on_ramps():
    rng = np.random.default_rng(2)
    values = rng.random((2, 3, 4, 5)).astype(np.float32)
    box = Box((1, 2, 3), (4, 6, 8))
    np.testing.assert_array_equal(resample.upsample_linear(values, box, (1, 1, 1), box), values)
    # a linear ramp along x at coarse centres k (fine coordinate 2k + 0.5) stays linear inside
    ramp = np.broadcast_to(np.arange(6, dtype=np.float32), (1, 1, 6)).copy()
    fine = resample.upsample_linear(ramp, Box((0, 0, 0), (1, 1, 6)), (1, 1, 2), Box((0, 0, 0), (1, 1, 12)))
    expected = np.clip((np.arange(12) + 0.5) / 2 - 0.5, 0, 5)  # clamped at the coarse edge voxels
    np.testing.assert_allclose(fine[0, 0], expected, atol=1e-6)
    constant = np.full((3, 3, 3), 0.25, np.float32)
    up = resample.upsample_linear(constant, Box((0, 0, 0), (3, 3, 3)), (2, 2, 2), Box((0, 0, 0), (5, 6, 6)))
    assert up.shape == (5, 6, 6) and np.all(up == 0.25)


def test_upsample_in_blocks_equals_the_whole():
    """Each fine block needs its coarse box grown by one; clamping at the volume's coarse box makes
    blocks and the whole agree to the bit."""
    rng = np.random.default_rng(3)
    f = (2, 3, 2)
    fine_volume = Box((4, 9, 2), (15, 26, 13))  # not a multiple of the factors, not at the origin
    coarse_volume = resample.coarse_box(fine_volume, f)
    coarse = rng.random((2, *coarse_volume.shape)).astype(np.float32)
    whole = resample.upsample_linear(coarse, coarse_volume, f, fine_volume)
    assert whole.shape == (2, *fine_volume.shape)
    for begin, end in [((4, 9, 2), (9, 17, 7)), ((9, 17, 7), (15, 26, 13)), ((6, 12, 5), (7, 13, 6))]:
        out_box = Box(begin, end)
        grown = resample.coarse_box(out_box, f)
        grown = Box(tuple(b - 1 for b in grown.begin), tuple(e + 1 for e in grown.end)).intersect(coarse_volume)
        part = coarse[(slice(None),) + coarse_volume.local(grown)]
        got = resample.upsample_linear(part, grown, f, out_box, coarse_volume)
        np.testing.assert_array_equal(got, whole[(slice(None),) + fine_volume.local(out_box)])
    with pytest.raises(ValueError, match="do not cover"):
        resample.upsample_linear(coarse[:, 1:], Box((3, 4, 1), coarse_volume.end), f, fine_volume, coarse_volume)
