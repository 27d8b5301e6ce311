"""em-tile as users run it: exact stdout, one-line errors, exit codes, atomic outputs, real data."""

import hashlib
import os
import resource
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import assert_one_line_error, run_tool, shared_data, tool_command
from emtools import io
from emtools.meta import Metadata


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def volume(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (10, 40, 50), dtype=np.uint8)
    spec = str(tmp_path / "vol.h5:/raw")
    io.write_volume(spec, data, Metadata(voxel_size_nm=(40, 4, 4), offset_nm=(40, 0, 0)))
    return spec, data


def test_split_prints_exactly_the_written_paths(tmp_path, volume):
    spec, data = volume
    result = run_tool("tile", "split", spec, "--chunk", "5,20,25", "--halo", "1,4,4", "-o", tmp_path / "c", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    paths = result.stdout.splitlines()
    assert len(paths) == 8 and all(os.path.exists(p) for p in paths)
    assert paths[0] == str(tmp_path / "c" / "chunk_1-7_0-24_0-29.h5")
    assert sorted(os.listdir(tmp_path / "c")) == sorted(os.path.basename(p) for p in paths)


def test_list_writes_nothing(tmp_path, volume):
    spec, _ = volume
    result = run_tool("tile", "split", spec, "--chunk", "5,40,50", "--halo", "1,0,0", "-o", tmp_path / "c", "--list")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        f"{tmp_path / 'c'}/chunk_1-7_0-40_0-50.h5\t1:7,0:40,0:50\t1:6,0:40,0:50",
        f"{tmp_path / 'c'}/chunk_5-11_0-40_0-50.h5\t5:11,0:40,0:50\t6:11,0:40,0:50",
    ]
    assert "2 chunks" in result.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("fmt", ["h5", "tif"])
def test_split_then_merge_from_stdin_round_trips(tmp_path, volume, fmt):
    spec, data = volume
    split = run_tool("tile", "split", spec, "--chunk", "4,16,16", "--halo", "2,3,3", "--format", fmt, "-o", tmp_path / "c", "-q")
    merged = run_tool("tile", "merge", "-", "-o", tmp_path / "m.h5:/raw", stdin=split.stdout)
    assert merged.returncode == 0, merged.stderr
    assert merged.stdout == f"{tmp_path / 'm.h5'}\n"
    back, meta = io.read_volume(str(tmp_path / "m.h5:/raw"))
    np.testing.assert_array_equal(back, data)
    assert meta.voxel_size_nm == (40, 4, 4) and meta.offset_nm == (40, 0, 0)
    assert [r["tool"] for r in meta.provenance] == ["em-tile split", "em-tile merge"]


def test_outputs_are_deterministic(tmp_path, volume):
    spec, _ = volume
    for run in ("a", "b"):
        split = run_tool("tile", "split", spec, "--chunk", "5,20,25", "-o", tmp_path / run, "-q")
        assert run_tool("tile", "merge", *split.stdout.split(), "-o", tmp_path / f"{run}.h5").returncode == 0
    for name in os.listdir(tmp_path / "a"):
        assert _digest(tmp_path / "a" / name) == _digest(tmp_path / "b" / name)
    # the merge records its inputs by path, so compare merges of the same chunk paths
    first = _digest(tmp_path / "a.h5")
    split = run_tool("tile", "split", spec, "--chunk", "5,20,25", "-o", tmp_path / "a", "-q")
    run_tool("tile", "merge", *split.stdout.split(), "-o", tmp_path / "a.h5")
    assert _digest(tmp_path / "a.h5") == first


def test_convert_png_slices_to_hdf5_and_tiff(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    data = np.random.default_rng(1).integers(0, 255, (12, 20, 30), dtype=np.uint8)
    for z in range(12):
        Image.fromarray(data[z]).save(folder / f"s{z}.png")
    result = run_tool("tile", "convert", folder, "-o", tmp_path / "v.h5:/image", "--voxel-size", "50,4,4", "--slab", "5")
    assert result.returncode == 0 and result.stdout == f"{tmp_path / 'v.h5'}\n"
    back, meta = io.read_volume(str(tmp_path / "v.h5:/image"))
    np.testing.assert_array_equal(back, data)
    assert meta.voxel_size_nm == (50, 4, 4)
    assert run_tool("tile", "convert", tmp_path / "v.h5", "-o", tmp_path / "v.tif").returncode == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "v.tif"), data)
    assert io.read_volume(str(tmp_path / "v.tif"))[1].voxel_size_nm == (50, 4, 4)


