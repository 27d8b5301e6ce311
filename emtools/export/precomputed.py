"""Neuroglancer precomputed volumes: the ``info`` JSON, chunk names and the raw chunk encoding.

The format (neuroglancer's ``src/datasource/precomputed/volume.md``), as written here:

- ``LAYER/info``: ``{"@type": "neuroglancer_multiscale_volume", "type": "image"|"segmentation",
  "data_type", "num_channels", "scales": [...]}``; every triple in it is x,y,z (ours are z,y,x:
  this module is the one place that turns them around).
- one folder per scale, named by its key (``4_4_40``: the voxel size in nm, x_y_z); in it one file
  per chunk, ``x0-x1_y0-y1_z0-z1`` in that scale's voxels. The chunk grid starts at the scale's
  ``voxel_offset`` (the volume's offset / voxel size); edge chunks are cut at the volume's end.
- ``raw`` encoding: the chunk's values, little-endian, as an ``[x, y, z, channel]`` Fortran-order
  array, i.e. exactly the bytes of our C-order ``(c, z, y, x)`` array. No header.
- ``compressed_segmentation`` (segmentations, uint32/uint64): see
  :mod:`emtools.export.compressed_segmentation`.

Pure functions over numpy arrays and dicts, plus :func:`write_scale` which writes a scale's chunk
files into a folder (the caller owns the folder and its atomic rename).
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np

from emtools.errors import EmError

__all__ = [
    "ENCODINGS", "IMAGE_DTYPES", "SEGMENT_DTYPES", "chunk_boxes", "chunk_name", "encode_chunk",
    "image_dtype", "scale_entry", "scale_key", "segment_dtype", "volume_info", "write_scale",
]

# What neuroglancer reads from precomputed volumes (data_type names are numpy's).
IMAGE_DTYPES = ("uint8", "uint16", "uint32", "uint64", "float32")
SEGMENT_DTYPES = ("uint32", "uint64")
ENCODINGS = ("raw", "compressed_segmentation")
COMPRESSED_BLOCK_XYZ = (8, 8, 8)


def image_dtype(dtype) -> np.dtype:
    """The precomputed data type an image of ``dtype`` is stored as (bool -> uint8; signed
    integers, float16 and float64 -> float32, which neuroglancer shows with the same shaders)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    if dtype.name in IMAGE_DTYPES:
        return dtype
    if np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating):
        return np.dtype(np.float32)
    raise EmError(f"cannot show {dtype} values as an image; need integers or floats")


def segment_dtype(values_dtype, min_id: int, max_id: int, stored: str, spec: str) -> np.dtype:
    """The stored segment-id type, or a one-line error for ids it cannot hold.

    Segment ids are non-negative integers; ``stored`` is ``uint64`` (any id) or ``uint32``
    (ids up to 4294967295, half the bytes). Floating-point labels are refused.
    """
    dtype = np.dtype(values_dtype)
    if stored not in SEGMENT_DTYPES:
        raise EmError(f"segment ids are stored as {' or '.join(SEGMENT_DTYPES)}, not {stored}")
    if dtype == np.bool_:
        dtype = np.dtype(np.uint8)
    if not np.issubdtype(dtype, np.integer):
        raise EmError(f"{spec} holds {dtype} values; a segmentation needs integer ids")
    if min_id < 0:
        raise EmError(f"{spec} holds the negative id {min_id}; segment ids must be >= 0")
    limit = int(np.iinfo(np.dtype(stored)).max)
    if max_id > limit:
        raise EmError(
            f"segment id {max_id} in {spec} is too large for {stored} segmentation chunks "
            f"(at most {limit}); use --seg-dtype uint64"
        )
    return np.dtype(stored)


def _xyz(zyx: Sequence) -> list:
    return [_plain(v) for v in reversed(list(zyx))]


def _plain(value):
    value = float(value) if not isinstance(value, (int, np.integer)) else int(value)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def scale_key(voxel_size_nm: Sequence[float]) -> str:
    """``4_4_40`` for a (40, 4, 4) nm voxel (x_y_z, as neuroglancer's own tools name scales)."""
    return "_".join(f"{float(v):g}" for v in reversed(list(voxel_size_nm)))


