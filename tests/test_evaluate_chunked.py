"""evaluate_files: two files scored slab by slab give exactly what the whole arrays give;
score_many: several segmentations against one ground truth give exactly what single runs give."""

import logging

import numpy as np
import pytest

from emtools import io
from emtools.errors import EmError
from emtools.evaluate import (
    EvalSettings,
    InstanceTable,
    cleft_distances,
    contingency_table,
    evaluate_files,
    foreground_mask,
    instance_metrics_from_table,
    instance_objects,
    neuron_metrics_from_table,
    neuron_objects,
    score_files,
    score_many,
    segmentation_specs,
    semantic_metrics_from_counts,
    semantic_per_class,
)
from emtools.evaluate.semantic import binary_counts
from emtools.meta import Metadata

VOXEL = (40.0, 4.0, 4.0)
SHAPE = (7, 12, 10)
# one section and a bit: slabs of 1 section, so 7 reads per input
SLAB = SHAPE[1] * SHAPE[2] + 5


def write(tmp_path, name, array, offset=(0, 0, 0), attrs=None):
    spec = f"{tmp_path / name}.h5:/main"
    io.write_volume(spec, array, Metadata(voxel_size_nm=VOXEL, offset_nm=offset, attrs=attrs or {}))
    return spec


@pytest.fixture
def labels(tmp_path):
    rng = np.random.default_rng(5)
    gt = np.repeat(rng.integers(0, 6, (SHAPE[0], SHAPE[1], SHAPE[2] // 2)), 2, axis=2).astype(np.uint32)
    seg = (gt.astype(np.uint64) * 3) % 7
    seg[:, 6:] += np.uint64(20)
    return write(tmp_path, "seg", seg), write(tmp_path, "gt", gt), seg, gt


@pytest.fixture
def read_depths(monkeypatch):
    """The z depth of every region read from a file."""
    depths = []
    original = io.VolumeSource.read

    def spy(self, box=None):
        data = original(self, box)
        depths.append(data.shape[0])
        return data

    monkeypatch.setattr(io.VolumeSource, "read", spy)
    return depths


@pytest.mark.parametrize("gt_zero", ["ignore", "label"])
@pytest.mark.parametrize("pred_zero", ["label", "cremi"])
def test_neuron_slabs_equal_the_whole_table(labels, read_depths, gt_zero, pred_zero):
    seg_spec, gt_spec, seg, gt = labels
    out = evaluate_files(seg_spec, gt_spec, "neuron", gt_zero=gt_zero, pred_zero=pred_zero, slab_voxels=SLAB)
    assert read_depths == [1] * (2 * SHAPE[0])  # bounded memory: one section per read
    table = contingency_table(gt, seg, skip="gt-zero" if gt_zero == "ignore" else "none")
    expected = neuron_metrics_from_table(table, pred_zero=pred_zero)
    assert {k: out[k] for k in expected} == expected  # bit for bit
    assert out["gt_zero"] == gt_zero and out["pred_zero"] == pred_zero and out["mode"] == "neuron"
    assert out["region_vx"] == "0:7,0:12,0:10" and out["voxels"] == seg.size and out["voxel_size_nm"] == list(VOXEL)


def test_default_slabs_and_per_object_table(labels):
    seg_spec, gt_spec, seg, gt = labels
    result = score_files(seg_spec, gt_spec, objects=True)
    assert result.warnings == [] and result.region.shape == SHAPE and result.seconds >= 0
    expected = neuron_objects(contingency_table(gt, seg))
    assert set(result.objects) == set(expected)
    for key, column in expected.items():
        np.testing.assert_array_equal(result.objects[key], column, err_msg=key)
    assert score_files(seg_spec, gt_spec).objects is None


def test_instance_slabs_equal_the_whole_table(labels):
    seg_spec, gt_spec, seg, gt = labels
    result = score_files(seg_spec, gt_spec, "instance", EvalSettings(size_classes=(20, 60), iou_threshold=0.3),
                         objects=True, slab_voxels=SLAB)
    t = InstanceTable(contingency_table(gt, seg, skip="both-zero"))
    expected = instance_metrics_from_table(t, iou_threshold=0.3, size_classes=(20, 60))
    assert {k: result.report[k] for k in expected} == expected
    for key, column in instance_objects(t, 0.3, (20, 60)).items():
        np.testing.assert_array_equal(result.objects[key], column, err_msg=key)


def test_semantic_threshold_and_per_class(tmp_path, labels):
    _, gt_spec, _, gt = labels
    rng = np.random.default_rng(6)
    prob = rng.random(SHAPE).astype(np.float32)
    out = evaluate_files(write(tmp_path, "prob", prob), gt_spec, "semantic", threshold=0.4, slab_voxels=SLAB)
    table = contingency_table(foreground_mask(gt, "gt"), prob > 0.4, skip="none")
    assert out == {**out, "threshold": 0.4, **semantic_metrics_from_counts(*binary_counts(table))}
    assert list(out)[8] == "threshold"  # right after the inputs, as em-eval prints it
    classes = (gt % 3).astype(np.uint8)
    out = evaluate_files(write(tmp_path, "classes", classes), gt_spec, "semantic", per_class=True, slab_voxels=SLAB)
    expected = semantic_per_class(contingency_table(gt, classes, skip="none"))
    assert out["mean_iou"] == expected["mean_iou"]
    assert out["classes"] == {str(k): v for k, v in expected["classes"].items()}


def test_synapse_reads_the_whole_overlap_once(tmp_path, read_depths):
    clefts_gt = np.zeros(SHAPE, np.uint8)
    clefts_gt[2:4, 3:7, 2:5] = 1
    prob = np.zeros(SHAPE, np.float32)
    prob[3:5, 4:8, 2:6] = 0.9
    out = evaluate_files(write(tmp_path, "p", prob), write(tmp_path, "g", clefts_gt), "synapse", threshold=0.5,
                         distance_nm=10.0, slab_voxels=SLAB)
    assert read_depths == [SHAPE[0], SHAPE[0]]
    expected = cleft_distances(prob > 0.5, clefts_gt > 0, VOXEL, 10.0)
    assert {k: out[k] for k in expected} == expected
    assert out["threshold"] == 0.5 and out["tp"] == int(((prob > 0.5) & (clefts_gt > 0)).sum())


def test_regions_overlap_in_world_coordinates(tmp_path, labels, caplog):
    seg_spec, _, seg, gt = labels
    gt_spec = write(tmp_path, "gt_part", gt[3:], offset=(3 * VOXEL[0], 0, 0))
    result = score_files(seg_spec, gt_spec, slab_voxels=SLAB)
    assert result.report["region_vx"] == "3:7,0:12,0:10" and result.report["offset_nm"] == [120.0, 0.0, 0.0]
    assert len(result.warnings) == 1 and "regions differ" in result.warnings[0]
    expected = neuron_metrics_from_table(contingency_table(gt[3:], seg[3:]))
    assert result.report["voi_split"] == expected["voi_split"]
    with caplog.at_level(logging.WARNING, logger="emtools"):
        evaluate_files(seg_spec, gt_spec)
    assert "scored their overlap 3:7,0:12,0:10" in caplog.text
    with pytest.raises(EmError, match="regions differ"):
        evaluate_files(seg_spec, gt_spec, exact_region=True)
    # an offset given by the caller wins over the file's
    out = evaluate_files(seg_spec, gt_spec, gt_offset_nm=(0, 0, 0), pred_offset_nm=(0, 0, 0))
    assert out["region_vx"] == "0:4,0:12,0:10"


# ----------------------------------------------------------------------------- bad input

def test_bad_calls_are_one_line_errors(tmp_path, labels):
    seg_spec, gt_spec, seg, _ = labels
    bad = [
        (dict(mode="nueron"), "unknown eval mode 'nueron'; did you mean 'neuron'?"),
        (dict(treshold=0.5), "unknown eval setting 'treshold'; did you mean 'threshold'?"),
        (dict(threshold=0.5), "--threshold applies to --mode semantic or synapse"),
        (dict(mode="instance", iou_threshold=2.0), "--iou must be in (0, 1]"),
        (dict(slab_voxels=0), "slab_voxels must be a positive whole number"),
        (dict(slab_voxels=2.5), "slab_voxels must be a positive whole number"),
    ]
    for kwargs, message in bad:
        with pytest.raises(EmError) as caught:
            evaluate_files(seg_spec, gt_spec, **kwargs)
        assert message in str(caught.value), kwargs
    with pytest.raises(EmError, match="--csv writes per-object tables"):
        score_files(seg_spec, gt_spec, "synapse", objects=True)


def test_bad_inputs_are_one_line_errors(tmp_path, labels):
    seg_spec, gt_spec, seg, _ = labels
    floats = write(tmp_path, "f", seg.astype(np.float32))
    with pytest.raises(EmError, match="floating point\\): labels must be integers"):
        evaluate_files(floats, gt_spec)
    with pytest.raises(EmError, match="give --threshold to binarise it"):
        evaluate_files(floats, gt_spec, "semantic")
    zeros = write(tmp_path, "zeros", np.zeros_like(seg))
    with pytest.raises(EmError, match="the segmentation is empty in the evaluated region 0:7,0:12,0:10"):
        evaluate_files(zeros, gt_spec, slab_voxels=SLAB)
    with pytest.raises(EmError, match="the ground truth is empty"):
        evaluate_files(seg_spec, zeros, "instance")
    assert evaluate_files(seg_spec, zeros, gt_zero="label")["gt_objects"] == 1
    with pytest.raises(EmError, match="the ground truth has no cleft voxel"):
        evaluate_files(seg_spec, zeros, "synapse")
    negative = write(tmp_path, "neg", np.full(SHAPE, -1, np.int16))
    with pytest.raises(EmError, match="^ground truth .*neg.h5:/main has negative labels"):
        evaluate_files(negative, negative, "semantic", per_class=True)  # class maps: ground truth first
    with pytest.raises(EmError, match="^segmentation .*neg.h5:/main has negative labels"):
        evaluate_files(negative, negative)
    far = write(tmp_path, "far", seg, offset=(4000, 0, 0))
    with pytest.raises(EmError, match="no overlap"):
        evaluate_files(far, gt_spec)
    other_grid = f"{tmp_path / 'grid'}.h5:/main"
    io.write_volume(other_grid, seg, Metadata(voxel_size_nm=(30, 6, 6), offset_nm=(0, 0, 0)))
    with pytest.raises(EmError, match="voxel sizes differ"):
        evaluate_files(seg_spec, other_grid)
    assert evaluate_files(seg_spec, other_grid, voxel_size_nm=(30, 6, 6))["voxel_size_nm"] == [30.0, 6.0, 6.0]
    with pytest.raises(EmError, match="no such file"):
        evaluate_files(str(tmp_path / "missing.h5"), gt_spec)



# ----------------------------------------------------------------------------- several segmentations

@pytest.fixture
def sweep(tmp_path, labels):
    """Three segmentations of the ``labels`` ground truth, as em-agglomerate writes them (a threshold each)."""
    seg_spec, gt_spec, seg, gt = labels
    specs = []
    for i, threshold in enumerate((0.3, 0.5, 0.7)):
        array = seg.copy()
        array[:, :, : 2 * i] = 1  # more merged at higher thresholds
        specs.append(write(tmp_path, f"seg_{threshold:g}", array, attrs={"threshold": threshold}))
    return specs, gt_spec


def _same(a, b):
    assert a.report == b.report and a.warnings == b.warnings and a.region == b.region
    assert a.seg_threshold == b.seg_threshold
    assert (a.objects is None) == (b.objects is None)
    for key in a.objects or {}:
        np.testing.assert_array_equal(a.objects[key], b.objects[key], err_msg=key)


@pytest.mark.parametrize("mode,settings,objects", [
    ("neuron", EvalSettings(), True),
    ("neuron", EvalSettings(gt_zero="label", pred_zero="cremi"), False),
    ("instance", EvalSettings(size_classes=(20, 60)), True),
    ("semantic", EvalSettings(per_class=True), True),
    ("synapse", EvalSettings(distance_nm=50.0), False),
])
def test_many_equal_single_runs_bit_for_bit(sweep, mode, settings, objects):
    specs, gt_spec = sweep
    many = list(score_many(specs, gt_spec, mode, settings, objects=objects, slab_voxels=SLAB))
    assert [r.report["segmentation"] for r in many] == specs
    assert [r.seg_threshold for r in many] == [0.3, 0.5, 0.7]
    for spec, result in zip(specs, many):
        _same(result, score_files(spec, gt_spec, mode, settings, objects=objects, slab_voxels=SLAB))


def test_the_ground_truth_is_read_once_per_batch(sweep, read_depths):
    specs, gt_spec = sweep
    list(score_many(specs, gt_spec, slab_voxels=SLAB))
    assert read_depths == [1] * (4 * SHAPE[0])  # one section at a time: ground truth + 3 segmentations
    read_depths.clear()
    list(score_many(specs, gt_spec, slab_voxels=SLAB, batch=2))
    assert read_depths == [1] * ((3 + 2) * SHAPE[0])  # two batches: the ground truth twice


def test_segmentations_over_other_regions_are_batched_apart(tmp_path, sweep, labels):
    specs, gt_spec = sweep
    _, _, seg, gt = labels
    part = write(tmp_path, "part", seg[3:], offset=(3 * VOXEL[0], 0, 0))
    results = list(score_many([specs[0], part, specs[1]], gt_spec, slab_voxels=SLAB))
    assert [r.report["region_vx"] for r in results] == ["0:7,0:12,0:10", "3:7,0:12,0:10", "0:7,0:12,0:10"]
    assert results[0].warnings == results[2].warnings == [] and "regions differ" in results[1].warnings[0]
    expected = neuron_metrics_from_table(contingency_table(gt[3:], seg[3:]))
    assert results[1].report["voi_split"] == expected["voi_split"] and results[1].seg_threshold is None
    _same(results[2], score_files(specs[1], gt_spec))


def test_every_input_is_checked_before_a_voxel_is_read(tmp_path, sweep, labels, read_depths):
    specs, gt_spec = sweep
    _, _, seg, _ = labels
    other_grid = f"{tmp_path / 'grid'}.h5:/main"
    io.write_volume(other_grid, seg, Metadata(voxel_size_nm=(30, 6, 6)))
    part = write(tmp_path, "part", seg[3:], offset=(3 * VOXEL[0], 0, 0))
    floats = write(tmp_path, "f", seg.astype(np.float32))
    for bad, message in [(other_grid, "voxel sizes differ"), (str(tmp_path / "missing.h5"), "no such file"),
                         (floats, "floating point")]:
        with pytest.raises(EmError, match=message):
            list(score_many(specs + [bad], gt_spec))
    with pytest.raises(EmError, match="regions differ: .*part.h5"):
        list(score_many(specs + [part], gt_spec, exact_region=True))
    assert read_depths == []
    for kwargs, message in [(dict(batch=0), "batch must be a positive whole number"),
                            (dict(slab_voxels=0), "slab_voxels must be a positive whole number"),
                            (dict(mode="nueron"), "did you mean 'neuron'")]:
        with pytest.raises(EmError, match=message):
            list(score_many(specs, gt_spec, **kwargs))
    with pytest.raises(EmError, match="no segmentation to score"):
        list(score_many([], gt_spec))


def test_segmentation_specs_expand_globs_in_natural_order(tmp_path, labels):
    _, gt_spec, seg, _ = labels
    for name in ("s_10", "s_2", "s_1"):
        write(tmp_path, name, seg)
    (tmp_path / "s_3.h5").mkdir()  # folders are not segmentations
    folder = str(tmp_path)
    assert segmentation_specs([f"{folder}/s_*.h5"], gt_spec) == [f"{folder}/s_{i}.h5" for i in (1, 2, 10)]
    assert segmentation_specs([f"{folder}/s_1?.h5:/main", "x.tif", f"{folder}/s_[12].h5:seg"]) == [
        f"{folder}/s_10.h5:/main", "x.tif", f"{folder}/s_1.h5:seg", f"{folder}/s_2.h5:seg"]
    # a glob of 2D slices is one volume, as everywhere; plain specs pass unchecked (opening checks them)
    assert segmentation_specs(["raw/*.png", "missing.h5"]) == ["raw/*.png", "missing.h5"]
    with pytest.raises(EmError, match="^no file matches .*nothing_\\*.h5$"):
        segmentation_specs([f"{folder}/nothing_*.h5"])
    with pytest.raises(EmError, match="^.*/\\*.h5 also matches the ground truth .*/gt.h5; narrow it"):
        segmentation_specs([f"{folder}/*.h5"], gt_spec)
    # the same file is fine where the datasets differ
    assert segmentation_specs([f"{folder}/g*.h5:/seg"], gt_spec) == [f"{folder}/gt.h5:/seg"]
    with pytest.raises(EmError, match="also matches the ground truth"):
        segmentation_specs([f"{folder}/g*.h5"], gt_spec)
