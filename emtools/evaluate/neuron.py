"""Neuron segmentation metrics: variation of information and (adapted) Rand, from one table.

Notation (SNEMI3D, CREMI, waterz): over the voxels that are counted, ``p_ij`` is the number of
voxels with segment ``i`` and ground-truth label ``j``, ``s_i = sum_j p_ij`` the segment sizes,
``t_j = sum_i p_ij`` the ground-truth sizes and ``N = sum p_ij``. Then

- VOI split = H(S|T) = (sum_j t_j log2 t_j - sum_ij p_ij log2 p_ij) / N   (over-segmentation)
- VOI merge = H(T|S) = (sum_i s_i log2 s_i - sum_ij p_ij log2 p_ij) / N   (under-segmentation)
- Rand precision = sum p_ij^2 / sum s_i^2 (= waterz's ``rand_merge``), Rand recall =
  sum p_ij^2 / sum t_j^2 (= waterz's ``rand_split``); both 1 for a perfect segmentation.
- adapted Rand error = 1 - 2 P R / (P + R). The sums include each voxel's pair with itself, as
  SNEMI3D, CREMI, waterz and elf do; scikit-image leaves those N self-pairs out of all three sums
  (``sum p^2 - N`` etc.), which changes the value by O(objects / voxels).
- Rand index = 1 - (sum s_i^2 + sum t_j^2 - 2 sum p_ij^2) / N^2 (elf's ``rand_index``), always
  with predicted 0 as a label; CREMI score = sqrt(adapted Rand error * (VOI split + merge)).

Which voxels count: ground-truth label 0 is ignored by default (``gt_zero="ignore"``, as waterz,
CREMI and SNEMI3D do) or counted as one more object (``"label"``). Prediction label 0 is an
ordinary segment by default (``pred_zero="label"``); ``"cremi"`` reproduces the CREMI / SNEMI3D
scripts, where predicted-0 voxels in counted ground truth are not a segment: each adds ``1/V`` to
``sum p_ij^2`` and ``sum s_i^2`` (V = all voxels of the volume, the scripts' normalisation) and
nothing else; their VOI still treats 0 as a label, as CREMI's ``voi`` does.
"""

from __future__ import annotations

import math

import numpy as np

from emtools.errors import EmError
from emtools.evaluate.table import (
    Contingency,
    check_labels,
    contingency_table,
    group_sum,
)

__all__ = [
    "GT_ZERO_CHOICES",
    "PRED_ZERO_CHOICES",
    "neuron_metrics",
    "neuron_metrics_from_table",
    "neuron_objects",
]

GT_ZERO_CHOICES = ("ignore", "label")
PRED_ZERO_CHOICES = ("label", "cremi")
# Sums of squared counts stay exact in int64 up to this many counted voxels (N^2 < 2^63).
_EXACT_SQUARES = 3_037_000_499


def skip_for(gt_zero: str) -> str:
    """The table's ``skip`` for a ground-truth-zero convention."""
    if gt_zero not in GT_ZERO_CHOICES:
        raise EmError(f"gt_zero must be one of {', '.join(GT_ZERO_CHOICES)}, got {gt_zero!r}")
    return "gt-zero" if gt_zero == "ignore" else "none"


def neuron_metrics(seg: np.ndarray, gt: np.ndarray, gt_zero: str = "ignore", pred_zero: str = "label") -> dict:
    """VOI split/merge (bits), adapted Rand error, Rand split/merge, Rand index, CREMI score.

    ``seg`` and ``gt``: integer label volumes of the same shape (any memory order). See the
    module docstring for the definitions and the ``gt_zero`` / ``pred_zero`` conventions.
    """
    check_labels(seg, "segmentation")
    check_labels(gt, "ground truth")
    table = contingency_table(gt, seg, skip=skip_for(gt_zero))
    return neuron_metrics_from_table(table, pred_zero=pred_zero)


def _xlogx_sum(counts: np.ndarray) -> float:
    """sum c log2 c, summed exactly rounded (math.fsum) so that VOI keeps 1e-12 precision."""
    c = counts.astype(np.float64)
    return math.fsum(c * np.log2(c))


def _square_sum(counts: np.ndarray, exact: bool) -> float:
    if exact:
        return float(int(np.dot(counts, counts)))
    c = counts.astype(np.float64)
    return math.fsum(c * c)


