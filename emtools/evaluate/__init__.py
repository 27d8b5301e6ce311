"""Segmentation metrics for em-eval: numpy functions over compiled kernels, and the file loop.

- :mod:`emtools.evaluate.table`: the contingency table (compiled core, chunk-additive).
- :mod:`emtools.evaluate.neuron`: VOI split/merge, adapted Rand, Rand split/merge, CREMI score.
- :mod:`emtools.evaluate.instance`: MitoEM average precision, matched precision/recall/F1.
- :mod:`emtools.evaluate.semantic`: voxel IoU/Dice/precision/recall/accuracy, CREMI clefts.
- :mod:`emtools.evaluate.modes`: the registry of em-eval's ``--mode`` values (:data:`MODES`).
- :mod:`emtools.evaluate.chunked`: :func:`evaluate_files`, two volume files scored slab by slab
  with bounded memory (em-eval is a thin layer over it); :func:`score_many`, several
  segmentations against one ground truth (a threshold sweep), with :func:`segmentation_specs`
  to expand globs.
- :mod:`emtools.evaluate.summary`: the sweep table of ``em-eval --table`` (main scores per mode,
  the best row marked).

Arguments come in the order (prediction, ground truth), as in waterz and elf. Only the chunked
loop does I/O, and only through :mod:`emtools.io`. Who may import this package: anyone; it
imports numpy, numba kernels, ``edt`` (synapse mode) and emtools' io/tiling/meta layers, never
torch and never :mod:`emtools.cli` (tests/test_layering.py checks both).

To add an eval mode: write its metrics as a function of a :class:`Contingency` table (in one of
the metric modules, or a new one), register an adapter with ``@eval_mode(name, help, skip=...,
inputs=..., uses=..., table=Summary(...))`` in :mod:`emtools.evaluate.modes`; em-eval's --mode,
--help, --table and checks follow.
"""

from emtools.evaluate.chunked import (
    MANY_BATCH,
    SLAB_VOXELS,
    Evaluation,
    evaluate_files,
    score_files,
    score_many,
    segmentation_specs,
)
from emtools.evaluate.instance import (
    DEFAULT_SIZE_CLASSES,
    InstanceTable,
    average_precision,
    instance_metrics,
    instance_metrics_from_table,
    instance_objects,
    instance_table,
    match_instances,
)
from emtools.evaluate.modes import MODES, EvalMode, EvalSettings, Summary, eval_mode, get_mode
from emtools.evaluate.neuron import (
    GT_ZERO_CHOICES,
    PRED_ZERO_CHOICES,
    neuron_metrics,
    neuron_metrics_from_table,
    neuron_objects,
)
from emtools.evaluate.semantic import (
    binary_counts,
    cleft_distances,
    foreground_mask,
    semantic_metrics,
    semantic_metrics_from_counts,
    semantic_per_class,
)
from emtools.evaluate.summary import best_rows, summaries_help, summary_for, summary_table
from emtools.evaluate.table import (
    Contingency,
    ContingencyAccumulator,
    check_labels,
    contingency_table,
    group_sum,
)

__all__ = [
    "DEFAULT_SIZE_CLASSES", "GT_ZERO_CHOICES", "MANY_BATCH", "MODES", "PRED_ZERO_CHOICES", "SLAB_VOXELS",
    "Contingency", "ContingencyAccumulator", "EvalMode", "EvalSettings", "Evaluation",
    "InstanceTable", "Summary", "best_rows", "summaries_help", "summary_for", "summary_table",
    "average_precision", "binary_counts", "check_labels", "cleft_distances", "contingency_table",
    "eval_mode", "evaluate_files", "foreground_mask", "get_mode", "group_sum", "instance_metrics",
    "instance_metrics_from_table", "instance_objects", "instance_table", "match_instances",
    "neuron_metrics", "neuron_metrics_from_table", "neuron_objects", "score_files", "score_many",
    "segmentation_specs",
    "semantic_metrics", "semantic_metrics_from_counts", "semantic_per_class",
]
