"""Test-time augmentation: the 16 flips and transposes of a patch, and their exact inverses.

A variant flips any of z, y, x and may swap y and x (16 in all). The network sees the
transformed patch; its output is transformed back, so every variant predicts the same voxels.

Variant ``i`` of :func:`variants` (0 = identity): bit 0 flips x, bit 1 flips y, bit 2 swaps y
and x, bit 3 flips z. So ``--tta 4`` is the in-plane flips, ``--tta 8`` every in-plane symmetry
of a square (for anisotropic ssTEM data, where z is different) and ``--tta 16`` adds the z flip.

Affinities need more than moving voxels back. Channel ``c`` (offset ``d``) says whether voxel
``p`` and ``p + d`` belong together. A variant maps offsets linearly: a flip along an axis
negates that component, the transpose swaps the y and x components. After transforming back,
the network's channel for offset ``d'`` holds the affinity for offset ``L d'``::

    L d' == d     channel d' estimates channel d directly (the transpose exchanges y and x)
    L d' == -d    the affinity between p and p - d sits at voxel p - d:
                  estimate_d(r) = out_d'(r + d), so the channel shifts by d along the axis
                  (1 voxel for nearest neighbours, |d| for long range); the |d| voxels at
                  the patch border get no estimate from this variant and take the others'

A channel with neither partner (a long-range offset without its transposed twin) cannot use
that variant: :func:`affinity_plan` reports it, and the other variants fill the channel.
This module imports torch (the transforms run on the device, on whole batches).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from emtools.errors import EmError

MAX_VARIANTS = 16
REDUCTIONS = ("mean", "min", "max")


@dataclasses.dataclass(frozen=True)
class Variant:
    """Flip the axes marked in ``flip_zyx``, then (``transpose``) swap y and x."""

    flip_zyx: tuple[bool, bool, bool] = (False, False, False)
    transpose: bool = False

    @property
    def is_identity(self) -> bool:
        return not any(self.flip_zyx) and not self.transpose

    def name(self) -> str:
        parts = [f"flip {''.join(a for a, f in zip('zyx', self.flip_zyx) if f)}"] if any(self.flip_zyx) else []
        if self.transpose:
            parts.append("transpose yx")
        return " + ".join(parts) or "identity"

    def map_offset(self, offset: Sequence[int]) -> tuple[int, int, int]:
        """The offset in the original patch that the network's ``offset`` (seen transformed) means.

        The transformed patch at q holds the original at p = F(S q) (S swaps y, x; F flips), so a
        step d in the transformed patch is the step F(S d) in the original.
        """
        dz, dy, dx = (int(v) for v in offset)
        if self.transpose:
            dy, dx = dx, dy
        return tuple(-v if f else v for v, f in zip((dz, dy, dx), self.flip_zyx))  # type: ignore[return-value]


def variants(count: int) -> list[Variant]:
    """The first ``count`` variants (1..16), identity first; see the module docstring for the order."""
    if not 1 <= int(count) <= MAX_VARIANTS:
        raise EmError(f"--tta {count}: choose 1 (none) to {MAX_VARIANTS} variants")
    out = []
    for i in range(int(count)):
        out.append(Variant((bool(i & 8), bool(i & 2), bool(i & 1)), bool(i & 4)))
    return out


def _dims(v: Variant) -> list[int]:
    return [2 + a for a in range(3) if v.flip_zyx[a]]  # (N, C, Z, Y, X)


def apply(x: torch.Tensor, v: Variant) -> torch.Tensor:
    """Transform a batch (N, C, Z, Y, X): flip, then swap y and x."""
    dims = _dims(v)
    if dims:
        x = torch.flip(x, dims)
    if v.transpose:
        x = x.transpose(-1, -2)
    return x.contiguous()


def invert(y: torch.Tensor, v: Variant) -> torch.Tensor:
    """Undo :func:`apply` on a network output (N, C, Z, Y, X)."""
    if v.transpose:
        y = y.transpose(-1, -2)
    dims = _dims(v)
    if dims:
        y = torch.flip(y, dims)
    return y


@dataclasses.dataclass(frozen=True)
class Source:
    """Where target channel ``channel`` comes from in an inverted output: ``source``, shifted."""

    channel: int
    source: int
    shift_zyx: tuple[int, int, int] | None  # None: direct; else estimate(r) = out[source](r + shift)


def affinity_plan(offsets: Sequence[Sequence[int]], v: Variant) -> tuple[list[Source], list[int]]:
    """(sources of the channels this variant can estimate, channels it cannot: not closed)."""
    offsets = [tuple(int(c) for c in o) for o in offsets]
    mapped = [v.map_offset(o) for o in offsets]
    found, missing = [], []
    for c, d in enumerate(offsets):
        negative = tuple(-x for x in d)
        if d in mapped:
            found.append(Source(c, mapped.index(d), None))
        elif negative in mapped:
            found.append(Source(c, mapped.index(negative), d))  # type: ignore[arg-type]
        else:
            missing.append(c)
    return found, missing


def shifted_region(shift_zyx: Sequence[int], shape_zyx: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """(target slices r, source slices r + shift) of the voxels whose shifted source is inside."""
    target, source = [], []
    for d, n in zip(shift_zyx, shape_zyx):
        lo, hi = max(0, -d), min(n, n - d)
        if hi <= lo:
            return None
        target.append(slice(lo, hi))
        source.append(slice(lo + d, hi + d))
    return tuple(target), tuple(source)


class Reducer:
    """Combine the variants' estimates of one head, channel by channel, voxel by voxel.

    The identity variant comes first and covers every voxel; a later variant may cover only a
    region of a channel (shifted affinities) or skip a channel (offsets not closed).
    ``mean`` divides by the number of estimates each voxel received.
    """

    def __init__(self, mode: str):
        if mode not in REDUCTIONS:
            raise EmError(f"unknown TTA reduction {mode!r}; choose one of {', '.join(REDUCTIONS)}")
        self.mode = mode
        self.value: torch.Tensor | None = None
        self.count: torch.Tensor | None = None  # (C, Z, Y, X): the same for every patch of the batch

    def add(self, values: torch.Tensor) -> None:
        """An estimate of every channel and voxel (N, C, Z, Y, X); the first one is kept, not copied."""
        if self.value is None:
            self.value = values
            if self.mode == "mean":
                self.count = torch.ones(values.shape[1:], dtype=values.dtype, device=values.device)
            return
        self._combine(self.value, values)
        if self.count is not None:
            self.count += 1

    def add_channel(self, channel: int, values: torch.Tensor, region: tuple[slice, ...] | None = None) -> None:
        """An estimate of one channel over ``region`` (None: every voxel): values (N, *region)."""
        assert self.value is not None, "the identity variant comes first"
        region = region or (slice(None),) * 3
        self._combine(self.value[(slice(None), channel) + region], values)
        if self.count is not None:
            self.count[(channel,) + region] += 1

    def _combine(self, target: torch.Tensor, values: torch.Tensor) -> None:
        if self.mode == "mean":
            target += values
        elif self.mode == "min":
            target.copy_(torch.minimum(target, values))
        else:
            target.copy_(torch.maximum(target, values))

    def result(self) -> torch.Tensor:
        assert self.value is not None
        if self.count is None:
            return self.value
        return self.value / self.count


def parse_reduce(text: str, heads: list[str]) -> dict[str, str]:
    """``--tta-reduce``: one reduction for every head (``max``) or per head (``affinity=min,max``)."""
    out = {}
    for item in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, mode = item.rpartition("=")
        targets = [name.strip()] if sep else heads
        if sep and name.strip() not in heads:
            raise EmError(f"--tta-reduce {text!r}: no output head {name.strip()!r} (heads: {', '.join(heads)})")
        if mode.strip() not in REDUCTIONS:
            raise EmError(f"--tta-reduce {text!r}: {mode.strip()!r} is not one of {', '.join(REDUCTIONS)}")
        out.update({t: mode.strip() for t in targets})
    return {h: out.get(h, "mean") for h in heads}
