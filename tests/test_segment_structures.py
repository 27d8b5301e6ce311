"""emtools.segment.structures: hash tables, heap, union-find and label checks, against naive references.

The helpers are called from Python here (plain functions unless a kernel already turned them
into numba dispatchers in this process: both must behave the same); uint64 hashing overflows
on purpose, hence the errstate.
"""

from collections import Counter

import numpy as np
import pytest

from emtools.errors import EmError
from emtools.segment import structures as S

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered")


# ----------------------------------------------------------------------------- key table

def test_key_table_matches_a_dict_through_adds_removes_and_rehashes():
    rng = np.random.default_rng(0)
    bits = 4
    keys, values, shift = S.empty_table(bits)
    reference = {}
    with np.errstate(over="ignore"):
        for step in range(600):
            key = np.uint64(rng.integers(1, 60)) * np.uint64(2**40 + 7)  # collide in low bits
            if rng.random() < 0.3 and reference:
                victim = np.uint64(list(reference)[rng.integers(len(reference))])
                S.remove(keys, values, shift, victim)
                del reference[int(victim)]
                continue
            value, added = S.find_or_add(keys, values, shift, key, step)
            assert added == (int(key) not in reference)
            reference.setdefault(int(key), step)
            assert value == reference[int(key)]
            if 2 * len(reference) > keys.size:
                bits += 1
                keys, values = S.rehash(keys, values, bits)
                shift = np.uint64(64 - bits)
        for key, value in reference.items():
            assert S.lookup(keys, values, shift, np.uint64(key)) == value
        assert S.lookup(keys, values, shift, np.uint64(12345)) == -1
    assert sorted(int(k) for k in keys if k != 0) == sorted(reference)


def test_insert_then_remove_everything_leaves_an_empty_table():
    keys, values, shift = S.empty_table(5)
    with np.errstate(over="ignore"):
        for k in range(1, 15):
            S.insert(keys, values, shift, np.uint64(k), k * 10)
        for k in range(1, 15):
            assert S.lookup(keys, values, shift, np.uint64(k)) == k * 10
            S.remove(keys, values, shift, np.uint64(k))
            assert S.lookup(keys, values, shift, np.uint64(k)) == -1
    assert not keys.any()


# ----------------------------------------------------------------------------- pair-count table

def test_pair_counts_match_a_counter_and_survive_growth():
    rng = np.random.default_rng(1)
    table = S.empty_pair_counts(4)
    used = 0
    reference = Counter()
    with np.errstate(over="ignore"):
        for _ in range(400):
            x = np.uint64(rng.integers(0, 30)) << np.uint64(rng.integers(0, 40))
            y = np.uint64(rng.integers(0, 2**63))
            count = np.uint64(rng.integers(1, 5))
            if 2 * (used + 1) > table.shape[0]:
                table = S.grow_pair_counts(table)
            used += S.add_pair_count(table, x, y, count)
            reference[(int(x), int(y))] += int(count)
    rows = table[table[:, 2] != 0]
    assert used == len(reference) == len(rows)
    assert {(int(x), int(y)): int(c) for x, y, c in rows} == dict(reference)


# ----------------------------------------------------------------------------- heap

@pytest.mark.parametrize("key_dtype", [np.float64, np.int64])
def test_heap_pops_in_key_then_tie_order_and_grows(key_dtype):
    rng = np.random.default_rng(2)
    keys = np.empty(1, key_dtype)
    ties = np.empty(1, np.int64)
    items = np.empty(1, np.int64)
    size = 0
    pushed = []
    for item in range(200):
        key = key_dtype(rng.integers(0, 8))  # many equal keys: the tie decides
        tie = int(rng.integers(0, 1000))
        keys, ties, items = S.heap_reserve(keys, ties, items, size)
        S.heap_push(keys, ties, items, size, key, tie, item)
        size += 1
        pushed.append((key, tie, item))
    assert keys.size >= 200
    popped = []
    while size:
        popped.append(tuple(S.heap_pop(keys, ties, items, size)))
        size -= 1
    assert [p[:2] for p in popped] == sorted(p[:2] for p in pushed)
    assert sorted(p[2] for p in popped) == list(range(200))


# ----------------------------------------------------------------------------- union-find

def test_union_find_roots_are_the_smallest_member():
    rng = np.random.default_rng(3)
    n = 60
    a = rng.integers(0, n, 45)
    b = rng.integers(0, n, 45)
    parent = np.arange(n, dtype=np.int64)
    S.unite_pairs(parent, a.astype(np.int64), b.astype(np.int64))
    roots = S.find_roots(parent)
    # naive reference: each class is labelled by its smallest member; merging two relabels both
    label = np.arange(n)
    for x, y in zip(a, b):
        lx, ly = label[x], label[y]
        label[(label == lx) | (label == ly)] = min(lx, ly)
    np.testing.assert_array_equal(roots, label)
    np.testing.assert_array_equal(parent, roots)  # find_roots compresses every path


def test_unite_says_whether_two_sets_joined():
    parent = np.arange(4, dtype=np.int64)
    assert S.unite(parent, 3, 1)
    assert not S.unite(parent, 1, 3)
    assert S.find(parent, 3) == 1


# ----------------------------------------------------------------------------- label checks

@pytest.mark.parametrize("array,fragment", [
    (np.zeros((2, 2, 2), np.float32), "x is float32 (floating point); labels must be integers"),
    (np.full((2, 2, 2), -3, np.int16), "x has negative labels (min -3); labels must be >= 0"),
    (np.zeros((2, 2, 2), np.complex64), "x has dtype complex64; labels must be integers"),
    (np.zeros((2, 2), np.uint64), "x must be 3D (z, y, x), got shape (2, 2)"),
])
def test_check_labels_refuses_in_one_line(array, fragment):
    with pytest.raises(EmError) as info:
        S.check_labels(array, "x", ndim=3)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_check_labels_accepts_labels_and_returns_them():
    for dtype in (np.uint64, np.uint32, np.uint8, np.int64, np.int8, bool):
        array = np.ones((1, 2, 2), dtype)
        assert S.check_labels(array, "x", ndim=3) is array
    assert S.check_labels(np.zeros((0,), np.int32), "empty").size == 0
    S.check_label_dtype(">u4", "big-endian")
    with pytest.raises(EmError, match="floating point"):
        S.check_label_dtype(np.float16, "x")


def test_unsigned_view_keeps_values_and_copies_only_for_byte_order():
    signed = np.array([0, 5, 2**40], np.int64)
    view = S.unsigned_view(signed)
    assert view.dtype == np.uint64 and np.shares_memory(view, signed)
    assert view.tolist() == [0, 5, 2**40]
    assert S.unsigned_view(np.array([True, False])).dtype == np.uint8
    big = np.array([1, 2], ">u2")
    assert S.unsigned_view(big).dtype == np.dtype("=u2") and S.unsigned_view(big).tolist() == [1, 2]
    with pytest.raises(EmError):
        S.unsigned_view(np.zeros(2, np.float32))
