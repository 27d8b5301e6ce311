"""Instance metrics for mitochondria and nuclei: MitoEM average precision and matched F1.

Everything comes from one contingency table counted over foreground voxels only (voxels where the
prediction or the ground truth is non-zero): object sizes are its row and column sums, overlaps
its entries with both labels non-zero. Label 0 is background in both volumes.

Average precision as the MitoEM challenge computes it (mAP_3Dvolume's ``VOL3Deval``, a 3D port of
the COCO evaluation)::

    predictions sorted by score, highest first (default score: size in voxels; ties: lower id)
    each prediction -> its best ground truth by IoU (lower id on ties), overall and per size class
    IoU threshold t: a prediction is a true positive when that best IoU >= t, else a false
    positive; precision/recall accumulate down the sorted list (recall over the ground-truth
    objects of the class), precision is made non-increasing from the right, and sampled at the
    101 recall levels 0, 0.01, ..., 1 (0 where the recall is not reached); AP is their mean.

As in VOL3Deval, a ground-truth object may be the best match of several predictions (at
IoU >= 0.5 this can only happen on exact ties at 0.5), there is no cap on detections, and in a
size class a prediction is ignored (neither TP nor FP) when it matches a ground-truth object of
another class, or matches nothing and is itself of another class. Size classes are
``small: size <= a``, ``medium: a < size <= b``, ``large: size > b`` voxels (MitoEM: a=5000,
b=15000).

Matched precision/recall/F1 (elf's ``matching``, after StarDist): the largest one-to-one
matching of ground-truth and predicted objects with IoU >= threshold (Hungarian algorithm on
each connected group of candidate pairs); TP = matched pairs, FP = other predictions, FN =
other ground-truth objects; precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2TP/(2TP+FP+FN),
segmentation accuracy = TP/(TP+FP+FN), all 0 when TP = 0.
"""

from __future__ import annotations

import numpy as np

from emtools.errors import EmError
from emtools.evaluate.table import (
    Contingency,
    check_labels,
    contingency_table,
    group_sum,
)

__all__ = [
    "DEFAULT_SIZE_CLASSES",
    "InstanceTable",
    "average_precision",
    "instance_metrics",
    "instance_metrics_from_table",
    "instance_objects",
    "instance_table",
    "match_instances",
]

# MitoEM's size classes (mAP_3Dvolume's default --threshold "5e3, 1.5e4"), in voxels.
DEFAULT_SIZE_CLASSES = (5000, 15000)
# VOL3Deval's grids, built the same way so that thresholds compare bit for bit.
IOU_THRESHOLDS = 0.5 + 0.05 * np.arange(0, 10)
RECALL_THRESHOLDS = 0.01 * np.arange(0, 101)
_ALL_RANGE = (0.0, 1e10)
# Dense Hungarian matrices up to this many cells per group; larger groups use Hopcroft-Karp.
_DENSE_CELLS = 4_000_000


class InstanceTable:
    """Object sizes and overlaps of a predicted and a ground-truth instance segmentation."""

    def __init__(self, table: Contingency):
        if table.skip != "both-zero":
            raise EmError("instance metrics need a table counted with skip='both-zero'")
        gt_ids, gt_sizes = group_sum(table.gt, table.count)
        pred_ids, pred_sizes = group_sum(table.seg, table.count)
        keep_gt, keep_pred = gt_ids != 0, pred_ids != 0
        self.gt_ids, self.gt_sizes = gt_ids[keep_gt], gt_sizes[keep_gt]
        self.pred_ids, self.pred_sizes = pred_ids[keep_pred], pred_sizes[keep_pred]
        both = (table.gt != 0) & (table.seg != 0)
        # overlaps as indices into the id arrays above
        self.pair_gt = np.searchsorted(self.gt_ids, table.gt[both])
        self.pair_pred = np.searchsorted(self.pred_ids, table.seg[both])
        inter = table.count[both].astype(np.float64)
        union = self.gt_sizes[self.pair_gt] + self.pred_sizes[self.pair_pred] - inter
        self.pair_iou = inter / union
        self.voxels = table.voxels


def instance_table(pred: np.ndarray, gt: np.ndarray) -> InstanceTable:
    """Count sizes and overlaps over the foreground voxels of ``pred`` and ``gt``."""
    check_labels(pred, "prediction")
    check_labels(gt, "ground truth")
    return InstanceTable(contingency_table(gt, pred, skip="both-zero"))


