"""Semantic voxel scores and CREMI cleft distances: hand cases, numpy/scipy references, elf."""

import numpy as np
import pytest
from conftest import shared_data
from scipy import ndimage

from emtools import io
from emtools.errors import EmError
from emtools.evaluate import (
    cleft_distances,
    contingency_table,
    foreground_mask,
    semantic_metrics,
    semantic_per_class,
)


def test_hand_counts():
    gt = np.array([1, 1, 1, 0, 0, 0, 0, 0], np.uint8).reshape(1, 2, 4)
    pred = np.array([1, 1, 0, 1, 0, 0, 0, 0], np.uint64).reshape(1, 2, 4)
    m = semantic_metrics(pred, gt)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 4)
    assert m["iou"] == 0.5 and m["dice"] == m["f1"] == pytest.approx(2 / 3)
    assert m["precision"] == m["recall"] == pytest.approx(2 / 3) and m["accuracy"] == 0.75


def test_identical_masks_and_labels_as_foreground():
    gt = np.zeros((2, 3, 4), np.uint32)
    gt[:, 1:] = 7
    m = semantic_metrics(gt * 2, gt)  # any non-zero label is foreground
    assert m["iou"] == m["dice"] == m["precision"] == m["recall"] == m["accuracy"] == 1.0


@pytest.mark.parametrize("order", ["C", "F"])
def test_random_masks_match_numpy_and_elf(order):
    rng = np.random.default_rng(0)
    prob = rng.random((6, 20, 24)).astype(np.float32)
    gt = (rng.random((6, 20, 24)) > 0.6).astype(np.uint8)
    if order == "F":
        prob, gt = np.asfortranarray(prob), np.asfortranarray(gt)
    m = semantic_metrics(prob, gt, threshold=0.5)
    p, g = prob > 0.5, gt > 0
    tp, fp, fn = (p & g).sum(), (p & ~g).sum(), (~p & g).sum()
    assert m["iou"] == pytest.approx(tp / (tp + fp + fn), abs=1e-15)
    assert m["accuracy"] == pytest.approx((p == g).mean(), abs=1e-15)
    elf_eval = pytest.importorskip("elf.evaluation")
    assert m["dice"] == pytest.approx(elf_eval.dice_score(p.astype(np.uint8), gt), abs=1e-9)


def test_undefined_ratios_are_none():
    m = semantic_metrics(np.zeros((1, 2, 2), np.uint8), np.zeros((1, 2, 2), np.uint8))
    assert m["iou"] is None and m["precision"] is None and m["accuracy"] == 1.0


def test_per_class_scores_match_a_loop():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 4, (4, 10, 12), dtype=np.uint8)
    pred = gt.copy()
    pred[rng.random(gt.shape) < 0.2] = 2
    result = semantic_per_class(contingency_table(gt, pred, skip="none"))
    for k in (1, 2, 3):
        p, g = pred == k, gt == k
        iou = (p & g).sum() / (p | g).sum()
        assert result["classes"][k]["iou"] == pytest.approx(iou, abs=1e-15)
    assert result["mean_iou"] == pytest.approx(np.mean([result["classes"][k]["iou"] for k in (1, 2, 3)]))


def test_foreground_mask_refuses_floats_without_threshold_and_nan():
    with pytest.raises(EmError, match="--threshold"):
        foreground_mask(np.zeros((1, 2, 2), np.float32), "prediction")
    bad = np.zeros((1, 2, 2), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(EmError, match="NaN"):
        foreground_mask(bad, "prediction", 0.5)
    with pytest.raises(EmError, match="negative"):
        foreground_mask(np.full((1, 2, 2), -3, np.int16), "ground truth")


# ----------------------------------------------------------------------------- CREMI clefts

def cremi_reference(pred, gt, voxel, threshold):
    """CREMI's Clefts formulas with scipy's float64 distance transform."""
    to_pred = ndimage.distance_transform_edt(~pred, sampling=voxel)
    to_gt = ndimage.distance_transform_edt(~gt, sampling=voxel)
    missed, false = to_pred[gt], to_gt[pred]
    return missed.mean(), false.mean(), (missed > threshold).sum(), (false > threshold).sum()


def test_cleft_distances_by_hand():
    pred = np.zeros((3, 5, 9), bool)
    gt = np.zeros((3, 5, 9), bool)
    gt[1, 2, 1] = True
    pred[1, 2, 4] = True  # 3 voxels away along x
    pred[2, 2, 4] = True  # and one section further: sqrt(12^2 + 40^2) nm from gt
    d = cleft_distances(pred, gt, (40, 4, 4), threshold_nm=20)
    assert d["adgt_nm"] == pytest.approx(12.0, rel=1e-6)
    assert d["adf_nm"] == pytest.approx((12 + np.hypot(12, 40)) / 2, rel=1e-6)
    assert d["cremi_cleft_score"] == pytest.approx((d["adgt_nm"] + d["adf_nm"]) / 2)
    assert d["fn_count"] == 0 and d["fp_count"] == 1


@pytest.mark.parametrize("voxel", [(1, 1, 1), (40, 4, 4), (8, 5, 3)])
def test_cleft_distances_match_scipy(voxel):
    rng = np.random.default_rng(2)
    pred = ndimage.binary_dilation(rng.random((8, 30, 30)) > 0.995, iterations=1)
    gt = ndimage.binary_dilation(rng.random((8, 30, 30)) > 0.995, iterations=1)
    d = cleft_distances(pred, gt, voxel, threshold_nm=3 * max(voxel))
    adgt, adf, fn, fp = cremi_reference(pred, gt, voxel, 3 * max(voxel))
    assert d["adgt_nm"] == pytest.approx(adgt, rel=1e-6) and d["adf_nm"] == pytest.approx(adf, rel=1e-6)
    assert (d["fn_count"], d["fp_count"]) == (fn, fp)


def test_cleft_distances_need_clefts_in_both():
    empty, one = np.zeros((2, 3, 3), bool), np.zeros((2, 3, 3), bool)
    one[0, 0, 0] = True
    with pytest.raises(EmError, match="prediction has no cleft"):
        cleft_distances(empty, one, (1, 1, 1))
    with pytest.raises(EmError, match="ground truth has no cleft"):
        cleft_distances(one, empty, (1, 1, 1))


def test_real_membrane_map_against_the_real_labels():
    base = shared_data("gala")
    prob, _ = io.read_volume(f"{base}/train-p1.lzf.h5:stack")
    gt, _ = io.read_volume(f"{base}/train-gt.lzf.h5:stack")
    boundary_pred, boundary_gt = prob > 0.5, gt == 0
    m = semantic_metrics(boundary_pred, boundary_gt)
    p, g = boundary_pred, boundary_gt
    assert m["iou"] == pytest.approx((p & g).sum() / (p | g).sum(), abs=1e-15)
    d = cleft_distances(p, g, (10, 10, 10), threshold_nm=50)
    adgt, adf, fn, fp = cremi_reference(p, g, (10, 10, 10), 50)
    assert d["adgt_nm"] == pytest.approx(adgt, rel=1e-6) and d["adf_nm"] == pytest.approx(adf, rel=1e-6)
    assert (d["fn_count"], d["fp_count"]) == (fn, fp)
