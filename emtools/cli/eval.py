"""em-eval: score a segmentation against ground truth; one JSON object on stdout."""

from __future__ import annotations

import csv
import json
import math
import time

import click
import numpy as np

from emtools import io
from emtools.cli.common import (
    FLOAT_TRIPLE,
    contract,
    emit,
    log,
    require_positive,
    version_option,
)
from emtools.errors import EmError
from emtools.meta import require_same_grid
from emtools.tiling.geometry import Box

TOOL = "em-eval"
MODES = ("neuron", "instance", "semantic", "synapse")
# Voxels per slab read at a time: the table is additive, so memory follows the slab, not the volume.
SLAB_VOXELS = 1 << 21

HELP = """Score SEGMENTATION against GROUND_TRUTH; print one JSON object on stdout.

\b
Modes (--mode):
  neuron    variation of information split/merge in bits (log2), adapted Rand error,
            Rand split/merge, Rand index and CREMI score = sqrt(ARAND * VOI).
  instance  mitochondria/nuclei: average precision at IoU 0.5, 0.75 and 0.5:0.95 as the
            MitoEM challenge computes it (COCO-style 101-point interpolated precision,
            objects sorted by size), and precision/recall/F1 of the one-to-one (Hungarian)
            matching at --iou. Only foreground voxels are visited.
  semantic  voxel IoU, Dice, precision, recall, F1, accuracy of the foreground
            (label != 0, or probability > --threshold); --per-class per label value.
  synapse   the semantic scores plus the CREMI cleft distances in nm: ADGT (mean distance
            of ground-truth cleft voxels to the prediction), ADF (of predicted voxels to
            the ground truth), FN/FP counts beyond --distance-threshold and the CREMI
            score (ADGT + ADF) / 2.

\b
Neuron definitions (SNEMI3D, CREMI, waterz, elf): with p_ij the voxels of segment i
in ground-truth object j, s_i and t_j the segment and object sizes, Rand precision =
sum p_ij^2 / sum s_i^2 (rand_merge), recall = sum p_ij^2 / sum t_j^2 (rand_split),
self-pairs included (scikit-image leaves them out); adapted Rand error = 1 - F-score;
VOI split = H(S|T), merge = H(T|S). Ground-truth label 0 is ignored (--gt-zero ignore,
as waterz and CREMI do; 'label' counts it as one more object). Prediction label 0 is an
ordinary segment (--pred-zero label); 'cremi' scores it as the CREMI/SNEMI3D scripts do:
in the adapted Rand each predicted-0 voxel adds 1/V to sum p_ij^2 and sum s_i^2 (V =
voxels of the region), VOI still counts 0 as a label.

\b
The inputs are compared where their regions overlap in world coordinates (offset and
voxel size from the files' metadata, or --voxel-size/--seg-offset/--gt-offset); voxel
sizes must be equal. Labels must be integers (uint64, uint32, any unsigned or
non-negative integer); floating-point input is an error except with --threshold in
the semantic and synapse modes.

\b
Examples:
  em-eval seg.h5:/main gt.h5:/neurons
  em-eval frags.tif labels.tif --voxel-size 30,6,6 | jq .adapted_rand_error
  em-eval mito.h5 mito_gt.h5 --mode instance --size-classes 5000,15000 --csv objects.csv
  em-eval clefts.h5:/prob clefts_gt.h5 --mode synapse --threshold 0.5
"""


@click.command(help=HELP)
@click.argument("segmentation")
@click.argument("ground_truth")
@click.option("--mode", type=click.Choice(MODES), default="neuron", show_default=True, help="Which metrics.")
@click.option("--gt-zero", type=click.Choice(["ignore", "label"]), default="ignore", show_default=True,
              help="neuron: ignore ground-truth 0 voxels, or count 0 as an object.")
@click.option("--pred-zero", type=click.Choice(["label", "cremi"]), default="label", show_default=True,
              help="neuron: prediction 0 is a segment, or the CREMI/SNEMI3D convention.")
@click.option("--iou", "iou_threshold", type=float, default=0.5, show_default=True,
              help="instance: IoU threshold of the matched precision/recall/F1.")
@click.option("--size-classes", default=None, metavar="SMALL,LARGE",
              help="instance: also AP per size class, small <= SMALL < medium <= LARGE < large voxels "
                   "(MitoEM: 5000,15000).")
@click.option("--threshold", type=float, default=None,
              help="semantic/synapse: foreground = value > THRESHOLD (needed for probability maps).")
@click.option("--per-class", is_flag=True, help="semantic: scores per label value, and their mean.")
@click.option("--distance-threshold", "distance_nm", type=float, default=200.0, show_default=True,
              help="synapse: distance in nm beyond which a voxel counts as FN/FP (CREMI: 200).")
@click.option("--csv", "csv_path", default=None, metavar="FILE",
              help="Also write a per-object table (neuron: per ground-truth object; instance: per object; "
                   "semantic --per-class: per class).")
