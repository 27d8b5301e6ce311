"""Learning targets and weights: hand-made cases and slow references (naive loops, scipy)."""

import itertools

import numpy as np
import pytest
from scipy import ndimage

from emtools import targets
from emtools.affinities import affinities_from_labels
from emtools.errors import EmError
from emtools.models.heads import ACTIVATIONS, NEAREST_OFFSETS


def random_labels(shape=(4, 9, 11), values=4, seed=0, dtype=np.uint64):
    return np.random.default_rng(seed).integers(0, values, shape).astype(dtype)


def blob_labels(shape=(3, 24, 26), seed=0):
    """A few touching and separate rectangles (instances) on background."""
    labels = np.zeros(shape, np.uint32)
    labels[:, 2:10, 2:12] = 1
    labels[:, 2:10, 12:20] = 2  # touches 1
    labels[1:, 14:22, 5:15] = 3
    labels[0, 15:18, 20:26] = 4  # touches the border on the default shape
    return labels


def test_kinds_are_the_head_kinds():
    assert set(targets.TARGET_KINDS) == set(ACTIVATIONS)
    assert targets.NEAREST_OFFSETS == NEAREST_OFFSETS


# ----------------------------------------------------------------------------- affinity

@pytest.mark.parametrize("dtype", [np.uint64, np.uint32, np.int32, np.uint8, bool])
@pytest.mark.parametrize("seed", [0, 1])
def test_nearest_affinities_equal_affinities_from_labels(dtype, seed):
    labels = random_labels(seed=seed, dtype=dtype, values=2 if dtype is bool else 4)
    target, valid = targets.build_target("affinity", labels)
    assert target.dtype == np.float32 and target.shape == (3,) + labels.shape
    np.testing.assert_array_equal(target, affinities_from_labels(labels))
    expected_valid = np.ones_like(valid)
    expected_valid[0, 0], expected_valid[1, :, 0], expected_valid[2, :, :, 0] = 0, 0, 0
    np.testing.assert_array_equal(valid, expected_valid)


def naive_affinities(labels, offsets, ignore=None):
    target = np.zeros((len(offsets),) + labels.shape, np.float32)
    valid = np.zeros_like(target)
    for c, offset in enumerate(offsets):
        for p in itertools.product(*[range(n) for n in labels.shape]):
            q = tuple(a + d for a, d in zip(p, offset))
            if all(0 <= v < n for v, n in zip(q, labels.shape)):
                valid[(c,) + p] = 1
                target[(c,) + p] = float(labels[p] == labels[q] != 0)
                if ignore is not None and ignore in (labels[p], labels[q]):
                    valid[(c,) + p] = 0
    return target, valid


@pytest.mark.parametrize("ignore", [None, 2])
def test_long_range_affinities_match_a_naive_loop(ignore):
    labels = random_labels((3, 7, 8), values=3, seed=4)
    offsets = [(-1, 0, 0), (0, -3, 0), (0, 0, -5), (-2, -1, 1), (0, 2, 0), (0, 0, -8)]  # last: nothing inside
    target, valid = targets.build_target("affinity", labels, offsets=offsets, ignore_label=ignore)
    ref_target, ref_valid = naive_affinities(labels, offsets, ignore)
    np.testing.assert_array_equal(target, ref_target)
    np.testing.assert_array_equal(valid, ref_valid)
    assert valid[5].sum() == 0


def test_affinity_offsets_are_checked():
    with pytest.raises(EmError, match="must be three integers z,y,x, not all 0"):
        targets.build_target("affinity", random_labels(), offsets=[(0, 0, 0)])
    with pytest.raises(EmError, match="offsets are for affinity targets"):
        targets.build_target("boundary", random_labels(), offsets=[(0, 0, -1)])


# ----------------------------------------------------------------------------- boundary / contour

