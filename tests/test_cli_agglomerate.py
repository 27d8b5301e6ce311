"""em-agglomerate as users run it: thresholds, history replay, one-line errors, chunked runs."""

import hashlib
import os

import numpy as np
import pytest

from conftest import assert_one_line_error, run_tool, shared_data
from emtools import io
from emtools.affinities import noisy_affinities
from emtools.meta import Metadata

THRESHOLDS = "0.2,0.4,0.6"


def run_inprocess(main, *args):
    """Run a click command in this process (no interpreter start-up): returncode/stdout/stderr."""
    from click.testing import CliRunner

    result = CliRunner().invoke(main, [str(a) for a in args])
    result.returncode = result.exit_code
    return result


def agglomerate(*args):
    from emtools.cli.agglomerate import main

    return run_inprocess(main, *args)


def watershed(*args):
    from emtools.cli.watershed import main

    return run_inprocess(main, *args)


def tile(*args):
    from emtools.cli.tile import main

    return run_inprocess(main, *args)


def voi(a, b):
    """Variation of information (bits) between two label volumes, all voxels counted
    (pass ``seg[gt != 0], gt[gt != 0]`` to ignore unlabelled ground truth)."""
    _, joint = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1, return_counts=True)
    _, ca = np.unique(a, return_counts=True)
    _, cb = np.unique(b, return_counts=True)

    def h(counts):
        p = counts / counts.sum()
        return -(p * np.log2(p)).sum()

    return 2 * h(joint) - h(ca) - h(cb)


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _synthetic(shape, seed):
    """Neurites with realistic membranes: the project's generator, else Voronoi cells."""
    try:
        from emtools.synth import make_synthetic_volume
    except ImportError:  # pragma: no cover - the generator is another module of this project
        pytest.skip("emtools.synth is not available")
    return make_synthetic_volume(shape, seed=seed, voxel_size_nm=(40, 8, 8), mean_cell_diameter_nm=300,
                                 mitochondria=False).neurons


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """A noisy synthetic affinity volume with ground truth, and its fragments."""
    folder = tmp_path_factory.mktemp("agg")
    gt = _synthetic((12, 96, 96), 0)
    affs = noisy_affinities(gt, seed=0)
    meta = Metadata(axes="czyx", voxel_size_nm=(40, 8, 8))
    io.write_volume(str(folder / "affs.h5:/affs"), affs, meta)
    io.write_volume(str(folder / "gt.h5:/gt"), gt, Metadata(voxel_size_nm=(40, 8, 8)))
    result = watershed(f"{folder}/affs.h5:/affs", "-o", folder / "frags.h5:/frags", "-q")
    assert result.returncode == 0, result.output
    return folder


def test_segment_writes_one_output_per_threshold_and_the_history(tmp_path, volume):
    result = run_tool("agglomerate", "segment", f"{volume}/frags.h5:/frags", f"{volume}/affs.h5:/affs",
                      "-t", THRESHOLDS, "-o", f"{tmp_path}/seg_{{threshold}}.h5:/seg", "--history", tmp_path / "h.tsv")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{tmp_path}/seg_{t}.h5" for t in ("0.2", "0.4", "0.6")] + [f"{tmp_path}/h.tsv"]
    segs = [io.read_volume(f"{tmp_path}/seg_{t}.h5:/seg") for t in ("0.2", "0.4", "0.6")]
    counts = [len(np.unique(s)) for s, _ in segs]
    assert counts[0] > counts[1] > counts[2]  # higher thresholds merge more
    assert segs[1][1].attrs["threshold"] == 0.4 and segs[1][1].attrs["score"] == "mean"
    gt, _ = io.read_volume(f"{volume}/gt.h5:/gt")
    frags, _ = io.read_volume(f"{volume}/frags.h5:/frags")
    inside = gt != 0
    assert min(voi(s[inside], gt[inside]) for s, _ in segs) < 0.5 * voi(frags[inside], gt[inside])
    # replay at a threshold that was not asked for, and at the same ones: no rerun needed
    replay = agglomerate("replay", f"{volume}/frags.h5:/frags", "--history", tmp_path / "h.tsv",
                         "-t", "0.4", "-o", tmp_path / "r.h5")
    assert replay.returncode == 0, replay.output
    np.testing.assert_array_equal(io.read_volume(str(tmp_path / "r.h5"))[0], segs[1][0])
    beyond = agglomerate("replay", f"{volume}/frags.h5:/frags", "--history", tmp_path / "h.tsv", "-t", "0.7",
                         "-o", tmp_path / "x.h5")
    assert_one_line_error(beyond, "agglomerate", "rerun")


