"""Stitching chunked agglomerations: one edge table per chunk -> one look-up table per threshold.

The model (as lsd, abiss and cluster_tools do it)::

    chunk k: fragments with ids 1..n_k           --offsets-->  global ids offset_k + 1..n_k
    chunk k: region graph + agglomeration on chunk + halo (context)
             edge table rows (u, v, score, area) for the contacts chunk k owns
             (those whose voxel further along the axis lies in its responsible region)
    global:  one row per edge (from the chunk that owns most of its contact),
             union-find over the rows with score < t          -> look-up table per threshold
    chunk k: relabel its fragments through the table              (em-tile merge assembles)

``score`` is the threshold at which the chunk's agglomeration joined u and v (the running
maximum of merge costs, see :func:`emtools.segment.agglomerate.joining_scores`; inf if it never did).
A segment takes the smallest global fragment id it contains, as in the whole-volume run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emtools.errors import EmError
from emtools.segment.agglomerate import check_thresholds
from emtools.segment.structures import find_roots, unite_pairs

__all__ = ["apply_table", "best_edges", "fragment_offsets", "lookup_tables"]


def fragment_offsets(counts: Sequence[int]) -> np.ndarray:
    """Global id offset of each chunk's fragments (ids ``offset + 1 .. offset + count``)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size and counts.min() < 0:
        raise EmError("fragment counts must not be negative")
    offsets = np.zeros(len(counts), np.uint64)
    if len(counts) > 1:
        offsets[1:] = np.cumsum(counts[:-1]).astype(np.uint64)
    return offsets


def best_edges(u, v, score, area) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One row per (u, v) (u < v): the one with the largest area (ties: the lower score).

    Rows come back sorted by (u, v). Rows with u > v are swapped first.
    """
    u = np.asarray(u, np.uint64)
    v = np.asarray(v, np.uint64)
    score = np.asarray(score, np.float64)
    area = np.asarray(area, np.int64)
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    if np.any(lo == hi):
        raise EmError("an edge table links a fragment to itself")
    order = np.lexsort((score, -area, hi, lo))
    lo, hi, score, area = lo[order], hi[order], score[order], area[order]
    first = np.ones(len(lo), bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return lo[first], hi[first], score[first], area[first]


def lookup_tables(
    n_fragments: int, u: np.ndarray, v: np.ndarray, score: np.ndarray, thresholds: Sequence[float]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per threshold: (fragments, segments) for the global ids 1..n whose segment is not themselves.

    Union-find over the rows with ``score < t``, thresholds in increasing order in one pass.
    """
    thresholds = check_thresholds(thresholds)
    u = np.asarray(u, np.int64)
    v = np.asarray(v, np.int64)
    if len(u) and (u.max() > n_fragments or v.max() > n_fragments or min(u.min(), v.min()) < 1):
        raise EmError(f"an edge table names a fragment outside 1..{n_fragments}")
    order = np.argsort(score, kind="stable")
    u, v, score = u[order], v[order], np.asarray(score, np.float64)[order]
    parent = np.arange(n_fragments + 1, dtype=np.int64)
    done = 0
    tables = []
    for t in thresholds:
        upto = int(np.searchsorted(score, t, side="left"))
        unite_pairs(parent, u[done:upto], v[done:upto])  # a set's root is its smallest id
        done = upto
        segments = find_roots(parent)
        changed = np.flatnonzero(segments != np.arange(n_fragments + 1))
        tables.append((changed.astype(np.uint64), segments[changed].astype(np.uint64)))
    return tables


def apply_table(labels: np.ndarray, fragments: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """A new uint64 volume: each label listed in ``fragments`` (sorted) replaced by its segment."""
    import fastremap

    labels = np.ascontiguousarray(labels, dtype=np.uint64)
    if len(fragments) == 0:
        return labels.copy()
    present = fastremap.unique(labels)
    index = np.minimum(np.searchsorted(fragments, present), len(fragments) - 1)
    listed = fragments[index] == present
    if not np.any(listed):
        return labels.copy()
    mapping = dict(zip(present[listed].tolist(), segments[index[listed]].tolist()))
    return fastremap.remap(labels, mapping, preserve_missing_labels=True, in_place=False).astype(np.uint64, copy=False)
