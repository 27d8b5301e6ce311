import errno
import hashlib
import os

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from emtools import io
from emtools.errors import EmError
from emtools.meta import Metadata
from emtools.tiling.geometry import Box

META = Metadata(
    offset_nm=(100.0, 8.0, -4.0),
    voxel_size_nm=(50.0, 4.0, 4.0),
    provenance=({"tool": "test", "params": {"a": [1, 2]}},),
    attrs={"affinity_offsets": [[-1, 0, 0], [0, -1, 0]], "read_begin_vx": [2, 2, -1], "note": "x"},
)
DTYPES = [np.uint8, np.uint16, np.int32, np.uint64, np.float32, np.float16]


def _random(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.floating):
        return rng.random(shape).astype(dtype)
    return rng.integers(0, min(np.iinfo(dtype).max, 10**6), shape).astype(dtype)


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", ["v.h5:/group/data", "v.hdf5", "v.tif"])
def test_round_trip_values_and_metadata(tmp_path, spec, dtype):
    data = _random((4, 9, 11), dtype)
    target = str(tmp_path / spec)
    io.write_volume(target, data, META)
    back, meta = io.read_volume(target)
    assert back.dtype == data.dtype
    np.testing.assert_array_equal(back, data)
    assert meta == META


@pytest.mark.parametrize("spec", ["m.h5:/aff", "m.tif"])
def test_multichannel_round_trip_and_region_reads(tmp_path, spec):
    data = _random((3, 5, 6, 7), np.float32)
    meta = META.replace(axes="czyx")
    target = str(tmp_path / spec)
    io.write_volume(target, data, meta)
    with io.open_volume(target) as source:
        assert source.shape == (3, 5, 6, 7) and source.meta.axes == "czyx" and source.shape_zyx == (5, 6, 7)
        box = Box((1, 2, 3), (4, 6, 5))
        np.testing.assert_array_equal(source.read(box), data[:, 1:4, 2:6, 3:5])


@pytest.mark.parametrize("spec", ["r.h5", "r.tif"])
def test_partial_reads(tmp_path, spec):
    data = _random((6, 10, 12), np.uint16)
    target = str(tmp_path / spec)
    io.write_volume(target, data, Metadata())
    with io.open_volume(target) as source:
        for box in [Box((0, 0, 0), (1, 1, 1)), Box((2, 3, 4), (6, 10, 12)), Box((5, 0, 7), (6, 10, 8))]:
            np.testing.assert_array_equal(source.read(box), data[Box((0, 0, 0), data.shape).local(box)])
        with pytest.raises(EmError, match="outside"):
            source.read(Box((0, 0, 0), (7, 10, 12)))


def test_box_is_in_global_voxels(tmp_path):
    io.write_volume(str(tmp_path / "a.h5"), np.zeros((2, 3, 4), np.uint8), META)
    with io.open_volume(str(tmp_path / "a.h5")) as source:
        assert source.box == Box((2, 2, -1), (4, 5, 3))


@pytest.mark.parametrize("spec", ["d.h5", "d.tif"])
def test_writes_are_deterministic(tmp_path, spec):
    data = _random((5, 16, 16), np.float32)
    a, b = str(tmp_path / ("1" + spec)), str(tmp_path / ("2" + spec))
    io.write_volume(a, data, META)
    os.utime(tmp_path, (1, 1))
    io.write_volume(b, data, META)
    assert _digest(a) == _digest(b)


@pytest.mark.parametrize("compression", ["gzip", "gzip:9", "lzf", "none"])
def test_hdf5_compression_and_chunking(tmp_path, compression):
    data = _random((40, 200, 150), np.uint8)
    target = str(tmp_path / "c.h5")
    io.write_volume(target, data, Metadata(), compression=compression)
    with h5py.File(target, "r") as f:
        ds = f["main"]
        assert ds.compression == (None if compression == "none" else compression.split(":")[0])
        assert ds.chunks == (32, 128, 128)
        np.testing.assert_array_equal(ds[:], data)