def _size_ranges(size_classes) -> dict[str, tuple[float, float]]:
    ranges = {"all": _ALL_RANGE}
    if size_classes is not None:
        small, large = (float(v) for v in size_classes)
        if not 0 < small < large:
            raise EmError(f"size classes need 0 < small < large voxels, got {small:g},{large:g}")
        ranges.update(small=(0.0, small), medium=(small, large), large=(large, _ALL_RANGE[1]))
    return ranges


def _in_range(sizes: np.ndarray, lo_hi: tuple[float, float]) -> np.ndarray:
    return (sizes > lo_hi[0]) & (sizes <= lo_hi[1])


def _prediction_order(t: InstanceTable, scores) -> np.ndarray:
    """Indices of the predictions, highest score first; stable, so ties keep ascending ids."""
    if scores is None:
        values = t.pred_sizes.astype(np.float64)
    else:
        values = np.asarray([float(scores.get(int(i), 0.0)) for i in t.pred_ids]) if isinstance(scores, dict) \
            else np.asarray(scores, np.float64)
        if values.shape != t.pred_ids.shape:
            raise EmError(f"{values.size} scores for {t.pred_ids.size} predicted objects")
        if not np.all(np.isfinite(values)):
            raise EmError("prediction scores must be finite numbers")
    return np.argsort(-values, kind="stable")


