"""emtools.io.h5chunks: threaded deflate chunk I/O must store and return exactly what h5py would."""

from __future__ import annotations

import hashlib
import zlib

import h5py
import numpy as np
import pytest

from emtools import io
from emtools.errors import EmError
from emtools.io import h5chunks
from emtools.meta import Metadata
from emtools.tiling.geometry import Box


def _meta() -> Metadata:
    return Metadata(voxel_size_nm=(40.0, 4.0, 4.0))


@pytest.fixture(autouse=True)
def _several_threads(monkeypatch):
    """The threaded paths run even on a one-core machine."""
    monkeypatch.setattr(h5chunks, "threads", lambda: 3)


def _dataset(path):
    handle = h5py.File(path, "r")
    return handle, handle[next(iter(handle.keys()))]


@pytest.mark.parametrize("dtype", ["uint8", "uint32", "uint64", "float32", "float16"])
def test_whole_volume_round_trip_and_plain_h5py_reads_it(tmp_path, dtype):
    rng = np.random.default_rng(1)
    data = (rng.random((37, 150, 131)) * 200).astype(dtype)  # edge chunks on every axis
    path = io.write_volume(str(tmp_path / "a.h5"), data, _meta())
    handle, ds = _dataset(path)
    with handle:
        assert ds.compression == "gzip" and ds.compression_opts == 1 and ds.dtype == np.dtype(dtype)
        assert ds.shuffle == (np.dtype(dtype).itemsize > 1)  # bytes regrouped before deflate
        assert np.array_equal(ds[...], data)  # HDF5's own filter inflates our chunks
    assert np.array_equal(io.read_volume(path)[0], data)


def test_channels_round_trip(tmp_path):
    data = np.random.default_rng(2).random((3, 20, 70, 90)).astype(np.float32)
    path = io.write_volume(str(tmp_path / "affs.h5"), data, _meta())
    assert np.array_equal(io.read_volume(path)[0], data)
    handle, ds = _dataset(path)
    with handle:
        assert np.array_equal(ds[...], data)


def test_bytes_do_not_depend_on_thread_count(tmp_path, monkeypatch):
    data = np.random.default_rng(3).integers(0, 9, (40, 200, 150)).astype(np.uint64)
    digests = []
    for count in (1, 3, 8):
        monkeypatch.setattr(h5chunks, "threads", lambda count=count: count)
        path = io.write_volume(str(tmp_path / f"t{count}.h5"), data, _meta())
        with open(path, "rb") as handle:
            digests.append(hashlib.sha256(handle.read()).hexdigest())
    assert len(set(digests)) == 1


def test_all_zero_chunks_are_not_stored_and_read_as_zero(tmp_path):
    labels = np.zeros((64, 256, 256), np.uint64)
    labels[40:50, 130:140, 5:9] = 12  # one chunk of the 2x2x2 grid
    path = io.write_volume(str(tmp_path / "sparse.h5"), labels, _meta())
    handle, ds = _dataset(path)
    with handle:
        assert ds.chunks == (32, 128, 128)
        assert ds.id.get_num_chunks() == 1
        assert np.array_equal(ds[...], labels)
    assert np.array_equal(io.read_volume(path)[0], labels)


def test_zeros_written_over_earlier_data_are_stored(tmp_path):
    """A chunk written before (here through h5py's path, by an unaligned region) must not keep its
    old values when an aligned region of zeros covers it."""
    shape = (40, 140, 140)
    with io.VolumeWriter(str(tmp_path / "w.h5"), shape, np.uint32, _meta()) as writer:
        writer.write(Box((3, 5, 7), (20, 60, 61)), np.full((17, 55, 54), 9, np.uint32))
        writer.write(Box.from_shape(shape), np.zeros(shape, np.uint32))
    assert not io.read_volume(str(tmp_path / "w.h5"))[0].any()


