"""Streaming split of a volume into chunk files, and merge of chunk files back into one volume.

Memory stays a small multiple of one chunk whatever the volume size: split reads one chunk's
region at a time; merge builds the output one responsible region (tile) at a time from the parts
of the neighbouring chunks that overlap it, and writes each tile before the next.
All file access goes through :mod:`emtools.io`; the geometry lives in :mod:`emtools.tiling.geometry`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from emtools import io
from emtools.errors import EmError
from emtools.meta import Metadata, provenance_record, require_same_grid
from emtools.tiling.geometry import (  # noqa: F401 (CHUNK_ATTRS: its users import it from here too)
    CHUNK_ATTRS,
    Box,
    Chunk,
    blend_weights,
    chunk_attrs,
    first_overlap,
    plan_chunks,
    uncovered_boxes,
)

log = logging.getLogger("emtools")



def volume_box(attrs: dict) -> Box | None:
    """The whole volume a chunk was cut from (its ``volume_*_vx`` attributes), or None."""
    if "volume_begin_vx" in attrs and "volume_end_vx" in attrs:
        return Box(attrs["volume_begin_vx"], attrs["volume_end_vx"])
    return None


def chunk_path(out_dir: str, prefix: str, chunk: Chunk, fmt: str) -> str:
    """Chunk files are named by the global bounding box of the data they hold."""
    return os.path.join(out_dir, f"{prefix}{chunk.read.name()}.{fmt}")


def require_distinct_names(chunks: Sequence[Chunk], halo_zyx: Sequence[int]) -> None:
    """One-line error when two chunks would hold the same data box (and so share a file name): a
    halo that reaches across whole chunks to both ends of a small volume."""
    seen: dict[Box, Chunk] = {}
    for chunk in chunks:
        other = seen.setdefault(chunk.read, chunk)
        if other is not chunk:
            raise EmError(f"the chunks responsible for {other.responsible.text()} and {chunk.responsible.text()} would both "
                          f"hold {chunk.read.text()} (the halo {','.join(map(str, halo_zyx))} reaches across whole "
                          "chunks of this volume): use a smaller --halo or a larger --chunk")


def chunk_metadata(source_meta: Metadata, chunk: Chunk, volume: Box) -> Metadata:
    voxel = source_meta.voxel_size_nm
    attrs = dict(source_meta.attrs)
    attrs.update(chunk_attrs(chunk.read, chunk.responsible, volume, chunk.index_zyx))
    offset = tuple(b * v for b, v in zip(chunk.read.begin, voxel))
    return source_meta.replace(offset_nm=offset, attrs=attrs)


def split_volume(
    source: io.VolumeSource,
    out_dir: str,
    chunk_zyx: Sequence[int],
    halo_zyx: Sequence[int],
    prefix: str = "chunk_",
    fmt: str = "h5",
    compression: str = "gzip",
    record: dict | None = None,
    skip_existing: bool = False,
    only: Callable[[Chunk], bool] | None = None,
) -> Iterator[str]:
    """Write one file per planned chunk; yield each path as soon as it is written (or found)."""
    volume = source.box
    chunks = plan_chunks(volume, chunk_zyx, halo_zyx)
    require_distinct_names(chunks, halo_zyx)
    if hasattr(source, "set_cache_sections"):
        # Keep one chunk row's sections decoded so a z-ordered sweep decodes each about once.
        source.set_cache_sections(max(c.read.shape[0] for c in chunks))
    origin = volume.begin
    for chunk in chunks:
        if only is not None and not only(chunk):
            continue
        path = chunk_path(out_dir, prefix, chunk, fmt)
        if skip_existing and os.path.exists(path) and _readable(path, fmt):
            log.debug("exists, skipped: %s", path)
            yield path
            continue
        data = source.read(chunk.read.shift(tuple(-o for o in origin)))
        meta = chunk_metadata(source.meta, chunk, volume)
        if record is not None:
            meta = meta.with_record(record)
        io.write_volume(_spec(path, fmt), data, meta, compression=compression)
        yield path


def _spec(path: str, fmt: str) -> str:
    return path  # an .h5 path alone writes the default dataset; a .tif path a stack


def _readable(path: str, fmt: str) -> bool:
    try:
        with io.open_volume(_spec(path, fmt)):
            return True
    except EmError:
        return False


@dataclasses.dataclass(frozen=True)
class ChunkInfo:
    """What merge needs to know about one chunk file (read from its header only)."""

    spec: str
    meta: Metadata
    dtype: np.dtype
    channels: int | None
    read: Box  # global voxel box of the data in the file
    responsible: Box
    volume: Box | None


def inspect_chunks(specs: Sequence[str], voxel_size_nm=None) -> list[ChunkInfo]:
    """Read every chunk's header; one-line errors for chunks that cannot be merged together."""
    if not specs:
        raise EmError("no chunk files given (pass paths, or - to read them from stdin)")
    infos = []
    for spec in specs:
        with io.open_volume(spec, voxel_size_nm=voxel_size_nm) as source:
            meta = source.meta
            read = source.box
            attrs = meta.attrs
            responsible = read
            if "responsible_begin_vx" in attrs and "responsible_end_vx" in attrs:
                responsible = Box(attrs["responsible_begin_vx"], attrs["responsible_end_vx"])
                if not read.contains(responsible):
                    raise EmError(f"{spec}: its responsible region {responsible.text()} is outside its data {read.text()}")
            volume = volume_box(attrs)
            channels = source.shape[0] if len(source.shape) == 4 else None
            infos.append(ChunkInfo(spec, meta, np.dtype(source.dtype), channels, read, responsible, volume))
    require_same_grid([(i.spec, i.meta) for i in infos])
    first = infos[0]
    for info in infos[1:]:
        if info.dtype != first.dtype:
            raise EmError(f"chunk data types differ: {first.dtype} in {first.spec} but {info.dtype} in {info.spec}")
        if info.channels != first.channels:
            raise EmError(f"chunk channel counts differ: {first.channels or 1} in {first.spec} but {info.channels or 1} in {info.spec}")
    return infos


