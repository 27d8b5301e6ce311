"""Instance metrics: MitoEM/VOL3Deval average precision and matched F1, by hand and by reference."""

import numpy as np
import pytest
from conftest import shared_data

from emtools import io
from emtools.errors import EmError
from emtools.evaluate import (
    average_precision,
    contingency_table,
    instance_metrics,
    instance_objects,
    instance_table,
    match_instances,
)

IOU_THRESHOLDS = 0.5 + 0.05 * np.arange(0, 10)
RECALL_THRESHOLDS = 0.01 * np.arange(0, 101)


def vol3d_reference(pred, gt, ranges):
    """VOL3Deval's algorithm, step by step, with one boolean mask per object (slow, obvious)."""
    pred_ids = [int(i) for i in np.unique(pred) if i]
    gt_ids = [int(i) for i in np.unique(gt) if i]
    pred_size = {i: int((pred == i).sum()) for i in pred_ids}
    gt_size = {j: int((gt == j).sum()) for j in gt_ids}
    order = sorted(pred_ids, key=lambda i: (-pred_size[i], i))
    best = {}  # (pred, range index) -> (gt id or 0, iou)
    for i in order:
        mask = pred == i
        ious = {}
        for j in gt_ids:
            inter = int((mask & (gt == j)).sum())
            if inter:
                ious[j] = inter / (pred_size[i] + gt_size[j] - inter)
        for r, (lo, hi) in enumerate(ranges):
            inside = [j for j in sorted(ious) if lo < gt_size[j] <= hi]
            if inside:
                j = max(inside, key=lambda j: (ious[j], -j))
                best[i, r] = (j, ious[j])
            else:
                best[i, r] = (0, 0.0)
    out = []
    for r, (lo, hi) in enumerate(ranges):
        ignored_gt = {j for j in gt_ids if not lo < gt_size[j] <= hi}
        npig = len(gt_ids) - len(ignored_gt)
        precisions = []
        for t in IOU_THRESHOLDS:
            tps, fps = [], []
            for i in order:
                j, iou = best[i, r]
                if j == 0:
                    j, iou = best[i, 0]
                dtm = j if iou >= t else 0
                ignore = dtm in ignored_gt if dtm else not lo < pred_size[i] <= hi
                tps.append(bool(dtm) and not ignore)
                fps.append(not dtm and not ignore)
            if npig == 0:
                precisions.append(None)
                continue
            tp, fp = np.cumsum(tps).astype(float), np.cumsum(fps).astype(float)
            rc = tp / npig
            pr = list(tp / (fp + tp + np.spacing(1)))
            for k in range(len(pr) - 1, 0, -1):
                pr[k - 1] = max(pr[k - 1], pr[k])
            q = [0.0] * len(RECALL_THRESHOLDS)
            for ri, pi in enumerate(np.searchsorted(rc, RECALL_THRESHOLDS, side="left")):
                if pi >= len(pr):
                    break
                q[ri] = pr[pi]
            precisions.append(q)
        if precisions[0] is None:
            out.append(None)
        else:
            p = np.array(precisions)
            out.append({"ap_50": p[0].mean(), "ap_75": p[5].mean(), "ap_50_95": p.mean(), "gt_objects": npig})
    return out


def blobs(seed, shape=(12, 40, 40), count=18):
    """Ground-truth boxes of varied sizes and a prediction with shifts, misses, splits and extras."""
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape, np.uint32)
    pred = np.zeros(shape, np.uint64)
    for obj in range(1, count + 1):
        dz, dy, dx = rng.integers(1, 5), rng.integers(2, 9), rng.integers(2, 9)
        z, y, x = rng.integers(0, shape[0] - dz), rng.integers(0, shape[1] - dy), rng.integers(0, shape[2] - dx)
        gt[z : z + dz, y : y + dy, x : x + dx] = obj
        fate = rng.random()
        if fate < 0.15:
            continue  # missed
        sy, sx = rng.integers(-1, 2), rng.integers(-1, 2)
        y0, x0 = max(y + sy, 0), max(x + sx, 0)
        pred[z : z + dz, y0 : y0 + dy, x0 : x0 + dx] = 100 + obj
        if fate > 0.85 and dx > 3:
            pred[z : z + dz, y0 : y0 + dy, x0 : x0 + dx // 2] = 500 + obj  # split in two
    for extra in range(3):  # false positives
        z, y, x = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 4), rng.integers(0, shape[2] - 4)
        pred[z : z + 2, y : y + 3, x : x + 3] = 900 + extra
    return pred, gt


