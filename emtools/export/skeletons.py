"""Per-segment skeletons (TEASAR, by ``kimimaro``) and neuroglancer's precomputed skeleton files.

Files, in the segmentation's ``skeletons/`` folder (neuroglancer's ``skeletons.md``, unsharded):

- ``info``: ``{"@type": "neuroglancer_skeletons", "transform": identity 3x4,
  "vertex_attributes": [{"id": "radius", "data_type": "float32", "num_components": 1}]}``:
  vertices are stored in world nm, so the transform to neuroglancer's model space (nm) is the
  identity, and the radius is in nm;
- ``<id>``: uint32le vertex count, uint32le edge count, float32le x,y,z per vertex, uint32le
  vertex-index pairs per edge, then float32le radius per vertex.

A vertex sits at the centre of a voxel of its segment: ``offset + (i + 0.5) * voxel_size`` nm.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from typing import Callable, Iterable, Sequence

import numpy as np

from emtools.errors import EmError

__all__ = ["SKELETON_INFO", "Skeleton", "decode_skeleton", "encode_skeleton", "skeletonize_segments", "write_skeletons"]

SKELETON_INFO = {
    "@type": "neuroglancer_skeletons",
    "transform": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],
    "vertex_attributes": [{"id": "radius", "data_type": "float32", "num_components": 1}],
}


@dataclasses.dataclass(frozen=True)
class Skeleton:
    """``vertices`` (n, 3) float32 x,y,z nm; ``edges`` (m, 2) uint32; ``radius`` (n,) float32 nm."""

    vertices: np.ndarray
    edges: np.ndarray
    radius: np.ndarray

    def cable_length_nm(self) -> float:
        """The summed length of all edges, nm."""
        if len(self.edges) == 0:
            return 0.0
        v = self.vertices.astype(np.float64)
        return float(np.linalg.norm(v[self.edges[:, 0]] - v[self.edges[:, 1]], axis=1).sum())


def skeletonize_segments(
    labels: np.ndarray,
    voxel_size_nm: Sequence[float],
    offset_nm: Sequence[float],
    ids: Iterable[int],
    scale: float = 1.5,
    const_nm: float = 300.0,
    check: Callable[[], None] | None = None,
) -> dict[int, Skeleton]:
    """TEASAR skeletons of the segments ``ids`` of ``labels`` (z, y, x), in world nm.

    ``scale`` and ``const_nm`` set the rolling-ball invalidation radius ``scale * DBF + const``
    (kimimaro's TEASAR parameters): smaller values keep more, shorter branches.
    """
    import kimimaro

    if labels.ndim != 3:
        raise EmError(f"skeletons need (z, y, x) labels, got shape {labels.shape}")
    if scale < 0 or const_nm < 0:
        raise EmError(f"the skeleton scale and constant must be >= 0, got {scale:g} and {const_nm:g}")
    wanted = [int(i) for i in ids]
    if not wanted:
        return {}
    if check is not None:
        check()
    params = {"scale": float(scale), "const": float(const_nm), "pdrf_scale": 100000, "pdrf_exponent": 4,
              "soma_acceptance_threshold": 3500, "soma_detection_threshold": 750,
              "soma_invalidation_const": 300, "soma_invalidation_scale": 2}
    anisotropy = tuple(float(v) for v in reversed(list(voxel_size_nm)))
    skeletons = kimimaro.skeletonize(
        np.asarray(labels).T, teasar_params=params, anisotropy=anisotropy, object_ids=wanted,
        dust_threshold=0, progress=False, fix_branching=True, fix_borders=True, parallel=1,
    )
    # kimimaro puts voxel i at i * size; neuroglancer draws its centre at (i + 0.5) * size
    shift = np.asarray(list(reversed(list(offset_nm))), dtype=np.float64) + 0.5 * np.asarray(anisotropy)
    out: dict[int, Skeleton] = {}
    for segment in wanted:
        skeleton = skeletons.get(segment)
        if skeleton is None or len(skeleton.vertices) == 0:
            continue
        vertices = (np.asarray(skeleton.vertices, dtype=np.float64) + shift).astype(np.float32)
        edges = np.asarray(skeleton.edges, dtype=np.uint32).reshape(-1, 2)
        radius = np.asarray(skeleton.radius, dtype=np.float32).reshape(-1)
        out[segment] = Skeleton(vertices, edges, radius)
    return out


def encode_skeleton(skeleton: Skeleton) -> bytes:
    """The bytes of one skeleton file (with the radius attribute of :data:`SKELETON_INFO`)."""
    vertices = np.ascontiguousarray(skeleton.vertices, dtype="<f4").reshape(-1, 3)
    edges = np.ascontiguousarray(skeleton.edges, dtype="<u4").reshape(-1, 2)
    radius = np.ascontiguousarray(skeleton.radius, dtype="<f4").reshape(-1)
    if radius.shape[0] != vertices.shape[0]:
        raise EmError(f"a skeleton has {vertices.shape[0]} vertices but {radius.shape[0]} radii")
    return struct.pack("<II", vertices.shape[0], edges.shape[0]) + vertices.tobytes() + edges.tobytes() + radius.tobytes()


def decode_skeleton(data: bytes) -> Skeleton:
    """The inverse of :func:`encode_skeleton`."""
    nv, ne = struct.unpack_from("<II", data, 0)
    if len(data) != 8 + 12 * nv + 8 * ne + 4 * nv:
        raise EmError("not a neuroglancer skeleton with a radius attribute (its size does not match its counts)")
    vertices = np.frombuffer(data, dtype="<f4", count=3 * nv, offset=8).reshape(-1, 3)
    edges = np.frombuffer(data, dtype="<u4", count=2 * ne, offset=8 + 12 * nv).reshape(-1, 2)
    radius = np.frombuffer(data, dtype="<f4", count=nv, offset=8 + 12 * nv + 8 * ne)
    return Skeleton(vertices, edges, radius)


def write_skeletons(folder: str, skeletons: dict[int, Skeleton]) -> int:
    """Write ``info`` and one file per skeleton into ``folder``; returns the count."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "info"), "w") as handle:
        json.dump(SKELETON_INFO, handle, sort_keys=True)
    for segment, skeleton in sorted(skeletons.items()):
        with open(os.path.join(folder, str(segment)), "wb") as handle:
            handle.write(encode_skeleton(skeleton))
    return len(skeletons)
