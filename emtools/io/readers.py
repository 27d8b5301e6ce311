"""Lazy, region-by-region readers for HDF5 datasets, zarr arrays, TIFF stacks and folders of 2D
slices, and for regions of any of them (``SPEC[z0:z1,y0:y1,x0:x1]+HALO``, read as a chunk)."""

from __future__ import annotations

import collections
import contextlib
import glob as globlib
import logging
import os
from typing import Sequence

import numpy as np

from emtools.errors import EmError
from emtools.io import h5chunks
from emtools.io.encoding import meta_from_attrs, meta_from_description
from emtools.io.specs import (
    SLICE_SUFFIXES,
    TIFF_SUFFIXES,
    describe_formats,
    fmt_shape,
    is_glob,
    natural_key,
    short_reason,
    split_h5_spec,
    split_into,
    split_region,
    split_zarr_spec,
)
from emtools.meta import Metadata
from emtools.tiling.geometry import CHUNK_ATTRS, Box, chunk_attrs

log = logging.getLogger("emtools")


class VolumeSource:
    """A volume on disk, read region by region. Use as a context manager or call ``close()``."""

    spec: str
    shape: tuple[int, ...]  # (z, y, x) or (c, z, y, x)
    dtype: np.dtype
    meta: Metadata

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(self.shape[-3:])  # type: ignore[return-value]

    @property
    def box(self) -> Box:
        """The volume's region in global voxel coordinates."""
        return Box.from_shape(self.shape_zyx, self.meta.origin_vx)

    def read(self, box: Box | None = None) -> np.ndarray:
        """Read ``box`` (local voxel coordinates, z,y,x; all channels) or the whole volume."""
        box = box or Box.from_shape(self.shape_zyx)
        if not Box.from_shape(self.shape_zyx).contains(box):
            raise EmError(f"region {box.text()} is outside {self.spec} (shape {fmt_shape(self.shape)})")
        try:
            return self._read(box)
        except EmError:
            raise
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            raise EmError(f"cannot read {self.spec}: corrupt or truncated file ({short_reason(exc)})") from exc

    def _read(self, box: Box) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _H5Source(VolumeSource):
    def __init__(self, spec: str, path: str, dataset: str | None, cache_bytes: int | None = None):
        import h5py

        self.spec = spec
        try:
            kwargs = {} if cache_bytes is None else {"rdcc_nbytes": int(cache_bytes)}
            self._file = h5py.File(path, "r", **kwargs)
        except OSError as exc:
            raise EmError(f"not an HDF5 file, or corrupt/truncated: {path} ({short_reason(exc)})") from exc
        names = _list_datasets(self._file)
        if dataset is None:
            if len(names) != 1:
                self._file.close()
                found = ", ".join(names) if names else "none"
                raise EmError(f"{path} holds {len(names)} datasets ({found}); name one as {path}:/dataset")
            dataset = names[0]
        key = dataset if dataset.startswith("/") else "/" + dataset
        if key not in names:
            self._file.close()
            found = ", ".join(names) if names else "none"
            raise EmError(f"no dataset {key} in {path} (datasets: {found})")
        self._ds = self._file[key]
        self.shape = tuple(int(s) for s in self._ds.shape)
        self.dtype = self._ds.dtype
        self.meta = meta_from_attrs(dict(self._ds.attrs), len(self.shape))
        self._deflate = h5chunks.deflate_only(self._ds)

    def _read(self, box: Box) -> np.ndarray:
        channels = self.shape[:1] if len(self.shape) == 4 else ()
        begin, shape = (0,) * len(channels) + box.begin, channels + box.shape
        chunks = self._ds.chunks
        # more than one chunk of gzip data: decompress on every core (h5py uses one)
        if self._deflate and h5chunks.threads() > 1 and h5chunks.chunk_count(begin, shape, chunks) > 1:
            return h5chunks.read_deflate(self._ds, begin, shape)
        return self._ds[tuple(slice(b, b + n) for b, n in zip(begin, shape))]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()


