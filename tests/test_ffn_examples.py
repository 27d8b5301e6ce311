"""FFN training examples: partitions, allowed centres, balanced centre sampling, targets, augmentation."""

import dataclasses
import itertools
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from emtools.ffn.examples import (
    DEFAULT_THRESHOLDS,
    ExampleSettings,
    ExampleSource,
    allowed_centres,
    box_counts,
    initial_object_map,
    partition_map,
    permutable_axes,
    soft_targets,
)
from emtools.tiling.geometry import Box
from emtools.train.data import Volume


def test_box_counts_match_a_convolution():
    rng = np.random.default_rng(0)
    inside = rng.random((7, 9, 11)) < 0.3
    for radius in [(0, 0, 0), (1, 2, 3), (4, 1, 6)]:
        reference = ndimage.convolve(inside.astype(int), np.ones([2 * r + 1 for r in radius], int), mode="constant")
        assert np.array_equal(box_counts(inside, radius), reference)


def naive_partitions(labels, radius, thresholds, min_size):
    """A slow reference: per voxel, the same-label fraction of its box (outside the array = other)."""
    out = np.zeros(labels.shape, np.uint8)
    sizes = Counter(labels.ravel().tolist())
    padded = np.pad(labels.astype(np.int64), [(r, r) for r in radius], constant_values=-1)
    volume = np.prod([2 * r + 1 for r in radius])
    for z, y, x in itertools.product(*map(range, labels.shape)):
        label = labels[z, y, x]
        if label == 0 or sizes[int(label)] < min_size:
            continue
        box = padded[z:z + 2 * radius[0] + 1, y:y + 2 * radius[1] + 1, x:x + 2 * radius[2] + 1]
        fraction = np.count_nonzero(box == label) / volume
        out[z, y, x] = 1 + sum(fraction >= t for t in thresholds)
    return out


def test_partitions_equal_a_naive_reference_on_random_labels():
    rng = np.random.default_rng(3)
    labels = ndimage.zoom(rng.integers(0, 5, (3, 4, 4)), (3, 3, 3), order=0).astype(np.uint64)[:8, :11, :10]
    thresholds = [0.1, 0.3, 0.5, 0.9]
    got = partition_map(labels, (1, 2, 1), thresholds, min_object_size=30)
    assert np.array_equal(got, naive_partitions(labels, (1, 2, 1), thresholds, 30))
    assert got.max() > 0 and (got == 0).any()


def slabs():
    """Two slabs of neurons (1: x < 20, 2: x > 20) split by a membrane at x = 20, and an 8-voxel
    object (3) inside slab 2. The image encodes the label (40 x id), so that a test can read the
    labels back from an augmented example."""
    labels = np.zeros((21, 21, 41), np.uint64)
    labels[:, :, :20] = 1
    labels[:, :, 21:] = 2
    labels[9:11, 9:11, 30:32] = 3
    image = (labels * 40).astype(np.uint8)
    return labels, image


def volume(labels, image, val_box=None, mask=None, voxel=(10.0, 10.0, 10.0)):
    return Volume("slabs", image, labels, mask, None, None, 0.9, voxel, val_box)


SETTINGS = ExampleSettings(fov_zyx=(5, 5, 5), deltas_zyx=(1, 1, 1), fov_moves=1, min_object_size=20)
NORM = {"scale": 1.0, "mean": 128.0, "std": 33.0}


