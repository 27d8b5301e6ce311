"""Per-segment meshes: one per segment, bounds equal to the segment's voxels in nm, legacy files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import shared_data
from emtools import io
from emtools.errors import EmError
from emtools.tiling.geometry import Box

zmesh = pytest.importorskip("zmesh", reason="zmesh (the view extra) is not installed")

from emtools.export.meshes import Mesh, decode_mesh, encode_mesh, mesh_segments, write_meshes  # noqa: E402


def _bbox_nm(labels, segment, voxel_zyx, offset_zyx):
    """(low, high) x,y,z nm of the voxel faces around ``segment``."""
    where = np.argwhere(labels == segment)
    low = offset_zyx + where.min(axis=0) * voxel_zyx
    high = offset_zyx + (where.max(axis=0) + 1) * voxel_zyx
    return low[::-1], high[::-1]


def test_a_box_touching_the_faces_is_closed_and_exact_on_anisotropic_voxels():
    labels = np.zeros((6, 7, 8), np.uint64)
    labels[0:3, 2:5, 1:8] = 5  # touches z=0 and the last x
    voxel, offset = np.array([40.0, 8.0, 4.0]), np.array([400.0, -16.0, 12.0])
    meshes = mesh_segments(labels, voxel, offset, [5], reduction_factor=0)
    mesh = meshes[5]
    low, high = _bbox_nm(labels, 5, voxel, offset)
    np.testing.assert_allclose(mesh.vertices.min(axis=0), low)
    np.testing.assert_allclose(mesh.vertices.max(axis=0), high)
    # closed: every edge belongs to exactly two triangles
    edges = np.sort(np.concatenate([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]], mesh.faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert set(counts.tolist()) == {2}


@pytest.fixture(scope="module")
def fib25_labels():
    bodies = shared_data("fib25", "train", "bodies.h5")
    with io.open_volume(f"{bodies}:bodies") as source:
        return source.read(Box((20, 40, 60), (52, 120, 140)))


@pytest.mark.parametrize("reduction", [0, 10])
def test_one_mesh_per_segment_within_its_voxels_on_fib25(fib25_labels, reduction):
    labels = fib25_labels
    voxel, offset = np.array([10.0, 10.0, 10.0]), np.array([200.0, 400.0, 600.0])
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    wanted = ids if reduction == 0 else ids[counts >= 50]  # all, down to single voxels, unsimplified
    assert len(wanted) >= 15
    error = 10.0
    meshes = mesh_segments(labels, voxel, offset, wanted, reduction_factor=reduction, max_error_nm=error)
    assert sorted(meshes) == sorted(int(i) for i in wanted)
    tolerance = 1e-3 if reduction == 0 else error + 1e-3
    for segment, mesh in meshes.items():
        low, high = _bbox_nm(labels, segment, voxel, offset)
        mesh_low, mesh_high = mesh.bounds_nm()
        assert np.all(mesh_low >= low - tolerance) and np.all(mesh_high <= high + tolerance), segment
        assert np.all(mesh_low <= low + tolerance) and np.all(mesh_high >= high - tolerance), segment
        assert mesh.faces.max() < len(mesh.vertices)
    if reduction:
        full = mesh_segments(labels, voxel, offset, wanted[:5], reduction_factor=0)
        assert sum(len(meshes[i].faces) for i in full) < sum(len(m.faces) for m in full.values()) / 3


def test_encode_decode_and_files(tmp_path):
    mesh = Mesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32), np.array([[0, 1, 2]], np.uint32))
    data = encode_mesh(mesh)
    assert len(data) == 4 + 36 + 12 and data[:4] == b"\x03\x00\x00\x00"
    back = decode_mesh(data)
    np.testing.assert_array_equal(back.vertices, mesh.vertices)
    np.testing.assert_array_equal(back.faces, mesh.faces)
    with pytest.raises(EmError, match="not a legacy"):
        decode_mesh(data[:-1])
    assert write_meshes(str(tmp_path / "mesh"), {12: mesh}) == 1
    assert json.loads((tmp_path / "mesh" / "info").read_text()) == {"@type": "neuroglancer_legacy_mesh"}
    manifest = json.loads((tmp_path / "mesh" / "12:0").read_text())
    assert manifest == {"fragments": ["12.frag"]}
    assert (tmp_path / "mesh" / "12.frag").read_bytes() == data


def test_bad_arguments():
    with pytest.raises(EmError, match=r"\(z, y, x\) labels"):
        mesh_segments(np.zeros((2, 2), np.uint64), (1, 1, 1), (0, 0, 0), [1])
    with pytest.raises(EmError, match="reduction factor"):
        mesh_segments(np.zeros((2, 2, 2), np.uint64), (1, 1, 1), (0, 0, 0), [1], reduction_factor=-1)
    assert mesh_segments(np.zeros((2, 2, 2), np.uint64), (1, 1, 1), (0, 0, 0), []) == {}
