"""em-augment as users run it: outputs, provenance, determinism, previews, one-line errors, real data."""

import hashlib
import os

import numpy as np
import pytest

from conftest import assert_one_line_error, run_tool, shared_data
from emtools import augment, io
from emtools.meta import Metadata

VOXEL = (40.0, 4.0, 4.0)


def em_augment(*args):
    """Run em-augment in this process (no interpreter start-up): returncode/stdout/stderr."""
    from click.testing import CliRunner

    from emtools.cli.augment import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    result.returncode = result.exit_code
    return result


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def stack(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (4, 32, 36), dtype=np.uint8)
    labels = np.zeros(image.shape, np.uint64)
    labels[:, 4:14, 4:16] = 5
    labels[1:, 18:30, 10:30] = 2**40
    meta = Metadata(voxel_size_nm=VOXEL, offset_nm=(80.0, 8.0, 0.0))
    io.write_volume(str(tmp_path / "raw.h5:/raw"), image, meta)
    io.write_volume(str(tmp_path / "seg.h5:/seg"), labels, meta)
    return str(tmp_path / "raw.h5:/raw"), str(tmp_path / "seg.h5:/seg"), image, labels


def files(folder):
    return sorted(os.listdir(folder))


def test_augments_image_and_labels_like_the_library(tmp_path, stack):
    raw, seg, image, labels = stack
    out, out_labels = tmp_path / "aug.h5", tmp_path / "aug-seg.h5"
    result = em_augment(raw, seg, "-o", f"{out}:/image", "--labels-out", f"{out_labels}:/labels",
                        "--aug", "flip,rotate", "--aug", "elastic", "--param", "rotate.angle_deg=-30,30",
                        "--param", "elastic.p=0.5", "--seed", 7)
    assert result.returncode == 0, result.output
    assert result.stdout == f"{out}\n{out_labels}\n"
    got, meta = io.read_volume(f"{out}:/image")
    got_labels, labels_meta = io.read_volume(f"{out_labels}:/labels")
    steps = [("flip", {}), ("rotate", {"angle_deg": (-30, 30)}), ("elastic", {"p": 0.5})]
    ref, ref_labels = augment.augment(image.astype(np.float32) / 255, {"labels": labels}, steps,
                                      np.random.default_rng(7))
    assert got.dtype == np.uint8 and got_labels.dtype == np.uint64
    np.testing.assert_array_equal(got, np.rint(np.clip(ref, 0, 1) * 255).astype(np.uint8))
    np.testing.assert_array_equal(got_labels, ref_labels["labels"])
    assert meta.voxel_size_nm == VOXEL and meta.offset_nm == (80.0, 8.0, 0.0)
    record = meta.provenance[-1]
    assert record["tool"] == "em-augment" and record["params"]["seed"] == 7
    assert [s["name"] for s in record["params"]["aug"]] == ["flip", "rotate", "elastic"]
    assert record["params"]["aug"][1]["angle_deg"] == [-30.0, 30.0] and record["params"]["aug"][2]["p"] == 0.5
    assert record["params"]["aug"][2]["sigma"] == 8.0  # defaults are recorded too
    assert [i["spec"] for i in record["inputs"]] == [raw, seg]
    assert labels_meta.provenance[-1] == record


def test_same_seed_same_bytes_and_a_preview(tmp_path, stack):
    raw, seg, _, _ = stack
    digests = []
    for name in ("a", "b"):
        args = [raw, seg, "-o", tmp_path / f"{name}.tif", "--labels-out", tmp_path / f"{name}-seg.h5",
                "--preview", tmp_path / f"{name}.png", "--aug", "rotate,grayscale,misalign", "--seed", 3, "-q"]
        result = em_augment(*args)
        assert result.returncode == 0, result.output
        digests.append([digest(tmp_path / f) for f in (f"{name}.tif", f"{name}-seg.h5", f"{name}.png")])
    assert digests[0] == digests[1]
    other = em_augment(raw, "-o", tmp_path / "c.tif", "--aug", "rotate,grayscale,misalign", "--seed", 4, "-q")
    assert other.returncode == 0 and digest(tmp_path / "c.tif") != digests[0][0]
    from PIL import Image

    with Image.open(tmp_path / "a.png") as png:
        assert png.mode == "RGB"
        preview = np.asarray(png)
    # two rows (before, after) of four sections of 32x36, with 4-pixel gaps
    assert preview.shape == (2 * 32 + 4, 4 * 36 + 3 * 4, 3)
    image = io.read_volume(raw)[0]
    top_left = preview[:32, :36].astype(int)
    background = io.read_volume(seg)[0][0] == 0
    np.testing.assert_array_equal(top_left[background][:, 0], image[0][background])  # grey, no overlay there
    assert (top_left[~background].std(axis=-1) > 0).mean() > 0.9  # coloured where there are labels