@click.option("--voxel-size", "voxel_size_nm", type=FLOAT_TRIPLE, default=None,
              help="Voxel size z,y,x in nm of both inputs (overrides the files').")
@click.option("--seg-offset", "seg_offset_nm", type=FLOAT_TRIPLE, default=None,
              help="World offset z,y,x in nm of the segmentation (overrides the file's).")
@click.option("--gt-offset", "gt_offset_nm", type=FLOAT_TRIPLE, default=None,
              help="World offset z,y,x in nm of the ground truth (overrides the file's).")
@click.option("--exact-region", is_flag=True,
              help="Refuse inputs whose regions differ, instead of scoring their overlap.")
@version_option(TOOL)
@contract(TOOL)
def main(segmentation, ground_truth, mode, gt_zero, pred_zero, iou_threshold, size_classes, threshold, per_class,
         distance_nm, csv_path, voxel_size_nm, seg_offset_nm, gt_offset_nm, exact_region):
    if voxel_size_nm is not None:
        require_positive("--voxel-size", voxel_size_nm)
    classes = _parse_size_classes(size_classes)
    _check_options(mode, iou_threshold, threshold, per_class, distance_nm, csv_path, classes)
    if csv_path is not None:
        io.check_output_path(csv_path)
    with io.open_volume(segmentation, voxel_size_nm=voxel_size_nm, offset_nm=seg_offset_nm) as seg_src, \
            io.open_volume(ground_truth, voxel_size_nm=voxel_size_nm, offset_nm=gt_offset_nm) as gt_src:
        for spec, src in ((segmentation, seg_src), (ground_truth, gt_src)):
            _check_source(spec, src, mode, threshold)
        require_same_grid([(segmentation, seg_src.meta), (ground_truth, gt_src.meta)])
        region, notes = _common_region(segmentation, seg_src, ground_truth, gt_src, exact_region)
        report = {
            "mode": mode,
            "segmentation": segmentation,
            "ground_truth": ground_truth,
            "region_vx": region.text(),
            "shape_zyx": list(region.shape),
            "voxel_size_nm": list(seg_src.meta.voxel_size_nm),
            "offset_nm": [b * v for b, v in zip(region.begin, seg_src.meta.voxel_size_nm)],
            "voxels": region.size,
        }
        started = time.perf_counter()
        if mode == "synapse":
            metrics, table_rows = _synapse(seg_src, gt_src, region, threshold, distance_nm)
        else:
            metrics, table_rows = _tabled(seg_src, gt_src, region, mode, gt_zero, pred_zero, iou_threshold,
                                          classes, threshold, per_class, csv_path is not None)
    report.update(metrics)
    text = json.dumps(report, allow_nan=False)
    if csv_path is not None and table_rows is not None:
        _write_csv(csv_path, table_rows)
    # messages only after success, so that a failure stays one line on stderr
    for note in notes:
        log.warning("%s", note)
    log.info("%s vs %s: %s voxels in %s scored in %.2f s (%s mode)", segmentation, ground_truth,
             "x".join(map(str, region.shape)), region.text(), time.perf_counter() - started, mode)
    emit(text)


def _parse_size_classes(text):
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise EmError(f"--size-classes {text!r} is not two numbers SMALL,LARGE (e.g. 5000,15000)") from None
    if len(values) != 2 or not 0 < values[0] < values[1] or not all(map(math.isfinite, values)):
        raise EmError(f"--size-classes needs two sizes 0 < SMALL < LARGE in voxels, got {text}")
    return values


def _check_options(mode, iou_threshold, threshold, per_class, distance_nm, csv_path, classes):
    if not 0.0 < iou_threshold <= 1.0:
        raise EmError(f"--iou must be in (0, 1], got {iou_threshold:g}")
    if threshold is not None and (mode in ("neuron", "instance") or not math.isfinite(threshold)):
        raise EmError("--threshold applies to --mode semantic or synapse, and must be a finite number")
    if per_class and (mode != "semantic" or threshold is not None):
        raise EmError("--per-class applies to --mode semantic with integer class labels (no --threshold)")
    if classes is not None and mode != "instance":
        raise EmError("--size-classes applies to --mode instance only")
    if not (distance_nm >= 0 and math.isfinite(distance_nm)):
        raise EmError(f"--distance-threshold must be a finite distance >= 0 nm, got {distance_nm:g}")
    if csv_path is not None and (mode == "synapse" or (mode == "semantic" and not per_class)):
        raise EmError("--csv writes per-object tables: use it with --mode neuron, instance, or semantic --per-class")


def _check_source(spec, src, mode, threshold):
    """One-line errors for inputs that are not 3D label volumes, before anything is read."""
    if len(src.shape) != 3:
        raise EmError(f"{spec} has {src.shape[0]} channels (shape {'x'.join(map(str, src.shape))}); "
                      "labels must be one 3D volume (z,y,x)")
    kind = src.dtype.kind
    if kind == "f" and (mode in ("neuron", "instance") or threshold is None):
        hint = "give --threshold to binarise it" if mode in ("semantic", "synapse") else "labels must be integers"
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


