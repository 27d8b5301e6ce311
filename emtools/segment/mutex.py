"""Mutex watershed (Wolf et al. 2018): segments straight from long-range affinities.

Input: affinities ``(C, z, y, x)`` with one offset ``(dz, dy, dx)`` per channel; channel ``c``
links voxel ``p`` with ``p + offsets[c]`` (steps back, as :mod:`emtools.targets` makes them).
The first three channels are the nearest neighbours ``(-1,0,0), (0,-1,0), (0,0,-1)`` and are
*attractive* (weight = affinity); the others are long-range and *repulsive* (weight =
``1 - affinity + bias``; a positive ``bias`` splits more). Every edge is visited once, by
decreasing weight::

    attractive (p, q): merge the clusters of p and q, unless a mutex (repulsion) lies between them
    repulsive  (p, q): put a mutex between the clusters of p and q, unless they are one already

No seeds, thresholds or agglomeration: the order of the edges decides everything, so there is
no parameter to tune but the bias. ``mode="2d"`` uses only in-plane offsets (each z section on
its own, for anisotropic ssTEM); ``"3d"`` all of them. Long-range edges may be thinned for
speed: only those starting on a ``stride_zyx`` grid, then a ``long_range_fraction`` of them
chosen by a hash of (edge, ``seed``) (deterministic, no random state).

How it is done (two compiled kernels):

- Edges are sorted by ``levels`` quantised weights (65536 by default, as the seeded watershed
  quantises heights) with a two-pass radix sort; ties go by edge id ``c * voxels + voxel``
  (C order), so the result does not depend on the sort. Cost O(edges), 16 bytes per edge.
- Union-find (:mod:`emtools.segment.structures`) holds the clusters. Each mutex is one key
  (root pair) in a hash table, plus an entry in a linked list at both roots. Merging two roots
  keeps the one with the longer list and re-keys the other's mutexes (small-to-large: a mutex
  is re-keyed O(log M) times), dropping entries for pairs that the kept root has already.

Output: uint64 labels 1..n numbered by first voxel in C order (every voxel gets one), then
optionally fragments below ``min_size`` voxels merged into a neighbour (or removed), as
:func:`emtools.segment.watershed.size_filter` does for the seeded watershed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emtools.errors import EmError
from emtools.native import helper, kernel
from emtools.segment.flood import FLOAT_LEVELS, as_unit_float
from emtools.segment.structures import find, find_or_add, lookup, rehash, remove, resized

__all__ = ["NEAREST_OFFSETS", "check_offsets", "mutex_watershed", "parse_offsets"]

NEAREST_OFFSETS = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))
N_ATTRACTIVE = 3
MODES = ("2d", "3d")

# splitmix64's finaliser: spreads edge ids so that a threshold keeps an even random subset
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_MASK64 = 2**64 - 1


# ----------------------------------------------------------------------------- offsets

def parse_offsets(text: str) -> list[list[int]]:
    """Offsets from their JSON text ``[[-1,0,0],[0,-1,0],...]`` (what ``--offsets`` takes)."""
    import json

    try:
        value = json.loads(text)
    except ValueError:
        raise EmError(f"--offsets must be a JSON list of z,y,x triples like [[-1,0,0],[0,-1,0],[0,0,-1],[0,-9,0]], "
                      f"got {text!r}") from None
    return check_offsets(value)


def check_offsets(offsets, channels: int | None = None) -> list[list[int]]:
    """Offsets as a list of integer triples; one-line error unless they are triples, not all 0,
    the first three the nearest neighbours, and (given ``channels``) one per channel."""
    if not isinstance(offsets, (list, tuple)) or not offsets:
        raise EmError(f"offsets must be a list of z,y,x triples, got {offsets!r}")
    out = []
    for value in offsets:
        if (not isinstance(value, (list, tuple)) or len(value) != 3
                or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
            raise EmError(f"affinity offset {value!r} is not three integers z,y,x")
        triple = [int(v) for v in value]
        if triple == [0, 0, 0]:
            raise EmError("affinity offset [0, 0, 0] links a voxel to itself")
        out.append(triple)
    if [tuple(o) for o in out[:N_ATTRACTIVE]] != list(NEAREST_OFFSETS):
        raise EmError(f"the first three offsets must be the nearest neighbours "
                      f"{[list(o) for o in NEAREST_OFFSETS]}, got {out[:N_ATTRACTIVE]}")
    if channels is not None and channels != len(out):
        raise EmError(f"the affinities have {channels} channels but {len(out)} offsets are given")
    return out


def _used_channels(offsets: list[list[int]], mode: str) -> np.ndarray:
    """Which channels take part: all in 3D, the in-plane ones (dz = 0) in 2D."""
    used = np.array([mode == "3d" or o[0] == 0 for o in offsets], np.bool_)
    if not used[N_ATTRACTIVE:].any():
        where = "in-plane (dz = 0) " if mode == "2d" else ""
        raise EmError(f"the mutex watershed needs {where}long-range offsets besides the three nearest neighbours "
                      f"(--offsets or affinity_offsets in the metadata), got {offsets}")
    return used


# ----------------------------------------------------------------------------- edge order

@helper
def _mix(x):
    x ^= x >> _S30
    x *= _M1
    x ^= x >> _S27
    x *= _M2
    x ^= x >> _S31
    return x


@helper
def _selected(c, z, y, x, e, offsets, n_attractive, used, stride, keep_below, seed):
    """Whether edge ``e`` (channel ``c`` at voxel z,y,x; its far end inside) takes part: its
    channel is used and, if long-range, it starts on the stride grid and is in the hashed subset."""
    if not used[c]:
        return False
    if c >= n_attractive:
        if z % stride[0] != 0 or y % stride[1] != 0 or x % stride[2] != 0:
            return False
        if keep_below != 0 and _mix(np.uint64(e) ^ seed) >= keep_below:
            return False
    return True


@helper
def _weight_key(value, scale, attractive, bias, low, factor, top):
    """Sort key of an edge: ``top`` - its quantised weight (0 comes first = heaviest)."""
    a = np.float64(value) * scale
    w = a if attractive else 1.0 - a + bias
    level = np.int64((w - low) * factor + 0.5)
    if level < 0:
        level = 0
    if level > top:
        level = top
    return top - level


@helper
def _edge_pass(affs, c, sweep, low_counts, high_counts, out, scale, offsets, n_attractive, used, stride, keep_below,
               seed, bias, low, factor, top):
    """One channel's edges in id order: count both bytes of their keys (sweep 0), or place them
    by the low byte (sweep 1)."""
    n_channels, nz, ny, nx = affs.shape
    n_voxels = nz * ny * nx
    dz, dy, dx = offsets[c, 0], offsets[c, 1], offsets[c, 2]
    attractive = c < n_attractive
    for z in range(max(0, -dz), min(nz, nz - dz)):
        for y in range(max(0, -dy), min(ny, ny - dy)):
            for x in range(max(0, -dx), min(nx, nx - dx)):
                e = c * n_voxels + (z * ny + y) * nx + x
                if not _selected(c, z, y, x, e, offsets, n_attractive, used, stride, keep_below, seed):
                    continue
                key = _weight_key(affs[c, z, y, x], scale, attractive, bias, low, factor, top)
                if sweep == 0:
                    low_counts[key & 255] += 1
                    high_counts[key >> 8] += 1
                else:
                    out[low_counts[key & 255]] = e
                    low_counts[key & 255] += 1


@helper
def _starts(counts):
    """Counts -> where each bucket starts (exclusive prefix sums), in place; returns the total."""
    total = 0
    for k in range(counts.size):
        here = counts[k]
        counts[k] = total
        total += here
    return total


@kernel("f4[:,:,:,::1], f8, i8[:,::1], i8, b1[::1], i8[::1], u8, u8, f8, f8, f8, i8",
        "u1[:,:,:,::1], f8, i8[:,::1], i8, b1[::1], i8[::1], u8, u8, f8, f8, f8, i8")
def _sorted_edges(affs, scale, offsets, n_attractive, used, stride, keep_below, seed, bias, low, factor, levels):
    """Ids ``c * voxels + voxel`` of the selected edges, heaviest first, ties by id.

    A two-pass LSD radix sort on the 16-bit keys (low byte, then high byte; each pass stable),
    so every pass writes to 256 places at a time (cache-friendly) instead of 65536. The id is
    also the flat index of the edge's affinity, so the second pass recomputes its key.
    """
    top = levels - 1
    low_counts = np.zeros(256, np.int64)
    high_counts = np.zeros((top >> 8) + 1, np.int64)
    tmp = np.empty(0, np.int64)
    for c in range(affs.shape[0]):
        _edge_pass(affs, c, 0, low_counts, high_counts, tmp, scale, offsets, n_attractive, used, stride, keep_below,
                   seed, bias, low, factor, top)
    total = _starts(low_counts)
    _starts(high_counts)
    tmp = np.empty(total, np.int64)
    for c in range(affs.shape[0]):
        _edge_pass(affs, c, 1, low_counts, high_counts, tmp, scale, offsets, n_attractive, used, stride, keep_below,
                   seed, bias, low, factor, top)
    flat = affs.reshape(affs.size)
    n_voxels = affs.size // affs.shape[0]
    order = np.empty(total, np.int64)
    for i in range(total):
        e = tmp[i]
        c = e // n_voxels
        key = _weight_key(flat[e], scale, c < n_attractive, bias, low, factor, top)
        order[high_counts[key >> 8]] = e
        high_counts[key >> 8] += 1
    return order


# ----------------------------------------------------------------------------- clustering

@helper
def _pair_key(a, b, width):
    """Non-zero hash key of the root pair {a, b} (a != b)."""
    if a < b:
        return np.uint64(a) * width + np.uint64(b)
    return np.uint64(b) * width + np.uint64(a)


@kernel("i8[::1], i8, i8, i8[::1]")
def _mutex_labels(order, n_voxels, n_attractive, step):
    """Labels 1..n (uint64, flat C order) of the mutex watershed over the sorted edges ``order``;
    ``step[c]`` is channel c's offset in flat voxels."""
    parent = np.arange(n_voxels, dtype=np.int64)
    head = np.full(n_voxels, -1, np.int64)  # first mutex entry of each root (linked lists)
    length = np.zeros(n_voxels, np.int64)
    capacity = 1024
    partner = np.empty(capacity, np.int64)  # a voxel of the cluster on the mutex's other side
    nxt = np.empty(capacity, np.int64)
    used = 0
    bits = 10
    keys = np.zeros(1 << bits, np.uint64)
    values = np.empty(1 << bits, np.int64)
    shift = np.uint64(64 - bits)
    live = 0  # keys in the table
    width = np.uint64(n_voxels)
    for i in range(order.size):
        e = order[i]
        c = e // n_voxels
        p = e - c * n_voxels
        ru = find(parent, p)
        rv = find(parent, p + step[c])
        if ru == rv:
            continue
        key = _pair_key(ru, rv, width)
        if c < n_attractive:
            if lookup(keys, values, shift, key) != -1:
                continue  # a mutex keeps them apart
            if length[ru] < length[rv]:
                ru, rv = rv, ru
            parent[rv] = ru
            # rv's mutexes now belong to ru: re-key them, then splice rv's list in front of ru's
            # (an entry whose pair ru already has is dropped: ru's list holds one for it)
            k = head[rv]
            first = -1
            last = -1
            kept = 0
            while k != -1:
                following = nxt[k]
                other = find(parent, partner[k])
                old = _pair_key(rv, other, width)
                if lookup(keys, values, shift, old) != -1:
                    remove(keys, values, shift, old)
                    live -= 1
                if find_or_add(keys, values, shift, _pair_key(ru, other, width), 0)[1]:
                    live += 1
                    if last == -1:
                        first = k
                    else:
                        nxt[last] = k
                    last = k
                    kept += 1
                k = following
            head[rv] = -1
            if last != -1:
                nxt[last] = head[ru]
                head[ru] = first
                length[ru] += kept
        else:
            if not find_or_add(keys, values, shift, key, 0)[1]:
                continue  # a mutex is there already
            live += 1
            if used + 2 > capacity:
                capacity *= 2
                partner = resized(partner, capacity)
                nxt = resized(nxt, capacity)
            partner[used] = rv
            nxt[used] = head[ru]
            head[ru] = used
            length[ru] += 1
            partner[used + 1] = ru
            nxt[used + 1] = head[rv]
            head[rv] = used + 1
            length[rv] += 1
            used += 2
        if 2 * live >= keys.size:  # keep the table at most half full
            bits += 1
            keys, values = rehash(keys, values, bits)
            shift = np.uint64(64 - bits)
    labels = np.zeros(n_voxels, np.uint64)
    label_of = length  # reused: the label of each root (0 = none yet)
    label_of[:] = 0
    n = 0
    for p in range(n_voxels):
        r = find(parent, p)
        if label_of[r] == 0:
            n += 1
            label_of[r] = n
        labels[p] = label_of[r]
    return labels


