"""Zarr volume specs in emtools.io: round trips with metadata, OME-Zarr metadata, zarr v2 and
foreign stores, region specs read as chunks, atomic whole-array writes, and region writes into
an existing array (claims, alignment, done markers) with their one-line errors."""

import json
import os

import numpy as np
import pytest

from emtools import io
from emtools.errors import EmError
from emtools.io import regions, specs, zarrs
from emtools.meta import Metadata
from emtools.tiling.geometry import Box

zarr = pytest.importorskip("zarr")

META = Metadata(offset_nm=(80.0, 12.0, 8.0), voxel_size_nm=(40.0, 4.0, 4.0),
                provenance=({"tool": "test", "params": {"a": [1, 2]}},), attrs={"head": "boundary", "n": 3,
                                                                                 "nested": {"k": [0.5, None]}})


def _json(path):
    with open(path) as handle:
        return json.load(handle)


def test_specs_parse_stores_regions_and_outputs():
    assert specs.split_zarr_spec("a/s.zarr/g/raw") == ("a/s.zarr", "g/raw")
    assert specs.split_zarr_spec("s.ZARR/") == ("s.ZARR", "")
    assert specs.split_zarr_spec("a/s.zarrx/raw") is None and specs.split_zarr_spec("x.h5") is None
    base, box, halo = specs.split_region("s.zarr/raw[64:128, 0:256,0:256]+8,32,32")
    assert (base, box, halo) == ("s.zarr/raw", Box((64, 0, 0), (128, 256, 256)), (8, 32, 32))
    assert specs.split_region("f.h5:/x[0:1,0:2,0:3]+4")[2] == (4, 4, 4)
    assert specs.split_region("slices/img[0-9].png") == ("slices/img[0-9].png", None, (0, 0, 0))  # a glob
    assert specs.region_spec("s.zarr/raw", box, (8, 32, 32)) == "s.zarr/raw[64:128,0:256,0:256]+8,32,32"
    assert specs.region_spec("s.zarr/raw", box, (4, 4, 4)) == "s.zarr/raw[64:128,0:256,0:256]+4"
    with pytest.raises(EmError, match="empty region"):
        specs.split_region("s.zarr/raw[5:5,0:1,0:1]")
    assert io.output_format("s.zarr/raw") == "zarr" and io.output_file("s.zarr") == "s.zarr/main"
    assert io.output_format("into:s.zarr/raw[0:1,0:1,0:1]") == "into"
    assert io.output_file("into:s.zarr/raw[0:1,0:1,0:1]") == "s.zarr/raw[0:1,0:1,0:1]"
    with pytest.raises(EmError, match="a region is not an output; .* use --into ARRAY"):
        io.output_format("s.zarr/raw[0:1,0:1,0:1]")
    with pytest.raises(EmError, match="store.zarr"):
        io.output_format("out.n5")


@pytest.mark.parametrize("shape,dtype,axes", [((10, 20, 30), np.uint16, "zyx"), ((3, 6, 20, 24), np.float32, "czyx")])
def test_round_trip_keeps_metadata_and_writes_ome_zarr(tmp_path, shape, dtype, axes):
    data = (np.random.default_rng(0).random(shape) * 1000).astype(dtype)
    meta = META.replace(axes=axes)
    store = tmp_path / "s.zarr"
    assert io.write_volume(f"{store}/g/raw", data, meta, chunks_zyx=(4, 8, 8)) == f"{store}/g/raw"
    back, got = io.read_volume(f"{store}/g/raw")
    np.testing.assert_array_equal(back, data)
    assert back.dtype == dtype
    assert got == meta
    assert io.read_volume(str(store))[1] == meta  # the store's only array
    node = _json(store / "g" / "raw" / "zarr.json")
    assert node["zarr_format"] == 3 and node["node_type"] == "array"
    assert node["dimension_names"] == (["c"] if axes == "czyx" else []) + ["z", "y", "x"]
    assert node["chunk_grid"]["configuration"]["chunk_shape"] == ([3] if axes == "czyx" else []) + [4, 8, 8]
    assert node["attributes"]["offset_nm"] == [80.0, 12.0, 8.0] and node["attributes"]["provenance"] == list(
        meta.provenance)
    assert _json(store / "zarr.json")["node_type"] == "group"
    ome = _json(store / "g" / "zarr.json")["attributes"]["ome"]
    assert ome["version"] == "0.5"
    (entry,) = ome["multiscales"]
    lead = [1.0] if axes == "czyx" else []
    assert [a["name"] for a in entry["axes"]] == (["c"] if axes == "czyx" else []) + ["z", "y", "x"]
    assert all(a["unit"] == "nanometer" for a in entry["axes"] if a["type"] == "space")
    (dataset,) = entry["datasets"]
    assert dataset["path"] == "raw"
    assert dataset["coordinateTransformations"] == [
        {"type": "scale", "scale": lead + [40.0, 4.0, 4.0]},
        {"type": "translation", "translation": [0.0] * len(lead) + [80.0, 12.0, 8.0]},
    ]
    # zarr itself reads what we wrote
    opened = zarr.open_array(store=str(store), path="g/raw", mode="r")
    np.testing.assert_array_equal(opened[...], data)