def test_repeat_writes_k_draws_from_one_seed(tmp_path, stack):
    raw, _, image, _ = stack
    result = em_augment(raw, "-o", tmp_path / "aug_{i}.h5", "--aug", "rotate", "--repeat", 3, "--seed", 1)
    assert result.returncode == 0, result.output
    paths = [tmp_path / f"aug_{i}.h5" for i in range(3)]
    assert result.stdout.splitlines() == [str(p) for p in paths]
    outs = [io.read_volume(str(p))[0] for p in paths]
    assert not np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[1], outs[2])
    rng = np.random.default_rng(1)
    for i, out in enumerate(outs):
        ref, _ = augment.augment(image.astype(np.float32) / 255, {}, [("rotate", {})], rng)
        np.testing.assert_array_equal(out, np.rint(ref * 255).astype(np.uint8))
        assert io.read_volume(str(paths[i]))[1].provenance[-1]["params"]["index"] == i


def test_float_images_stay_float_and_mixup_reads_another_volume(tmp_path, stack):
    raw, _, image, _ = stack
    unit = image.astype(np.float32) / 255
    io.write_volume(str(tmp_path / "f.h5:/f"), unit, Metadata(voxel_size_nm=VOXEL, offset_nm=(80.0, 8.0, 0.0)))
    io.write_volume(str(tmp_path / "o.h5:/o"), np.ones_like(unit), Metadata(voxel_size_nm=VOXEL, offset_nm=(80.0, 8.0, 0.0)))
    result = em_augment(tmp_path / "f.h5:/f", "-o", tmp_path / "m.h5", "--aug", "mixup", "--seed", 0,
                        "--param", "mixup.weight=0.5", "--param", f"mixup.other={tmp_path / 'o.h5:/o'}")
    assert result.returncode == 0, result.output
    out, meta = io.read_volume(str(tmp_path / "m.h5"))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 0.5 * unit + 0.5, atol=1e-6)
    assert meta.provenance[-1]["params"]["aug"][0]["other"] == str(tmp_path / "o.h5:/o")


def test_list_prints_every_augmentation_and_its_options():
    result = em_augment("--list")
    assert result.returncode == 0
    for name in augment.AUGMENTATIONS:
        assert f"{name}: " in result.stdout
    assert "  angle_deg = -180,180  " in result.stdout and "  mode = 2d (2d|3d)  " in result.stdout