# ----------------------------------------------------------------------------- entry point

def _seed_word(seed: int) -> np.uint64:
    """``seed`` spread over 64 bits (the same mixing as the kernels), so that seeds 1 and 2
    choose unrelated subsets."""
    x = int(seed) & _MASK64
    x ^= x >> 30
    x = (x * int(_M1)) & _MASK64
    x ^= x >> 27
    x = (x * int(_M2)) & _MASK64
    return np.uint64(x ^ (x >> 31))


def _keep_below(fraction: float) -> np.uint64:
    """Hash threshold that keeps ``fraction`` of the long-range edges (0 = keep all)."""
    if fraction >= 1.0:
        return np.uint64(0)
    return np.uint64(max(1, min(int(fraction * 2.0**64), _MASK64)))


def mutex_watershed(
    affs: np.ndarray,
    offsets: Sequence[Sequence[int]],
    mode: str = "3d",
    bias: float = 0.0,
    stride_zyx: Sequence[int] = (1, 1, 1),
    long_range_fraction: float = 1.0,
    seed: int = 0,
    min_size: int = 0,
    merge_small: bool = True,
    levels: int = FLOAT_LEVELS,
) -> np.ndarray:
    """Segment affinities ``(C, z, y, x)`` (float in [0, 1] or uint8 = value / 255) with the
    mutex watershed; returns uint64 labels ``(z, y, x)`` 1..n in order of first voxel.

    ``offsets``: one ``(dz, dy, dx)`` per channel, the first three the nearest neighbours.
    ``bias`` (in [-1, 1]) is added to the repulsive weights ``1 - affinity``. ``stride_zyx``
    and ``long_range_fraction`` (chosen by a hash of ``seed``) thin the long-range edges.
    ``min_size``/``merge_small`` as :func:`emtools.segment.watershed.size_filter`, on the
    boundary map of the nearest-neighbour affinities.
    """
    from emtools.segment.watershed import boundary_from_affinities, size_filter

    if mode not in MODES:
        raise EmError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    affs = np.asarray(affs)
    if affs.ndim != 4:
        raise EmError(f"the mutex watershed needs affinities (C, z, y, x), got shape {affs.shape}")
    offsets = check_offsets(offsets, affs.shape[0])
    used = _used_channels(offsets, mode)
    if not -1.0 <= bias <= 1.0:
        raise EmError(f"bias must be in [-1, 1], got {bias:g}")
    stride = np.array([int(s) for s in stride_zyx], np.int64)
    if stride.size != 3 or (stride < 1).any():
        raise EmError(f"stride must be three positive integers z,y,x, got {tuple(stride_zyx)}")
    if not 0.0 < long_range_fraction <= 1.0:
        raise EmError(f"long-range fraction must be in (0, 1], got {long_range_fraction:g}")
    if not 2 <= levels <= 1 << 24:
        raise EmError(f"levels must be in 2..{1 << 24}, got {levels}")
    if affs.dtype == np.uint8:
        values, scale = np.ascontiguousarray(affs), 1.0 / 255.0
    else:
        values, scale = np.ascontiguousarray(as_unit_float(affs, "affinities"), np.float32), 1.0
    shape = values.shape[1:]
    n_voxels = int(np.prod(shape))
    if n_voxels == 0:
        return np.zeros(shape, np.uint64)
    # weights span [0, 1] (attractive) and [bias, 1 + bias] (repulsive)
    low, high = min(0.0, bias), 1.0 + max(0.0, bias)
    factor = (levels - 1) / (high - low)
    table = np.array(offsets, np.int64)
    order = _sorted_edges(values, float(scale), table, N_ATTRACTIVE, used, stride, _keep_below(long_range_fraction),
                          _seed_word(seed), float(bias), float(low), float(factor), int(levels))
    step = (table[:, 0] * shape[1] + table[:, 1]) * shape[2] + table[:, 2]
    labels = _mutex_labels(order, n_voxels, N_ATTRACTIVE, np.ascontiguousarray(step, np.int64)).reshape(shape)
    del order
    if min_size > 1:
        import fastremap

        boundary = boundary_from_affinities(values[:N_ATTRACTIVE])
        labels = size_filter(labels, boundary, int(min_size), merge=merge_small, use_z=mode == "3d")
        labels, _ = fastremap.renumber(labels, preserve_zero=True, in_place=True)
        labels = labels.astype(np.uint64, copy=False)
    return labels