@pytest.mark.parametrize("score", ["quantile:50", "max"])
def test_scores_and_determinism(tmp_path, volume, score):
    for name in ("a", "b"):
        result = agglomerate("segment", f"{volume}/frags.h5:/frags", f"{volume}/affs.h5:/affs", "-t", "0.5",
                             "--score", score, "-o", tmp_path / f"{name}.h5", "-q")
        assert result.returncode == 0, result.output
    assert _digest(tmp_path / "a.h5") == _digest(tmp_path / "b.h5")


def test_boundary_map_instead_of_affinities(tmp_path, volume):
    affs, _ = io.read_volume(f"{volume}/affs.h5:/affs")
    io.write_volume(str(tmp_path / "b.h5"), (1 - affs.mean(0)).astype(np.float32), Metadata(voxel_size_nm=(40, 8, 8)))
    result = agglomerate("segment", f"{volume}/frags.h5:/frags", tmp_path / "b.h5", "-t", "0.5", "-o", tmp_path / "s.h5")
    assert result.returncode == 0, result.output
    assert result.stdout == f"{tmp_path}/s.h5\n"


def _inputs(tmp_path, volume, affs=None, frags=None, affs_meta=None):
    f = f"{volume}/frags.h5:/frags"
    a = f"{volume}/affs.h5:/affs"
    if affs is not None:
        a = str(tmp_path / "bad_affs.h5:/affs")
        io.write_volume(a, affs, affs_meta or Metadata(axes="czyx", voxel_size_nm=(40, 8, 8)))
    if frags is not None:
        f = str(tmp_path / "bad_frags.h5:/frags")
        io.write_volume(f, frags, Metadata(voxel_size_nm=(40, 8, 8)))
    return f, a


def _good_affs(volume):
    return io.read_volume(f"{volume}/affs.h5:/affs")[0]


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("two_channels", "has 2 channels"),
        ("shape", "does not match"),
        ("nan", "NaN"),
        ("inf", "Inf"),
        ("range", "[0, 1]"),
        ("float_labels", "integers"),
        ("voxel", "voxel sizes differ"),
    ],
)
def test_bad_inputs_give_one_line_and_write_nothing(tmp_path, volume, case, fragment):
    affs = _good_affs(volume)
    kwargs = {}
    if case == "two_channels":
        kwargs["affs"] = affs[:2]
    elif case == "shape":
        kwargs["affs"] = affs[:, :, :-1]
    elif case == "nan":
        affs[1, 2, 3, 4] = np.nan
        kwargs["affs"] = affs
    elif case == "inf":
        affs[0, 1, 1, 1] = np.inf
        kwargs["affs"] = affs
    elif case == "range":
        affs[2, 0, 0, 0] = 1.2
        kwargs["affs"] = affs
    elif case == "float_labels":
        kwargs["frags"] = io.read_volume(f"{volume}/frags.h5:/frags")[0].astype(np.float32)
    elif case == "voxel":
        kwargs["affs"] = affs
        kwargs["affs_meta"] = Metadata(axes="czyx", voxel_size_nm=(40, 4, 4))
    f, a = _inputs(tmp_path, volume, **kwargs)
    before = sorted(os.listdir(tmp_path))
    result = agglomerate("segment", f, a, "-t", THRESHOLDS, "-o", f"{tmp_path}/seg_{{threshold}}.h5", "--history", tmp_path / "h.tsv")
    assert_one_line_error(result, "agglomerate", fragment)
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize(
    "thresholds, output, fragment",
    [
        ("0.5,1.5", "seg_{threshold}.h5", "[0, 1]"),
        ("-0.1", "seg.h5", "[0, 1]"),
        ("0.6,0.2", "seg_{threshold}.h5", "increasing"),
        ("0.2,abc", "seg_{threshold}.h5", "comma-separated"),
        ("0.2,0.4", "seg.h5", "{threshold}"),
    ],
)
def test_bad_thresholds(tmp_path, volume, thresholds, output, fragment):
    result = agglomerate("segment", f"{volume}/frags.h5:/frags", f"{volume}/affs.h5:/affs", "-t", thresholds,
                         "-o", tmp_path / output)
    assert_one_line_error(result, "agglomerate", fragment)
    assert os.listdir(tmp_path) == []


