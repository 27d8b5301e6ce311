"""Training volumes: held-out regions, allowed crop positions, label components, data checks."""

import itertools
import logging

import numpy as np
import pytest
from scipy import ndimage

from emtools import io
from emtools.errors import EmError
from emtools.meta import Metadata
from emtools.tiling.geometry import Box
from emtools.train import data


def volume(shape=(6, 20, 20), labels=None, val_box=None, mask=None):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    labels = np.ones(shape, np.uint64) if labels is None else labels
    return data.Volume("v", image, labels, mask, None, None, 0.9, (40.0, 4.0, 4.0), val_box)


@pytest.mark.parametrize("text,box", [
    ("last 2 z", Box((4, 0, 0), (6, 20, 20))),
    ("first 5 y", Box((0, 0, 0), (6, 5, 20))),
    ("last 3 x", Box((0, 0, 17), (6, 20, 20))),
    ("1:3,:,5:", Box((1, 0, 5), (3, 20, 20))),
    (":,-4:,:", Box((0, 16, 0), (6, 20, 20))),
    ("all", Box((0, 0, 0), (6, 20, 20))),
])
def test_region_box(text, box):
    assert data.region_box(text, (6, 20, 20), "val_region") == box


@pytest.mark.parametrize("text", ["last 7 z", "0:9,:,:", "3:3,:,:"])
def test_region_box_outside_the_volume(text):
    with pytest.raises(EmError, match="val_region"):
        data.region_box(text, (6, 20, 20), "val_region")


@pytest.mark.parametrize("seed", range(6))
def test_crop_starts_are_exactly_the_crops_outside_the_held_out_box(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(3, 9, 3))
    patch = tuple(int(rng.integers(1, n + 1)) for n in shape)
    lo = [int(rng.integers(0, n)) for n in shape]
    val = Box(lo, [int(rng.integers(b + 1, n + 1)) for b, n in zip(lo, shape)])
    boxes = data.crop_start_boxes(shape, patch, val)
    allowed = {s for b in boxes for s in itertools.product(*(range(x, y) for x, y in zip(b.begin, b.end)))}
    expected = {s for s in itertools.product(*(range(n - p + 1) for n, p in zip(shape, patch)))
                if Box.from_shape(patch, s).intersect(val) is None}
    assert allowed == expected
    assert sum(b.size for b in boxes) == len(expected)  # disjoint


def test_crop_larger_than_the_volume_has_no_start():
    assert data.crop_start_boxes((4, 10, 10), (5, 8, 8), None) == []


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_label_components_match_scipy(mode):
    rng = np.random.default_rng(1)
    binary = (ndimage.gaussian_filter(rng.random((4, 30, 30)), 2) > 0.5).astype(np.uint8) * 255
    ours = data.label_components(binary, mode)
    if mode == "2d":
        ref = np.zeros(binary.shape, np.int64)
        offset = 0
        for z in range(binary.shape[0]):
            section, n = ndimage.label(binary[z] != 0)
            ref[z] = np.where(section > 0, section + offset, 0)
            offset += n
    else:
        ref, _ = ndimage.label(binary != 0)
    assert ours.dtype == np.uint64 and ((ours == 0) == (ref == 0)).all()
    pairs = set(zip(ours.ravel().tolist(), ref.ravel().tolist()))
    assert len(pairs) == len(np.unique(ours)) == len(np.unique(ref))  # the same partition


def test_sparse_foreground_turns_on_rejection_sampling(caplog):
    labels = np.zeros((6, 20, 20), np.uint64)
    labels[1:3, 2:6, 2:6] = 1  # 32 of 2400 voxels
    with caplog.at_level(logging.WARNING, logger="emtools"):
        chosen = data.check_training_data([volume(labels=labels)], (2, 8, 8), ["foreground"], None)
    assert chosen == pytest.approx(32 / 2400 / 2)
    assert "sparse foreground" in caplog.text
    # Dense foreground, or a target that is not foreground-like: no rejection sampling.
    assert data.check_training_data([volume()], (2, 8, 8), ["foreground"], None) == 0.0
    assert data.check_training_data([volume(labels=labels)], (2, 8, 8), ["affinity"], None) == 0.0
    # An explicit fraction wins, silently.
    assert data.check_training_data([volume(labels=labels)], (2, 8, 8), ["foreground"], 0.2) == 0.2


def test_no_foreground_in_the_training_region_is_an_error():
    labels = np.zeros((6, 20, 20), np.uint64)
    labels[5, :4, :4] = 3  # only inside the held-out region
    v = volume(labels=labels, val_box=Box((4, 0, 0), (6, 20, 20)))
    with pytest.raises(EmError, match="no foreground"):
        data.check_training_data([v], (2, 8, 8), ["foreground"], None)


def test_crop_must_fit_beside_the_held_out_region():
    with pytest.raises(EmError, match="larger than"):
        data.check_training_data([volume()], (8, 8, 8), ["affinity"], None)
    v = volume(val_box=Box((2, 0, 0), (4, 20, 20)))
    with pytest.raises(EmError, match="lies outside its val_region"):
        data.check_training_data([v], (3, 8, 8), ["affinity"], None)
    only_val = volume(val_box=Box((0, 0, 0), (6, 20, 20)))
    with pytest.raises(EmError, match="nothing to train on"):
        data.check_training_data([only_val], (2, 8, 8), ["affinity"], None)