class _ZarrSource(VolumeSource):
    """A zarr v2 or v3 array (zarr-python 3), opened read-only."""

    def __init__(self, spec: str):
        from emtools.io import zarrs

        zarr = zarrs.zarr_module()
        root, path = zarrs.resolve_array(spec)
        self.spec = spec
        self.folder = f"{root}/{path}" if path else root
        try:
            self._array = zarr.open_array(store=zarrs.atomic_store(root, read_only=True), path=path, mode="r")
            attrs = self._array.attrs.asdict()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EmError(f"cannot open the zarr array {self.folder}: {short_reason(exc)}") from exc
        self.shape = tuple(int(s) for s in self._array.shape)
        self.dtype = np.dtype(self._array.dtype)
        self.chunks = tuple(int(c) for c in self._array.chunks)
        self.zarr_format = int(self._array.metadata.zarr_format)
        self.meta = zarrs.array_metadata(root, path, len(self.shape), attrs)

    def _read(self, box: Box) -> np.ndarray:
        sl = tuple(slice(b, e) for b, e in zip(box.begin, box.end))
        return np.asarray(self._array[((slice(None),) + sl) if len(self.shape) == 4 else sl])


class _RegionSource(VolumeSource):
    """A region (plus halo) of another volume, presented as a chunk of it (see emtools.io.regions)."""

    def __init__(self, spec: str, base: VolumeSource, region: Box, halo: Sequence[int], marker: dict | None):
        full = Box.from_shape(base.shape_zyx)
        if not full.contains(region):
            raise EmError(f"region [{region.text()}] is outside {base.spec} (shape {fmt_shape(base.shape)})")
        self.spec = spec
        self._base = base
        self._read_local = Box(tuple(max(b - h, 0) for b, h in zip(region.begin, halo)),
                               tuple(min(e + h, s) for e, h, s in zip(region.end, halo, full.end)))
        channels = base.shape[:1] if len(base.shape) == 4 else ()
        self.shape = channels + self._read_local.shape
        self.dtype = base.dtype
        meta = base.meta
        origin = meta.origin_vx
        recorded = meta.attrs
        volume = full.shift(origin)
        if "volume_begin_vx" in recorded and "volume_end_vx" in recorded:  # a region of a chunk file
            volume = Box(recorded["volume_begin_vx"], recorded["volume_end_vx"])
        attrs = {k: v for k, v in recorded.items() if k not in CHUNK_ATTRS}
        provenance = meta.provenance
        if marker is not None:  # the done marker of exactly this region: its attributes and record
            attrs.update(marker.get("attrs") or {})
            if marker.get("provenance"):
                provenance = provenance + (marker["provenance"],)
        read = self._read_local.shift(origin)
        attrs.update(chunk_attrs(read, region.shift(origin), volume))
        offset = tuple(b * v for b, v in zip(read.begin, meta.voxel_size_nm))
        self.meta = meta.replace(offset_nm=offset, attrs=attrs, provenance=provenance)

    def _read(self, box: Box) -> np.ndarray:
        return self._base.read(box.shift(self._read_local.begin))

    def set_cache_sections(self, sections: int) -> None:
        if hasattr(self._base, "set_cache_sections"):
            self._base.set_cache_sections(sections)

    def close(self) -> None:
        self._base.close()