def naive_touches(labels, mode):
    steps = [(0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)] + ([(1, 0, 0), (-1, 0, 0)] if mode == "3d" else [])
    out = np.zeros(labels.shape, bool)
    for p in itertools.product(*[range(n) for n in labels.shape]):
        for step in steps:
            q = tuple(a + d for a, d in zip(p, step))
            if all(0 <= v < n for v, n in zip(q, labels.shape)) and labels[q] != labels[p]:
                out[p] = True
    return out


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_boundary_is_background_or_touching_another_label(mode):
    labels = random_labels((3, 6, 7), values=3, seed=2)
    target, valid = targets.build_target("boundary", labels, mode=mode)
    np.testing.assert_array_equal(target[0], (labels == 0) | naive_touches(labels, mode))
    assert (valid == 1).all()


def test_boundary_hand_case():
    labels = np.array([[[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0]]], np.uint32)
    target, _ = targets.build_target("boundary", labels)
    np.testing.assert_array_equal(target[0, 0], [[0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]])


def naive_contour(labels, thickness, mode):
    out = np.zeros(labels.shape, bool)
    points = list(itertools.product(*[range(n) for n in labels.shape]))
    for p in points:
        if labels[p] == 0:
            continue
        for q in points:
            if mode == "2d" and q[0] != p[0]:
                continue
            if labels[q] != labels[p] and sum(abs(a - b) for a, b in zip(p, q)) <= thickness:
                out[p] = True
                break
    return out


@pytest.mark.parametrize("thickness,mode", [(1, "2d"), (2, "2d"), (3, "2d"), (2, "3d")])
def test_contour_matches_a_naive_city_block_search(thickness, mode):
    labels = blob_labels((3, 12, 12))
    labels[:, 1:5, 1:6] = 1
    labels[:, 1:5, 6:11] = 2
    labels[1:, 7:11, 2:10] = 3
    target, _ = targets.build_target("contour", labels, thickness=thickness, mode=mode)
    np.testing.assert_array_equal(target[0].astype(bool), naive_contour(labels, thickness, mode))


def test_foreground_and_cleft():
    labels = blob_labels()
    fg, _ = targets.build_target("foreground", labels)
    np.testing.assert_array_equal(fg[0], labels != 0)
    cleft, _ = targets.build_target("cleft", labels)
    np.testing.assert_array_equal(cleft[0], labels != 0)


@pytest.mark.parametrize("mode,voxel", [("2d", (1, 1, 1)), ("3d", (1, 1, 1)), ("3d", (4, 1, 1))])
def test_cleft_dilation_is_a_euclidean_ball_in_finest_voxels(mode, voxel):
    labels = np.zeros((5, 15, 15), np.uint32)
    labels[2, 7, 7] = 5
    target, _ = targets.build_target("cleft", labels, dilate=2.5, mode=mode, voxel_size_nm=voxel)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in labels.shape], indexing="ij")
    scale = np.array(voxel) / min(voxel)
    dist = np.sqrt(((zz - 2) * scale[0]) ** 2 + ((yy - 7) * scale[1]) ** 2 + ((xx - 7) * scale[2]) ** 2)
    expected = (dist <= 2.5) & ((zz == 2) if mode == "2d" else True)
    np.testing.assert_array_equal(target[0].astype(bool), expected)


# ----------------------------------------------------------------------------- distance

def reference_distance(labels, alpha, beta, mode, voxel):
    """Per instance, scipy's EDT; background: EDT to the nearest instance voxel; then tanh."""
    scale = np.array(voxel, float) / min(voxel)
    blocks = [(labels[z], scale[1:], z) for z in range(labels.shape[0])] if mode == "2d" else [(labels, scale, ...)]
    out = np.zeros(labels.shape, np.float64)
    for block, sampling, where in blocks:
        inside = np.zeros(block.shape)
        for k in np.unique(block[block != 0]):
            inside[block == k] = ndimage.distance_transform_edt(block == k, sampling=sampling)[block == k]
        if (block != 0).any():
            outside = ndimage.distance_transform_edt(block == 0, sampling=sampling)
        else:
            outside = np.full(block.shape, np.inf)
        out[where] = np.where(block != 0, np.tanh(inside / alpha), -np.tanh(outside / beta))
    return out


