"""An open-addressing hash table of uint64 keys -> int64 values, for the compiled kernels.

Two arrays of a power-of-two size: ``keys`` (0 = empty slot, so keys must be non-zero) and
``values``; ``shift = 64 - log2(size)``. Fibonacci hashing, linear probing, and backward-shift
deletion (no tombstones). Callers keep the load factor at 1/2 or below (:func:`rehash`).
Used for (fragment, fragment) pair keys by the region graph and the agglomeration.
"""

from __future__ import annotations

import numpy as np

from emtools.native import helper


def empty_table(bits: int) -> tuple[np.ndarray, np.ndarray, np.uint64]:
    """(keys, values, shift) of an empty table with 2**bits slots."""
    return np.zeros(1 << bits, np.uint64), np.empty(1 << bits, np.int64), np.uint64(64 - bits)


@helper
def slot(key, shift):
    return np.int64((key * np.uint64(0x9E3779B97F4A7C15)) >> shift)


@helper
def find_or_add(keys, values, shift, key, new_value):
    """The value stored for ``key``, or store ``new_value`` for it; returns (value, added)."""
    mask = keys.size - 1
    i = slot(key, shift)
    while True:
        k = keys[i]
        if k == key:
            return values[i], False
        if k == 0:
            keys[i] = key
            values[i] = new_value
            return new_value, True
        i = (i + 1) & mask


@helper
def insert(keys, values, shift, key, value):
    """Store ``key`` (known to be absent) -> ``value``."""
    mask = keys.size - 1
    i = slot(key, shift)
    while keys[i] != 0:
        i = (i + 1) & mask
    keys[i] = key
    values[i] = value


@helper
def lookup(keys, values, shift, key):
    """The value stored for ``key``, or -1."""
    mask = keys.size - 1
    i = slot(key, shift)
    while True:
        k = keys[i]
        if k == key:
            return values[i]
        if k == 0:
            return -1
        i = (i + 1) & mask


@helper
def remove(keys, values, shift, key):
    """Delete ``key`` if present, shifting later entries of its probe run back."""
    mask = keys.size - 1
    i = slot(key, shift)
    while keys[i] != key:
        if keys[i] == 0:
            return
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        k = keys[j]
        if k == 0:
            break
        home = slot(k, shift)
        # entry j may stay if its home lies cyclically in (i, j]
        if i <= j:
            stays = i < home <= j
        else:
            stays = home > i or home <= j
        if stays:
            continue
        keys[i] = k
        values[i] = values[j]
        i = j
    keys[i] = 0


@helper
def rehash(keys, values, bits):
    """A new table with 2**bits slots holding the same entries; returns (keys, values)."""
    new_keys = np.zeros(1 << bits, np.uint64)
    new_values = np.empty(1 << bits, np.int64)
    shift = np.uint64(64 - bits)
    for i in range(keys.size):
        if keys[i] != 0:
            insert(new_keys, new_values, shift, keys[i], values[i])
    return new_keys, new_values