def _best_match(t: InstanceTable, gt_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per prediction: index of its best ground truth among ``gt_mask`` (-1: none) and the IoU."""
    best = np.full(t.pred_ids.size, -1, np.int64)
    best_iou = np.zeros(t.pred_ids.size)
    keep = gt_mask[t.pair_gt]
    pred, gt, iou = t.pair_pred[keep], t.pair_gt[keep], t.pair_iou[keep]
    order = np.lexsort((gt, -iou, pred))  # per prediction: highest IoU, then lowest gt id
    pred, gt, iou = pred[order], gt[order], iou[order]
    first = np.ones(pred.size, bool)
    first[1:] = pred[1:] != pred[:-1]
    best[pred[first]] = gt[first]
    best_iou[pred[first]] = iou[first]
    return best, best_iou


def average_precision(t: InstanceTable, size_classes=None, scores=None) -> dict:
    """MitoEM/VOL3Deval average precision (see the module docstring).

    Returns ``{"all": {...}, "small": {...}, ...}``; each holds ``ap_50``, ``ap_75``,
    ``ap_50_95`` (mean over IoU 0.50:0.05:0.95), ``recall_50``/``recall_75`` (the recall
    reached at the end of the list) and ``gt_objects``. Values are None for a size class without
    ground-truth objects (VOL3Deval's -1).
    """
    ranges = _size_ranges(size_classes)
    order = _prediction_order(t, scores)
    best_all, iou_all = _best_match(t, np.ones(t.gt_ids.size, bool))
    out = {}
    for name, lo_hi in ranges.items():
        gt_in = _in_range(t.gt_sizes, lo_hi)
        best, iou = _best_match(t, gt_in)
        none = best < 0
        best = np.where(none, best_all, best)[order]  # no match in the class: the overall best
        iou = np.where(none, iou_all, iou)[order]
        pred_out = ~_in_range(t.pred_sizes[order], lo_hi)
        matched_gt_out = np.zeros(best.size, bool)
        matched_gt_out[best >= 0] = ~gt_in[best[best >= 0]]
        n_gt = int(gt_in.sum())
        precision = np.zeros((IOU_THRESHOLDS.size, RECALL_THRESHOLDS.size))
        recall = np.zeros(IOU_THRESHOLDS.size)
        for k, threshold in enumerate(IOU_THRESHOLDS):
            hit = (best >= 0) & (iou >= threshold)
            ignored = np.where(hit, matched_gt_out, pred_out)
            precision[k], recall[k] = _interpolated_precision(hit & ~ignored, ~hit & ~ignored, n_gt)
        if n_gt == 0:
            out[name] = {"ap_50": None, "ap_75": None, "ap_50_95": None, "recall_50": None,
                         "recall_75": None, "gt_objects": 0}
            continue
        out[name] = {
            "ap_50": float(precision[0].mean()),
            "ap_75": float(precision[5].mean()),
            "ap_50_95": float(precision.mean()),
            "recall_50": float(recall[0]),
            "recall_75": float(recall[5]),
            "gt_objects": n_gt,
        }
    return out


def _interpolated_precision(tps: np.ndarray, fps: np.ndarray, n_gt: int) -> tuple[np.ndarray, float]:
    """COCO's 101-point interpolated precision of one sorted detection list, and its final recall."""
    q = np.zeros(RECALL_THRESHOLDS.size)
    if n_gt == 0 or tps.size == 0:
        return q, 0.0
    tp = np.cumsum(tps, dtype=np.float64)
    fp = np.cumsum(fps, dtype=np.float64)
    rc = tp / n_gt
    pr = tp / (fp + tp + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1])[::-1]  # non-increasing from the right
    idx = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
    reached = idx < rc.size
    q[reached] = pr[idx[reached]]
    return q, float(rc[-1])


def match_instances(t: InstanceTable, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The largest one-to-one matching with IoU >= ``threshold``: (gt index, pred index) arrays.

    Solved per connected group of candidate pairs; within a group, among the largest matchings
    the one with the highest total IoU (Hungarian algorithm, elf's cost), so results do not
    depend on the order of the labels.
    """
    if not 0.0 <= threshold <= 1.0:
        raise EmError(f"IoU threshold must be between 0 and 1, got {threshold:g}")
    # scipy.optimize takes ~0.7 s to import: only the instance mode pays for it
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components, maximum_bipartite_matching

    cand = t.pair_iou >= threshold
    gi, pj, iou = t.pair_gt[cand], t.pair_pred[cand], t.pair_iou[cand]
    if gi.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    n_gt = t.gt_ids.size
    graph = coo_matrix((np.ones(gi.size), (gi, n_gt + pj)), shape=(n_gt + t.pred_ids.size,) * 2)
    _, component = connected_components(graph, directed=False)
    group = component[gi]
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    out_g, out_p = [], []
    for members in np.split(order, bounds):
        if members.size == 1:  # the usual case: one candidate pair, nothing to choose
            out_g.append(gi[members])
            out_p.append(pj[members])
            continue
        rows, row_idx = np.unique(gi[members], return_inverse=True)
        cols, col_idx = np.unique(pj[members], return_inverse=True)
        if rows.size * cols.size <= _DENSE_CELLS:
            cost = np.zeros((rows.size, cols.size))
            cost[row_idx, col_idx] = -1.0 - iou[members] / (2.0 * min(rows.size, cols.size))
            r, c = linear_sum_assignment(cost)
            ok = cost[r, c] < 0
            out_g.append(rows[r[ok]])
            out_p.append(cols[c[ok]])
        else:  # huge group at a low threshold: cardinality only (Hopcroft-Karp)
            sub = coo_matrix((np.ones(members.size), (row_idx, col_idx)), shape=(rows.size, cols.size)).tocsr()
            match = maximum_bipartite_matching(sub, perm_type="column")
            r = np.flatnonzero(match >= 0)
            out_g.append(rows[r])
            out_p.append(cols[match[r]])
    g, p = np.concatenate(out_g), np.concatenate(out_p)
    order = np.argsort(g, kind="stable")
    return g[order], p[order]


def _ratio(num: float, den: float, tp: int) -> float:
    return num / den if tp > 0 else 0.0


def instance_metrics_from_table(t: InstanceTable, iou_threshold: float = 0.5, size_classes=None, scores=None) -> dict:
    """Average precision (MitoEM) and matched precision/recall/F1 from an :class:`InstanceTable`."""
    ap = average_precision(t, size_classes=size_classes, scores=scores)
    g, p = match_instances(t, iou_threshold)
    tp = int(g.size)
    fp = int(t.pred_ids.size) - tp
    fn = int(t.gt_ids.size) - tp
    matched_iou = _pair_iou(t, g, p)
    out = {
        "ap_50": ap["all"]["ap_50"],
        "ap_75": ap["all"]["ap_75"],
        "ap_50_95": ap["all"]["ap_50_95"],
        "iou_threshold": float(iou_threshold),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": _ratio(tp, tp + fp, tp),
        "recall": _ratio(tp, tp + fn, tp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, tp),
        "segmentation_accuracy": _ratio(tp, tp + fp + fn, tp),
        "mean_matched_iou": float(matched_iou.mean()) if tp else 0.0,
        "gt_objects": int(t.gt_ids.size),
        "pred_objects": int(t.pred_ids.size),
    }
    if size_classes is not None:
        out["size_classes"] = {
            "bounds_voxels": [float(v) for v in size_classes],
            **{name: ap[name] for name in ("small", "medium", "large")},
        }
    return out


def instance_metrics(pred: np.ndarray, gt: np.ndarray, iou_threshold: float = 0.5, size_classes=None, scores=None) -> dict:
    """AP at IoU 0.5, 0.75 and 0.5:0.95 (MitoEM) and matched P/R/F1 at ``iou_threshold``.

    ``pred``/``gt``: integer instance label volumes (0 = background) of the same shape.
    ``size_classes``: ``(small, large)`` bounds in voxels to add AP per size class (MitoEM uses
    ``DEFAULT_SIZE_CLASSES``); ``scores``: one confidence per predicted object (in ascending id
    order, or a dict id -> score; default: the object's size).
    """
    return instance_metrics_from_table(instance_table(pred, gt), iou_threshold, size_classes, scores)


def _pair_iou(t: InstanceTable, g: np.ndarray, p: np.ndarray) -> np.ndarray:
    if g.size == 0:
        return np.zeros(0)
    n_pred = np.int64(t.pred_ids.size)
    key = t.pair_gt * n_pred + t.pair_pred
    order = np.argsort(key)
    pos = order[np.searchsorted(key[order], g * n_pred + p)]
    return t.pair_iou[pos]


def instance_objects(t: InstanceTable, iou_threshold: float = 0.5, size_classes=None) -> dict[str, np.ndarray]:
    """One row per ground-truth object, then one per predicted object.

    Columns: ``kind`` (gt/pred), ``id``, ``size``, ``size_class`` (all/small/medium/large),
    ``matched_id`` / ``matched_iou`` (the one-to-one match at ``iou_threshold``; 0 if none) and
    ``best_id`` / ``best_iou`` (the overlapping object of the other volume with the highest IoU).
    """
    g, p = match_instances(t, iou_threshold)
    m_iou = _pair_iou(t, g, p)
    rows = {}
    for kind, ids, sizes, mine, other, other_ids in (
        ("gt", t.gt_ids, t.gt_sizes, t.pair_gt, t.pair_pred, t.pred_ids),
        ("pred", t.pred_ids, t.pred_sizes, t.pair_pred, t.pair_gt, t.gt_ids),
    ):
        matched_id = np.zeros(ids.size, np.uint64)
        matched_iou = np.zeros(ids.size)
        mi, oi = (g, p) if kind == "gt" else (p, g)
        matched_id[mi] = other_ids[oi]
        matched_iou[mi] = m_iou
        best_id = np.zeros(ids.size, np.uint64)
        best_iou = np.zeros(ids.size)
        order = np.lexsort((other, -t.pair_iou, mine))
        first = np.ones(order.size, bool)
        first[1:] = mine[order][1:] != mine[order][:-1]
        best_id[mine[order][first]] = other_ids[other[order][first]]
        best_iou[mine[order][first]] = t.pair_iou[order][first]
        rows[kind] = (ids, sizes, matched_id, matched_iou, best_id, best_iou)
    labels = np.full(t.gt_ids.size + t.pred_ids.size, "all", dtype=object)
    sizes_all = np.concatenate([t.gt_sizes, t.pred_sizes])
    if size_classes is not None:
        for name, lo_hi in _size_ranges(size_classes).items():
            if name != "all":
                labels[_in_range(sizes_all, lo_hi)] = name
    return {
        "kind": np.array(["gt"] * t.gt_ids.size + ["pred"] * t.pred_ids.size, dtype=object),
        "id": np.concatenate([rows["gt"][0], rows["pred"][0]]),
        "size": sizes_all,
        "size_class": labels,
        "matched_id": np.concatenate([rows["gt"][2], rows["pred"][2]]),
        "matched_iou": np.concatenate([rows["gt"][3], rows["pred"][3]]),
        "best_id": np.concatenate([rows["gt"][4], rows["pred"][4]]),
        "best_iou": np.concatenate([rows["gt"][5], rows["pred"][5]]),
    }
