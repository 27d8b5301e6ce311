"""emtools.segment.mutex: hand-made cases, a slow pure-Python reference, thinning, bad input."""

import numpy as np
import pytest

from emtools.errors import EmError
from emtools.evaluate.neuron import neuron_metrics
from emtools.segment.mutex import check_offsets, mutex_watershed, parse_offsets
from emtools.targets import affinity_target

NN = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
LONG = NN + [[-2, 0, 0], [0, -3, 0], [0, 0, -3], [0, -2, -2]]
MASK64 = 2**64 - 1


# ----------------------------------------------------------------------------- reference

def _mix(x):
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def reference(affs, offsets, mode="3d", bias=0.0, stride=(1, 1, 1), fraction=1.0, seed=0, levels=65536):
    """The paper's algorithm, one edge at a time, with a set of mutex partners per cluster."""
    n_channels, nz, ny, nx = affs.shape
    n_voxels = nz * ny * nx
    scale = 1.0 / 255.0 if affs.dtype == np.uint8 else 1.0
    low, high = min(0.0, bias), 1.0 + max(0.0, bias)
    factor = (levels - 1) / (high - low)
    keep_below = 0 if fraction >= 1 else max(1, min(int(fraction * 2.0**64), MASK64))
    edges = []
    for c, (dz, dy, dx) in enumerate(offsets):
        if mode == "2d" and dz != 0:
            continue
        for z in range(nz):
            for y in range(ny):
                for x in range(nx):
                    if not (0 <= z + dz < nz and 0 <= y + dy < ny and 0 <= x + dx < nx):
                        continue
                    p = (z * ny + y) * nx + x
                    e = c * n_voxels + p
                    if c >= 3:
                        if z % stride[0] or y % stride[1] or x % stride[2]:
                            continue
                        if keep_below and _mix(e ^ _mix(seed)) >= keep_below:
                            continue
                    a = float(affs[c, z, y, x]) * scale
                    w = a if c < 3 else 1.0 - a + bias
                    level = min(max(int((w - low) * factor + 0.5), 0), levels - 1)
                    edges.append((levels - 1 - level, e, p, p + (dz * ny + dy) * nx + dx, c < 3))
    edges.sort()
    parent = list(range(n_voxels))
    mutex = [set() for _ in range(n_voxels)]

    def find(v):
        while parent[v] != v:
            v = parent[v]
        return v

    for _, _, p, q, attractive in edges:
        ru, rv = find(p), find(q)
        if ru == rv:
            continue
        if attractive:
            if rv in mutex[ru]:
                continue
            parent[rv] = ru
            for t in mutex[rv]:
                mutex[t].discard(rv)
                mutex[t].add(ru)
            mutex[ru] |= mutex[rv]
            mutex[rv] = set()
        else:
            mutex[ru].add(rv)
            mutex[rv].add(ru)
    labels, ids = np.zeros(n_voxels, np.uint64), {}
    for p in range(n_voxels):
        labels[p] = ids.setdefault(find(p), len(ids) + 1)
    return labels.reshape(nz, ny, nx)


# ----------------------------------------------------------------------------- hand-made cases

def _line(nearest, long_range):
    """Affinities of a 1x1xN row: x edges ``nearest`` (edge i links voxel i+1 to i) and one
    long-range channel of offset (0, 0, -2) with ``long_range`` (edge i links i+2 to i)."""
    n = len(nearest) + 1
    affs = np.zeros((4, 1, 1, n), np.float32)
    affs[2, 0, 0, 1:] = nearest
    affs[3, 0, 0, 2:] = long_range
    return affs, NN + [[0, 0, -2]]


def test_a_repulsive_edge_keeps_two_blobs_apart():
    affs, offsets = _line([0.9, 0.6], [0.0])  # voxels 0 and 2 repel (weight 1) before 1-2 is seen
    assert mutex_watershed(affs, offsets).ravel().tolist() == [1, 1, 2]
    # the same chain without the repulsion merges
    affs, offsets = _line([0.9, 0.6], [1.0])
    assert mutex_watershed(affs, offsets).ravel().tolist() == [1, 1, 1]