def test_partitions_of_a_known_configuration():
    labels, _ = slabs()
    # radius 3 (half the FOV + delta): a box of 7^3; a voxel d voxels from the flat membrane holds
    # (3 + d) of its 7 columns -> 4/7, 5/7, 6/7, then 1
    parts = partition_map(labels, SETTINGS.radius_zyx, DEFAULT_THRESHOLDS, SETTINGS.min_object_size)
    assert SETTINGS.radius_zyx == (3, 3, 3) and SETTINGS.patch_zyx == (7, 7, 7)
    row = parts[10, 10]
    assert row[19] == 9 and row[18] == 11 and row[17] == 12 and row[16] == 13  # 0.571, 0.714, 0.857, 1.0
    assert row[21] == 9 and row[22] == 11 and row[20] == 0  # slab 2 likewise; the membrane is excluded
    assert not parts[labels == 3].any()  # objects under min_object_size give no centres
    assert parts[10, 10, 29] == 13  # 8 of 343 voxels belong to the small object: 0.977 still >= 0.9
    assert np.array_equal(parts, naive_partitions(labels, (3, 3, 3), DEFAULT_THRESHOLDS, 20)[...])


def test_allowed_centres_keep_the_patch_inside_the_volume_the_mask_and_out_of_the_held_out_region():
    shape, patch = (9, 12, 20), (5, 5, 5)
    inside = allowed_centres(shape, patch)
    assert inside.sum() == 5 * 8 * 16 and inside[2, 2, 2] and not inside[1, 2, 2] and not inside[2, 2, 18]
    held = Box((0, 0, 14), (9, 12, 20))  # the last 6 x
    train = allowed_centres(shape, patch, held)
    assert train[:, :, :12].any() and not train[:, :, 12:].any()  # a centre at x=12 reaches x=14
    assert train[4, 5, 11]
    val = allowed_centres(shape, patch, held, inside_val=True)
    assert set(np.argwhere(val)[:, 2].tolist()) == {16, 17} and val.sum() == 5 * 8 * 2  # patches in x 14..19
    mask = np.ones(shape, np.uint8)
    mask[4, 5, 6] = 0
    masked = allowed_centres(shape, patch, None, mask)
    assert not masked[2:7, 3:8, 4:9].any() and masked[4, 5, 9] and masked[4, 5, 3]


def test_centres_are_balanced_over_partitions_and_interior_seeds_stay_away_from_the_membrane():
    labels, image = slabs()
    source = ExampleSource([volume(labels, image)], SETTINGS, NORM, seed=5)
    assert sorted(source.by_partition) == [9, 11, 12, 13]
    draws = [source.choose(np.random.default_rng([5, 1, i])) for i in range(400)]
    counts = Counter(p for p, _, _ in draws)
    # each of the 4 partitions is drawn with p = 1/4 although partition 13 holds ~80% of the voxels
    for p in (9, 11, 12, 13):
        assert abs(counts[p] - 100) < 4 * np.sqrt(400 * 0.25 * 0.75), counts
    for partition, _, centre in draws:
        distance = abs(centre[2] - 20)
        if partition == 13:
            assert distance >= 4
        else:
            assert distance == {9: 1, 11: 2, 12: 3}[partition]
        assert all(3 <= c < n - 3 for c, n in zip(centre, labels.shape))  # the patch fits
        assert labels[centre] in (1, 2)  # never the membrane, never the small object


def read_labels(example):
    """The labels an example's image encodes (see slabs)."""
    return np.rint((example.image * 33.0 + 128.0) / 40.0).astype(int)


def test_examples_have_soft_targets_on_the_seed_object_and_follow_the_augmentation():
    labels, image = slabs()
    settings = ExampleSettings(fov_zyx=(5, 5, 5), deltas_zyx=(1, 1, 1), min_object_size=20,
                               augment_steps=(("flip", {"p": 1.0, "axes": "zyx", "transpose": True}),))
    source = ExampleSource([volume(labels, image)], settings, NORM, seed=2)
    seen = set()
    for i in range(30):
        example = source.draw((71, 0, i))
        assert example.image.shape == example.target.shape == (7, 7, 7)
        assert example.image.dtype == example.target.dtype == np.float32
        encoded = read_labels(example)
        assert encoded[3, 3, 3] == example.label == labels[example.centre_zyx]
        expected = np.where(encoded == example.label, np.float32(0.95), np.float32(0.05))
        assert np.array_equal(example.target, expected)
        membrane = np.argwhere(encoded == 0)
        if len(membrane) > 20:  # the membrane plane: which axis is its normal (one coordinate value)?
            normal = [axis for axis in range(3) if len(set(membrane[:, axis])) == 1]
            seen.update(normal)
        # the same key gives the same example (ranks and resumed runs agree)
        again = source.draw((71, 0, i))
        assert np.array_equal(again.image, example.image) and again.centre_zyx == example.centre_zyx
    assert seen == {0, 1, 2}  # the membrane (normal x in the volume) turns up along every axis: permutations act


