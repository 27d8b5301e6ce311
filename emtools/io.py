"""The one module that touches files: HDF5 (h5py), TIFF (tifffile) and PNG slices (Pillow).

Volume specs (what users type):

- ``file.h5:/group/dataset`` (also ``.hdf5``, ``.hdf``); ``file.h5`` alone when it holds exactly
  one dataset (reading) or to write the dataset ``/main``.
- ``file.tif`` / ``file.tiff``: a multi-page stack, one page per z section.
- a folder, or a glob such as ``'raw/*.png'``, of 2D ``.png``/``.tif`` slices, read in natural
  sort order (``2.png`` before ``10.png``).

Reading is lazy: :func:`open_volume` returns a :class:`VolumeSource` whose ``read(box)`` loads
only that region (HDF5 hyperslabs; one page or slice file per z section, with a small cache so a
z-ordered sweep decodes each section about once). Writing goes through :class:`VolumeWriter`,
which writes into a temporary file in the destination folder and renames it into place only when
everything succeeded, so an interrupted or failed run leaves the old output or none.

Metadata (see :mod:`emtools.meta`) is stored as HDF5 attributes ``axes``, ``offset_nm``,
``voxel_size_nm``, ``provenance`` (JSON text) plus one attribute per extra key; in TIFF as one JSON
object in the first page's ImageDescription.
"""

from __future__ import annotations

import collections
import contextlib
import glob as globlib
import json
import logging
import os
import re
import secrets
from typing import Iterator, Sequence

import numpy as np

from emtools.errors import EmError
from emtools.meta import Metadata
from emtools.tiling import Box

log = logging.getLogger("emtools")

H5_SUFFIXES = (".h5", ".hdf5", ".hdf")
TIFF_SUFFIXES = (".tif", ".tiff")
SLICE_SUFFIXES = (".png", ".tif", ".tiff")
DEFAULT_DATASET = "main"
COMPRESSIONS = ("gzip", "lzf", "none")
_TMP_MARK = ".emtmp-"
_KNOWN_ATTRS = {"axes", "offset_nm", "voxel_size_nm", "provenance"}
# Attribute names other tools use for the same things (read only; we always write ours).
_VOXEL_ALIASES = {"resolution": 1.0, "voxel_size": 1.0, "element_size_um": 1000.0}
_OFFSET_ALIASES = {"offset": 1.0}


# --------------------------------------------------------------------------------------------
# specs


