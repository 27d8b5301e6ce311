"""Pictures of volume files, as the tools draw them: a few z sections, shrunk, laid out in a grid.

Each function opens its files read-only (through :mod:`emtools.io`), works out the region they
share in global voxels (offsets and voxel sizes from the files' metadata; ``voxel_size_nm``
overrides every file's), picks up to ``sections`` z sections spread evenly over it (the
columns), reads only those sections, in bands of rows shrunk as they come (memory follows a band,
not a section), and returns one RGB uint8 picture. A tile's long side is at most
``max_tile_px`` and the picture's sides at most ``max_picture_px`` (sections are shrunk by a
whole step: images by the mean of each block, labels by taking every step-th id). Write the
picture with :func:`emtools.io.write_png`::

    from emtools import io, pictures
    io.write_png("seg.png", pictures.labels_picture(["seg.h5:/seg"], "affs.h5:/affs"))
    io.write_png("pred.png", pictures.maps_picture("raw.h5:/image", ["affs.h5", "mito.h5"]))
    io.write_png("errors.png", pictures.eval_errors_picture(["seg.h5"], "gt.h5", image_spec="raw.h5"))

- :func:`labels_picture` (em-watershed, em-agglomerate ``--preview``): one row per label volume,
  each id tinted with its own colour (:func:`~emtools.pictures.drawing.id_colours`, the same in
  every row and every run) over the background map in grey.
- :func:`maps_picture` (em-predict ``--preview``): the image, then one row per map: a map with
  one channel in grey, with several its first three channels as red, green, blue (affinities
  z, y, x).
- :func:`eval_errors_picture` (em-eval ``--plot``): the ground truth's objects in colour, then
  one row per segmentation with its split and merge errors tinted (:mod:`emtools.pictures.errors`)
  and its outlines drawn.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np

from emtools import io
from emtools.errors import EmError
from emtools.evaluate.table import ContingencyAccumulator, check_labels
from emtools.meta import require_same_grid
from emtools.pictures.drawing import (
    MAX_PICTURE_PX,
    MAX_TILE_PX,
    channels_rgb,
    draw_outlines,
    flat_rgb,
    grey_rgb,
    grid,
    overlay_labels,
    shrink_labels,
    shrink_mean,
    shrink_step,
    spread_sections,
    unit_grey,
)
from emtools.pictures.errors import LargestOverlaps, error_tile
from emtools.tiling.geometry import Box

__all__ = ["BAND_VOXELS", "GT_OUTLINE_GREY", "NEUTRAL_GREY", "eval_errors_picture", "labels_picture",
           "maps_picture", "read_shrunk", "shared_region"]

# Voxels read at a time: a section is read in bands of rows and each band shrunk at once.
BAND_VOXELS = 1 << 22
# em-eval --plot without --image: a neutral grey tile with the ground truth's outlines lighter.
NEUTRAL_GREY = 128
GT_OUTLINE_GREY = 200


def shared_region(named_sources: Sequence[tuple[str, io.VolumeSource]]) -> Box:
    """The region (global voxels) that every source covers; one-line error if there is none."""
    require_same_grid([(spec, src.meta) for spec, src in named_sources])
    region = named_sources[0][1].box
    for spec, src in named_sources[1:]:
        overlap = region.intersect(src.box)
        if overlap is None:
            first = named_sources[0][0]
            raise EmError(f"no overlap: {spec} covers voxels {src.box.text()} but {first}"
                          f"{' and the others' if len(named_sources) > 2 else ''} cover {region.text()} "
                          "(check offsets and voxel sizes)")
        region = overlap
    return region


def read_shrunk(src: io.VolumeSource, region: Box, z: int, step: int, labels: bool = False) -> np.ndarray:
    """Section ``z`` (global) of ``region`` from ``src``, shrunk by ``step``: (y, x), or (c, y, x)
    for a multi-channel volume; block means (float32), or every step-th id with ``labels``."""
    height, width = region.shape[1:]
    channels = src.shape[0] if len(src.shape) == 4 else 1
    band = step * max(1, BAND_VOXELS // max(1, step * width * channels))
    origin = tuple(-b for b in src.box.begin)
    parts = []
    for y0 in range(0, height, band):
        y1 = min(height, y0 + band)
        box = Box((z, region.begin[1] + y0, region.begin[2]), (z + 1, region.begin[1] + y1, region.end[2]))
        values = src.read(box.shift(origin))
        values = values[:, 0] if values.ndim == 4 else values[0]
        parts.append(shrink_labels(values, step) if labels else shrink_mean(values, step))
    return np.concatenate(parts, axis=-2)


def _layout(region: Box, sections: int, rows: int, max_tile_px: int, max_picture_px: int) -> tuple[list[int], int]:
    """The sections shown (global z) and the shrink step."""
    if isinstance(sections, bool) or not isinstance(sections, (int, np.integer)) or sections < 1:
        raise EmError(f"sections must be a positive whole number, got {sections!r}")
    zs = [region.begin[0] + z for z in spread_sections(region.shape[0], sections)]
    return zs, shrink_step(region.shape[1:], rows, len(zs), max_tile_px, max_picture_px)


def _require_labels(spec: str, src: io.VolumeSource) -> None:
    if len(src.shape) != 3:
        raise EmError(f"{spec} has {src.shape[0]} channels; labels must be one 3D volume (z,y,x)")
    if np.dtype(src.dtype).kind not in "biu":
        raise EmError(f"{spec} is {src.dtype}; labels must be integers")


def _grey_rows(src: io.VolumeSource, region: Box, zs: list[int], step: int, reduce: str) -> list[np.ndarray]:
    """Grey RGB tiles of ``src``: a multi-channel volume by its first channel (``first``) or by
    the mean of its first three (``mean3``, affinities: dark on boundaries)."""
    shrunk = [read_shrunk(src, region, z, step) for z in zs]
    if len(src.shape) == 4:
        shrunk = [s[0] if reduce == "first" else s[:3].mean(axis=0) for s in shrunk]
    unit = unit_grey(np.stack(shrunk), dtype=src.dtype)
    return [grey_rgb(u) for u in unit]


def _map_rows(src: io.VolumeSource, region: Box, zs: list[int], step: int) -> list[np.ndarray]:
    """A map's tiles: one channel grey, several as RGB of the first three; float values scaled
    by the ``value_range`` that em-predict records (uint8 maps already span it as 0..255)."""
    shrunk = [read_shrunk(src, region, z, step) for z in zs]
    if len(src.shape) == 4:
        shrunk = [s[:3] for s in shrunk]
    value_range = src.meta.attrs.get("value_range") if np.dtype(src.dtype).kind == "f" else None
    unit = unit_grey(np.stack(shrunk), value_range=value_range, dtype=src.dtype)
    return [channels_rgb(u) if len(src.shape) == 4 else grey_rgb(u) for u in unit]


def labels_picture(label_specs: Sequence[str], background_spec: str | None = None, *,
                   voxel_size_nm: Sequence[float] | None = None, sections: int = 4,
                   max_tile_px: int = MAX_TILE_PX, max_picture_px: int = MAX_PICTURE_PX) -> np.ndarray:
    """One row per label volume: each id != 0 tinted with its colour over ``background_spec`` in
    grey (affinities: the mean of the first three channels), or over neutral grey without one.
    The region is the one all the files cover (a chunk's labels cover its responsible region)."""
    label_specs = list(label_specs)
    if not label_specs:
        raise EmError("no label volume to draw")
    with contextlib.ExitStack() as stack:
        sources = [(spec, stack.enter_context(io.open_volume(spec, voxel_size_nm=voxel_size_nm)))
                   for spec in label_specs]
        for spec, src in sources:
            _require_labels(spec, src)
        background = None
        if background_spec is not None:
            background = stack.enter_context(io.open_volume(background_spec, voxel_size_nm=voxel_size_nm))
        region = shared_region(sources + ([(background_spec, background)] if background is not None else []))
        zs, step = _layout(region, sections, len(sources), max_tile_px, max_picture_px)
        if background is not None:
            tiles = _grey_rows(background, region, zs, step, "mean3")
        else:
            tiles = [flat_rgb(read_shrunk(sources[0][1], region, z, step, labels=True).shape, NEUTRAL_GREY) for z in zs]
        rows = [[overlay_labels(tile, read_shrunk(src, region, z, step, labels=True)) for tile, z in zip(tiles, zs)]
                for _, src in sources]
    return grid(rows)


def maps_picture(image_spec: str, map_specs: Sequence[str], *, voxel_size_nm: Sequence[float] | None = None,
                 sections: int = 4, max_tile_px: int = MAX_TILE_PX, max_picture_px: int = MAX_PICTURE_PX) -> np.ndarray:
    """The image's sections in grey (its first channel) on the first row, then one row per map
    (one channel: grey; several: the first three as red, green, blue). ``voxel_size_nm``
    overrides the image's voxel size (em-predict's --voxel-size; its maps record it)."""
    with contextlib.ExitStack() as stack:
        image = stack.enter_context(io.open_volume(image_spec, voxel_size_nm=voxel_size_nm))
        maps = [(spec, stack.enter_context(io.open_volume(spec))) for spec in map_specs]
        region = shared_region([(image_spec, image)] + maps)
        zs, step = _layout(region, sections, 1 + len(maps), max_tile_px, max_picture_px)
        rows = [_grey_rows(image, region, zs, step, "first")]
        rows += [_map_rows(src, region, zs, step) for _, src in maps]
    return grid(rows)


def _largest_overlaps(seg_src: io.VolumeSource, gt_src: io.VolumeSource, region: Box, gt_zero: str,
                      slab_voxels: int) -> LargestOverlaps:
    """The contingency table of the whole ``region``, counted slab by slab, as its main partners."""
    acc = ContingencyAccumulator("none" if gt_zero == "label" else "gt-zero")
    depth = max(1, slab_voxels // max(1, region.shape[1] * region.shape[2]))
    for z0 in range(region.begin[0], region.end[0], depth):
        box = Box((z0,) + region.begin[1:], (min(z0 + depth, region.end[0]),) + region.end[1:])
        gt = check_labels(gt_src.read(box.shift(tuple(-b for b in gt_src.box.begin))), f"ground truth {gt_src.spec}")
        seg = check_labels(seg_src.read(box.shift(tuple(-b for b in seg_src.box.begin))),
                           f"segmentation {seg_src.spec}")
        acc.add(gt, seg)
    return LargestOverlaps.from_table(acc.result())


def eval_errors_picture(seg_specs: Sequence[str], gt_spec: str, image_spec: str | None = None, *,
                        gt_zero: str = "ignore", voxel_size_nm: Sequence[float] | None = None,
                        seg_offset_nm: Sequence[float] | None = None, gt_offset_nm: Sequence[float] | None = None,
                        sections: int = 4, max_tile_px: int = MAX_TILE_PX, max_picture_px: int = MAX_PICTURE_PX,
                        slab_voxels: int = 1 << 21) -> np.ndarray:
    """Split and merge errors of each segmentation against the ground truth, drawn.

    First row: the ground-truth objects, each in its colour. Then one row per segmentation (in
    the order given): the errors of :mod:`emtools.pictures.errors` tinted (split vermillion,
    merge blue, both purple), decided on each segmentation's whole overlap with the ground
    truth (the region em-eval scores), and the segmentation's outlines in yellow. The
    background is ``image_spec`` in grey (its first channel), or without it neutral grey with
    the ground truth's outlines in light grey. The sections shown lie in the region every
    input covers. ``gt_zero``: ``ignore`` (ground-truth 0 is never an error) or ``label``
    (0 is an object), as em-eval's --gt-zero; the offsets and ``voxel_size_nm`` override the
    files' as em-eval's options do.
    """
    if gt_zero not in ("ignore", "label"):
        raise EmError(f"gt_zero must be ignore or label, got {gt_zero!r}")
    seg_specs = list(seg_specs)
    if not seg_specs:
        raise EmError("no segmentation to draw")

    def open_seg(spec):
        return io.open_volume(spec, voxel_size_nm=voxel_size_nm, offset_nm=seg_offset_nm)

    with contextlib.ExitStack() as stack:
        gt_src = stack.enter_context(io.open_volume(gt_spec, voxel_size_nm=voxel_size_nm, offset_nm=gt_offset_nm))
        _require_labels(gt_spec, gt_src)
        named = [(gt_spec, gt_src)]
        image = None
        if image_spec is not None:
            image = stack.enter_context(io.open_volume(image_spec, voxel_size_nm=voxel_size_nm))
            named.append((image_spec, image))
        region = shared_region(named)
        pairs = []  # each segmentation's overlap with the ground truth: where its errors are decided
        for spec in seg_specs:  # headers only, one file open at a time (a sweep may hold many)
            with open_seg(spec) as src:
                _require_labels(spec, src)
                pairs.append(shared_region([(spec, src), (gt_spec, gt_src)]))
                shown = region.intersect(src.box)
                if shown is None:
                    raise EmError(f"no overlap: {spec} covers voxels {src.box.text()} but the region shown "
                                  f"so far is {region.text()} (check offsets and voxel sizes)")
                region = shown
        zs, step = _layout(region, sections, 1 + len(seg_specs), max_tile_px, max_picture_px)
        gts = [read_shrunk(gt_src, region, z, step, labels=True) for z in zs]
        if image is not None:
            backgrounds = _grey_rows(image, region, zs, step, "first")
        else:
            backgrounds = [draw_outlines(flat_rgb(g.shape, NEUTRAL_GREY), g, (GT_OUTLINE_GREY,) * 3) for g in gts]
        rows = [[overlay_labels(b, g) for b, g in zip(backgrounds, gts)]]
        for spec, pair in zip(seg_specs, pairs):
            with open_seg(spec) as src:
                overlaps = _largest_overlaps(src, gt_src, pair, gt_zero, slab_voxels)
                rows.append([error_tile(b, read_shrunk(src, region, z, step, labels=True), g, overlaps)
                             for b, g, z in zip(backgrounds, gts, zs)])
    return grid(rows)
