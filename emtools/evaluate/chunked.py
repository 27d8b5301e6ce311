"""Score two volume files against each other with bounded memory: what em-eval runs.

The inputs are compared where their regions overlap in world coordinates (offset and voxel size
from the files' metadata, or given). The contingency table is additive, so it is counted slab by
slab along z (about :data:`SLAB_VOXELS` voxels each) and memory follows one slab of each input
plus the table, never the volume::

    pred file --read slab--> check/binarise --+
                                              +--> ContingencyAccumulator --> mode.score --> dict
    gt file   --read slab--> check/binarise --+

Modes registered with ``whole_volume=True`` (synapse: the cleft distances need the whole masks)
read the overlap at once instead.

Several segmentations against one ground truth (a threshold sweep): :func:`score_many` checks
every input before reading a voxel, then counts up to ``batch`` segmentations that cover the same
region in one pass over the ground truth, so each ground-truth slab is read and checked once per
batch; memory is one slab per input plus one table per segmentation of the batch. Example::

    from emtools.evaluate import evaluate_files, score_many, segmentation_specs
    scores = evaluate_files("seg.h5:/main", "gt.h5:/neurons", mode="neuron")
    scores["adapted_rand_error"], scores["voi_split"]
    for result in score_many(segmentation_specs(["seg_*.h5"], "gt.h5:/neurons"), "gt.h5:/neurons"):
        result.report["segmentation"], result.report["voi"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
import time
from typing import Iterator, Sequence

import numpy as np

from emtools import io
from emtools.errors import EmError
from emtools.evaluate.modes import EvalMode, EvalSettings, Volumes, check_settings, get_mode, modes_using
from emtools.evaluate.semantic import foreground_mask
from emtools.evaluate.table import ContingencyAccumulator, check_labels, contingency_table
from emtools.io.specs import is_glob, split_h5_spec
from emtools.meta import require_same_grid
from emtools.tiling.geometry import Box

__all__ = ["MANY_BATCH", "SLAB_VOXELS", "Evaluation", "evaluate_files", "score_files", "score_many",
           "segmentation_specs"]

log = logging.getLogger("emtools")

# Voxels per slab read at a time: the table is additive, so memory follows the slab, not the volume.
SLAB_VOXELS = 1 << 21
# Segmentations counted in one pass over the ground truth: each holds its own table, so memory
# grows with the batch, while the ground truth is read once per batch instead of once per file.
MANY_BATCH = 8


@dataclasses.dataclass
class Evaluation:
    """What :func:`score_files` found.

    ``report``: em-eval's JSON object (inputs, compared region, then the mode's metrics);
    ``objects``: the per-object table ``{column: array}`` when asked for, else None;
    ``warnings``: what the caller should show once everything succeeded (e.g. regions differ);
    ``region``: the compared region in global voxels; ``seconds``: time spent scoring;
    ``seg_threshold``: the threshold that the segmentation's metadata records (em-agglomerate
    writes one per output of a sweep), else None.
    """

    report: dict
    objects: dict | None
    warnings: list[str]
    region: Box
    seconds: float
    seg_threshold: float | None = None


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
    eval_mode, settings = _checked_call(mode, settings, objects, slab_voxels)
    with io.open_volume(pred_spec, voxel_size_nm=voxel_size_nm, offset_nm=pred_offset_nm) as seg_src, \
            io.open_volume(gt_spec, voxel_size_nm=voxel_size_nm, offset_nm=gt_offset_nm) as gt_src:
        for spec, src in ((pred_spec, seg_src), (gt_spec, gt_src)):
            _check_source(spec, src, eval_mode, settings)
        region, warnings = _pair_region(pred_spec, seg_src, gt_spec, gt_src, exact_region)
        started = time.perf_counter()
        score = _score_whole if eval_mode.whole_volume else _score_streamed
        (metrics, columns), = score([seg_src], gt_src, region, eval_mode, settings, objects, slab_voxels)
        report = _report(eval_mode, pred_spec, gt_spec, region, seg_src.meta.voxel_size_nm, _threshold_of(seg_src))
    report.update(metrics)
    return Evaluation(report, columns, warnings, region, time.perf_counter() - started, _threshold_of(seg_src))


def score_many(pred_specs: Sequence[str], gt_spec: str, mode: str = "neuron", settings: EvalSettings | None = None,
               *, voxel_size_nm: Sequence[float] | None = None, pred_offset_nm: Sequence[float] | None = None,
               gt_offset_nm: Sequence[float] | None = None, exact_region: bool = False, objects: bool = False,
               slab_voxels: int = SLAB_VOXELS, batch: int = MANY_BATCH) -> Iterator[Evaluation]:
    """Score each of ``pred_specs`` against ``gt_spec``: one :class:`Evaluation` each, in order.

    Every result equals what :func:`score_files` gives for that pair (bit for bit). Every input
    is opened and checked (format, dtype, voxel size, region) before any voxel is read, so a bad
    file fails at once; then up to ``batch`` consecutive segmentations that cover the same region
    are counted in one pass over the ground truth. ``pred_offset_nm`` applies to every
    segmentation. Expand globs first with :func:`segmentation_specs`.
    """
    eval_mode, settings = _checked_call(mode, settings, objects, slab_voxels)
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise EmError(f"batch must be a positive whole number, got {batch!r}")
    pred_specs = list(pred_specs)
    if not pred_specs:
        raise EmError("no segmentation to score")

    def open_pred(spec):
        return io.open_volume(spec, voxel_size_nm=voxel_size_nm, offset_nm=pred_offset_nm)

    with contextlib.ExitStack() as stack:
        # the first segmentation is opened and checked before the ground truth, as score_files does
        first = stack.enter_context(open_pred(pred_specs[0]))
        gt_src = stack.enter_context(io.open_volume(gt_spec, voxel_size_nm=voxel_size_nm, offset_nm=gt_offset_nm))
        # first pass: metadata only, so that the tenth file's error comes before the first score
        plans = []
        for spec in pred_specs:
            with (contextlib.nullcontext(first) if not plans else open_pred(spec)) as seg_src:
                _check_source(spec, seg_src, eval_mode, settings)
                if not plans:
                    _check_source(gt_spec, gt_src, eval_mode, settings)
                region, warnings = _pair_region(spec, seg_src, gt_spec, gt_src, exact_region)
                plans.append((spec, region, warnings, _threshold_of(seg_src)))
        first.close()
        score = _score_whole if eval_mode.whole_volume else _score_streamed
        voxel_size = gt_src.meta.voxel_size_nm  # require_same_grid: every input has the same
        for group in _batches(plans, batch):
            region = group[0][1]
            with contextlib.ExitStack() as stack:
                sources = [stack.enter_context(open_pred(spec)) for spec, *_ in group]
                started = time.perf_counter()
                scored = score(sources, gt_src, region, eval_mode, settings, objects, slab_voxels)
                seconds = (time.perf_counter() - started) / len(group)  # the shared pass, split evenly
            for (spec, _, warnings, threshold), (metrics, columns) in zip(group, scored):
                report = _report(eval_mode, spec, gt_spec, region, voxel_size, threshold)
                report.update(metrics)
                yield Evaluation(report, columns, warnings, region, seconds, threshold)


def segmentation_specs(patterns: Sequence[str], gt_spec: str | None = None) -> list[str]:
    """Volume specs from specs and quoted globs of HDF5 files, in the order given.

    ``'seg_*.h5'`` and ``'seg_*.h5:/seg'`` expand to the matching files in natural order
    (``seg_2`` before ``seg_10``), with the dataset kept. Other specs pass unchanged, globs of
    .png/.tif slices included (they name one volume of 2D slices, as everywhere in emtools).
    One-line errors: a glob that matches no file, or one that also matches ``gt_spec``.
    """
    specs = []
    for pattern in patterns:
        h5 = split_h5_spec(pattern)
        if h5 is None or not is_glob(h5[0]):
            specs.append(pattern)
            continue
        path_glob, dataset = h5
        files = sorted((f for f in glob.glob(path_glob) if os.path.isfile(f)), key=_path_key)
        if not files:
            raise EmError(f"no file matches {pattern}")
        clash = next((f for f in files if _same_volume(f, dataset, gt_spec)), None)
        if clash is not None:
            raise EmError(f"{pattern} also matches the ground truth {clash}; narrow it to the segmentations")
        specs.extend(f if dataset is None else f"{f}:{dataset}" for f in files)
    return specs


def _path_key(path: str) -> list:
    """Natural order over every folder of ``path``, not only its file name."""
    return [io.natural_key(part) for part in os.path.normpath(path).split(os.sep)]


def _same_volume(path: str, dataset: str | None, gt_spec: str | None) -> bool:
    """Whether ``path:dataset`` may be the ground truth: the same file, and no different dataset named."""
    gt = split_h5_spec(gt_spec) if gt_spec else None
    if gt is None or not os.path.isfile(gt[0]) or not os.path.samefile(path, gt[0]):
        return False
    names = [d.strip("/") for d in (dataset, gt[1]) if d is not None]
    return len(names) < 2 or names[0] == names[1]


def _batches(plans: list, batch: int):
    """Runs of at most ``batch`` consecutive plans with the same region (one pass over the ground truth each)."""
    group: list = []
    for plan in plans:
        if group and (len(group) == batch or plan[1] != group[0][1]):
            yield group
            group = []
        group.append(plan)
    if group:
        yield group


def _checked_call(mode: str, settings: EvalSettings | None, objects: bool, slab_voxels) -> tuple[EvalMode, EvalSettings]:
    eval_mode = get_mode(mode)
    settings = settings or EvalSettings()
    check_settings(eval_mode, settings, objects)
    if isinstance(slab_voxels, bool) or not isinstance(slab_voxels, (int, np.integer)) or slab_voxels < 1:
        raise EmError(f"slab_voxels must be a positive whole number, got {slab_voxels!r}")
    return eval_mode, settings


def _report(mode: EvalMode, pred_spec: str, gt_spec: str, region: Box, voxel_size,
            threshold: float | None = None) -> dict:
    """The head of em-eval's JSON object: inputs and the compared region (the metrics follow);
    ``segmentation_threshold``: the agglomeration threshold the segmentation's metadata records."""
    return {
        "mode": mode.name,
        "segmentation": pred_spec,
        **({"segmentation_threshold": threshold} if threshold is not None else {}),
        "ground_truth": gt_spec,
        "region_vx": region.text(),
        "shape_zyx": list(region.shape),
        "voxel_size_nm": list(voxel_size),
        "offset_nm": [b * v for b, v in zip(region.begin, voxel_size)],
        "voxels": region.size,
    }


