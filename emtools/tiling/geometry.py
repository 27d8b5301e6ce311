"""Chunk geometry: boxes, the split plan, coverage checks and blending weights (pure numpy).

All boxes are in *global voxel coordinates*: voxel (0,0,0) of the world grid is at 0 nm, so a
volume whose offset is ``offset_nm`` starts at ``offset_nm / voxel_size_nm``. Boxes are
half-open, z,y,x order.

One chunk along one axis (halo h, chunk size c)::

        read region (what the chunk file holds)
      |<-h->|<----------- c ----------->|<-h->|
      +-----+===========================+-----+
            | responsible region        |
            | (written back on merge)   |

Responsible regions tile the volume exactly; read regions are clipped to the volume, so edge
chunks have no halo on the outer side and the last chunk along an axis may be shorter.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Iterable, Sequence

import numpy as np

from emtools.errors import EmError


@dataclasses.dataclass(frozen=True, order=True)
class Box:
    """A half-open box ``[begin, end)`` in voxels, z,y,x order."""

    begin: tuple[int, int, int]
    end: tuple[int, int, int]

    def __post_init__(self):
        object.__setattr__(self, "begin", tuple(int(v) for v in self.begin))
        object.__setattr__(self, "end", tuple(int(v) for v in self.end))

    @classmethod
    def from_shape(cls, shape_zyx: Sequence[int], begin: Sequence[int] = (0, 0, 0)) -> "Box":
        return cls(tuple(begin), tuple(b + s for b, s in zip(begin, shape_zyx)))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(max(e - b, 0) for b, e in zip(self.begin, self.end))  # type: ignore[return-value]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def intersect(self, other: "Box") -> "Box | None":
        begin = tuple(max(a, b) for a, b in zip(self.begin, other.begin))
        end = tuple(min(a, b) for a, b in zip(self.end, other.end))
        if any(e <= b for b, e in zip(begin, end)):
            return None
        return Box(begin, end)

    def contains(self, other: "Box") -> bool:
        return all(sb <= ob and oe <= se for sb, se, ob, oe in zip(self.begin, self.end, other.begin, other.end))

    def shift(self, delta: Sequence[int]) -> "Box":
        return Box(tuple(b + d for b, d in zip(self.begin, delta)), tuple(e + d for e, d in zip(self.end, delta)))

    def local(self, inner: "Box") -> tuple[slice, slice, slice]:
        """Slices selecting ``inner`` from an array that covers ``self``."""
        return tuple(slice(ib - b, ie - b) for b, ib, ie in zip(self.begin, inner.begin, inner.end))  # type: ignore[return-value]

    def name(self) -> str:
        """``z0-z1_y0-y1_x0-x1``: how chunk files are named."""
        return "_".join(f"{b}-{e}" for b, e in zip(self.begin, self.end))

    def text(self) -> str:
        """``z0:z1,y0:y1,x0:x1``: how boxes are shown to people."""
        return ",".join(f"{b}:{e}" for b, e in zip(self.begin, self.end))


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One planned chunk: where its data comes from and what it is responsible for."""

    index_zyx: tuple[int, int, int]
    read: Box
    responsible: Box


# Metadata keys that describe one chunk: where its data lies, what it is responsible for, and
# the whole volume it was cut from (global voxels). Dropped again when chunks are merged.
CHUNK_ATTRS = (
    "read_begin_vx",
    "read_end_vx",
    "responsible_begin_vx",
    "responsible_end_vx",
    "volume_begin_vx",
    "volume_end_vx",
    "chunk_index_zyx",
)


def chunk_attrs(read: Box, responsible: Box, volume: Box, index_zyx: Sequence[int] | None = None) -> dict:
    """The :data:`CHUNK_ATTRS` of a chunk (chunk files and region specs carry the same)."""
    attrs = {
        "read_begin_vx": list(read.begin),
        "read_end_vx": list(read.end),
        "responsible_begin_vx": list(responsible.begin),
        "responsible_end_vx": list(responsible.end),
        "volume_begin_vx": list(volume.begin),
        "volume_end_vx": list(volume.end),
    }
    if index_zyx is not None:
        attrs["chunk_index_zyx"] = [int(i) for i in index_zyx]
    return attrs


def responsible_box(attrs: dict, data: Box) -> Box:
    """The box a chunk is responsible for (global voxels): its ``responsible_*_vx`` attributes, or
    its whole data box when it is no chunk."""
    if "responsible_begin_vx" in attrs and "responsible_end_vx" in attrs:
        box = Box(attrs["responsible_begin_vx"], attrs["responsible_end_vx"])
        if not data.contains(box):
            raise EmError(f"the responsible region {box.text()} lies outside the data {data.text()}")
        return box
    return data


def check_chunking(volume: Box, chunk_zyx: Sequence[int], halo_zyx: Sequence[int]) -> None:
    """One-line errors for chunk sizes and halos that cannot work on this volume."""
    shape = volume.shape
    for axis, c, h, s in zip("zyx", chunk_zyx, halo_zyx, shape):
        if c <= 0:
            raise EmError(f"chunk size must be positive, got {c} along {axis}")
        if h < 0:
            raise EmError(f"halo must be zero or positive, got {h} along {axis}")
        if c > s:
            raise EmError(f"chunk size {c} along {axis} is larger than the volume ({s} voxels)")
        if h >= s:
            raise EmError(f"halo {h} along {axis} is not smaller than the volume ({s} voxels)")