def test_a_weak_repulsion_comes_too_late_to_split():
    affs, offsets = _line([0.9, 0.6], [0.5])  # weight 0.5 < 0.6: 1-2 merges first
    assert mutex_watershed(affs, offsets).ravel().tolist() == [1, 1, 1]
    # a bias makes the same repulsion heavier than the attraction
    assert mutex_watershed(affs, offsets, bias=0.2).ravel().tolist() == [1, 1, 2]


def test_a_chain_merges_and_mutexes_follow_merged_clusters():
    # 0-1-2-3-4 chained; 0 repels 2 early, so 2 starts its own cluster and takes 3 and 4 with it
    affs, offsets = _line([0.9, 0.5, 0.8, 0.7], [0.05, 1.0, 1.0])
    assert mutex_watershed(affs, offsets).ravel().tolist() == [1, 1, 2, 2, 2]
    affs, offsets = _line([0.9, 0.5, 0.8, 0.7], [1.0, 1.0, 1.0])
    assert mutex_watershed(affs, offsets).ravel().tolist() == [1] * 5


def test_mutexes_carry_over_when_the_far_cluster_merges():
    # 3 repels 1 (edge 1 of the long-range channel) before 2-3 and 1-2 are seen: after 2 joins 3,
    # the mutex {1} | {2, 3} must block 1-2
    affs, offsets = _line([0.9, 0.6, 0.95], [1.0, 0.0])
    assert mutex_watershed(affs, offsets).ravel().tolist() == [1, 1, 2, 2]


def test_labels_follow_first_voxels_and_every_voxel_has_one():
    # no affinity anywhere: every pair two rows apart repels first, then the zero-weight
    # attractions merge what they may: rows 0-1, then 2-3 ... (0 and 2 repel)
    affs = np.zeros((4, 2, 6, 3), np.float32)
    labels = mutex_watershed(affs, NN + [[0, -2, 0]])
    assert labels.dtype == np.uint64
    flat = labels.ravel()
    _, first = np.unique(flat, return_index=True)
    assert (np.diff(flat[np.sort(first)].astype(np.int64)) == 1).all() and flat[0] == 1 and flat.min() == 1
    np.testing.assert_array_equal(labels, reference(affs, NN + [[0, -2, 0]]))


# ----------------------------------------------------------------------------- reference agreement

@pytest.mark.parametrize("case", [
    dict(seed=0),
    dict(seed=1, mode="2d"),
    dict(seed=2, bias=0.3),
    dict(seed=3, bias=-0.4, mode="2d"),
    dict(seed=4, stride=(1, 2, 2)),
    dict(seed=5, fraction=0.4, hash_seed=7),
    dict(seed=6, uint8=True),
    dict(seed=7, levels=8),  # many ties: broken by edge id
])
def test_same_labels_as_the_slow_reference(case):
    rng = np.random.default_rng(case["seed"])
    shape = (3, 5, 6)
    affs = rng.random((len(LONG),) + shape).astype(np.float32)
    if case.get("uint8"):
        affs = (affs * 255).astype(np.uint8)
    kwargs = dict(mode=case.get("mode", "3d"), bias=case.get("bias", 0.0))
    thinning = dict(stride=case.get("stride", (1, 1, 1)), fraction=case.get("fraction", 1.0),
                    seed=case.get("hash_seed", 0), levels=case.get("levels", 65536))
    got = mutex_watershed(affs, LONG, stride_zyx=thinning["stride"], long_range_fraction=thinning["fraction"],
                          seed=thinning["seed"], levels=thinning["levels"], **kwargs)
    np.testing.assert_array_equal(got, reference(affs, LONG, **kwargs, **thinning))


def test_subsets_are_deterministic_and_depend_on_the_seed():
    affs = np.random.default_rng(0).random((len(LONG), 4, 12, 12)).astype(np.float32)
    a = mutex_watershed(affs, LONG, long_range_fraction=0.3, seed=1)
    np.testing.assert_array_equal(a, mutex_watershed(affs, LONG, long_range_fraction=0.3, seed=1))
    assert not np.array_equal(a, mutex_watershed(affs, LONG, long_range_fraction=0.3, seed=2))


