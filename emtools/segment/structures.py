"""The data structures every segmentation and evaluation kernel shares, each written once.

- **Hash tables** (open addressing, linear probing, power-of-two sizes, load factor <= 1/2):

  - the *key table* maps non-zero uint64 keys to int64 values: two arrays ``keys`` (0 = empty
    slot) and ``values`` plus ``shift = 64 - log2(size)``; Fibonacci hashing, backward-shift
    deletion (no tombstones). Region graph and agglomeration key it by a fragment pair packed
    into one uint64 (``lo * (n + 1) + hi``); :func:`emtools.evaluate.table.group_sum` by label.
  - the *pair-count table* adds counts to pairs of full uint64 labels: one ``(size, 3)`` uint64
    array of rows ``(x, y, count)`` (count 0 = free), so a probe touches one cache line. The
    contingency table of em-eval counts into it.

- **Binary min-heap** of (key, tie, item) in three parallel arrays, ordered by (key, tie): the
  merge queue of the agglomeration (cost, edge, stamp) and the dips of exact flooding (level,
  push time, voxel). Fixed size, or grown by doubling (:func:`heap_reserve`).
- **Union-find** over ``parent`` (int64, ``parent[k] = k`` for roots) with path compression;
  the root of every set is its smallest index (so a segment takes its smallest fragment id).
- **Label checks**: the one rule for what counts as a label volume, and its one-line errors.

Functions marked ``@helper`` are inlined into the kernels that call them (:mod:`emtools.native`);
the ``@kernel`` ones are also called from Python.
"""

from __future__ import annotations

import numpy as np

from emtools.errors import EmError
from emtools.native import helper, kernel

__all__ = [
    "FIBONACCI", "add_pair_count", "check_label_dtype", "check_labels", "empty_pair_counts",
    "empty_table", "find", "find_or_add", "find_roots", "grow_pair_counts", "heap_pop", "heap_push", "heap_reserve",
    "insert", "lookup", "pair_slot", "rehash", "remove", "resized", "slot", "unite", "unite_pairs",
    "unsigned_view",
]

# ----------------------------------------------------------------------------- hashing

# 2^64 / golden ratio: multiplying by it spreads consecutive ids over the whole word, whose top
# bits then make a good slot (Fibonacci hashing); the second odd constant mixes in a second key.
FIBONACCI = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xC2B2AE3D27D4EB4F)
_S29 = np.uint64(29)
_S32 = np.uint64(32)


@helper
def slot(key, shift):
    """Home slot of ``key`` in a key table of ``2**(64 - shift)`` slots."""
    return np.int64((key * FIBONACCI) >> shift)


@helper
def pair_slot(x, y, mask):
    """Home slot of the pair (x, y) in a pair-count table of ``mask + 1`` rows."""
    h = (x * FIBONACCI) ^ ((y ^ (y >> _S32)) * _MIX)
    h ^= h >> _S29
    return np.int64(h & mask)


# ----------------------------------------------------------------------------- key table

def empty_table(bits: int) -> tuple[np.ndarray, np.ndarray, np.uint64]:
    """(keys, values, shift) of an empty key table with 2**bits slots."""
    return np.zeros(1 << bits, np.uint64), np.empty(1 << bits, np.int64), np.uint64(64 - bits)


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


# ----------------------------------------------------------------------------- pair-count table

def empty_pair_counts(rows: int = 1 << 12) -> np.ndarray:
    """An empty pair-count table of ``rows`` rows (a power of two)."""
    return np.zeros((rows, 3), np.uint64)


@helper
def add_pair_count(table, x, y, count):
    """Add ``count`` (> 0) to the row of (x, y); returns 1 when the row is new, else 0.

    The caller keeps the table at most half full (:func:`grow_pair_counts`), so probing ends.
    """
    mask = np.uint64(table.shape[0] - 1)
    i = pair_slot(x, y, mask)
    while True:
        if table[i, 2] == 0:
            table[i, 0] = x
            table[i, 1] = y
            table[i, 2] = count
            return 1
        if table[i, 0] == x and table[i, 1] == y:
            table[i, 2] += count
            return 0
        i = (i + 1) & np.int64(mask)


@helper
def grow_pair_counts(table):
    """A table twice the size holding the same rows."""
    new = np.zeros((table.shape[0] * 2, 3), np.uint64)
    for i in range(table.shape[0]):
        if table[i, 2] != 0:
            add_pair_count(new, table[i, 0], table[i, 1], table[i, 2])
    return new


# ----------------------------------------------------------------------------- growable arrays

@helper
def resized(array, size):
    """A new 1D array of ``size`` elements starting with ``array`` (zeros after it)."""
    out = np.zeros(size, array.dtype)
    n = min(size, array.size)
    out[:n] = array[:n]
    return out


