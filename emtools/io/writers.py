"""Atomic writers: a temporary file in the destination folder, renamed into place on success."""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
from typing import Iterator, Sequence

import numpy as np

from emtools import interrupt
from emtools.errors import EmError
from emtools.io import h5chunks
from emtools.io.encoding import meta_to_attrs, tiff_description
from emtools.io.specs import (
    COMPRESSIONS,
    DEFAULT_DATASET,
    TMP_MARK,
    check_output_path,
    fmt_shape,
    output_file,
    output_format,
    pid_alive,
    short_reason,
    split_h5_spec,
)
from emtools.meta import Metadata
from emtools.tiling.geometry import Box

log = logging.getLogger("emtools")

# HDF5 crashes the process (SIGSEGV at exit) after a failed flush, e.g. on a full disk. Once that
# happened, the CLI ends with os._exit after its one-line error instead of a normal exit.
hdf5_unstable = False


def storage_error(path: str, exc: BaseException) -> EmError:
    """One line for a failed write: the OS reason where the storage layer tells it."""
    text = " ".join(str(exc).split())
    number = getattr(exc, "errno", None)
    match = re.search(r"errno = (\d+)", text)
    if match:
        number = int(match.group(1))
    if number is not None and number in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO, errno.EROFS):
        reason = os.strerror(number).lower()
    else:
        reason = short_reason(exc)
    return EmError(f"cannot write {path}: {reason}")