# ----------------------------------------------------------------------------- hand-made cases

def test_a_perfect_prediction_scores_one():
    _, gt = blobs(0)
    m = instance_metrics(gt.astype(np.uint64) * 3, gt)
    assert m["ap_50"] == pytest.approx(1.0, abs=1e-12) and m["ap_75"] == pytest.approx(1.0, abs=1e-12)
    assert m["ap_50_95"] == pytest.approx(1.0, abs=1e-12)
    assert m["precision"] == m["recall"] == m["f1"] == m["segmentation_accuracy"] == 1.0
    assert m["fp"] == m["fn"] == 0 and m["tp"] == m["gt_objects"] == m["pred_objects"]


def test_a_larger_false_positive_ranked_first_halves_the_precision():
    gt = np.zeros((1, 10, 20), np.uint64)
    pred = np.zeros((1, 10, 20), np.uint64)
    gt[0, :2, :2] = 1
    gt[0, 5:7, 5:7] = 2
    pred[0, :2, :2] = 7  # exact match of object 1 (4 voxels)
    pred[0, 8:10, 10:20] = 8  # a 20-voxel false positive: largest, so ranked first
    m = instance_metrics(pred, gt)
    # sorted: FP then TP -> precision 0, 1/2 at recall 0, 1/2; interpolated 1/2 up to recall 0.5
    assert m["ap_50"] == pytest.approx(51 * 0.5 / 101, abs=1e-12)
    assert m["tp"] == 1 and m["fp"] == 1 and m["fn"] == 1
    assert m["precision"] == m["recall"] == m["f1"] == 0.5


def test_iou_thresholds_decide_true_positives():
    gt = np.zeros((1, 4, 10), np.uint64)
    gt[0, :, :10] = 1  # 40 voxels
    pred = np.zeros_like(gt)
    pred[0, :, :7] = 2  # IoU 0.7: a hit at 0.5..0.7, a miss from 0.75 on
    m = instance_metrics(pred, gt)
    assert m["ap_50"] == pytest.approx(1.0) and m["ap_75"] == 0.0
    assert m["ap_50_95"] == pytest.approx(5 / 10)  # thresholds 0.50, 0.55, 0.60, 0.65, 0.70
    assert instance_metrics(pred, gt, iou_threshold=0.75)["tp"] == 0


def test_hungarian_matching_beats_greedy_at_low_thresholds():
    # gt A overlaps preds 1 and 2; gt B overlaps only pred 1: greedy on IoU takes A-1 and leaves B
    gt = np.zeros((1, 1, 12), np.uint64)
    pred = np.zeros_like(gt)
    gt[0, 0, 0:6] = 1
    gt[0, 0, 6:12] = 2
    pred[0, 0, 0:8] = 10
    pred[0, 0, 5] = 11  # IoUs: gt 1 with 10: 5/8, with 11: 1/6; gt 2 with 10: 2/11
    g, _ = match_instances(instance_table(pred, gt), threshold=0.1)
    assert len(g) == 2  # gt 1 <-> 11 and gt 2 <-> 10: two matches, where greedy finds one


def test_size_classes_split_the_objects():
    gt = np.zeros((2, 10, 30), np.uint64)
    gt[0, :2, :2] = 1  # 4 voxels: small
    gt[:, 4:8, 4:8] = 2  # 32 voxels: medium
    gt[:, :, 20:30] = 3  # 200 voxels: large
    pred = gt.copy()
    pred[pred == 3] = 0  # the large one is missed
    ap = average_precision(instance_table(pred, gt), size_classes=(10, 100))
    assert ap["small"]["gt_objects"] == ap["medium"]["gt_objects"] == ap["large"]["gt_objects"] == 1
    assert ap["small"]["ap_75"] == pytest.approx(1.0) and ap["medium"]["ap_75"] == pytest.approx(1.0)
    assert ap["large"]["ap_75"] == 0.0 and ap["all"]["recall_75"] == pytest.approx(2 / 3)


def test_empty_size_class_is_none_and_bad_classes_are_errors():
    gt = np.zeros((1, 4, 4), np.uint64)
    gt[0, :2, :2] = 1
    ap = average_precision(instance_table(gt.copy(), gt), size_classes=(10, 100))
    assert ap["large"]["ap_50"] is None and ap["large"]["gt_objects"] == 0
    with pytest.raises(EmError, match="size classes"):
        average_precision(instance_table(gt.copy(), gt), size_classes=(100, 10))
    with pytest.raises(EmError, match="scores"):
        average_precision(instance_table(gt.copy(), gt), scores=[1.0, 2.0])