def test_bad_score_is_one_line(tmp_path, volume):
    result = run_tool("agglomerate", "segment", f"{volume}/frags.h5:/frags", f"{volume}/affs.h5:/affs",
                      "-t", "0.5", "--score", "median", "-o", tmp_path / "s.h5")
    assert_one_line_error(result, "agglomerate", "unknown score")


def chunked_segmentation(folder, map_spec, chunk, halo, thresholds, threshold, extra=()):
    """The documented chunk-by-chunk pipeline, each step as its command (in this process)."""
    for sub in ("chunks", "frags", "edges", "seg"):
        os.makedirs(folder / sub, exist_ok=True)
    split = tile("split", map_spec, "--chunk", chunk, "--halo", halo, "-o", folder / "chunks", "-q")
    assert split.returncode == 0, split.output
    chunks = split.stdout.split()
    for c in chunks:
        result = watershed(c, "-o", folder / "frags" / os.path.basename(c), "-q", *extra)
        assert result.returncode == 0, result.output
    frags = [str(folder / "frags" / os.path.basename(c)) for c in chunks]
    assert agglomerate("offsets", *frags, "-o", folder / "offsets.tsv", "-q").returncode == 0
    for c in chunks:
        name = os.path.basename(c).replace(".h5", ".tsv")
        result = agglomerate("edges", c, "--offsets", folder / "offsets.tsv", "-o", folder / "edges" / name, "-q",
                             *(["--invert"] if "--invert" in extra else []))
        assert result.returncode == 0, result.output
    tables = sorted(str(p) for p in (folder / "edges").iterdir())
    result = agglomerate("stitch", *tables, "--offsets", folder / "offsets.tsv", "-t", thresholds, "-o", folder / "lut.tsv", "-q")
    assert result.returncode == 0, result.output
    for f in frags:
        result = agglomerate("relabel", f, "--offsets", folder / "offsets.tsv", "--lut", folder / "lut.tsv",
                             "-t", threshold, "-o", folder / "seg" / os.path.basename(f), "-q")
        assert result.returncode == 0, result.output
    merged = tile("merge", *sorted(str(p) for p in (folder / "seg").iterdir()), "-o", folder / "chunked.h5", "-q")
    assert merged.returncode == 0, merged.output
    return io.read_volume(str(folder / "chunked.h5"))[0]


def whole_segmentation(folder, map_spec, threshold, extra=()):
    assert watershed(map_spec, "-o", folder / "whole_frags.h5", "-q", *extra).returncode == 0
    result = agglomerate("segment", folder / "whole_frags.h5", map_spec, "-t", threshold, "-o", folder / "whole.h5", "-q",
                         *(["--invert"] if "--invert" in extra else []))
    assert result.returncode == 0, result.output
    return io.read_volume(str(folder / "whole.h5"))[0]