def natural_key(path: str) -> list:
    """Sort key that orders ``2.png`` before ``10.png``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", os.path.basename(path))]


def split_h5_spec(spec: str) -> tuple[str, str | None] | None:
    """``file.h5:/a/b`` -> (``file.h5``, ``/a/b``); None when ``spec`` is not an HDF5 spec."""
    match = re.match(r"^(.*?\.(?:h5|hdf5|hdf))(?::(.*))?$", spec, flags=re.IGNORECASE)
    if not match:
        return None
    dataset = match.group(2)
    return match.group(1), (dataset or None)


def _is_glob(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")


def describe_formats() -> str:
    return "use file.h5:/dataset, file.tif, or a folder or glob of .png/.tif slices"


# --------------------------------------------------------------------------------------------
# reading


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
            raise EmError(f"region {box.text()} is outside {self.spec} (shape {_fmt_shape(self.shape)})")
        try:
            return self._read(box)
        except EmError:
            raise
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            raise EmError(f"cannot read {self.spec}: corrupt or truncated file ({_short(exc)})") from exc

    def _read(self, box: Box) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _H5Source(VolumeSource):
    def __init__(self, spec: str, path: str, dataset: str | None):
        import h5py

        self.spec = spec
        try:
            self._file = h5py.File(path, "r")
        except OSError as exc:
            raise EmError(f"not an HDF5 file, or corrupt/truncated: {path} ({_short(exc)})") from exc
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
        self.meta = _meta_from_attrs(dict(self._ds.attrs), len(self.shape))

    def _read(self, box: Box) -> np.ndarray:
        sl = tuple(slice(b, e) for b, e in zip(box.begin, box.end))
        if len(self.shape) == 4:
            sl = (slice(None),) + sl
        return self._ds[sl]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()


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
            raise EmError(f"not a TIFF file, or corrupt: {path} ({_short(exc)})") from exc
        if len(page_shape) != 2:
            self._tif.close()
            raise EmError(f"{path} has pages of shape {_fmt_shape(page_shape)}; only 2D grayscale pages are supported")
        stored = _meta_from_description(description)
        if stored is not None:
            meta, shape = stored
            if int(np.prod(shape[:-2])) != count:
                raise EmError(f"{path}: its metadata says shape {_fmt_shape(shape)} but it has {count} pages")
            self.shape = tuple(shape)
            self.meta = meta
        else:
            self.shape = (count,) + tuple(page_shape)
            self.meta = Metadata()
        if count == 1 and stored is None:
            self._tif.close()
            raise EmError(f"{path} is a 2D image (shape {_fmt_shape(page_shape)}); a 3D volume (z,y,x) is needed")
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
            raise EmError(f"not a PNG image, or corrupt: {path} ({_short(exc)})") from exc
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
        raise EmError(f"not a TIFF image, or corrupt: {path} ({_short(exc)})") from exc
    if len(shape) != 2:
        raise EmError(f"{path} has shape {_fmt_shape(shape)}; slices must be 2D grayscale images")
    return tuple(shape), dtype  # type: ignore[return-value]


class _SliceFolderSource(_SectionSource):
    def __init__(self, spec: str, files: Sequence[str]):
        self.spec = spec
        self._files = list(files)
        first_shape, first_dtype = _slice_header(self._files[0])
        for path in self._files[1:]:
            shape, dtype = _slice_header(path)
            if shape != first_shape or dtype != first_dtype:
                raise EmError(
                    f"slice sizes differ: {os.path.basename(self._files[0])} is {_fmt_shape(first_shape)} "
                    f"{first_dtype} but {path} is {_fmt_shape(shape)} {dtype}"
                )
        self.shape = (len(self._files),) + tuple(first_shape)
        self.dtype = first_dtype
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
            raise EmError(f"{path} changed while reading (shape {_fmt_shape(data.shape)})")
        return data.astype(self.dtype, copy=False)


def open_volume(
    spec: str,
    voxel_size_nm: Sequence[float] | None = None,
    offset_nm: Sequence[float] | None = None,
    require_3d: bool = True,
) -> VolumeSource:
    """Open a volume spec for reading (read-only), without loading it.

    ``voxel_size_nm``/``offset_nm`` override what the file says (or supply what it lacks).
    One-line :class:`EmError` for a missing file, an unknown format, a missing dataset, a file
    that is not what its name says, a 2D array, or an empty volume.
    """
    source = _open_any(spec)
    try:
        if voxel_size_nm is not None or offset_nm is not None:
            source.meta = source.meta.replace(
                voxel_size_nm=tuple(voxel_size_nm) if voxel_size_nm is not None else source.meta.voxel_size_nm,
                offset_nm=tuple(offset_nm) if offset_nm is not None else source.meta.offset_nm,
            )
        ndim = len(source.shape)
        if require_3d and ndim not in (3, 4):
            raise EmError(f"{spec} is {ndim}D (shape {_fmt_shape(source.shape)}); a 3D volume (z,y,x) is needed")
        if ndim == 4 and source.meta.axes != "czyx":
            source.meta = source.meta.replace(axes="czyx")
        if ndim == 3 and source.meta.axes != "zyx":
            raise EmError(f"{spec} is 3D but its metadata says axes {source.meta.axes}")
        if 0 in source.shape:
            raise EmError(f"{spec} is empty (shape {_fmt_shape(source.shape)})")
        source.meta.origin_vx  # noqa: B018 - validates that the offset is on the voxel grid
    except BaseException:
        source.close()
        raise
    return source


def _open_any(spec: str) -> VolumeSource:
    if not spec:
        raise EmError("empty volume spec; " + describe_formats())
    h5 = split_h5_spec(spec)
    if h5 is not None:
        path, dataset = h5
        _require_file(path)
        return _H5Source(spec, path, dataset)
    if spec.lower().endswith(TIFF_SUFFIXES) and not _is_glob(spec):
        _require_file(spec)
        return _TiffSource(spec, spec)
    if os.path.isdir(spec):
        files = [os.path.join(spec, f) for f in os.listdir(spec) if f.lower().endswith(SLICE_SUFFIXES)]
        if not files:
            raise EmError(f"no .png or .tif slices in folder {spec}")
        return _SliceFolderSource(spec, _one_kind(sorted(files, key=natural_key), spec))
    if _is_glob(spec):
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


# --------------------------------------------------------------------------------------------
# metadata encoding


def _meta_from_attrs(attrs: dict, ndim: int) -> Metadata:
    def values(key):
        v = attrs[key]
        v = v.tolist() if hasattr(v, "tolist") else v
        return [v] * 3 if np.isscalar(v) else list(v)

    def text(v):
        return v.decode() if isinstance(v, bytes) else str(v)

    voxel = offset = None
    if "voxel_size_nm" in attrs:
        voxel = values("voxel_size_nm")
    else:
        for key, scale in _VOXEL_ALIASES.items():
            if key in attrs:
                voxel = [float(v) * scale for v in values(key)]
                break
    if "offset_nm" in attrs:
        offset = values("offset_nm")
    else:
        for key, scale in _OFFSET_ALIASES.items():
            if key in attrs:
                offset = [float(v) * scale for v in values(key)]
                break
    provenance = json.loads(text(attrs["provenance"])) if "provenance" in attrs else []
    aliases = set(_VOXEL_ALIASES) | set(_OFFSET_ALIASES)
    extra = {}
    for key, value in attrs.items():
        if key in _KNOWN_ATTRS or key in aliases:
            continue
        extra[key] = _attr_to_python(value)
    try:
        return Metadata(
            axes=text(attrs.get("axes", "czyx" if ndim == 4 else "zyx")),
            offset_nm=tuple(offset) if offset is not None else (0.0, 0.0, 0.0),
            voxel_size_nm=tuple(voxel) if voxel is not None else (1.0, 1.0, 1.0),
            provenance=tuple(provenance),
            attrs=extra,
        )
    except EmError as exc:
        raise EmError(f"bad metadata: {exc}") from exc


def _attr_to_python(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    return value


def _python_to_attr(value):
    """Lists of numbers become arrays (h5ls shows them); anything nested becomes tagged JSON."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        dtype = np.int64 if all(isinstance(v, int) for v in value) else np.float64
        return np.asarray(value, dtype=dtype)
    if isinstance(value, (dict, list, tuple, bool)) or value is None:
        return "json:" + json.dumps(value, sort_keys=True)
    return value


