"""HDF5 chunk I/O with the deflate (gzip) filter run on several threads.

h5py compresses and decompresses one chunk after another on one core. zlib releases the GIL,
so this module runs zlib on the chunks in a thread pool while the main thread moves the stored
bytes with ``write_direct_chunk`` / ``read_direct_chunk`` (h5py itself is called from one
thread only). The bytes are
what HDF5's own deflate filter writes: a zlib stream of the whole chunk, edge chunks padded with
the fill value (0). Any HDF5 reader reads them. Chunks that are all fill value and were never
written are not stored at all: HDF5 reads an unallocated chunk as the fill value, and sparse
label volumes (mitochondria, synapses) shrink and write faster.

Writes go this way only for regions that cover whole chunks (a whole-volume write always
does); reads for any region of a dataset whose one filter is deflate. Everything else takes
h5py's own path.
"""

from __future__ import annotations

import collections
import itertools
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from emtools import interrupt
from emtools.cpus import usable_cpus

DEFLATE = 1  # HDF5's filter id (H5Z_FILTER_DEFLATE)


def threads() -> int:
    """Compression threads: the CPUs this process may use (at most usable_cpus' cap, 8)."""
    return usable_cpus()


def covers_whole_chunks(begin: Sequence[int], shape: Sequence[int], full_shape: Sequence[int],
                        chunks: Sequence[int]) -> bool:
    """Whether the region ``begin`` + ``shape`` of a dataset is a union of whole chunks (edge chunks
    count as whole when the region reaches the dataset's end)."""
    for b, n, full, c in zip(begin, shape, full_shape, chunks):
        end = b + n
        if b % c or (end % c and end != full):
            return False
    return True


def chunk_origins(begin: Sequence[int], shape: Sequence[int], chunks: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Dataset coordinates of the first voxel of every chunk the region touches, in C order."""
    return itertools.product(*_chunk_ranges(begin, shape, chunks))


def chunk_count(begin: Sequence[int], shape: Sequence[int], chunks: Sequence[int]) -> int:
    """How many chunks the region touches."""
    return int(np.prod([len(axis) for axis in _chunk_ranges(begin, shape, chunks)]))


def _chunk_ranges(begin: Sequence[int], shape: Sequence[int], chunks: Sequence[int]) -> list[range]:
    return [range(b - b % c, b + n, c) for b, n, c in zip(begin, shape, chunks)]


def write_deflate(dataset, data: np.ndarray, begin: Sequence[int], level: int, written: set) -> None:
    """Store ``data`` at ``begin`` (dataset coordinates, every axis) of a chunked gzip dataset.

    The region must cover whole chunks (:func:`covers_whole_chunks`). ``written`` holds the
    origins of chunks stored before; an all-zero chunk is skipped unless it is in there (it
    would otherwise keep its old values). Chunks are stored in C order, so the file's bytes do
    not depend on the number of threads.
    """
    chunks = tuple(dataset.chunks)
    begin = tuple(int(b) for b in begin)

    def encode(origin: tuple[int, ...]) -> tuple[tuple[int, ...], bytes | None]:
        local = tuple(slice(o - b, o - b + c) for o, b, c in zip(origin, begin, chunks))
        block = data[local]
        if not block.any() and origin not in written:
            return origin, None
        if block.shape != chunks:
            padded = np.zeros(chunks, dtype=data.dtype)
            padded[tuple(slice(0, n) for n in block.shape)] = block
            block = padded
        return origin, zlib.compress(np.ascontiguousarray(block), level)

    def store(stored_at: tuple[int, ...], payload: bytes | None) -> None:
        interrupt.check()
        if payload is not None:
            dataset.id.write_direct_chunk(stored_at, payload, 0)
            written.add(stored_at)

    workers = threads()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque = collections.deque()
        for origin in chunk_origins(begin, data.shape, chunks):
            pending.append(pool.submit(encode, origin))
            while len(pending) >= 4 * workers:  # bounded: compressed chunks wait in order
                store(*pending.popleft().result())
        while pending:
            store(*pending.popleft().result())


def deflate_only(dataset) -> bool:
    """Whether ``dataset`` is chunked, numeric and filtered by deflate alone (what we write)."""
    if dataset.chunks is None or dataset.is_virtual or dataset.dtype.kind not in "biuf":
        return False
    plist = dataset.id.get_create_plist()
    return plist.get_nfilters() == 1 and plist.get_filter(0)[0] == DEFLATE


def read_deflate(dataset, begin: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """The region ``begin`` + ``shape`` (dataset coordinates, every axis) of a :func:`deflate_only`
    dataset; chunks never stored read as the fill value, as HDF5 reads them."""
    chunks = tuple(dataset.chunks)
    dtype = dataset.dtype
    begin = tuple(int(b) for b in begin)
    shape = tuple(int(n) for n in shape)
    out = np.empty(shape, dtype=dtype)
    chunk_bytes = int(np.prod(chunks)) * dtype.itemsize

    def overlap(origin: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """(slices into the chunk, slices into ``out``) of the chunk's part inside the region."""
        inner, outer = [], []
        for o, c, b, n in zip(origin, chunks, begin, shape):
            lo, hi = max(o, b), min(o + c, b + n)
            inner.append(slice(lo - o, hi - o))
            outer.append(slice(lo - b, hi - b))
        return tuple(inner), tuple(outer)

    def decode(origin: tuple[int, ...], mask: int, payload: bytes) -> None:
        try:
            raw = payload if mask & 1 else zlib.decompress(payload)  # bit 0 set: deflate was skipped
        except zlib.error as error:
            raise ValueError(f"chunk at {origin} does not inflate ({error})") from None
        if len(raw) != chunk_bytes:
            raise ValueError(f"chunk at {origin} holds {len(raw)} bytes, not {chunk_bytes}")
        inner, outer = overlap(origin)
        out[outer] = np.frombuffer(raw, dtype=dtype).reshape(chunks)[inner]

    workers = threads()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque = collections.deque()
        for origin in chunk_origins(begin, shape, chunks):
            if dataset.id.get_chunk_info_by_coord(origin).byte_offset is None:
                out[overlap(origin)[1]] = dataset.fillvalue
                continue
            mask, payload = dataset.id.read_direct_chunk(origin)
            pending.append(pool.submit(decode, origin, mask, payload))
            while len(pending) >= 4 * workers:
                pending.popleft().result()
        while pending:
            pending.popleft().result()
    return out