def test_scores_reorder_the_predictions():
    gt = np.zeros((1, 10, 20), np.uint64)
    pred = np.zeros_like(gt)
    gt[0, :2, :2] = 1
    gt[0, 5:7, 5:7] = 2
    pred[0, :2, :2] = 7
    pred[0, 8:10, 10:20] = 8
    t = instance_table(pred, gt)
    assert average_precision(t)["all"]["ap_50"] == pytest.approx(51 * 0.5 / 101)
    # the true positive ranked first: precision 1 up to recall 0.5
    assert average_precision(t, scores=[0.9, 0.1])["all"]["ap_50"] == pytest.approx(51 / 101)
    assert average_precision(t, scores={7: 0.9, 8: 0.1})["all"]["ap_50"] == pytest.approx(51 / 101)


def test_only_foreground_voxels_are_counted():
    pred, gt = blobs(1)
    table = contingency_table(gt, pred, skip="both-zero")
    assert not np.any((table.gt == 0) & (table.seg == 0))
    assert table.counted == int(np.count_nonzero((gt != 0) | (pred != 0)))


# ----------------------------------------------------------------------------- references

@pytest.mark.parametrize("seed", range(6))
def test_average_precision_matches_the_vol3d_reference(seed):
    pred, gt = blobs(seed)
    classes = (20, 80)
    ours = average_precision(instance_table(pred, gt), size_classes=classes)
    ranges = [(0, 1e10), (0, 20), (20, 80), (80, 1e10)]
    reference = vol3d_reference(pred, gt, ranges)
    for name, ref in zip(("all", "small", "medium", "large"), reference):
        if ref is None:
            assert ours[name]["ap_50"] is None
            continue
        for key in ("ap_50", "ap_75", "ap_50_95", "gt_objects"):
            assert ours[name][key] == pytest.approx(ref[key], abs=1e-12), (name, key)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("order", ["C", "F"])
def test_dtypes_and_memory_orders_give_the_same_scores(dtype, order):
    pred, gt = blobs(4)
    base = instance_metrics(pred, gt, size_classes=(20, 80))
    arrange = np.asfortranarray if order == "F" else np.ascontiguousarray
    other = instance_metrics(arrange(pred.astype(dtype)), arrange(gt.astype(dtype)), size_classes=(20, 80))
    assert other == base


@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.5, 0.75, 0.9])
def test_matching_scores_equal_elf(threshold):
    elf_eval = pytest.importorskip("elf.evaluation")
    for seed in range(3):
        pred, gt = blobs(seed)
        ours = instance_metrics(pred, gt, iou_threshold=threshold)
        theirs = elf_eval.matching(pred, gt, threshold=threshold)
        for key in ("precision", "recall", "f1", "segmentation_accuracy"):
            assert ours[key] == pytest.approx(float(theirs[key]), abs=1e-12), (seed, key)


def test_object_table_is_consistent_with_the_matching():
    pred, gt = blobs(2)
    t = instance_table(pred, gt)
    rows = instance_objects(t, 0.5, (20, 80))
    gt_rows = rows["kind"] == "gt"
    assert gt_rows.sum() == t.gt_ids.size and (~gt_rows).sum() == t.pred_ids.size
    matched = rows["matched_id"][gt_rows] != 0
    assert matched.sum() == instance_metrics(pred, gt)["tp"]
    for gid, size, mid, miou in zip(rows["id"][gt_rows], rows["size"][gt_rows], rows["matched_id"][gt_rows],
                                    rows["matched_iou"][gt_rows]):
        assert size == (gt == gid).sum()
        if mid:
            inter = ((gt == gid) & (pred == mid)).sum()
            assert miou == pytest.approx(inter / (size + (pred == mid).sum() - inter)) and miou >= 0.5
    assert set(rows["size_class"]) <= {"small", "medium", "large"}


def test_real_fragments_as_instances():
    base = shared_data("gala", "snemi-mini")
    seg, _ = io.read_volume(f"{base}/train-fragments.tif")
    gt, _ = io.read_volume(f"{base}/train-labels.tif")
    m = instance_metrics(seg, gt, size_classes=(5000, 15000))
    assert m["gt_objects"] == 27 and m["pred_objects"] == 1389
    assert 0 <= m["ap_75"] <= m["ap_50"] <= 1
    elf_eval = pytest.importorskip("elf.evaluation")
    theirs = elf_eval.matching(seg, gt, threshold=0.5)
    assert m["f1"] == pytest.approx(float(theirs["f1"]), abs=1e-12)
