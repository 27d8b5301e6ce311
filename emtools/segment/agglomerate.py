"""Hierarchical agglomeration of supervoxels: merge history once, segmentations at any threshold.

Scores are *merge costs* in [0, 1], as in waterz: ``1 - s`` where ``s`` is a statistic of the
affinities along the contact of two regions: ``mean``, ``max``, ``min`` or a ``quantile``
(from the contact histogram; waterz's ``HistogramQuantileAffinity`` with ``InitWithMax=false``).
They are registered in :mod:`emtools.segment.scores` (``SCORES`` and ``parse_score`` are its).
The edge of lowest cost is merged first (ties: lower edge index, i.e. lower fragment ids);
when two regions merge, their edges to a common neighbour are combined (counts, sums and
histograms add) and re-scored. Merging stops when the lowest cost reaches ``until``.

The result is a :class:`MergeHistory`: the merges in order with their costs. The segmentation
at a threshold ``t <= until`` is the history's prefix up to the first merge whose cost is
``>= t`` (exactly what stopping at ``t`` would have given, as waterz does), so any number of
thresholds come from one run, and a new threshold needs no rerun. A merge's *effective
threshold* is the running maximum of the costs: merge i is in the segmentation at ``t`` iff
its effective threshold is ``< t``.

Segment ids: each segment takes the smallest fragment id it contains, so ids do not depend on
the threshold's neighbours or on how the volume was cut into chunks. 0 stays 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from emtools.errors import EmError
from emtools.native import kernel
from emtools.segment.region_graph import DEFAULT_BINS, RegionGraph, compact_labels, region_graph
from emtools.segment.scores import SCORES, edge_cost, get_score, parse_score
from emtools.segment.structures import (
    find_roots,
    heap_pop,
    heap_push,
    insert,
    lookup,
    remove,
    unite_pairs,
)

__all__ = [
    "SCORES",
    "MergeHistory",
    "agglomerate",
    "apply_lookup",
    "check_thresholds",
    "joining_scores",
    "merge_history",
    "parse_score",
    "segment_lookup",
    "segmentations",
]


@dataclasses.dataclass(frozen=True)
class MergeHistory:
    """Merges in the order they happened: regions holding fragments ``a[i]`` and ``b[i]``
    merged at cost ``cost[i]``. Complete for every threshold ``<= until``."""

    a: np.ndarray  # uint64 fragment ids
    b: np.ndarray  # uint64
    cost: np.ndarray  # float64
    until: float
    score: str = "mean"

    def __len__(self) -> int:
        return len(self.cost)

    @property
    def effective(self) -> np.ndarray:
        """Running maximum of the costs: the threshold above which each merge is made."""
        return np.maximum.accumulate(self.cost) if len(self.cost) else self.cost.copy()

    def prefix(self, threshold: float) -> int:
        """How many merges the segmentation at ``threshold`` contains."""
        if threshold > self.until + 1e-12:
            raise EmError(
                f"threshold {threshold:g} is above {self.until:g}, where this merge history stops; "
                "rerun the agglomeration with a higher threshold"
            )
        return int(np.searchsorted(self.effective, threshold, side="left"))


def check_thresholds(thresholds: Sequence[float]) -> list[float]:
    """Thresholds as floats: at least one, each in [0, 1], strictly increasing."""
    values = [float(t) for t in thresholds]
    if not values:
        raise EmError("give at least one threshold")
    for t in values:
        if not 0.0 <= t <= 1.0 or t != t:
            raise EmError(f"thresholds must be in [0, 1], got {t:g}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise EmError(f"thresholds must be sorted in increasing order without repeats, got {','.join(f'{t:g}' for t in values)}")
    return values


def merge_history(
    graph: RegionGraph, until: float, score: str = "mean", quantile: float = 0.5, consume: bool = False
) -> MergeHistory:
    """Agglomerate ``graph`` until the lowest merge cost reaches ``until``.

    The graph is not modified unless ``consume=True`` (then its statistics are used as working
    storage, saving a copy of the histograms).
    """
    spec = get_score(score)
    if not 0.0 < quantile <= 1.0:
        raise EmError(f"quantile must be in (0, 1], got {quantile:g}")
    if not 0.0 <= until <= 1.0:
        raise EmError(f"threshold must be in [0, 1], got {until:g}")
    use_hist = spec.needs_histogram
    if use_hist and graph.histogram is None:
        raise EmError(f"the {score} score needs a region graph with histograms (bins > 0)")

    def work(a):
        return a if consume else a.copy()

    hist = work(graph.histogram) if use_hist else np.zeros((1, 1), np.uint32)
    keep, gone, cost = _merge(
        graph.n_nodes, work(graph.u), work(graph.v), work(graph.count), work(graph.total),
        work(graph.minimum), work(graph.maximum), hist, use_hist, spec.statistic, float(quantile), float(until),
    )
    return MergeHistory(graph.ids[keep], graph.ids[gone], cost, float(until), spec.label(quantile))


def _node_index(ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Node index of each fragment id in ``labels`` (ids sorted); error when one is unknown."""
    index = np.searchsorted(ids, labels)
    index = np.minimum(index, len(ids) - 1)
    if len(labels) and (not np.array_equal(ids[index], labels) or np.any(labels == 0)):
        raise EmError("the merge history names fragments that are not in the fragment volume")
    return index


