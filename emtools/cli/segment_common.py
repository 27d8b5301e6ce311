"""What em-watershed and em-agglomerate share: reading and checking maps and labels, chunk
regions, and the small text tables (merge history, edge tables, offsets, look-up tables).

Volumes go through :mod:`emtools.io`; the tables are plain tab-separated text written with
``io.atomic_text`` (so an interrupted run leaves no half table) and read here.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from emtools import io
from emtools.errors import EmError
from emtools.segment.flood import as_unit_float
from emtools.meta import Metadata
from emtools.tiling.geometry import Box

# Chunk attributes that em-tile split writes and em-tile merge reads.
CHUNK_ATTRS = ("read_begin_vx", "read_end_vx", "responsible_begin_vx", "responsible_end_vx",
               "volume_begin_vx", "volume_end_vx", "chunk_index_zyx")
NEAREST_OFFSETS = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]


@dataclasses.dataclass
class MapInput:
    """A boundary map (z,y,x) or nearest-neighbour affinities (3,z,y,x), checked, in [0, 1]."""

    spec: str
    kind: str  # "affinities" or "boundary"
    values: np.ndarray  # float32, or uint8 meaning /255
    meta: Metadata
    box: Box  # global voxel box


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


def check_label_dtype(spec: str, dtype) -> None:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        raise EmError(f"labels must be integers (uint64 or uint32), but {spec} is {dtype}")
    if dtype.kind not in "ui":
        raise EmError(f"labels must be integers (uint64 or uint32), but {spec} is {dtype}")


def read_labels(spec: str, voxel_size_nm=None) -> tuple[np.ndarray, Metadata, Box]:
    """Read a label volume (any unsigned or non-negative integer type)."""
    with io.open_volume(spec, voxel_size_nm=voxel_size_nm) as source:
        if len(source.shape) != 3:
            raise EmError(f"labels must be 3D (z, y, x), but {spec} has shape {_shape(source.shape)}")
        check_label_dtype(spec, source.dtype)
        labels = source.read()
        meta, box = source.meta, source.box
    if labels.dtype.kind == "i":
        if labels.size and labels.min() < 0:
            raise EmError(f"labels must not be negative ({spec})")
    return labels, meta, box


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


def output_for_threshold(template: str, threshold: float, several: bool) -> str:
    """``seg_{threshold}.h5:/seg`` -> ``seg_0.3.h5:/seg``; the placeholder is needed for several."""
    if "{threshold}" not in template:
        if several:
            raise EmError("several thresholds need {threshold} in the output, e.g. -o 'seg_{threshold}.h5'")
        return template
    return template.replace("{threshold}", f"{threshold:g}")


def parse_thresholds(text: str) -> list[float]:
    values = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            values.append(float(part))
        except ValueError:
            raise EmError(f"thresholds must be comma-separated numbers, got {text!r}") from None
    return values


# ----------------------------------------------------------------------------- text tables

def write_table(path: str, comments: list[str], header: list[str], columns: list[np.ndarray], formats: list[str]) -> None:
    """A tab-separated table: ``# comment`` lines, a header row, then one row per entry."""
    with io.atomic_text(path) as handle:
        for line in comments:
            handle.write(f"# {line}\n")
        handle.write("\t".join(header) + "\n")
        rows = zip(*[c.tolist() for c in columns])
        fmt = "\t".join(formats) + "\n"
        handle.writelines(fmt % row for row in rows)


def read_table(path: str, header: list[str]) -> tuple[dict, dict[str, list[str]]]:
    """(``key=value`` pairs from the comments, {column: [text]}); one-line errors when malformed."""
    if not os.path.isfile(path):
        raise EmError(f"no such file: {path}")
    info: dict = {}
    columns: dict[str, list[str]] = {name: [] for name in header}
    seen_header = False
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\n")
            if line.startswith("#"):
                for item in line[1:].split():
                    key, sep, value = item.partition("=")
                    if sep:
                        info[key] = value
                continue
            if not line.strip():
                continue
            fields = line.split("\t")
            if not seen_header:
                if fields[: len(header)] != header:
                    raise EmError(f"{path} is not a table with columns {' '.join(header)} (line {number})")
                seen_header = True
                continue
            if len(fields) < len(header):
                raise EmError(f"{path}: line {number} has {len(fields)} fields, expected {len(header)}")
            for name, value in zip(header, fields):
                columns[name].append(value)
    if not seen_header:
        raise EmError(f"{path} is empty or not a table with columns {' '.join(header)}")
    return info, columns


def as_uint64(values: list[str], path: str) -> np.ndarray:
    try:
        return np.array([int(v) for v in values], dtype=np.uint64)
    except (ValueError, OverflowError):
        raise EmError(f"{path}: bad fragment id in the table") from None


def as_float(values: list[str], path: str) -> np.ndarray:
    try:
        out = np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        raise EmError(f"{path}: bad number in the table") from None
    return out


def fmt_threshold(value: float) -> str:
    return "inf" if math.isinf(value) else repr(float(value))
