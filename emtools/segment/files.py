"""What the path-taking segmentation steps share: reading maps and labels (checked, one-line
errors), the regions of a chunk, and the names and metadata of their outputs.

Volumes are read through :mod:`emtools.io`; everything here returns numpy arrays and
:class:`~emtools.meta.Metadata`, so the steps in :mod:`emtools.segment.jobs` and
:mod:`emtools.segment.chunked` stay short. A chunk file from ``em-tile split`` holds its data
box (with halo) and says in its attributes which part of it the chunk is responsible for::

    data box (read_begin_vx .. read_end_vx)  +------------------+
                                             |  halo            |
    responsible_begin_vx .. _end_vx          |   +----------+   |   outputs cover only this
                                             |   |          |   |
                                             |   +----------+   |
                                             +------------------+
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from emtools import io
from emtools.errors import EmError
from emtools.meta import Metadata
from emtools.segment.agglomerate import check_thresholds
from emtools.segment.flood import as_unit_float
from emtools.segment.structures import check_label_dtype, check_labels
from emtools.tiling.geometry import Box

__all__ = [
    "NEAREST_OFFSETS", "MapInput", "as_thresholds", "check_voxel_size", "chunk_regions", "crop_and_renumber",
    "cropped_metadata", "output_for_threshold", "parse_thresholds", "read_distance", "read_labels", "read_map",
    "threshold_outputs",
]

# The first three affinity channels must link each voxel to these neighbours (z, y, x).
NEAREST_OFFSETS = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]


@dataclasses.dataclass
class MapInput:
    """A boundary map (z,y,x) or nearest-neighbour affinities (3,z,y,x), checked, in [0, 1]."""

    spec: str
    kind: str  # "affinities" or "boundary"
    values: np.ndarray  # float32, or uint8 meaning /255
    meta: Metadata
    box: Box  # global voxel box

    @property
    def region_graph_input(self) -> dict:
        """``{"affinities": values}`` or ``{"boundary": values}``: keyword arguments of
        :func:`emtools.segment.region_graph.region_graph`."""
        return {"affinities" if self.kind == "affinities" else "boundary": self.values}


def read_map(spec: str, voxel_size_nm=None, invert: bool = False, kind: str = "auto") -> MapInput:
    """Read affinities or a boundary map; one-line errors for what cannot be used.

    ``kind``: ``auto`` (4D = affinities, 3D = boundary map), ``affinities`` or ``boundary``.
    Affinities need 3 channels, or more with ``affinity_offsets`` in the metadata whose first
    three are the nearest neighbours (-1,0,0), (0,-1,0), (0,0,-1). ``invert``: the map is high
    inside cells (e.g. a cell-interior probability), use 1 - map.
    """
    with io.open_volume(spec, voxel_size_nm=voxel_size_nm) as source:
        shape, meta, box, dtype = source.shape, source.meta, source.box, np.dtype(source.dtype)
        is_4d = len(shape) == 4
        if kind == "auto":
            kind = "affinities" if is_4d else "boundary"
        if kind == "affinities":
            if not is_4d:
                raise EmError(f"affinities must be 4D (3, z, y, x), but {spec} is 3D {_shape(shape)}")
            _check_channels(spec, shape[0], meta)
        elif is_4d:
            if shape[0] != 1:
                raise EmError(f"a boundary map must be 3D (z, y, x), but {spec} has {shape[0]} channels")
        if dtype != np.uint8 and dtype.kind != "f":
            raise EmError(f"{spec}: {kind} must be float32, float16 or uint8 (0..255), got {dtype}")
        values = source.read()
    if kind == "affinities":
        values = values[:3]
    elif values.ndim == 4:
        values = values[0]
    name = "affinities" if kind == "affinities" else "boundary map"
    try:
        if values.dtype != np.uint8:
            values = as_unit_float(values, name)
    except EmError as exc:
        raise EmError(f"{exc} ({spec})") from None
    if invert:
        if kind == "affinities":
            raise EmError("--invert is for maps that are high inside cells, not for affinities")
        values = (np.float32(1.0) - as_unit_float(values, name)).astype(np.float32)
    return MapInput(spec, kind, np.ascontiguousarray(values), meta, box)


def _check_channels(spec: str, channels: int, meta: Metadata) -> None:
    offsets = meta.attrs.get("affinity_offsets")
    if offsets is None:
        if channels != 3:
            raise EmError(
                f"{spec} has {channels} channels; nearest-neighbour affinities have 3 (z, y, x), "
                "or more with affinity_offsets in the metadata"
            )
        return
    offsets = [list(map(int, o)) for o in offsets]
    if len(offsets) != channels:
        raise EmError(f"{spec} has {channels} channels but its affinity_offsets lists {len(offsets)}")
    if offsets[:3] != NEAREST_OFFSETS:
        raise EmError(
            f"{spec}: the first three affinity_offsets must be the nearest neighbours "
            f"{NEAREST_OFFSETS}, got {offsets[:3]}"
        )


def _shape(shape) -> str:
    return "x".join(str(s) for s in shape)


def read_labels(spec: str, voxel_size_nm=None) -> tuple[np.ndarray, Metadata, Box]:
    """Read a label volume (any unsigned or non-negative integer type): (labels, meta, box).

    What counts as labels is :func:`emtools.segment.structures.check_labels`' one rule."""
    with io.open_volume(spec, voxel_size_nm=voxel_size_nm) as source:
        if len(source.shape) != 3:
            raise EmError(f"labels must be 3D (z, y, x), but {spec} has shape {_shape(source.shape)}")
        check_label_dtype(source.dtype, spec)  # from the header: a float map fails before reading
        labels = source.read()
        meta, box = source.meta, source.box
    return check_labels(labels, spec), meta, box


