"""em-eval as users run it: one JSON object on stdout (one line per segmentation, or a table, for
several), one-line errors, exit codes, real data."""

import csv
import json
import os
import types

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from conftest import assert_one_line_error, run_tool, shared_data

from emtools import io
from emtools.cli.eval import main
from emtools.evaluate import MODES, evaluate_files, instance_metrics, neuron_metrics
from emtools.meta import Metadata

VOXEL = (40.0, 4.0, 4.0)


def labels(seed=0, shape=(6, 20, 24)):
    rng = np.random.default_rng(seed)
    gt = np.repeat(rng.integers(1, 6, (shape[0], shape[1], shape[2] // 4)), 4, axis=2).astype(np.uint64)
    gt[:, :2] = 0
    seg = gt.copy()
    seg[:, 10:] += np.uint64(10)  # a split
    seg[:, :, :4] = 3  # and a merge
    return seg, gt


def write(tmp_path, name, array, voxel=VOXEL, offset=(0, 0, 0), attrs=None):
    spec = f"{tmp_path / name}.h5:/main"
    io.write_volume(spec, array, Metadata(voxel_size_nm=voxel, offset_nm=offset, attrs=attrs or {}))
    return spec


@pytest.fixture
def pair(tmp_path):
    seg, gt = labels()
    return write(tmp_path, "seg", seg), write(tmp_path, "gt", gt), seg, gt


def invoke(*args):
    """em-eval in this process (fast: numba's compiled code loads once); same result fields as run_tool.

    The subprocess tests below (run_tool) cover the installed entry point itself.
    """
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return types.SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def run_json(*args, run=invoke):
    result = run(*args, "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_neuron_mode_prints_one_json_object_with_the_library_values(pair):
    seg_spec, gt_spec, seg, gt = pair
    out = run_json(seg_spec, gt_spec, run=lambda *a: run_tool("eval", *a))
    expected = neuron_metrics(seg, gt)
    for key, value in expected.items():
        assert out[key] == value, key  # the exact float survives JSON
    assert out["mode"] == "neuron" and out["gt_zero"] == "ignore" and out["pred_zero"] == "label"
    assert out["region_vx"] == "0:6,0:20,0:24" and out["voxel_size_nm"] == list(VOXEL)
    assert out["voxels"] == seg.size and out["segmentation"] == seg_spec
    cremi = run_json(seg_spec, gt_spec, "--pred-zero", "cremi", "--gt-zero", "label")
    assert cremi["adapted_rand_error"] == neuron_metrics(seg, gt, "label", "cremi")["adapted_rand_error"]


def test_regions_are_intersected_in_world_coordinates(tmp_path):
    seg, gt = labels()
    seg_spec = write(tmp_path, "seg", seg)
    # the ground truth covers sections 2..5 only: offset 2 sections = 80 nm
    gt_spec = write(tmp_path, "gt", gt[2:], offset=(80, 0, 0))
    result = invoke(seg_spec, gt_spec)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["region_vx"] == "2:6,0:20,0:24" and out["offset_nm"] == [80.0, 0.0, 0.0]
    assert out["voi_split"] == neuron_metrics(seg[2:], gt[2:])["voi_split"]
    assert "regions differ" in result.stderr
    strict = invoke(seg_spec, gt_spec, "--exact-region")
    assert_one_line_error(strict, "eval", "regions differ", "0:6,0:20,0:24", "2:6,0:20,0:24")


def test_csv_per_object_table_is_written(pair, tmp_path):
    seg_spec, gt_spec, _, gt = pair
    path = tmp_path / "objects.csv"
    run_json(seg_spec, gt_spec, "--csv", path)
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["gt_id"]) for r in rows] == sorted(int(v) for v in np.unique(gt) if v)
    assert sum(int(r["size"]) for r in rows) == np.count_nonzero(gt)
    assert not [f for f in os.listdir(tmp_path) if ".emtmp-" in f]


def test_instance_mode_with_size_classes_and_table(tmp_path):
    rng = np.random.default_rng(3)
    gt = np.zeros((8, 30, 30), np.uint32)
    for i in range(1, 10):
        z, y, x = rng.integers(0, 6), rng.integers(0, 24), rng.integers(0, 24)
        gt[z : z + 2, y : y + 5, x : x + 5] = i
    pred = gt.astype(np.uint64) * 2
    pred[pred == 6] = 0
    out = run_json(write(tmp_path, "p", pred), write(tmp_path, "g", gt), "--mode", "instance",
                   "--size-classes", "20,40", "--csv", tmp_path / "o.csv")
    expected = instance_metrics(pred, gt, size_classes=(20, 40))
    for key in ("ap_50", "ap_75", "ap_50_95", "precision", "recall", "f1", "tp", "fp", "fn"):
        assert out[key] == expected[key], key
    assert out["size_classes"]["bounds_voxels"] == [20.0, 40.0]
    with open(tmp_path / "o.csv") as handle:
        kinds = [r["kind"] for r in csv.DictReader(handle)]
    assert kinds.count("gt") == expected["gt_objects"] and kinds.count("pred") == expected["pred_objects"]


def test_semantic_and_synapse_modes_threshold_probabilities(tmp_path):
    rng = np.random.default_rng(4)
    prob = rng.random((5, 16, 16)).astype(np.float32)
    gt = (rng.random((5, 16, 16)) > 0.7).astype(np.uint8)
    p_spec, g_spec = write(tmp_path, "p", prob), write(tmp_path, "g", gt)
    sem = run_json(p_spec, g_spec, "--mode", "semantic", "--threshold", "0.5")
    p, g = prob > 0.5, gt > 0
    assert sem["tp"] == int((p & g).sum()) and sem["threshold"] == 0.5
    syn = run_json(p_spec, g_spec, "--mode", "synapse", "--threshold", "0.5", "--distance-threshold", "10")
    assert syn["adgt_nm"] > 0 and syn["cremi_cleft_score"] == (syn["adgt_nm"] + syn["adf_nm"]) / 2
    assert syn["iou"] == sem["iou"]
    classes = run_json(write(tmp_path, "c", gt * 2), g_spec, "--mode", "semantic", "--per-class",
                       "--csv", tmp_path / "c.csv")
    assert set(classes["classes"]) == {"1", "2"} and classes["classes"]["1"]["tp"] == 0


def test_voxel_size_override_resolves_a_mismatch(tmp_path):
    seg, gt = labels()
    seg_spec = write(tmp_path, "seg", seg, voxel=(30, 6, 6))
    gt_spec = write(tmp_path, "gt", gt)
    assert_one_line_error(invoke(seg_spec, gt_spec), "eval", "voxel sizes differ")
    out = run_json(seg_spec, gt_spec, "--voxel-size", "30,6,6")
    assert out["voxel_size_nm"] == [30.0, 6.0, 6.0]


@pytest.mark.parametrize("mode", list(MODES))
def test_every_registered_mode_runs_from_the_cli_as_the_library_scores_it(tmp_path, mode):
    rng = np.random.default_rng(7)
    gt = (rng.random((4, 12, 12)) > 0.6).astype(np.uint8)
    seg = np.roll(gt, 1, axis=2)
    seg_spec, gt_spec = write(tmp_path, "seg", seg), write(tmp_path, "gt", gt)
    out = run_json(seg_spec, gt_spec, "--mode", mode)
    assert out["mode"] == mode
    assert out == json.loads(json.dumps(evaluate_files(seg_spec, gt_spec, mode)))


def test_unknown_mode_is_a_usage_error_naming_the_registered_modes(pair):
    seg_spec, gt_spec, _, _ = pair
    result = invoke(seg_spec, gt_spec, "--mode", "nueron")
    assert result.returncode == 2 and result.stdout == ""
    assert "Invalid value for '--mode': 'nueron' is not one of" in result.stderr
    for name in MODES:
        assert f"'{name}'" in result.stderr, name


# ----------------------------------------------------------------------------- several segmentations

@pytest.fixture
def sweep(tmp_path, pair):
    """seg_1, seg_2, seg_10 (written out of order), as em-agglomerate names and annotates a sweep."""
    _, gt_spec, seg, gt = pair
    specs = {}
    for i in (10, 2, 1):
        array = seg.copy()
        array[:, :, : 4 + 2 * i] = 3  # more merged at higher thresholds
        specs[i] = write(tmp_path, f"seg_{i}", array, attrs={"threshold": i / 10})
    return [specs[i] for i in (1, 2, 10)], gt_spec


def test_several_segmentations_print_one_line_each_as_single_runs_do(sweep, tmp_path):
    specs, gt_spec = sweep
    singles = [invoke(spec, gt_spec, "-q").stdout for spec in specs]
    assert all(out.count("\n") == 1 for out in singles)
    many = invoke(*specs, gt_spec, "-q")
    assert many.returncode == 0 and many.stderr == ""
    assert many.stdout == "".join(singles)
    # a quoted glob, expanded in natural order (seg_2 before seg_10), dataset kept
    glob = run_tool("eval", f"{tmp_path}/seg_*.h5:/main", gt_spec, "-q")
    assert glob.returncode == 0 and glob.stdout == many.stdout
    # globs and specs mix, in the order given; the log names each segmentation
    mixed = invoke(specs[2], f"{tmp_path}/seg_?.h5:/main", gt_spec)
    assert mixed.stdout == singles[2] + singles[0] + singles[1]
    assert [line.split(" vs ")[0] for line in mixed.stderr.splitlines()] == [
        f"em-eval: {s}" for s in (specs[2], specs[0], specs[1])]


def test_table_marks_the_best_and_shows_the_recorded_threshold(sweep, tmp_path):
    specs, gt_spec = sweep
    scores = [json.loads(line) for line in invoke(*specs, gt_spec, "-q").stdout.splitlines()]
    assert [s["segmentation_threshold"] for s in scores] == [0.1, 0.2, 1.0]  # JSON lines carry it too
    best = min(range(3), key=lambda i: scores[i]["voi"])
    assert sorted(s["voi"] for s in scores).count(scores[best]["voi"]) == 1  # one best row
    result = invoke(f"{tmp_path}/seg_*.h5:/main", gt_spec, "--table", "-q")
    assert result.returncode == 0 and result.stderr == ""
    width = max(len(s) for s in specs)
    expected = [f"# best (*): lowest voi (VOI split + merge, bits); neuron mode against {gt_spec}",
                f"  {'segmentation':<{width}}  threshold  voi_split  voi_merge     voi  adapted_rand_error"]
    for i, (spec, out) in enumerate(zip(specs, scores)):
        mark = "*" if i == best else " "
        expected.append(f"{mark} {spec:<{width}}  {(1, 2, 10)[i] / 10:>9g}  {out['voi_split']:>9.4f}  "
                        f"{out['voi_merge']:>9.4f}  {out['voi']:>6.4f}  {out['adapted_rand_error']:>18.4f}")
    assert result.stdout == "\n".join(expected) + "\n"
    # one segmentation works too; no recorded threshold, no column
    single = invoke(specs[0], gt_spec, "--table", "--mode", "instance", "-q", "--iou", "0.3")
    assert single.stdout.splitlines()[0].startswith("# best (*): highest ap_75")
    assert single.stdout.splitlines()[1].split()[:2] == ["segmentation", "threshold"]
    assert single.stdout.splitlines()[2].startswith(f"* {specs[0]}")


def test_csv_with_several_segmentations_needs_a_seg_field(sweep, tmp_path):
    specs, gt_spec = sweep
    invoke(specs[0], gt_spec, "--csv", tmp_path / "single.csv")
    result = invoke(*specs, gt_spec, "-q", "--csv", tmp_path / "objects_{seg}.csv")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 3
    assert (tmp_path / "objects_seg_1.csv").read_text() == (tmp_path / "single.csv").read_text()
    assert {p.name for p in tmp_path.glob("objects_*.csv")} == {f"objects_seg_{i}.csv" for i in (1, 2, 10)}
    assert_one_line_error(invoke(*specs, gt_spec, "--csv", tmp_path / "o.csv"),
                          "eval", "--csv with 3 segmentations needs {seg} in the file name")
    same_file = [specs[0], specs[0].replace(":/main", ":/other")]
    assert_one_line_error(invoke(*same_file, gt_spec, "--csv", tmp_path / "o_{seg}.csv"),
                          "eval", "names the same file", "o_seg_1.csv")
    assert_one_line_error(invoke(*specs, gt_spec, "--csv", tmp_path / "no" / "o_{seg}.csv"),
                          "eval", "output folder does not exist")
    assert not (tmp_path / "o.csv").exists() and not list(tmp_path.glob("o_*.csv"))


def test_bad_inputs_among_several_are_refused_before_any_work(sweep, tmp_path, pair):
    specs, gt_spec = sweep
    _, _, seg, gt = pair
    other_grid = write(tmp_path, "grid", seg, voxel=(30, 6, 6))
    part = write(tmp_path, "part", seg[2:], offset=(80, 0, 0))
    csv_out = tmp_path / "o_{seg}.csv"
    cases = [
        ((specs[0], tmp_path / "missing.h5", gt_spec), ("no such file", "missing.h5")),
        ((f"{tmp_path}/nothing_*.h5", gt_spec), ("no file matches", "nothing_*.h5")),
        ((f"{tmp_path}/*.h5", gt_spec), ("also matches the ground truth", f"{tmp_path}/gt.h5")),
        ((specs[0], other_grid, gt_spec), ("voxel sizes differ", "grid.h5")),
        ((specs[0], part, gt_spec, "--exact-region"), ("regions differ", "part.h5")),
    ]
    for args, fragments in cases:
        for extra in ((), ("--table",), ("--csv", csv_out)):
            assert_one_line_error(invoke(*args, *extra), "eval", *fragments)
    assert not list(tmp_path.glob("o_*.csv"))
    # without --exact-region the other region is scored, with a warning that names the file
    result = invoke(specs[0], part, gt_spec, "-q")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 2
    assert result.stderr.count("\n") == 1 and "regions differ: " + part in result.stderr
    assert json.loads(result.stdout.splitlines()[1])["voi_split"] == neuron_metrics(seg[2:], gt[2:])["voi_split"]


# ----------------------------------------------------------------------------- bad input

def test_float_labels_are_refused(tmp_path, pair):
    _, gt_spec, seg, _ = pair
    f = write(tmp_path, "f", seg.astype(np.float32))
    assert_one_line_error(run_tool("eval", f, gt_spec), "eval", "floating point", f)
    assert_one_line_error(invoke(f, gt_spec, "--mode", "semantic"), "eval", "--threshold")


def test_no_overlap_is_refused(tmp_path, pair):
    _, gt_spec, seg, _ = pair
    far = write(tmp_path, "far", seg, offset=(4000, 0, 0))
    assert_one_line_error(invoke(far, gt_spec), "eval", "no overlap", "100:106,0:20,0:24")


def test_empty_segmentation_and_ground_truth_are_refused(tmp_path, pair):
    seg_spec, gt_spec, seg, _ = pair
    zeros = write(tmp_path, "zeros", np.zeros_like(seg))
    assert_one_line_error(invoke(zeros, gt_spec), "eval", "segmentation is empty")
    assert_one_line_error(invoke(seg_spec, zeros), "eval", "ground truth is empty")
    assert_one_line_error(invoke(zeros, gt_spec, "--mode", "instance"), "eval", "segmentation is empty")


def test_other_bad_inputs(tmp_path, pair):
    _, gt_spec, seg, _ = pair
    negative = write(tmp_path, "neg", np.full(seg.shape, -1, np.int32))
    assert_one_line_error(invoke(negative, gt_spec), "eval", "negative labels")
    channels = write(tmp_path, "four", np.zeros((2,) + seg.shape, np.uint64))
    assert_one_line_error(invoke(channels, gt_spec), "eval", "channels")
    flat = str(tmp_path / "flat.tif")
    tifffile.imwrite(flat, np.ones((20, 24), np.uint16))
    assert_one_line_error(invoke(flat, gt_spec), "eval", "2D")
    nan = np.full(seg.shape, 0.7, np.float32)
    nan[0, 0, 0] = np.nan
    nan_spec = write(tmp_path, "nan", nan)
    assert_one_line_error(invoke(nan_spec, gt_spec, "--mode", "semantic", "--threshold", "0.5"),
                          "eval", "NaN")
    assert_one_line_error(invoke(tmp_path / "missing.h5", gt_spec), "eval", "no such file")


def test_bad_options_are_refused_before_any_work(tmp_path, pair):
    seg_spec, gt_spec, _, _ = pair
    missing = tmp_path / "no" / "objects.csv"
    assert_one_line_error(invoke(seg_spec, gt_spec, "--csv", missing), "eval", "output folder does not exist")
    assert not missing.parent.exists()
    assert_one_line_error(invoke(seg_spec, gt_spec, "--mode", "instance", "--size-classes", "9,3"),
                          "eval", "--size-classes")
    assert_one_line_error(invoke(seg_spec, gt_spec, "--threshold", "0.5"), "eval", "--threshold")
    assert_one_line_error(invoke(seg_spec, gt_spec, "--mode", "synapse", "--csv", tmp_path / "x.csv"),
                          "eval", "--csv")
    assert_one_line_error(invoke(seg_spec, gt_spec, "--iou", "0"), "eval", "--iou")
    assert_one_line_error(invoke(seg_spec, gt_spec, "--mode", "semantic", "--per-class", "--threshold", "0.5"),
                          "eval", "--per-class")
    assert not (tmp_path / "x.csv").exists()


def test_usage_errors_exit_2_and_help_documents_the_conventions():
    usage = run_tool("eval", "only-one-argument")
    assert usage.returncode == 2 and usage.stdout == ""
    text = run_tool("eval", "--help").stdout
    for fragment in ("Examples:", "log2", "self-pairs", "--gt-zero", "waterz", "CREMI", "MitoEM", "101-point",
                     "Hungarian", "ADGT", "world coordinates"):
        assert fragment in text, fragment


# ----------------------------------------------------------------------------- real data

def test_real_gala_fragments_score_as_waterz_does():
    base = shared_data("gala")
    out = run_json(f"{base}/train-ws.lzf.h5:stack", f"{base}/train-gt.lzf.h5:stack", run=lambda *a: run_tool("eval", *a))
    seg, _ = io.read_volume(f"{base}/train-ws.lzf.h5:stack")
    gt, _ = io.read_volume(f"{base}/train-gt.lzf.h5:stack")
    expected = neuron_metrics(seg, gt)
    assert out["voi_split"] == expected["voi_split"] and out["adapted_rand_error"] == expected["adapted_rand_error"]
    waterz = pytest.importorskip("waterz")
    saved = os.dup(1)
    with open(os.devnull, "w") as null:  # waterz prints its results from C++ on stdout
        os.dup2(null.fileno(), 1)
        try:
            theirs = waterz.evaluate(seg.astype(np.uint64), gt.astype(np.uint64))
        finally:
            os.dup2(saved, 1)
            os.close(saved)
    for key in ("voi_split", "voi_merge", "rand_split", "rand_merge"):
        assert out[key] == pytest.approx(theirs[key], abs=1e-9), key


def test_real_snemi_tiffs_with_voxel_size():
    base = shared_data("gala", "snemi-mini")
    out = run_json(f"{base}/train-fragments.tif", f"{base}/train-labels.tif", "--voxel-size", "30,6,6")
    assert out["voxel_size_nm"] == [30.0, 6.0, 6.0] and out["gt_objects"] == 27 and out["seg_objects"] == 1389
    assert out["voi_split"] > out["voi_merge"]


# ----------------------------------------------------------------------------- --plot

def _png(path):
    from PIL import Image

    with Image.open(path) as png:
        assert png.mode == "RGB"
        return np.asarray(png)


def test_plot_draws_the_errors_over_the_image_and_stdout_stays_json(tmp_path, pair):
    from emtools.evaluate import contingency_table
    from emtools.pictures import (BOTH_RGB, MERGE, OUTLINE_RGB, SPLIT, SPLIT_RGB, LargestOverlaps, eval_errors_picture,
                                  outline_mask, split_merge_classes)

    seg_spec, gt_spec, seg, gt = pair
    image = write(tmp_path, "image", np.random.default_rng(1).integers(0, 256, seg.shape).astype(np.uint8))
    plain = run_json(seg_spec, gt_spec)
    for name in ("a.png", "b.png"):
        assert run_json(seg_spec, gt_spec, "--plot", tmp_path / name, "--image", image) == plain
    assert open(tmp_path / "a.png", "rb").read() == open(tmp_path / "b.png", "rb").read()
    drawn = _png(tmp_path / "a.png")
    # two rows (ground truth, segmentation) of four of the six sections, 20x24 each
    assert drawn.shape == (2 * 20 + 4, 4 * 24 + 3 * 4, 3)
    np.testing.assert_array_equal(drawn, eval_errors_picture([seg_spec], gt_spec, image))
    # in the segmentation's row, the errors of the whole volume are tinted where they are, and only there
    overlaps = LargestOverlaps.from_table(contingency_table(gt, seg))
    classes = split_merge_classes(seg[0], gt[0], overlaps)
    row, grey = drawn[24:, :24].astype(int), io.read_volume(image)[0][0].astype(int)
    free = ~outline_mask(seg[0])
    for code, colour in ((SPLIT, SPLIT_RGB), (SPLIT | MERGE, BOTH_RGB)):  # the fixture's two kinds
        where = (classes == code) & free
        assert where.sum() >= 8
        np.testing.assert_array_equal(row[where], np.floor(0.4 * grey[where][:, None] + 0.6 * np.array(colour) + 0.5))
    correct = (classes == 0) & free
    np.testing.assert_array_equal(row[correct], np.repeat(grey[correct][:, None], 3, axis=1))
    assert (row[~free] == OUTLINE_RGB).all()


def test_plot_of_a_sweep_has_one_row_per_segmentation(sweep, tmp_path):
    specs, gt_spec = sweep
    result = invoke(*specs, gt_spec, "--table", "--plot", tmp_path / "sweep.png", "-q")
    assert result.returncode == 0 and result.stderr == "" and "seg_10" in result.stdout
    assert _png(tmp_path / "sweep.png").shape == (4 * 20 + 3 * 4, 4 * 24 + 3 * 4, 3)


def test_bad_plot_options_are_refused_before_any_output(tmp_path, pair):
    seg_spec, gt_spec, seg, _ = pair
    csv_path = tmp_path / "objects.csv"
    assert_one_line_error(invoke(seg_spec, gt_spec, "--csv", csv_path, "--plot", tmp_path / "no" / "p.png"),
                          "eval", "output folder does not exist")
    assert_one_line_error(invoke(seg_spec, gt_spec, "--plot", tmp_path / "p.jpg"), "eval", "--plot must be a .png")
    assert_one_line_error(invoke(seg_spec, gt_spec, "--image", seg_spec), "eval", "--image is the background of --plot")
    assert_one_line_error(invoke(seg_spec, gt_spec, "--mode", "semantic", "--plot", tmp_path / "p.png"),
                          "eval", "--plot draws split/merge errors", "neuron")
    assert_one_line_error(invoke(seg_spec, gt_spec, "--plot", tmp_path / "p.png", "--image", tmp_path / "none.h5"),
                          "eval", "none.h5")
    # an image on another grid fails after scoring but before anything is written
    coarse = write(tmp_path, "coarse", np.zeros(seg.shape, np.uint8), voxel=(40, 8, 8))
    assert_one_line_error(invoke(seg_spec, gt_spec, "--csv", csv_path, "--plot", tmp_path / "p.png", "--image", coarse),
                          "eval", "voxel sizes differ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coarse.h5", "gt.h5", "seg.h5"]