def _description(meta: Metadata, shape: Sequence[int]) -> str:
    return json.dumps(
        {
            "emtools": 1,
            "shape": list(shape),
            "axes": meta.axes,
            "offset_nm": list(meta.offset_nm),
            "voxel_size_nm": list(meta.voxel_size_nm),
            "provenance": list(meta.provenance),
            "attrs": meta.attrs,
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def _meta_from_description(description: str) -> tuple[Metadata, tuple[int, ...]] | None:
    try:
        data = json.loads(description)
    except (ValueError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("emtools") != 1:
        return None
    meta = Metadata(
        axes=data["axes"],
        offset_nm=tuple(data["offset_nm"]),
        voxel_size_nm=tuple(data["voxel_size_nm"]),
        provenance=tuple(data.get("provenance", [])),
        attrs=data.get("attrs", {}),
    )
    return meta, tuple(data["shape"])


# --------------------------------------------------------------------------------------------
# writing


def check_output_path(path: str) -> None:
    """One-line errors for an output whose folder is missing or not writable (before any work)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(folder):
        raise EmError(f"output folder does not exist: {os.path.dirname(path) or '.'}")
    if not os.path.isdir(folder):
        raise EmError(f"output folder is not a folder: {os.path.dirname(path)}")
    if not os.access(folder, os.W_OK):
        raise EmError(f"output folder is not writable: {os.path.dirname(path) or '.'}")
    if os.path.isdir(path):
        raise EmError(f"output is an existing folder: {path}")


def output_file(spec: str) -> str:
    """The file a write spec names (``a.h5:/x`` -> ``a.h5``)."""
    h5 = split_h5_spec(spec)
    return h5[0] if h5 else spec


def output_format(spec: str) -> str:
    if split_h5_spec(spec) is not None:
        return "h5"
    if spec.lower().endswith(TIFF_SUFFIXES):
        return "tif"
    raise EmError(f"cannot write {spec}: output must be file.h5[:/dataset] or file.tif")


def _remove_stale_temps(path: str) -> None:
    """Delete temporaries left by killed runs for this output (their process no longer exists)."""
    folder, name = os.path.split(os.path.abspath(path))
    prefix = f".{name}{_TMP_MARK}"
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            if not entry.startswith(prefix):
                continue
            pid = entry[len(prefix) :].split("-")[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, entry))
                    log.debug("removed stale temporary %s", entry)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _h5_chunks(shape: Sequence[int], chunks_zyx: Sequence[int] | None) -> tuple[int, ...]:
    spatial = chunks_zyx or (32, 128, 128)
    zyx = tuple(max(1, min(c, s)) for c, s in zip(spatial, shape[-3:]))
    return ((1,) + zyx) if len(shape) == 4 else zyx


def parse_compression(text: str) -> tuple[str, int | None]:
    """``gzip``, ``gzip:6``, ``lzf`` or ``none`` -> (name, level)."""
    name, _, level = text.partition(":")
    name = name.lower()
    if name not in COMPRESSIONS:
        raise EmError(f"unknown compression {text!r}; choose gzip[:LEVEL], lzf or none")
    if level:
        if name != "gzip" or not level.isdigit() or not 0 <= int(level) <= 9:
            raise EmError(f"bad compression level in {text!r}; gzip takes 0-9")
        return name, int(level)
    return name, (1 if name == "gzip" else None)


class VolumeWriter:
    """Write a volume region by region into a temporary file; rename it into place on success.

    ``with VolumeWriter("out.h5:/main", shape, dtype, meta) as w: w.write(box, data)``.
    HDF5 takes regions in any order. TIFF takes them in any order too, but keeps incomplete
    sections in memory until they are whole and all earlier sections are written, so write
    TIFFs in z order (then memory stays one z-row of chunks).
    """

    def __init__(
        self,
        spec: str,
        shape: Sequence[int],
        dtype,
        meta: Metadata,
        compression: str = "gzip",
        chunks_zyx: Sequence[int] | None = None,
    ):
        self.spec = spec
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.meta = meta
        self.format = output_format(spec)
        self.path = output_file(spec)
        self.dataset = DEFAULT_DATASET
        if self.format == "h5":
            self.dataset = (split_h5_spec(spec)[1] or DEFAULT_DATASET).lstrip("/") or DEFAULT_DATASET
        self.compression = parse_compression(compression)
        self.chunks_zyx = chunks_zyx
        if len(self.shape) not in (3, 4):
            raise EmError(f"cannot write a {len(self.shape)}D array to {spec}; need (z,y,x) or (c,z,y,x)")
        if 0 in self.shape:
            raise EmError(f"refusing to write an empty volume (shape {_fmt_shape(self.shape)}) to {spec}")
        if self.dtype == np.bool_:
            self.dtype = np.dtype(np.uint8)
        check_output_path(self.path)
        self._tmp: str | None = None

    # -- context management: the rename happens only on a clean exit
    def __enter__(self):
        _remove_stale_temps(self.path)
        folder, name = os.path.split(os.path.abspath(self.path))
        self._tmp = os.path.join(folder, f".{name}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
        try:
            self._open()
        except BaseException:
            self._discard()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self._finish()
                os.replace(self._tmp, self.path)
                self._tmp = None
            except BaseException:
                self._discard()
                raise
        else:
            self._discard()
        return False

    def _discard(self) -> None:
        with contextlib.suppress(Exception):
            self._close_handles()
        if self._tmp:
            with contextlib.suppress(OSError):
                os.remove(self._tmp)
            self._tmp = None

    # -- format specifics
    def _open(self) -> None:
        if self.format == "h5":
            import h5py

            self._h5 = h5py.File(self._tmp, "w", libver="earliest", track_order=False)
            name, level = self.compression
            kwargs = {}
            if name != "none":
                kwargs = {"compression": name, "compression_opts": level}
            self._ds = self._h5.create_dataset(
                self.dataset,
                shape=self.shape,
                dtype=self.dtype,
                chunks=_h5_chunks(self.shape, self.chunks_zyx),
                track_times=False,
                fillvalue=0,
                **kwargs,
            )
            for key, value in _meta_attrs(self.meta).items():
                self._ds.attrs[key] = value
        else:
            import tifffile

            self._tiff = tifffile.TiffWriter(self._tmp, bigtiff=self._nbytes() > 2**31)
            self._pages: dict[int, np.ndarray] = {}
            self._filled: collections.Counter[int] = collections.Counter()
            self._next_page = 0

    def _nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def write(self, box: Box, data: np.ndarray) -> None:
        """Write ``data`` at ``box`` (local voxel coordinates of the output, z,y,x)."""
        expected = (self.shape[:1] if len(self.shape) == 4 else ()) + box.shape
        if tuple(data.shape) != expected:
            raise EmError(f"internal: data of shape {_fmt_shape(data.shape)} for region {box.text()}")
        data = np.asarray(data).astype(self.dtype, copy=False)
        if self.format == "h5":
            sl = tuple(slice(b, e) for b, e in zip(box.begin, box.end))
            self._ds[((slice(None),) + sl) if len(self.shape) == 4 else sl] = data
            return
        self._tiff_write(box, data)

    def _tiff_write(self, box: Box, data: np.ndarray) -> None:
        depth = self.shape[-3]
        channels = self.shape[0] if len(self.shape) == 4 else 1
        data = data.reshape((channels,) + box.shape)
        plane = self.shape[-2] * self.shape[-1]
        for c in range(channels):
            for i, z in enumerate(range(box.begin[0], box.end[0])):
                page = c * depth + z
                if page not in self._pages:
                    self._pages[page] = np.zeros(self.shape[-2:], dtype=self.dtype)
                self._pages[page][box.begin[1] : box.end[1], box.begin[2] : box.end[2]] = data[c, i]
                self._filled[page] += box.shape[1] * box.shape[2]
        # Flush whole pages in order (a page is whole when every voxel was written once).
        total = channels * depth
        while self._next_page < total and self._filled.get(self._next_page, 0) >= plane:
            self._write_page(self._pages.pop(self._next_page))
            del self._filled[self._next_page]
            self._next_page += 1

    def _write_page(self, page: np.ndarray) -> None:
        kwargs = {"description": _description(self.meta, self.shape)} if self._next_page == 0 else {}
        name, level = self.compression
        if name == "gzip":  # TIFF's deflate is the same codec as HDF5's gzip
            kwargs.update(compression="zlib", compressionargs={"level": level})
        elif name == "lzf":
            raise EmError("lzf compression exists only for HDF5; use gzip or none for TIFF")
        self._tiff.write(page, contiguous=False, metadata=None, software="emtools", **kwargs)

    def _finish(self) -> None:
        if self.format == "h5":
            self._h5.close()
            return
        total = (self.shape[0] if len(self.shape) == 4 else 1) * self.shape[-3]
        while self._next_page < total:  # regions never written are zeros (fill value), as in HDF5
            page = self._pages.pop(self._next_page, None)
            self._write_page(page if page is not None else np.zeros(self.shape[-2:], dtype=self.dtype))
            self._next_page += 1
        self._tiff.close()

    def _close_handles(self) -> None:
        if self.format == "h5":
            self._h5.close()
        else:
            self._tiff.close()


def _meta_attrs(meta: Metadata) -> dict:
    attrs = {
        "axes": meta.axes,
        "offset_nm": np.asarray(meta.offset_nm, dtype=np.float64),
        "voxel_size_nm": np.asarray(meta.voxel_size_nm, dtype=np.float64),
        "provenance": json.dumps(list(meta.provenance), sort_keys=True, separators=(",", ":")),
    }
    for key, value in meta.attrs.items():
        if key in attrs:
            raise EmError(f"internal: metadata attribute {key} is reserved")
        attrs[key] = _python_to_attr(value)
    return attrs


def write_volume(spec: str, data: np.ndarray, meta: Metadata, compression: str = "gzip", chunks_zyx=None) -> str:
    """Write a whole array atomically; returns the path written."""
    with VolumeWriter(spec, data.shape, data.dtype, meta, compression, chunks_zyx) as writer:
        writer.write(Box.from_shape(data.shape[-3:]), data)
    return writer.path


@contextlib.contextmanager
def atomic_text(path: str) -> Iterator:
    """Open a text file for writing that appears at ``path`` only if the block succeeds."""
    check_output_path(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w") as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


# --------------------------------------------------------------------------------------------


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape) if len(shape) else "scalar"


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:160]
