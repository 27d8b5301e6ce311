"""Argument checks shared by library functions: one-line EmError messages naming the argument."""

from __future__ import annotations

import math

import numpy as np

from emtools.errors import EmError


def check_shape(shape_zyx, max_voxels: int = 2**31 - 1):
    """The shape as 3 positive ints; one-line EmError otherwise (or past ``max_voxels``)."""
    message = f"shape_zyx must be 3 positive integers (z, y, x), got {shape_zyx!r}"
    try:
        items = tuple(shape_zyx)
    except TypeError:
        raise EmError(message) from None
    if len(items) != 3 or not all(is_int(v) and v > 0 for v in items):
        raise EmError(message)
    shape = tuple(int(v) for v in items)
    if math.prod(shape) > max_voxels:
        raise EmError(f"shape_zyx {shape} has more than {max_voxels} voxels; make it in pieces")
    return shape


def is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_))


def check_positive_triple(values, name):
    message = f"{name} must be 3 positive numbers in nm (z, y, x), got {values!r}"
    try:
        items = tuple(values)
    except TypeError:
        raise EmError(message) from None
    if len(items) != 3 or not all(is_real(v) and math.isfinite(v) and v > 0 for v in items):
        raise EmError(message)
    return tuple(float(v) for v in items)


def check_seed(seed):
    if not is_int(seed) or seed < 0:
        raise EmError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_number(value, name, allow_zero=False):
    if not is_real(value) or not math.isfinite(value) or value < 0 or (
            value == 0 and not allow_zero):
        raise EmError(f"{name} must be a {'number >= 0' if allow_zero else 'positive number'}, "
                      f"got {value!r}")
    return float(value)