def test_missing_voxel_size_is_a_warning_on_stderr(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    for z in range(2):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / f"{z}.png")
    result = run_tool("tile", "convert", folder, "-o", tmp_path / "v.h5")
    assert result.returncode == 0
    assert "records no voxel size; using 1,1,1 nm (set --voxel-size)" in result.stderr
    assert run_tool("tile", "convert", folder, "-o", tmp_path / "w.h5", "-q", "--voxel-size", "50,4,4").stderr == ""


def test_info_prints_json_lines(tmp_path, volume):
    import json

    spec, _ = volume
    result = run_tool("tile", "info", spec)
    info = json.loads(result.stdout)
    assert info["shape"] == [10, 40, 50] and info["voxel_size_nm"] == [40, 4, 4] and info["box_vx"] == [[1, 0, 0], [11, 40, 50]]


def test_skip_existing(tmp_path, volume):
    spec, _ = volume
    first = run_tool("tile", "split", spec, "--chunk", "10,40,50", "-o", tmp_path / "c", "-q").stdout.strip()
    mtime = os.path.getmtime(first)
    again = run_tool("tile", "split", spec, "--chunk", "10,40,50", "-o", tmp_path / "c", "--skip-existing", "-q")
    assert again.stdout.strip() == first and os.path.getmtime(first) == mtime
    run_tool("tile", "merge", first, "-o", tmp_path / "m.h5")
    mtime = os.path.getmtime(tmp_path / "m.h5")
    assert run_tool("tile", "merge", first, "-o", tmp_path / "m.h5", "--skip-existing").returncode == 0
    assert os.path.getmtime(tmp_path / "m.h5") == mtime


# ---------------------------------------------------------------------------------------------
# bad input: one line on stderr, exit 1, nothing written


