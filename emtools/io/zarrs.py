"""Zarr stores (zarr-python 3): read v2 and v3 arrays, write v3 arrays atomically, OME-Zarr metadata.

A spec ``path/store.zarr/group/array`` names an array inside a store (a folder). Reading takes
zarr v2 or v3; writing makes zarr v3 with our metadata as plain JSON attributes of the array
(``axes``, ``offset_nm``, ``voxel_size_nm``, ``provenance``, and any other key) and an OME-NGFF
0.5 ``multiscales`` entry for the array on the group above it (axes (c,)z,y,x in nanometres, the
voxel size as ``scale``, the offset as ``translation``), so OME-Zarr viewers place it in the
world. Arrays that lack our attributes take voxel size and offset from that OME metadata (0.4
or 0.5) when it is there.

A whole-array write builds the new part of the store in a temporary folder beside it (the
array, and the groups above it that do not exist yet) and renames it into place when complete,
so an interrupted write leaves the old array or none. Chunk files go through
:func:`atomic_store`, a ``LocalStore`` whose every key is written to a temporary file in its
folder and renamed over the key: a reader, or a worker killed mid-write, never leaves or sees
half a chunk. Writing one region of an existing array from many workers lives in
:mod:`emtools.io.regions`.

``zarr`` is imported only when a zarr spec is used (it takes about a second to import).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import socket
from typing import Sequence

import numpy as np

from emtools import interrupt
from emtools.errors import EmError
from emtools.io.encoding import meta_from_json, meta_to_json, ome_multiscale, ome_multiscales, ome_scale_offset
from emtools.io.specs import (
    DEFAULT_DATASET,
    TMP_MARK,
    check_zarr_output,
    pid_alive,
    short_reason,
    split_zarr_spec,
    zarr_array_dir,
    zarr_node,
)
from emtools.meta import Metadata
from emtools.tiling.geometry import Box

log = logging.getLogger("emtools")

MARKERS = ".emtools"  # folder inside an array for region claims and done markers (emtools.io.regions)
DEFAULT_CHUNKS_ZYX = (32, 128, 128)
_STORE_CLASS = None


def zarr_module():
    """The ``zarr`` package (3.x), imported on first use; a one-line error when it is missing."""
    try:
        import zarr
    except ImportError as exc:  # pragma: no cover - zarr is an install requirement
        raise EmError(f"zarr stores need the zarr package (pip install 'zarr>=3.1'): {exc}") from exc
    if int(zarr.__version__.split(".")[0]) < 3:
        raise EmError(f"zarr stores need zarr-python 3 (found {zarr.__version__}); pip install 'zarr>=3.1'")
    return zarr


def atomic_store(root: str, read_only: bool = False):
    """A zarr ``LocalStore`` on ``root`` whose writes are atomic per key (temporary file, rename).

    zarr-python writes atomically itself only since 3.1.3 (and may move its temporaries to
    another folder); this store does it in every 3.x, with temporaries named as all of ours
    (``.KEY.emtmp-PID-...``) so that a rerun removes those of killed workers.
    """
    global _STORE_CLASS
    zarr_module()
    if _STORE_CLASS is None:
        import asyncio

        from zarr.storage import LocalStore

        class AtomicLocalStore(LocalStore):
            """Every ``set`` writes a temporary file beside the key and renames it over the key."""

            async def set(self, key, value):  # noqa: D401 - the store API
                # the base class's bookkeeping, where this zarr version has it (zarr.abc.store.Store)
                if not getattr(self, "_is_open", True):
                    await self._open()
                if hasattr(self, "_check_writable"):
                    self._check_writable()
                await asyncio.to_thread(write_atomic, os.path.join(str(self.root), key), value.as_buffer_like())

        _STORE_CLASS = AtomicLocalStore
    return _STORE_CLASS(root, read_only=read_only)


HOST = socket.gethostname().replace("@", "_").replace("/", "_")


def temporary_path(path: str) -> str:
    """``.NAME.emtmp-PID-RANDOM@HOST`` beside ``path``: whose it is, so that only a temporary of a
    dead process of this host is ever removed (workers on other hosts share the folders)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}@{HOST}")