# ----------------------------------------------------------------------------- binary heap

@helper
def _before(k1, t1, k2, t2):
    return k1 < k2 or (k1 == k2 and t1 < t2)


@helper
def heap_reserve(keys, ties, items, size):
    """The heap's arrays with room for one more push: the same ones, or doubled copies if full.

    Apart from :func:`heap_push` so that a caller who sized the arrays up front never rebinds
    them in its loop (the compiler then keeps their pointers in registers).
    """
    if size < keys.size:
        return keys, ties, items
    return resized(keys, 2 * keys.size + 1), resized(ties, 2 * ties.size + 1), resized(items, 2 * items.size + 1)


@helper
def heap_push(keys, ties, items, size, key, tie, item):
    """Push (key, tie, item) on the heap in ``[:size]`` of the three arrays (``size`` below
    their length: see :func:`heap_reserve`); the caller counts ``size``."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if not _before(key, tie, keys[parent], ties[parent]):
            break
        keys[i] = keys[parent]
        ties[i] = ties[parent]
        items[i] = items[parent]
        i = parent
    keys[i] = key
    ties[i] = tie
    items[i] = item


@helper
def heap_pop(keys, ties, items, size):
    """Remove the smallest (key, tie) of the heap in ``[:size]`` (size > 0); returns (key, tie, item)."""
    top = (keys[0], ties[0], items[0])
    size -= 1
    k, t, x = keys[size], ties[size], items[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and _before(keys[child + 1], ties[child + 1], keys[child], ties[child]):
            child += 1
        if not _before(keys[child], ties[child], k, t):
            break
        keys[i] = keys[child]
        ties[i] = ties[child]
        items[i] = items[child]
        i = child
    keys[i] = k
    ties[i] = t
    items[i] = x
    return top


# ----------------------------------------------------------------------------- union-find

@helper
def find(parent, x):
    """Root of ``x``, compressing the path on the way."""
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:
        nxt = parent[x]
        parent[x] = root
        x = nxt
    return root


@helper
def unite(parent, a, b):
    """Join the sets of ``a`` and ``b`` under the smaller root; returns False if already one."""
    ra = find(parent, a)
    rb = find(parent, b)
    if ra == rb:
        return False
    if ra < rb:
        parent[rb] = ra
    else:
        parent[ra] = rb
    return True


@kernel("i8[::1], i8[::1], i8[::1]")
def unite_pairs(parent, a, b):
    """:func:`unite` ``a[i]`` with ``b[i]`` for every i, in order."""
    for i in range(a.size):
        unite(parent, a[i], b[i])


@kernel("i8[::1]")
def find_roots(parent):
    """The root of every index (a new int64 array); compresses every path."""
    out = np.empty(parent.size, np.int64)
    for k in range(parent.size):
        out[k] = find(parent, k)
    return out


# ----------------------------------------------------------------------------- label checks

def check_label_dtype(dtype, name: str) -> None:
    """Refuse, in one line, a dtype that is not labels: unsigned, signed and bool are fine."""
    dtype = np.dtype(dtype)
    if dtype.kind in "bui":
        return
    if dtype.kind == "f":
        raise EmError(
            f"{name} is {dtype} (floating point); labels must be integers "
            "(uint64 or uint32; threshold probabilities first)"
        )
    raise EmError(f"{name} has dtype {dtype}; labels must be integers (uint64 or uint32)")


def check_labels(array: np.ndarray, name: str, ndim: int | None = None) -> np.ndarray:
    """Refuse, in one line, what is not a label volume: floats, negative ids, complex, objects.

    Returns ``np.asarray(array)`` (bool counts as labels 0/1). ``ndim=3`` also asks for a
    (z, y, x) volume. Signed integers are scanned for negative values (one pass); unsigned
    ones cost nothing.
    """
    array = np.asarray(array)
    if ndim is not None and array.ndim != ndim:
        axes = " (z, y, x)" if ndim == 3 else ""
        raise EmError(f"{name} must be {ndim}D{axes}, got shape {array.shape}")
    check_label_dtype(array.dtype, name)
    if array.dtype.kind == "i" and array.size:
        low = int(array.min())
        if low < 0:
            raise EmError(f"{name} has negative labels (min {low}); labels must be >= 0")
    return array


def unsigned_view(array: np.ndarray) -> np.ndarray:
    """Checked labels as unsigned integers of the same size, without a copy where possible.

    Kernels then compile for 4 label types instead of 9. Signed labels must have been checked
    non-negative (:func:`check_labels`), so their values are unchanged; labels in non-native
    byte order (big-endian HDF5 or TIFF) are converted, which copies them.
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
