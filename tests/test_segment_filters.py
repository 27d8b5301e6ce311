"""The compiled box maximum equals scipy's maximum_filter (mode="nearest") exactly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from emtools.errors import EmError
from emtools.segment.filters import maximum_filter


@pytest.mark.parametrize(
    "shape, size",
    [((5, 7, 9), (1, 3, 5)), ((6, 11, 4), (3, 9, 1)), ((3, 3, 3), (7, 7, 7)), ((1, 1, 10), (1, 1, 21)),
     ((4, 20, 33), (1, 9, 9)), ((9, 2, 2), (5, 1, 1)), ((2, 3, 4), (1, 1, 1))],
)
def test_box_maximum_equals_scipy_nearest(shape, size):
    rng = np.random.default_rng(sum(shape) + sum(size))
    volume = rng.random(shape, dtype=np.float32)
    expected = ndimage.maximum_filter(volume, size=size, mode="nearest")
    got = maximum_filter(volume, size)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_plateaus_ties_and_infinities_and_the_input_untouched():
    volume = np.zeros((3, 8, 8), np.float32)
    volume[1, 2:4, 2:4] = 5.0
    volume[0, 7, 7] = np.inf
    volume[2, 0, 0] = -np.inf
    before = volume.copy()
    got = maximum_filter(volume, (3, 3, 3))
    np.testing.assert_array_equal(got, ndimage.maximum_filter(volume, size=3, mode="nearest"))
    np.testing.assert_array_equal(volume, before)


def test_other_dtypes_and_memory_orders_are_taken_as_float32():
    rng = np.random.default_rng(1)
    volume = np.asfortranarray(rng.integers(0, 100, (4, 6, 5)).astype(np.float64))
    np.testing.assert_array_equal(maximum_filter(volume, (3, 1, 3)),
                                  ndimage.maximum_filter(volume.astype(np.float32), size=(3, 1, 3), mode="nearest"))
    assert maximum_filter(np.zeros((0, 4, 4), np.float32), (3, 3, 3)).shape == (0, 4, 4)


@pytest.mark.parametrize("size", [(2, 3, 3), (3, 3), (0, 1, 1), (3, -1, 3)])
def test_bad_sizes_are_one_clear_error(size):
    with pytest.raises(EmError, match="odd positive"):
        maximum_filter(np.zeros((3, 3, 3), np.float32), size)


def test_a_volume_that_is_not_3d_is_refused():
    with pytest.raises(EmError, match="3D"):
        maximum_filter(np.zeros((3, 3), np.float32), (1, 1, 1))
