"""em-watershed as users run it: stdout, one-line errors, chunks, determinism, real data."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_one_line_error, run_tool, shared_data, voronoi_cells
from emtools import io
from emtools.affinities import affinities_from_labels
from emtools.meta import Metadata


def run_inprocess(main, *args):
    """Run a click command in this process (no interpreter start-up): returncode/stdout/stderr."""
    from click.testing import CliRunner

    result = CliRunner().invoke(main, [str(a) for a in args])
    result.returncode = result.exit_code
    return result


def watershed(*args):
    from emtools.cli.watershed import main

    return run_inprocess(main, *args)


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


_cells = voronoi_cells  # Voronoi cells with 0 on the boundaries (tests/conftest.py)


@pytest.fixture
def affs(tmp_path):
    labels = _cells()
    values = affinities_from_labels(labels) * 0.9 + 0.05
    spec = str(tmp_path / "affs.h5:/affs")
    io.write_volume(spec, values.astype(np.float32), Metadata(axes="czyx", voxel_size_nm=(40, 4, 4)))
    return spec, values


def test_writes_fragments_and_prints_only_the_path(tmp_path, affs):
    spec, _ = affs
    out = tmp_path / "frags.h5"
    result = run_tool("watershed", spec, "-o", f"{out}:/fragments")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{out}\n"
    assert "fragments, responsible for 0:6,0:40,0:40" in result.stderr
    labels, meta = io.read_volume(f"{out}:/fragments")
    assert labels.dtype == np.uint64 and labels.max() >= 10
    assert meta.voxel_size_nm == (40, 4, 4) and meta.attrs["fragment_count"] == labels.max()
    assert meta.provenance[-1]["tool"] == "em-watershed"
    assert meta.provenance[-1]["params"]["mode"] == "2d"  # auto: z voxels 10x the in-plane size


def test_output_is_deterministic(tmp_path, affs):
    spec, _ = affs
    for name in ("a.h5", "b.h5"):
        assert watershed(spec, "-o", tmp_path / name, "--mode", "3d", "-q").returncode == 0
    assert _digest(tmp_path / "a.h5") == _digest(tmp_path / "b.h5")


def test_boundary_map_and_inverted_interior_map_agree(tmp_path, affs):
    _, values = affs
    boundary = 1.0 - values.mean(axis=0)
    io.write_volume(str(tmp_path / "b.h5"), boundary.astype(np.float32), Metadata(voxel_size_nm=(40, 4, 4)))
    io.write_volume(str(tmp_path / "i.h5"), (1.0 - boundary).astype(np.float32), Metadata(voxel_size_nm=(40, 4, 4)))
    for name, extra in (("b", []), ("i", ["--invert"])):
        assert watershed(tmp_path / f"{name}.h5", "-o", tmp_path / f"{name}_out.h5", "-q", *extra).returncode == 0
    a, _ = io.read_volume(str(tmp_path / "b_out.h5"))
    b, _ = io.read_volume(str(tmp_path / "i_out.h5"))
    np.testing.assert_array_equal(a, b)


def test_chunk_output_covers_its_responsible_region(tmp_path, affs):
    spec, _ = affs
    split = run_tool("tile", "split", spec, "--chunk", "6,20,40", "--halo", "0,4,0", "-o", tmp_path / "c", "-q")
    assert split.returncode == 0, split.stderr
    first = split.stdout.split()[0]
    result = watershed(first, "-o", tmp_path / "f.h5", "-q")
    assert result.returncode == 0, result.stderr
    labels, meta = io.read_volume(str(tmp_path / "f.h5"))
    assert labels.shape == (6, 20, 40)
    assert meta.attrs["responsible_begin_vx"] == [0, 0, 0] and meta.attrs["read_end_vx"] == [6, 20, 40]
    assert sorted(np.unique(labels[labels != 0])) == list(range(1, int(labels.max()) + 1))


def test_instance_mode(tmp_path):
    z, y, x = np.ogrid[:12, :24, :40]
    fg = (((z - 6) ** 2 + (y - 12) ** 2 + (x - 10) ** 2 <= 36) | ((z - 6) ** 2 + (y - 12) ** 2 + (x - 29) ** 2 <= 36))
    contour = np.zeros(fg.shape, np.float32)
    io.write_volume(str(tmp_path / "fg.h5"), fg.astype(np.float32), Metadata())
    io.write_volume(str(tmp_path / "ct.h5"), contour, Metadata())
    result = watershed(tmp_path / "fg.h5", "--instance", "bc", "--contour", tmp_path / "ct.h5",
                       "--min-size", "20", "-o", tmp_path / "inst.h5", "-q")
    assert result.returncode == 0, result.stderr
    labels, _ = io.read_volume(str(tmp_path / "inst.h5"))
    assert labels.max() == 2 and not labels[~fg].any()
    bad = watershed(tmp_path / "fg.h5", "--instance", "bcd", "--contour", tmp_path / "ct.h5", "-o", tmp_path / "x.h5")
    assert_one_line_error(bad, "watershed", "--distance")


def _write(tmp_path, name, array, **meta):
    spec = str(tmp_path / f"{name}.h5:/data")
    io.write_volume(spec, array, Metadata(**meta))
    return spec


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: (np.full((2, 4, 5, 6), 0.5, np.float32), {"axes": "czyx"}), "has 2 channels"),
        (lambda: (np.full((4, 4, 5, 6), 0.5, np.float32), {"axes": "czyx"}), "affinity_offsets"),
        (lambda: (np.full((4, 4, 5, 6), 0.5, np.float32),
                  {"axes": "czyx", "attrs": {"affinity_offsets": [[0, 0, -1], [0, -1, 0], [-1, 0, 0], [-3, 0, 0]]}}),
         "nearest neighbours"),
        (lambda: (np.where(np.arange(120).reshape(1, 4, 5, 6) == 7, np.nan, 0.5).repeat(3, 0).astype(np.float32),
                  {"axes": "czyx"}), "NaN"),
        (lambda: (np.where(np.arange(120).reshape(1, 4, 5, 6) == 7, np.inf, 0.5).repeat(3, 0).astype(np.float32),
                  {"axes": "czyx"}), "Inf"),
        (lambda: (np.full((3, 4, 5, 6), 1.5, np.float32), {"axes": "czyx"}), "[0, 1]"),
        (lambda: (np.full((3, 4, 5, 6), -0.5, np.float32), {"axes": "czyx"}), "[0, 1]"),
        (lambda: (np.full((4, 5, 6), 7, np.int32), {}), "float32, float16 or uint8"),
    ],
)
def test_bad_inputs_give_one_line_and_write_nothing(tmp_path, make, fragment):
    array, meta = make()
    spec = _write(tmp_path, "in", array, **meta)
    out = tmp_path / "out.h5"
    result = watershed(spec, "-o", out)
    assert_one_line_error(result, "watershed", fragment)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--threshold", "1.5"], "--threshold"),
        (["--radius", "-1"], "--radius"),
        (["--contour", "x.h5"], "--instance"),
        (["--compression", "zip"], "compression"),
    ],
)
def test_bad_options(tmp_path, affs, args, fragment):
    spec, _ = affs
    result = watershed(spec, "-o", tmp_path / "out.h5", *args)
    assert_one_line_error(result, "watershed", fragment)
    assert not (tmp_path / "out.h5").exists()


def test_missing_input_and_help():
    assert_one_line_error(run_tool("watershed", "nope.h5:/x", "-o", "/tmp/never.h5"), "watershed", "nope.h5")
    helptext = run_tool("watershed", "--help")
    assert helptext.returncode == 0 and "Examples:" in helptext.stdout


def test_cli_modules_do_not_import_torch():
    code = ("import sys, emtools.cli.watershed, emtools.cli.agglomerate, emtools.segment.watershed, "
            "emtools.segment.agglomerate, emtools.segment.stitch; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_gala_fragments_respect_the_ground_truth(tmp_path):
    gala = shared_data("gala")
    result = watershed(f"{gala}/train-p1.lzf.h5:stack", "--mode", "3d", "-o", tmp_path / "f.h5", "-q")
    assert result.returncode == 0, result.stderr
    frags, _ = io.read_volume(str(tmp_path / "f.h5"))
    gt, _ = io.read_volume(f"{gala}/train-gt.lzf.h5:stack")
    inside = gt != 0
    # a fragment should lie within one neuron: the voxels outside its main neuron are few
    pairs, counts = np.unique(np.stack([frags[inside], gt[inside]]), axis=1, return_counts=True)
    main = {}
    for (f, _), c in zip(pairs.T, counts):
        main[f] = max(main.get(f, 0), c)
    stray = inside.sum() - sum(main.values())
    assert stray < 0.03 * inside.sum()
    assert 100 < frags.max() < 2000


# ----------------------------------------------------------------------------- --method mutex

MUTEX_OFFSETS = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-2, 0, 0], [0, -5, 0], [0, 0, -5]]
MUTEX_JSON = "[[-1,0,0],[0,-1,0],[0,0,-1],[-2,0,0],[0,-5,0],[0,0,-5]]"


@pytest.fixture
def long_range(tmp_path):
    """Noisy long-range affinities of the cells, with and without affinity_offsets in the file."""
    from emtools.targets import affinity_target

    cells = _cells()
    values, _ = affinity_target(cells, MUTEX_OFFSETS)
    noise = np.random.default_rng(3).normal(0, 0.15, values.shape)
    values = np.clip(values * 0.8 + 0.1 + noise, 0, 1).astype(np.float32)
    tagged = str(tmp_path / "lr.h5:/affs")
    io.write_volume(tagged, values, Metadata(axes="czyx", voxel_size_nm=(8, 8, 8),
                                             attrs={"affinity_offsets": MUTEX_OFFSETS}))
    bare = str(tmp_path / "bare.h5:/affs")
    io.write_volume(bare, values, Metadata(axes="czyx", voxel_size_nm=(8, 8, 8)))
    return tagged, bare, cells


def test_mutex_writes_segments_and_prints_only_the_path(tmp_path, long_range):
    from emtools.evaluate.neuron import neuron_metrics

    tagged, bare, cells = long_range
    out = tmp_path / "seg.h5"
    result = run_tool("watershed", tagged, "--method", "mutex", "--min-size", "10", "-o", f"{out}:/seg")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{out}\n"
    assert "segments (mutex watershed), responsible for 0:6,0:40,0:40" in result.stderr
    labels, meta = io.read_volume(f"{out}:/seg")
    assert labels.dtype == np.uint64 and meta.provenance[-1]["params"]["method"] == "mutex"
    assert meta.provenance[-1]["params"]["offsets"] == MUTEX_OFFSETS
    assert neuron_metrics(labels, cells)["adapted_rand_error"] < 0.05
    # the offsets given on the command line instead of in the file: the same labels
    again = watershed(bare, "--method", "mutex", "--min-size", "10", "--offsets", MUTEX_JSON, "-o", tmp_path / "b.h5")
    assert again.returncode == 0, again.stderr
    np.testing.assert_array_equal(io.read_volume(str(tmp_path / "b.h5"))[0], labels)


def test_mutex_output_is_deterministic(tmp_path, long_range):
    tagged, _, _ = long_range
    args = ["--method", "mutex", "--stride", "1,2,2", "--long-range-fraction", "0.5", "--subset-seed", "3", "-q"]
    for name in ("a.h5", "b.h5"):
        assert watershed(tagged, "-o", tmp_path / name, *args).returncode == 0
    assert _digest(tmp_path / "a.h5") == _digest(tmp_path / "b.h5")


@pytest.mark.parametrize("which, args, fragment", [
    ("bare", [], "has 6 channels and no affinity_offsets in its metadata; give them with --offsets"),
    ("bare", ["--offsets", "[[-1,0,0],[0,-1,0],[0,0,-1],[-2,0,0],[0,-5,0]]"], "the affinities have 6 channels but 5 offsets are given"),
    ("bare", ["--offsets", "[[-1,0,0],[0,-1,0],[0,0,-1],[0,-5],[0,0,-5],[-2,0,0]]"], "is not three integers z,y,x"),
    ("bare", ["--offsets", "-1,0,0"], "--offsets must be a JSON list"),
    ("tagged", ["--offsets", MUTEX_JSON.replace("-5]]", "-6]]")], "differ from the affinity_offsets"),
    ("tagged", ["--threshold", "0.5"], "--threshold is for --method watershed"),
    ("tagged", ["--bias", "3"], "--bias must be in [-1, 1]"),
    ("tagged", ["--stride", "0,1,1"], "--stride must be three positive integers"),
    ("nearest", [], "needs long-range affinities"),
    ("nearest", ["--offsets", "[[-1,0,0],[0,-1,0],[0,0,-1]]"], "needs long-range offsets"),
    ("boundary", [], "needs affinities (C, z, y, x) with long-range offsets"),
])
def test_mutex_bad_inputs_give_one_line_and_write_nothing(tmp_path, long_range, which, args, fragment):
    tagged, bare, cells = long_range
    specs = {"tagged": tagged, "bare": bare,
             "nearest": _write(tmp_path, "nn", affinities_from_labels(cells), axes="czyx"),
             "boundary": _write(tmp_path, "b", np.full(cells.shape, 0.5, np.float32))}
    before = sorted(p.name for p in tmp_path.iterdir())
    result = watershed(specs[which], "--method", "mutex", "-o", tmp_path / "out.h5", *args)
    assert_one_line_error(result, "watershed", fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_mutex_options_are_refused_without_it(tmp_path, affs):
    spec, _ = affs
    result = watershed(spec, "--offsets", MUTEX_JSON, "-o", tmp_path / "out.h5")
    assert_one_line_error(result, "watershed", "--offsets is for --method mutex")
    assert "--method mutex" in watershed("--help").stdout


def test_preview_draws_the_fragments_over_the_input_and_bad_paths_write_nothing(tmp_path, affs):
    from PIL import Image

    from emtools.pictures import LABEL_ALPHA, id_colours, labels_picture

    spec, values = affs
    out, png = tmp_path / "frags.h5", tmp_path / "frags.png"
    result = watershed(spec, "-o", out, "--preview", png, "-q")
    assert result.returncode == 0, result.output
    assert result.stdout == f"{out}\n{png}\n"
    with Image.open(png) as image:
        picture = np.asarray(image)
    assert picture.shape == (40, 4 * 40 + 3 * 4, 3)  # one row, four of the six sections (0, 2, 3, 5), 40x40
    np.testing.assert_array_equal(picture, labels_picture([str(out)], spec))
    frags = io.read_volume(str(out))[0][0]
    grey = np.floor(values[:3, 0].astype(np.float32).mean(axis=0) * 255 + 0.5)
    expected = np.floor((1 - LABEL_ALPHA) * grey[..., None] + LABEL_ALPHA * id_colours(frags) + 0.5)
    assert np.abs(picture[:, :40].astype(int) - expected).max() <= 1  # each fragment in its colour over the map
    for bad, fragment in ((tmp_path / "no" / "p.png", "output folder does not exist"), (tmp_path / "p.jpg", ".png")):
        result = watershed(spec, "-o", tmp_path / "other.h5", "--preview", bad)
        assert_one_line_error(result, "watershed", fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["affs.h5", "frags.h5", "frags.png"]
