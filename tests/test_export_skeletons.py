"""Skeletons: cable length of hand-made tubes of known length, vertices on the segment's voxel
centres in world nm, and the precomputed skeleton files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emtools.errors import EmError

pytest.importorskip("kimimaro", reason="kimimaro (the view extra) is not installed")

from emtools.export.skeletons import (  # noqa: E402
    SKELETON_INFO,
    Skeleton,
    decode_skeleton,
    encode_skeleton,
    skeletonize_segments,
    write_skeletons,
)


def tube(shape_zyx, polyline_vx, radius_nm, voxel_nm):
    """Voxels within ``radius_nm`` of a polyline (z,y,x voxel points): a round-ended tube."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape_zyx], indexing="ij"), -1) * voxel_nm
    inside = np.zeros(shape_zyx, bool)
    for a, b in zip(polyline_vx[:-1], polyline_vx[1:]):
        a, b = np.asarray(a) * voxel_nm, np.asarray(b) * voxel_nm
        t = np.clip(((grid - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
        inside |= np.linalg.norm(grid - (a + t[..., None] * (b - a)), axis=-1) <= radius_nm
    return inside


def _length(polyline_vx, voxel_nm):
    points = np.asarray(polyline_vx, float) * voxel_nm
    return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())


def _on_voxel_centres(skeleton, labels, segment, voxel_nm, offset_nm):
    index = (skeleton.vertices[:, ::-1] - offset_nm) / voxel_nm - 0.5  # z,y,x voxel indices
    assert np.allclose(index, np.round(index), atol=1e-3)
    index = np.round(index).astype(int)
    assert np.all(labels[tuple(index.T)] == segment)


def test_straight_tube():
    voxel, offset = np.array([10.0, 10.0, 10.0]), np.array([1000.0, -50.0, 30.0])
    # 1000 nm between the centres of its round ends, radius 40 nm: 1080 nm from tip to tip
    polyline = [(10, 10, 10), (10, 10, 110)]
    labels = tube((21, 21, 121), polyline, 40.0, voxel).astype(np.uint64) * 9
    skeleton = skeletonize_segments(labels, voxel, offset, [9])[9]
    assert abs(skeleton.cable_length_nm() - 1080.0) <= 20.0  # two voxels
    _on_voxel_centres(skeleton, labels, 9, voxel, offset)
    assert 30 <= np.median(skeleton.radius) <= 50  # 4 voxels of 10 nm
    # along x: from one tip to the other
    assert skeleton.vertices[:, 0].min() - 30 <= 75 and skeleton.vertices[:, 0].max() - 30 >= 1135 - 10


@pytest.mark.parametrize("voxel", [(10.0, 10.0, 10.0), (40.0, 8.0, 8.0)])
def test_l_shaped_tube(voxel):
    voxel = np.array(voxel)
    # arms of 800 and 600 nm through a corner, radius 40 nm, round ends: 1480 nm from end to end
    corner_x = 10 + 800 / voxel[2]
    polyline = [(10 * 10 / voxel[0], 10, 10), (10 * 10 / voxel[0], 10, corner_x), (10 * 10 / voxel[0], 10 + 600 / voxel[1], corner_x)]
    shape = (int(20 * 10 / voxel[0]) + 1, int(polyline[2][1]) + 12, int(corner_x) + 12)
    labels = tube(shape, polyline, 40.0, voxel).astype(np.uint64) * 4
    expected = _length(polyline, voxel) + 2 * 40.0
    assert expected == pytest.approx(1480.0)
    skeleton = skeletonize_segments(labels, voxel, (0, 0, 0), [4])[4]
    assert abs(skeleton.cable_length_nm() - expected) <= 0.03 * expected
    _on_voxel_centres(skeleton, labels, 4, voxel, np.zeros(3))
    # one connected path: n vertices, n - 1 edges, two ends
    degree = np.bincount(skeleton.edges.ravel(), minlength=len(skeleton.vertices))
    assert len(skeleton.edges) == len(skeleton.vertices) - 1 and (degree == 1).sum() == 2


def test_only_the_asked_segments_and_none_for_empty():
    labels = np.zeros((5, 30, 30), np.uint64)
    labels[1:4, 5:25, 5:8] = 1
    labels[1:4, 5:25, 20:23] = 2
    skeletons = skeletonize_segments(labels, (10, 10, 10), (0, 0, 0), [2])
    assert list(skeletons) == [2]
    assert skeletonize_segments(labels, (10, 10, 10), (0, 0, 0), []) == {}


def test_encode_decode_and_files(tmp_path):
    skeleton = Skeleton(np.array([[0, 0, 0], [3, 4, 0]], np.float32), np.array([[0, 1]], np.uint32),
                        np.array([1.5, 2.5], np.float32))
    assert skeleton.cable_length_nm() == 5.0
    data = encode_skeleton(skeleton)
    assert len(data) == 8 + 24 + 8 + 8 and data[:8] == b"\x02\x00\x00\x00\x01\x00\x00\x00"
    back = decode_skeleton(data)
    for a, b in zip((back.vertices, back.edges, back.radius), (skeleton.vertices, skeleton.edges, skeleton.radius)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(EmError, match="does not match"):
        decode_skeleton(data + b"\0")
    assert write_skeletons(str(tmp_path / "sk"), {7: skeleton}) == 1
    assert json.loads((tmp_path / "sk" / "info").read_text()) == SKELETON_INFO
    assert (tmp_path / "sk" / "7").read_bytes() == data


def test_bad_arguments():
    with pytest.raises(EmError, match=r"\(z, y, x\) labels"):
        skeletonize_segments(np.zeros((3, 3), np.uint64), (1, 1, 1), (0, 0, 0), [1])
    with pytest.raises(EmError, match=">= 0"):
        skeletonize_segments(np.zeros((3, 3, 3), np.uint64), (1, 1, 1), (0, 0, 0), [1], scale=-1)