def write_atomic(path: str, data) -> None:
    """Write ``data`` (bytes-like) to ``path`` through a temporary file in its folder, then rename."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_json_atomic(path: str, value: dict) -> None:
    write_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


# ----------------------------------------------------------------------------- reading

def read_node_json(folder: str) -> tuple[int, dict, dict]:
    """(zarr format, metadata, attributes) of an array or group folder, from its JSON files."""
    v3 = os.path.join(folder, "zarr.json")
    try:
        if os.path.isfile(v3):
            with open(v3) as handle:
                meta = json.load(handle)
            return 3, meta, meta.get("attributes") or {}
        meta: dict = {}
        for name in (".zarray", ".zgroup"):
            if os.path.isfile(os.path.join(folder, name)):
                with open(os.path.join(folder, name)) as handle:
                    meta = json.load(handle)
        attrs = {}
        if os.path.isfile(os.path.join(folder, ".zattrs")):
            with open(os.path.join(folder, ".zattrs")) as handle:
                attrs = json.load(handle)
        return 2, meta, attrs
    except (OSError, ValueError) as exc:
        raise EmError(f"cannot read the zarr metadata of {folder}: {short_reason(exc)}") from exc


def list_arrays(root: str, under: str = "") -> list[str]:
    """Paths (inside the store) of every array at or below ``under``, sorted; hidden folders
    (temporaries, region markers) skipped. An array at the store's root is ``""``."""
    found = []
    for folder, dirs, _ in os.walk(os.path.join(root, under) if under else root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if zarr_node(folder) == "array":
            relative = os.path.relpath(folder, root)
            found.append("" if relative == "." else relative.replace(os.sep, "/"))
            dirs[:] = []
    return sorted(found)


def resolve_array(spec: str) -> tuple[str, str]:
    """(store root, array path) that a read spec names; one-line errors for what is not an array."""
    root, path = split_zarr_spec(spec)  # type: ignore[misc]
    if not os.path.isdir(root):
        raise EmError(f"no such zarr store: {root}" if not os.path.exists(root) else f"{root} is not a folder")
    folder = os.path.join(root, path) if path else root
    kind = zarr_node(folder) if os.path.isdir(folder) else None
    if kind == "array":
        return root, path
    if kind is None and path:
        raise EmError(f"no zarr array {path} in {root}")
    if kind is None and not os.path.isfile(os.path.join(root, ".zgroup")):
        raise EmError(f"{root} is not a zarr store (no zarr.json, .zgroup or .zarray)")
    arrays = list_arrays(root, path)
    if not path and len(arrays) == 1:
        return root, arrays[0]
    listed = ", ".join(arrays[:8]) + (", ..." if len(arrays) > 8 else "") if arrays else "none"
    where = f"{root}/{path}" if path else root
    raise EmError(f"{where} is a zarr group, not an array (arrays in it: {listed}); name one as {root}/ARRAY")


def array_metadata(root: str, path: str, ndim: int, attrs: dict) -> Metadata:
    """Our metadata of an array; voxel size and offset from OME-Zarr on the group above if absent."""
    ome = None
    if not {"voxel_size_nm", "offset_nm"} <= set(attrs):
        parent, _, name = path.rpartition("/")
        group = os.path.join(root, parent) if parent else root
        if zarr_node(group) == "group":
            group_attrs = read_node_json(group)[2]
            ome = ome_scale_offset(group_attrs, name)
            if ome is None and ome_multiscales(group_attrs):
                log.warning("%s: its OME-Zarr multiscales do not describe it in z,y,x with known units; "
                            "voxel size and offset are not taken from them", f"{root}/{path}")
    return meta_from_json(attrs, ndim, ome)


class ZarrArrayInfo:
    """An array's header, from its JSON only (no zarr import): what --into checks before work."""

    def __init__(self, array_dir: str):
        fmt, meta, attrs = read_node_json(array_dir)
        self.folder = array_dir
        self.zarr_format = fmt
        if fmt == 3:
            self.shape = tuple(int(v) for v in meta["shape"])
            grid = meta.get("chunk_grid", {})
            if grid.get("name") != "regular":
                raise EmError(f"{array_dir} has a {grid.get('name')} chunk grid; only regular grids are supported")
            self.chunks = tuple(int(v) for v in grid["configuration"]["chunk_shape"])
            self.dtype_text = str(meta.get("data_type"))
        else:
            self.shape = tuple(int(v) for v in meta["shape"])
            self.chunks = tuple(int(v) for v in meta["chunks"])
            self.dtype_text = str(meta.get("dtype"))
        self.attrs = attrs
        root, path = split_zarr_spec(array_dir)  # type: ignore[misc]
        self.meta = array_metadata(root, path, len(self.shape), attrs)

    @property
    def dtype(self) -> np.dtype:
        try:
            return np.dtype(self.dtype_text)
        except TypeError:
            return np.dtype(object)

    @property
    def box(self) -> Box:
        return Box.from_shape(self.shape[-3:], self.meta.origin_vx)


# ----------------------------------------------------------------------------- writing whole arrays

def zarr_compressors(compression: tuple[str, int | None]):
    """zarr v3 codecs for our ``--compression`` (gzip[:LEVEL] or none)."""
    name, level = compression
    if name == "lzf":
        raise EmError("lzf compression exists only for HDF5; use gzip or none for zarr")
    if name == "none":
        return None
    zarr_module()
    from zarr.codecs import GzipCodec

    return GzipCodec(level=int(level if level is not None else 1))


def store_chunks(shape: Sequence[int], chunks_zyx: Sequence[int] | None) -> tuple[int, ...]:
    """Chunk shape of a new array: ``chunks_zyx`` (default 32,128,128) clipped to the shape; all
    channels of a (c, z, y, x) array in one chunk, so a region is a set of whole chunk files."""
    spatial = chunks_zyx or DEFAULT_CHUNKS_ZYX
    zyx = tuple(max(1, min(int(c), int(s))) for c, s in zip(spatial, shape[-3:]))
    return ((int(shape[0]),) + zyx) if len(shape) == 4 else zyx


def _dimension_names(ndim: int) -> tuple[str, ...]:
    return ("c", "z", "y", "x") if ndim == 4 else ("z", "y", "x")


def _group_json(attributes: dict | None = None) -> dict:
    return {"zarr_format": 3, "node_type": "group", "attributes": attributes or {}}


@contextlib.contextmanager
def locked(folder: str):
    """An exclusive lock (flock) on a folder: one process at a time updates its zarr.json."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def set_ome_entry(group_dir: str, name: str, meta: Metadata, ndim: int) -> None:
    """Put array ``name``'s OME multiscales entry on the group (replacing its old one), locked."""
    path = os.path.join(group_dir, "zarr.json")
    with locked(group_dir):
        node = _group_json()
        if os.path.isfile(path):
            with open(path) as handle:
                node = json.load(handle)
        attributes = dict(node.get("attributes") or {})
        ome = dict(attributes.get("ome") or {})
        entries = [e for e in ome.get("multiscales", []) if e.get("name") != name
                   and not any(d.get("path") == name for d in e.get("datasets", []))]
        entries.append(ome_multiscale(name, meta, ndim))
        ome.update(version="0.5", multiscales=sorted(entries, key=lambda e: str(e.get("name"))))
        attributes["ome"] = ome
        node["attributes"] = attributes
        write_json_atomic(path, node)


def remove_stale_temporaries(folder: str) -> None:
    """Delete temporary files and folders left by killed writers: those of :func:`temporary_path`
    whose process, on this host, is gone."""
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            if TMP_MARK not in entry or not entry.startswith(".") or not entry.endswith(f"@{HOST}"):
                continue
            pid = entry.split(TMP_MARK, 1)[1].split("-")[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                target = os.path.join(folder, entry)
                with contextlib.suppress(OSError):
                    shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
                    log.debug("removed stale temporary %s", target)



class ZarrWriter:
    """The zarr side of :class:`emtools.io.VolumeWriter`: a new v3 array built in a temporary
    folder, renamed into place by :meth:`publish`.

    The temporary folder sits in the deepest folder of the path that exists already and holds
    everything below it that is new (groups and the array), so nothing of the output appears
    before it is complete. An existing array of the same name is replaced.
    """

    def __init__(self, spec: str, shape: Sequence[int], dtype: np.dtype, meta: Metadata,
                 compression: tuple[str, int | None], chunks_zyx: Sequence[int] | None):
        self.root, path = split_zarr_spec(spec)  # type: ignore[misc]
        self.array_dir = zarr_array_dir(spec)
        self.path = (path or DEFAULT_DATASET)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        self.meta = meta
        self.compressors = zarr_compressors(compression)
        self.chunks = store_chunks(self.shape, chunks_zyx)
        parts = [p for p in self.path.split("/") if p]
        # the deepest existing folder (never the array itself: an old array is replaced whole)
        base = self.root.rstrip("/")
        chain = [base] + [f"{base}/{'/'.join(parts[:i])}" for i in range(1, len(parts))]
        existing = [c for c in chain if os.path.isdir(c)]
        if existing:
            self.anchor = existing[-1]
            self.new_parts = parts[chain.index(self.anchor):]
        else:
            self.anchor = os.path.dirname(os.path.abspath(base))
            self.new_parts = [os.path.basename(base)] + parts
        self.tmp: str | None = None
        self._array = None

    def open(self) -> None:
        remove_stale_temporaries(self.anchor)
        self.tmp = temporary_path(os.path.join(self.anchor, self.new_parts[0]))
        zarr = zarr_module()
        inner = "/".join(self.new_parts[1:])  # the array's path inside the temporary folder
        os.makedirs(self.tmp)
        store = atomic_store(self.tmp)
        self._array = zarr.create_array(
            store=store, name=inner or None, shape=self.shape, chunks=self.chunks, dtype=self.dtype,
            compressors=self.compressors, fill_value=0, attributes=meta_to_json(self.meta), zarr_format=3,
            dimension_names=_dimension_names(len(self.shape)), overwrite=True,
        )

    def write(self, box: Box, data: np.ndarray) -> None:
        sl = tuple(slice(b, e) for b, e in zip(box.begin, box.end))
        self._array[((slice(None),) + sl) if len(self.shape) == 4 else sl] = data

    def publish(self) -> None:
        """Rename the temporary folder into place; then the OME entry on the group above."""
        name = self.path.rsplit("/", 1)[-1]
        if len(self.new_parts) > 1:  # the group above the array is new: its OME entry goes in now
            group = os.path.join(self.tmp, *self.new_parts[1:-1])
            set_ome_entry(group, name, self.meta, len(self.shape))
        target = os.path.join(self.anchor, self.new_parts[0])
        interrupt.check()
        if os.path.exists(target):
            if len(self.new_parts) > 1:
                raise EmError(f"{target} appeared while writing {self.array_dir}; run again")
            old = temporary_path(target)
            os.rename(target, old)
            os.rename(self.tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.tmp, target)
        self.tmp = None
        if len(self.new_parts) == 1:  # the group above existed: update its OME entry in place
            set_ome_entry(self.anchor, name, self.meta, len(self.shape))

    def discard(self) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def create_array(spec: str, shape: Sequence[int], dtype, meta: Metadata, chunks_zyx: Sequence[int],
                 compression: tuple[str, int | None]) -> str:
    """An empty (all zero) zarr v3 array, atomically: what ``em-tile create`` makes for --into.

    The array gets the folder for region markers (:mod:`emtools.io.regions`). Returns its folder.
    """
    check_zarr_output(spec)
    writer = ZarrWriter(spec, shape, np.dtype(dtype), meta, compression, chunks_zyx)
    try:
        writer.open()
        inner = os.path.join(writer.tmp, *writer.new_parts[1:])
        os.makedirs(os.path.join(inner, MARKERS, "claims"))
        os.makedirs(os.path.join(inner, MARKERS, "done"))
        writer.publish()
    except OSError as exc:
        writer.discard()
        raise EmError(f"cannot write {writer.array_dir}: {short_reason(exc)}") from exc
    except BaseException:
        writer.discard()
        raise
    return writer.array_dir
