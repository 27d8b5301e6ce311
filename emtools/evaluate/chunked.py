"""Score two volume files against each other with bounded memory: what em-eval runs.

The inputs are compared where their regions overlap in world coordinates (offset and voxel size
from the files' metadata, or given). The contingency table is additive, so it is counted slab by
slab along z (about :data:`SLAB_VOXELS` voxels each) and memory follows one slab of each input
plus the table, never the volume::

    pred file --read slab--> check/binarise --+
                                              +--> ContingencyAccumulator --> mode.score --> dict
    gt file   --read slab--> check/binarise --+

Modes registered with ``whole_volume=True`` (synapse: the cleft distances need the whole masks)
read the overlap at once instead. Example::

    from emtools.evaluate import evaluate_files
    scores = evaluate_files("seg.h5:/main", "gt.h5:/neurons", mode="neuron")
    scores["adapted_rand_error"], scores["voi_split"]
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

import numpy as np

from emtools import io
from emtools.errors import EmError
from emtools.evaluate.modes import EvalMode, EvalSettings, Volumes, check_settings, get_mode, modes_using
from emtools.evaluate.semantic import foreground_mask
from emtools.evaluate.table import ContingencyAccumulator, check_labels, contingency_table
from emtools.meta import require_same_grid
from emtools.tiling.geometry import Box

__all__ = ["SLAB_VOXELS", "Evaluation", "evaluate_files", "score_files"]

log = logging.getLogger("emtools")

# Voxels per slab read at a time: the table is additive, so memory follows the slab, not the volume.
SLAB_VOXELS = 1 << 21


@dataclasses.dataclass
class Evaluation:
    """What :func:`score_files` found.

    ``report``: em-eval's JSON object (inputs, compared region, then the mode's metrics);
    ``objects``: the per-object table ``{column: array}`` when asked for, else None;
    ``warnings``: what the caller should show once everything succeeded (e.g. regions differ);
    ``region``: the compared region in global voxels; ``seconds``: time spent scoring.
    """

    report: dict
    objects: dict | None
    warnings: list[str]
    region: Box
    seconds: float


def evaluate_files(pred_spec: str, gt_spec: str, mode: str = "neuron", *,
                   voxel_size_nm: Sequence[float] | None = None, pred_offset_nm: Sequence[float] | None = None,
                   gt_offset_nm: Sequence[float] | None = None, exact_region: bool = False,
                   slab_voxels: int = SLAB_VOXELS, **settings) -> dict:
    """em-eval's JSON object for a prediction and a ground-truth file (volume specs, see emtools.io).

    ``settings``: the mode's options, fields of :class:`EvalSettings` (``gt_zero``, ``pred_zero``,
    ``iou_threshold``, ``size_classes``, ``threshold``, ``per_class``, ``distance_nm``).
    Warnings (regions differ) go to the ``emtools`` logger. One-line :class:`EmError` on bad input.
    """
    result = score_files(pred_spec, gt_spec, mode, EvalSettings.of(settings), voxel_size_nm=voxel_size_nm,
                         pred_offset_nm=pred_offset_nm, gt_offset_nm=gt_offset_nm, exact_region=exact_region,
                         slab_voxels=slab_voxels)
    for warning in result.warnings:
        log.warning("%s", warning)
    return result.report


def score_files(pred_spec: str, gt_spec: str, mode: str = "neuron", settings: EvalSettings | None = None, *,
                voxel_size_nm: Sequence[float] | None = None, pred_offset_nm: Sequence[float] | None = None,
                gt_offset_nm: Sequence[float] | None = None, exact_region: bool = False, objects: bool = False,
                slab_voxels: int = SLAB_VOXELS) -> Evaluation:
    """Score ``pred_spec`` against ``gt_spec`` in ``mode``; see :class:`Evaluation`.

    ``voxel_size_nm`` (both inputs) and the offsets override the files' metadata;
    ``exact_region`` refuses inputs whose regions differ instead of scoring their overlap;
    ``objects`` also returns the mode's per-object table (an error for modes without one).
    """
    eval_mode = get_mode(mode)
    settings = settings or EvalSettings()
    check_settings(eval_mode, settings, objects)
    if isinstance(slab_voxels, bool) or not isinstance(slab_voxels, (int, np.integer)) or slab_voxels < 1:
        raise EmError(f"slab_voxels must be a positive whole number, got {slab_voxels!r}")
    with io.open_volume(pred_spec, voxel_size_nm=voxel_size_nm, offset_nm=pred_offset_nm) as seg_src, \
            io.open_volume(gt_spec, voxel_size_nm=voxel_size_nm, offset_nm=gt_offset_nm) as gt_src:
        for spec, src in ((pred_spec, seg_src), (gt_spec, gt_src)):
            _check_source(spec, src, eval_mode, settings)
        require_same_grid([(pred_spec, seg_src.meta), (gt_spec, gt_src.meta)])
        region, warnings = _common_region(pred_spec, seg_src, gt_spec, gt_src, exact_region)
        voxel_size = seg_src.meta.voxel_size_nm
        report = {
            "mode": eval_mode.name,
            "segmentation": pred_spec,
            "ground_truth": gt_spec,
            "region_vx": region.text(),
            "shape_zyx": list(region.shape),
            "voxel_size_nm": list(voxel_size),
            "offset_nm": [b * v for b, v in zip(region.begin, voxel_size)],
            "voxels": region.size,
        }
        started = time.perf_counter()
        score = _score_whole if eval_mode.whole_volume else _score_streamed
        metrics, columns = score(seg_src, gt_src, region, eval_mode, settings, objects, slab_voxels)
    report.update(metrics)
    return Evaluation(report, columns, warnings, region, time.perf_counter() - started)


def _check_source(spec: str, src, mode: EvalMode, settings: EvalSettings) -> None:
    """One-line errors for inputs that are not 3D label volumes, before anything is read."""
    if len(src.shape) != 3:
        raise EmError(f"{spec} has {src.shape[0]} channels (shape {'x'.join(map(str, src.shape))}); "
                      "labels must be one 3D volume (z,y,x)")
    kind = src.dtype.kind
    binarises = mode.name in modes_using("threshold")
    if kind == "f" and (not binarises or settings.threshold is None):
        hint = "give --threshold to binarise it" if binarises else "labels must be integers"
        raise EmError(f"{spec} is {src.dtype} (floating point): {hint}")
    if kind not in "biuf":
        raise EmError(f"{spec} has dtype {src.dtype}; labels must be integers (uint64 or uint32)")


def _common_region(seg_spec, seg_src, gt_spec, gt_src, exact_region) -> tuple[Box, list[str]]:
    """The overlap of the two inputs in global voxel coordinates (one-line error if none).

    Also returns the warnings to print once scoring has succeeded.
    """
    seg_box, gt_box = seg_src.box, gt_src.box
    region = seg_box.intersect(gt_box)
    if region is None:
        raise EmError(f"no overlap: {seg_spec} covers voxels {seg_box.text()} but {gt_spec} covers "
                      f"{gt_box.text()} (check offsets and voxel sizes)")
    if region != seg_box or region != gt_box:
        message = (f"regions differ: {seg_spec} covers {seg_box.text()}, {gt_spec} covers {gt_box.text()} "
                   f"(shapes {'x'.join(map(str, seg_box.shape))} and {'x'.join(map(str, gt_box.shape))})")
        if exact_region:
            raise EmError(message)
        return region, [f"{message}; scored their overlap {region.text()}"]
    return region, []


def _slabs(region: Box, slab_voxels: int):
    """Local z ranges of about ``slab_voxels`` voxels each (at least one section)."""
    depth = max(1, slab_voxels // max(1, region.shape[1] * region.shape[2]))
    for z0 in range(0, region.shape[0], depth):
        yield z0, min(z0 + depth, region.shape[0])


def _read(src, region: Box, z0: int, z1: int) -> np.ndarray:
    """Sections z0:z1 of ``region`` (global voxels) from ``src``."""
    box = Box((region.begin[0] + z0, region.begin[1], region.begin[2]), (region.begin[0] + z1,) + region.end[1:])
    return src.read(box.shift(tuple(-o for o in src.box.begin)))


def _prepare(kind: str, array: np.ndarray, name: str, threshold: float | None) -> np.ndarray:
    """Check labels (one pass for signed types) or turn them into a boolean foreground."""
    if kind == "foreground":
        return foreground_mask(array, name, threshold)
    return check_labels(array, name)


def _score_streamed(seg_src, gt_src, region, mode, settings, objects, slab_voxels):
    """Count the table slab by slab, then score it: memory of one slab per input plus the table."""
    kind = mode.inputs_for(settings)
    seg_name, gt_name = f"segmentation {seg_src.spec}", f"ground truth {gt_src.spec}"
    acc = ContingencyAccumulator(mode.skip_for(settings))
    seg_seen = gt_seen = False
    for z0, z1 in _slabs(region, slab_voxels):
        seg, gt = _read(seg_src, region, z0, z1), _read(gt_src, region, z0, z1)
        if kind == "classes":  # class maps: the ground truth is checked first
            gt = _prepare(kind, gt, gt_name, None)
            seg = _prepare(kind, seg, seg_name, settings.threshold)
        else:
            seg = _prepare(kind, seg, seg_name, settings.threshold)
            gt = _prepare(kind, gt, gt_name, None)
        seg_seen = seg_seen or bool(seg.any())
        gt_seen = gt_seen or bool(gt.any())
        acc.add(gt, seg)
        del seg, gt
    _require_foreground(mode, settings, region, seg_src.spec, gt_src.spec, seg_seen, gt_seen)
    return mode.score(acc.result(), settings, objects, None)


def _score_whole(seg_src, gt_src, region, mode, settings, objects, slab_voxels):
    """Read the whole overlap once (the mode needs the volumes themselves), then score it."""
    kind = mode.inputs_for(settings)
    depth = region.shape[0]
    seg = _prepare(kind, _read(seg_src, region, 0, depth), f"segmentation {seg_src.spec}", settings.threshold)
    gt = _prepare(kind, _read(gt_src, region, 0, depth), f"ground truth {gt_src.spec}", None)
    _require_foreground(mode, settings, region, seg_src.spec, gt_src.spec, bool(seg.any()), bool(gt.any()))
    table = contingency_table(gt, seg, skip=mode.skip_for(settings))
    return mode.score(table, settings, objects, Volumes(seg, gt, tuple(seg_src.meta.voxel_size_nm)))


def _require_foreground(mode, settings, region, seg_spec, gt_spec, seg_seen, gt_seen) -> None:
    """One-line errors for an input without a labelled (or above-threshold) voxel in the region."""
    where = f"in the evaluated region {region.text()}"
    if not seg_seen:
        if mode.foreground_name:
            raise EmError(f"the segmentation has no {mode.foreground_name} {where}: {seg_spec}")
        what = f"no voxel above {settings.threshold:g}" if settings.threshold is not None else "every voxel is 0"
        raise EmError(f"the segmentation is empty {where} ({what}): {seg_spec}")
    if not gt_seen and not (mode.empty_gt_ok is not None and mode.empty_gt_ok(settings)):
        if mode.foreground_name:
            raise EmError(f"the ground truth has no {mode.foreground_name} {where}: {gt_spec}")
        raise EmError(f"the ground truth is empty {where} (every voxel is 0): {gt_spec}")
