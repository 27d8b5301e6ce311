"""Region adjacency graph of supervoxels, with statistics of the affinities along each contact.

A *contact* is a pair of face-adjacent voxels (one step along z, y or x) with different non-zero
labels. Its affinity is the affinity of that edge (channel c at the voxel further along axis c,
see :mod:`emtools.segment.watershed` for the convention), or, from a boundary map, ``1 - max(b[p],
b[q])``. Per pair of touching supervoxels (an edge of the graph) we keep the contact count
(area in voxel faces), sum (mean = sum / count), min, max, and optionally a histogram of the
contact affinities in ``bins`` equal bins over [0, 1] (bin = floor(a * bins), as waterz
discretises) from which quantiles are read.

Nodes are the non-zero labels, numbered 1..n by :func:`compact_labels` (``ids[k]`` is the
label of node k; node 0 is the background). Edges are sorted by (label of u, label of v) with
label u < label v, so an edge's index does not depend on where the volume was cut.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from emtools.errors import EmError
from emtools.segment.flood import check_unit_range
from emtools.native import helper, kernel
from emtools.segment.structures import check_labels, find_or_add, lookup, rehash, resized, unsigned_view

__all__ = ["RegionGraph", "compact_labels", "edge_quantile", "histogram_quantile", "region_graph"]

DEFAULT_BINS = 256

# Compiled ahead of time for node volumes of uint32 / uint64 and values of float32 / uint8.
_CONTACT_SIGNATURES = [f"{n}[:,:,::1], i8, {v}[:,:,:,::1], b1, f8, i8[::1]" for n in ("u4", "u8") for v in ("f4", "u1")]
_HISTOGRAM_SIGNATURES = [f"{n}[:,:,::1], i8, {v}[:,:,:,::1], b1, f8, i8[::1], i8[::1], u4[:,::1], i8[::1]"
                         for n in ("u4", "u8") for v in ("f4", "u1")]


@dataclasses.dataclass(frozen=True)
class RegionGraph:
    """Edges (u, v) between nodes 1..n with per-edge contact statistics (arrays of length E)."""

    ids: np.ndarray  # uint64 (n + 1,): label of each node; ids[0] = 0
    u: np.ndarray  # int64 node index, ids[u] < ids[v]
    v: np.ndarray
    count: np.ndarray  # int64 contact area (voxel faces)
    total: np.ndarray  # float64 sum of contact affinities
    minimum: np.ndarray  # float32
    maximum: np.ndarray  # float32
    histogram: np.ndarray | None  # uint32 (E, bins) or None

    @property
    def n_nodes(self) -> int:
        return len(self.ids) - 1

    @property
    def n_edges(self) -> int:
        return len(self.u)

    @property
    def mean(self) -> np.ndarray:
        return self.total / np.maximum(self.count, 1)

    def quantile(self, q: float) -> np.ndarray:
        """Per-edge q-quantile of the contact affinities (bin centres; needs the histogram)."""
        if self.histogram is None:
            raise EmError("this region graph has no histograms (built with bins=0)")
        return edge_quantile(self.histogram, q)


def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(node volume, ids): each non-zero label replaced by its node index 1..n (new array).

    Nodes are numbered in increasing label order, so ``ids`` (uint64, ``ids[0] = 0``) is sorted
    and ``ids[nodes] == labels``. The node volume is uint32 when n < 2^32, else uint64.
    """
    import fastremap

    labels = unsigned_view(check_labels(labels, "fragments", ndim=3))
    if labels.size == 0:
        return np.zeros(labels.shape, np.uint32), np.zeros(1, np.uint64)
    flat = np.ascontiguousarray(labels).reshape(-1)
    top = int(flat.max())
    # dense labels 1..n (watershed output): node index = label, one pass to check
    if top < 2**32 and top <= flat.size and _all_present(flat, top):
        return labels.astype(np.uint32, order="C", copy=True), np.arange(top + 1, dtype=np.uint64)
    nodes, mapping = fastremap.renumber(labels, preserve_zero=True, in_place=False)
    mapping.pop(0, None)
    n = len(mapping)
    old = np.fromiter(mapping.keys(), dtype=np.uint64, count=n)
    new = np.fromiter(mapping.values(), dtype=np.int64, count=n)
    order = np.argsort(old, kind="stable")
    ids = np.zeros(n + 1, np.uint64)
    ids[1:] = old[order]
    # renumber numbers by first appearance; move to label order with one gather
    rank = np.zeros(n + 1, np.int64)
    rank[new[order]] = np.arange(1, n + 1)
    node_dtype = np.uint32 if n < 2**32 else np.uint64
    lut = rank.astype(node_dtype)
    nodes = lut[nodes]
    return np.ascontiguousarray(nodes), ids


@kernel("u1[::1], i8", "u2[::1], i8", "u4[::1], i8", "u8[::1], i8")
def _all_present(flat, top):
    seen = np.zeros(top + 1, np.bool_)
    for i in range(flat.size):
        seen[flat[i]] = True
    for k in range(1, top + 1):
        if not seen[k]:
            return False
    return True


