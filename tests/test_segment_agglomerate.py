"""emtools.segment.agglomerate: greedy merging against a naive loop, thresholds, history replay."""

import numpy as np
import pytest

from emtools.segment import agglomerate as A
from emtools.segment import region_graph as R
from emtools.errors import EmError

STEPS = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]


def naive_agglomeration(labels, affs, until, score, q=0.5, bins=256):
    """Merge the cheapest pair (ties: smaller fragment ids) until the cost reaches ``until``.

    Returns ({fragment: segment}, [merge costs]). Written for clarity, not speed.
    """
    contacts = {}
    for z, y, x in np.ndindex(labels.shape):
        for c, (dz, dy, dx) in enumerate(STEPS):
            p = (z - dz, y - dy, x - dx)
            if min(p) < 0:
                continue
            a, b = int(labels[z, y, x]), int(labels[p])
            if a and b and a != b:
                contacts.setdefault(frozenset((a, b)), []).append(float(affs[c, z, y, x]))

    def cost(values):
        v = np.array(values)
        if score == "mean":
            return 1 - v.mean()
        if score == "max":
            return 1 - v.max()
        if score == "min":
            return 1 - v.min()
        binned = np.sort(np.minimum((v * bins).astype(int), bins - 1))
        return 1 - (binned[min(int(q * len(binned) + 1e-9), len(binned) - 1)] + 0.5) / bins

    segment = {int(i): int(i) for i in np.unique(labels) if i}
    costs = []
    while contacts:
        pair, c = min(((k, cost(v)) for k, v in contacts.items()), key=lambda kv: (kv[1], sorted(kv[0])))
        if c >= until:
            break
        costs.append(c)
        a, b = sorted(pair)
        merged = {}
        for key, values in contacts.items():
            if key != pair:
                merged.setdefault(frozenset(a if n == b else n for n in key), []).extend(values)
        contacts = merged
        for fragment, seg in segment.items():
            if seg == b:
                segment[fragment] = a
    return segment, costs


def same_partition(x, y):
    pairs = set(zip(x.ravel().tolist(), y.ravel().tolist()))
    return len(pairs) == len(np.unique(x)) == len(np.unique(y))


@pytest.mark.parametrize("score", A.SCORES)
def test_greedy_merging_matches_a_naive_loop(score):
    rng = np.random.default_rng(A.SCORES.index(score))
    for _ in range(8):
        shape = tuple(int(s) for s in (rng.integers(1, 4), rng.integers(2, 7), rng.integers(2, 7)))
        labels = rng.integers(0, 9, shape).astype(np.uint64)
        affs = rng.random((3,) + shape, dtype=np.float32)
        graph = R.region_graph(labels, affinities=affs, bins=4096)
        history = A.merge_history(graph, 0.7, score)
        segment, costs = naive_agglomeration(labels, affs, 0.7, score, bins=4096)
        np.testing.assert_allclose(history.cost, costs, rtol=1e-9, atol=1e-12)
        (seg,) = A.segmentations(labels, history, [0.7])
        expected = np.array([segment.get(int(f), 0) for f in labels.ravel()], np.int64).reshape(labels.shape)
        assert same_partition(seg, expected)
        # segment id = the smallest fragment id in it
        for s in np.unique(seg[seg != 0]):
            assert s == labels[seg == s].min()


def test_hand_made_chain():
    # three fragments in a row: 1|2 affinity 0.9, 2|3 affinity 0.4
    labels = np.array([[[1, 1, 2, 2, 3, 3]]], np.uint64)
    affs = np.zeros((3, 1, 1, 6), np.float32)
    affs[2, 0, 0, 2] = 0.9
    affs[2, 0, 0, 4] = 0.4
    segs, history = A.agglomerate(labels, affinities=affs, thresholds=[0.05, 0.2, 0.7], score="mean")
    assert [s.tolist() for s in segs] == [
        [[[1, 1, 2, 2, 3, 3]]],
        [[[1, 1, 1, 1, 3, 3]]],
        [[[1, 1, 1, 1, 1, 1]]],
    ]
    np.testing.assert_allclose(history.cost, [0.1, 0.6], atol=1e-6)
    assert history.until == 0.7
    assert {history.a[0], history.b[0]} == {1, 2}


def test_several_thresholds_in_one_pass_equal_separate_runs_and_are_independent():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 30, (4, 12, 12)).astype(np.uint64)
    affs = rng.random((3, 4, 12, 12), dtype=np.float32)
    thresholds = [0.3, 0.45, 0.6, 0.8]
    segs, history = A.agglomerate(labels, affinities=affs, thresholds=thresholds, score="quantile")
    for t, seg in zip(thresholds, segs):
        (alone,), _ = A.agglomerate(labels, affinities=affs, thresholds=[t], score="quantile")
        np.testing.assert_array_equal(seg, alone)
        # replaying the saved history gives the same without a rerun
        lut = A.segment_lookup(history, R.compact_labels(labels)[1], t)
        np.testing.assert_array_equal(A.apply_lookup(R.compact_labels(labels)[0], lut), seg)
    assert len({id(s) for s in segs}) == len(segs)
    assert not any(np.shares_memory(a, b) for i, a in enumerate(segs) for b in segs[i + 1:])
    segs[0][:] = 0  # the caller owns every array
    assert segs[1].any()