@pytest.mark.parametrize("mode,voxel", [("2d", (50, 4, 4)), ("3d", (1, 1, 1)), ("3d", (3, 1, 2))])
def test_distance_matches_scipy_edt_per_instance(mode, voxel):
    labels = blob_labels()
    target, valid = targets.build_target("distance", labels, mode=mode, voxel_size_nm=voxel, alpha=4.0, beta=10.0)
    ref = reference_distance(labels, 4.0, 10.0, mode, voxel)
    # scipy, like the target, does not treat the volume border as an object border
    np.testing.assert_allclose(target[0], ref, atol=1e-5)
    assert target.min() >= -1 and target.max() <= 1 and (valid == 1).all()


def test_distance_hand_values_and_empty_sections():
    labels = np.zeros((2, 1, 7), np.uint32)
    labels[0, 0, 1:6] = 1
    target, _ = targets.build_target("distance", labels, alpha=8.0, beta=50.0)
    d_in = np.array([1, 2, 3, 2, 1])
    np.testing.assert_allclose(target[0, 0, 0, 1:6], np.tanh(d_in / 8.0), atol=1e-6)
    np.testing.assert_allclose(target[0, 0, 0, [0, 6]], -np.tanh(1 / 50.0), atol=1e-6)
    np.testing.assert_array_equal(target[0, 1], -1.0)  # a section without instances
    assert np.isfinite(target).all()


def test_touching_instances_are_separated_by_the_distance():
    labels = blob_labels()
    target, _ = targets.build_target("distance", labels)
    # on the shared face of instances 1 and 2 the distance is the smallest inside value
    assert np.allclose(target[0, 0, 5, 11], np.tanh(1 / 8.0)) and np.allclose(target[0, 0, 5, 12], np.tanh(1 / 8.0))


def test_bcd_targets_decode_back_to_the_instances():
    """em-watershed's BCD decoding of perfect foreground/contour/distance maps finds the instances."""
    from emtools.evaluate.neuron import neuron_metrics
    from emtools.segment.watershed import instance_segmentation

    labels = blob_labels((3, 40, 40))
    labels[:, 25:35, 25:38] = 5
    fg, _ = targets.build_target("foreground", labels)
    contour, _ = targets.build_target("contour", labels, mode="3d")
    distance, _ = targets.build_target("distance", labels, mode="3d")
    seg = instance_segmentation(fg[0], contour[0], distance[0], seed_distance=0.2, min_seed_size=4, min_size=1,
                                mode="3d")
    metrics = neuron_metrics(seg.astype(np.uint64), labels.astype(np.uint64))
    assert metrics["adapted_rand_error"] < 0.05, metrics


# ----------------------------------------------------------------------------- semantic

VNC_CLASSES = {0: 1, 32: 1, 64: 1, 96: 1, 128: 1, 159: 0, 191: 2, 223: 3, 255: 0}