def _entry(**kw):
    base = {"image": None, "labels": None, "mask": None, "probabilities": None, "pseudo_head": None,
            "confidence": 0.9, "voxel_size_nm": None, "val_region": None, "label_components": "none", "weight": 1.0}
    return {**base, **kw}


def test_read_volume_checks_shapes_voxel_sizes_and_dtypes(tmp_path):
    meta = Metadata(voxel_size_nm=(40, 4, 4))
    io.write_volume(f"{tmp_path}/im.h5:/im", np.zeros((4, 16, 16), np.uint8), meta)
    io.write_volume(f"{tmp_path}/gt.h5:/gt", np.ones((4, 16, 16), np.uint32), meta)
    io.write_volume(f"{tmp_path}/small.h5:/gt", np.ones((4, 16, 12), np.uint32), meta)
    io.write_volume(f"{tmp_path}/fine.h5:/gt", np.ones((4, 16, 16), np.uint32), Metadata(voxel_size_nm=(40, 2, 2)))
    io.write_volume(f"{tmp_path}/float.h5:/gt", np.ones((4, 16, 16), np.float32), meta)
    v = data.read_volume(_entry(image=f"{tmp_path}/im.h5:/im", labels=f"{tmp_path}/gt.h5:/gt", val_region="last 1 z"), 0)
    assert v.labels.dtype == np.uint64 and v.voxel_size_nm == (40, 4, 4) and v.val_box == Box((3, 0, 0), (4, 16, 16))
    with pytest.raises(EmError, match="does not match"):
        data.read_volume(_entry(image=f"{tmp_path}/im.h5:/im", labels=f"{tmp_path}/small.h5:/gt"), 0)
    with pytest.raises(EmError, match="voxel sizes differ"):
        data.read_volume(_entry(image=f"{tmp_path}/im.h5:/im", labels=f"{tmp_path}/fine.h5:/gt"), 0)
    with pytest.raises(EmError, match="labels must be integers"):
        data.read_volume(_entry(image=f"{tmp_path}/im.h5:/im", labels=f"{tmp_path}/float.h5:/gt"), 0)


def test_volumes_are_averaged_down_to_the_model_voxel_size(tmp_path, caplog):
    """data.model_voxel_size_nm: 5 nm volumes at 10,10,10 nm and 10 nm ones as they are; the image
    averaged (and rounded back to uint8), labels by block majority, the held-out region grown to
    every coarse voxel it touches, a remainder dropped; a ratio that is not whole is one error."""
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (9, 20, 22), dtype=np.uint8)
    labels = np.zeros((9, 20, 22), np.uint32)
    labels[:, :, 11:] = 5
    io.write_volume(f"{tmp_path}/im.h5:/im", image, Metadata(voxel_size_nm=(5, 5, 5)))
    io.write_volume(f"{tmp_path}/gt.h5:/gt", labels, Metadata(voxel_size_nm=(5, 5, 5)))
    io.write_volume(f"{tmp_path}/c.h5:/im", image[:4, :10, :11], Metadata(voxel_size_nm=(10, 10, 10)))
    io.write_volume(f"{tmp_path}/cgt.h5:/gt", labels[:4, :10, :11], Metadata(voxel_size_nm=(10, 10, 10)))
    entries = [_entry(image=f"{tmp_path}/im.h5:/im", labels=f"{tmp_path}/gt.h5:/gt", val_region="5:9,:,:"),
               _entry(image=f"{tmp_path}/c.h5:/im", labels=f"{tmp_path}/cgt.h5:/gt")]
    with caplog.at_level(logging.INFO, logger="emtools"):
        fine, coarse = data.read_volumes(entries, (10, 10, 10))
    assert "averaged 2x2x2 down to 10,10,10 nm (4x10x11 voxels)" in caplog.text
    assert fine.voxel_size_nm == coarse.voxel_size_nm == (10, 10, 10) and fine.shape_zyx == (4, 10, 11)
    expected = np.rint(image[:8].reshape(4, 2, 10, 2, 11, 2).astype(np.float64).mean((1, 3, 5)))
    assert fine.image.dtype == np.uint8 and np.array_equal(fine.image, expected.astype(np.uint8))
    assert fine.labels.dtype == np.uint64 and set(np.unique(fine.labels[:, :, :5])) == {0}
    assert set(np.unique(fine.labels[:, :, 6:])) == {5}  # x 11 sits in coarse voxel 5 with x 10: a tie, 0 wins
    assert fine.val_box == Box((2, 0, 0), (4, 10, 11))  # z 5:9 touches coarse z 2 and 3
    assert coarse.image is not None and np.array_equal(coarse.image, image[:4, :10, :11])
    with pytest.raises(EmError, match="has voxel size 5,5,5 nm: the model's 12,10,10 nm"):
        data.read_volumes(entries[:1], (12, 10, 10))
