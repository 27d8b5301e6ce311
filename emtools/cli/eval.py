"""em-eval: score segmentations against ground truth; one JSON object each on stdout, or a table."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import textwrap

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
from emtools.io.specs import H5_SUFFIXES, TIFF_SUFFIXES, is_glob, split_h5_spec
from emtools.evaluate import (
    GT_ZERO_CHOICES,
    MODES,
    PRED_ZERO_CHOICES,
    EvalSettings,
    get_mode,
    score_many,
    segmentation_specs,
    summaries_help,
    summary_for,
    summary_table,
)
from emtools.evaluate.modes import check_settings, modes_help, modes_using, objects_help
from emtools.pictures.drawing import MAX_TILE_PX

TOOL = "em-eval"


def _for(setting: str) -> str:
    """``semantic/synapse``: the modes an option applies to, for its help text."""
    return "/".join(modes_using(setting))


def _either(setting: str) -> str:
    """``semantic and synapse``: the modes that read ``setting``, in prose."""
    names = modes_using(setting)
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


_PLOT_MODES = [name for name, m in MODES.items() if m.inputs_for(EvalSettings()) == "labels"]

_SEVERAL = textwrap.fill(
    "Several segmentations (a threshold sweep): the last argument is the ground truth; each SEGMENTATION "
    "may be a quoted glob of HDF5 files ('seg_*.h5', 'seg_*.h5:/seg'), expanded in natural order (seg_2 "
    "before seg_10); a glob of .png/.tif files stays one volume of 2D slices. One JSON line per "
    "segmentation, in order, each the object a single run prints; --table prints a table instead, "
    "with the threshold that em-agglomerate recorded in each file and the best row marked: "
    f"{summaries_help()}. The ground truth is read once per batch of segmentations.",
    width=88, break_on_hyphens=False)

_PLOT = textwrap.fill(
    "A picture of the errors (--plot FILE.png, modes " + ", ".join(_PLOT_MODES) + "): a few z sections, "
    f"evenly spread over the region every input covers, shrunk to tiles of at most {MAX_TILE_PX} pixels. Top "
    "row: the "
    "ground-truth objects, each in its colour; then one row per segmentation, in the order given, its "
    "errors tinted and its outlines in yellow. Split (vermillion): voxels of a ground-truth object outside "
    "its main segment (the one holding most of the object), i.e. the smaller pieces of a split object. "
    "Merge (blue): voxels of a segment outside its main object (the one holding most of the segment), "
    "i.e. the minority parts of a segment that merges objects. Purple: both. Main partners are decided "
    "over each segmentation's whole overlap with the ground truth (ties: the smaller id); ground-truth 0 "
    "is never an error unless --gt-zero label. Background: the raw image given by --image (same voxel "
    "size), else neutral grey with the ground truth's outlines in light grey. The picture reads each "
    "input once more; stdout is unchanged.",
    width=88, break_on_hyphens=False)

HELP = f"""Score SEGMENTATION against GROUND_TRUTH; print one JSON object on stdout.

\b
{_SEVERAL}

\b
Modes (--mode):
{modes_help()}

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
the {_either("threshold")} modes.

\b
{_PLOT}

\b
Examples:
  em-eval seg.h5:/main gt.h5:/neurons
  em-eval frags.tif labels.tif --voxel-size 30,6,6 | jq .adapted_rand_error
  em-eval mito.h5 mito_gt.h5 --mode instance --size-classes 5000,15000 --csv objects.csv
  em-eval clefts.h5:/prob clefts_gt.h5 --mode synapse --threshold 0.5
  em-eval 'seg_*.h5' gt.h5:/neurons --table
  em-eval 'seg_*.h5' gt.h5:/neurons --csv 'objects_{{seg}}.csv' | jq -c '[.segmentation, .voi]'
  em-eval seg.h5:/main gt.h5:/neurons --plot errors.png --image raw.h5:/image
  em-eval 'seg_*.h5' gt.h5:/neurons --table --plot sweep.png