def test_chunked_run_matches_the_whole_volume_run_on_synthetic_data(tmp_path, volume):
    spec = f"{volume}/affs.h5:/affs"
    chunked = chunked_segmentation(tmp_path, spec, "6,48,48", "2,12,12", "0.3,0.5", "0.5")
    whole = whole_segmentation(tmp_path, spec, "0.5")
    gt, _ = io.read_volume(f"{volume}/gt.h5:/gt")
    assert chunked.shape == whole.shape == gt.shape
    inside = gt != 0
    assert voi(chunked, whole) < 0.25
    assert voi(chunked[inside], gt[inside]) < voi(whole[inside], gt[inside]) + 0.15


def test_chunked_run_matches_the_whole_volume_run_on_gala(tmp_path):
    gala = shared_data("gala")
    spec = f"{gala}/train-p1.lzf.h5:stack"
    chunked = chunked_segmentation(tmp_path, spec, "25,50,100", "5,10,10", "0.5,0.9", "0.9", extra=("--mode", "3d"))
    whole = whole_segmentation(tmp_path, spec, "0.9", extra=("--mode", "3d"))
    gt, _ = io.read_volume(f"{gala}/train-gt.lzf.h5:stack")
    inside = gt != 0
    assert voi(chunked, whole) < 0.35
    assert voi(chunked[inside], gt[inside]) < voi(whole[inside], gt[inside]) + 0.15
    assert voi(whole[inside], gt[inside]) < 0.5


def test_preview_has_one_row_per_threshold_and_all_or_nothing(tmp_path, volume, monkeypatch):
    from PIL import Image

    from emtools import pictures
    from emtools.errors import EmError

    frags, affs = f"{volume}/frags.h5:/frags", f"{volume}/affs.h5:/affs"
    args = ["segment", frags, affs, "-t", "0.2,0.6", "-o", f"{tmp_path}/seg_{{threshold}}.h5:/seg",
            "--history", tmp_path / "h.tsv"]
    result = agglomerate(*args, "--preview", tmp_path / "seg.png", "-q")
    assert result.returncode == 0, result.output
    assert result.stdout.split() == [f"{tmp_path}/seg_0.2.h5", f"{tmp_path}/seg_0.6.h5", f"{tmp_path}/h.tsv",
                                     f"{tmp_path}/seg.png"]
    with Image.open(tmp_path / "seg.png") as image:
        picture = np.asarray(image)
    assert picture.shape == (2 * 96 + 4, 4 * 96 + 3 * 4, 3)  # thresholds x four of the twelve sections
    np.testing.assert_array_equal(picture, pictures.labels_picture(
        [f"{tmp_path}/seg_0.2.h5:/seg", f"{tmp_path}/seg_0.6.h5:/seg"], affs))
    assert (picture[:96] != picture[100:]).any()  # more merged at 0.6
    replay = agglomerate("replay", frags, "--history", tmp_path / "h.tsv", "-t", "0.6", "-o", tmp_path / "r.h5",
                         "--preview", tmp_path / "r.png")
    assert replay.returncode == 0 and replay.stdout.split() == [f"{tmp_path}/r.h5", f"{tmp_path}/r.png"]
    before = sorted(p.name for p in tmp_path.iterdir())
    bad = agglomerate(*args[:-2], "-o", f"{tmp_path}/new_{{threshold}}.h5", "--preview", tmp_path / "no" / "p.png")
    assert_one_line_error(bad, "agglomerate", "output folder does not exist")

    def broken(*_, **__):
        raise EmError("cannot draw")

    monkeypatch.setattr(pictures, "labels_picture", broken)
    failed = agglomerate(*args[:-2], "-o", f"{tmp_path}/new_{{threshold}}.h5", "--preview", tmp_path / "p.png", "-q")
    assert_one_line_error(failed, "agglomerate", "cannot draw")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no segmentation of the failed runs remains