def test_semantic_maps_raw_values_to_classes():
    raw = np.array([[[0, 32, 191], [223, 255, 159]]], np.uint8)
    target, valid = targets.build_target("semantic", raw, classes=VNC_CLASSES)
    np.testing.assert_array_equal(target[0, 0], [[1, 1, 2], [3, 0, 0]])
    assert target.dtype == np.float32 and (valid == 1).all()
    as_is, _ = targets.build_target("semantic", raw.astype(np.uint64) // 32)
    np.testing.assert_array_equal(as_is[0], raw // 32)
    wide, _ = targets.build_target("semantic", raw.astype(np.uint64) * 1000, classes={k * 1000: v for k, v in VNC_CLASSES.items()})
    np.testing.assert_array_equal(wide, target)
    keys_as_text, _ = targets.build_target("semantic", raw, classes={str(k): v for k, v in VNC_CLASSES.items()})
    np.testing.assert_array_equal(keys_as_text, target)


def test_semantic_refuses_unlisted_values_except_the_ignore_label():
    raw = np.array([[[0, 7, 191]]], np.uint8)
    with pytest.raises(EmError, match=r"label values \[7\] are not in classes"):
        targets.build_target("semantic", raw, classes=VNC_CLASSES)
    target, valid = targets.build_target("semantic", raw, classes=VNC_CLASSES, ignore_label=7)
    np.testing.assert_array_equal(valid[0, 0, 0], [1, 0, 1])
    np.testing.assert_array_equal(target[0, 0, 0, [0, 2]], [1, 2])


def test_ignore_label_invalidates_its_voxels():
    labels = blob_labels()
    for kind in ("boundary", "foreground", "contour", "distance", "cleft"):
        _, valid = targets.build_target(kind, labels, ignore_label=4)
        np.testing.assert_array_equal(valid[0], labels != 4)


@pytest.mark.parametrize("call,message", [
    (lambda: targets.build_target("boundry", blob_labels()), "unknown target kind 'boundry'"),
    (lambda: targets.build_target("contour", blob_labels(), width=2), "target contour has no parameter 'width'"),
    (lambda: targets.build_target("contour", blob_labels(), thickness=0), "thickness must be a whole number >= 1"),
    (lambda: targets.build_target("distance", blob_labels(), alpha=0), "alpha must be positive"),
    (lambda: targets.build_target("boundary", blob_labels(), mode="4d"), "mode must be 2d or 3d"),
    (lambda: targets.build_target("foreground", blob_labels().astype(np.float32)), "labels must be integers"),
    (lambda: targets.build_target("foreground", blob_labels()[0]), "labels must be 3D"),
    (lambda: targets.build_target("cleft", blob_labels(), dilate=-1), "dilate must not be negative"),
    (lambda: targets.build_target("foreground", blob_labels(), voxel_size_nm=(1, 0, 1)), "voxel_size_nm"),
])
def test_bad_requests_fail_with_one_line(call, message):
    with pytest.raises(EmError) as info:
        call()
    assert message in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- weights

def test_class_balanced_weights_give_each_class_half_of_the_valid_mass():
    labels = blob_labels()
    target, valid = targets.build_target("affinity", labels, offsets=[(0, 0, -1), (0, -5, 0), (0, 0, -30)])
    valid[0, 0] = 0  # some invalid voxels
    weights = targets.class_balanced_weights(target, valid)
    assert weights.dtype == np.float32 and weights.shape == target.shape
    for c in range(2):
        mass = valid[c].sum()
        np.testing.assert_allclose(weights[c][target[c] == 1].sum(), mass / 2, rtol=1e-5)
        np.testing.assert_allclose(weights[c][(target[c] == 0) & (valid[c] == 1)].sum(), mass / 2, rtol=1e-5)
    assert (weights[valid == 0] == 0).all()
    # channel 2 has no valid voxel at all (offset beyond the volume); a channel with one class keeps 1
    assert (weights[2] == 0).all()
    one_class = targets.class_balanced_weights(np.zeros((1, 2, 3, 3)), np.ones((1, 2, 3, 3)))
    np.testing.assert_array_equal(one_class, 1.0)


def reference_border_weights(labels, w0, sigma, mode):
    blocks = [(labels[z], z) for z in range(labels.shape[0])] if mode == "2d" else [(labels, ...)]
    out = np.ones(labels.shape)
    for block, where in blocks:
        ids = np.unique(block[block != 0])
        if len(ids) < 2:
            continue
        dists = np.sort(np.stack([ndimage.distance_transform_edt(block != k) for k in ids]), axis=0)
        term = w0 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma**2))
        out[where] += np.where(block == 0, term, 0)
    return out


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_border_weights_match_full_per_instance_distances(mode):
    rng = np.random.default_rng(3)
    labels = np.zeros((3, 60, 64), np.uint32)
    for k in range(1, 12):
        y, x = rng.integers(0, 56), rng.integers(0, 60)
        labels[:, y : y + int(rng.integers(3, 9)), x : x + int(rng.integers(3, 9))] = k
    labels[1, 40:44, 2:6] = 99
    weights = targets.border_weights(labels, w0=10.0, sigma_vx=5.0, mode=mode)
    np.testing.assert_allclose(weights, reference_border_weights(labels, 10.0, 5.0, mode), atol=1e-4)
    assert weights.dtype == np.float32 and weights.max() > 2.0  # the gaps between cells weigh more
    assert (weights[labels != 0] == 1).all()


def test_border_weights_are_one_without_two_instances():
    labels = np.zeros((2, 10, 10), np.uint32)
    labels[0, 2:5, 2:5] = 1
    np.testing.assert_array_equal(targets.border_weights(labels), 1.0)