def test_rewriting_replaces_the_array_and_keeps_its_siblings(tmp_path):
    store = tmp_path / "s.zarr"
    io.write_volume(f"{store}/raw", np.ones((4, 8, 8), np.uint8), META)
    io.write_volume(f"{store}/seg", np.full((4, 8, 8), 7, np.uint64), META.replace(offset_nm=(0, 0, 0)))
    io.write_volume(f"{store}/raw", np.full((2, 8, 8), 5, np.uint8), META)  # replaced whole, new shape
    assert io.read_volume(f"{store}/raw")[0].shape == (2, 8, 8)
    assert (io.read_volume(f"{store}/seg")[0] == 7).all()
    names = [e["name"] for e in _json(store / "zarr.json")["attributes"]["ome"]["multiscales"]]
    assert names == ["raw", "seg"]
    assert not [p for p in os.listdir(store) if p.startswith(".")]  # no temporaries left
    assert io.write_volume(str(store), np.ones((1, 1, 1), np.uint8), META) == f"{store}/main"  # the default name
    io.write_volume(f"{store}/g/a", np.ones((1, 1, 1), np.uint8), META)
    with pytest.raises(EmError, match="is a zarr group, not an array"):
        io.write_volume(f"{store}/g", np.ones((1, 1, 1), np.uint8), META)
    with pytest.raises(EmError, match="arrays cannot hold other arrays"):
        io.write_volume(f"{store}/raw/inner", np.ones((1, 1, 1), np.uint8), META)


def test_a_failed_write_leaves_the_old_array_or_none(tmp_path):
    store = tmp_path / "s.zarr"
    with pytest.raises(RuntimeError):
        with io.VolumeWriter(f"{store}/a/raw", (4, 8, 8), np.uint8, META) as writer:
            writer.write(Box((0, 0, 0), (2, 8, 8)), np.ones((2, 8, 8), np.uint8))
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []  # no store, no temporary
    io.write_volume(f"{store}/a/raw", np.ones((4, 8, 8), np.uint8), META)
    with pytest.raises(RuntimeError):
        with io.VolumeWriter(f"{store}/a/raw", (4, 8, 8), np.uint8, META) as writer:
            writer.write(Box((0, 0, 0), (4, 8, 8)), np.zeros((4, 8, 8), np.uint8))
            raise RuntimeError("killed")
    assert (io.read_volume(f"{store}/a/raw")[0] == 1).all()
    assert sorted(os.listdir(store / "a")) == ["raw", "zarr.json"]


