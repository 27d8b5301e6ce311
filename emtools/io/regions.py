"""Regions: reading part of a volume as if it were a chunk file, and writing one region of an
existing zarr array from one of many workers at once (``--into``).

Reading. ``SPEC[z0:z1,y0:y1,x0:x1]`` (array indices, half-open) with an optional halo ``+H`` or
``+HZ,HY,HX`` is a chunk without a chunk file: ``io.open_volume`` reads the region plus the
halo (clipped at the array's border) lazily from the volume and describes it as ``em-tile
split`` chunk files do (``responsible_*_vx`` = the region, ``volume_*_vx`` = the whole array),
so every tool that takes chunks takes region specs; the done marker of exactly that region
adds its attributes (e.g. ``fragment_count``) and provenance record::

    raw.zarr/raw[64:128,0:256,0:256]+8,32,32      read [56:136,0:288,0:288], responsible for the region

Writing into one array from many workers. The array exists (``em-tile create``) with chunks
that the workers' regions are made of, so no two workers ever write the same chunk file. A
worker's region write (:class:`RegionWriter`, reached through ``io.VolumeWriter`` and
``io.write_volume`` with an ``into:`` spec, see :func:`into_spec`) goes::

    1. claim   .emtools/claims/<chunk>   one file per store chunk of the region, created with
                                         link() (atomic, fails if it exists): a chunk claimed
                                         for another region means overlapping regions (refused;
                                         this worker's new claims are taken back); a chunk
                                         claimed for the same region is a rerun (allowed)
    2. chunks  c/...                     each chunk file written to a temporary file, renamed
    3. done    .emtools/done/<region>.json   last, atomically: provenance and attributes

A killed worker leaves whole chunk files and no done marker; ``--skip-existing`` skips exactly
the regions whose marker exists, and a rerun rewrites the same chunks with the same bytes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
from typing import Sequence

import numpy as np

from emtools import interrupt
from emtools.errors import EmError
from emtools.io.encoding import jsonable
from emtools.io.specs import (
    INTO_PREFIX,
    check_zarr_output,
    fmt_shape,
    region_spec,
    short_reason,
    split_into,
    split_region,
    split_zarr_spec,
    zarr_array_dir,
)
from emtools.io.zarrs import (
    MARKERS,
    ZarrArrayInfo,
    atomic_store,
    locked,
    remove_stale_temporaries,
    temporary_path,
    write_json_atomic,
    zarr_module,
)
from emtools.meta import Metadata, require_same_grid
from emtools.tiling.geometry import CHUNK_ATTRS, Box, responsible_box

log = logging.getLogger("emtools")

# Attributes of one region's data that do not describe the whole array (kept in its done marker only).
PER_REGION_ATTRS = set(CHUNK_ATTRS) | {"fragment_count"}


# ----------------------------------------------------------------------------- markers

def done_marker(array_dir: str, region: Box) -> str:
    """The file whose presence says that ``region`` (array indices) of the array is complete."""
    return os.path.join(array_dir, MARKERS, "done", f"{region.name()}.json")


def read_marker(array_dir: str, region: Box) -> dict | None:
    path = done_marker(array_dir, region)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise EmError(f"cannot read the done marker {path}: {short_reason(exc)}") from exc


def regions_done(array_dir: str) -> int:
    """How many regions of the array are complete (their done markers)."""
    folder = os.path.join(array_dir, MARKERS, "done")
    if not os.path.isdir(folder):
        return 0
    return sum(1 for name in os.listdir(folder) if name.endswith(".json") and not name.startswith("."))


# ----------------------------------------------------------------------------- writing one region

def into_spec(array_spec: str, region: Box) -> str:
    """The output spec that writes ``region`` (global voxels) into the existing zarr array
    ``array_spec``: ``into:store.zarr/array[z0:z1,y0:y1,x0:x1]`` (array indices).

    Checks before any work: the array exists and is writable, the region lies inside it and is
    made of whole store chunks (else the error names the aligned region around it).
    """
    if split_zarr_spec(array_spec) is None or split_region(array_spec)[1] is not None:
        raise EmError(f"--into needs a zarr array (store.zarr/array), got {array_spec}")
    check_zarr_output(array_spec, into=True)
    info = ZarrArrayInfo(zarr_array_dir(array_spec))
    local = region.shift(tuple(-o for o in info.meta.origin_vx))
    check_region(info, local, region)
    return INTO_PREFIX + region_spec(info.folder, local)


def into_chunk(array_spec: str, chunk_spec: str, voxel_size_nm=None) -> str:
    """:func:`into_spec` for the region a chunk (a chunk file or a region spec) is responsible for;
    reads the chunk's header only. What ``--into ARRAY`` makes of a tool's INPUT."""
    from emtools.io.readers import open_volume

    with open_volume(chunk_spec, voxel_size_nm=voxel_size_nm) as source:
        region = responsible_box(source.meta.attrs, source.box)
    return into_spec(array_spec, region)


def check_region(info: ZarrArrayInfo, local: Box, region: Box | None = None) -> None:
    """One-line errors for a region (array indices) outside the array or not made of whole chunks."""
    shape = info.shape[-3:]
    chunks = info.chunks[-3:]
    where = f" (global voxels {region.text()})" if region is not None and region != local else ""
    if not Box.from_shape(shape).contains(local):
        raise EmError(f"region {local.text()}{where} is outside {info.folder} (shape {fmt_shape(info.shape)}, "
                      f"offset {','.join(f'{v:g}' for v in info.meta.offset_nm)} nm)")
    aligned = Box(tuple(b - b % c for b, c in zip(local.begin, chunks)),
                  tuple(min(-(-e // c) * c, s) for e, c, s in zip(local.end, chunks, shape)))
    if aligned != local:
        raise EmError(f"region {local.text()}{where} does not align with the chunks {fmt_shape(chunks)} of "
                      f"{info.folder}; the nearest aligned region is {aligned.text()} (split with --chunk "
                      f"{','.join(map(str, chunks))}, or create the array with the split's --chunk)")


class RegionWriter:
    """Write one region into an existing zarr array; the ``into`` side of ``io.VolumeWriter``.

    ``shape``/``dtype`` are the data's; its metadata's offset says where it goes (it must be the
    spec's region). The data is kept until the block ends (a region is one chunk of work), then
    claimed, written chunk by chunk and marked done. ``path`` is the region's spec.
    """

    def __init__(self, spec: str, shape: Sequence[int], dtype, meta: Metadata):
        text = split_into(spec)
        if text is None:
            raise EmError(f"internal: {spec} is not an into: spec")
        base, local, _ = split_region(text)
        if local is None:
            raise EmError(f"internal: {spec} names no region")
        self.path = text
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(np.uint8) if np.dtype(dtype) == np.bool_ else np.dtype(dtype)
        self.meta = meta
        self.info = ZarrArrayInfo(zarr_array_dir(base))
        self.region = local
        info = self.info
        if len(self.shape) != len(info.shape) or (len(self.shape) == 4 and self.shape[0] != info.shape[0]):
            raise EmError(f"{describe(info)} does not fit data of shape {fmt_shape(self.shape)}: "
                          f"{'channels' if len(info.shape) == 4 else 'no channel axis'} expected "
                          f"({info.meta.axes}, not {meta.axes})")
        if self.dtype != info.dtype:
            raise EmError(f"{describe(info)} holds {info.dtype_text} but the data is {self.dtype}; "
                          f"create the array with --dtype {self.dtype}")
        require_same_grid([(info.folder, info.meta), ("the data", meta)])
        data_box = Box.from_shape(self.shape[-3:], meta.origin_vx).shift(tuple(-o for o in info.meta.origin_vx))
        if data_box != local:
            raise EmError(f"the data covers {data_box.text()} of {info.folder} (array indices), not the region "
                          f"{local.text()} it was to write")
        check_region(info, local)
        self._data: np.ndarray | None = None
        self._claims: list[str] = []

    def __enter__(self):
        self._claim()
        return self

    def write(self, box: Box, data: np.ndarray) -> None:
        """Write ``data`` at ``box`` (voxels of the region, z,y,x)."""
        expected = (self.shape[:1] if len(self.shape) == 4 else ()) + box.shape
        if tuple(data.shape) != expected:
            raise EmError(f"internal: data of shape {fmt_shape(data.shape)} for region {box.text()}")
        interrupt.check()
        data = np.asarray(data)
        if self._data is None and box == Box.from_shape(self.shape[-3:]):
            self._data = data.astype(self.dtype, copy=False)  # the whole region at once: no copy
            return
        if self._data is None:
            self._data = np.zeros(self.shape, dtype=self.dtype)
        sl = tuple(slice(b, e) for b, e in zip(box.begin, box.end))
        self._data[((slice(None),) + sl) if len(self.shape) == 4 else sl] = data

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            return False  # the claims stay: a rerun of this region may take them
        try:
            interrupt.check()
            self._store()
        except OSError as error:
            raise EmError(f"cannot write into {self.info.folder}: {short_reason(error)}") from error
        return False

    # -- steps
    def _claim(self) -> None:
        folder = os.path.join(self.info.folder, MARKERS, "claims")
        mine = self.region.text()
        try:
            os.makedirs(folder, exist_ok=True)
            for key in chunk_keys(self.region, self.info.chunks[-3:]):
                path = os.path.join(folder, key)
                if _create_exclusive(path, mine):
                    self._claims.append(path)
                    continue
                with open(path) as handle:
                    owner = handle.read().strip()
                if owner != mine:
                    self._release()
                    raise EmError(f"region {mine} of {self.info.folder} overlaps the region {owner} that another "
                                  f"worker claimed (store chunk {key.replace('.', ',')}); regions must not overlap")
        except OSError as error:
            self._release()
            raise EmError(f"cannot write into {self.info.folder}: {short_reason(error)}") from error

    def _release(self) -> None:
        for path in self._claims:
            with contextlib.suppress(OSError):
                os.remove(path)
        self._claims = []

    def _store(self) -> None:
        data = self._data if self._data is not None else np.zeros(self.shape, dtype=self.dtype)
        zarr = zarr_module()
        root, path = split_zarr_spec(self.info.folder)  # type: ignore[misc]
        array = zarr.open_array(store=atomic_store(root), path=path, mode="r+")
        keys = [tuple(int(i) for i in key.split(".")) for key in chunk_keys(self.region, self.info.chunks[-3:])]
        lead = (0,) if len(self.shape) == 4 else ()
        for folder in sorted({os.path.dirname(array.metadata.encode_chunk_key(lead + k)) for k in keys}):
            remove_stale_temporaries(os.path.join(self.info.folder, folder))  # a killed run's half-written chunks
        sl = tuple(slice(b, e) for b, e in zip(self.region.begin, self.region.end))
        array[((slice(None),) + sl) if len(self.shape) == 4 else sl] = data
        interrupt.check()
        record = self.meta.provenance[-1] if self.meta.provenance else None
        attrs = jsonable({k: v for k, v in self.meta.attrs.items() if k not in CHUNK_ATTRS})
        self._merge_array_attrs(attrs)
        marker = {"region": [list(self.region.begin), list(self.region.end)], "attrs": attrs,
                  "provenance": jsonable(record)}
        os.makedirs(os.path.dirname(done_marker(self.info.folder, self.region)), exist_ok=True)
        write_json_atomic(done_marker(self.info.folder, self.region), marker)

    def _merge_array_attrs(self, attrs: dict) -> None:
        """Attributes that describe the whole array (a head's value range, affinity offsets) go on
        the array when it lacks them, so region views with a halo see them too."""
        shared = {k: v for k, v in attrs.items() if k not in PER_REGION_ATTRS}
        if not shared or all(k in self.info.attrs for k in shared):
            return
        meta_file = os.path.join(self.info.folder, "zarr.json" if self.info.zarr_format == 3 else ".zattrs")
        with locked(self.info.folder):
            with open(meta_file) as handle:
                node = json.load(handle)
            current = node.get("attributes", {}) if self.info.zarr_format == 3 else node
            missing = {k: v for k, v in shared.items() if k not in current}
            if not missing:
                return
            current.update(missing)
            if self.info.zarr_format == 3:
                node["attributes"] = current
            write_json_atomic(meta_file, node)


def chunk_keys(region: Box, chunks_zyx: Sequence[int]) -> list[str]:
    """``z.y.x`` indices of the store chunks that make up ``region`` (array indices)."""
    ranges = [range(b // c, -(-e // c)) for b, e, c in zip(region.begin, region.end, chunks_zyx)]
    return [".".join(map(str, index)) for index in itertools.product(*ranges)]


def _create_exclusive(path: str, text: str) -> bool:
    """Create ``path`` holding ``text`` whole, only if it does not exist (link is atomic)."""
    tmp = temporary_path(path)
    with open(tmp, "w") as handle:
        handle.write(text + "\n")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.remove(tmp)


def describe(info: ZarrArrayInfo) -> str:
    return f"{info.folder} ({fmt_shape(info.shape)} {info.dtype_text})"


def region_is_done(spec: str) -> bool:
    """Whether an ``into:`` spec's region (or a region spec of a zarr array) is complete."""
    text = split_into(spec) or spec
    base, local, _ = split_region(text)
    if local is None or split_zarr_spec(base) is None:
        return False
    return os.path.isfile(done_marker(zarr_array_dir(base), local))
