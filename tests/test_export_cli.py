"""em-export as users run it: the printed URL/state, layers read back equal to their sources,
meshes and skeletons per segment on real data, atomic output, and one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, run_tool, shared_data
from emtools import io
from emtools.meta import Metadata
from emtools.tiling.geometry import Box
from test_export_precomputed import read_scale

pytest.importorskip("zmesh", reason="zmesh (the view extra) is not installed")
pytest.importorskip("kimimaro", reason="kimimaro (the view extra) is not installed")

VOXEL = (10.0, 10.0, 10.0)
OFFSET = (100.0, 200.0, 300.0)  # voxel (10, 20, 30): no multiple of the downsampling factors


def export(*args):
    """Run em-export in this process (kimimaro is imported once for the module)."""
    from click.testing import CliRunner

    from emtools.cli.export import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    result.returncode = result.exit_code
    return result


def _affinities(labels):
    affs = np.zeros((3,) + labels.shape, np.float32)
    for axis in range(3):
        back = np.roll(labels, 1, axis=axis)
        same = (labels == back) & (labels > 0)
        index = [slice(None)] * 3
        index[axis] = 0
        same[tuple(index)] = False
        affs[axis] = same
    return affs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A FIB-25 crop (24 x 72 x 80 voxels of 10 nm): image, affinities, body ids, with metadata."""
    bodies = shared_data("fib25", "train", "bodies.h5")
    images = shared_data("fib25", "train", "image")
    box = Box((20, 40, 60), (44, 112, 140))
    with io.open_volume(f"{bodies}:bodies") as source:
        labels = source.read(box)
    with io.open_volume(str(images)) as source:
        image = source.read(box)
    folder = tmp_path_factory.mktemp("inputs")
    meta = Metadata(voxel_size_nm=VOXEL, offset_nm=OFFSET)
    specs = {"raw": f"{folder}/raw.h5:/raw", "affs": f"{folder}/affs.h5:/affs", "seg": f"{folder}/seg.h5:/bodies"}
    io.write_volume(specs["raw"], image, meta)
    affs = _affinities(labels)
    io.write_volume(specs["affs"], affs, meta.replace(axes="czyx"))
    io.write_volume(specs["seg"], labels, meta)
    return specs, {"raw": image, "affs": affs, "seg": labels}


def _tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _state_from_url(line: str) -> dict:
    viewer, _, fragment = line.strip().partition("#!")
    assert viewer == "http://127.0.0.1:9000/v/emtools/"
    return json.loads(urllib.parse.unquote(fragment))


def test_export_reads_back_with_a_mesh_and_skeleton_per_segment(tmp_path, inputs):
    specs, arrays = inputs
    out = tmp_path / "view"
    result = export("--image", specs["raw"], "--prediction", specs["affs"], "--segmentation", f"bodies={specs['seg']}",
                    "--min-voxels", 200, "--chunk", "32,64,64", "-o", out)
    assert result.returncode == 0, result.output
    assert len(result.stdout.splitlines()) == 1  # the URL is the tool's only data
    state = _state_from_url(result.stdout)
    assert [(layer["name"], layer["type"]) for layer in state["layers"]] == [
        ("raw", "image"), ("affs", "image"), ("bodies", "segmentation")]
    assert state == json.loads((out / "state.json").read_text())
    assert sorted(os.listdir(out)) == ["affs", "bodies", "export.json", "raw", "state.json"]
    assert sorted(os.listdir(tmp_path)) == ["view"]  # no temporaries left

    # every layer's full-resolution scale is its source, at the source's offset
    for name, key in (("raw", "raw"), ("affs", "affs"), ("bodies", "seg")):
        back, begin, scale = read_scale(str(out / name), 0)
        np.testing.assert_array_equal(back, arrays[key])
        assert begin == (10, 20, 30) and scale["resolution"] == [10, 10, 10]
    info = json.loads((out / "bodies" / "info").read_text())
    assert info["data_type"] == "uint64" and info["scales"][0]["encoding"] == "compressed_segmentation"
    assert len(info["scales"]) >= 2 and info["mesh"] == "mesh" and info["skeletons"] == "skeletons"

    # one mesh and one skeleton per segment of >= 200 voxels; meshes within the segment's box (nm)
    labels = arrays["seg"]
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    big = sorted(int(i) for i in ids[counts >= 200])
    assert len(big) >= 8
    mesh_dir, skeleton_dir = out / "bodies" / "mesh", out / "bodies" / "skeletons"
    assert sorted(int(p.name[:-2]) for p in mesh_dir.glob("*:0")) == big
    assert sorted(int(p.name) for p in skeleton_dir.iterdir() if p.name != "info") == big
    from emtools.export.meshes import decode_mesh
    from emtools.export.skeletons import decode_skeleton

    offset, voxel = np.array(OFFSET), np.array(VOXEL)
    for segment in big:
        where = np.argwhere(labels == segment)
        low = (offset + where.min(axis=0) * voxel)[::-1]
        high = (offset + (where.max(axis=0) + 1) * voxel)[::-1]
        manifest = json.loads((mesh_dir / f"{segment}:0").read_text())
        mesh = decode_mesh((mesh_dir / manifest["fragments"][0]).read_bytes())
        error = min(VOXEL) + 1e-3  # the default --mesh-error: the finest voxel side
        assert np.all(mesh.vertices.min(axis=0) >= low - error) and np.all(mesh.vertices.max(axis=0) <= high + error)
        assert np.all(mesh.vertices.min(axis=0) <= low + error) and np.all(mesh.vertices.max(axis=0) >= high - error)
        skeleton = decode_skeleton((skeleton_dir / str(segment)).read_bytes())
        inside = np.round((skeleton.vertices[:, ::-1] - offset) / voxel - 0.5).astype(int)
        assert np.all(labels[tuple(inside.T)] == segment)

    # the state shows the 20 largest segments; the properties list every id with its size
    order = sorted(big, key=lambda i: (-int(counts[ids == i][0]), i))
    assert state["layers"][2]["segments"] == [str(i) for i in order[:20]]
    properties = json.loads((out / "bodies" / "segment_properties" / "info").read_text())
    assert properties["inline"]["ids"] == [str(int(i)) for i in ids]
    assert properties["inline"]["properties"][0]["values"] == [int(c) for c in counts]
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["tool"] == "em-export" and manifest["layers"][2]["meshes"] == len(big)
    provenance = json.loads((out / "bodies" / "provenance").read_text())
    assert provenance["sources"] == [specs["seg"]] and provenance["processing"][-1]["tool"] == "em-export"

    # deterministic: the same inputs and options give the same bytes
    again = tmp_path / "again"
    result = export("--image", specs["raw"], "--prediction", specs["affs"], "--segmentation", f"bodies={specs['seg']}",
                    "--min-voxels", 200, "--chunk", "32,64,64", "-o", again)
    assert result.returncode == 0, result.output
    assert _tree_digest(again) == _tree_digest(out)