def merged_volume_box(infos: Sequence[ChunkInfo]) -> Box:
    """The whole volume's box: as the chunks record it, else the bounding box of their regions."""
    recorded = {i.volume for i in infos if i.volume is not None}
    if len(recorded) > 1:
        raise EmError("chunks come from different volumes (their recorded volume regions differ)")
    if recorded and all(i.volume is not None for i in infos):
        return recorded.pop()
    regions = [i.responsible for i in infos]
    return Box(tuple(min(r.begin[a] for r in regions) for a in range(3)), tuple(max(r.end[a] for r in regions) for a in range(3)))


def resolve_blend(mode: str, dtype: np.dtype) -> str:
    """``auto`` means crop (no blending) for labels and integer data, linear weights for floats."""
    if mode == "auto":
        return "linear" if np.issubdtype(dtype, np.floating) else "none"
    if mode != "none" and not np.issubdtype(dtype, np.floating):
        raise EmError(f"--blend {mode} needs float chunks, but these are {dtype} (labels are cropped: use --blend none)")
    return mode


class _SourceCache:
    """A few chunk files kept open, so a tile's neighbours are not reopened for every read."""

    def __init__(self, size: int, cache_bytes: int | None = None):
        self.size = size
        self.cache_bytes = cache_bytes
        self._open: collections.OrderedDict[str, io.VolumeSource] = collections.OrderedDict()

    def get(self, spec: str) -> io.VolumeSource:
        if spec in self._open:
            self._open.move_to_end(spec)
            return self._open[spec]
        source = io.open_volume(spec, cache_bytes=self.cache_bytes)
        self._open[spec] = source
        while len(self._open) > self.size:
            self._open.popitem(last=False)[1].close()
        return source

    def close(self) -> None:
        for source in self._open.values():
            source.close()
        self._open.clear()