def test_regions_in_pieces_match_one_array(tmp_path):
    """Aligned pieces take the threaded path, unaligned ones h5py's; together they make the array."""
    shape = (40, 300, 260)
    data = np.random.default_rng(4).integers(1, 1000, shape).astype(np.uint64)
    boxes = [Box((0, 0, 0), (32, 128, 260)), Box((0, 128, 0), (32, 300, 100)), Box((0, 128, 100), (32, 300, 260)),
             Box((32, 0, 0), (40, 300, 260))]
    with io.VolumeWriter(str(tmp_path / "p.h5"), shape, np.uint64, _meta()) as writer:
        for box in boxes:
            writer.write(box, data[tuple(slice(b, e) for b, e in zip(box.begin, box.end))])
    assert np.array_equal(io.read_volume(str(tmp_path / "p.h5"))[0], data)


def test_covers_whole_chunks():
    full, chunks = (40, 300, 260), (32, 128, 128)
    assert h5chunks.covers_whole_chunks((0, 0, 0), full, full, chunks)
    assert h5chunks.covers_whole_chunks((32, 128, 256), (8, 172, 4), full, chunks)
    assert not h5chunks.covers_whole_chunks((0, 0, 0), (32, 100, 128), full, chunks)
    assert not h5chunks.covers_whole_chunks((1, 0, 0), (31, 128, 128), full, chunks)
    assert h5chunks.chunk_count((0, 0, 0), full, chunks) == 2 * 3 * 3
    assert h5chunks.chunk_count((31, 127, 0), (2, 2, 1), chunks) == 4


def _h5py_file(path, data, **kwargs):
    with h5py.File(path, "w") as handle:
        handle.create_dataset("x", data=data, **kwargs)
    return f"{path}:/x"


def test_reads_any_region_of_files_h5py_wrote(tmp_path):
    data = np.random.default_rng(5).random((45, 190, 170)).astype(np.float32)
    spec = _h5py_file(str(tmp_path / "h.h5"), data, chunks=(16, 64, 48), compression="gzip", compression_opts=4)
    rng = np.random.default_rng(6)
    with io.open_volume(spec) as source:
        assert source._deflate
        for _ in range(60):
            begin = rng.integers(0, data.shape)
            end = [int(rng.integers(b + 1, s + 1)) for b, s in zip(begin, data.shape)]
            box = Box(tuple(begin), tuple(end))
            assert np.array_equal(source.read(box), data[tuple(slice(b, e) for b, e in zip(begin, end))])


def test_chunks_never_written_read_as_the_fill_value(tmp_path):
    path = str(tmp_path / "f.h5")
    with h5py.File(path, "w") as handle:
        ds = handle.create_dataset("x", shape=(20, 100, 100), dtype=np.int16, chunks=(10, 50, 50),
                                   compression="gzip", fillvalue=-3)
        ds[0:10, 0:50, 0:50] = 5
    values, _ = io.read_volume(f"{path}:/x")
    expected = np.full((20, 100, 100), -3, np.int16)
    expected[0:10, 0:50, 0:50] = 5
    assert np.array_equal(values, expected)


def test_chunk_stored_without_deflate_is_read_raw(tmp_path):
    """Filter mask bit 0: HDF5 skipped deflate for this chunk (it stores such chunks raw)."""
    path = str(tmp_path / "raw.h5")
    block = np.arange(10 * 20 * 20, dtype=np.uint16).reshape(10, 20, 20)
    with h5py.File(path, "w") as handle:
        ds = handle.create_dataset("x", shape=(20, 20, 20), dtype=np.uint16, chunks=(10, 20, 20), compression="gzip")
        ds.id.write_direct_chunk((0, 0, 0), block.tobytes(), 1)
        ds.id.write_direct_chunk((10, 0, 0), zlib.compress((block + 1).tobytes()), 0)
    values, _ = io.read_volume(f"{path}:/x")
    assert np.array_equal(values, np.concatenate([block, block + 1]))


