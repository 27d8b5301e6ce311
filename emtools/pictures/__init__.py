"""Pictures people look at instead of reading numbers: PNG previews of volumes, maps, labels, errors.

Drawn with numpy and written by Pillow (:func:`emtools.io.write_png`, atomic), never matplotlib,
so every tool can draw without extras; no torch either. The same inputs give the same bytes.

- :mod:`~emtools.pictures.drawing`: pure numpy pieces: which sections to show
  (:func:`spread_sections`), shrinking a section to a bounded tile (:func:`shrink_step`,
  :func:`shrink_mean`, :func:`shrink_labels`), grey levels (:func:`unit_grey`), a colour per id
  (:func:`id_colours`), tints, outlines and the grid of tiles (:func:`grid`).
- :mod:`~emtools.pictures.errors`: split/merge errors voxel by voxel from a contingency table
  (:class:`LargestOverlaps`, :func:`split_merge_classes`) and their tile (:func:`error_tile`).
- :mod:`~emtools.pictures.volumes`: whole pictures of files, as the tools draw them:
  :func:`labels_picture` (em-watershed and em-agglomerate ``--preview``), :func:`maps_picture`
  (em-predict ``--preview``), :func:`eval_errors_picture` (em-eval ``--plot``).

em-augment's before/after montage (:mod:`emtools.augment.preview`) is built from the same pieces.
To add a picture: compose the drawing pieces into tiles, :func:`grid` them, and let the tool's
CLI check its path before any work (:func:`check_picture_path`) and write it with
:func:`write_picture` (which removes the run's other outputs if the picture fails).
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterable, Sequence

import numpy as np

from emtools.errors import EmError
from emtools.pictures.drawing import (
    GAP_PX,
    GAP_VALUE,
    LABEL_ALPHA,
    MAX_PICTURE_PX,
    MAX_TILE_PX,
    channels_rgb,
    draw_outlines,
    flat_rgb,
    grey_rgb,
    grid,
    id_colours,
    outline_mask,
    overlay_labels,
    shrink_labels,
    shrink_mean,
    shrink_step,
    spread_sections,
    tint,
    unit_grey,
)
from emtools.pictures.errors import (
    BOTH_RGB,
    ERROR_ALPHA,
    MERGE,
    MERGE_RGB,
    OUTLINE_RGB,
    SPLIT,
    SPLIT_RGB,
    LargestOverlaps,
    error_tile,
    split_merge_classes,
)
from emtools.pictures.volumes import (
    GT_OUTLINE_GREY,
    NEUTRAL_GREY,
    eval_errors_picture,
    labels_picture,
    maps_picture,
    read_shrunk,
    shared_region,
)


def check_picture_path(path: str, option: str, others: Iterable[str] = ()) -> None:
    """One-line errors, before any work, for a picture that cannot be written to ``path``: not a
    .png name, a missing or unwritable folder, or the same file as one of ``others`` (the run's
    inputs and other outputs)."""
    from emtools import io

    if not path.lower().endswith(".png"):
        raise EmError(f"{option} must be a .png file, got {path}")
    io.check_output_path(path)
    mine = os.path.realpath(path)
    for other in others:
        if other and os.path.realpath(io.output_file(other)) == mine:
            raise EmError(f"{option} {path} is the same file as {other}")


def write_picture(path: str, draw: Callable[[], np.ndarray], written: Sequence[str] = ()) -> str:
    """Draw the picture and write it to ``path`` (PNG, atomically); returns ``path``.

    If drawing or writing fails, the files in ``written`` (what the run wrote before, e.g. the
    labels the picture shows) are removed too, so that a run leaves all its outputs or none.
    """
    from emtools import io

    try:
        return io.write_png(path, draw())
    except BaseException:
        for other in written:
            with contextlib.suppress(OSError):
                os.remove(io.output_file(other))
        raise


__all__ = [
    "BOTH_RGB", "ERROR_ALPHA", "GAP_PX", "GAP_VALUE", "GT_OUTLINE_GREY", "LABEL_ALPHA", "MAX_PICTURE_PX",
    "MAX_TILE_PX", "MERGE", "MERGE_RGB", "NEUTRAL_GREY", "OUTLINE_RGB", "SPLIT", "SPLIT_RGB", "LargestOverlaps",
    "channels_rgb", "check_picture_path", "draw_outlines", "error_tile", "eval_errors_picture", "flat_rgb",
    "grey_rgb", "grid", "id_colours", "labels_picture", "maps_picture", "outline_mask", "overlay_labels",
    "read_shrunk", "shared_region", "shrink_labels", "shrink_mean", "shrink_step", "split_merge_classes",
    "spread_sections", "tint", "unit_grey", "write_picture",
]
