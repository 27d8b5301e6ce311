"""Library-level split/merge: exact round trips, blending, holes, fill, multichannel."""

import os

import numpy as np
import pytest

from emtools import io
from emtools.errors import EmError
from emtools.meta import Metadata
from emtools.tiling.chunk_files import CHUNK_ATTRS, inspect_chunks, merge_chunks, split_volume


def _writer_factory(spec):
    def make(volume_box, dtype, channels, meta):
        shape = ((channels,) if channels else ()) + volume_box.shape
        return io.VolumeWriter(spec, shape, dtype, meta)

    return make


def _split(tmp_path, data, meta, chunk, halo, fmt="h5", name="in.h5"):
    src = str(tmp_path / name)
    io.write_volume(src, data, meta)
    out = tmp_path / "chunks"
    out.mkdir(exist_ok=True)
    with io.open_volume(src) as source:
        return list(split_volume(source, str(out), chunk, halo, fmt=fmt))


@pytest.mark.parametrize("fmt", ["h5", "tif"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint64, np.float32])
def test_split_merge_round_trip_is_exact(tmp_path, fmt, dtype):
    rng = np.random.default_rng(1)
    data = (rng.random((11, 23, 17)) * 200).astype(dtype)
    meta = Metadata(offset_nm=(40, 8, 12), voxel_size_nm=(40, 4, 4), attrs={"kept": "yes"})
    paths = _split(tmp_path, data, meta, (4, 8, 6), (1, 3, 2), fmt=fmt)
    assert len(paths) == 3 * 3 * 3
    for blend in (["auto", "none", "linear", "gaussian"] if dtype == np.float32 else ["auto", "none"]):
        out = str(tmp_path / f"merged-{blend}.h5")
        merge_chunks(inspect_chunks(paths), _writer_factory(out), blend=blend)
        back, back_meta = io.read_volume(out)
        np.testing.assert_array_equal(back, data)
        assert back_meta.offset_nm == meta.offset_nm and back_meta.voxel_size_nm == meta.voxel_size_nm
        assert back_meta.attrs == {"kept": "yes"}


def test_chunk_files_carry_their_regions(tmp_path):
    data = np.arange(6 * 8 * 10, dtype=np.uint16).reshape(6, 8, 10)
    meta = Metadata(offset_nm=(80, 0, 0), voxel_size_nm=(40, 4, 4))
    paths = _split(tmp_path, data, meta, (3, 8, 5), (1, 0, 2))
    names = sorted(os.path.basename(p) for p in paths)
    assert names[0] == "chunk_2-6_0-8_0-7.h5"  # global voxel box of the data (offset 80 nm = 2 voxels)
    chunk, chunk_meta = io.read_volume(str(tmp_path / "chunks" / "chunk_2-6_0-8_3-10.h5"))
    attrs = chunk_meta.attrs
    assert attrs["read_begin_vx"] == [2, 0, 3] and attrs["read_end_vx"] == [6, 8, 10]
    assert attrs["responsible_begin_vx"] == [2, 0, 5] and attrs["responsible_end_vx"] == [5, 8, 10]
    assert attrs["volume_begin_vx"] == [2, 0, 0] and attrs["volume_end_vx"] == [8, 8, 10]
    assert chunk_meta.offset_nm == (80.0, 0.0, 12.0)
    np.testing.assert_array_equal(chunk, data[0:4, :, 3:10])
    assert set(CHUNK_ATTRS) <= set(attrs)


def test_merge_refuses_holes_unless_filled(tmp_path):
    data = np.ones((4, 8, 8), np.uint32)
    paths = _split(tmp_path, data, Metadata(), (4, 4, 4), (0, 1, 1))
    partial = [p for p in paths if "_0-5_0-5" not in p]
    with pytest.raises(EmError, match=r"chunks leave holes: 64 voxels of 0:4,0:8,0:8 .*first gap 0:4,0:4,0:4"):
        merge_chunks(inspect_chunks(partial), _writer_factory(str(tmp_path / "m.h5")))
    assert not (tmp_path / "m.h5").exists()
    merge_chunks(inspect_chunks(partial), _writer_factory(str(tmp_path / "m.h5")), fill=7)
    back, _ = io.read_volume(str(tmp_path / "m.h5"))
    assert (back[:, :4, :4] == 7).all() and (back[:, 4:, :] == 1).all() and (back[:, :, 4:] == 1).all()


