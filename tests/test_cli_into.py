"""Zarr stores through the tools: em-tile convert/split/create/info, and --into: several worker
processes writing one store at once (equal to em-tile merge bit for bit), a worker killed
mid-write and rerun with --skip-existing, em-predict and em-agglomerate relabel into stores,
and every bad input as one line that writes nothing."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_one_line_error, run_tool, tool_command
from emtools import io
from emtools.meta import Metadata

pytest.importorskip("zarr")

VOXEL = (40.0, 8.0, 8.0)
CHUNK, HALO = "8,32,32", "2,8,8"


def run_inprocess(main, *args, stdin=None):
    """Run a click command in this process (no interpreter start-up): returncode/stdout/stderr."""
    from click.testing import CliRunner

    result = CliRunner().invoke(main, [str(a) for a in args], input=stdin)
    result.returncode = result.exit_code
    return result


def tile(*args):
    from emtools.cli.tile import main

    return run_inprocess(main, *args)


def watershed(*args):
    from emtools.cli.watershed import main

    return run_inprocess(main, *args)


def agglomerate(*args):
    from emtools.cli.agglomerate import main

    return run_inprocess(main, *args)


def ok(result):
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout.split()


def _boundary(shape, seed):
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(np.random.default_rng(seed).random(shape), (1.0, 2.5, 2.5))
    return ((noise - noise.min()) / (noise.max() - noise.min())).astype(np.float32)


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """A boundary map (16x64x32, offset 80,16,0 nm) cut into 4 chunks with a halo; each chunk's
    fragments (em-watershed -o) and their em-tile merge: the reference for --into."""
    root = tmp_path_factory.mktemp("into")
    data = _boundary((16, 64, 32), 0)
    spec = f"{root}/map.h5:/boundary"
    io.write_volume(spec, data, Metadata(voxel_size_nm=VOXEL, offset_nm=(80.0, 16.0, 0.0)))
    chunks = ok(tile("split", spec, "--chunk", CHUNK, "--halo", HALO, "-o", root / "chunks", "-q"))
    assert len(chunks) == 4
    os.makedirs(root / "frags")
    frags = [ok(watershed(c, "-o", root / "frags" / os.path.basename(c), "--min-size", 5, "-q"))[0] for c in chunks]
    ok(tile("merge", *frags, "-o", root / "merged.h5", "-q"))
    merged, meta = io.read_volume(str(root / "merged.h5"))
    return {"root": root, "spec": spec, "data": data, "chunks": chunks, "frags": frags, "merged": merged,
            "meta": meta}


def _created(folder, like, dtype="uint64", chunk=CHUNK, *extra):
    return ok(tile("create", folder, "--like", like, "--dtype", dtype, "--chunk", chunk, *extra, "-q"))[0]


def _untouched(array):
    """Nothing was written into ``array``: no chunk file, claim or done marker."""
    assert not os.path.exists(os.path.join(array, "c"))
    assert os.listdir(os.path.join(array, ".emtools", "claims")) == []
    assert os.listdir(os.path.join(array, ".emtools", "done")) == []


# ----------------------------------------------------------------------------- em-tile

def test_convert_between_formats_keeps_values_and_metadata(tmp_path):
    from PIL import Image

    data = np.random.default_rng(3).integers(0, 255, (6, 20, 24), dtype=np.uint8)
    os.makedirs(tmp_path / "slices")
    for z in range(6):
        Image.fromarray(data[z]).save(tmp_path / "slices" / f"{z}.png")
    steps = [(tmp_path / "slices", f"{tmp_path}/a.zarr/raw", ["--voxel-size", "40,4,4", "--offset", "80,0,8"]),
             (f"{tmp_path}/a.zarr/raw", f"{tmp_path}/b.tif", []),
             (f"{tmp_path}/b.tif", f"{tmp_path}/c.zarr/g/raw", ["--chunk", "4,8,8"]),
             (f"{tmp_path}/c.zarr/g/raw", f"{tmp_path}/d.h5:/raw", []),
             (f"{tmp_path}/d.h5:/raw", f"{tmp_path}/e.zarr/raw", ["--compression", "none"])]
    for source, target, extra in steps:
        printed = ok(tile("convert", source, "-o", target, *extra, "-q"))
        assert printed == [io.output_file(target)]
        values, meta = io.read_volume(target)
        np.testing.assert_array_equal(values, data)
        assert meta.voxel_size_nm == (40.0, 4.0, 4.0) and meta.offset_nm == (80.0, 0.0, 8.0)
        assert meta.provenance[-1]["tool"] == "em-tile convert"
    info = json.loads(tile("info", f"{tmp_path}/c.zarr/g/raw").stdout)
    assert info["zarr"] == {"chunks": [4, 8, 8], "format": 3, "regions_done": 0}
    assert len(info["provenance"]) == 3
    result = tile("convert", f"{tmp_path}/e.zarr/raw", "-o", f"{tmp_path}/e.zarr/raw")
    assert_one_line_error(result, "tile", "would replace the input")
    result = tile("convert", f"{tmp_path}/d.h5:/raw", "-o", f"{tmp_path}/f.zarr/x", "--compression", "lzf")
    assert_one_line_error(result, "tile", "lzf compression exists only for HDF5")
    assert not os.path.exists(tmp_path / "f.zarr")


def test_split_prints_region_specs_that_read_as_the_chunk_files(chunked, tmp_path):
    store = f"{tmp_path}/map.zarr/boundary"
    ok(tile("convert", chunked["spec"], "-o", store, "--chunk", CHUNK, "-q"))
    regions = ok(tile("split", store, "--chunk", CHUNK, "--halo", HALO, "--format", "region", "-q"))
    assert regions == [f"{store}[0:8,0:32,0:32]+2,8,8", f"{store}[0:8,32:64,0:32]+2,8,8",
                       f"{store}[8:16,0:32,0:32]+2,8,8", f"{store}[8:16,32:64,0:32]+2,8,8"]
    assert not os.path.exists(tmp_path / "chunks")
    for region, chunk in zip(regions, chunked["chunks"]):
        a, a_meta = io.read_volume(region)
        b, b_meta = io.read_volume(chunk)
        np.testing.assert_array_equal(a, b)
        assert a_meta.offset_nm == b_meta.offset_nm
        assert {k: a_meta.attrs[k] for k in a_meta.attrs if k.endswith("_vx")} == \
            {k: b_meta.attrs[k] for k in b_meta.attrs if k.endswith("_vx") and k != "chunk_index_zyx"}
    for args, message in ((["--format", "region", "-o", tmp_path / "x"], "--format region writes no files"),
                          ([], "needs -o FOLDER")):
        result = tile("split", store, "--chunk", CHUNK, *args)
        assert result.returncode == 2 and message in result.stderr and result.stdout == ""
    assert_one_line_error(tile("split", regions[0], "--chunk", "4", "--format", "region"), "tile", "is a region already")


def test_create_makes_an_empty_array_once(chunked, tmp_path):
    array = f"{tmp_path}/s.zarr/affs"
    assert _created(array, chunked["chunks"][0], "uint8", CHUNK, "--channels", "3") == array
    values, meta = io.read_volume(array)
    assert values.shape == (3, 16, 64, 32) and values.dtype == np.uint8 and not values.any()
    assert meta.axes == "czyx" and meta.offset_nm == (80.0, 16.0, 0.0) and meta.voxel_size_nm == VOXEL
    assert meta.provenance[-1]["tool"] == "em-tile create"
    assert _created(array, chunked["spec"], "uint8", CHUNK, "--channels", "3", "--skip-existing") == array
    bad = [(["--dtype", "uint8", "--chunk", CHUNK, "--channels", "3"], "exists already"),
           (["--dtype", "uint16", "--chunk", CHUNK, "--channels", "3", "--skip-existing"],
            "exists with another shape, type, chunks or offset"),
           (["--dtype", "complex64", "--chunk", CHUNK], "give an integer or float type"),
           (["--dtype", "nonsense", "--chunk", CHUNK], "unknown --dtype"),
           (["--dtype", "uint8", "--chunk", "0,4,4"], "--chunk 0,4,4 has zero or negative values")]
    for args, message in bad:
        assert_one_line_error(tile("create", array, "--like", chunked["spec"], *args), "tile", message)
    assert_one_line_error(tile("create", f"{tmp_path}/x.h5:/a", "--like", chunked["spec"], "--dtype", "uint8",
                               "--chunk", CHUNK), "tile", "makes zarr arrays")


# ----------------------------------------------------------------------------- several workers, one store

def test_workers_writing_one_store_at_once_equal_em_tile_merge(chunked, tmp_path):
    array = _created(f"{tmp_path}/out.zarr/frags", chunked["chunks"][0])
    workers = [subprocess.Popen(tool_command("watershed") + [c, "--into", array, "--min-size", "5", "-q"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1")) for c in chunked["chunks"]]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0] * 4, outputs
    assert sorted(out.strip() for out, _ in outputs) == sorted(
        f"{array}[{z}:{z + 8},{y}:{y + 32},0:32]" for z in (0, 8) for y in (0, 32))
    values, meta = io.read_volume(array)
    np.testing.assert_array_equal(values, chunked["merged"])  # bit for bit, no merge step
    assert values.dtype == chunked["merged"].dtype
    assert (meta.offset_nm, meta.voxel_size_nm) == (chunked["meta"].offset_nm, chunked["meta"].voxel_size_nm)
    assert io.regions_done(array) == 4
    frag = io.read_volume(f"{array}[8:16,32:64,0:32]")[1]
    assert frag.attrs["fragment_count"] == io.read_volume(chunked["frags"][3])[1].attrs["fragment_count"]
    assert frag.provenance[-1]["tool"] == "em-watershed"
    # region specs straight from a zarr copy of the map: the same result, no chunk files
    store = f"{tmp_path}/map.zarr/boundary"
    ok(tile("convert", chunked["spec"], "-o", store, "--chunk", CHUNK, "-q"))
    second = _created(f"{tmp_path}/out.zarr/frags2", store)
    for region in ok(tile("split", store, "--chunk", CHUNK, "--halo", HALO, "--format", "region", "-q")):
        ok(watershed(region, "--into", second, "--min-size", 5, "-q"))
    np.testing.assert_array_equal(io.read_volume(second)[0], chunked["merged"])
    # a finished region is skipped at once with --skip-existing, and its spec printed again
    again = watershed(chunked["chunks"][0], "--into", array, "--skip-existing", "--threshold", "0.9")
    assert ok(again) == [f"{array}[0:8,0:32,0:32]"] and "done already, skipped" in again.stderr


KILLER = """
import os, signal, sys, threading
from emtools.io import zarrs
written = []
real = zarrs.write_atomic
one_at_a_time = threading.Lock()  # zarr writes chunks from several threads: the kill comes after exactly two

