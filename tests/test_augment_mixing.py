"""copy_paste and mixup: what is copied, where it may go, ids that never clash."""

import numpy as np
import pytest

from emtools import augment
from emtools.errors import EmError


def blobs(shape=(6, 48, 48)):
    """Three separated box instances in an empty volume; the image encodes the id."""
    ids = np.zeros(shape, np.uint64)
    ids[1:4, 4:12, 4:12] = 3
    ids[2:5, 30:36, 6:14] = 7
    ids[0:2, 20:26, 30:40] = 9
    image = (0.1 + 0.05 * ids.astype(np.float32)).astype(np.float32)
    return image, {"labels": ids, "mask": np.ones(shape, np.uint8)}


def test_copy_paste_copies_instances_with_new_ids_onto_background():
    image, labels = blobs()
    out, out_labels = augment.apply("copy_paste", image, labels, np.random.default_rng(0), count=(3, 3),
                                    min_size_vx=10, flip=False)
    ids = out_labels["labels"]
    new = sorted(set(np.unique(ids).tolist()) - {0, 3, 7, 9})
    assert new and new == list(range(10, 10 + len(new)))  # above every id in use, consecutive
    sizes = {3: 3 * 8 * 8, 7: 3 * 6 * 8, 9: 2 * 6 * 10}
    for k in new:
        where = ids == k
        value = float(out[where][0])
        original = int(round((value - 0.1) / 0.05))
        assert original in sizes and where.sum() == sizes[original]
        np.testing.assert_allclose(out[where], value, atol=1e-6)  # the copied image voxels
        assert (labels["labels"][where] == 0).all()  # pasted onto background (avoid_overlap)
    assert (out_labels["mask"] == 1).all()
    # the original instances are still complete
    for k, size in sizes.items():
        assert (ids == k).sum() == size


def test_copy_paste_can_overlap_when_allowed_and_skips_when_nothing_fits():
    image, labels = blobs((4, 16, 16))
    labels["labels"][:] = 0
    labels["labels"][:, :, :] = 5  # one instance fills everything: nowhere to paste it
    out, out_labels = augment.apply("copy_paste", image, labels, np.random.default_rng(0), count=(2, 2))
    np.testing.assert_array_equal(out_labels["labels"], labels["labels"])
    np.testing.assert_array_equal(out, image)


def test_copy_paste_from_a_source_volume_copies_its_labels_entries():
    image, labels = blobs()
    target_image = np.full(image.shape, 0.9, np.float32)
    target = {"labels": np.zeros(image.shape, np.uint64), "mask": np.ones(image.shape, np.uint8)}
    source_mask = labels["mask"].copy()
    source_mask[labels["labels"] == 7] = 0  # a copied voxel that was invalid stays invalid
    out, out_labels = augment.apply("copy_paste", target_image, target, np.random.default_rng(1), count=(3, 3),
                                    min_size_vx=10, source=(image, {"labels": labels["labels"], "mask": source_mask}))
    ids = out_labels["labels"]
    assert ids.max() >= 10  # above the source's ids too
    for k in set(np.unique(ids).tolist()) - {0}:
        value = float(out[ids == k][0])
        original = int(round((value - 0.1) / 0.05))
        assert original in (3, 7, 9)
        assert (out_labels["mask"][ids == k] == (0 if original == 7 else 1)).all()
    assert ((out == 0.9) == (ids == 0)).all()
    # a bare array as the source's labels is the instance entry
    out2, _ = augment.apply("copy_paste", target_image, target, np.random.default_rng(1), count=(3, 3),
                            min_size_vx=10, source=(image, labels["labels"]))
    assert (out2 != 0.9).any()


def test_copy_paste_needs_the_instance_entry_and_room_for_new_ids():
    image, labels = blobs()
    with pytest.raises(EmError, match="copy_paste.key 'cells' is not among the labels"):
        augment.apply("copy_paste", image, labels, np.random.default_rng(0), key="cells")
    small = {"labels": labels["labels"].astype(np.uint8)}
    small["labels"][small["labels"] == 9] = 255
    with pytest.raises(EmError, match="no free id left in uint8"):
        augment.apply("copy_paste", image, small, np.random.default_rng(0), count=(3, 3), min_size_vx=10)


def _rises_along_x(image, where):
    box = tuple(slice(int(w.min()), int(w.max()) + 1) for w in np.nonzero(where))
    profile = image[box].mean(axis=(0, 1))
    return bool(profile[-1] > profile[0])


def test_copy_paste_flips_copies_when_asked():
    image, labels = blobs()
    image = image + np.linspace(0, 0.05, image.shape[2], dtype=np.float32)  # a gradient along x
    directions = []
    for seed in range(12):
        out, out_labels = augment.apply("copy_paste", image, labels, np.random.default_rng(seed), count=(1, 1),
                                        min_size_vx=10)
        if (out_labels["labels"] >= 10).any():
            directions.append(_rises_along_x(out, out_labels["labels"] >= 10))
    assert len(directions) >= 6 and any(directions) and not all(directions)
    for seed in range(6):  # flip=False keeps the gradient's direction
        out, out_labels = augment.apply("copy_paste", image, labels, np.random.default_rng(seed), count=(1, 1),
                                        min_size_vx=10, flip=False)
        if (out_labels["labels"] >= 10).any():
            assert _rises_along_x(out, out_labels["labels"] >= 10)


def test_mixup_blends_with_the_other_image_or_a_flip_of_itself():
    image, labels = blobs()
    other = np.full(image.shape, 1.0, np.float32)
    out, out_labels = augment.apply("mixup", image, labels, np.random.default_rng(0), weight=0.25, other=other)
    np.testing.assert_allclose(out, 0.75 * image + 0.25, atol=1e-6)
    np.testing.assert_array_equal(out_labels["labels"], labels["labels"])
    out, _ = augment.apply("mixup", image, labels, np.random.default_rng(0), weight=0.5)
    candidates = [0.5 * image + 0.5 * np.flip(image, axes) for axes in ((1,), (2,), (1, 2))]
    assert any(np.allclose(out, c, atol=1e-6) for c in candidates)
    with pytest.raises(EmError, match="mixup.other must be a float image of shape"):
        augment.apply("mixup", image, labels, np.random.default_rng(0), other=other[:2])