@pytest.mark.parametrize("dtype", ["float32", "uint64", "int16"])
def test_reads_any_region_of_shuffled_files_h5py_wrote(tmp_path, dtype):
    data = (np.random.default_rng(8).random((30, 90, 70)) * 1000).astype(dtype)
    spec = _h5py_file(str(tmp_path / "s.h5"), data, chunks=(16, 32, 48), compression="gzip", shuffle=True)
    rng = np.random.default_rng(9)
    with io.open_volume(spec) as source:
        assert source._deflate
        assert np.array_equal(source.read(), data)
        for _ in range(20):
            begin = rng.integers(0, data.shape)
            end = [int(rng.integers(b + 1, s + 1)) for b, s in zip(begin, data.shape)]
            box = Box(tuple(begin), tuple(end))
            assert np.array_equal(source.read(box), data[tuple(slice(b, e) for b, e in zip(begin, end))])


def test_shuffled_chunks_with_a_filter_skipped_are_read_as_stored(tmp_path):
    """Filter mask with shuffle then deflate: bit 0 = shuffle skipped, bit 1 = deflate skipped."""
    path = str(tmp_path / "mask.h5")
    block = np.arange(5 * 8 * 8, dtype=np.uint32).reshape(5, 8, 8) * 70001
    with h5py.File(path, "w") as handle:
        ds = handle.create_dataset("x", shape=(20, 8, 8), dtype=np.uint32, chunks=(5, 8, 8), compression="gzip",
                                   shuffle=True)
        ds.id.write_direct_chunk((0, 0, 0), zlib.compress(h5chunks.shuffled(block).tobytes()), 0)
        ds.id.write_direct_chunk((5, 0, 0), zlib.compress((block + 1).tobytes()), 1)  # not shuffled
        ds.id.write_direct_chunk((10, 0, 0), h5chunks.shuffled(block + 2).tobytes(), 2)  # not deflated
        ds.id.write_direct_chunk((15, 0, 0), (block + 3).tobytes(), 3)  # neither
    expected = np.concatenate([block, block + 1, block + 2, block + 3])
    assert np.array_equal(io.read_volume(f"{path}:/x")[0], expected)
    with h5py.File(path, "r") as handle:  # as libhdf5 reads them
        assert np.array_equal(handle["x"][...], expected)


def test_shuffle_round_trips_bytes():
    block = np.random.default_rng(10).random((3, 5, 7)).astype(np.float64)
    assert np.array_equal(h5chunks.unshuffled(h5chunks.shuffled(block).tobytes(), block.dtype, block.shape), block)
    assert h5chunks.shuffled(np.array([0x0102], np.uint16)).ravel().tolist() == [0x02, 0x01]  # low bytes first (little end)


@pytest.mark.parametrize("kwargs", [{"compression": "lzf"}, {"compression": "gzip", "shuffle": True,
                                                                 "fletcher32": True}, {"chunks": None},
                                    {"compression": "gzip", "fletcher32": True}])
def test_other_layouts_take_h5py_path(tmp_path, kwargs):
    data = np.random.default_rng(7).integers(0, 100, (20, 70, 90)).astype(np.uint32)
    if kwargs.get("chunks", True) is not None:
        kwargs = {"chunks": (8, 32, 32), **kwargs}
    spec = _h5py_file(str(tmp_path / "o.h5"), data, **kwargs)
    with io.open_volume(spec) as source:
        assert not source._deflate
        assert np.array_equal(source.read(), data)


def test_corrupt_chunk_is_one_clear_error(tmp_path):
    path = str(tmp_path / "bad.h5")
    with h5py.File(path, "w") as handle:
        ds = handle.create_dataset("x", shape=(20, 20, 20), dtype=np.uint8, chunks=(10, 20, 20), compression="gzip")
        ds[...] = 1
        ds.id.write_direct_chunk((10, 0, 0), b"not a zlib stream", 0)
    with pytest.raises(EmError, match="corrupt or truncated"):
        io.read_volume(f"{path}:/x")
    with h5py.File(path, "w") as handle:  # inflates, but to the wrong size
        ds = handle.create_dataset("x", shape=(20, 20, 20), dtype=np.uint8, chunks=(10, 20, 20), compression="gzip")
        ds.id.write_direct_chunk((0, 0, 0), zlib.compress(b"\0" * 100), 0)
        ds.id.write_direct_chunk((10, 0, 0), zlib.compress(b"\0" * 4000), 0)
    with pytest.raises(EmError, match="corrupt or truncated"):
        io.read_volume(f"{path}:/x")