def scale_entry(
    voxel_size_nm: Sequence[float],
    begin_zyx: Sequence[int],
    shape_zyx: Sequence[int],
    chunk_zyx: Sequence[int],
    encoding: str = "raw",
) -> dict:
    """One element of ``info["scales"]`` (z,y,x arguments; written x,y,z)."""
    if encoding not in ENCODINGS:
        raise EmError(f"unknown precomputed encoding {encoding!r}; choose {', '.join(ENCODINGS)}")
    chunk = [min(int(c), int(s)) for c, s in zip(chunk_zyx, shape_zyx)]
    entry = {
        "key": scale_key(voxel_size_nm),
        "size": _xyz(shape_zyx),
        "resolution": _xyz(voxel_size_nm),
        "voxel_offset": _xyz(begin_zyx),
        "chunk_sizes": [_xyz(chunk)],
        "encoding": encoding,
    }
    if encoding == "compressed_segmentation":
        entry["compressed_segmentation_block_size"] = list(COMPRESSED_BLOCK_XYZ)
    return entry


def volume_info(kind: str, dtype, num_channels: int, scales: list[dict], mesh: str | None = None,
                skeletons: str | None = None, segment_properties: str | None = None) -> dict:
    """The layer's ``info`` object: ``kind`` is ``image`` or ``segmentation``."""
    if kind not in ("image", "segmentation"):
        raise EmError(f"a precomputed volume is an image or a segmentation, not {kind!r}")
    if kind == "segmentation" and num_channels != 1:
        raise EmError("a segmentation has one channel")
    info = {
        "@type": "neuroglancer_multiscale_volume",
        "type": kind,
        "data_type": np.dtype(dtype).name,
        "num_channels": int(num_channels),
        "scales": scales,
    }
    for key, value in (("mesh", mesh), ("skeletons", skeletons), ("segment_properties", segment_properties)):
        if value is not None:
            info[key] = value
    return info


def chunk_boxes(begin_zyx: Sequence[int], shape_zyx: Sequence[int], chunk_zyx: Sequence[int]) -> Iterator[tuple]:
    """(local slices z,y,x, global begin z,y,x, global end z,y,x) of each chunk, z-major order."""
    counts = [-(-int(s) // int(c)) for s, c in zip(shape_zyx, chunk_zyx)]
    for gz in range(counts[0]):
        for gy in range(counts[1]):
            for gx in range(counts[2]):
                lo = [g * int(c) for g, c in zip((gz, gy, gx), chunk_zyx)]
                hi = [min(low + int(c), int(s)) for low, c, s in zip(lo, chunk_zyx, shape_zyx)]
                local = tuple(slice(a, b) for a, b in zip(lo, hi))
                yield local, tuple(int(b) + a for b, a in zip(begin_zyx, lo)), tuple(int(b) + e for b, e in zip(begin_zyx, hi))


def chunk_name(begin_zyx: Sequence[int], end_zyx: Sequence[int]) -> str:
    """``x0-x1_y0-y1_z0-z1``: the chunk's file name (global voxels of its scale)."""
    return "_".join(f"{int(b)}-{int(e)}" for b, e in zip(reversed(list(begin_zyx)), reversed(list(end_zyx))))


def encode_chunk(chunk: np.ndarray, dtype, encoding: str = "raw") -> bytes:
    """The bytes of one chunk file; ``chunk`` is (z, y, x) or (c, z, y, x)."""
    little = np.dtype(dtype).newbyteorder("<")
    if encoding == "raw":
        return np.ascontiguousarray(chunk, dtype=little).tobytes()
    if encoding == "compressed_segmentation":
        from emtools.export.compressed_segmentation import encode

        return encode(np.asarray(chunk, dtype=little), COMPRESSED_BLOCK_XYZ[::-1])
    raise EmError(f"unknown precomputed encoding {encoding!r}; choose {', '.join(ENCODINGS)}")


def write_scale(folder: str, array: np.ndarray, begin_zyx: Sequence[int], chunk_zyx: Sequence[int],
                dtype, encoding: str = "raw", check: callable = None) -> int:
    """Write every chunk of ``array`` (global voxel ``begin_zyx``) into ``folder``; returns the count.

    ``check`` (if given) is called before each chunk, e.g. to stop on Ctrl-C.
    """
    os.makedirs(folder, exist_ok=True)
    written = 0
    for local, begin, end in chunk_boxes(begin_zyx, array.shape[-3:], chunk_zyx):
        if check is not None:
            check()
        data = encode_chunk(array[(Ellipsis,) + local], dtype, encoding)
        with open(os.path.join(folder, chunk_name(begin, end)), "wb") as handle:
            handle.write(data)
        written += 1
    return written