def region_graph(
    labels: np.ndarray,
    affinities: np.ndarray | None = None,
    boundary: np.ndarray | None = None,
    bins: int = DEFAULT_BINS,
    nodes: tuple[np.ndarray, np.ndarray] | None = None,
    region: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None,
) -> RegionGraph:
    """The region adjacency graph of ``labels`` with contact statistics.

    Give exactly one of ``affinities`` (3 or more channels, (c, z, y, x); the first three are
    the nearest-neighbour ones) or ``boundary`` (z, y, x), float in [0, 1] or uint8 (/255).
    ``bins`` = 0 skips the histograms (no quantiles, much less memory: 1 KiB per edge at 256).
    ``nodes``: the result of :func:`compact_labels` for ``labels`` if already computed.
    ``region`` = (begin, end) z,y,x: count only contacts whose voxel further along the axis lies
    in this box (so contacts across its lower faces count, across its upper faces not): boxes
    that tile a volume then split its contacts without double counting. Inputs are not modified.
    """
    labels = check_labels(labels, "fragments", ndim=3)
    if (affinities is None) == (boundary is None):
        raise EmError("give either affinities or a boundary map")
    if not 0 <= bins <= 65536:
        raise EmError(f"bins must be 0..65536, got {bins}")
    if affinities is not None:
        values = np.asarray(affinities)
        if values.ndim != 4 or values.shape[0] < 3:
            raise EmError(f"affinities must have shape (3, z, y, x), got {values.shape}")
        if values.shape[1:] != labels.shape:
            raise EmError(f"affinities shape {values.shape[1:]} does not match fragments {labels.shape}")
        values = values[:3]
        name = "affinities"
    else:
        values = np.asarray(boundary)
        if values.shape != labels.shape:
            raise EmError(f"boundary map shape {values.shape} does not match fragments {labels.shape}")
        name = "boundary map"
    if values.dtype == np.uint8:
        scale = 1.0 / 255.0
    elif values.dtype.kind == "f":
        values = values.astype(np.float32, copy=False)
        check_unit_range(values, name)
        scale = 1.0
    else:
        raise EmError(f"{name} must be float32, float16 or uint8 (0..255), got {values.dtype}")
    values = np.ascontiguousarray(values)
    if nodes is None:
        node_volume, ids = compact_labels(labels)
    else:
        node_volume, ids = nodes
    n = len(ids) - 1
    # channels as a 4D array either way; a boundary map is one channel read at both voxels
    stacked = values if affinities is not None else values[None]
    if region is None:
        bounds = np.array([0, 0, 0, *labels.shape], np.int64)
    else:
        bounds = np.array([*region[0], *region[1]], np.int64)
        bounds[:3] = np.maximum(bounds[:3], 0)
        bounds[3:] = np.minimum(bounds[3:], labels.shape)
    eu, ev, count, total, lo, hi = _contacts(node_volume, n, stacked, affinities is None, scale, bounds)
    # sort by (label u, label v): node order is label order, so node indices sort the same
    order = np.lexsort((ev, eu))
    eu, ev, count, total, lo, hi = (a[order] for a in (eu, ev, count, total, lo, hi))
    histogram = None
    if bins > 0:
        histogram = np.zeros((len(eu), bins), np.uint32)
        _histograms(node_volume, n, stacked, affinities is None, scale, eu, ev, histogram, bounds)
    return RegionGraph(ids, eu, ev, count, total, lo.astype(np.float32), hi.astype(np.float32), histogram)


def edge_quantile(histogram: np.ndarray, q: float) -> np.ndarray:
    """The q-quantile (0 < q <= 1) of each histogram row, as the centre of its bin.

    As waterz: the pivot is the ``floor(q * count) + 1``-th smallest contact (capped at count).
    """
    if not 0.0 < q <= 1.0:
        raise EmError(f"quantile must be in (0, 1], got {q:g}")
    out = np.empty(len(histogram), np.float64)
    _quantiles(histogram, q, out)
    return out


@helper
def histogram_quantile(row, q):
    """The q-quantile of one histogram row (bin centre, in [0, 1]); 0 for an empty row."""
    total = 0
    for b in range(row.size):
        total += row[b]
    if total == 0:
        return 0.0
    pivot = min(np.int64(q * total + 1e-9) + 1, total)
    seen = 0
    for b in range(row.size):
        seen += row[b]
        if seen >= pivot:
            return (b + 0.5) / row.size
    return (row.size - 0.5) / row.size


@kernel("u4[:,::1], f8, f8[::1]")
def _quantiles(histogram, q, out):
    for e in range(histogram.shape[0]):
        out[e] = histogram_quantile(histogram[e], q)


# ----------------------------------------------------------------------------- contacts

@helper
def _contact_value(values, from_boundary, scale, c, z, y, x, zq, yq, xq):
    if from_boundary:
        a = np.float64(values[0, z, y, x])
        b = np.float64(values[0, zq, yq, xq])
        return 1.0 - max(a, b) * scale
    return np.float64(values[c, z, y, x]) * scale