def _bad_files(tmp_path):
    (tmp_path / "notes.h5").write_text("not an HDF5 file")
    (tmp_path / "notes.tif").write_text("not a TIFF file")
    with h5py.File(tmp_path / "multi.h5", "w") as f:
        f["raw"] = np.zeros((4, 8, 8), np.uint8)
        f["labels/neurons"] = np.zeros((4, 8, 8), np.uint64)
        f["flat"] = np.zeros((8, 8), np.uint8)
        f["empty"] = np.zeros((0, 8, 8), np.uint8)
    io.write_volume(str(tmp_path / "big.h5"), np.random.default_rng(0).random((16, 64, 64)).astype(np.float32), Metadata(), compression="none")
    blob = (tmp_path / "big.h5").read_bytes()
    (tmp_path / "truncated.h5").write_bytes(blob[: len(blob) // 3])
    slices = tmp_path / "slices"
    slices.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(slices / "0.png")
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(slices / "1.png")


BAD_SPLIT_INPUTS = [
    ("missing.h5:/raw", ["no such file", "missing.h5"]),
    ("multi.h5:/nope", ["no dataset /nope in", "(datasets: /empty, /flat, /labels/neurons, /raw)"]),
    ("notes.h5", ["not an HDF5 file"]),
    ("notes.tif", ["not a TIFF file"]),
    ("truncated.h5", ["truncated"]),
    ("multi.h5:/flat", ["is 2D (shape 8x8); a 3D volume (z,y,x) is needed"]),
    ("multi.h5:/empty", ["is empty (shape 0x8x8)"]),
    ("slices", ["slice sizes differ: 0.png is 8x8 uint8 but", "1.png is 8x9 uint8"]),
]


@pytest.mark.parametrize("spec,fragments", BAD_SPLIT_INPUTS, ids=[b[0] for b in BAD_SPLIT_INPUTS])
def test_bad_inputs(tmp_path, spec, fragments):
    _bad_files(tmp_path)
    before = sorted(os.listdir(tmp_path))
    result = run_tool("tile", "split", tmp_path / spec, "--chunk", "2,4,4", "-o", tmp_path / "out")
    assert_one_line_error(result, "tile", *fragments)
    assert sorted(os.listdir(tmp_path)) == before
    merged = run_tool("tile", "convert", tmp_path / spec, "-o", tmp_path / "conv.h5")
    assert_one_line_error(merged, "tile", *fragments)
    assert not (tmp_path / "conv.h5").exists()


BAD_CHUNKING = [
    (["--chunk", "0,4,4"], "chunk size must be positive, got 0 along z"),
    (["--chunk", "2,-4,4"], "chunk size must be positive, got -4 along y"),
    (["--chunk", "2,4,99"], "chunk size 99 along x is larger than the volume (50 voxels)"),
    (["--chunk", "2,4,4", "--halo", "0,0,-1"], "halo must be zero or positive, got -1 along x"),
    (["--chunk", "2,4,4", "--halo", "10,0,0"], "halo 10 along z is not smaller than the volume (10 voxels)"),
    (["--chunk", "2,4,4", "--voxel-size", "0,4,4"], "--voxel-size 0.0,4.0,4.0 has zero or negative values"),
    # two chunks whose halos reach both ends of the volume would overwrite one file
    (["--chunk", "5,40,50", "--halo", "5,0,0"], "the chunks responsible for 1:6,0:40,0:50 and 6:11,0:40,0:50 would both "
     "hold 1:11,0:40,0:50 (the halo 5,0,0 reaches across whole chunks of this volume)"),
]


@pytest.mark.parametrize("args,message", BAD_CHUNKING, ids=[m for _, m in BAD_CHUNKING])
def test_bad_chunking(tmp_path, volume, args, message):
    spec, _ = volume
    result = run_tool("tile", "split", spec, *args, "-o", tmp_path / "out")
    assert_one_line_error(result, "tile", message)
    assert not (tmp_path / "out").exists()


def test_usage_errors_exit_2(tmp_path, volume):
    spec, _ = volume
    result = run_tool("tile", "split", spec, "--chunk", "2,4", "-o", tmp_path / "out")
    assert result.returncode == 2 and "expected z,y,x" in result.stderr and result.stdout == ""
    assert run_tool("tile", "split", spec, "-o", tmp_path / "out").returncode == 2  # --chunk missing
    assert run_tool("tile", "frobnicate").returncode == 2


def test_bad_output_paths(tmp_path, volume):
    spec, _ = volume
    chunk = run_tool("tile", "split", spec, "--chunk", "10,40,50", "-o", tmp_path / "c", "-q").stdout.strip()
    result = run_tool("tile", "merge", chunk, "-o", tmp_path / "no" / "such" / "m.h5")
    assert_one_line_error(result, "tile", "output folder does not exist")
    result = run_tool("tile", "split", spec, "--chunk", "10,40,50", "-o", tmp_path / "no" / "such")
    assert_one_line_error(result, "tile", "output folder's parent does not exist")
    result = run_tool("tile", "merge", chunk, "-o", tmp_path / "m.n5")
    assert_one_line_error(result, "tile", "output must be file.h5[:/dataset], store.zarr[/array] or file.tif")
    result = run_tool("tile", "merge", chunk, "-o", chunk)
    assert_one_line_error(result, "tile", "would replace the input file")
    # a folder nobody may write: permission bits as a normal user, /proc as root
    if os.geteuid() == 0:
        result = run_tool("tile", "merge", chunk, "-o", "/proc/emtools-test.h5")
        assert_one_line_error(result, "tile")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        assert_one_line_error(run_tool("tile", "merge", chunk, "-o", ro / "m.h5"), "tile", "not writable")


def test_merge_refuses_holes_and_mixed_voxel_sizes(tmp_path, volume):
    spec, data = volume
    chunks = run_tool("tile", "split", spec, "--chunk", "5,40,50", "-o", tmp_path / "c", "-q").stdout.split()
    result = run_tool("tile", "merge", chunks[0], "-o", tmp_path / "m.h5")
    assert_one_line_error(result, "tile", "chunks leave holes: 10000 voxels", "--fill VALUE")
    assert not (tmp_path / "m.h5").exists()
    assert run_tool("tile", "merge", chunks[0], "-o", tmp_path / "m.h5", "--fill", "0").returncode == 0
    other = str(tmp_path / "other.h5")
    io.write_volume(other, data[:5], Metadata(voxel_size_nm=(40, 8, 8), offset_nm=(240, 0, 0)))
    result = run_tool("tile", "merge", chunks[0], other, "-o", tmp_path / "n.h5")
    assert_one_line_error(result, "tile", "voxel sizes differ: 40,4,4 nm in", "but 40,8,8 nm in")


def test_disk_full_while_writing(tmp_path, volume):
    """A file-size limit makes writes fail like a full disk: one line, no output, no temp file."""
    spec, _ = volume
    chunks = run_tool("tile", "split", spec, "--chunk", "5,20,25", "-o", tmp_path / "c", "-q").stdout.split()
    cmd = tool_command("tile") + ["merge", *chunks, "-o", str(tmp_path / "m.h5"), "--compression", "none"]

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    result = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit)
    assert_one_line_error(result, "tile")
    assert sorted(os.listdir(tmp_path)) == ["c", "vol.h5"]


def _big_chunks(tmp_path):
    data = np.random.default_rng(2).random((32, 256, 256)).astype(np.float32)
    io.write_volume(str(tmp_path / "big.h5"), data, Metadata(), compression="none")
    split = run_tool("tile", "split", tmp_path / "big.h5", "--chunk", "8,64,64", "--halo", "1,4,4", "-o", tmp_path / "c", "-q")
    return split.stdout.split()


def _start_merge_and_wait_for_temp(tmp_path, chunks, output):
    proc = subprocess.Popen(tool_command("tile") + ["merge", "-", "-o", str(output), "--blend", "gaussian", "--compression", "gzip:9"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdin.write("\n".join(chunks) + "\n")
    proc.stdin.close()
    deadline = time.time() + 60
    while time.time() < deadline:
        if any(".emtmp-" in name for name in os.listdir(tmp_path)):
            time.sleep(0.3)
            return proc
        time.sleep(0.02)
    proc.kill()
    pytest.fail("merge never started writing")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_merge_leaves_old_output_and_no_temp(tmp_path, sig, code):
    chunks = _big_chunks(tmp_path)
    output = tmp_path / "m.h5"
    io.write_volume(str(output), np.ones((1, 1, 1), np.uint8), Metadata())
    before = _digest(output)
    proc = _start_merge_and_wait_for_temp(tmp_path, chunks, output)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == code, err
    assert out == "" and err.strip().splitlines()[-1].startswith("em-tile: error: ")
    assert _digest(output) == before
    assert not [n for n in os.listdir(tmp_path) if ".emtmp-" in n]


def test_killed_merge_leaves_no_output_and_rerun_completes(tmp_path):
    chunks = _big_chunks(tmp_path)
    output = tmp_path / "m.h5"
    proc = _start_merge_and_wait_for_temp(tmp_path, chunks, output)
    proc.kill()
    proc.wait(timeout=60)
    assert not output.exists()  # the temp file of a SIGKILLed run may remain: it is not the output
    rerun = run_tool("tile", "merge", "-", "-o", output, stdin="\n".join(chunks))
    assert rerun.returncode == 0, rerun.stderr
    assert not [n for n in os.listdir(tmp_path) if ".emtmp-" in n]  # the rerun cleaned up
    np.testing.assert_array_equal(io.read_volume(str(output))[0], io.read_volume(str(tmp_path / "big.h5"))[0])


def test_help_has_examples():
    for sub in ("split", "merge", "convert", "info"):
        result = run_tool("tile", sub, "--help")
        assert result.returncode == 0 and "em-tile " + sub in result.stdout and "Example" in result.stdout
    assert "Examples" in run_tool("tile", "--help").stdout


# ---------------------------------------------------------------------------------------------
# real data


def test_isbi_png_slices_round_trip_bit_for_bit(tmp_path):
    image = shared_data("isbi2012", "image")
    split = run_tool("tile", "split", image, "--voxel-size", "50,4,4", "--chunk", "8,200,200", "--halo", "2,16,16", "-o", tmp_path / "c", "-q")
    assert split.returncode == 0, split.stderr
    merged = run_tool("tile", "merge", "-", "-o", tmp_path / "isbi.h5:/image", stdin=split.stdout)
    assert merged.returncode == 0, merged.stderr
    back, meta = io.read_volume(str(tmp_path / "isbi.h5:/image"))
    original, _ = io.read_volume(str(image))
    assert back.shape == (30, 512, 512) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, original)
    assert meta.voxel_size_nm == (50, 4, 4) and meta.offset_nm == (0, 0, 0) and meta.axes == "zyx" and meta.attrs == {}


@pytest.mark.parametrize("name", ["train-image.h5", "train-gt.lzf.h5", "train-p1.lzf.h5"])
def test_gala_hdf5_round_trips_bit_for_bit(tmp_path, name):
    source = shared_data("gala", name)
    split = run_tool("tile", "split", f"{source}:/stack", "--chunk", "16,48,64", "--halo", "4,8,8", "-o", tmp_path / "c", "-q")
    assert split.returncode == 0, split.stderr
    merged = run_tool("tile", "merge", "-", "-o", tmp_path / "m.h5:/stack", stdin=split.stdout)
    assert merged.returncode == 0, merged.stderr
    back, meta = io.read_volume(str(tmp_path / "m.h5:/stack"))
    with h5py.File(source, "r") as f:
        original = f["stack"][:]
    assert back.dtype == original.dtype
    np.testing.assert_array_equal(back, original)
    assert meta.voxel_size_nm == (1, 1, 1) and meta.offset_nm == (0, 0, 0) and meta.attrs == {}