def test_bad_compression():
    with pytest.raises(EmError, match="unknown compression"):
        io.parse_compression("zstd")
    with pytest.raises(EmError, match="level"):
        io.parse_compression("gzip:12")


def test_aliases_on_read(tmp_path):
    path = str(tmp_path / "foreign.h5")
    with h5py.File(path, "w") as f:
        f["raw"] = np.zeros((2, 3, 4), np.uint8)
        f["raw"].attrs["resolution"] = [40, 4, 4]
        f["raw"].attrs["offset"] = [80, 0, 0]
        f["ilastik"] = np.zeros((2, 3, 4), np.uint8)
        f["ilastik"].attrs["element_size_um"] = [0.04, 0.008, 0.008]
    meta = io.open_volume(path + ":/raw").meta
    assert meta.voxel_size_nm == (40, 4, 4) and meta.offset_nm == (80, 0, 0) and meta.attrs == {}
    np.testing.assert_allclose(io.open_volume(path + ":ilastik").meta.voxel_size_nm, (40, 8, 8))


def test_overrides_and_defaults(tmp_path):
    path = str(tmp_path / "plain.h5")
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((2, 3, 4), np.uint8)
    assert io.open_volume(path).meta == Metadata()
    meta = io.open_volume(path, voxel_size_nm=(30, 6, 6), offset_nm=(60, 0, 6)).meta
    assert meta.voxel_size_nm == (30, 6, 6) and meta.offset_nm == (60, 0, 6)


def _write_slices(folder, names, shape=(8, 9), dtype=np.uint8):
    folder.mkdir(exist_ok=True)
    arrays = []
    for i, name in enumerate(names):
        arr = np.full(shape, i, dtype=dtype)
        if name.endswith(".png"):
            Image.fromarray(arr).save(folder / name)
        else:
            tifffile.imwrite(folder / name, arr)
        arrays.append(arr)
    return arrays


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_slice_folder_in_natural_order(tmp_path, ext):
    names = [f"{i}{ext}" for i in (10, 2, 1, 0, 11)]
    _write_slices(tmp_path / "s", names)
    data, meta = io.read_volume(str(tmp_path / "s"))
    # natural order 0,1,2,10,11 -> the values written for those names
    assert [int(data[z, 0, 0]) for z in range(5)] == [3, 2, 1, 0, 4]
    glob_data, _ = io.read_volume(str(tmp_path / "s" / f"*{ext}"))
    np.testing.assert_array_equal(glob_data, data)
    assert meta == Metadata()


def test_slice_folder_of_16_bit_png(tmp_path):
    _write_slices(tmp_path / "s", ["a1.png", "a2.png"], dtype=np.uint16)
    data, _ = io.read_volume(str(tmp_path / "s"))
    assert data.dtype == np.uint16 and data.shape == (2, 8, 9)


def test_slice_folder_mixing_1_bit_and_8_bit_png_reads_as_uint8(tmp_path):
    # as the Drosophila VNC masks are published: most slices 8-bit 0/255, a few 1-bit
    (tmp_path / "m").mkdir()
    mask = np.zeros((4, 5), bool)
    mask[1:3, 2:4] = True
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m" / "0.png")
    Image.fromarray(mask).save(tmp_path / "m" / "1.png")
    assert Image.open(tmp_path / "m" / "1.png").mode == "1"
    data, _ = io.read_volume(str(tmp_path / "m"))
    assert data.dtype == np.uint8
    np.testing.assert_array_equal(data, np.stack([mask, mask]).astype(np.uint8) * 255)
    (tmp_path / "b").mkdir()
    Image.fromarray(mask).save(tmp_path / "b" / "0.png")
    assert io.read_volume(str(tmp_path / "b"))[0].dtype == bool  # an all-1-bit stack stays bool
    Image.fromarray(np.zeros((4, 5), np.uint16)).save(tmp_path / "b" / "1.png")
    with pytest.raises(EmError, match="slice sizes differ: 0.png is 4x5 bool but .*1.png is 4x5 uint16"):
        io.open_volume(str(tmp_path / "b"))