@kernel(*_CONTACT_SIGNATURES)
def _contacts(nodes, n, values, from_boundary, scale, bounds):
    bits = 10
    keys = np.zeros(1 << bits, np.uint64)
    slots = np.empty(1 << bits, np.int64)
    shift = np.uint64(64 - bits)
    capacity = 1024
    eu = np.empty(capacity, np.int64)
    ev = np.empty(capacity, np.int64)
    count = np.zeros(capacity, np.int64)
    total = np.zeros(capacity, np.float64)
    lo = np.empty(capacity, np.float64)
    hi = np.empty(capacity, np.float64)
    n_edges = 0
    width = np.uint64(n + 1)
    # the last pair seen along each axis: runs of contacts between the same two fragments
    last_key = np.zeros(3, np.uint64)
    last_edge = np.full(3, -1, np.int64)
    for z in range(bounds[0], bounds[3]):
        for y in range(bounds[1], bounds[4]):
            for x in range(bounds[2], bounds[5]):
                a = nodes[z, y, x]
                if a == 0:
                    continue
                for c in range(3):
                    if c == 0:
                        if z == 0:
                            continue
                        zq, yq, xq = z - 1, y, x
                    elif c == 1:
                        if y == 0:
                            continue
                        zq, yq, xq = z, y - 1, x
                    else:
                        if x == 0:
                            continue
                        zq, yq, xq = z, y, x - 1
                    b = nodes[zq, yq, xq]
                    if b == 0 or b == a:
                        continue
                    lo_node = min(a, b)
                    hi_node = max(a, b)
                    key = np.uint64(lo_node) * width + np.uint64(hi_node)
                    if key == last_key[c]:
                        e = last_edge[c]
                    else:
                        e, added = find_or_add(keys, slots, shift, key, n_edges)
                        if added:
                            if n_edges == capacity:
                                capacity *= 2
                                eu = resized(eu, capacity)
                                ev = resized(ev, capacity)
                                count = resized(count, capacity)
                                total = resized(total, capacity)
                                lo = resized(lo, capacity)
                                hi = resized(hi, capacity)
                            eu[e] = lo_node
                            ev[e] = hi_node
                            count[e] = 0
                            total[e] = 0.0
                            lo[e] = np.inf
                            hi[e] = -np.inf
                            n_edges += 1
                            if 2 * n_edges > keys.size:
                                bits += 1
                                keys, slots = rehash(keys, slots, bits)
                                shift = np.uint64(64 - bits)
                        last_key[c] = key
                        last_edge[c] = e
                    v = _contact_value(values, from_boundary, scale, c, z, y, x, zq, yq, xq)
                    count[e] += 1
                    total[e] += v
                    if v < lo[e]:
                        lo[e] = v
                    if v > hi[e]:
                        hi[e] = v
    return (eu[:n_edges].copy(), ev[:n_edges].copy(), count[:n_edges].copy(),
            total[:n_edges].copy(), lo[:n_edges].copy(), hi[:n_edges].copy())


@kernel(*_HISTOGRAM_SIGNATURES)
def _histograms(nodes, n, values, from_boundary, scale, eu, ev, histogram, bounds):
    """Second pass over the contacts: fill each edge's histogram (edges already known)."""
    n_edges = eu.size
    bits = 10
    while (1 << bits) < 2 * n_edges + 2:
        bits += 1
    keys = np.zeros(1 << bits, np.uint64)
    slots = np.empty(1 << bits, np.int64)
    shift = np.uint64(64 - bits)
    width = np.uint64(n + 1)
    for e in range(n_edges):
        find_or_add(keys, slots, shift, np.uint64(eu[e]) * width + np.uint64(ev[e]), e)
    n_bins = histogram.shape[1]
    last_key = np.zeros(3, np.uint64)
    last_edge = np.full(3, -1, np.int64)
    for z in range(bounds[0], bounds[3]):
        for y in range(bounds[1], bounds[4]):
            for x in range(bounds[2], bounds[5]):
                a = nodes[z, y, x]
                if a == 0:
                    continue
                for c in range(3):
                    if c == 0:
                        if z == 0:
                            continue
                        zq, yq, xq = z - 1, y, x
                    elif c == 1:
                        if y == 0:
                            continue
                        zq, yq, xq = z, y - 1, x
                    else:
                        if x == 0:
                            continue
                        zq, yq, xq = z, y, x - 1
                    b = nodes[zq, yq, xq]
                    if b == 0 or b == a:
                        continue
                    key = np.uint64(min(a, b)) * width + np.uint64(max(a, b))
                    if key != last_key[c]:
                        last_edge[c] = lookup(keys, slots, shift, key)
                        last_key[c] = key
                    e = last_edge[c]
                    v = _contact_value(values, from_boundary, scale, c, z, y, x, zq, yq, xq)
                    b_index = np.int64(v * n_bins) if v > 0.0 else 0
                    if b_index >= n_bins:
                        b_index = n_bins - 1
                    histogram[e, b_index] += 1