def test_zarr_v2_and_foreign_ome_metadata_are_read(tmp_path):
    # a v2 store with OME-NGFF 0.4 multiscales in micrometres and an array without our attributes
    root = zarr.open_group(store=str(tmp_path / "v2.zarr"), mode="w", zarr_format=2)
    root.attrs["multiscales"] = [{"version": "0.4", "name": "em", "axes": [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
        "datasets": [{"path": "s0", "coordinateTransformations": [
            {"type": "scale", "scale": [0.04, 0.004, 0.004]}, {"type": "translation", "translation": [0.4, 0.0, 0.008]}]}],
        "coordinateTransformations": [{"type": "scale", "scale": [1.0, 2.0, 2.0]}]}]
    data = np.arange(4 * 6 * 8, dtype=np.int16).reshape(4, 6, 8)
    array = root.create_array("s0", shape=data.shape, chunks=(2, 3, 4), dtype=data.dtype)
    array[...] = data
    back, meta = io.read_volume(str(tmp_path / "v2.zarr"))
    np.testing.assert_array_equal(back, data)
    assert meta.voxel_size_nm == pytest.approx((40.0, 8.0, 8.0))  # dataset scale x the multiscale's
    assert meta.offset_nm == pytest.approx((400.0, 0.0, 16.0))
    assert zarrs.ZarrArrayInfo(str(tmp_path / "v2.zarr/s0")).zarr_format == 2
    # our attributes win over OME; aliases of other tools are read too
    plain = zarr.create_array(store=str(tmp_path / "p.zarr"), name="x", shape=(2, 2, 2), dtype="u1", zarr_format=2,
                              attributes={"resolution": [30, 6, 6]})
    plain[...] = 3
    assert io.read_volume(str(tmp_path / "p.zarr/x"))[1].voxel_size_nm == (30.0, 6.0, 6.0)
    with pytest.raises(EmError, match="zarr v2 store; emtools writes zarr v3"):
        io.write_volume(str(tmp_path / "v2.zarr/new"), data, META)


def test_bad_zarr_inputs_are_one_line_errors(tmp_path):
    store = tmp_path / "s.zarr"
    io.write_volume(f"{store}/g/raw", np.ones((2, 4, 4), np.uint8), META)
    io.write_volume(f"{store}/g/seg", np.ones((2, 4, 4), np.uint64), META)
    cases = [
        (str(store), "is a zarr group, not an array (arrays in it: g/raw, g/seg); name one as"),
        (f"{store}/g", "is a zarr group, not an array (arrays in it: g/raw, g/seg)"),
        (f"{store}/nope", "no zarr array nope in"),
        (str(tmp_path / "none.zarr/raw"), "no such zarr store"),
        (f"{store}/g/raw[0:3,0:4,0:4]", "is outside"),
    ]
    os.makedirs(tmp_path / "empty.zarr")
    cases.append((str(tmp_path / "empty.zarr"), "is not a zarr store"))
    flat = zarr.create_array(store=str(tmp_path / "flat.zarr"), name="im", shape=(4, 4), dtype="u1")
    flat[...] = 0
    cases.append((str(tmp_path / "flat.zarr/im"), "is 2D"))
    for spec, message in cases:
        with pytest.raises(EmError, match=message.replace("(", r"\(").replace(")", r"\)")):
            io.read_volume(spec)


def test_region_specs_read_as_chunks_of_any_format(tmp_path):
    data = np.random.default_rng(1).integers(0, 255, (10, 20, 30), dtype=np.uint8)
    io.write_volume(str(tmp_path / "v.h5:/raw"), data, META)
    io.write_volume(str(tmp_path / "s.zarr/raw"), data, META, chunks_zyx=(4, 8, 8))
    origin = META.origin_vx  # (2, 3, 2)
    for base in (f"{tmp_path}/v.h5:/raw", f"{tmp_path}/s.zarr/raw"):
        with io.open_volume(f"{base}[4:8,10:20,0:16]+2,3,4") as source:
            assert source.shape == (8, 13, 20)  # the halo is clipped at the array's border (x begins at 0)
            np.testing.assert_array_equal(source.read(), data[2:10, 7:20, 0:20])
            attrs = source.meta.attrs
            assert attrs["responsible_begin_vx"] == [4 + origin[0], 10 + origin[1], 0 + origin[2]]
            assert attrs["read_begin_vx"] == [2 + origin[0], 7 + origin[1], 0 + origin[2]]
            assert attrs["volume_begin_vx"] == list(origin)
            assert attrs["volume_end_vx"] == [10 + origin[0], 20 + origin[1], 30 + origin[2]]
            assert source.meta.offset_nm == ((2 + origin[0]) * 40.0, (7 + origin[1]) * 4.0, origin[2] * 4.0)
            assert source.meta.attrs["head"] == "boundary"
    with pytest.raises(EmError, match="has two regions"):
        io.read_volume(f"{tmp_path}/s.zarr/raw[0:2,0:2,0:2][0:1,0:1,0:1]")


# ----------------------------------------------------------------------------- region writes

def _store(tmp_path, dtype=np.uint64, channels=None, chunks=(4, 8, 8)):
    shape = ((channels,) if channels else ()) + (8, 16, 24)
    meta = Metadata(axes="czyx" if channels else "zyx", offset_nm=(40.0, 0.0, 8.0), voxel_size_nm=(40.0, 4.0, 4.0))
    folder = io.create_array(f"{tmp_path}/o.zarr/seg", shape, dtype, meta, chunks, ("gzip", 1))
    return folder, meta


def _chunk_meta(meta, box_global, **attrs):
    """Metadata of data that covers ``box_global`` (as a tool's output for a chunk)."""
    return Metadata(axes=meta.axes, offset_nm=tuple(b * v for b, v in zip(box_global.begin, meta.voxel_size_nm)),
                    voxel_size_nm=meta.voxel_size_nm, provenance=({"tool": "w"},), attrs=attrs)


def test_region_writes_fill_one_array_with_done_markers(tmp_path):
    assert regions.chunk_keys(Box((4, 8, 0), (8, 24, 8)), (4, 8, 8)) == ["1.1.0", "1.2.0"]
    folder, meta = _store(tmp_path)
    assert sorted(os.listdir(folder)) == [".emtools", "zarr.json"]
    origin = meta.origin_vx  # (1, 0, 2)
    expected = np.zeros((8, 16, 24), np.uint64)
    for i, local in enumerate([Box((0, 0, 0), (4, 8, 8)), Box((4, 8, 16), (8, 16, 24)), Box((0, 8, 0), (4, 16, 16))]):
        region = local.shift(origin)
        spec = io.into_spec(folder, region)
        assert spec == f"into:{folder}[{local.text()}]"
        assert not io.region_is_done(spec)
        values = np.full(local.shape, i + 1, np.uint64)
        assert io.write_volume(spec, values, _chunk_meta(meta, region, fragment_count=i + 1, score="mean")) == spec[5:]
        expected[tuple(slice(b, e) for b, e in zip(local.begin, local.end))] = i + 1
        assert io.region_is_done(spec) and io.output_exists(spec)
    back, got = io.read_volume(folder)
    np.testing.assert_array_equal(back, expected)
    assert got.attrs == {"score": "mean"}  # shared attributes go on the array, per-region ones stay in markers
    assert io.regions_done(folder) == 3
    view = io.open_volume(f"{folder}[4:8,8:16,16:24]")
    assert view.meta.attrs["fragment_count"] == 2 and view.meta.provenance[-1] == {"tool": "w"}
    view.close()
    # a rerun of the same region is allowed (a killed worker's job runs again) and gives the same bytes
    chunk_file = os.path.join(folder, "c", "1", "1", "2")
    before = open(chunk_file, "rb").read()
    spec = io.into_spec(folder, Box((4, 8, 16), (8, 16, 24)).shift(origin))
    io.write_volume(spec, np.full((4, 8, 8), 2, np.uint64), _chunk_meta(meta, Box((5, 8, 18), (9, 16, 26))))
    assert open(chunk_file, "rb").read() == before
    assert not [n for _, _, files in os.walk(folder) for n in files if ".emtmp-" in n]


def test_region_write_errors_are_one_line_and_write_nothing(tmp_path):
    folder, meta = _store(tmp_path, chunks=(4, 8, 8))
    origin = meta.origin_vx
    with pytest.raises(EmError, match=r"region 0:4,0:8,0:9 .* does not align with the chunks 4x8x8 .* the nearest "
                                      r"aligned region is 0:4,0:8,0:16"):
        io.into_spec(folder, Box((0, 0, 0), (4, 8, 9)).shift(origin))
    with pytest.raises(EmError, match="is outside"):
        io.into_spec(folder, Box((4, 8, 16), (8, 16, 32)).shift(origin))
    with pytest.raises(EmError, match="no zarr array .* create it first"):
        io.into_spec(f"{tmp_path}/o.zarr/other", Box((0, 0, 0), (4, 8, 8)))
    with pytest.raises(EmError, match="is a zarr group, not an array"):
        io.into_spec(f"{tmp_path}/o.zarr", Box((0, 0, 0), (4, 8, 8)))
    with pytest.raises(EmError, match="--into needs a zarr array"):
        io.into_spec(f"{tmp_path}/x.h5:/a", Box((0, 0, 0), (4, 8, 8)))
    region = Box((0, 0, 0), (4, 16, 8)).shift(origin)
    spec = io.into_spec(folder, region)
    with pytest.raises(EmError, match="holds uint64 but the data is uint32; create the array with --dtype uint32"):
        io.write_volume(spec, np.ones((4, 16, 8), np.uint32), _chunk_meta(meta, region))
    with pytest.raises(EmError, match="channels|channel axis"):
        io.write_volume(spec, np.ones((3, 4, 16, 8), np.uint64), _chunk_meta(meta, region).replace(axes="czyx"))
    with pytest.raises(EmError, match="voxel sizes differ"):
        io.write_volume(spec, np.ones((4, 16, 8), np.uint64), _chunk_meta(meta, region).replace(
            voxel_size_nm=(40.0, 8.0, 8.0), offset_nm=(40.0, 0.0, 16.0)))
    with pytest.raises(EmError, match="the data covers 0:4,0:8,0:8 .* not the region 0:4,0:16,0:8"):
        io.write_volume(spec, np.ones((4, 8, 8), np.uint64), _chunk_meta(meta, Box((0, 0, 0), (4, 8, 8)).shift(origin)))
    assert os.listdir(os.path.join(folder, ".emtools", "claims")) == [] and not os.path.exists(
        os.path.join(folder, "c"))
    # overlapping regions: the second worker is refused and takes back the claims it made
    io.write_volume(spec, np.ones((4, 16, 8), np.uint64), _chunk_meta(meta, region))
    other = Box((0, 8, 0), (4, 16, 16)).shift(origin)
    claims = sorted(os.listdir(os.path.join(folder, ".emtools", "claims")))
    with pytest.raises(EmError, match=r"region 0:4,8:16,0:16 of .* overlaps the region 0:4,0:16,0:8 that another "
                                      r"worker claimed \(store chunk 0,1,0\)"):
        io.write_volume(io.into_spec(folder, other), np.full((4, 8, 16), 9, np.uint64), _chunk_meta(meta, other))
    assert sorted(os.listdir(os.path.join(folder, ".emtools", "claims"))) == claims == ["0.0.0", "0.1.0"]
    assert (io.read_volume(folder)[0][:4, :16, :8] == 1).all() and io.read_volume(folder)[0][:4, 8:, 8:].max() == 0


def test_chunk_files_are_replaced_atomically(tmp_path, monkeypatch):
    """A chunk write that fails before its rename (a full disk; a kill: tests/test_cli_into.py)
    leaves the old file, never half a chunk: the bytes go to a temporary name renamed over the key."""
    folder, meta = _store(tmp_path, dtype=np.uint8)
    region = Box((0, 0, 0), (4, 8, 8)).shift(meta.origin_vx)
    spec = io.into_spec(folder, region)
    io.write_volume(spec, np.full((4, 8, 8), 1, np.uint8), _chunk_meta(meta, region))
    chunk = os.path.join(folder, "c", "0", "0", "0")
    before = open(chunk, "rb").read()
    real_replace = os.replace

    def die(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zarrs.os, "replace", die)
    with pytest.raises(EmError, match="cannot write into .*: .*No space left on device"):
        io.write_volume(spec, np.full((4, 8, 8), 2, np.uint8), _chunk_meta(meta, region))
    monkeypatch.setattr(zarrs.os, "replace", real_replace)
    assert open(chunk, "rb").read() == before
    assert (io.read_volume(folder)[0][:4, :8, :8] == 1).all()
    assert not [n for _, _, files in os.walk(folder) for n in files if ".emtmp-" in n]


def test_create_array_refuses_a_store_on_a_read_only_path(tmp_path):
    """A store on a read-only path: one line before any work (a read-only file system, /proc as
    root, permission bits otherwise)."""
    with pytest.raises(EmError, match="cannot write|not writable"):
        io.create_array("/proc/emtools-test.zarr/seg", (1, 1, 1), np.uint8, META, (1, 1, 1), ("gzip", 1))
    assert not os.path.exists("/proc/emtools-test.zarr")