class _Neighbours:
    """Which chunks' data overlap a box: a coarse grid index, so lookups stay O(1) per chunk."""

    def __init__(self, infos: Sequence[ChunkInfo]):
        self.cell = tuple(max(i.read.shape[a] for i in infos) for a in range(3))
        self.grid: dict[tuple[int, int, int], list[int]] = collections.defaultdict(list)
        for index, info in enumerate(infos):
            for key in self._cells(info.read):
                self.grid[key].append(index)
        self.infos = infos

    def _cells(self, box: Box) -> Iterable[tuple[int, int, int]]:
        ranges = [range(box.begin[a] // self.cell[a], (box.end[a] - 1) // self.cell[a] + 1) for a in range(3)]
        for z in ranges[0]:
            for y in ranges[1]:
                for x in ranges[2]:
                    yield (z, y, x)

    def overlapping(self, box: Box) -> list[int]:
        found = set()
        for key in self._cells(box):
            found.update(i for i in self.grid.get(key, ()) if self.infos[i].read.intersect(box) is not None)
        return sorted(found)


def merge_chunks(
    infos: Sequence[ChunkInfo],
    writer_factory: Callable[[Box, np.dtype, int | None, Metadata], io.VolumeWriter],
    blend: str = "auto",
    fill: float | None = None,
    record: dict | None = None,
    progress: Callable[[Sequence], Iterable] = lambda items: items,
) -> str:
    """Assemble chunks into one volume through ``writer_factory(volume_box, dtype, channels, meta)``.

    Labels (``blend='none'``) take each chunk's responsible region; float maps are blended with
    ``linear`` or ``gaussian`` weights over the overlaps. Regions no chunk covers are an error
    unless ``fill`` gives their value. Returns the path written.
    """
    first = infos[0]
    mode = resolve_blend(blend, first.dtype)
    volume = merged_volume_box(infos)
    clash = first_overlap([i.responsible for i in infos])
    if clash is not None:
        raise EmError(
            f"chunks claim the same voxels: responsible regions {clash[0].text()} and {clash[1].text()} overlap"
        )
    # Output tiles: every responsible region, plus the boxes no chunk is responsible for. They
    # partition the volume, so each output voxel is written exactly once.
    unclaimed = uncovered_boxes(volume, [i.responsible for i in infos])
    holes = unclaimed if mode == "none" else uncovered_boxes(volume, [i.read for i in infos])
    if holes and fill is None:
        missing = sum(h.size for h in holes)
        raise EmError(
            f"chunks leave holes: {missing} voxels of {volume.text()} are covered by no chunk "
            f"(first gap {holes[0].text()}); pass the missing chunks, or --fill VALUE"
        )
    meta = _merged_metadata(first.meta, volume)
    if record is not None:
        meta = meta.with_record(record)
    tiles = [(i.responsible.intersect(volume), i) for i in infos] + [(box, None) for box in unclaimed]
    tiles = sorted((t for t in tiles if t[0] is not None), key=lambda t: t[0].begin)  # z-major for TIFF
    # Blending reads parts of up to 27 neighbours per tile: keep them open (reopening costs
    # milliseconds per read) but without HDF5's chunk cache, which would cost MiBs per file.
    sources = _SourceCache(1, None) if mode == "none" else _SourceCache(27, cache_bytes=0)
    neighbours = _Neighbours(infos)
    channel_shape = () if first.channels is None else (first.channels,)
    try:
        with writer_factory(volume, first.dtype, first.channels, meta) as writer:
            for tile, info in progress(tiles):
                if mode != "none":
                    data = _blend_tile(tile, neighbours, sources, mode, channel_shape, first.dtype, fill)
                elif info is None:
                    data = np.full(channel_shape + tile.shape, fill, dtype=first.dtype)
                else:
                    data = sources.get(info.spec).read(tile.shift(tuple(-b for b in info.read.begin)))
                writer.write(tile.shift(tuple(-b for b in volume.begin)), data)
    finally:
        sources.close()
    return writer.path


def _blend_tile(tile, neighbours, sources, mode, channel_shape, dtype, fill) -> np.ndarray:
    # float64 accumulation: a voxel seen by one chunk comes back bit-exact ((w*v)/w == v).
    # Weights are computed for the overlapping part only, so memory stays a few tile-sized arrays.
    acc = np.zeros(channel_shape + tile.shape, dtype=np.float64)
    weight_sum = np.zeros(tile.shape, dtype=np.float64)
    for index in neighbours.overlapping(tile):
        info = neighbours.infos[index]
        part = info.read.intersect(tile)
        weights = blend_weights(info.read, info.responsible, mode, part=part, dtype=np.float64)
        values = sources.get(info.spec).read(part.shift(tuple(-b for b in info.read.begin)))
        in_tile = tile.local(part)
        region = acc[(Ellipsis,) + in_tile]
        region += weights * values
        weight_sum[in_tile] += weights
        del values, region
    covered = weight_sum > 0
    np.divide(acc, weight_sum, out=acc, where=covered)
    if fill is not None and not covered.all():
        acc[..., ~covered] = fill
    return acc.astype(dtype)


def _merged_metadata(chunk_meta: Metadata, volume: Box) -> Metadata:
    attrs = {k: v for k, v in chunk_meta.attrs.items() if k not in CHUNK_ATTRS}
    offset = tuple(b * v for b, v in zip(volume.begin, chunk_meta.voxel_size_nm))
    return chunk_meta.replace(offset_nm=offset, attrs=attrs)


def convert_volume(source: io.VolumeSource, writer: io.VolumeWriter, slab_sections: int = 16) -> None:
    """Copy a volume into ``writer`` a slab of z sections at a time (format conversion)."""
    depth = source.shape_zyx[0]
    for z in range(0, depth, slab_sections):
        box = Box((z, 0, 0), (min(z + slab_sections, depth),) + source.shape_zyx[1:])
        writer.write(box, source.read(box))


def split_record(params: dict, spec: str, meta: Metadata) -> dict:
    return provenance_record("em-tile split", params, [(spec, meta)])