def test_json_state_uint32_raw_and_stride_without_meshes(tmp_path, inputs):
    specs, arrays = inputs
    out = tmp_path / "v"
    result = export("--segmentation", specs["seg"], "--no-meshes", "--no-skeletons", "--seg-dtype", "uint32",
                    "--seg-encoding", "raw", "--seg-downsample", "stride", "--scales", 2, "--json",
                    "--base-url", "https://example.org/v", "-o", out)
    assert result.returncode == 0, result.output
    state = json.loads(result.stdout)
    assert state["layers"][0]["source"] == "precomputed://https://example.org/v/seg"
    info = json.loads((out / "seg" / "info").read_text())
    assert info["data_type"] == "uint32" and "mesh" not in info and "skeletons" not in info
    assert [s["encoding"] for s in info["scales"]] == ["raw", "raw"]
    back, _, _ = read_scale(str(out / "seg"), 0)
    np.testing.assert_array_equal(back, arrays["seg"].astype(np.uint32))
    coarse, _, _ = read_scale(str(out / "seg"), 1)
    assert coarse[0, 0, 0] == arrays["seg"][0, 0, 0]  # voxel (10,20,30): the first of its 2x2x2 block
    assert not (out / "seg" / "mesh").exists()


def test_existing_output_skip_and_overwrite(tmp_path, inputs):
    specs, _ = inputs
    out = tmp_path / "v"
    args = ["--image", specs["raw"], "--scales", 1, "-o", out]
    assert export(*args).returncode == 0
    before = _tree_digest(out)
    result = export(*args)
    assert result.returncode == 1 and "output exists" in result.stderr and "--overwrite" in result.stderr
    skipped = export(*args, "--skip-existing", "--json")
    assert skipped.returncode == 0 and json.loads(skipped.stdout) == json.loads((out / "state.json").read_text())
    replaced = export("--image", f"other={specs['raw']}", "--scales", 1, "-o", out, "--overwrite")
    assert replaced.returncode == 0, replaced.output
    assert sorted(os.listdir(out)) == ["export.json", "other", "state.json"] and _tree_digest(out) != before
    assert sorted(os.listdir(tmp_path)) == ["v"]
    stranger = tmp_path / "mine"
    stranger.mkdir()
    result = export(*args[:-1], stranger, "--overwrite")
    assert result.returncode == 1 and "no em-export folder" in result.stderr


