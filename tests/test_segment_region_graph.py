"""emtools.segment.region_graph: contacts and their statistics against a naive loop."""

import numpy as np
import pytest

from emtools.segment import region_graph as R
from emtools.errors import EmError

STEPS = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]


def naive_contacts(labels, affs=None, boundary=None):
    """{(label a, label b): [contact affinities]} by a plain loop (a < b)."""
    out = {}
    for z, y, x in np.ndindex(labels.shape):
        for c, (dz, dy, dx) in enumerate(STEPS):
            q = (z - dz, y - dy, x - dx)
            if min(q) < 0:
                continue
            a, b = int(labels[z, y, x]), int(labels[q])
            if a == 0 or b == 0 or a == b:
                continue
            value = affs[c, z, y, x] if affs is not None else 1.0 - max(boundary[z, y, x], boundary[q])
            out.setdefault((min(a, b), max(a, b)), []).append(float(value))
    return out


def check_against_naive(graph, reference, bins, scale=1.0):
    assert graph.n_edges == len(reference)
    keys = [(int(graph.ids[u]), int(graph.ids[v])) for u, v in zip(graph.u, graph.v)]
    assert keys == sorted(reference)  # sorted by (label u, label v)
    for e, key in enumerate(keys):
        values = np.array(reference[key]) * scale
        assert graph.count[e] == len(values)
        assert graph.total[e] == pytest.approx(values.sum(), rel=1e-6)
        assert graph.mean[e] == pytest.approx(values.mean(), rel=1e-6)
        assert graph.minimum[e] == pytest.approx(values.min(), rel=1e-6)
        assert graph.maximum[e] == pytest.approx(values.max(), rel=1e-6)
        if bins:
            expected = np.bincount(np.minimum((values * bins).astype(int), bins - 1), minlength=bins)
            np.testing.assert_array_equal(graph.histogram[e], expected)


def test_hand_made_two_regions():
    labels = np.array([[[1, 1, 2], [1, 2, 2]]], np.uint64)
    affs = np.zeros((3, 1, 2, 3), np.float32)
    affs[2, 0, 0, 2] = 0.25  # (0,0,2)-(0,0,1): 2|1
    affs[1, 0, 1, 1] = 0.5  # (0,1,1)-(0,0,1): 2|1
    affs[2, 0, 1, 1] = 0.75  # (0,1,1)-(0,1,0): 2|1
    graph = R.region_graph(labels, affinities=affs, bins=4)
    assert graph.ids.tolist() == [0, 1, 2]
    assert (graph.u.tolist(), graph.v.tolist(), graph.count.tolist()) == ([1], [2], [3])
    assert graph.mean[0] == pytest.approx(0.5)
    assert (graph.minimum[0], graph.maximum[0]) == (0.25, 0.75)
    assert graph.histogram.tolist() == [[0, 1, 1, 1]]
    assert graph.quantile(0.5).tolist() == [0.625]  # the 2nd of 3 contacts: bin 2, centre 0.625


@pytest.mark.parametrize("label_dtype", [np.uint64, np.uint32, np.int64, np.uint16])
def test_random_labels_match_a_loop(label_dtype):
    rng = np.random.default_rng(0)
    for _ in range(8):
        shape = tuple(int(s) for s in rng.integers(1, 8, 3))
        values = np.array([0, 3, 7, 11, 42], label_dtype)
        labels = rng.choice(values, size=shape)
        affs = rng.random((3,) + shape, dtype=np.float32)
        graph = R.region_graph(labels, affinities=affs, bins=16)
        check_against_naive(graph, naive_contacts(labels, affs=affs), 16)


def test_huge_sparse_ids():
    labels = np.array([[[2**60, 2**60 + 5, 0, 7]]], np.uint64)
    affs = np.full((3, 1, 1, 4), 0.5, np.float32)
    graph = R.region_graph(labels, affinities=affs, bins=0)
    assert graph.ids.tolist() == [0, 7, 2**60, 2**60 + 5]
    assert [(int(graph.ids[u]), int(graph.ids[v])) for u, v in zip(graph.u, graph.v)] == [(2**60, 2**60 + 5)]
    assert graph.histogram is None


def test_boundary_map_contacts_use_the_larger_boundary():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, (4, 6, 7)).astype(np.uint32)
    boundary = rng.random((4, 6, 7)).astype(np.float32)
    graph = R.region_graph(labels, boundary=boundary, bins=8)
    check_against_naive(graph, naive_contacts(labels, boundary=boundary), 8)


