"""Semantic and synaptic-cleft metrics: voxel overlap scores and CREMI cleft distances.

Voxel scores compare foreground masks (label != 0, or probability > threshold)::

    TP = pred & gt   FP = pred & ~gt   FN = ~pred & gt   TN = ~pred & ~gt
    IoU = TP / (TP+FP+FN)     Dice = F1 = 2TP / (2TP+FP+FN)
    precision = TP / (TP+FP)  recall = TP / (TP+FN)   accuracy = (TP+TN) / voxels

With several classes (label values), the same per class k (pred == k vs gt == k) from one
confusion matrix, plus their mean over the classes present in the ground truth.

CREMI synaptic clefts (cremi_python ``Clefts``), distances in nm with the voxel size:

- ADGT: mean over ground-truth cleft voxels of the distance to the nearest predicted cleft
  voxel (misses: CREMI's ``acc_false_negatives``);
- ADF: mean over predicted cleft voxels of the distance to the nearest ground-truth cleft voxel
  (false detections: CREMI's ``acc_false_positives``);
- FN / FP counts: those voxels whose distance exceeds a threshold (CREMI: 200 nm);
- CREMI cleft score = (ADGT + ADF) / 2.

Distances come from ``edt`` (exact anisotropic Euclidean distance transform, float32, so they
agree with scipy's float64 ``distance_transform_edt`` to about 1e-6 relative).
"""

from __future__ import annotations

import math

import numpy as np

from emtools.errors import EmError
from emtools.evaluate.table import Contingency, contingency_table

__all__ = [
    "binary_counts",
    "cleft_distances",
    "foreground_mask",
    "semantic_metrics",
    "semantic_metrics_from_counts",
    "semantic_per_class",
]


def foreground_mask(array: np.ndarray, name: str, threshold: float | None = None) -> np.ndarray:
    """Boolean foreground of a label volume (!= 0) or of a probability map (> ``threshold``).

    Floating-point input needs a threshold (a label volume must be integers); NaN is refused.
    """
    kind = array.dtype.kind
    if kind == "f":
        if threshold is None:
            raise EmError(f"{name} is {array.dtype} (floating point): give --threshold to binarise it, "
                          "or pass integer labels")
        if np.isnan(array).any():
            raise EmError(f"{name} contains NaN values")
        return array > threshold
    if kind not in "biu":
        raise EmError(f"{name} has dtype {array.dtype}; expected integer labels or a probability map")
    if kind == "i" and array.size and int(array.min()) < 0:
        raise EmError(f"{name} has negative labels (min {int(array.min())}); labels must be >= 0")
    if threshold is not None and kind != "b":
        return array > threshold
    return array != 0