def read_distance(spec: str, voxel_size_nm=None) -> tuple[np.ndarray, Metadata, Box]:
    """Read a signed distance map (z, y, x) for BCD instances: (values, meta, box)."""
    with io.open_volume(spec, voxel_size_nm=voxel_size_nm) as source:
        if len(source.shape) != 3:
            raise EmError(f"the distance map must be 3D (z, y, x), but {spec} has {len(source.shape)} dimensions")
        return source.read(), source.meta, source.box


def check_voxel_size(voxel_size_nm) -> None:
    """One-line error for a voxel size override (z, y, x nm) with a zero or negative value."""
    if voxel_size_nm is not None and any(v <= 0 for v in voxel_size_nm):
        raise EmError(f"--voxel-size {','.join(str(v) for v in voxel_size_nm)} has zero or negative values")


def chunk_regions(meta: Metadata, box: Box) -> tuple[Box, Box]:
    """(data box, responsible box) in global voxels; a file without chunk attributes is its own."""
    attrs = meta.attrs
    if "responsible_begin_vx" in attrs and "responsible_end_vx" in attrs:
        responsible = Box(attrs["responsible_begin_vx"], attrs["responsible_end_vx"])
        if not box.contains(responsible):
            raise EmError(f"the responsible region {responsible.text()} lies outside the data {box.text()}")
        return box, responsible
    return box, box


def cropped_metadata(meta: Metadata, responsible: Box, extra: dict) -> Metadata:
    """Metadata of an output that covers only the responsible region (a chunk without halo)."""
    attrs = {k: meta.attrs[k] for k in ("volume_begin_vx", "volume_end_vx", "chunk_index_zyx") if k in meta.attrs}
    if "responsible_begin_vx" in meta.attrs:
        attrs.update(read_begin_vx=list(responsible.begin), read_end_vx=list(responsible.end),
                     responsible_begin_vx=list(responsible.begin), responsible_end_vx=list(responsible.end))
    attrs.update(extra)
    offset = tuple(b * v for b, v in zip(responsible.begin, meta.voxel_size_nm))
    return Metadata(axes="zyx", offset_nm=offset, voxel_size_nm=meta.voxel_size_nm,
                    provenance=meta.provenance, attrs=attrs)


def crop_and_renumber(labels: np.ndarray, local: tuple[slice, ...]) -> np.ndarray:
    """``labels[local]`` renumbered 1..n (0 stays 0), as uint64: a chunk's fragments without halo."""
    import fastremap

    cropped = np.ascontiguousarray(labels[local])
    cropped, _ = fastremap.renumber(cropped, preserve_zero=True, in_place=True)
    return cropped.astype(np.uint64, copy=False)


def parse_thresholds(text: str) -> list[float]:
    """``"0.1,0.3"`` -> [0.1, 0.3] (unchecked); one-line error for words that are not numbers."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            values.append(float(part))
        except ValueError:
            raise EmError(f"thresholds must be comma-separated numbers, got {text!r}") from None
    return values


def as_thresholds(thresholds: str | float | Sequence[float]) -> list[float]:
    """Thresholds from their text (``"0.3,0.5"``), one number or a sequence: checked, increasing."""
    if isinstance(thresholds, str):
        thresholds = parse_thresholds(thresholds)
    elif isinstance(thresholds, (int, float)):
        thresholds = [thresholds]
    return check_thresholds(thresholds)


def output_for_threshold(template: str, threshold: float, several: bool) -> str:
    """``seg_{threshold}.h5:/seg`` -> ``seg_0.3.h5:/seg``; the placeholder is needed for several."""
    if "{threshold}" not in template:
        if several:
            raise EmError("several thresholds need {threshold} in the output, e.g. -o 'seg_{threshold}.h5'")
        return template
    return template.replace("{threshold}", f"{threshold:g}")


def threshold_outputs(template: str, thresholds: Sequence[float], compression: str) -> list[str]:
    """One checked output spec per threshold (before any work): folders, formats, distinct files."""
    io.parse_compression(compression)
    outputs = [output_for_threshold(template, t, len(thresholds) > 1) for t in thresholds]
    for spec in outputs:
        io.check_output_path(io.output_file(spec))
        io.output_format(spec)
    if len({io.output_file(o) for o in outputs}) != len(outputs):
        raise EmError("the outputs for different thresholds name the same file; put {threshold} in the file name")
    return outputs
