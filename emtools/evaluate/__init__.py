"""Segmentation metrics for em-eval: numpy functions over compiled kernels, no I/O (one import).

- :mod:`emtools.evaluate.table`: the contingency table (compiled core, chunk-additive).
- :mod:`emtools.evaluate.neuron`: VOI split/merge, adapted Rand, Rand split/merge, CREMI score.
- :mod:`emtools.evaluate.instance`: MitoEM average precision, matched precision/recall/F1.
- :mod:`emtools.evaluate.semantic`: voxel IoU/Dice/precision/recall/accuracy, CREMI clefts.

Arguments come in the order (prediction, ground truth), as in waterz and elf.
"""

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
from emtools.evaluate.table import (
    Contingency,
    ContingencyAccumulator,
    check_labels,
    contingency_table,
    group_sum,
)

__all__ = [
    "DEFAULT_SIZE_CLASSES", "GT_ZERO_CHOICES", "PRED_ZERO_CHOICES",
    "Contingency", "ContingencyAccumulator", "InstanceTable",
    "average_precision", "binary_counts", "check_labels", "cleft_distances", "contingency_table", "foreground_mask",
    "group_sum", "instance_metrics", "instance_metrics_from_table", "instance_objects",
    "instance_table", "match_instances", "neuron_metrics", "neuron_metrics_from_table",
    "neuron_objects", "semantic_metrics", "semantic_metrics_from_counts", "semantic_per_class",
]
