"""Run a model over a region: patches in batches, test-time augmentation, heads, blending.

    predictor = Predictor(model, heads, grid, blend="gaussian", tta=8, batch=4)
    maps = predictor.predict_block(image, image_box, target)   # {head: (C, *target.shape)}

``image`` is the normalised input (C, z, y, x) float32 over ``image_box`` (global voxels),
which must hold ``grid.input_box(target)`` (see :func:`emtools.predict.windows.read_padded`).
Per batch of patches: every TTA variant is run and transformed back (:mod:`.tta`), each head's
activation is applied (sigmoid, tanh, softmax; :mod:`emtools.models.heads`), the variants are
reduced, the patch outputs are cropped to their kept part and added into the region with the
blending weights (:mod:`.blending`); the region is divided by the summed weights at the end.
No file I/O: the CLI reads the input and writes the maps.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Mapping, Sequence

import numpy as np
import torch

from emtools.errors import EmError
from emtools.models import execution
from emtools.models.heads import HeadSpec
from emtools.predict import PRECISIONS
from emtools.predict import tta as tta_mod
from emtools.predict.blending import patch_weights
from emtools.predict.windows import PatchGrid, make_grid, read_padded
from emtools.tiling.geometry import Box

log = logging.getLogger("emtools")


# ----------------------------------------------------------------------------- heads

@dataclasses.dataclass(frozen=True)
class Selection:
    """One head to output: its spec, its first channel in the model output, the channels kept."""

    head: HeadSpec
    start: int
    channels: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.head.name

    @property
    def offsets(self) -> list[list[int]]:
        """Affinity offsets of the kept channels (empty for other kinds)."""
        return [list(self.head.offsets[c]) for c in self.channels] if self.head.kind == "affinity" else []


def select_heads(heads: Sequence[HeadSpec], names: Sequence[str] | None = None,
                 channels: Mapping[str, tuple[int, int]] | None = None) -> list[Selection]:
    """The heads to output (all by default, in the model's order), with optional channel ranges."""
    starts, start = {}, 0
    for head in heads:
        starts[head.name] = start
        start += head.channels
    by_name = {h.name: h for h in heads}
    wanted = list(dict.fromkeys(names)) if names else [h.name for h in heads]
    for name in wanted:
        if "+" in name:
            by_name[name], starts[name] = _joined(name, heads, starts)
        elif name not in by_name:
            raise EmError(f"no head {name!r} in the model; its heads are {', '.join(by_name)}")
    channels = dict(channels or {})
    for name, (a, b) in channels.items():
        if name not in wanted:
            raise EmError(f"--channels {name}={a}:{b} names a head that is not output (heads: {', '.join(wanted)})")
        if not 0 <= a < b <= by_name[name].channels:
            raise EmError(f"--channels {name}={a}:{b}: head {name} has channels 0:{by_name[name].channels}")
    out = []
    for name in wanted:
        a, b = channels.get(name, (0, by_name[name].channels))
        out.append(Selection(by_name[name], starts[name], tuple(range(a, b))))
    return out


def _joined(name: str, heads: Sequence[HeadSpec], starts: Mapping[str, int]) -> tuple[HeadSpec, int]:
    """``a+b``: affinity heads next to each other in the model, output as one map (their channels
    and offsets in order), e.g. nearest and long-range affinities for the mutex watershed."""
    parts = [p.strip() for p in name.split("+")]
    order = [h.name for h in heads]
    by_name = {h.name: h for h in heads}
    for part in parts:
        if part not in by_name:
            raise EmError(f"--heads {name}: no head {part!r} in the model; its heads are {', '.join(order)}")
        if by_name[part].kind != "affinity":
            raise EmError(f"--heads {name}: only affinity heads can be joined ({part} is {by_name[part].kind})")
    first = order.index(parts[0])
    if order[first:first + len(parts)] != parts:
        raise EmError(f"--heads {name}: joined heads must follow each other in the model's order "
                      f"({', '.join(order)})")
    joined = HeadSpec(name, "affinity", sum(by_name[p].channels for p in parts),
                      tuple(o for p in parts for o in by_name[p].offsets))
    return joined, starts[parts[0]]


def parse_channel_ranges(items: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``["affinity=0:3"]`` -> ``{"affinity": (0, 3)}`` (half-open channel ranges)."""
    out = {}
    for item in items:
        name, sep, span = item.partition("=")
        first, colon, last = span.partition(":")
        try:
            if not sep or not colon or not name.strip():
                raise ValueError
            out[name.strip()] = (int(first), int(last))
        except ValueError:
            raise EmError(f"--channels {item!r}: write HEAD=FIRST:END, e.g. affinity=0:3") from None
    return out


def activate(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """The head's output activation (a new tensor): sigmoid, tanh or softmax over its channels."""
    activation = {"distance": "tanh", "semantic": "softmax"}.get(kind, "sigmoid")
    if activation == "tanh":
        return torch.tanh(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=1)
    return torch.sigmoid(logits)


# ----------------------------------------------------------------------------- devices

# how em-predict spells each option
FLAGS = {**execution.PREDICT_FLAGS, "bf16": "--precision bf16", "fp16": "--precision fp16"}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast type for ``--precision`` (None for fp32); fp16 needs a GPU."""
    if precision not in PRECISIONS:
        raise EmError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type == "cpu":
        raise EmError("--precision fp16 needs a GPU; use fp32 (or bf16, slowly) on the CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


# ----------------------------------------------------------------------------- predictor

class Predictor:
    """A model, its heads and the prediction settings; :meth:`predict_block` runs it on a region.

    ``tta``: a number of variants (1 = none, up to 16; see :mod:`.tta`) or a list of variants
    starting with the identity. ``tta_reduce``: ``mean``/``min``/``max`` for every head, or a
    mapping head name -> reduction. ``precision`` (fp32, bf16 or fp16: autocast), ``fuse``,
    ``channels_last``, ``compile``, ``onednn``, ``winograd``: execution options
    (:mod:`emtools.models.execution`; em-predict's CPU default is ``fuse``, ``channels_last`` and
    ``onednn``, see :func:`~emtools.models.execution.inference_flags`). A fused model computes only
    the output channels of the selected heads.
    ``activate=False`` blends the raw outputs (logits) instead of the activated maps (em-train's
    validation computes its losses on them).
    """

    def __init__(self, model: torch.nn.Module, heads: Sequence[HeadSpec], grid: PatchGrid, *,
                 selection: Sequence[Selection] | None = None, blend: str = "gaussian",
                 tta: int | Sequence[tta_mod.Variant] = 1, tta_reduce: str | Mapping[str, str] = "mean",
                 batch: int = 1, device: str | torch.device = "cpu", precision: str = "fp32",
                 channels_last: bool = False, compile: bool = False, onednn: bool = False, winograd: bool = False,
                 fuse: bool = False, activate: bool = True):
        if batch < 1:
            raise EmError(f"--batch {batch} must be at least 1")
        self.device = torch.device(device)
        self.grid = grid
        self.heads = list(heads)
        self.selection = list(selection) if selection is not None else select_heads(self.heads)
        self.variants = tta_mod.variants(tta) if isinstance(tta, int) else list(tta)
        if not self.variants or not self.variants[0].is_identity:
            raise EmError("the TTA variants must start with the identity")
        if any(v.transpose for v in self.variants) and grid.patch_zyx[1] != grid.patch_zyx[2]:
            raise EmError(f"--tta above 4 swaps y and x, which needs a square patch in y,x "
                          f"(got {grid.patch_zyx[1]}x{grid.patch_zyx[2]})")
        reduce = {s.name: tta_reduce for s in self.selection} if isinstance(tta_reduce, str) else dict(tta_reduce)
        for s in self.selection:
            reduce.setdefault(s.name, "mean")
            tta_mod.Reducer(reduce[s.name])  # validates the name
        self.reduce = reduce
        self.plans = self._affinity_plans()
        self.batch = int(batch)
        self.activate = activate
        self.weights = patch_weights(grid.kept_zyx, blend)
        autocast_dtype(precision, self.device)  # checks it in --precision's words
        names = execution.names_from_flags(precision=precision, channels_last=channels_last, onednn=onednn,
                                           winograd=winograd, compile=compile, fuse=fuse)
        # CPU-only options are left out on a GPU; a compilation that fails warns and runs uncompiled
        self.forward = execution.apply(model.eval().to(self.device), names, self.device, mode="infer",
                                       fallback=True, skip_other_devices=True, spelled=FLAGS)
        self.raw_start = self._prune_outputs()
        self.patches_done = 0

    def _prune_outputs(self) -> dict[str, int]:
        """Where each selected head starts in the model's output: a fused model is cut down to the
        channels of the heads asked for (:func:`emtools.models.fusion.keep_output_channels`), the
        rest keep their place."""
        starts = {s.name: s.start for s in self.selection}
        keep = sorted({c for s in self.selection for c in range(s.start, s.start + s.head.channels)})
        if len(keep) == sum(h.channels for h in self.heads):
            return starts
        from emtools.models import fusion

        if not fusion.keep_output_channels(self.forward.model, keep):
            return starts
        position = {old: new for new, old in enumerate(keep)}
        return {s.name: position[s.start] for s in self.selection}

    def _affinity_plans(self) -> dict[tuple[str, int], list[tta_mod.Source]]:
        plans = {}
        for s in self.selection:
            if s.head.kind != "affinity":
                continue
            for index, variant in enumerate(self.variants):
                if variant.is_identity:
                    continue
                found, missing = tta_mod.affinity_plan(s.head.offsets, variant)
                plans[(s.name, index)] = found
                for c in missing:
                    log.warning("TTA: %s channel %d (offset %s) has no partner under %s; that variant is "
                                "left out for this channel", s.name, c, list(s.head.offsets[c]), variant.name())
        return plans

    # -- one batch of patches
    def patch_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Kept outputs (N, channels, *kept_zyx) float32 of a batch of input patches (N, C, *patch)."""
        x = self.forward.input(x)
        reducers = {s.name: tta_mod.Reducer(self.reduce[s.name]) for s in self.selection}
        for index, variant in enumerate(self.variants):
            raw = tta_mod.invert(self.forward(tta_mod.apply(x, variant) if index else x).float(), variant)
            for s in self.selection:
                start = self.raw_start[s.name]
                values = raw[:, start : start + s.head.channels]
                if self.activate:
                    values = activate(s.head.kind, values)
                reducer = reducers[s.name]
                if index == 0 or s.head.kind != "affinity":
                    reducer.add(values)
                    continue
                for src in self.plans[(s.name, index)]:
                    if src.shift_zyx is None:
                        reducer.add_channel(src.channel, values[:, src.source])
                        continue
                    regions = tta_mod.shifted_region(src.shift_zyx, values.shape[-3:])
                    if regions is not None:
                        target, source = regions
                        reducer.add_channel(src.channel, values[(slice(None), src.source) + source], target)
        lo, hi, patch = self.grid.crop_lo_zyx, self.grid.crop_hi_zyx, self.grid.patch_zyx
        kept = (slice(None), slice(None)) + tuple(slice(a, p - b) for a, b, p in zip(lo, hi, patch))
        out = {}
        for s in self.selection:
            values = reducers[s.name].result()
            if len(s.channels) != s.head.channels:
                values = values[:, list(s.channels)]
            out[s.name] = values[kept]
        self.patches_done += x.shape[0]
        return out

    # -- a region
    def predict_block(self, image: np.ndarray, image_box: Box, target: Box) -> dict[str, np.ndarray]:
        """Blended maps {head: (channels, *target.shape) float32} of ``target`` (global voxels)."""
        image = image if image.ndim == 4 else image[None]
        if not image_box.contains(self.grid.input_box(target)):
            raise EmError(f"internal: input {image_box.text()} does not hold {self.grid.input_box(target).text()}")
        acc = {s.name: np.zeros((len(s.channels),) + target.shape, np.float32) for s in self.selection}
        weight_sum = np.zeros(target.shape, np.float32)
        patches = self.grid.patches(target)
        with torch.inference_mode():
            for first in range(0, len(patches), self.batch):
                group = patches[first : first + self.batch]
                inputs = [image[(slice(None),) + image_box.local(p)] for p in group]
                if self.forward.compiled is not None and len(inputs) < self.batch:
                    # A compiled model would recompile for a smaller last batch: pad it instead.
                    inputs += [np.zeros_like(inputs[0])] * (self.batch - len(inputs))
                outputs = self.patch_outputs(torch.from_numpy(np.stack(inputs)).to(self.device))
                outputs = {k: v[: len(group)].cpu().numpy() for k, v in outputs.items()}
                for i, patch in enumerate(group):
                    kept = self.grid.kept(patch)
                    part = kept.intersect(target)
                    source, dest = kept.local(part), target.local(part)
                    weights = self.weights[source]
                    weight_sum[dest] += weights
                    for name, values in outputs.items():
                        region = acc[name][(slice(None),) + dest]
                        region += values[i][(slice(None),) + source] * weights
        for values in acc.values():
            values /= weight_sum
        return acc


def predict_volume(model: torch.nn.Module, image: np.ndarray, heads: Sequence[HeadSpec], *,
                   patch_zyx: Sequence[int], crop: tuple = ((0, 0, 0), (0, 0, 0)),
                   overlap: tuple[str, tuple] = ("fraction", (0.5, 0.5, 0.5)), averaged_zyx: Sequence[int] = (1, 1, 1),
                   **kwargs) -> dict[str, np.ndarray]:
    """Predict a whole normalised array ((z, y, x) or (C, z, y, x)) in memory; see :class:`Predictor`.

    ``averaged_zyx``: the model works at a voxel size this many times coarser (what
    ``em-predict`` does for a finer input): the image, mirrored to whole blocks, is averaged
    down and the maps are interpolated back to the image's shape
    (:func:`emtools.resample.upsample_linear`)."""
    from emtools import resample

    image = np.asarray(image, dtype=np.float32)
    fine = Box.from_shape(image.shape[-3:])
    f = tuple(int(v) for v in averaged_zyx)
    if f != resample.ONE:
        whole = resample.fine_box(resample.coarse_box(fine, f), f)
        image = resample.downsample_mean(read_padded(lambda part: image[(Ellipsis,) + fine.local(part)], whole, fine), f)
    box = Box.from_shape(image.shape[-3:])
    grid = make_grid(patch_zyx, crop, overlap)
    need = grid.input_box(box)
    padded = read_padded(lambda part: image[(Ellipsis,) + box.local(part)], need, box)
    maps = Predictor(model, heads, grid, **kwargs).predict_block(padded, need, box)
    if f == resample.ONE:
        return maps
    return {name: resample.upsample_linear(values, box, f, fine) for name, values in maps.items()}
