"""The patch grid of a sliding-window prediction, and reading its input with reflected borders.

Patches lie on one grid anchored in *global* voxel coordinates (the volume's first voxel), so a
voxel is predicted by the same patches, at the same positions, whether the whole volume is
predicted at once, block by block, or chunk by chunk from ``em-tile split``: only the input
each patch sees can differ, and only near the edge of the data (see :func:`exact_halo`).

One axis (patch P, crop lo/hi, kept K = P - lo - hi, stride S = K - overlap)::

    patch k input   [A + k*S - lo, A + k*S - lo + P)
    patch k kept          [A + k*S, A + k*S + K)        (written into the output, blended)

    |<-lo->|======= kept K =======|<-hi->|               patch k
                   |<-lo->|======= kept K =======|<-hi->|    patch k+1 (S later)

A target region is predicted by every patch whose kept part meets it. Where patches reach
past the data, the input is the data mirrored at its border (``reflect``: ..., 2, 1 | 0, 1, 2,
...), so every voxel of the target gets a prediction, at the volume border too.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable, Sequence

import numpy as np

from emtools.errors import EmError
from emtools.tiling.geometry import Box

Triple = tuple[int, int, int]
AXES = "zyx"


def _triple_text(values: Sequence) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def parse_overlap(text: str) -> tuple[str, tuple]:
    """``0.5`` (a fraction of the kept size, all axes), ``0,0.5,0.5`` (fractions z,y,x) or
    ``2,32,32`` (voxels z,y,x) -> ("fraction" | "voxels", three values). One-line errors."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) not in (1, 3) or not all(parts):
        raise EmError(f"--overlap {text!r}: give one fraction (0.5) or z,y,x (0,0.5,0.5 or 2,32,32 voxels)")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise EmError(f"--overlap {text!r} is not a number or z,y,x numbers") from None
    whole = all(p.lstrip("+-").isdigit() for p in parts)
    if len(parts) == 3 and whole:
        if min(values) < 0:
            raise EmError(f"--overlap {text}: voxels must not be negative")
        return "voxels", tuple(int(v) for v in values)
    if not all(0.0 <= v < 1.0 for v in values):
        raise EmError(f"--overlap {text}: a fraction must be in [0, 1) (voxels are given as z,y,x integers)")
    return "fraction", tuple(values * 3 if len(values) == 1 else values)


def stride_for(kept_zyx: Sequence[int], overlap: tuple[str, tuple]) -> Triple:
    """Patch stride per axis: the kept size minus the overlap (fraction rounded to voxels)."""
    kind, values = overlap
    stride = []
    for axis, kept, value in zip(AXES, kept_zyx, values):
        voxels = int(round(value * kept)) if kind == "fraction" else int(value)
        if voxels >= kept:
            raise EmError(f"--overlap of {voxels} voxels along {axis} is not below the kept patch output "
                          f"({kept} voxels); use a smaller overlap")
        stride.append(kept - voxels)
    return tuple(stride)  # type: ignore[return-value]


def resolve_crop(text: str, patch_zyx: Sequence[int], rf_lo: Sequence[int], rf_hi: Sequence[int],
                 train_zyx: Sequence[int] | None = None) -> tuple[Triple, Triple]:
    """The crop (margin below, margin above) of every patch output, per axis.

    ``valid``: the receptive-field margins, so no output voxel kept ever saw the zero padding at a
    patch border; ``auto``: the same, but at most 1/8 of the patch, or of the training input size
    ``train_zyx`` when that is smaller, per side (the receptive field of a deep U-Net is wider
    than any patch; the zero padding disturbs a band whose width is set by the network, not by the
    patch, and a model trained on crops of ``train_zyx`` learnt to predict up to their borders, so
    a larger patch need not cut more); ``Z,Y,X`` or one number: that many voxels per side.
    """
    lo, hi = crop_margins(text, patch_zyx, rf_lo, rf_hi, train_zyx)
    for axis, p, a, b in zip(AXES, patch_zyx, lo, hi):
        if p - a - b < 1:
            raise EmError(f"--crop {str(text).strip().lower()} removes {a}+{b} voxels of the {p}-voxel patch along "
                          f"{axis}, leaving nothing; use a patch of more than {a + b} voxels along {axis}, or a "
                          "smaller --crop")
    return lo, hi


