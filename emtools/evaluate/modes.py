"""The eval-mode registry: one decorated function per ``em-eval --mode``.

A mode is a function ``score(table, settings, objects, volumes) -> (metrics, columns)``
registered with :func:`eval_mode`, which declares once what the mode needs:

- ``skip``: which voxels its contingency table leaves out (``SKIP_CHOICES``; a function of the
  settings where that depends on them, e.g. neuron's ``gt_zero``);
- ``inputs``: how the volumes are checked before counting: ``labels`` (integer ids),
  ``classes`` (integer class maps, ground truth checked first) or ``foreground`` (boolean masks:
  label != 0, or probability > threshold);
- ``uses``: the :class:`EvalSettings` fields it reads (``threshold``, ``per_class`` and
  ``size_classes`` are refused with other modes; the others are just ignored);
- ``whole_volume``: the function also needs the whole prepared volumes in memory (the CREMI
  cleft distances); otherwise the table is counted slab by slab and memory stays bounded;
- ``objects_help``/``objects_need``: what its per-object table (``--csv``) holds, and the
  setting that must be on for it to have one.

``metrics`` is the mode's part of em-eval's JSON object, ``columns`` its per-object table
(``{name: array}``, or None when ``objects`` is False). em-eval's ``--mode`` choices, the
"Modes" block of its ``--help`` (and so its man page), the mode names in its option help texts
and its option checks all come from :data:`MODES`.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from typing import Any, Callable, NamedTuple

import numpy as np

from emtools.errors import EmError
from emtools.evaluate.instance import InstanceTable, instance_metrics_from_table, instance_objects
from emtools.evaluate.neuron import (
    GT_ZERO_CHOICES,
    PRED_ZERO_CHOICES,
    neuron_metrics_from_table,
    neuron_objects,
    skip_for,
)
from emtools.evaluate.semantic import (
    binary_counts,
    cleft_distances,
    semantic_metrics_from_counts,
    semantic_per_class,
)
from emtools.evaluate.table import SKIP_CHOICES, Contingency, contingency_table
from emtools.values import unknown_choice

__all__ = [
    "INPUT_KINDS",
    "MODES",
    "Summary",
    "EvalMode",
    "EvalSettings",
    "Volumes",
    "check_settings",
    "eval_mode",
    "get_mode",
    "modes_help",
    "modes_using",
    "objects_help",
]

INPUT_KINDS = ("labels", "classes", "foreground")
# How a setting is spelled on em-eval's command line (messages name the flag users typed).
FLAGS = {
    "gt_zero": "--gt-zero",
    "pred_zero": "--pred-zero",
    "iou_threshold": "--iou",
    "size_classes": "--size-classes",
    "threshold": "--threshold",
    "per_class": "--per-class",
    "distance_nm": "--distance-threshold",
}


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """The choices that change what a mode computes (em-eval's mode options, same defaults)."""

    gt_zero: str = "ignore"                 # neuron: ground-truth 0 ignored, or one more object
    pred_zero: str = "label"                # neuron: prediction 0 a segment, or the CREMI convention
    iou_threshold: float = 0.5              # instance: IoU of the matched precision/recall/F1
    size_classes: tuple[float, float] | None = None  # instance: (small, large) bounds in voxels
    threshold: float | None = None          # semantic/synapse: foreground = value > threshold
    per_class: bool = False                 # semantic: scores per label value
    distance_nm: float = 200.0              # synapse: FN/FP distance in nm

    @classmethod
    def of(cls, options: dict[str, Any]) -> EvalSettings:
        """Settings from keyword options; an unknown name is a one-line error with a hint."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in options:
            if key not in names:
                raise unknown_choice("eval setting", key, names)
        return cls(**options)


class Volumes(NamedTuple):
    """The whole prepared volumes, for modes registered with ``whole_volume=True``."""

    seg: np.ndarray
    gt: np.ndarray
    voxel_size_nm: tuple[float, float, float]


Score = Callable[[Contingency, EvalSettings, bool, "Volumes | None"], "tuple[dict, dict | None]"]


@dataclasses.dataclass(frozen=True)
class Summary:
    """A mode's row in ``em-eval --table``: columns (keys of its JSON object) and the one that
    decides the best row."""

    columns: tuple[str, ...]
    best: str
    lower_is_better: bool
    why: str  # what ``best`` is, for the header line

    def __post_init__(self):
        if self.best not in self.columns:
            raise ValueError(f"the deciding column {self.best!r} is not among {self.columns}")

    def header(self) -> str:
        return f"{'lowest' if self.lower_is_better else 'highest'} {self.best} ({self.why})"


@dataclasses.dataclass(frozen=True)
class EvalMode:
    """One registered mode (see the module docstring)."""

    name: str
    help: str
    score: Score
    skip: str | Callable[[EvalSettings], str]
    inputs: str | Callable[[EvalSettings], str]
    uses: tuple[str, ...] = ()
    whole_volume: bool = False
    objects_help: str | None = None
    objects_need: str | None = None
    empty_gt_ok: Callable[[EvalSettings], bool] | None = None
    foreground_name: str | None = None
    table: Summary | Callable[[EvalSettings], Summary] | None = None

    def table_for(self, settings: EvalSettings | None = None) -> Summary:
        """This mode's ``--table`` columns with ``settings`` (defaults when None)."""
        if self.table is None:
            raise EmError(f"eval mode {self.name!r} has no table columns "
                          "(register it with @eval_mode(..., table=Summary(...)))")
        if callable(self.table):
            return self.table(settings if settings is not None else EvalSettings())
        return self.table

    def skip_for(self, settings: EvalSettings) -> str:
        return self.skip(settings) if callable(self.skip) else self.skip

    def inputs_for(self, settings: EvalSettings) -> str:
        return self.inputs(settings) if callable(self.inputs) else self.inputs

    def has_objects(self, settings: EvalSettings) -> bool:
        """Whether this mode, with these settings, has a per-object table."""
        return self.objects_help is not None and (self.objects_need is None or bool(getattr(settings, self.objects_need)))


MODES: dict[str, EvalMode] = {}


def eval_mode(name: str, help: str, *, skip, inputs, table=None, uses=(), whole_volume=False, objects_help=None,
              objects_need=None, empty_gt_ok=None, foreground_name=None):
    """Register ``score(table, settings, objects, volumes) -> (metrics, columns)`` as mode ``name``.

    ``help``: the mode's paragraph in ``em-eval --help`` (its line breaks are kept);
    ``empty_gt_ok(settings)``: whether a ground truth without a labelled voxel may be scored;
    ``foreground_name``: what an empty input lacks in its error ("cleft voxel"; None: "is empty");
    ``table``: its :class:`Summary` for ``--table`` (or a function of the settings giving one;
    without it the mode cannot be tabulated).
    Other arguments: see the module docstring.
    """
    if name in MODES:
        raise ValueError(f"eval mode {name!r} is registered twice")
    if not callable(skip) and skip not in SKIP_CHOICES:
        raise ValueError(f"eval mode {name!r}: skip must be one of {SKIP_CHOICES}, got {skip!r}")
    if not callable(inputs) and inputs not in INPUT_KINDS:
        raise ValueError(f"eval mode {name!r}: inputs must be one of {INPUT_KINDS}, got {inputs!r}")
    unknown = set(uses) - set(FLAGS)
    if unknown or (objects_need is not None and objects_need not in uses):
        raise ValueError(f"eval mode {name!r}: unknown settings {sorted(unknown) or [objects_need]}")

    def register(score: Score) -> Score:
        MODES[name] = EvalMode(name, textwrap.dedent(help).strip("\n"), score, skip, inputs, tuple(uses),
                               whole_volume, objects_help, objects_need, empty_gt_ok, foreground_name, table)
        return score

    return register


def get_mode(name: str) -> EvalMode:
    """The registered mode ``name``; one-line error with "did you mean" otherwise."""
    try:
        return MODES[name]
    except (KeyError, TypeError):
        raise unknown_choice("eval mode", name, MODES) from None


def modes_using(setting: str) -> list[str]:
    """Names of the modes that read ``setting``, in registration order."""
    return [mode.name for mode in MODES.values() if setting in mode.uses]


def _listing(words: list[str], last: str = "or") -> str:
    """``a``, ``a or b``, ``a, b, or c``."""
    if len(words) <= 2:
        return f" {last} ".join(words)
    return ", ".join(words[:-1]) + f", {last} " + words[-1]


def modes_help() -> str:
    """The "Modes" block of em-eval's --help: each mode's name and its help, aligned."""
    width = max([8] + [len(name) for name in MODES]) + 2
    lines = []
    for mode in MODES.values():
        first, *rest = mode.help.splitlines()
        lines.append(f"  {mode.name:<{width}}{first}")
        lines.extend(" " * (width + 2) + line for line in rest)
    return "\n".join(lines)


def _objects_owner(mode: EvalMode) -> str:
    """``neuron``, or ``semantic --per-class`` where a setting must be on."""
    return mode.name + (f" {FLAGS[mode.objects_need]}" if mode.objects_need else "")


def _objects_owners() -> list[str]:
    return [_objects_owner(mode) for mode in MODES.values() if mode.objects_help is not None]


def objects_help() -> str:
    """``neuron: per ground-truth object; ...``: what --csv writes in each mode."""
    return "; ".join(f"{_objects_owner(mode)}: {mode.objects_help}"
                     for mode in MODES.values() if mode.objects_help is not None)


def check_settings(mode: EvalMode, settings: EvalSettings, objects: bool = False) -> None:
    """One-line errors for settings that are out of range or do not apply to ``mode``.

    ``objects``: a per-object table is wanted (em-eval --csv).
    """
    if settings.gt_zero not in GT_ZERO_CHOICES:
        raise unknown_choice("gt_zero", settings.gt_zero, GT_ZERO_CHOICES)
    if settings.pred_zero not in PRED_ZERO_CHOICES:
        raise unknown_choice("pred_zero", settings.pred_zero, PRED_ZERO_CHOICES)
    if not 0.0 < settings.iou_threshold <= 1.0:
        raise EmError(f"--iou must be in (0, 1], got {settings.iou_threshold:g}")
    threshold = settings.threshold
    if threshold is not None and (mode.name not in modes_using("threshold") or not math.isfinite(threshold)):
        raise EmError(f"--threshold applies to --mode {_listing(modes_using('threshold'))}, "
                      "and must be a finite number")
    if settings.per_class and (mode.name not in modes_using("per_class") or threshold is not None):
        raise EmError(f"--per-class applies to --mode {_listing(modes_using('per_class'))} "
                      "with integer class labels (no --threshold)")
    if settings.size_classes is not None and mode.name not in modes_using("size_classes"):
        raise EmError(f"--size-classes applies to --mode {_listing(modes_using('size_classes'))} only")
    distance = settings.distance_nm
    if not (distance >= 0 and math.isfinite(distance)):
        raise EmError(f"--distance-threshold must be a finite distance >= 0 nm, got {distance:g}")
    if objects and not mode.has_objects(settings):
        raise EmError(f"--csv writes per-object tables: use it with --mode {_listing(_objects_owners())}")


# ----------------------------------------------------------------------------- the modes

@eval_mode(
    "neuron",
    """\
    variation of information split/merge in bits (log2), adapted Rand error,
    Rand split/merge, Rand index and CREMI score = sqrt(ARAND * VOI).""",
    skip=lambda s: skip_for(s.gt_zero), inputs="labels", uses=("gt_zero", "pred_zero"),
    table=Summary(("voi_split", "voi_merge", "voi", "adapted_rand_error"), "voi", True, "VOI split + merge, bits"),
    objects_help="per ground-truth object", empty_gt_ok=lambda s: s.gt_zero == "label",
)
def _neuron(table, settings, objects, volumes):
    metrics = neuron_metrics_from_table(table, pred_zero=settings.pred_zero)
    metrics = {"gt_zero": settings.gt_zero, "pred_zero": settings.pred_zero, **metrics}
    return metrics, neuron_objects(table) if objects else None


@eval_mode(
    "sections",
    """\
    neuron scores of each z section on its own (2D, as the ISBI 2012 challenge
    scores ssTEM), and their means over the sections with labelled voxels:
    mean adapted Rand error, mean VOI split/merge; per-section values listed.""",
    skip=lambda s: skip_for(s.gt_zero), inputs="labels", uses=("gt_zero", "pred_zero"), whole_volume=True,
    table=Summary(("voi_split", "voi_merge", "voi", "adapted_rand_error"), "adapted_rand_error", True,
                  "mean adapted Rand error of the sections"),
    empty_gt_ok=lambda s: s.gt_zero == "label",
)
def _sections(table, settings, objects, volumes):
    skip = skip_for(settings.gt_zero)
    per_section = []
    for z in range(volumes.gt.shape[0]):
        if skip != "none" and not volumes.gt[z].any():
            continue  # nothing labelled in this section
        section = contingency_table(volumes.gt[z], volumes.seg[z], skip=skip)
        m = neuron_metrics_from_table(section, pred_zero=settings.pred_zero)
        per_section.append({"z": z, **{k: m[k] for k in ("voi_split", "voi_merge", "voi", "adapted_rand_error")}})
    keys = ("voi_split", "voi_merge", "voi", "adapted_rand_error")
    means = {k: float(np.mean([r[k] for r in per_section])) for k in keys}
    return {"gt_zero": settings.gt_zero, "pred_zero": settings.pred_zero, **means,
            "sections_scored": len(per_section), "sections": per_section}, None


@eval_mode(
    "instance",
    """\
    mitochondria/nuclei: average precision at IoU 0.5, 0.75 and 0.5:0.95 as the
    MitoEM challenge computes it (COCO-style 101-point interpolated precision,
    objects sorted by size), and precision/recall/F1 of the one-to-one (Hungarian)
    matching at --iou. Only foreground voxels are visited.""",
    skip="both-zero", inputs="labels", uses=("iou_threshold", "size_classes"), objects_help="per object",
    table=Summary(("ap_50", "ap_75", "ap_50_95", "precision", "recall", "f1"), "ap_75", False,
                  "average precision at IoU 0.75, as MitoEM ranks"),
)
def _instance(table, settings, objects, volumes):
    t = InstanceTable(table)
    metrics = instance_metrics_from_table(t, iou_threshold=settings.iou_threshold, size_classes=settings.size_classes)
    return metrics, instance_objects(t, settings.iou_threshold, settings.size_classes) if objects else None


_CLASS_COLUMNS = ("iou", "dice", "precision", "recall", "accuracy", "tp", "fp", "fn")
_FOREGROUND_TABLE = Summary(("iou", "dice", "precision", "recall"), "iou", False, "foreground voxel IoU")
_PER_CLASS_TABLE = Summary(("mean_iou", "mean_dice"), "mean_iou", False, "mean IoU over the classes")


@eval_mode(
    "semantic",
    """\
    voxel IoU, Dice, precision, recall, F1, accuracy of the foreground
    (label != 0, or probability > --threshold); --per-class per label value.""",
    skip="none", inputs=lambda s: "classes" if s.per_class else "foreground", uses=("threshold", "per_class"),
    table=lambda s: _PER_CLASS_TABLE if s.per_class else _FOREGROUND_TABLE,
    objects_help="per class", objects_need="per_class",
)
def _semantic(table, settings, objects, volumes):
    if not settings.per_class:
        return _with_threshold(settings, semantic_metrics_from_counts(*binary_counts(table))), None
    result = semantic_per_class(table)
    metrics = {"mean_iou": result["mean_iou"], "mean_dice": result["mean_dice"],
               "classes": {str(k): v for k, v in result["classes"].items()}}
    columns = None
    if objects:
        keys = list(result["classes"])
        columns = {"class": np.array(keys, dtype=np.uint64)}
        for name in _CLASS_COLUMNS:
            columns[name] = np.array([result["classes"][k][name] for k in keys], dtype=object)
    return metrics, columns


@eval_mode(
    "synapse",
    """\
    the semantic scores plus the CREMI cleft distances in nm: ADGT (mean distance
    of ground-truth cleft voxels to the prediction), ADF (of predicted voxels to
    the ground truth), FN/FP counts beyond --distance-threshold and the CREMI
    score (ADGT + ADF) / 2.""",
    skip="none", inputs="foreground", uses=("threshold", "distance_nm"), whole_volume=True,
    table=Summary(("iou", "dice", "adgt_nm", "adf_nm", "cremi_cleft_score"), "cremi_cleft_score", True,
                  "(ADGT + ADF) / 2 in nm"),
    foreground_name="cleft voxel",
)
def _synapse(table, settings, objects, volumes):
    metrics = semantic_metrics_from_counts(*binary_counts(table))
    metrics.update(cleft_distances(volumes.seg, volumes.gt, volumes.voxel_size_nm, settings.distance_nm))
    return _with_threshold(settings, metrics), None


def _with_threshold(settings: EvalSettings, metrics: dict) -> dict:
    """The threshold first in the JSON object when one binarised the prediction."""
    return metrics if settings.threshold is None else {"threshold": settings.threshold, **metrics}