def _slabs(region: Box):
    """Local z ranges of about SLAB_VOXELS voxels each."""
    depth = max(1, SLAB_VOXELS // max(1, region.shape[1] * region.shape[2]))
    for z0 in range(0, region.shape[0], depth):
        yield z0, min(z0 + depth, region.shape[0])


def _read(src, region: Box, z0: int, z1: int) -> np.ndarray:
    box = Box((region.begin[0] + z0, region.begin[1], region.begin[2]), (region.begin[0] + z1,) + region.end[1:])
    return src.read(box.shift(tuple(-o for o in src.box.begin)))


def _tabled(seg_src, gt_src, region, mode, gt_zero, pred_zero, iou_threshold, classes, threshold, per_class, want_rows):
    """Modes that need only the contingency table: count it slab by slab, then score it."""
    from emtools import evaluate as ev

    skip = {"neuron": "gt-zero" if gt_zero == "ignore" else "none", "instance": "both-zero"}.get(mode, "none")
    acc = ev.ContingencyAccumulator(skip)
    seg_seen = gt_seen = False
    for z0, z1 in _slabs(region):
        seg, gt = _read(seg_src, region, z0, z1), _read(gt_src, region, z0, z1)
        if mode in ("neuron", "instance"):
            ev.check_labels(seg, f"segmentation {seg_src.spec}")
            ev.check_labels(gt, f"ground truth {gt_src.spec}")
        elif not per_class:
            seg = ev.foreground_mask(seg, f"segmentation {seg_src.spec}", threshold)
            gt = ev.foreground_mask(gt, f"ground truth {gt_src.spec}")
        else:
            ev.check_labels(gt, f"ground truth {gt_src.spec}")
            ev.check_labels(seg, f"segmentation {seg_src.spec}")
        seg_seen = seg_seen or bool(seg.any())
        gt_seen = gt_seen or bool(gt.any())
        acc.add(gt, seg)
        del seg, gt
    if not seg_seen:
        what = f"no voxel above {threshold:g}" if threshold is not None else "every voxel is 0"
        raise EmError(f"the segmentation is empty in the evaluated region {region.text()} ({what}): {seg_src.spec}")
    if not gt_seen and (mode != "neuron" or gt_zero == "ignore"):
        raise EmError(f"the ground truth is empty in the evaluated region {region.text()} (every voxel is 0): "
                      f"{gt_src.spec}")
    table = acc.result()
    rows = None
    if mode == "neuron":
        metrics = ev.neuron_metrics_from_table(table, pred_zero=pred_zero)
        metrics = {"gt_zero": gt_zero, "pred_zero": pred_zero, **metrics}
        if want_rows:
            rows = ev.neuron_objects(table)
    elif mode == "instance":
        t = ev.InstanceTable(table)
        metrics = ev.instance_metrics_from_table(t, iou_threshold=iou_threshold, size_classes=classes)
        if want_rows:
            rows = ev.instance_objects(t, iou_threshold, classes)
    elif per_class:
        result = ev.semantic_per_class(table)
        metrics = {"mean_iou": result["mean_iou"], "mean_dice": result["mean_dice"],
                   "classes": {str(k): v for k, v in result["classes"].items()}}
        if want_rows:
            keys = list(result["classes"])
            rows = {"class": np.array(keys, dtype=np.uint64)}
            for name in ("iou", "dice", "precision", "recall", "accuracy", "tp", "fp", "fn"):
                rows[name] = np.array([result["classes"][k][name] for k in keys], dtype=object)
    else:
        metrics = ev.semantic_metrics_from_counts(*ev.binary_counts(table))
        if threshold is not None:
            metrics = {"threshold": threshold, **metrics}
    return metrics, rows


def _synapse(seg_src, gt_src, region, threshold, distance_nm):
    from emtools import evaluate as ev

    seg = ev.foreground_mask(_read(seg_src, region, 0, region.shape[0]), f"segmentation {seg_src.spec}", threshold)
    gt = ev.foreground_mask(_read(gt_src, region, 0, region.shape[0]), f"ground truth {gt_src.spec}")
    if not seg.any():
        raise EmError(f"the segmentation has no cleft voxel in the evaluated region {region.text()}: {seg_src.spec}")
    if not gt.any():
        raise EmError(f"the ground truth has no cleft voxel in the evaluated region {region.text()}: {gt_src.spec}")
    table = ev.contingency_table(gt, seg, skip="none")
    metrics = ev.semantic_metrics_from_counts(*ev.binary_counts(table))
    metrics.update(ev.cleft_distances(seg, gt, seg_src.meta.voxel_size_nm, distance_nm))
    if threshold is not None:
        metrics = {"threshold": threshold, **metrics}
    return metrics, None


def _write_csv(path, columns: dict) -> None:
    names = list(columns)
    with io.atomic_text(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(names)
        for row in zip(*(columns[n] for n in names)):
            writer.writerow([_cell(v) for v in row])


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, np.generic):
        return value.item()
    return value


if __name__ == "__main__":
    main(prog_name=TOOL)