def test_uint8_and_float16_affinities():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 6, (3, 7, 8)).astype(np.uint64)
    raw = rng.integers(0, 256, (3, 3, 7, 8)).astype(np.uint8)
    graph = R.region_graph(labels, affinities=raw, bins=32)
    check_against_naive(graph, naive_contacts(labels, affs=raw / 255.0), 32)
    half = (raw / 255.0).astype(np.float16)
    graph16 = R.region_graph(labels, affinities=half, bins=32)
    check_against_naive(graph16, naive_contacts(labels, affs=half.astype(np.float32)), 32)


def test_long_range_channels_are_ignored_and_inputs_untouched():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, (3, 5, 5)).astype(np.uint64)
    affs = rng.random((5, 3, 5, 5), dtype=np.float32)
    before = labels.copy(), affs.copy()
    graph = R.region_graph(labels, affinities=affs)
    check_against_naive(graph, naive_contacts(labels, affs=affs[:3]), R.DEFAULT_BINS)
    np.testing.assert_array_equal(labels, before[0])
    np.testing.assert_array_equal(affs, before[1])


def test_no_contacts():
    graph = R.region_graph(np.ones((2, 3, 3), np.uint64), affinities=np.ones((3, 2, 3, 3), np.float32))
    assert graph.n_edges == 0 and graph.n_nodes == 1 and graph.histogram.shape == (0, R.DEFAULT_BINS)
    graph = R.region_graph(np.zeros((2, 3, 3), np.uint64), affinities=np.ones((3, 2, 3, 3), np.float32))
    assert graph.n_edges == 0 and graph.n_nodes == 0


def test_compact_labels_dense_and_sparse():
    dense = np.array([[[0, 2, 1, 3]]], np.uint64)
    nodes, ids = R.compact_labels(dense)
    assert nodes.dtype == np.uint32 and nodes.tolist() == [[[0, 2, 1, 3]]] and ids.tolist() == [0, 1, 2, 3]
    sparse = np.array([[[0, 50, 7, 50, 2**40]]], np.uint64)
    nodes, ids = R.compact_labels(sparse)
    assert ids.tolist() == [0, 7, 50, 2**40]
    np.testing.assert_array_equal(ids[nodes], sparse)


def test_quantile_definition_matches_waterz():
    rng = np.random.default_rng(4)
    histogram = rng.integers(0, 5, (50, 16)).astype(np.uint32)
    histogram[0] = 0
    for q in (0.1, 0.5, 0.9, 1.0):
        out = R.edge_quantile(histogram, q)
        assert out[0] == 0.0  # an empty histogram
        for e in range(1, 50):
            contacts = np.repeat(np.arange(16), histogram[e])
            pivot = min(int(q * len(contacts)) + 1, len(contacts))  # 1-based, as waterz
            assert out[e] == (contacts[pivot - 1] + 0.5) / 16


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"affinities": np.zeros((2, 2, 3, 3), np.float32)}, "(3, z, y, x)"),
        ({"affinities": np.zeros((3, 2, 3, 4), np.float32)}, "does not match"),
        ({"affinities": np.full((3, 2, 3, 3), np.nan, np.float32)}, "NaN"),
        ({"affinities": np.full((3, 2, 3, 3), -np.inf, np.float32)}, "Inf"),
        ({"affinities": np.full((3, 2, 3, 3), 1.01, np.float32)}, "[0, 1]"),
        ({"affinities": np.zeros((3, 2, 3, 3), np.int16)}, "uint8"),
        ({"boundary": np.zeros((2, 3, 4), np.float32)}, "does not match"),
        ({}, "either"),
    ],
)
def test_bad_inputs(kwargs, fragment):
    with pytest.raises(EmError) as info:
        R.region_graph(np.ones((2, 3, 3), np.uint64), **kwargs)
    assert fragment in str(info.value)


def test_float_labels_are_refused():
    with pytest.raises(EmError, match="integer"):
        R.region_graph(np.ones((2, 3, 3), np.float32), boundary=np.zeros((2, 3, 3), np.float32))
    with pytest.raises(EmError, match="negative"):
        R.compact_labels(-np.ones((1, 2, 2), np.int32))


def test_regions_that_tile_the_volume_split_the_contacts_exactly():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 6, (6, 9, 10)).astype(np.uint64)
    affs = rng.random((3, 6, 9, 10), dtype=np.float32)
    whole = R.region_graph(labels, affinities=affs, bins=8)
    totals = {}
    for z0, y0 in [(0, 0), (0, 4), (3, 0), (3, 4)]:
        part = R.region_graph(labels, affinities=affs, bins=8, region=((z0, y0, 0), (z0 + 3, y0 + (4 if y0 == 0 else 5), 10)))
        for u, v, c in zip(part.u, part.v, part.count):
            key = (int(part.ids[u]), int(part.ids[v]))
            totals[key] = totals.get(key, 0) + int(c)
    assert totals == {(int(whole.ids[u]), int(whole.ids[v])): int(c) for u, v, c in zip(whole.u, whole.v, whole.count)}