def test_the_tool_and_the_library_never_import_torch():
    import subprocess
    import sys

    code = ("import sys; import emtools.cli.augment, emtools.augment, emtools.targets, emtools.augment.preview; "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def _bad_inputs(tmp_path, stack):
    raw, seg, image, labels = stack
    meta = Metadata(voxel_size_nm=VOXEL, offset_nm=(80.0, 8.0, 0.0))
    io.write_volume(str(tmp_path / "small.h5:/s"), labels[:, :20], meta)
    io.write_volume(str(tmp_path / "coarse.h5:/s"), labels, Metadata(voxel_size_nm=(40, 8, 8), offset_nm=(80, 16, 0)))
    io.write_volume(str(tmp_path / "float.h5:/s"), labels.astype(np.float32), meta)
    io.write_volume(str(tmp_path / "shifted.h5:/s"), labels, Metadata(voxel_size_nm=VOXEL))
    import h5py

    with h5py.File(tmp_path / "flat.h5", "w") as f:
        f["img"] = image[0]
    out = ["-o", tmp_path / "out.h5", "--seed", 0]
    lab = ["--labels-out", tmp_path / "out-seg.h5"]
    return [
        ([raw, "--aug", "rotat", *out], "unknown augmentation 'rotat' (did you mean rotate?)"),
        ([raw, "--aug", "rotate", "--param", "rotate.angle=3", *out],
         "rotate has no option 'angle' (did you mean angle_deg?); its options: angle_deg, step_deg (and p)"),
        ([raw, "--aug", "rotate", "--param", "flip.p=0.5", *out], "flip is not in --aug (rotate)"),
        ([raw, "--aug", "rotate", "--param", "rotate.angle_deg", *out], "is not NAME.KEY=VALUE"),
        ([raw, "--aug", "rotate", "--param", "rotate.angle_deg=a,b", *out], "a list must hold numbers only"),
        ([raw, "--aug", "elastic", "--param", "elastic.mode=4d", *out], "elastic.mode must be one of 2d, 3d"),
        ([raw, "--aug", "copy_paste", "--param", "copy_paste.source=x.h5", *out], "takes arrays"),
        ([raw, str(tmp_path / "small.h5:/s"), "--aug", "flip", *out, *lab], "shape 4x20x36 of"),
        ([raw, str(tmp_path / "coarse.h5:/s"), "--aug", "flip", *out, *lab], "voxel sizes differ"),
        ([raw, str(tmp_path / "shifted.h5:/s"), "--aug", "flip", *out, *lab], "covers 0:4,0:32,0:36"),
        ([raw, str(tmp_path / "float.h5:/s"), "--aug", "flip", *out, *lab], "labels must be integers"),
        ([str(tmp_path / "flat.h5:/img"), "--aug", "flip", *out], "is 2D"),
        ([raw, "--aug", "flip", "-o", tmp_path / "nowhere" / "out.h5", "--seed", 0], "output folder does not exist"),
        ([raw, seg, "--aug", "flip", *out], "name where the moved labels go with --labels-out"),
        ([raw, "--aug", "flip", *out, *lab], "--labels-out needs a LABELS input"),
        ([raw, "--aug", "flip", "-o", str(tmp_path / "raw.h5:/again"), "--seed", 0], "is also an input"),
        ([raw, "--aug", "flip", *out, "--repeat", 2], "--repeat 2 needs {i} in -o"),
        ([raw, "--aug", "flip", *out, "--preview", tmp_path / "p.jpg"], "--preview must be a .png file"),
        ([raw, "--aug", "flip", "-o", tmp_path / "out.n5", "--seed", 0], "output must be file.h5"),
    ]


def test_bad_input_fails_with_one_line_and_writes_nothing(tmp_path, stack):
    for args, message in _bad_inputs(tmp_path, stack):
        before = files(tmp_path)
        result = em_augment(*args)
        assert result.returncode == 1, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("em-augment: error: ") and message in lines[0], (args, lines)
        assert files(tmp_path) == before, args


def test_float_image_outside_the_unit_range_is_refused(tmp_path):
    io.write_volume(str(tmp_path / "f.h5"), np.full((2, 8, 8), 3.0, np.float32), Metadata())
    result = run_tool("augment", tmp_path / "f.h5", "-o", tmp_path / "o.h5", "--aug", "flip", "--seed", 0)
    assert_one_line_error(result, "augment", "float images must lie in [0, 1], found [3, 3]")
    assert not (tmp_path / "o.h5").exists()


def isbi_labels_per_slice(label_spec):
    """ISBI labels: 0 = membrane, 255 = interior; instances = 4-connected interior per slice."""
    import cc3d

    raw, _ = io.read_volume(label_spec)
    out = np.zeros(raw.shape, np.uint64)
    offset = 0
    for z in range(raw.shape[0]):
        cc = cc3d.connected_components(raw[z] > 127, connectivity=4).astype(np.uint64)
        cc[cc > 0] += np.uint64(offset)
        offset = max(offset, int(cc.max()))
        out[z] = cc
    return out


def test_real_isbi_stack_with_its_labels(tmp_path):
    folder = shared_data("isbi2012")
    image_spec = str(folder / "image" / "2?.png")  # sections 20..29
    labels = isbi_labels_per_slice(str(folder / "label" / "2?.png"))
    io.write_volume(str(tmp_path / "labels.h5:/labels"), labels, Metadata(voxel_size_nm=(50, 4, 4)))
    outputs = []
    for name in ("a", "b"):
        result = run_tool("augment", image_spec, tmp_path / "labels.h5:/labels", "--voxel-size", "50,4,4",
                          "--aug", "flip,rotate,elastic,grayscale,missing_section,misalign", "--seed", 11,
                          "--param", "misalign.mode=translation", "--param", "elastic.alpha=8",
                          "-o", tmp_path / f"{name}.h5:/image", "--labels-out", tmp_path / f"{name}-labels.h5",
                          "--preview", tmp_path / f"{name}.png")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [f"{tmp_path / name}.h5", f"{tmp_path / name}-labels.h5",
                                              f"{tmp_path / name}.png"]
        outputs.append([digest(tmp_path / f) for f in (f"{name}.h5", f"{name}-labels.h5", f"{name}.png")])
    assert outputs[0] == outputs[1]
    image, meta = io.read_volume(str(tmp_path / "a.h5:/image"))
    moved, _ = io.read_volume(str(tmp_path / "a-labels.h5"))
    assert image.shape == moved.shape == labels.shape == (10, 512, 512) and image.dtype == np.uint8
    assert meta.voxel_size_nm == (50.0, 4.0, 4.0)
    assert set(np.unique(moved).tolist()) <= set(np.unique(labels).tolist())
    # labels moved with the image: cell interiors stay brighter than membranes in every kept section
    original, _ = io.read_volume(image_spec)
    assert original[labels != 0].mean() - original[labels == 0].mean() > 20
    for z in range(10):
        if image[z].std() == 0:  # a blanked (missing) section
            continue
        assert image[z][moved[z] != 0].mean() > image[z][moved[z] == 0].mean() + 5, z


def test_a_failed_later_write_removes_the_outputs_of_the_run(tmp_path, stack, monkeypatch):
    """The image and labels are written before the preview; if the preview fails, none remain."""
    raw, seg, _, _ = stack

    def full_disk(path, image):
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(io, "write_png", full_disk)
    before = files(tmp_path)
    result = em_augment(raw, seg, "-o", tmp_path / "aug.h5", "--labels-out", tmp_path / "aug-seg.h5",
                        "--preview", tmp_path / "p.png", "--aug", "flip", "--seed", "1")
    assert result.returncode == 1 and "No space left on device" in result.output
    assert files(tmp_path) == before