def write_then_die(path, data):
    with one_at_a_time:
        if "/c/" in path and len(written) == 2:   # the third chunk file: half of it, then SIGKILL
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(zarrs.temporary_path(path), "wb") as handle:
                handle.write(bytes(data)[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        if "/c/" in path:
            written.append(path)
        real(path, data)

zarrs.write_atomic = write_then_die
from emtools.cli.watershed import main
sys.argv = ["em-watershed"] + sys.argv[1:]
main()
"""


def test_a_worker_killed_mid_write_reruns_with_skip_existing(chunked, tmp_path):
    # store chunks of 4,16,16: each region is 8 chunk files, and the worker dies in the third
    array = _created(f"{tmp_path}/out.zarr/frags", chunked["spec"], "uint64", "4,16,16")
    chunk = chunked["chunks"][1]  # responsible for 0:8,32:64,0:32
    killed = subprocess.run([sys.executable, "-c", KILLER, chunk, "--into", array, "--min-size", "5", "-q"],
                            capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    files = sorted(os.path.relpath(os.path.join(d, f), array) for d, _, fs in os.walk(os.path.join(array, "c")) for f in fs)
    assert len([f for f in files if ".emtmp-" not in f]) == 2 and len([f for f in files if ".emtmp-" in f]) == 1
    assert os.listdir(os.path.join(array, ".emtools", "done")) == []  # not done: a rerun will redo it
    assert len(os.listdir(os.path.join(array, ".emtools", "claims"))) == 8
    region = f"{array}[0:8,32:64,0:32]"
    rerun = run_tool("watershed", chunk, "--into", array, "--min-size", "5", "--skip-existing", "-q")
    assert rerun.returncode == 0 and rerun.stdout.strip() == region, rerun.stderr
    np.testing.assert_array_equal(io.read_volume(region)[0], chunked["merged"][0:8, 32:64, 0:32])
    assert not [f for _, _, fs in os.walk(array) for f in fs if ".emtmp-" in f]  # the dead worker's temporary is gone
    assert io.regions_done(array) == 1


# ----------------------------------------------------------------------------- bad input

def test_bad_into_targets_are_one_line_and_write_nothing(chunked, tmp_path):
    chunk = chunked["chunks"][1]  # responsible for 0:8,32:64,0:32 (array indices)
    group = f"{tmp_path}/s.zarr"
    floats = _created(f"{tmp_path}/s.zarr/float", chunk, "float32")
    channels = _created(f"{tmp_path}/s.zarr/affs", chunk, "uint64", CHUNK, "--channels", "3")
    narrow = _created(f"{tmp_path}/s.zarr/narrow", chunk, "uint64", "8,24,32")
    cases = [
        (["--into", group], "s.zarr is a zarr group, not an array"),
        (["--into", f"{tmp_path}/s.zarr/none"], "no zarr array"),
        (["--into", f"{tmp_path}/x.h5:/a"], "--into needs a zarr array"),
        (["--into", floats], "holds float32 but the data is uint64; create the array with --dtype uint64"),
        (["--into", channels], "channels expected"),
        (["--into", narrow], "region 0:8,32:64,0:32 (global voxels 2:10,34:66,0:32) does not align with the chunks "
                             "8x24x32 of"),
    ]
    for args, message in cases:
        assert_one_line_error(watershed(chunk, *args), "watershed", message)
    for args in (["--into", narrow, "-o", tmp_path / "f.h5"], []):  # a usage error: exit 2
        result = watershed(chunk, *args)
        assert result.returncode == 2 and "give -o OUTPUT or --into ARRAY (one of them)" in result.stderr
    assert "the nearest aligned region is 0:8,24:64,0:32" in watershed(chunk, "--into", narrow).stderr
    for array in (floats, channels, narrow):
        _untouched(array)
    assert not os.path.exists(tmp_path / "f.h5")


def test_overlapping_regions_are_refused(chunked, tmp_path):
    store = f"{tmp_path}/map.zarr/boundary"
    ok(tile("convert", chunked["spec"], "-o", store, "--chunk", CHUNK, "-q"))
    array = _created(f"{tmp_path}/out.zarr/frags", store, "uint64", "8,16,32")
    first = ok(watershed(f"{store}[0:8,0:32,0:32]+2,8,8", "--into", array, "-q"))
    before = {f: open(os.path.join(d, f), "rb").read() for d, _, fs in os.walk(os.path.join(array, "c")) for f in fs}
    result = watershed(f"{store}[0:8,16:48,0:32]+2,8,8", "--into", array)
    assert_one_line_error(result, "watershed", "region 0:8,16:48,0:32 of", "overlaps the region 0:8,0:32,0:32 that "
                          "another worker claimed (store chunk 0,1,0); regions must not overlap")
    after = {f: open(os.path.join(d, f), "rb").read() for d, _, fs in os.walk(os.path.join(array, "c")) for f in fs}
    assert after == before and io.regions_done(array) == 1 and first == [f"{array}[0:8,0:32,0:32]"]
    assert sorted(os.listdir(os.path.join(array, ".emtools", "claims"))) == ["0.0.0", "0.1.0"]


def test_a_store_on_a_read_only_path_is_refused(chunked, tmp_path):
    array = _created(f"{tmp_path}/out.zarr/frags", chunked["spec"])
    command = tool_command("watershed") + [chunked["chunks"][0], "--into", array]
    if os.geteuid() == 0:  # root writes through permission bits: a read-only bind mount, in a mount namespace
        if not shutil.which("unshare") or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
            pytest.skip("needs unshare -m (mount namespaces) to make a read-only path as root")
        script = 'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
        result = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(tmp_path / "out.zarr"), *command],
                                capture_output=True, text=True, timeout=300)
        assert_one_line_error(result, "watershed", "cannot write into", "read-only file system")
    else:
        for folder, dirs, _ in os.walk(tmp_path / "out.zarr"):
            os.chmod(folder, 0o555)
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        for folder, dirs, _ in os.walk(tmp_path / "out.zarr"):
            os.chmod(folder, 0o755)
        assert_one_line_error(result, "watershed", "cannot write into", "not writable")
    _untouched(array)


# ----------------------------------------------------------------------------- the other per-chunk steps

def test_relabel_into_one_store_equals_the_merged_segmentation(chunked, tmp_path):
    root = chunked["root"]
    frags, chunks = chunked["frags"], chunked["chunks"]
    ok(agglomerate("offsets", *frags, "-o", tmp_path / "offsets.tsv", "-q"))
    os.makedirs(tmp_path / "edges")
    for c in chunks:
        ok(agglomerate("edges", c, "--offsets", tmp_path / "offsets.tsv", "-o",
                       tmp_path / "edges" / os.path.basename(c).replace(".h5", ".tsv"), "-q"))
    tables = sorted(str(p) for p in (tmp_path / "edges").iterdir())
    ok(agglomerate("stitch", *tables, "--offsets", tmp_path / "offsets.tsv", "-t", "0.5", "-o", tmp_path / "lut.tsv"))
    os.makedirs(tmp_path / "seg")
    lut = ["--offsets", tmp_path / "offsets.tsv", "--lut", tmp_path / "lut.tsv", "-t", "0.5", "-q"]
    segs = [ok(agglomerate("relabel", f, *lut, "-o", tmp_path / "seg" / os.path.basename(f)))[0] for f in frags]
    ok(tile("merge", *segs, "-o", tmp_path / "seg.h5", "-q"))
    assert ok(tile("merge", *segs, "-o", f"{tmp_path}/merged.zarr/seg", "-q")) == [f"{tmp_path}/merged.zarr/seg"]
    array = _created(f"{tmp_path}/seg.zarr/seg", chunks[0])
    written = [ok(agglomerate("relabel", f, *lut, "--into", array))[0] for f in frags]
    assert written[0] == f"{array}[0:8,0:32,0:32]"
    merged = io.read_volume(str(tmp_path / "seg.h5"))[0]
    np.testing.assert_array_equal(io.read_volume(array)[0], merged)
    np.testing.assert_array_equal(io.read_volume(f"{tmp_path}/merged.zarr/seg")[0], merged)
    fragments = sum(io.read_volume(f)[1].attrs["fragment_count"] for f in frags)
    assert len(np.unique(merged[merged != 0])) < fragments  # fragments joined, across chunks too
    assert io.read_volume(array)[1].attrs["threshold"] == 0.5
    assert ok(agglomerate("relabel", frags[0], *lut, "--into", array, "--skip-existing")) == [written[0]]
    assert root.exists()


def _checkpoint(path):
    import torch

    from emtools.models import build_model, resolve_spec
    from emtools.models.checkpoint import save_checkpoint
    from emtools.models.heads import default_heads, heads_to_dict

    spec = resolve_spec("rsunet", ["widths=4,8", "depth=2", "heads=affinity:3,foreground:1"])
    model = build_model(spec, seed=3)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_var.uniform_(0.5, 1.5)
    extra = {"heads": heads_to_dict(default_heads(spec.heads)), "normalization": {"scale": 1 / 255, "mean": 0.5,
             "std": 0.25}, "voxel_size_nm": list(VOXEL), "input_size_zyx": [4, 24, 24], "step": 1}
    save_checkpoint(str(path), model, spec, extra)
    return str(path)


def test_predict_into_per_head_stores_equals_merged_chunk_maps(tmp_path):
    from emtools.cli.predict import main as predict_main

    ckpt = _checkpoint(tmp_path / "model.pt")
    image = np.random.default_rng(5).integers(0, 256, (4, 24, 48), dtype=np.uint8)
    raw = f"{tmp_path}/raw.h5:/image"
    io.write_volume(raw, image, Metadata(voxel_size_nm=VOXEL, offset_nm=(0.0, 32.0, 0.0)))
    chunks = ok(tile("split", raw, "--chunk", "4,24,24", "--halo", "0,0,8", "-o", tmp_path / "chunks", "-q"))
    # --batch 1: the same patches in the same order as the chunk maps, so equal bit for bit (batches of
    # several patches group them differently for a region than for its chunk: float rounding differs)
    window = ["--patch", "4,24,24", "--overlap", "0,0.5,0.5", "--batch", "1", "--blend", "bump", "--threads", "1",
              "-q"]
    maps = ok(run_inprocess(predict_main, ckpt, *chunks, "-o", f"{tmp_path}/pred/", *window))
    _created(f"{tmp_path}/p.zarr/affinity", chunks[0], "float32", "4,24,24", "--channels", "3")
    _created(f"{tmp_path}/p.zarr/foreground", chunks[0], "float32", "4,24,24")
    written = ok(run_inprocess(predict_main, ckpt, *chunks, "--into", f"{tmp_path}/p.zarr/{{head}}", *window))
    assert len(written) == 2 * len(chunks) == 4
    for head in ("affinity", "foreground"):
        ok(tile("merge", *[m for m in maps if m.endswith(f"_{head}.h5")], "--blend", "none", "-o",
                tmp_path / f"{head}.h5", "-q"))
        merged, merged_meta = io.read_volume(str(tmp_path / f"{head}.h5"))
        values, meta = io.read_volume(f"{tmp_path}/p.zarr/{head}")
        np.testing.assert_array_equal(values, merged)
        assert meta.offset_nm == merged_meta.offset_nm and meta.attrs["head"] == head
    assert meta.attrs["value_range"] == merged_meta.attrs["value_range"]
    again = run_inprocess(predict_main, ckpt, chunks[0], "--into", f"{tmp_path}/p.zarr/{{head}}", "--skip-existing",
                          *window)
    assert ok(again) == [f"{tmp_path}/p.zarr/affinity[0:4,0:24,0:24]", f"{tmp_path}/p.zarr/foreground[0:4,0:24,0:24]"]
    result = run_inprocess(predict_main, ckpt, chunks[0], "--into", f"{tmp_path}/p.zarr/affinity", *window)
    assert_one_line_error(result, "predict", "takes 2 heads: put {head} in it")