"""


@click.command(help=HELP)
@click.argument("segmentation", nargs=-1, required=True)
@click.argument("ground_truth")
@click.option("--mode", type=click.Choice(list(MODES)), default="neuron", show_default=True, help="Which metrics.")
@click.option("--gt-zero", type=click.Choice(GT_ZERO_CHOICES), default="ignore", show_default=True,
              help=f"{_for('gt_zero')}: ignore ground-truth 0 voxels, or count 0 as an object.")
@click.option("--pred-zero", type=click.Choice(PRED_ZERO_CHOICES), default="label", show_default=True,
              help=f"{_for('pred_zero')}: prediction 0 is a segment, or the CREMI/SNEMI3D convention.")
@click.option("--iou", "iou_threshold", type=float, default=0.5, show_default=True,
              help=f"{_for('iou_threshold')}: IoU threshold of the matched precision/recall/F1.")
@click.option("--size-classes", default=None, metavar="SMALL,LARGE",
              help=f"{_for('size_classes')}: also AP per size class, small <= SMALL < medium <= LARGE < large "
                   "voxels (MitoEM: 5000,15000).")
@click.option("--threshold", type=float, default=None,
              help=f"{_for('threshold')}: foreground = value > THRESHOLD (needed for probability maps).")
@click.option("--per-class", is_flag=True, help=f"{_for('per_class')}: scores per label value, and their mean.")
@click.option("--distance-threshold", "distance_nm", type=float, default=200.0, show_default=True,
              help=f"{_for('distance_nm')}: distance in nm beyond which a voxel counts as FN/FP (CREMI: 200).")
@click.option("--csv", "csv_path", default=None, metavar="FILE",
              help=f"Also write a per-object table ({objects_help()}); with several segmentations "
                   "FILE must contain {seg}, replaced by each segmentation's file name without suffix.")
@click.option("--table", "as_table", is_flag=True,
              help="Print a table (one row per segmentation, the best marked) instead of JSON.")
@click.option("--voxel-size", "voxel_size_nm", type=FLOAT_TRIPLE, default=None,
              help="Voxel size z,y,x in nm of both inputs (overrides the files').")
@click.option("--seg-offset", "seg_offset_nm", type=FLOAT_TRIPLE, default=None,
              help="World offset z,y,x in nm of the segmentation (overrides the file's).")
@click.option("--gt-offset", "gt_offset_nm", type=FLOAT_TRIPLE, default=None,
              help="World offset z,y,x in nm of the ground truth (overrides the file's).")
@click.option("--exact-region", is_flag=True,
              help="Refuse inputs whose regions differ, instead of scoring their overlap.")
@click.option("--plot", "plot_path", default=None, metavar="FILE.png",
              help="Also draw the split and merge errors on a few sections (see above).")
@click.option("--image", "image_spec", default=None, metavar="SPEC",
              help="The raw image under --plot's errors (default: neutral grey with the ground truth's outlines).")
@version_option(TOOL)
@contract(TOOL)
def main(segmentation, ground_truth, mode, gt_zero, pred_zero, iou_threshold, size_classes, threshold, per_class,
         distance_nm, csv_path, as_table, voxel_size_nm, seg_offset_nm, gt_offset_nm, exact_region, plot_path,
         image_spec):
    if voxel_size_nm is not None:
        require_positive("--voxel-size", voxel_size_nm)
    settings = EvalSettings(gt_zero=gt_zero, pred_zero=pred_zero, iou_threshold=iou_threshold,
                            size_classes=_parse_size_classes(size_classes), threshold=threshold,
                            per_class=per_class, distance_nm=distance_nm)
    # options first, so that a bad one fails before the output folder is checked or a file opened
    check_settings(get_mode(mode), settings, objects=csv_path is not None)
    if as_table:
        summary_for(mode, settings)
    specs = segmentation_specs(segmentation, ground_truth)
    csv_paths = _csv_paths(csv_path, specs) if csv_path is not None else None
    for path in csv_paths or ():
        io.check_output_path(path)
    _check_plot(plot_path, image_spec, mode, settings, specs + [ground_truth] + (csv_paths or []), voxel_size_nm)
    results = list(score_many(specs, ground_truth, mode, settings, voxel_size_nm=voxel_size_nm,
                              pred_offset_nm=seg_offset_nm, gt_offset_nm=gt_offset_nm, exact_region=exact_region,
                              objects=csv_path is not None))
    if as_table:
        text = summary_table([r.report for r in results], mode, settings, [r.seg_threshold for r in results])
    else:
        text = "\n".join(json.dumps(r.report, allow_nan=False) for r in results)
    picture = None
    if plot_path is not None:  # drawn before anything is written: a failure leaves no output
        from emtools.pictures import eval_errors_picture

        picture = eval_errors_picture(specs, ground_truth, image_spec, gt_zero=settings.gt_zero,
                                      voxel_size_nm=voxel_size_nm, seg_offset_nm=seg_offset_nm,
                                      gt_offset_nm=gt_offset_nm)
    written = []
    try:  # the tables and the picture together, or none of them
        for path, result in zip(csv_paths or (), results):
            if result.objects is not None:
                _write_csv(path, result.objects)
                written.append(path)
        if picture is not None:
            io.write_png(plot_path, picture)
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                os.remove(path)
        raise
    # messages only after success, so that a failure stays one line on stderr
    for result in results:
        for warning in result.warnings:
            log.warning("%s", warning)
    for spec, result in zip(specs, results):
        region = result.region
        log.info("%s vs %s: %s voxels in %s scored in %.2f s (%s mode)", spec, ground_truth,
                 "x".join(map(str, region.shape)), region.text(), result.seconds, mode)
    emit(text)


SEG_FIELD = "{seg}"


def _check_plot(plot_path, image_spec, mode, settings, others, voxel_size_nm) -> None:
    """--plot and --image, checked before any voxel is read (one-line errors)."""
    if plot_path is None:
        if image_spec is not None:
            raise EmError("--image is the background of --plot: give --plot FILE.png too")
        return
    if mode not in _PLOT_MODES or get_mode(mode).inputs_for(settings) != "labels":
        raise EmError(f"--plot draws split/merge errors of label volumes: use --mode {' or '.join(_PLOT_MODES)}")
    from emtools.pictures import check_picture_path

    check_picture_path(plot_path, "--plot", others + ([image_spec] if image_spec else []))
    if image_spec is not None:
        with io.open_volume(image_spec, voxel_size_nm=voxel_size_nm):
            pass  # a missing or unreadable image fails now, not after the scores


def _csv_paths(template: str, specs: list[str]) -> list[str]:
    """One --csv path per segmentation: {seg} is its file name without suffix (needed for several)."""
    if SEG_FIELD not in template:
        if len(specs) > 1:
            raise EmError(f"--csv with {len(specs)} segmentations needs {SEG_FIELD} in the file name, "
                          f"e.g. --csv 'objects_{SEG_FIELD}.csv'")
        return [template]
    paths = [template.replace(SEG_FIELD, _seg_name(spec)) for spec in specs]
    seen: dict[str, str] = {}
    for spec, path in zip(specs, paths):
        if path in seen:
            raise EmError(f"--csv {template} names the same file {path} for {seen[path]} and {spec}")
        seen[path] = spec
    return paths


def _seg_name(spec: str) -> str:
    """``runs/seg_0.3.h5:/main`` -> ``seg_0.3``; a folder or glob of slices -> the folder's name."""
    h5 = split_h5_spec(spec)
    path = h5[0] if h5 is not None else spec
    if is_glob(path):
        path = os.path.dirname(path)
    name = os.path.basename(os.path.normpath(path))
    stem, suffix = os.path.splitext(name)
    return stem if suffix.lower() in H5_SUFFIXES + TIFF_SUFFIXES else name


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