def segment_lookup(history: MergeHistory, ids: np.ndarray, threshold: float) -> np.ndarray:
    """Segment id (uint64) of each node, at ``threshold``; ``ids`` from :func:`compact_labels`."""
    count = history.prefix(threshold)
    parent = np.arange(len(ids), dtype=np.int64)
    unite_pairs(parent, _node_index(ids, history.a[:count]), _node_index(ids, history.b[:count]))
    return _segment_ids(ids, parent)


def _segment_ids(ids: np.ndarray, parent: np.ndarray) -> np.ndarray:
    # A set's root is its smallest node index and node order is label order (compact_labels),
    # so ids[root] is the smallest fragment id of the segment; node 0 (background) stays 0.
    return ids[find_roots(parent)]


def apply_lookup(nodes: np.ndarray, lut: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``lut[nodes]`` as uint64, in a new array or in ``out`` (C-contiguous uint64, same shape)."""
    nodes = np.ascontiguousarray(nodes)
    if out is None:
        out = np.empty(nodes.shape, np.uint64)
    elif out.shape != nodes.shape or out.dtype != np.uint64 or not out.flags.c_contiguous:
        raise EmError("out must be a C-contiguous uint64 array of the nodes' shape")
    if nodes.size and int(nodes.max()) >= len(lut):
        raise EmError(f"node index {int(nodes.max())} is outside the lookup table ({len(lut)} entries)")
    _gather(nodes.reshape(-1), lut.astype(np.uint64, copy=False), out.reshape(-1))
    return out


@kernel("u4[::1], u8[::1], u8[::1]", "u8[::1], u8[::1], u8[::1]")
def _gather(nodes, lut, out):
    for i in range(nodes.size):
        out[i] = lut[nodes[i]]


def segmentations(
    labels: np.ndarray,
    history: MergeHistory,
    thresholds: Sequence[float],
    nodes: tuple[np.ndarray, np.ndarray] | None = None,
    reuse_buffer: bool = False,
) -> Iterator[np.ndarray]:
    """Yield one uint64 segmentation per threshold (increasing), replaying ``history`` once.

    Each array is new and independent (the caller may keep or modify it); only one is built at
    a time. ``reuse_buffer=True`` (opt-in, for callers that write each result out before
    asking for the next) yields the same array every time, overwritten: it saves allocating
    (and page-faulting) a volume per threshold. ``nodes``: :func:`compact_labels` of
    ``labels`` if already computed.
    """
    thresholds = check_thresholds(thresholds)
    node_volume, ids = nodes if nodes is not None else compact_labels(labels)
    parent = np.arange(len(ids), dtype=np.int64)
    a = _node_index(ids, history.a)
    b = _node_index(ids, history.b)
    done = 0
    buffer = None
    for t in thresholds:
        count = history.prefix(t)
        unite_pairs(parent, a[done:count], b[done:count])
        done = count
        result = apply_lookup(node_volume, _segment_ids(ids, parent), out=buffer)
        if reuse_buffer:
            buffer = result
        yield result


def agglomerate(
    labels: np.ndarray,
    affinities: np.ndarray | None = None,
    boundary: np.ndarray | None = None,
    thresholds: Sequence[float] = (0.5,),
    score: str = "mean",
    quantile: float = 0.5,
    bins: int = DEFAULT_BINS,
) -> tuple[list[np.ndarray], MergeHistory]:
    """Fragments + affinities (or boundary map) -> one segmentation per threshold, and the history.

    A convenience over :func:`region_graph`, :func:`merge_history` and :func:`segmentations`;
    for large volumes iterate :func:`segmentations` instead of keeping every result.
    """
    thresholds = check_thresholds(thresholds)
    nodes = compact_labels(labels)
    graph = region_graph(labels, affinities=affinities, boundary=boundary,
                         bins=bins if get_score(score).needs_histogram else 0, nodes=nodes)
    history = merge_history(graph, thresholds[-1], score, quantile, consume=True)
    del graph
    return list(segmentations(labels, history, thresholds, nodes=nodes)), history


def joining_scores(graph: RegionGraph, history: MergeHistory) -> np.ndarray:
    """Per edge of ``graph``: the effective threshold at which its two fragments join (inf if never).

    A union-find over the edges with ``score < t`` then gives exactly the segmentation at
    ``t`` (for t <= history.until): the edge table that chunked runs write and stitch.
    """
    ids = graph.ids
    a = _node_index(ids, history.a)
    b = _node_index(ids, history.b)
    out = np.full(graph.n_edges, np.inf)
    order = np.argsort(np.concatenate([graph.u, graph.v]), kind="stable")
    ends = np.concatenate([graph.u, graph.v])[order]
    start = np.searchsorted(ends, np.arange(len(ids) + 1))
    incident = order % max(graph.n_edges, 1)
    _joining(len(ids), graph.u, graph.v, start, incident, a, b, history.effective, out)
    return out


# ----------------------------------------------------------------------------- joining scores

@kernel("i8, i8[::1], i8[::1], i8[::1], i8[::1], i8[::1], i8[::1], f8[::1], f8[::1]")
def _joining(n, u, v, start, incident, a, b, effective, out):
    """Small-to-large: when two sets merge, scan the smaller one's edges for the other set.

    Not the union-find of :mod:`~emtools.segment.structures`: this needs each set's members
    (a linked list per set), which a parent array does not give.
    """
    owner = np.arange(n, dtype=np.int64)
    size = np.ones(n, np.int64)
    first = np.arange(n, dtype=np.int64)
    after = np.full(n, -1, np.int64)
    last = np.arange(n, dtype=np.int64)
    for i in range(a.size):
        sa = owner[a[i]]
        sb = owner[b[i]]
        if sa == sb:
            continue
        if size[sa] < size[sb]:
            sa, sb = sb, sa
        x = first[sb]
        while x != -1:
            for j in range(start[x], start[x + 1]):
                e = incident[j]
                y = v[e] if u[e] == x else u[e]
                if owner[y] == sa and out[e] == np.inf:
                    out[e] = effective[i]
            x = after[x]
        x = first[sb]
        while x != -1:
            owner[x] = sa
            x = after[x]
        after[last[sa]] = first[sb]
        last[sa] = last[sb]
        size[sa] += size[sb]


# ----------------------------------------------------------------------------- merging

@kernel("i8, i8[::1], i8[::1], i8[::1], f8[::1], f4[::1], f4[::1], u4[:,::1], b1, i8, f8, f8")
def _merge(n_nodes, eu, ev, count, total, lo, hi, hist, use_hist, statistic, q, until):
    """Greedy merging; returns the (kept node, merged node, cost) of each merge in order.

    Each node keeps a linked list of its edge ends; merging moves the shorter list into the
    longer (so an edge end is walked O(log E) times). A hash table maps the current pair of
    regions to its edge, so an edge to a common neighbour is found without scanning. The heap
    holds (cost, edge, stamp); an entry whose stamp is old is stale and skipped.
    """
    n_edges = eu.size
    head = np.full(n_nodes + 1, -1, np.int64)
    tail = np.full(n_nodes + 1, -1, np.int64)
    degree = np.zeros(n_nodes + 1, np.int64)
    nxt = np.full(2 * n_edges, -1, np.int64)
    for k in range(2 * n_edges):
        e = k >> 1
        node = eu[e] if (k & 1) == 0 else ev[e]
        if tail[node] == -1:
            head[node] = k
        else:
            nxt[tail[node]] = k
        tail[node] = k
        degree[node] += 1
    bits = 4
    while (1 << bits) < 2 * n_edges + 2:
        bits += 1
    keys = np.zeros(1 << bits, np.uint64)
    slots = np.empty(1 << bits, np.int64)
    shift = np.uint64(64 - bits)
    width = np.uint64(n_nodes + 1)
    for e in range(n_edges):
        insert(keys, slots, shift, np.uint64(min(eu[e], ev[e])) * width + np.uint64(max(eu[e], ev[e])), e)
    alive = np.ones(n_edges, np.bool_)
    stamp = np.zeros(n_edges, np.int64)
    capacity = 2 * n_edges + 1  # pushes: one per edge, one per combined edge (< n_edges)
    heap_cost = np.empty(capacity, np.float64)
    heap_edge = np.empty(capacity, np.int64)
    heap_stamp = np.empty(capacity, np.int64)
    size = 0
    for e in range(n_edges):
        heap_push(heap_cost, heap_edge, heap_stamp, size, edge_cost(e, statistic, q, count, total, lo, hi, hist), e, 0)
        size += 1
    merged_keep = np.empty(max(n_nodes, 1), np.int64)
    merged_gone = np.empty(max(n_nodes, 1), np.int64)
    merged_cost = np.empty(max(n_nodes, 1), np.float64)
    n_merges = 0
    while size > 0:
        cost, e, st = heap_pop(heap_cost, heap_edge, heap_stamp, size)
        size -= 1
        if not alive[e] or st != stamp[e]:
            continue
        if cost >= until:
            break
        a = eu[e]
        b = ev[e]
        if degree[a] > degree[b] or (degree[a] == degree[b] and a < b):
            keep, gone = a, b
        else:
            keep, gone = b, a
        alive[e] = False
        remove(keys, slots, shift, np.uint64(min(a, b)) * width + np.uint64(max(a, b)))
        merged_keep[n_merges] = keep
        merged_gone[n_merges] = gone
        merged_cost[n_merges] = cost
        n_merges += 1
        k = head[gone]
        while k != -1:
            f = k >> 1
            following = nxt[k]
            if alive[f]:
                w = ev[f] if eu[f] == gone else eu[f]
                remove(keys, slots, shift, np.uint64(min(gone, w)) * width + np.uint64(max(gone, w)))
                key = np.uint64(min(keep, w)) * width + np.uint64(max(keep, w))
                g = lookup(keys, slots, shift, key)
                if g >= 0:
                    # two edges to the same neighbour: combine f into g and re-score g
                    count[g] += count[f]
                    total[g] += total[f]
                    if lo[f] < lo[g]:
                        lo[g] = lo[f]
                    if hi[f] > hi[g]:
                        hi[g] = hi[f]
                    if use_hist:
                        for bin_ in range(hist.shape[1]):
                            hist[g, bin_] += hist[f, bin_]
                    alive[f] = False
                    stamp[g] += 1
                    heap_push(heap_cost, heap_edge, heap_stamp, size,
                              edge_cost(g, statistic, q, count, total, lo, hi, hist), g, stamp[g])
                    size += 1
                else:
                    if eu[f] == gone:
                        eu[f] = keep
                    else:
                        ev[f] = keep
                    insert(keys, slots, shift, key, f)
            k = following
        if head[gone] != -1:
            if head[keep] == -1:
                head[keep] = head[gone]
            else:
                nxt[tail[keep]] = head[gone]
            tail[keep] = tail[gone]
        head[gone] = -1
        tail[gone] = -1
        degree[keep] += degree[gone]
        degree[gone] = 0
    return merged_keep[:n_merges].copy(), merged_gone[:n_merges].copy(), merged_cost[:n_merges].copy()
