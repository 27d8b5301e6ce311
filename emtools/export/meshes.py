"""Per-segment surface meshes (marching cubes + simplification by ``zmesh``) and their files.

Meshes are written in neuroglancer's *legacy single-resolution* precomputed mesh format: the
simplest one neuroglancer reads (the multi-resolution format needs Draco-encoded octree
fragments), and what a crop-sized volume needs. In the segmentation's ``mesh/`` folder:

- ``info``: ``{"@type": "neuroglancer_legacy_mesh"}``;
- ``<id>:0``: the manifest, ``{"fragments": ["<id>.frag"]}``;
- ``<id>.frag``: uint32le vertex count, then float32le x,y,z per vertex (world nm), then
  uint32le triangles (three vertex indices each) to the end of the file.

Coordinates: voxel ``(z, y, x)`` of the volume spans ``offset + [i, i+1) * voxel_size`` nm in
every layer neuroglancer shows, so a segment's unsimplified surface lies exactly on the faces
of its voxels; simplification moves vertices by at most ``max_error_nm``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from typing import Callable, Iterable, Sequence

import numpy as np

from emtools.errors import EmError

__all__ = ["Mesh", "decode_mesh", "encode_mesh", "mesh_segments", "write_meshes", "MESH_INFO"]

MESH_INFO = {"@type": "neuroglancer_legacy_mesh"}


@dataclasses.dataclass(frozen=True)
class Mesh:
    """A triangle mesh: ``vertices`` (n, 3) float32 x,y,z in nm, ``faces`` (m, 3) uint32."""

    vertices: np.ndarray
    faces: np.ndarray

    def bounds_nm(self) -> tuple[np.ndarray, np.ndarray]:
        """(lowest, highest) vertex, x,y,z nm."""
        return self.vertices.min(axis=0), self.vertices.max(axis=0)


def mesh_segments(
    labels: np.ndarray,
    voxel_size_nm: Sequence[float],
    offset_nm: Sequence[float],
    ids: Iterable[int],
    reduction_factor: int = 10,
    max_error_nm: float | None = None,
    check: Callable[[], None] | None = None,
) -> dict[int, Mesh]:
    """Meshes of the segments ``ids`` of ``labels`` (z, y, x), in world nm.

    ``reduction_factor``: simplify to about 1/N of the marching-cubes triangles (0: none);
    ``max_error_nm``: how far simplification may move a vertex (default: the finest voxel side).
    A segment whose mesh comes out empty is left out.
    """
    import zmesh

    if labels.ndim != 3:
        raise EmError(f"meshes need (z, y, x) labels, got shape {labels.shape}")
    if reduction_factor < 0:
        raise EmError(f"the mesh reduction factor must be >= 0, got {reduction_factor}")
    if max_error_nm is None:
        max_error_nm = float(min(voxel_size_nm))
    if max_error_nm < 0:
        raise EmError(f"the mesh error must be >= 0 nm, got {max_error_nm:g}")
    wanted = [int(i) for i in ids]
    if not wanted:
        return {}
    voxel_xyz = np.asarray(list(reversed(list(voxel_size_nm))), dtype=np.float64)
    mesher = zmesh.Mesher(tuple(voxel_xyz))
    # A margin of background closes the surfaces of segments that touch the volume's faces (zmesh's
    # own close=True shifts them by a voxel); x,y,z order is the Fortran-order view of our z,y,x.
    mesher.mesh(np.pad(np.asarray(labels), 1).T)
    shift = np.asarray(list(reversed(list(offset_nm))), dtype=np.float64) - voxel_xyz
    out: dict[int, Mesh] = {}
    for segment in wanted:
        if check is not None:
            check()
        # voxel_centered: voxel i's centre at (i + 0.5) * size, as neuroglancer draws voxels
        mesh = mesher.get(segment, normals=False, reduction_factor=int(reduction_factor),
                          max_error=float(max_error_nm), voxel_centered=True)
        mesher.erase(segment)
        if mesh is None or len(mesh.faces) == 0:
            continue
        vertices = (np.asarray(mesh.vertices, dtype=np.float64) + shift).astype(np.float32)
        out[segment] = Mesh(vertices, np.asarray(mesh.faces, dtype=np.uint32).reshape(-1, 3))
    mesher.clear()
    return out


def encode_mesh(mesh: Mesh) -> bytes:
    """The bytes of one legacy fragment file."""
    vertices = np.ascontiguousarray(mesh.vertices, dtype="<f4").reshape(-1, 3)
    faces = np.ascontiguousarray(mesh.faces, dtype="<u4").reshape(-1, 3)
    return struct.pack("<I", vertices.shape[0]) + vertices.tobytes() + faces.tobytes()


def decode_mesh(data: bytes) -> Mesh:
    """The inverse of :func:`encode_mesh` (for checks and library users)."""
    (count,) = struct.unpack_from("<I", data, 0)
    end = 4 + 12 * count
    if len(data) < end or (len(data) - end) % 12:
        raise EmError("not a legacy neuroglancer mesh fragment (its size does not match its vertex count)")
    vertices = np.frombuffer(data, dtype="<f4", count=3 * count, offset=4).reshape(-1, 3)
    faces = np.frombuffer(data, dtype="<u4", offset=end).reshape(-1, 3)
    return Mesh(vertices, faces)


def write_meshes(folder: str, meshes: dict[int, Mesh]) -> int:
    """Write ``info``, one manifest and one fragment per mesh into ``folder``; returns the count."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "info"), "w") as handle:
        json.dump(MESH_INFO, handle, sort_keys=True)
    for segment, mesh in sorted(meshes.items()):
        fragment = f"{segment}.frag"
        with open(os.path.join(folder, fragment), "wb") as handle:
            handle.write(encode_mesh(mesh))
        with open(os.path.join(folder, f"{segment}:0"), "w") as handle:
            json.dump({"fragments": [fragment]}, handle)
    return len(meshes)