def test_blended_merge_of_float_maps_uses_neighbours_halo(tmp_path):
    data = np.zeros((4, 8, 8), np.float32)
    paths = _split(tmp_path, data, Metadata(), (4, 4, 4), (0, 2, 2))
    # Pretend a model predicted 1.0 in the chunk at x >= 4 and 0.0 elsewhere: blended values
    # ramp across the 4-voxel overlap instead of jumping at the chunk face.
    for p in paths:
        arr, meta = io.read_volume(p)
        if meta.attrs["responsible_begin_vx"][2] == 4:
            io.write_volume(p, np.ones_like(arr), meta)
    out = str(tmp_path / "b.h5")
    merge_chunks(inspect_chunks(paths), _writer_factory(out), blend="linear")
    row = io.read_volume(out)[0][0, 0]
    np.testing.assert_allclose(row, [0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1], atol=1e-6)
    cropped = str(tmp_path / "c.h5")
    merge_chunks(inspect_chunks(paths), _writer_factory(cropped), blend="none")
    np.testing.assert_array_equal(io.read_volume(cropped)[0][0, 0], [0, 0, 0, 0, 1, 1, 1, 1])


def test_multichannel_chunks(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.random((3, 6, 10, 10)).astype(np.float32)
    paths = _split(tmp_path, data, Metadata(axes="czyx"), (3, 5, 5), (1, 2, 2), fmt="tif", name="aff.h5")
    out = str(tmp_path / "m.tif")
    merge_chunks(inspect_chunks(paths), _writer_factory(out))
    back, meta = io.read_volume(out)
    assert meta.axes == "czyx"
    np.testing.assert_array_equal(back, data)


def test_inconsistent_chunks_are_refused(tmp_path):
    a = str(tmp_path / "a.h5")
    b = str(tmp_path / "b.h5")
    io.write_volume(a, np.zeros((2, 2, 2), np.uint8), Metadata(voxel_size_nm=(40, 4, 4)))
    io.write_volume(b, np.zeros((2, 2, 2), np.uint8), Metadata(voxel_size_nm=(40, 8, 8), offset_nm=(80, 0, 0)))
    with pytest.raises(EmError, match="voxel sizes differ"):
        inspect_chunks([a, b])
    io.write_volume(b, np.zeros((2, 2, 2), np.uint16), Metadata(voxel_size_nm=(40, 4, 4), offset_nm=(80, 0, 0)))
    with pytest.raises(EmError, match="data types differ"):
        inspect_chunks([a, b])
    io.write_volume(b, np.zeros((2, 2, 2), np.uint8), Metadata(voxel_size_nm=(40, 4, 4), offset_nm=(40, 0, 0)))
    with pytest.raises(EmError, match="responsible regions 0:2,0:2,0:2 and 1:3,0:2,0:2 overlap"):
        merge_chunks(inspect_chunks([a, b]), _writer_factory(str(tmp_path / "m.h5")))
    with pytest.raises(EmError, match="needs float chunks"):
        merge_chunks(inspect_chunks([a]), _writer_factory(str(tmp_path / "m.h5")), blend="linear")
    with pytest.raises(EmError, match="no chunk files"):
        inspect_chunks([])


def test_plain_volumes_without_chunk_metadata_merge_by_offset(tmp_path):
    a, b = str(tmp_path / "a.h5"), str(tmp_path / "b.h5")
    io.write_volume(a, np.full((2, 3, 3), 1, np.uint8), Metadata())
    io.write_volume(b, np.full((2, 3, 3), 2, np.uint8), Metadata(offset_nm=(2, 0, 0)))
    out = str(tmp_path / "m.h5")
    merge_chunks(inspect_chunks([b, a]), _writer_factory(out))
    back, _ = io.read_volume(out)
    assert back.shape == (4, 3, 3) and (back[:2] == 1).all() and (back[2:] == 2).all()


def test_split_skip_existing_keeps_valid_files_and_redoes_broken_ones(tmp_path):
    data = np.arange(4 * 4 * 4, dtype=np.uint8).reshape(4, 4, 4)
    paths = _split(tmp_path, data, Metadata(), (2, 4, 4), (0, 0, 0))
    first, second = paths
    mtime = os.path.getmtime(first)
    with open(second, "w") as handle:
        handle.write("broken")
    with io.open_volume(str(tmp_path / "in.h5")) as source:
        again = list(split_volume(source, str(tmp_path / "chunks"), (2, 4, 4), (0, 0, 0), skip_existing=True))
    assert again == paths and os.path.getmtime(first) == mtime
    np.testing.assert_array_equal(io.read_volume(second)[0], data[2:])
