"""emtools.segment.stitch: offsets, edge-table combination, look-up tables per threshold."""

import numpy as np
import pytest

from emtools.segment import agglomerate as A
from emtools.segment import region_graph as R
from emtools.segment import stitch as S
from emtools.errors import EmError


def test_fragment_offsets():
    assert S.fragment_offsets([3, 0, 5, 2]).tolist() == [0, 3, 3, 8]
    assert S.fragment_offsets([]).tolist() == []
    with pytest.raises(EmError):
        S.fragment_offsets([1, -1])


def test_best_edges_keeps_the_row_with_most_area():
    u = [5, 2, 2, 9, 2]
    v = [2, 5, 5, 3, 7]
    score = [0.1, 0.9, 0.2, 0.5, 0.3]
    area = [4, 10, 10, 1, 2]
    lo, hi, s, a = S.best_edges(u, v, score, area)
    assert lo.tolist() == [2, 2, 3] and hi.tolist() == [5, 7, 9]
    assert s.tolist() == [0.2, 0.3, 0.5]  # (2,5): area 10 twice, the lower score wins
    assert a.tolist() == [10, 2, 1]
    with pytest.raises(EmError, match="itself"):
        S.best_edges([1], [1], [0.1], [1])


def test_lookup_tables_union_below_each_threshold():
    u = np.array([1, 2, 4, 5])
    v = np.array([2, 3, 5, 6])
    score = np.array([0.1, 0.5, 0.3, np.inf])
    tables = S.lookup_tables(6, u, v, score, [0.2, 0.4, 0.9])
    as_dict = [dict(zip(f.tolist(), s.tolist())) for f, s in tables]
    assert as_dict == [{2: 1}, {2: 1, 5: 4}, {2: 1, 3: 1, 5: 4}]
    with pytest.raises(EmError, match="outside"):
        S.lookup_tables(3, np.array([1]), np.array([4]), np.array([0.1]), [0.5])


def test_joining_scores_through_lookup_tables_equal_the_direct_segmentation():
    rng = np.random.default_rng(0)
    labels = rng.integers(1, 30, (4, 9, 9)).astype(np.uint64)
    affs = rng.random((3, 4, 9, 9), dtype=np.float32)
    nodes = R.compact_labels(labels)
    graph = R.region_graph(labels, affinities=affs, nodes=nodes, bins=0)
    history = A.merge_history(graph, 1.0)
    join = A.joining_scores(graph, history)
    thresholds = [0.3, 0.5, 0.7]
    tables = S.lookup_tables(int(labels.max()), graph.ids[graph.u], graph.ids[graph.v], join, thresholds)
    for t, (fragments, segments), seg in zip(thresholds, tables, A.segmentations(labels, history, thresholds)):
        np.testing.assert_array_equal(S.apply_table(labels, fragments, segments), seg)


def test_apply_table_leaves_unlisted_labels_and_the_input_alone():
    labels = np.array([[[0, 1, 2, 3, 7]]], np.uint64)
    out = S.apply_table(labels, np.array([2, 9], np.uint64), np.array([1, 4], np.uint64))
    assert out.tolist() == [[[0, 1, 1, 3, 7]]]
    assert labels.tolist() == [[[0, 1, 2, 3, 7]]]
    assert S.apply_table(labels, np.array([], np.uint64), np.array([], np.uint64)).tolist() == labels.tolist()