def test_2d_mode_keeps_sections_apart():
    affs = np.ones((len(LONG), 3, 6, 6), np.float32)
    labels = mutex_watershed(affs, LONG, mode="2d")
    assert [np.unique(labels[z]).tolist() for z in range(3)] == [[1], [2], [3]]
    assert mutex_watershed(affs, LONG, mode="3d").max() == 1


# ----------------------------------------------------------------------------- synthetic cells

def _cells(shape=(8, 40, 40), n=12, seed=0):
    rng = np.random.default_rng(seed)
    points = rng.random((n, 3)) * np.array(shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return (np.argmin(((grid[..., None, :] - points) ** 2).sum(-1), -1) + 1).astype(np.uint64)


def test_noisy_long_range_affinities_give_back_the_cells():
    gt = _cells()
    offsets = NN + [[-2, 0, 0], [0, -5, 0], [0, 0, -5], [0, -5, -5], [0, 5, -5]]
    affs, _ = affinity_target(gt, offsets)
    noise = np.random.default_rng(1).normal(0, 0.25, affs.shape).astype(np.float32)
    affs = np.clip(affs * 0.8 + 0.1 + noise, 0, 1).astype(np.float32)
    labels = mutex_watershed(affs, offsets, min_size=10)
    scores = neuron_metrics(labels, gt)
    assert scores["adapted_rand_error"] < 0.1, scores
    counts = np.bincount(labels.ravel().astype(np.int64))[1:]
    assert counts.min() >= 10 and labels.max() == counts.size  # filtered and renumbered 1..n


def test_min_size_remove_leaves_zeros():
    affs = np.zeros((4, 1, 4, 4), np.float32)  # two segments of 8 voxels (rows 0-1, 2-3)
    assert mutex_watershed(affs, NN + [[0, -2, 0]], min_size=8, merge_small=False).max() == 2
    assert mutex_watershed(affs, NN + [[0, -2, 0]], min_size=9, merge_small=False).max() == 0


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("offsets, channels, message", [
    (NN + [[0, -3]], 4, "affinity offset [0, -3] is not three integers z,y,x"),
    (NN + [[0, -3, 0.5]], 4, "is not three integers"),
    (NN + [[0, 0, 0]], 4, "links a voxel to itself"),
    ([[0, -1, 0], [-1, 0, 0], [0, 0, -1], [0, -3, 0]], 4, "the first three offsets must be the nearest neighbours"),
    (NN + [[0, -3, 0]], 5, "the affinities have 5 channels but 4 offsets are given"),
    ("[[-1,0,0]]", None, "offsets must be a list of z,y,x triples"),
])
def test_bad_offsets(offsets, channels, message):
    with pytest.raises(EmError) as info:
        check_offsets(offsets, channels)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_parse_offsets():
    assert parse_offsets("[[-1,0,0],[0,-1,0],[0,0,-1],[0,-9,0]]")[3] == [0, -9, 0]
    with pytest.raises(EmError, match="--offsets must be a JSON list"):
        parse_offsets("-1,0,0")


@pytest.mark.parametrize("affs, offsets, kwargs, message", [
    (np.zeros((3, 2, 4, 4), np.float32), NN, {}, "needs long-range offsets"),
    (np.zeros((4, 2, 4, 4), np.float32), NN + [[-2, 0, 0]], {"mode": "2d"}, "needs in-plane (dz = 0) long-range"),
    (np.zeros((2, 4, 4), np.float32), NN, {}, "needs affinities (C, z, y, x)"),
    (np.full((4, 2, 4, 4), 1.5, np.float32), LONG[:4], {}, "[0, 1]"),
    (np.zeros((4, 2, 4, 4), np.float32), LONG[:4], {"bias": 2.0}, "bias must be in [-1, 1]"),
    (np.zeros((4, 2, 4, 4), np.float32), LONG[:4], {"stride_zyx": (1, 0, 1)}, "stride must be three positive"),
    (np.zeros((4, 2, 4, 4), np.float32), LONG[:4], {"long_range_fraction": 0.0}, "long-range fraction"),
    (np.zeros((4, 2, 4, 4), np.float32), LONG[:4], {"mode": "auto"}, "mode must be one of 2d, 3d"),
])
def test_bad_input_is_one_line(affs, offsets, kwargs, message):
    with pytest.raises(EmError) as info:
        mutex_watershed(affs, offsets, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)