def neuron_metrics_from_table(table: Contingency, pred_zero: str = "label") -> dict:
    """The metrics of :func:`neuron_metrics` from a contingency table (ground truth rows)."""
    if pred_zero not in PRED_ZERO_CHOICES:
        raise EmError(f"pred_zero must be one of {', '.join(PRED_ZERO_CHOICES)}, got {pred_zero!r}")
    if table.skip == "both-zero":
        raise EmError("neuron metrics need a table that counts predicted-0 voxels (skip 'gt-zero' or 'none')")
    n = table.counted
    if n == 0:
        raise EmError("nothing to evaluate: the ground truth has no labelled voxel (all 0)")
    _, t = group_sum(table.gt, table.count)
    _, s = group_sum(table.seg, table.count)
    p = table.count
    exact = n <= _EXACT_SQUARES

    plogp = _xlogx_sum(p)
    voi_split = max((_xlogx_sum(t) - plogp) / n, 0.0)
    voi_merge = max((_xlogx_sum(s) - plogp) / n, 0.0)

    sum_p2 = _square_sum(p, exact)
    sum_t2 = _square_sum(t, exact)
    sum_s2 = _square_sum(s, exact)
    rand_index = 1.0 - (sum_s2 + sum_t2 - 2.0 * sum_p2) / (float(n) * float(n))

    if pred_zero == "cremi":
        zero = table.seg == 0
        zeros = int(table.count[zero].sum())
        _, s_nonzero = group_sum(table.seg[~zero], table.count[~zero])
        sum_p2 = _square_sum(p[~zero], exact) + zeros / table.voxels
        sum_s2 = _square_sum(s_nonzero, exact) + zeros / table.voxels
    precision = sum_p2 / sum_s2
    recall = sum_p2 / sum_t2
    fscore = 2.0 * precision * recall / (precision + recall)
    arand = 1.0 - fscore
    return {
        "voi_split": voi_split,
        "voi_merge": voi_merge,
        "voi": voi_split + voi_merge,
        "adapted_rand_error": arand,
        "rand_split": recall,
        "rand_merge": precision,
        "rand_index": rand_index,
        "cremi_score": math.sqrt(max(arand, 0.0) * (voi_split + voi_merge)),
        "gt_objects": int(t.size),
        "seg_objects": int(s.size),
        "counted_voxels": n,
    }


def neuron_objects(table: Contingency) -> dict[str, np.ndarray]:
    """Per ground-truth object: size, segments it overlaps, best segment, its VOI contributions.

    Columns (arrays of equal length, sorted by ``gt_id``): ``gt_id``, ``size``, ``segments``
    (how many segments overlap it), ``best_seg_id`` / ``best_overlap`` (the segment with the
    largest overlap; the smallest id on ties), ``vi_split`` / ``vi_merge`` in bits:
    ``vi_split`` = H(S | T=j), the entropy of the segments inside object j, and ``vi_merge`` =
    sum_i (p_ij / t_j) log2(s_i / p_ij), how much of the segments touching j lies outside it.
    Their means weighted by t_j / N are the VOI split and merge. elf's ``object_vi`` computes
    the same two numbers but names them the other way round (its ``vis`` is our ``vi_merge``).
    """
    gt_ids, t = group_sum(table.gt, table.count)
    seg_ids, s = group_sum(table.seg, table.count)
    row = np.searchsorted(gt_ids, table.gt)
    col = np.searchsorted(seg_ids, table.seg)
    p = table.count.astype(np.float64)
    frac = p / t[row]
    vi_split = -np.bincount(row, weights=frac * np.log2(frac), minlength=gt_ids.size)
    vi_merge = -np.bincount(row, weights=frac * np.log2(p / s[col]), minlength=gt_ids.size)
    segments = np.bincount(row, minlength=gt_ids.size)
    # best segment per object: pairs are sorted by (gt, seg), so the first maximum is the smallest id
    order = np.lexsort((table.seg, -table.count, table.gt))
    first = np.ones(order.size, bool)
    first[1:] = table.gt[order][1:] != table.gt[order][:-1]
    best = order[first]
    return {
        "gt_id": gt_ids,
        "size": t,
        "segments": segments,
        "best_seg_id": table.seg[best],
        "best_overlap": table.count[best],
        "vi_split": np.maximum(vi_split, 0.0) + 0.0,
        "vi_merge": np.maximum(vi_merge, 0.0) + 0.0,
    }