def plan_chunks(volume: Box, chunk_zyx: Sequence[int], halo_zyx: Sequence[int]) -> list[Chunk]:
    """Cut ``volume`` into chunks of ``chunk_zyx`` voxels plus ``halo_zyx`` on each side.

    Chunks come in z-major order (z, then y, then x), which lets slice-based readers decode each
    section about once. Edge chunks are shorter when the volume is not a multiple of the chunk.
    """
    check_chunking(volume, chunk_zyx, halo_zyx)
    starts = [range(b, e, c) for b, e, c in zip(volume.begin, volume.end, chunk_zyx)]
    chunks = []
    for index in itertools.product(*(range(len(s)) for s in starts)):
        begin = tuple(starts[a][index[a]] for a in range(3))
        end = tuple(min(b + c, ve) for b, c, ve in zip(begin, chunk_zyx, volume.end))
        responsible = Box(begin, end)
        read = Box(
            tuple(max(b - h, vb) for b, h, vb in zip(begin, halo_zyx, volume.begin)),
            tuple(min(e + h, ve) for e, h, ve in zip(end, halo_zyx, volume.end)),
        )
        chunks.append(Chunk(tuple(index), read, responsible))
    return chunks


def uncovered_boxes(volume: Box, regions: Sequence[Box]) -> list[Box]:
    """Disjoint boxes of ``volume`` that no region covers (empty when the regions cover it).

    Works on the grid of distinct region boundaries, so it costs O(regions * cells), never
    O(voxels). Boxes come in z-major order.
    """
    cuts = []
    for axis in range(3):
        values = {volume.begin[axis], volume.end[axis]}
        for r in regions:
            values.update(v for v in (r.begin[axis], r.end[axis]) if volume.begin[axis] <= v <= volume.end[axis])
        cuts.append(np.array(sorted(values), dtype=np.int64))
    covered = np.zeros([len(c) - 1 for c in cuts], dtype=bool)
    for r in regions:
        clipped = r.intersect(volume)
        if clipped is None:
            continue
        sl = tuple(
            slice(np.searchsorted(cuts[a], clipped.begin[a]), np.searchsorted(cuts[a], clipped.end[a]))
            for a in range(3)
        )
        covered[sl] = True
    return [
        Box(tuple(int(cuts[a][i[a]]) for a in range(3)), tuple(int(cuts[a][i[a] + 1]) for a in range(3)))
        for i in np.argwhere(~covered)
    ]


def first_overlap(regions: Sequence[Box]) -> tuple[Box, Box] | None:
    """Two regions that overlap, or None (sweep along z; fine for thousands of chunks)."""
    ordered = sorted(regions, key=lambda r: r.begin)
    active: list[Box] = []
    for r in ordered:
        active = [a for a in active if a.end[0] > r.begin[0]]
        for a in active:
            if a.intersect(r) is not None:
                return a, r
        active.append(r)
    return None


BLEND_MODES = ("linear", "gaussian")


def blend_profiles(read: Box, responsible: Box, mode: str) -> list[np.ndarray]:
    """The three 1D weight profiles (z, y, x) whose outer product is :func:`blend_weights`."""
    if mode not in BLEND_MODES:
        raise EmError(f"unknown blend mode {mode!r}; choose one of {', '.join(BLEND_MODES)}")
    profiles = []
    for axis in range(3):
        n = read.shape[axis]
        pos = np.arange(n, dtype=np.float64)
        if mode == "gaussian":
            sigma = max(n / 8.0, 1e-6)
            w = np.exp(-0.5 * ((pos - (n - 1) / 2.0) / sigma) ** 2)
        else:
            w = np.ones(n)
            low_halo = responsible.begin[axis] - read.begin[axis]
            high_halo = read.end[axis] - responsible.end[axis]
            if low_halo > 0:
                w = np.minimum(w, (pos + 0.5) / (2 * low_halo))
            if high_halo > 0:
                w = np.minimum(w, (n - pos - 0.5) / (2 * high_halo))
        profiles.append(w)
    return profiles


def blend_weights(
    read: Box, responsible: Box, mode: str, part: Box | None = None, floor: float = 1e-3, dtype=np.float32
) -> np.ndarray:
    """Weights for blending one chunk's values into its neighbours' (shape of ``part`` or ``read``).

    ``linear``: on each side with a halo ``h``, the weight ramps over the ``2h`` voxels that the
    two neighbouring read regions share, so that two neighbours' weights sum to 1 there (a
    partition of unity for chunks from :func:`plan_chunks`). Sides without a halo (the volume
    border) keep weight 1. ``gaussian``: a separable Gaussian centred on the read region with
    sigma = 1/8 of its size per axis, as nnU-Net and PyTorch Connectomics do. Weights never fall
    below ``floor`` so every voxel has a defined weighted mean. ``part`` (global voxels, inside
    ``read``) computes only that part, without the full array.
    """
    profiles = blend_profiles(read, responsible, mode)
    if part is not None:
        profiles = [p[sl] for p, sl in zip(profiles, read.local(part))]
    profiles = [p.astype(dtype) for p in profiles]
    weights = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    return np.maximum(weights, dtype(floor))


def neighbours(target: Box, candidates: Iterable[tuple[Box, object]]) -> list[tuple[Box, object]]:
    """The (box, payload) pairs whose box overlaps ``target``."""
    return [(box, item) for box, item in candidates if box.intersect(target) is not None]
