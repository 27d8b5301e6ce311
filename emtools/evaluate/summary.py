"""The sweep table of ``em-eval --table``: one row per segmentation, the best one marked.

Which scores a mode's table shows, and which one decides the best row, each mode registers with
itself (``@eval_mode(..., table=Summary(...))`` in :mod:`emtools.evaluate.modes`)::

    # best (*): lowest voi (VOI split + merge, bits); neuron mode against gt.h5:/neurons
      segmentation  threshold  voi_split  voi_merge     voi  adapted_rand_error
      seg_0.3.h5          0.3     1.2000     0.1000  1.3000              0.2500
    * seg_0.5.h5          0.5     0.9000     0.2000  1.1000              0.2300

The threshold column appears where the segmentations' metadata records one (em-agglomerate
writes it). Pure formatting: no I/O.
"""

from __future__ import annotations

import math
from typing import Sequence

from emtools.errors import EmError
from emtools.evaluate.modes import MODES, EvalSettings, Summary, get_mode

__all__ = ["best_rows", "summaries_help", "summary_for", "summary_table"]


def summary_for(mode: str, settings: EvalSettings | None = None) -> Summary:
    """The :class:`Summary` that ``mode`` registered, with ``settings`` (one-line error for an unknown mode)."""
    return get_mode(mode).table_for(settings)


def summaries_help() -> str:
    """``lowest voi (neuron), highest ap_75 (instance), ...``: what marks the best row, per mode."""
    parts = []
    for name, mode in MODES.items():
        if mode.table is None:
            continue
        variants = {mode.table_for(EvalSettings()): name}
        if "per_class" in mode.uses:
            variants.setdefault(mode.table_for(EvalSettings(per_class=True)), f"{name} --per-class")
        parts.extend(f"{'lowest' if s.lower_is_better else 'highest'} {s.best} ({label})" for s, label in variants.items())
    return ", ".join(parts)


def best_rows(values: Sequence[float | None], lower_is_better: bool) -> list[int]:
    """Indices of the best values (every tied one); None and NaN never win."""
    scored = [(i, v) for i, v in enumerate(values) if v is not None and not math.isnan(v)]
    if not scored:
        return []
    best = (min if lower_is_better else max)(v for _, v in scored)
    return [i for i, v in scored if v == best]


def summary_table(reports: Sequence[dict], mode: str, settings: EvalSettings | None = None,
                  thresholds: Sequence[float | None] | None = None) -> str:
    """The table text (lines joined by newlines, no trailing one) for em-eval's JSON ``reports``.

    ``thresholds``: the threshold each segmentation's metadata records (None where none); the
    column is shown when any is known.
    """
    if not reports:
        raise EmError("no segmentation to tabulate")
    summary = summary_for(mode, settings)
    head = ["", "segmentation"]
    cells = [["", r["segmentation"]] for r in reports]
    if thresholds is not None and any(t is not None for t in thresholds):
        head.append("threshold")
        for row, t in zip(cells, thresholds):
            row.append("-" if t is None else f"{t:g}")
    head.extend(summary.columns)
    for row, report in zip(cells, reports):
        row.extend(_number(report.get(name)) for name in summary.columns)
    for i in best_rows([reports[i].get(summary.best) for i in range(len(reports))], summary.lower_is_better):
        cells[i][0] = "*"
    ground_truth = reports[0]["ground_truth"]
    lines = [f"# best (*): {summary.header()}; {mode} mode against {ground_truth}"]
    widths = [max(len(row[c]) for row in [head] + cells) for c in range(len(head))]
    for row in [head] + cells:
        # the mark, then the spec left-aligned, then numbers right-aligned
        parts = [row[1].ljust(widths[1])] + [row[c].rjust(widths[c]) for c in range(2, len(row))]
        lines.append((row[0].ljust(widths[0]) + " " + "  ".join(parts)).rstrip())
    return "\n".join(lines)


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return "nan" if math.isnan(value) else f"{value:.4f}"