def test_slice_folder_errors(tmp_path):
    _write_slices(tmp_path / "s", ["0.png", "1.png"])
    Image.fromarray(np.zeros((5, 9), np.uint8)).save(tmp_path / "s" / "2.png")
    with pytest.raises(EmError, match=r"slice sizes differ: 0.png is 8x9 uint8 but .*2.png is 5x9 uint8"):
        io.open_volume(str(tmp_path / "s"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmError, match="no .png or .tif slices in folder"):
        io.open_volume(str(tmp_path / "empty"))
    with pytest.raises(EmError, match="no .png or .tif slices match"):
        io.open_volume(str(tmp_path / "empty" / "*.png"))
    _write_slices(tmp_path / "mixed", ["0.png", "1.tif"])
    with pytest.raises(EmError, match="mixes .png and .tif"):
        io.open_volume(str(tmp_path / "mixed"))
    (tmp_path / "rgb").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb" / "0.png")
    with pytest.raises(EmError, match="RGB image; only grayscale"):
        io.open_volume(str(tmp_path / "rgb"))


def test_open_errors(tmp_path):
    with pytest.raises(EmError, match="no such file: .*missing.h5"):
        io.open_volume(str(tmp_path / "missing.h5:/x"))
    with pytest.raises(EmError, match="no such file or folder"):
        io.open_volume(str(tmp_path / "nothing"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(EmError, match="cannot tell the format"):
        io.open_volume(str(tmp_path / "notes.txt"))
    (tmp_path / "fake.h5").write_text("not hdf5 at all")
    with pytest.raises(EmError, match="not an HDF5 file"):
        io.open_volume(str(tmp_path / "fake.h5"))
    (tmp_path / "fake.tif").write_bytes(b"\x00" * 64)
    with pytest.raises(EmError, match="not a TIFF file"):
        io.open_volume(str(tmp_path / "fake.tif"))
    path = str(tmp_path / "two.h5")
    with h5py.File(path, "w") as f:
        f["a/x"] = np.zeros((2, 2, 2))
        f["b"] = np.zeros((2, 2, 2))
        f["flat"] = np.zeros((4, 4))
        f["empty"] = np.zeros((0, 4, 4))
    with pytest.raises(EmError, match=r"no dataset /c in .*two.h5 \(datasets: /a/x, /b, /empty, /flat\)"):
        io.open_volume(path + ":/c")
    with pytest.raises(EmError, match="holds 4 datasets"):
        io.open_volume(path)
    with pytest.raises(EmError, match=r"is 2D \(shape 4x4\); a 3D volume"):
        io.open_volume(path + ":/flat")
    with pytest.raises(EmError, match=r"is empty \(shape 0x4x4\)"):
        io.open_volume(path + ":/empty")
    tifffile.imwrite(tmp_path / "single.tif", np.zeros((5, 6), np.uint8))
    with pytest.raises(EmError, match="2D image"):
        io.open_volume(str(tmp_path / "single.tif"))


def test_truncated_hdf5(tmp_path):
    path = tmp_path / "t.h5"
    io.write_volume(str(path), _random((20, 64, 64), np.float32), Metadata(), compression="none")
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(EmError, match="corrupt|truncated"):
        with io.open_volume(str(path)) as source:
            source.read()


def test_output_path_checks(tmp_path):
    with pytest.raises(EmError, match="output folder does not exist"):
        io.write_volume(str(tmp_path / "no" / "x.h5"), np.zeros((1, 1, 1), np.uint8), Metadata())
    (tmp_path / "file").write_text("x")
    with pytest.raises(EmError, match="not a folder"):
        io.write_volume(str(tmp_path / "file" / "x.h5"), np.zeros((1, 1, 1), np.uint8), Metadata())
    with pytest.raises(EmError, match="output must be"):
        io.write_volume(str(tmp_path / "x.n5"), np.zeros((1, 1, 1), np.uint8), Metadata())
    with pytest.raises(EmError, match="empty volume"):
        io.write_volume(str(tmp_path / "x.h5"), np.zeros((0, 1, 1), np.uint8), Metadata())
    assert sorted(os.listdir(tmp_path)) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere; permission bits cannot be tested as root")
def test_unwritable_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    with pytest.raises(EmError, match="not writable"):
        io.write_volume(str(folder / "x.h5"), np.zeros((1, 1, 1), np.uint8), Metadata())


def test_failed_write_leaves_old_output_and_no_temp(tmp_path):
    target = tmp_path / "out.h5"
    io.write_volume(str(target), np.ones((2, 4, 4), np.uint8), Metadata())
    before = _digest(target)
    with pytest.raises(RuntimeError):
        with io.VolumeWriter(str(target), (2, 4, 4), np.uint8, Metadata()) as writer:
            writer.write(Box((0, 0, 0), (1, 4, 4)), np.zeros((1, 4, 4), np.uint8))
            raise RuntimeError("crash mid-write")
    assert _digest(target) == before
    assert os.listdir(tmp_path) == ["out.h5"]


@pytest.mark.parametrize("spec", ["full.h5", "full.tif"])
def test_disk_full_while_writing(tmp_path, monkeypatch, spec):
    """ENOSPC from the storage layer: one clear error, no output, no temporary file."""
    import h5py as h5

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(h5.Dataset, "__setitem__", no_space)
    monkeypatch.setattr(io.h5chunks, "write_deflate", no_space)  # whole-chunk regions go there
    monkeypatch.setattr(tifffile.TiffWriter, "write", no_space)
    with pytest.raises(EmError, match=f"cannot write .*{spec}: no space left on device"):
        io.write_volume(str(tmp_path / spec), np.ones((3, 4, 4), np.uint8), Metadata())
    assert os.listdir(tmp_path) == []


def test_stale_temporaries_of_killed_runs_are_removed(tmp_path):
    stale = tmp_path / f".out.h5{io.specs.TMP_MARK}999999999-abcd"
    stale.write_text("half-written by a killed run")
    alive = tmp_path / f".out.h5{io.specs.TMP_MARK}{os.getpid()}-abcd"
    alive.write_text("belongs to a running process")
    io.write_volume(str(tmp_path / "out.h5"), np.ones((1, 2, 2), np.uint8), Metadata())
    assert not stale.exists() and alive.exists()


def test_tiff_writer_in_any_region_order(tmp_path):
    data = _random((4, 6, 8), np.uint8)
    boxes = [Box((z, y, x), (z + 2, y + 3, x + 4)) for z in (2, 0) for y in (3, 0) for x in (4, 0)]
    with io.VolumeWriter(str(tmp_path / "o.tif"), data.shape, data.dtype, Metadata()) as writer:
        for box in boxes:
            writer.write(box, data[tuple(slice(b, e) for b, e in zip(box.begin, box.end))])
    np.testing.assert_array_equal(io.read_volume(str(tmp_path / "o.tif"))[0], data)
    assert tifffile.imread(tmp_path / "o.tif").shape == data.shape  # other readers see one stack


def test_inputs_are_opened_read_only(tmp_path):
    path = tmp_path / "in.h5"
    io.write_volume(str(path), np.ones((2, 2, 2), np.uint8), Metadata())
    path.chmod(0o444)
    before = _digest(path)
    with io.open_volume(str(path)) as source:
        source.read()
    assert _digest(path) == before


def test_atomic_text(tmp_path):
    with io.atomic_text(str(tmp_path / "t.csv")) as handle:
        handle.write("a,b\n")
    assert (tmp_path / "t.csv").read_text() == "a,b\n"
    with pytest.raises(ValueError):
        with io.atomic_text(str(tmp_path / "u.csv")) as handle:
            handle.write("partial")
            raise ValueError
    assert sorted(os.listdir(tmp_path)) == ["t.csv"]