def _threshold_of(src) -> float | None:
    value = src.meta.attrs.get("threshold")
    return float(value) if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) else None


def _pair_region(seg_spec, seg_src, gt_spec, gt_src, exact_region) -> tuple[Box, list[str]]:
    """Same voxel size (one-line error otherwise), then :func:`_common_region`."""
    require_same_grid([(seg_spec, seg_src.meta), (gt_spec, gt_src.meta)])
    return _common_region(seg_spec, seg_src, gt_spec, gt_src, exact_region)


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


def _score_streamed(seg_srcs, gt_src, region, mode, settings, objects, slab_voxels) -> list:
    """Count the tables slab by slab, then score them: memory of one slab per input plus the tables.

    Each ground-truth slab is read and checked once for all of ``seg_srcs`` (which share
    ``region``); with one segmentation the checks run in the same order as they always have.
    """
    kind = mode.inputs_for(settings)
    gt_first = kind == "classes"  # class maps: the ground truth is checked first
    gt_name = f"ground truth {gt_src.spec}"
    accs = [ContingencyAccumulator(mode.skip_for(settings)) for _ in seg_srcs]
    seg_seen = [False] * len(seg_srcs)
    gt_seen = False
    for z0, z1 in _slabs(region, slab_voxels):
        gt_raw, gt = _read(gt_src, region, z0, z1), None
        for i, seg_src in enumerate(seg_srcs):
            seg = _read(seg_src, region, z0, z1)
            if gt is None and gt_first:
                gt = _prepare(kind, gt_raw, gt_name, None)
            seg = _prepare(kind, seg, f"segmentation {seg_src.spec}", settings.threshold)
            if gt is None:
                gt = _prepare(kind, gt_raw, gt_name, None)
            seg_seen[i] = seg_seen[i] or bool(seg.any())
            accs[i].add(gt, seg)
            del seg
        gt_seen = gt_seen or bool(gt.any())
        del gt_raw, gt
    results = []
    for seg_src, seen, acc in zip(seg_srcs, seg_seen, accs):
        _require_foreground(mode, settings, region, seg_src.spec, gt_src.spec, seen, gt_seen)
        results.append(mode.score(acc.result(), settings, objects, None))
    return results


def _score_whole(seg_srcs, gt_src, region, mode, settings, objects, slab_voxels) -> list:
    """Read the whole overlap (the mode needs the volumes themselves), then score it.

    The ground truth is read once for all of ``seg_srcs``; one segmentation is in memory at a time.
    """
    kind = mode.inputs_for(settings)
    depth = region.shape[0]
    gt, results = None, []
    for seg_src in seg_srcs:
        seg = _prepare(kind, _read(seg_src, region, 0, depth), f"segmentation {seg_src.spec}", settings.threshold)
        if gt is None:
            gt = _prepare(kind, _read(gt_src, region, 0, depth), f"ground truth {gt_src.spec}", None)
        _require_foreground(mode, settings, region, seg_src.spec, gt_src.spec, bool(seg.any()), bool(gt.any()))
        table = contingency_table(gt, seg, skip=mode.skip_for(settings))
        results.append(mode.score(table, settings, objects, Volumes(seg, gt, tuple(seg_src.meta.voxel_size_nm))))
        del seg, table
    return results


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
