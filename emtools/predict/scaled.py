"""Blockwise prediction when the model works at a coarser voxel size than the input.

A block is a pair of boxes: the model's voxels it predicts and the input voxels it fills
(:func:`plan_pairs`; the same box when the voxel sizes match). :func:`predict_pair` reads the
input for the model block's context, normalises and averages it (:mod:`emtools.resample`),
mirrors it beyond the input's border as a volume of the model's voxel size would be, predicts,
and interpolates the maps back onto the pair's input voxels. The model block grows by one model
voxel each way (within the input) so the interpolation has both neighbours; interpolation clamps
at the input's box in model voxels, so any cut into blocks gives the same maps.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from emtools import resample
from emtools.normalize import normalize_image
from emtools.predict.windows import PatchGrid, plan_blocks, read_padded
from emtools.tiling.geometry import Box


def plan_pairs(target: Box, block_zyx: Sequence[int], grid: PatchGrid, scale_zyx: Sequence[int],
               fit: bool = True) -> list[tuple[Box, Box]]:
    """The blocks of ``target`` (input voxels) as (model voxels, input voxels) pairs, cut on the
    model's grid (``block_zyx`` in input voxels)."""
    f = tuple(scale_zyx)
    model_block = tuple(-(-b // s) for b, s in zip(block_zyx, f))
    blocks = plan_blocks(resample.coarse_box(target, f), model_block, grid, fit=fit)
    if f == resample.ONE:
        return [(block, block) for block in blocks]
    return [(block, resample.fine_box(block, f).intersect(target)) for block in blocks]


def predict_pair(read: Callable[[Box], np.ndarray], data_box: Box, scale_zyx: Sequence[int], pair: tuple[Box, Box],
                 predictor, normalization: Mapping) -> dict[str, np.ndarray]:
    """Float maps (c, z, y, x) per head over the pair's input voxels; ``read(box)`` returns the raw
    input over a global box inside ``data_box``."""
    block, out_box = pair
    f = tuple(scale_zyx)
    model_box = resample.coarse_box(data_box, f)
    if f != resample.ONE:
        block = Box(tuple(b - 1 for b in block.begin), tuple(e + 1 for e in block.end)).intersect(model_box)

    def read_model_voxels(part: Box) -> np.ndarray:  # part lies in model_box
        raw = read_padded(read, resample.fine_box(part, f), data_box)
        return resample.downsample_mean(normalize_image(raw, normalization), f)

    need = predictor.grid.input_box(block)
    maps = predictor.predict_block(read_padded(read_model_voxels, need, model_box), need, block)
    if f == resample.ONE:
        return maps
    return {name: resample.upsample_linear(values, block, f, out_box, model_box) for name, values in maps.items()}