def crop_margins(text: str, patch_zyx: Sequence[int], rf_lo: Sequence[int], rf_hi: Sequence[int],
                 train_zyx: Sequence[int] | None = None) -> tuple[Triple, Triple]:
    """:func:`resolve_crop` without the check that something is left (the patch search tries sizes)."""
    text = str(text).strip().lower()
    if text == "valid":
        lo, hi = tuple(rf_lo), tuple(rf_hi)
    elif text == "auto":
        sizes = patch_zyx if train_zyx is None else [min(p, t) for p, t in zip(patch_zyx, train_zyx)]
        lo = tuple(min(m, s // 8) for m, s in zip(rf_lo, sizes))
        hi = tuple(min(m, s // 8) for m, s in zip(rf_hi, sizes))
    else:
        parts = [p.strip() for p in text.split(",")]
        try:
            values = tuple(int(p) for p in parts)
        except ValueError:
            raise EmError(f"--crop {text!r}: give auto, valid, or voxels z,y,x (e.g. 2,16,16)") from None
        if len(values) == 1:
            values = values * 3
        if len(values) != 3 or min(values) < 0:
            raise EmError(f"--crop {text!r}: give auto, valid, or three voxel counts z,y,x that are not negative")
        lo = hi = values
    return lo, hi  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class PatchGrid:
    """Patches of ``patch_zyx`` every ``stride_zyx``; the kept part of patch 0 begins at ``anchor_zyx``."""

    patch_zyx: Triple
    crop_lo_zyx: Triple
    crop_hi_zyx: Triple
    stride_zyx: Triple
    anchor_zyx: Triple = (0, 0, 0)

    @property
    def kept_zyx(self) -> Triple:
        return tuple(p - a - b for p, a, b in zip(self.patch_zyx, self.crop_lo_zyx, self.crop_hi_zyx))  # type: ignore

    def _indices(self, axis: int, begin: int, end: int) -> range:
        a, s, k = self.anchor_zyx[axis], self.stride_zyx[axis], self.kept_zyx[axis]
        return range((begin - a - k) // s + 1, (end - a - 1) // s + 1)

    def patches(self, target: Box) -> list[Box]:
        """Input boxes (global voxels) of every patch whose kept part meets ``target``, z-major."""
        ranges = [self._indices(axis, target.begin[axis], target.end[axis]) for axis in range(3)]
        out = []
        for index in itertools.product(*ranges):
            begin = tuple(self.anchor_zyx[a] + index[a] * self.stride_zyx[a] - self.crop_lo_zyx[a] for a in range(3))
            out.append(Box.from_shape(self.patch_zyx, begin))
        return out

    def kept(self, patch: Box) -> Box:
        """The kept (cropped) part of a patch's output."""
        return Box(tuple(b + c for b, c in zip(patch.begin, self.crop_lo_zyx)),
                   tuple(e - c for e, c in zip(patch.end, self.crop_hi_zyx)))

    def input_box(self, target: Box) -> Box:
        """The input every patch for ``target`` needs: the union of their input boxes."""
        ranges = [self._indices(axis, target.begin[axis], target.end[axis]) for axis in range(3)]
        begin = tuple(self.anchor_zyx[a] + r[0] * self.stride_zyx[a] - self.crop_lo_zyx[a] for a, r in enumerate(ranges))
        end = tuple(self.anchor_zyx[a] + r[-1] * self.stride_zyx[a] - self.crop_lo_zyx[a] + self.patch_zyx[a]
                    for a, r in enumerate(ranges))
        return Box(begin, end)

    def anchored(self, anchor_zyx: Sequence[int]) -> "PatchGrid":
        """The same grid with its kept part of patch 0 at ``anchor_zyx`` (a volume's first voxel)."""
        return dataclasses.replace(self, anchor_zyx=tuple(int(a) for a in anchor_zyx))

    def count(self, target: Box) -> int:
        return int(np.prod([len(self._indices(a, target.begin[a], target.end[a])) for a in range(3)]))

    def describe(self) -> str:
        return (f"patch {_triple_text(self.patch_zyx)}, crop {_triple_text(self.crop_lo_zyx)}/"
                f"{_triple_text(self.crop_hi_zyx)}, kept {_triple_text(self.kept_zyx)}, stride {_triple_text(self.stride_zyx)}")


def fit_block(block_zyx: Sequence[int], shape_zyx: Sequence[int]) -> Triple:
    """The block for a target of ``shape_zyx``: where the target is narrower in y or x than the
    block, the voxels the block cannot use there go to z, so the voxel count (the memory bound)
    stays and a thin volume (e.g. 100x250x250 under 64,1024,1024) is one block, not two with the
    patches at their border computed twice."""
    used_yx = min(block_zyx[1], shape_zyx[1]) * min(block_zyx[2], shape_zyx[2])
    return max(int(block_zyx[0]), math.prod(block_zyx) // used_yx), int(block_zyx[1]), int(block_zyx[2])


def plan_blocks(target: Box, block_zyx: Sequence[int], grid: PatchGrid, fit: bool = True) -> list[Box]:
    """Cut ``target`` into blocks (z-major) that are predicted one at a time.

    The block is first fitted to the target (:func:`fit_block`) unless ``fit`` is False. Block sizes are rounded up to
    whole strides and block borders fall on the grid (anchor plus whole blocks), where a patch's
    kept part begins: then a block of n strides needs n + K/S - 1 patches per axis (K kept, S
    stride), the fewest possible. Patches that reach into two blocks are computed for each: a
    share of about S / block per axis, which larger blocks make small.
    """
    if fit:
        block_zyx = fit_block(block_zyx, target.shape)
    cuts = []
    for axis in range(3):
        step = -(-int(block_zyx[axis]) // grid.stride_zyx[axis]) * grid.stride_zyx[axis]
        begin, end, anchor = target.begin[axis], target.end[axis], grid.anchor_zyx[axis]
        first = anchor + ((begin - anchor) // step + 1) * step
        cuts.append([begin, *range(first, end, step), end])
    return [Box((z0, y0, x0), (z1, y1, x1))
            for z0, z1 in zip(cuts[0], cuts[0][1:])
            for y0, y1 in zip(cuts[1], cuts[1][1:])
            for x0, x1 in zip(cuts[2], cuts[2][1:])]


def make_grid(patch_zyx: Sequence[int], crop: tuple[Triple, Triple], overlap: tuple[str, tuple],
              anchor_zyx: Sequence[int] = (0, 0, 0)) -> PatchGrid:
    lo, hi = crop
    kept = tuple(p - a - b for p, a, b in zip(patch_zyx, lo, hi))
    return PatchGrid(tuple(patch_zyx), tuple(lo), tuple(hi), stride_for(kept, overlap), tuple(anchor_zyx))  # type: ignore


def exact_halo(grid: PatchGrid, rf_lo: Sequence[int], rf_hi: Sequence[int], local: bool = True) -> tuple[Triple, Triple]:
    """Context (below, above) a region needs so that its prediction equals the whole volume's.

    A kept voxel p of a patch depends on the input within its receptive field [p - rf_lo,
    p + rf_hi] and within the patch (zero padding beyond); the patches covering p reach at most
    P - 1 - crop_lo above p and P - 1 - crop_hi below. With a non-local layer (instance or group
    norm, ``local=False``) the whole patch matters. A chunk with at least this halo on every side
    that is not the volume border is predicted exactly as in a whole-volume run.
    """
    reach_hi = [p - 1 - c for p, c in zip(grid.patch_zyx, grid.crop_lo_zyx)]
    reach_lo = [p - 1 - c for p, c in zip(grid.patch_zyx, grid.crop_hi_zyx)]
    if local:
        reach_hi = [min(r, m) for r, m in zip(reach_hi, rf_hi)]
        reach_lo = [min(r, m) for r, m in zip(reach_lo, rf_lo)]
    return tuple(reach_lo), tuple(reach_hi)  # type: ignore[return-value]


def reflect_indices(begin: int, end: int, data_begin: int, data_end: int) -> np.ndarray:
    """Indices in [data_begin, data_end) for global positions [begin, end), mirrored at the ends."""
    n = data_end - data_begin
    pos = np.arange(begin, end, dtype=np.int64) - data_begin
    if n == 1:
        return np.full(pos.shape, data_begin, dtype=np.int64)
    period = 2 * (n - 1)
    pos = np.mod(pos, period)
    pos = np.where(pos >= n, period - pos, pos)
    return pos + data_begin


def read_padded(read: Callable[[Box], np.ndarray], box: Box, data: Box) -> np.ndarray:
    """Values over ``box`` (global voxels) from ``read(part)`` of ``data``, mirrored beyond it.

    ``read`` takes a global box inside ``data`` and returns ``(..., z, y, x)``; only the part of
    the data the mirrored box touches is read.
    """
    if data.contains(box):
        return read(box)
    index = [reflect_indices(box.begin[a], box.end[a], data.begin[a], data.end[a]) for a in range(3)]
    part = Box(tuple(int(i.min()) for i in index), tuple(int(i.max()) + 1 for i in index))
    values = read(part)
    local = [i - b for i, b in zip(index, part.begin)]
    return values[(Ellipsis,) + np.ix_(*local)]