def test_permutation_only_among_equal_axes_and_plain_validation_examples():
    assert permutable_axes((9, 9, 9), (2, 2, 2), (10, 10, 10)) == (0, 1, 2)
    assert permutable_axes((9, 9, 9), (2, 2, 2), (40, 4, 4)) == (1, 2)
    assert permutable_axes((5, 9, 9), (1, 2, 2), (10, 10, 10)) == (1, 2)
    assert permutable_axes((5, 7, 9), (1, 2, 2), (10, 10, 10)) == ()
    labels, image = slabs()
    # reflection alone (no permutation): every one of the 8 flip combinations turns up
    source = ExampleSource([volume(labels, image)], dataclasses.replace(SETTINGS, permute=False), NORM, seed=2)
    ramp = np.arange(7 * 7 * 7, dtype=np.float32).reshape(7, 7, 7)
    flips = set()
    for i in range(60):
        image_t, target_t = source.transform(ramp, ramp + 1, np.random.default_rng(i))
        assert np.array_equal(target_t, image_t + 1)  # image and targets move together
        flips.add(tuple(bool(np.diff(image_t, axis=a).ravel()[0] < 0) for a in range(3)))  # which axes run backwards
    assert len(flips) == 8
    plain = ExampleSource([volume(labels, image)], SETTINGS, NORM, seed=2).draw_plain((72, 0))
    # no augmentation: the patch is the volume's own, with the membrane along x
    centre = plain.centre_zyx
    sl = tuple(slice(c - 3, c + 4) for c in centre)
    assert np.array_equal(read_labels(plain), labels[sl].astype(int))


def test_object_map_and_targets():
    canvas = initial_object_map((5, 7, 9), 0.05, 0.95)
    assert canvas.dtype == np.float32 and canvas[2, 3, 4] == pytest.approx(np.log(0.95 / 0.05))
    assert np.count_nonzero(canvas == canvas[0, 0, 0]) == 5 * 7 * 9 - 1
    assert canvas[0, 0, 0] == pytest.approx(np.log(0.05 / 0.95))
    labels = np.array([[[0, 4, 4, 2]]], np.uint64)
    assert soft_targets(labels, 4).tolist() == [[[np.float32(0.05), np.float32(0.95), np.float32(0.95),
                                                  np.float32(0.05)]]]
    assert soft_targets(labels, 0).max() == np.float32(0.05)  # background is never the object


def test_held_out_and_masked_regions_give_no_training_centres():
    labels, image = slabs()
    mask = np.ones(labels.shape, np.uint8)
    mask[:, :, 5] = 0  # unlabelled column of sections
    held = Box((0, 0, 30), labels.shape)
    source = ExampleSource([volume(labels, image, held, mask)], SETTINGS, NORM, seed=1)
    centres = np.concatenate([np.array(np.unravel_index(a[0], labels.shape)).T
                              for a in source.by_partition.values()])
    assert centres[:, 2].min() >= 9 and centres[:, 2].max() <= 26  # 3 beyond the mask, 4 before x = 30
    val = ExampleSource([volume(labels, image, held, mask)], SETTINGS, NORM, seed=1, split="val")
    val_centres = np.concatenate([np.array(np.unravel_index(a[0], labels.shape)).T for a in val.by_partition.values()])
    assert val_centres[:, 2].min() >= 33 and val_centres[:, 2].max() <= 37