def _safe(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def semantic_metrics_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict:
    """IoU, Dice, precision, recall, F1 and accuracy from voxel counts (None where 0/0)."""
    tp, fp, fn, tn = int(tp), int(fp), int(fn), int(tn)
    return {
        "iou": _safe(tp, tp + fp + fn),
        "dice": _safe(2 * tp, 2 * tp + fp + fn),
        "precision": _safe(tp, tp + fp),
        "recall": _safe(tp, tp + fn),
        "f1": _safe(2 * tp, 2 * tp + fp + fn),
        "accuracy": _safe(tp + tn, tp + fp + fn + tn),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def binary_counts(table: Contingency) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) voxel counts of the foregrounds (label != 0) in a table with skip 'none'."""
    if table.skip != "none":
        raise EmError("voxel scores need a table that counts every voxel (skip 'none')")
    g, s, c = table.gt != 0, table.seg != 0, table.count
    return (int(c[g & s].sum()), int(c[~g & s].sum()), int(c[g & ~s].sum()), int(c[~g & ~s].sum()))


def semantic_metrics(pred: np.ndarray, gt: np.ndarray, threshold: float | None = None) -> dict:
    """Voxel scores of the foreground of ``pred`` against the foreground of ``gt``."""
    pred_mask = foreground_mask(pred, "prediction", threshold)
    gt_mask = foreground_mask(gt, "ground truth")
    return semantic_metrics_from_counts(*binary_counts(contingency_table(gt_mask, pred_mask, skip="none")))


def semantic_per_class(table: Contingency) -> dict:
    """Per-class voxel scores (classes = non-zero label values) from a table with skip 'none'.

    Returns ``{"classes": {k: scores}, "mean_iou": ..., "mean_dice": ...}``; the means run over
    the classes present in the ground truth.
    """
    if table.skip != "none":
        raise EmError("per-class scores need a table that counts every voxel (skip 'none')")
    classes = np.union1d(table.gt, table.seg)
    classes = classes[classes != 0]
    per_class = {}
    total = table.counted
    for k in classes:
        g, s = table.gt == k, table.seg == k
        tp = int(table.count[g & s].sum())
        fp = int(table.count[~g & s].sum())
        fn = int(table.count[g & ~s].sum())
        per_class[int(k)] = semantic_metrics_from_counts(tp, fp, fn, total - tp - fp - fn)
    present = [k for k in per_class if per_class[k]["tp"] + per_class[k]["fn"] > 0]
    return {
        "classes": per_class,
        "mean_iou": float(np.mean([per_class[k]["iou"] for k in present])) if present else None,
        "mean_dice": float(np.mean([per_class[k]["dice"] for k in present])) if present else None,
    }


def cleft_distances(pred_mask: np.ndarray, gt_mask: np.ndarray, voxel_size_nm, threshold_nm: float = 200.0) -> dict:
    """CREMI cleft scores of two boolean masks on the same grid (see the module docstring).

    ``voxel_size_nm``: (z, y, x) in nm. Both masks must hold at least one cleft voxel (the
    distance to an empty set is undefined).
    """
    if pred_mask.shape != gt_mask.shape:
        raise EmError(f"shapes differ: prediction {pred_mask.shape} but ground truth {gt_mask.shape}")
    if pred_mask.ndim != 3:
        raise EmError(f"cleft masks must be 3D (z,y,x), got {pred_mask.ndim}D")
    pred_mask = np.ascontiguousarray(pred_mask, dtype=bool)
    gt_mask = np.ascontiguousarray(gt_mask, dtype=bool)
    if not pred_mask.any():
        raise EmError("the prediction has no cleft voxel: distances are undefined")
    if not gt_mask.any():
        raise EmError("the ground truth has no cleft voxel: distances are undefined")
    if not threshold_nm >= 0:
        raise EmError(f"distance threshold must be >= 0 nm, got {threshold_nm}")
    import edt  # only the synapse mode needs it

    anisotropy = tuple(float(v) for v in voxel_size_nm)
    # distance of every voxel to the nearest cleft voxel: the EDT of the non-cleft region
    to_pred = edt.edt(~pred_mask, anisotropy=anisotropy, black_border=False)
    missed = to_pred[gt_mask].astype(np.float64)
    del to_pred
    to_gt = edt.edt(~gt_mask, anisotropy=anisotropy, black_border=False)
    false = to_gt[pred_mask].astype(np.float64)
    del to_gt
    adgt = math.fsum(missed) / missed.size
    adf = math.fsum(false) / false.size
    return {
        "adgt_nm": adgt,
        "adf_nm": adf,
        "cremi_cleft_score": (adgt + adf) / 2.0,
        "distance_threshold_nm": float(threshold_nm),
        "fn_count": int(np.count_nonzero(missed > threshold_nm)),
        "fp_count": int(np.count_nonzero(false > threshold_nm)),
        "adgt_max_nm": float(missed.max()),
        "adf_max_nm": float(false.max()),
        "adgt_median_nm": float(np.median(missed)),
        "adf_median_nm": float(np.median(false)),
    }