def _remove_stale_temps(path: str) -> None:
    """Delete temporaries left by killed runs for this output (their process no longer exists)."""
    folder, name = os.path.split(os.path.abspath(path))
    prefix = f".{name}{TMP_MARK}"
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            if not entry.startswith(prefix):
                continue
            pid = entry[len(prefix) :].split("-")[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, entry))
                    log.debug("removed stale temporary %s", entry)



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
    HDF5 and zarr take regions in any order (zarr: a temporary folder, renamed into place; see
    :mod:`emtools.io.zarrs`). TIFF takes them in any order too, but keeps incomplete
    sections in memory until they are whole and all earlier sections are written, so write
    TIFFs in z order (then memory stays one z-row of chunks).

    An ``into:`` spec (:func:`emtools.io.into_spec`) writes one region into an existing zarr
    array instead (:class:`emtools.io.regions.RegionWriter`); ``shape`` is the region's.
    """

    def __new__(cls, spec: str, *args, **kwargs):
        if isinstance(spec, str) and output_format(spec) == "into":
            from emtools.io.regions import RegionWriter

            shape, dtype, meta = (list(args) + [None] * 3)[:3]
            shape = kwargs.get("shape", shape)
            dtype = kwargs.get("dtype", dtype)
            meta = kwargs.get("meta", meta)
            return RegionWriter(spec, shape, dtype, meta)
        return super().__new__(cls)

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
        self._zarr = None
        if self.format == "h5":
            self.dataset = (split_h5_spec(spec)[1] or DEFAULT_DATASET).lstrip("/") or DEFAULT_DATASET
        self.compression = parse_compression(compression)
        self.chunks_zyx = chunks_zyx
        if len(self.shape) not in (3, 4):
            raise EmError(f"cannot write a {len(self.shape)}D array to {spec}; need (z,y,x) or (c,z,y,x)")
        if 0 in self.shape:
            raise EmError(f"refusing to write an empty volume (shape {fmt_shape(self.shape)}) to {spec}")
        if self.dtype == np.bool_:
            self.dtype = np.dtype(np.uint8)
        check_output_path(self.path)
        self._tmp: str | None = None
        if self.format == "zarr":
            from emtools.io.zarrs import ZarrWriter

            self._zarr = ZarrWriter(spec, self.shape, self.dtype, meta, self.compression, chunks_zyx)

    # -- context management: the rename happens only on a clean exit
    def _zarr_step(self, step) -> None:
        """Run a step of the zarr writer; on any failure its temporaries go (OSError: one line)."""
        try:
            step()
        except OSError as error:
            self._zarr.discard()
            raise storage_error(self.path, error) from error
        except BaseException:
            self._zarr.discard()
            raise

    def __enter__(self):
        if self._zarr is not None:
            self._zarr_step(self._zarr.open)
            return self
        _remove_stale_temps(self.path)
        folder, name = os.path.split(os.path.abspath(self.path))
        self._tmp = os.path.join(folder, f".{name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
        try:
            self._open()
        except BaseException:
            self._discard()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._zarr is not None:
            if exc_type is not None:
                self._zarr.discard()
                return False
            self._zarr_step(lambda: (interrupt.check(), self._zarr.publish()))
            return False
        if exc_type is None:
            try:
                interrupt.check()
                self._finish()
                interrupt.check()  # last chance: never rename a result into place after a signal
                os.replace(self._tmp, self.path)
                self._tmp = None
            except (OSError, RuntimeError) as error:
                self._discard(closed=True)
                raise storage_error(self.path, error) from error
            except BaseException:
                self._discard(closed=True)
                raise
        else:
            self._discard()
        return False

    def _discard(self, closed: bool = False) -> None:
        """Drop the temporary file; ``closed`` means a close was tried already and failed."""
        global hdf5_unstable
        try:
            if not closed:
                self._close_handles()
            elif self.format == "h5":
                hdf5_unstable = True  # never close a failed HDF5 file twice: it crashes
        except Exception:
            hdf5_unstable = hdf5_unstable or self.format == "h5"
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
            if name == "gzip" and self.dtype.itemsize > 1:
                kwargs["shuffle"] = True  # bytes regrouped before deflate: smaller and faster (h5chunks)
            self._ds = self._h5.create_dataset(
                self.dataset,
                shape=self.shape,
                dtype=self.dtype,
                chunks=_h5_chunks(self.shape, self.chunks_zyx),
                track_times=False,
                fillvalue=0,
                **kwargs,
            )
            for key, value in meta_to_attrs(self.meta).items():
                self._ds.attrs[key] = value
            self._chunks_written: set = set()
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
            raise EmError(f"internal: data of shape {fmt_shape(data.shape)} for region {box.text()}")
        interrupt.check()
        data = np.asarray(data).astype(self.dtype, copy=False)
        try:
            if self._zarr is not None:
                self._zarr.write(box, data)
            elif self.format == "h5":
                self._h5_write(box, data)
            else:
                self._tiff_write(box, data)
        except (OSError, RuntimeError) as error:  # the storage layer failed (disk full, I/O error)
            raise storage_error(self.path, error) from error

    def _h5_write(self, box: Box, data: np.ndarray) -> None:
        begin = ((0,) if len(self.shape) == 4 else ()) + box.begin
        chunks = self._ds.chunks
        if self.compression[0] == "gzip" and h5chunks.covers_whole_chunks(begin, data.shape, self.shape, chunks):
            h5chunks.write_deflate(self._ds, data, begin, self.compression[1], self._chunks_written)
            return
        sl = tuple(slice(b, e) for b, e in zip(box.begin, box.end))
        self._ds[((slice(None),) + sl) if len(self.shape) == 4 else sl] = data
        self._chunks_written.update(h5chunks.chunk_origins(begin, data.shape, chunks))

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
        kwargs = {"description": tiff_description(self.meta, self.shape)} if self._next_page == 0 else {}
        name, level = self.compression
        if name == "gzip":  # TIFF's deflate is the same codec as HDF5's gzip
            kwargs.update(compression="zlib", compressionargs={"level": level})
        elif name == "lzf":
            raise EmError("lzf compression exists only for HDF5; use gzip or none for TIFF")
        self._tiff.write(page, contiguous=False, metadata=None, software="emtools", **kwargs)

    def _finish(self) -> None:
        if self.format == "h5":
            self._h5.flush()  # a failed flush still lets the file close cleanly, unlike close()
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

def write_volume(spec: str, data: np.ndarray, meta: Metadata, compression: str = "gzip", chunks_zyx=None) -> str:
    """Write a whole array atomically; returns the path written (an ``into:`` spec: the region's spec)."""
    with VolumeWriter(spec, data.shape, data.dtype, meta, compression, chunks_zyx) as writer:
        writer.write(Box.from_shape(data.shape[-3:]), data)
    return writer.path


@contextlib.contextmanager
def atomic_text(path: str) -> Iterator:
    """Open a text file for writing that appears at ``path`` only if the block succeeds."""
    check_output_path(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w") as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary file name beside ``path``, renamed to ``path`` only if the block succeeds.

    For writers that want a file name (Pillow, matplotlib, torch.save, numpy.savez): an interrupted
    or failed write leaves the old file or none, never a partial one; temporaries that killed runs
    left for ``path`` are removed first.
    """
    check_output_path(path)
    _remove_stale_temps(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def write_png(path: str, image: np.ndarray) -> str:
    """Write a (y, x) grey or (y, x, 3) RGB uint8 image as PNG, atomically; returns the path."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise EmError(f"a PNG needs a (y, x) or (y, x, 3) uint8 image, got {image.dtype} {image.shape}")
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


class AllOrNothing:
    """Enter several VolumeWriters; on success rename them all into place, on failure none.

    A writer whose rename fails discards its own temporary; outputs renamed before it are
    removed again, so an input's maps appear together or not at all (``--skip-existing`` then
    redoes the input).
    """

    def __init__(self, writers: list[VolumeWriter]):
        self.writers = writers
        self._entered: list[VolumeWriter] = []

    def __enter__(self) -> list[VolumeWriter]:
        try:
            for writer in self.writers:
                self._entered.append(writer.__enter__())
        except BaseException as exc:
            self._abort(exc, self._entered)
            raise
        return self._entered

    def __exit__(self, exc_type, exc, tb):
        if exc is not None:
            self._abort(exc, self._entered)
            return False
        done: list = []
        for i, writer in enumerate(self._entered):
            try:
                writer.__exit__(None, None, None)
            except BaseException as error:
                for finished in done:
                    _take_back(finished)
                self._abort(error, self._entered[i + 1 :])
                raise
            done.append(writer)
        return False

    @staticmethod
    def _abort(exc: BaseException, writers: list) -> None:
        for writer in writers:
            with contextlib.suppress(OSError):
                writer.__exit__(type(exc), exc, exc.__traceback__)


def _take_back(writer) -> None:
    """Remove what a finished writer of an AllOrNothing group wrote (a file, a zarr array's
    folder, or a region's done marker, so that --skip-existing redoes the region)."""
    from emtools.io.regions import RegionWriter, done_marker

    with contextlib.suppress(OSError):
        if isinstance(writer, RegionWriter):
            os.remove(done_marker(writer.info.folder, writer.region))
        elif os.path.isdir(writer.path):
            shutil.rmtree(writer.path)
        else:
            os.remove(writer.path)