def test_reuse_buffer_is_opt_in():
    labels = np.array([[[1, 2, 3]]], np.uint64)
    affs = np.full((3, 1, 1, 3), 0.5, np.float32)
    graph = R.region_graph(labels, affinities=affs, bins=0)
    history = A.merge_history(graph, 0.9)
    fresh = list(A.segmentations(labels, history, [0.1, 0.9]))
    assert not np.shares_memory(fresh[0], fresh[1])
    reused = list(A.segmentations(labels, history, [0.1, 0.9], reuse_buffer=True))
    assert reused[0] is reused[1]


def test_history_is_refused_beyond_its_threshold_and_for_other_fragments():
    labels = np.array([[[1, 2, 3]]], np.uint64)
    graph = R.region_graph(labels, affinities=np.full((3, 1, 1, 3), 0.5, np.float32), bins=0)
    history = A.merge_history(graph, 0.4)
    assert len(history) == 0
    with pytest.raises(EmError, match="rerun"):
        list(A.segmentations(labels, history, [0.6]))
    history = A.merge_history(graph, 0.9)
    with pytest.raises(EmError, match="not in the fragment volume"):
        list(A.segmentations(np.array([[[5, 6, 7]]], np.uint64), history, [0.6]))


def test_graph_is_not_modified_unless_consumed():
    rng = np.random.default_rng(6)
    labels = rng.integers(1, 12, (3, 8, 8)).astype(np.uint64)
    graph = R.region_graph(labels, affinities=rng.random((3, 3, 8, 8), dtype=np.float32))
    before = {f: getattr(graph, f).copy() for f in ("u", "v", "count", "total", "minimum", "maximum", "histogram")}
    first = A.merge_history(graph, 0.9, "quantile")
    second = A.merge_history(graph, 0.9, "quantile")
    for field, value in before.items():
        np.testing.assert_array_equal(getattr(graph, field), value)
    np.testing.assert_array_equal(first.cost, second.cost)
    np.testing.assert_array_equal(first.a, second.a)


def test_joining_scores_reproduce_every_threshold():
    rng = np.random.default_rng(7)
    labels = rng.integers(1, 40, (4, 10, 10)).astype(np.uint64)
    affs = rng.random((3, 4, 10, 10), dtype=np.float32)
    nodes = R.compact_labels(labels)
    graph = R.region_graph(labels, affinities=affs, nodes=nodes, bins=0)
    history = A.merge_history(graph, 0.9)
    join = A.joining_scores(graph, history)
    for t in (0.2, 0.4, 0.5, 0.6, 0.9):
        (seg,) = A.segmentations(labels, history, [t], nodes=nodes)
        parent = np.arange(graph.n_nodes + 1)

        def find(x, parent=parent):
            while parent[x] != x:
                x = parent[x]
            return x

        for u, v, s in zip(graph.u, graph.v, join):
            if s < t:
                parent[find(u)] = find(v)
        roots = np.array([find(k) for k in range(graph.n_nodes + 1)])
        assert same_partition(roots[nodes[0]], seg)


@pytest.mark.parametrize(
    "text, expected",
    [("mean", ("mean", 0.5)), ("max", ("max", 0.5)), ("quantile", ("quantile", 0.5)),
     ("quantile:0.75", ("quantile", 0.75)), ("quantile:50", ("quantile", 0.5))],
)
def test_parse_score(text, expected):
    assert A.parse_score(text) == expected


@pytest.mark.parametrize("text", ["median", "quantile:0", "quantile:abc", "mean:3", "quantile:150"])
def test_parse_score_errors(text):
    with pytest.raises(EmError):
        A.parse_score(text)


@pytest.mark.parametrize(
    "thresholds, fragment",
    [([], "at least one"), ([0.5, 0.2], "increasing"), ([0.2, 0.2], "increasing"),
     ([-0.1], "[0, 1]"), ([1.5], "[0, 1]"), ([float("nan")], "[0, 1]")],
)
def test_bad_thresholds(thresholds, fragment):
    with pytest.raises(EmError) as info:
        A.check_thresholds(thresholds)
    assert fragment in str(info.value)


def test_quantile_needs_histograms():
    labels = np.array([[[1, 2]]], np.uint64)
    graph = R.region_graph(labels, affinities=np.ones((3, 1, 1, 2), np.float32), bins=0)
    with pytest.raises(EmError, match="histograms"):
        A.merge_history(graph, 0.5, "quantile")