class _SectionSource(VolumeSource):
    """Common code for volumes stored one 2D section at a time (TIFF pages, slice files)."""

    _cache_sections = 1

    def _init_cache(self, sections: int) -> None:
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._cache_sections = max(1, sections)

    def set_cache_sections(self, sections: int) -> None:
        """Keep up to ``sections`` decoded sections (a chunk's depth keeps a z sweep single-pass)."""
        self._cache_sections = max(1, int(sections))
        while len(self._cache) > self._cache_sections:
            self._cache.popitem(last=False)

    def _section(self, index: int) -> np.ndarray:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        data = self._decode(index)
        self._cache[index] = data
        while len(self._cache) > self._cache_sections:
            self._cache.popitem(last=False)
        return data

    def _decode(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def _read(self, box: Box) -> np.ndarray:
        out = np.empty(box.shape, dtype=self.dtype)
        for i, z in enumerate(range(box.begin[0], box.end[0])):
            out[i] = self._section(z)[box.begin[1] : box.end[1], box.begin[2] : box.end[2]]
        return out


class _TiffSource(_SectionSource):
    def __init__(self, spec: str, path: str):
        import tifffile

        self.spec = spec
        try:
            self._tif = tifffile.TiffFile(path)
            pages = self._tif.pages
            first = pages.first if hasattr(pages, "first") else pages[0]
            description = first.description
            page_shape = first.shape
            self.dtype = first.dtype
            count = len(pages)
        except (tifffile.TiffFileError, OSError, ValueError, IndexError) as exc:
            raise EmError(f"not a TIFF file, or corrupt: {path} ({short_reason(exc)})") from exc
        if len(page_shape) != 2:
            self._tif.close()
            raise EmError(f"{path} has pages of shape {fmt_shape(page_shape)}; only 2D grayscale pages are supported")
        stored = meta_from_description(description)
        if stored is not None:
            meta, shape = stored
            if int(np.prod(shape[:-2])) != count:
                raise EmError(f"{path}: its metadata says shape {fmt_shape(shape)} but it has {count} pages")
            self.shape = tuple(shape)
            self.meta = meta
        else:
            self.shape = (count,) + tuple(page_shape)
            self.meta = Metadata()
        if count == 1 and stored is None:
            self._tif.close()
            raise EmError(f"{path} is a 2D image (shape {fmt_shape(page_shape)}); a 3D volume (z,y,x) is needed")
        self._init_cache(1)

    def _decode(self, index: int) -> np.ndarray:
        return self._tif.pages[index].asarray()

    def _read(self, box: Box) -> np.ndarray:
        if len(self.shape) == 3:
            return super()._read(box)
        channels, depth = self.shape[0], self.shape[1]
        out = np.empty((channels,) + box.shape, dtype=self.dtype)
        for c in range(channels):
            for i, z in enumerate(range(box.begin[0], box.end[0])):
                page = self._section(c * depth + z)
                out[c, i] = page[box.begin[1] : box.end[1], box.begin[2] : box.end[2]]
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._tif.close()


def _slice_header(path: str) -> tuple[tuple[int, int], np.dtype]:
    """Shape (y, x) and dtype of one slice file, from its header only."""
    if path.lower().endswith(".png"):
        from PIL import Image

        try:
            with Image.open(path) as im:
                mode, (width, height) = im.mode, im.size
        except OSError as exc:
            raise EmError(f"not a PNG image, or corrupt: {path} ({short_reason(exc)})") from exc
        dtypes = {"L": np.uint8, "I;16": np.uint16, "I;16B": np.uint16, "I": np.int32, "F": np.float32, "1": np.bool_}
        if mode not in dtypes:
            raise EmError(f"{path} is a {mode} image; only grayscale slices are supported")
        return (height, width), np.dtype(dtypes[mode])
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape, dtype = page.shape, page.dtype
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as exc:
        raise EmError(f"not a TIFF image, or corrupt: {path} ({short_reason(exc)})") from exc
    if len(shape) != 2:
        raise EmError(f"{path} has shape {fmt_shape(shape)}; slices must be 2D grayscale images")
    return tuple(shape), dtype  # type: ignore[return-value]


class _SliceFolderSource(_SectionSource):
    def __init__(self, spec: str, files: Sequence[str]):
        self.spec = spec
        self._files = list(files)
        first_shape, first_dtype = _slice_header(self._files[0])
        dtypes = {first_dtype}
        for path in self._files[1:]:
            shape, dtype = _slice_header(path)
            dtypes.add(dtype)
            # 1-bit and 8-bit PNG masks mixed in one stack (as published masks often are) read as uint8
            if shape != first_shape or (dtype != first_dtype and dtypes != {np.dtype(bool), np.dtype(np.uint8)}):
                raise EmError(
                    f"slice sizes differ: {os.path.basename(self._files[0])} is {fmt_shape(first_shape)} "
                    f"{first_dtype} but {path} is {fmt_shape(shape)} {dtype}"
                )
        self.shape = (len(self._files),) + tuple(first_shape)
        self.dtype = np.dtype(np.uint8) if len(dtypes) > 1 else first_dtype
        self.meta = Metadata()
        self._init_cache(1)

    def _decode(self, index: int) -> np.ndarray:
        path = self._files[index]
        if path.lower().endswith(".png"):
            from PIL import Image

            with Image.open(path) as im:
                data = np.asarray(im)
        else:
            import tifffile

            data = tifffile.imread(path)
        if data.shape != self.shape[1:]:
            raise EmError(f"{path} changed while reading (shape {fmt_shape(data.shape)})")
        if data.dtype == bool and self.dtype == np.uint8:
            return data.astype(np.uint8) * np.uint8(255)  # a 1-bit slice among 8-bit ones: as PIL's convert("L")
        return data.astype(self.dtype, copy=False)


def open_volume(
    spec: str,
    voxel_size_nm: Sequence[float] | None = None,
    offset_nm: Sequence[float] | None = None,
    require_3d: bool = True,
    cache_bytes: int | None = None,
) -> VolumeSource:
    """Open a volume spec for reading (read-only), without loading it.

    ``cache_bytes`` sets HDF5's chunk cache for this file (None: h5py's default, 1 MiB); a
    reader that touches each region once and keeps many files open wants it small.

    ``voxel_size_nm``/``offset_nm`` override what the file says (or supply what it lacks).
    One-line :class:`EmError` for a missing file, an unknown format, a missing dataset, a file
    that is not what its name says, a 2D array, or an empty volume.
    """
    source = _open_any(spec, cache_bytes)
    try:
        if voxel_size_nm is not None or offset_nm is not None:
            source.meta = source.meta.replace(
                voxel_size_nm=tuple(voxel_size_nm) if voxel_size_nm is not None else source.meta.voxel_size_nm,
                offset_nm=tuple(offset_nm) if offset_nm is not None else source.meta.offset_nm,
            )
        ndim = len(source.shape)
        if require_3d and ndim not in (3, 4):
            raise EmError(f"{spec} is {ndim}D (shape {fmt_shape(source.shape)}); a 3D volume (z,y,x) is needed")
        if ndim == 4 and source.meta.axes != "czyx":
            source.meta = source.meta.replace(axes="czyx")
        if ndim == 3 and source.meta.axes != "zyx":
            raise EmError(f"{spec} is 3D but its metadata says axes {source.meta.axes}")
        if 0 in source.shape:
            raise EmError(f"{spec} is empty (shape {fmt_shape(source.shape)})")
        source.meta.origin_vx  # noqa: B018 - validates that the offset is on the voxel grid
    except BaseException:
        source.close()
        raise
    return source


def _open_any(spec: str, cache_bytes: int | None = None) -> VolumeSource:
    if not spec:
        raise EmError("empty volume spec; " + describe_formats())
    spec = split_into(spec) or spec  # an --into output reads as its region
    base, region, halo = split_region(spec)
    if region is not None:
        if split_region(base)[1] is not None:
            raise EmError(f"{spec} has two regions; give one")
        source = _open_any(base, cache_bytes)
        try:
            marker = None
            if isinstance(source, _ZarrSource) and not any(halo):
                from emtools.io.regions import read_marker

                marker = read_marker(source.folder, region)
            return _RegionSource(spec, source, region, halo, marker)
        except BaseException:
            source.close()
            raise
    h5 = split_h5_spec(spec)
    if h5 is not None:
        path, dataset = h5
        _require_file(path)
        return _H5Source(spec, path, dataset, cache_bytes)
    if split_zarr_spec(spec) is not None:
        return _ZarrSource(spec)
    if spec.lower().endswith(TIFF_SUFFIXES) and not is_glob(spec):
        _require_file(spec)
        return _TiffSource(spec, spec)
    if os.path.isdir(spec):
        files = [os.path.join(spec, f) for f in os.listdir(spec) if f.lower().endswith(SLICE_SUFFIXES)]
        if not files:
            raise EmError(f"no .png or .tif slices in folder {spec}")
        return _SliceFolderSource(spec, _one_kind(sorted(files, key=natural_key), spec))
    if is_glob(spec):
        files = [f for f in globlib.glob(spec) if f.lower().endswith(SLICE_SUFFIXES) and os.path.isfile(f)]
        if not files:
            raise EmError(f"no .png or .tif slices match {spec}")
        return _SliceFolderSource(spec, _one_kind(sorted(files, key=natural_key), spec))
    if not os.path.exists(spec):
        raise EmError(f"no such file or folder: {spec}")
    raise EmError(f"cannot tell the format of {spec}; " + describe_formats())


def _one_kind(files: list[str], spec: str) -> list[str]:
    kinds = {os.path.splitext(f)[1].lower().replace(".tiff", ".tif") for f in files}
    if len(kinds) > 1:
        raise EmError(f"{spec} mixes {' and '.join(sorted(kinds))} slices; use a glob such as {spec.rstrip('/')}/*.png")
    return files


def _require_file(path: str) -> None:
    if not os.path.exists(path):
        raise EmError(f"no such file: {path}")
    if os.path.isdir(path):
        raise EmError(f"{path} is a folder, not a file")


def read_volume(spec: str, **kwargs) -> tuple[np.ndarray, Metadata]:
    """Read a whole volume and its metadata (small volumes; use open_volume for big ones)."""
    with open_volume(spec, **kwargs) as source:
        return source.read(), source.meta


def list_datasets(path: str) -> list[str]:
    import h5py

    with h5py.File(path, "r") as f:
        return _list_datasets(f)


def _list_datasets(h5file) -> list[str]:
    import h5py

    names: list[str] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            names.append("/" + name)

    h5file.visititems(visit)
    return names
