"""Validation on the held-out regions: sliding-window prediction and the project's metrics.

Each held-out region is predicted whole by em-predict's sliding window (:mod:`emtools.predict`)
with the training crop size (patches overlap by ``overlap_zyx``, a quarter of the crop by
default; beyond the region the input is mirrored), blending the raw outputs (logits) with
Gaussian weights that fall towards the patch borders, where a 'same'-padded network sees the
least context.

Metrics (one JSON record per validation, keys ``<head>.<metric>``):

- ``loss`` and ``<head>.loss``: the training losses on the whole region;
- affinity heads (nearest-neighbour channels first) and boundary heads: supervoxels by
  :func:`emtools.segment.watershed.fragments` on the predicted boundary map (per section when z voxels
  are >= 2x the in-plane size, as em-watershed's ``auto``; seeds are the connected regions below
  the threshold by default, so a perfect map scores 0), for each seed threshold; adapted Rand
  error and VOI split/merge (:func:`emtools.evaluate.neuron.neuron_metrics`, label 0 ignored)
  at the threshold with the lowest adapted Rand error;
- foreground, contour and cleft heads: voxel precision, recall and F1 of ``p > 0.5`` over the
  voxels that count (:mod:`emtools.evaluate.semantic`);
- semantic heads: voxel accuracy. Distance heads: the loss.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from emtools.models.heads import NEAREST_OFFSETS
from emtools.normalize import normalize_image
from emtools.tiling.geometry import Box
from emtools.train.data import Volume
from emtools.train.losses import head_loss
from emtools.train.sampling import HeadTarget, build_head_targets

LOWER_IS_BETTER = ("loss", "adapted_rand_error", "voi", "voi_split", "voi_merge")


@dataclasses.dataclass
class ValRegion:
    """A held-out region ready to evaluate: normalised image, labels, per-head targets and weights."""

    name: str
    image: np.ndarray  # float32 (z, y, x), normalised
    labels: np.ndarray  # uint64 (z, y, x), 0 where not labelled
    targets: dict[str, tuple[np.ndarray, np.ndarray]]
    voxel_size_nm: tuple[float, float, float]


def validation_regions(volumes: Sequence[Volume], heads: Sequence[HeadTarget], normalization: dict) -> list[ValRegion]:
    regions = []
    for v in volumes:
        if v.val_box is None or v.labels is None:
            continue
        sl = Box.from_shape(v.shape_zyx).local(v.val_box)
        labels = np.ascontiguousarray(v.labels[sl])
        mask = None if v.mask is None else v.mask[sl]
        targets = build_head_targets(heads, labels, mask, v.voxel_size_nm)
        if mask is not None:
            labels = np.where(mask != 0, labels, 0).astype(np.uint64)
        image = normalize_image(v.image[sl], normalization)
        regions.append(ValRegion(f"{v.name} [{v.val_box.text()}]", image, labels, targets, v.voxel_size_nm))
    return regions


def predict(model: torch.nn.Module, image: np.ndarray, channels: int, patch_zyx: Sequence[int],
            overlap_zyx: Sequence[int], device: torch.device, precision: str = "fp32") -> np.ndarray:
    """Blended logits (C, z, y, x) float32 of ``model`` (``channels`` outputs) over a normalised image.

    em-predict's engine (:mod:`emtools.predict.engine`) with the activations off: patches of the
    training crop overlapping by ``overlap_zyx`` voxels, Gaussian blending, the border mirrored.
    """
    from emtools.models.heads import HeadSpec
    from emtools.predict.engine import predict_volume

    overlap = tuple(min(int(o), int(p) - 1) for o, p in zip(overlap_zyx, patch_zyx))
    logits = HeadSpec("logits", "boundary", int(channels))
    out = predict_volume(model, image, [logits], patch_zyx=tuple(int(p) for p in patch_zyx),
                         overlap=("voxels", overlap), device=device, precision=precision, activate=False)
    return out["logits"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))).astype(np.float32)


def boundary_map(head: HeadTarget, logits: np.ndarray) -> np.ndarray | None:
    """The predicted boundary map (z, y, x) of an affinity or boundary head, else None."""
    from emtools.segment.watershed import boundary_from_affinities

    if head.kind == "boundary":
        return _sigmoid(logits[0])
    if head.kind == "affinity" and tuple(map(tuple, head.offsets[:3])) == NEAREST_OFFSETS:
        return boundary_from_affinities(_sigmoid(logits[:3]))
    return None


def segmentation_scores(boundary: np.ndarray, gt: np.ndarray, voxel_size_nm: Sequence[float],
                        thresholds: Sequence[float], min_size: int, seeds: str = "components") -> dict[str, float]:
    """Adapted Rand error and VOI of the best-threshold watershed of ``boundary`` against ``gt``.

    ``seeds``: ``components`` (connected regions below the threshold, at least ``min_size``
    voxels; a perfect boundary map scores 0) or ``distance`` (distance-transform maxima).
    """
    from emtools.evaluate.neuron import neuron_metrics
    from emtools.segment.watershed import fragments

    mode = "2d" if voxel_size_nm[0] >= 2.0 * min(voxel_size_nm[1], voxel_size_nm[2]) else "3d"
    best = None
    for threshold in thresholds:
        seg = fragments(boundary, seed_method=seeds, mode=mode, threshold=float(threshold),
                        voxel_size_nm=voxel_size_nm, min_seed_size=max(1, min_size), min_size=min_size)
        scores = neuron_metrics(seg, gt)
        if best is None or scores["adapted_rand_error"] < best["adapted_rand_error"]:
            best = {**scores, "threshold": float(threshold)}
    assert best is not None
    keys = ("adapted_rand_error", "voi_split", "voi_merge", "voi", "threshold")
    return {k: float(best[k]) for k in keys}


def voxel_scores(prob: np.ndarray, target: np.ndarray, weight: np.ndarray) -> dict[str, float | None]:
    from emtools.evaluate.semantic import semantic_metrics

    counted = weight > 0
    pred = (prob[counted] > 0.5).astype(np.uint8)
    gt = (target[counted] > 0.5).astype(np.uint8)
    scores = semantic_metrics(pred, gt)
    return {k: scores[k] for k in ("precision", "recall", "f1")}


def region_metrics(model: torch.nn.Module, region: ValRegion, heads: Sequence[HeadTarget], patch_zyx, overlap_zyx,
                   device: torch.device, precision: str, thresholds: Sequence[float], min_size: int,
                   seeds: str) -> dict:
    channels = sum(head.channels for head in heads)
    logits = predict(model, region.image, channels, patch_zyx, overlap_zyx, device, precision)
    out: dict[str, float | None] = {}
    start, total = 0, 0.0
    has_gt = bool(np.any(region.labels))
    for head in heads:
        head_logits = logits[start:start + head.channels]
        start += head.channels
        target, weight = region.targets[head.name]
        loss = float(head_loss(head, torch.from_numpy(head_logits)[None], torch.from_numpy(target)[None],
                               torch.from_numpy(weight)[None]))
        out[f"{head.name}.loss"] = loss
        total += head.weight * loss
        boundary = boundary_map(head, head_logits)
        if boundary is not None and has_gt:
            scores = segmentation_scores(boundary, region.labels, region.voxel_size_nm, thresholds, min_size, seeds)
            out.update({f"{head.name}.{k}": v for k, v in scores.items()})
        elif head.kind in ("foreground", "contour", "cleft") and np.any(weight > 0):
            scores = voxel_scores(_sigmoid(head_logits), target, weight)
            out.update({f"{head.name}.{k}": v for k, v in scores.items()})
        elif head.kind == "semantic" and np.any(weight > 0):
            counted = weight[0] > 0
            correct = np.argmax(head_logits, axis=0)[counted] == target[0][counted].astype(np.int64)
            out[f"{head.name}.accuracy"] = float(correct.mean())
    out["loss"] = total
    return out


def evaluate(model: torch.nn.Module, regions: Sequence[ValRegion], heads: Sequence[HeadTarget], patch_zyx,
             overlap_zyx, device: torch.device, precision: str = "fp32", thresholds: Sequence[float] = (0.5,),
             min_size: int = 20, seeds: str = "components") -> dict:
    """Metrics averaged over the held-out regions (the model is put in eval mode, then restored)."""
    was_training = model.training
    model.eval()
    try:
        per_region = [region_metrics(model, r, heads, patch_zyx, overlap_zyx, device, precision, thresholds,
                                     min_size, seeds) for r in regions]
    finally:
        model.train(was_training)
    out: dict = {}
    for key in dict.fromkeys(k for m in per_region for k in m):
        values = [m[key] for m in per_region if m.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    return out


def default_best_metric(heads: Sequence[HeadTarget]) -> str:
    """``auto``: adapted Rand of the first affinity/boundary head, else F1 of a foreground-like head, else loss."""
    for head in heads:
        if head.kind == "boundary" or (head.kind == "affinity" and
                                       tuple(map(tuple, head.offsets[:3])) == NEAREST_OFFSETS):
            return f"{head.name}.adapted_rand_error"
    for head in heads:
        if head.kind in ("foreground", "contour", "cleft"):
            return f"{head.name}.f1"
    return "loss"


def is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    lower = metric.split(".")[-1] in LOWER_IS_BETTER or metric.endswith("loss")
    return value < best if lower else value > best