def test_failure_midway_leaves_no_output(tmp_path, inputs, monkeypatch):
    specs, _ = inputs
    import emtools.export.jobs as jobs
    from emtools import interrupt

    def stop(*args, **kwargs):
        raise interrupt.Interrupted(2)

    monkeypatch.setattr(jobs, "skeletonize_segments", stop)
    result = export("--image", specs["raw"], "--segmentation", specs["seg"], "--no-meshes", "-o", tmp_path / "v")
    assert result.returncode == 130 and "interrupted" in result.stderr
    assert os.listdir(tmp_path) == []
    interrupt.pending = None


def test_missing_packages_name_the_extra(tmp_path, inputs, monkeypatch):
    specs, _ = inputs
    import importlib.util

    import emtools.export.serve as serve

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "zmesh" else real(name, *a))
    result = export("--segmentation", specs["seg"], "-o", tmp_path / "v")
    assert result.returncode == 1
    assert result.stderr.strip() == ("em-export: error: meshes need the zmesh package: pip install 'emtools[view]', "
                                     "or --no-meshes")
    monkeypatch.setattr(serve, "client_folder", lambda: None)
    result = export("--image", specs["raw"], "-o", tmp_path / "v", "--serve")
    assert result.returncode == 1 and "pip install 'emtools[view]'" in result.stderr
    assert os.listdir(tmp_path) == []


def test_bad_inputs_one_line_each(tmp_path, inputs):
    specs, arrays = inputs
    text = tmp_path / "notes.txt"
    text.write_text("not a volume\n")
    huge = f"{tmp_path}/huge.h5:/ids"
    ids = arrays["seg"][:4, :8, :8].copy()
    ids[0, 0, 0] = 2**32 + 7
    io.write_volume(huge, ids, Metadata())
    negative = f"{tmp_path}/neg.h5:/ids"
    io.write_volume(negative, np.full((2, 3, 4), -1, np.int32), Metadata())
    floats = f"{tmp_path}/f.h5:/ids"
    io.write_volume(floats, np.zeros((2, 3, 4), np.float32), Metadata())
    out = tmp_path / "out"
    cases = [
        (["--image", text], "cannot tell the format of"),
        (["--segmentation", specs["affs"]], "3 channels; a segmentation is one (z, y, x) volume"),
        (["--segmentation", huge, "--seg-dtype", "uint32"], "segment id 4294967303 in"),
        (["--segmentation", negative], "negative id -1"),
        (["--segmentation", floats], "float32 values; a segmentation needs integer ids"),
        (["--image", tmp_path / "missing.h5"], "no such file"),
        (["--image", specs["raw"], "--image", specs["raw"]], "two layers are named 'raw-raw'"),
        (["--image", f"v={specs['raw']}"], "the layer name 'v' is reserved"),
        ([], "nothing to export"),
        (["--image", specs["raw"], "--chunk", "0,64,64"], "--chunk"),
        (["--image", specs["raw"], "--port", "70000"], "--port must lie in 0..65535"),
    ]
    for args, fragment in cases:
        result = export(*args, "-o", out)
        assert result.returncode == 1, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("em-export: error: ") and fragment in lines[0], (args, lines)
        assert result.stdout == ""
    # the uint64 default holds the large id
    assert export("--segmentation", huge, "--no-meshes", "--no-skeletons", "-o", out, "-q").returncode == 0
    assert sorted(os.listdir(tmp_path)) == ["f.h5", "huge.h5", "neg.h5", "notes.txt", "out"]


def test_as_a_process_errors_and_unwritable_output(tmp_path, inputs):
    specs, _ = inputs
    assert_one_line_error(run_tool("export", "--image", f"{tmp_path}/x.png", "-o", tmp_path / "v"), "export", "no such file")
    if os.geteuid() == 0:  # root writes anywhere permission bits allow: /proc refuses all
        result = run_tool("export", "--image", specs["raw"], "-o", "/proc/emtools-export-test")
        assert_one_line_error(result, "export", "/proc/emtools-export-test")
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        assert_one_line_error(run_tool("export", "--image", specs["raw"], "-o", folder / "v"), "export", "not writable")
    assert_one_line_error(run_tool("export", "--serve", "-o", tmp_path / "nothing"), "export", "no state.json")
    assert run_tool("export", "--image", specs["raw"], "--bogus", "-o", tmp_path / "v").returncode == 2


def test_an_empty_segmentation_exports_empty_meshes_and_skeletons(tmp_path):
    spec = f"{tmp_path}/zeros.h5:/ids"
    io.write_volume(spec, np.zeros((4, 8, 8), np.uint64), Metadata())
    result = export("--segmentation", spec, "-o", tmp_path / "v", "--json")
    assert result.returncode == 0, result.output
    assert json.loads(result.stdout)["layers"][0]["segments"] == []
    for folder, info in (("mesh", {"@type": "neuroglancer_legacy_mesh"}), ("skeletons", None)):
        assert os.listdir(tmp_path / "v" / "zeros" / folder) == ["info"]
        if info:
            assert json.loads((tmp_path / "v" / "zeros" / folder / "info").read_text()) == info
